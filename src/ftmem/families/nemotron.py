"""Nemotron (NemotronForCausalLM: Nemotron-4, Minitron): Llama's projections over
LayerNorms with biases that scale by ``weight + 1`` (LayerNorm1P), the rotary on part of
each head and a plain up/down MLP through ReLU².

What transformers 5.25 does (models/nemotron/modeling_nemotron.py), against
modeling_llama.py:
- NemotronLayerNorm1P (the block's two norms and the final one) is nn.LayerNorm with its
  bias, called as ``F.layer_norm(input, shape, self.weight + 1.0, self.bias, eps)``:
  native_layer_norm keeps the input, each row's mean and rstd, and the new ``w + 1``
  tensor (h in the weight's dtype, per call: Family.layer_norm_plus_one). Its
  ``_cast_if_autocast_enabled`` asks ``torch.is_autocast_enabled()``, CUDA's state: on
  the CPU autocast leaves the norm in fp32 (measured, tests/test_dense_families.py); on
  CUDA it casts input, w + 1 and bias to 16-bit and runs with autocast off, not measured,
  so autocast on CUDA is refused.
- apply_rotary_pos_emb turns the first ``partial_rotary_factor`` of each head (0.5 by
  NemotronConfig's default) and joins the rest with ``torch.cat``: GPT-NeoX's and Phi's
  rotary (the tables rotary_dim wide; o_proj reads a copy of the kernel's output).
- NemotronMLP is ``down_proj(act_fn(up_proj(x)))`` with hidden_act "relu2" by default
  (Arcee's MLP: ops.mlp, activation relu2); ``attention_bias`` on q, k, v and o,
  ``mlp_bias`` on up and down; head_dim from config.json or hidden / heads; untied
  embeddings by default; no sliding window.

Measured (stop 49; tests/accuracy, CPU: the tiny Llama shape with LayerNorms, the
rotary on 12 of 24 dimensions; 25 cases: the matrix, QLoRA, checkpointing, offloading,
eager attention, BitFit with and without the linears' biases): weights, gradients,
states and activations exact but IA³'s +384 B; peaks within 0.2 %. Without the w + 1
tensor the activations were 384 B a norm call under (full fp32 -1,920 B). Left:
LayerNorm1P under CUDA's autocast (refused), which casts input, w + 1 and bias to 16-bit."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, rotary_dim
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# NemotronConfig.__post_init__: ``kwargs.setdefault("partial_rotary_factor", 0.5)``
DEFAULT_ROTARY_SHARE = 0.5


def _read(cfg: Config, out: Config) -> None:
    out.pop("sliding_window", None)  # (NemotronConfig has no window)
    out.update(mlp="plain", norm="layernorm")
    if "hidden_act" not in cfg:  # NemotronConfig's default
        out["activation"] = "relu2"
    head_dim = out.get("head_dim") or out["hidden_size"] // out["num_heads"]
    keys = ("partial_rotary_factor",)
    out["rotary_dim"] = rotary_dim(cfg, head_dim, keys, DEFAULT_ROTARY_SHARE)


def _build(arch: Architecture, kw: Config) -> None:
    kw["partial_rotary_factor"] = arch.rotary_size / arch.head_size


FAMILY = Family(
    name="nemotron",
    model_types=("nemotron",),
    decoder_layer="NemotronDecoderLayer",
    config=llama_map("nemotron", LlamaKeys(optional=("attention_bias", "mlp_bias")), _read, _build),
    names=replace(LLAMA_NAMES, mlp={"up": "mlp.up_proj", "down": "mlp.down_proj"}),
    layer_norm_plus_one=True,
    # torch.cat after the partial rotary makes q head-major: o_proj reads a copy of the
    # kernel's output (as GPT-NeoX, Phi and StableLM)
    o_proj_reads_kernel_output=False,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
