"""Apertus (ApertusForCausalLM: Apertus-8B / 70B): Llama's attention with Qwen3's per-head
q/k RMSNorms, norms named attention_layernorm / feedforward_layernorm, and a plain
up/down MLP through xIELU, an activation with two trained scalars per layer.

What transformers 5.25 does (models/apertus/modeling_apertus.py), against
modeling_llama.py:
- ApertusMLP is ``down_proj(act_fn(up_proj(x)))`` without biases, act_fn
  ``ACT2CLS["xielu"](dtype=config.dtype)`` (activations.py XIELUActivation): parameters
  ``alpha_p`` and ``alpha_n`` of shape (1,), 0-dim buffers ``beta`` and ``eps``; its
  Python path ``where(x > 0, alpha_p·x·x + beta·x, (expm1(min(x, eps)) − x)·alpha_n +
  beta·x)`` with the alphas through softplus. The (1,)-shaped alphas take part in type
  promotion: with fp32 parameters (autocast) the products and the output are fp32 over a
  16-bit x. What it keeps is measured (ops.mlp.xielu_saved). A CUDA kernel replaces the
  Python path only where the nickjbrowning/XIELU wheel is installed: not modelled, said
  in a note. CUDA's autocast runs expm1 and softplus in fp32 (its fp32 op list), which
  the CPU's does not: refused there.
- ApertusAttention applies RMSNorm(head_dim) to the transposed q and k heads before the
  rotary (Qwen3's q/k norms, one weight for all heads); ``attention_bias`` on q, k, v, o;
  head_dim is hidden / heads unless config.json gives it.
- ApertusConfig: untied embeddings, 65,536 positions, llama3 rope scaling (no tensor of
  another size), no sliding window.

Measured (stop 49; tests/accuracy, CPU: the tiny Llama shape with q/k norms, f = 160;
26 cases: the matrix, QLoRA, checkpointing in four settings, offloading, eager attention,
freeze): weights, gradients, states and activations exact but IA³'s +384 B; peaks within
1.8 % but checkpointed LoRA under bf16-mixed, +4.4 % (86,600 B over). xIELU's backward
is modelled as five T × f gradients in its output's dtype (MLP.gradients); measured alone
(tests/test_plain_mlp_activations.py's module) it holds, beyond its saved tensors, the incoming gradient
and its output, 4 T × f and a bool mask in fp32 or bf16, and 3.75 (alphas frozen) to 4.75
(trained) fp32 T × f under autocast: the five are an upper bound there. Before it the
checkpointed cases were -5.5 % to -13.1 %. Left: CUDA's autocast (refused), the XIELU
wheel's kernel (noted), partial finetuning of the alphas alone (counted as frozen)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# ApertusConfig's max_position_embeddings where config.json leaves it out
DEFAULT_POSITIONS = 65536


def _read(cfg: Config, out: Config) -> None:
    out.pop("sliding_window", None)  # (ApertusConfig has no window)
    out.update(mlp="plain", mlp_bias=False, qk_norm=True)
    if "hidden_act" not in cfg:  # ApertusConfig's default
        out["activation"] = "xielu"
    if "max_position_embeddings" not in cfg:
        out["max_position_embeddings"] = DEFAULT_POSITIONS


def _build(arch: Architecture, kw: Config) -> None:
    kw["attention_bias"] = arch.attention_qkv_bias


FAMILY = Family(
    name="apertus",
    model_types=("apertus",),
    decoder_layer="ApertusDecoderLayer",
    config=llama_map("apertus", LlamaKeys(), _read, _build),
    names=replace(
        LLAMA_NAMES,
        mlp={"up": "mlp.up_proj", "down": "mlp.down_proj"},
        norms={2: ("attention_layernorm", "feedforward_layernorm")},
        activation="mlp.act_fn",
    ),
    qk_norm=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
    notes={
        "model": "Apertus's xIELU is estimated as transformers' Python path; the CUDA "
        "kernel of the nickjbrowning/XIELU wheel, where installed, is not modelled."
    },
)
