"""Arcee AFM (ArceeForCausalLM): Llama's attention, RMSNorms and rotary with a plain
two-linear MLP (up_proj, down_proj, no gate) through ReLU² (transformers 5.25
modeling_arcee.py ArceeMLP: ``down_proj(act_fn(up_proj(x)))``, ArceeConfig's
hidden_act "relu2": activations.py ReLUSquaredActivation, ``torch.square(relu(x))``).
ReLU² keeps one T × f tensor, relu's output, which relu's backward (its result) and the
square's (its input) share; the up projection's output is not kept
(tests/test_plain_mlp_activations.py measures the real module).

Measured (stop 49; tests/accuracy, CPU, torch 2.13, peft 0.21.2: two layers, 4 heads of
24 over 2 KV heads, f = 160, 3 × 50 tokens; 23 cases: the matrix, QLoRA in two regimes,
checkpointing, offloading, eager attention): weights, gradients, states and activations
exact but IA³'s +384 B (as every family's); peaks within 0.2 % but checkpointed LoRA in
bf16, -4.3 % (48,500 B: the recomputed block's RMSNorm backward in fp32 outgrows this
small MLP's moment, not modelled). ReLU²'s backward (incoming gradient and
pow_backward's three temporaries: MLP.gradients 4) took checkpointed full bf16-mixed
from -2.0 % to exact. Left: ReLU² under CUDA's autocast (refused)."""

from __future__ import annotations

from dataclasses import replace

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS


def _read(cfg: Config, out: Config) -> None:
    out["mlp"] = "plain"
    out.pop("sliding_window", None)  # (ArceeConfig has no window)
    if "hidden_act" not in cfg:  # ArceeConfig's default
        out["activation"] = "relu2"


FAMILY = Family(
    name="arcee",
    model_types=("arcee",),
    decoder_layer="ArceeDecoderLayer",
    config=llama_map("arcee", LlamaKeys(optional=("attention_bias", "mlp_bias")), _read),
    names=replace(LLAMA_NAMES, mlp={"up": "mlp.up_proj", "down": "mlp.down_proj"}),
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
