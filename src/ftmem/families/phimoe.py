"""Phi-3.5-MoE (PhimoeForCausalLM, ``phimoe``): Mixtral's block with nn.LayerNorms (weight
and bias) for its norms, q/k/v/o biases (``attention_bias``), an optional LM head bias
(``lm_head_bias``) and its own router (transformers 5.25 models/phimoe/modular_phimoe.py:
PhimoeTopKRouter, sparsemixer, PhimoeMultiplier, PhimoeSparseMoeBlock).

The router, ``mlp.router``, is an nn.Linear subclass whose forward returns the routing. In
training it is the sparsemixer: two experts a token (``top_k`` is passed and not read:
num_experts_per_tok other than 2 is refused), each drawn by Gumbel sampling over a
masked softmax of the logits, its weight a custom autograd Function of that softmax
(``router_sparsemixer``). Kept per block, measured on the module (torch 2.13 CPU,
tests/test_moe_families.py): two (T, E) bool masks, two (T, E) softmaxes in the logits'
dtype, two (T, 1) int64 picks and two (T, 1) multipliers. With ``input_jitter_noise`` > 0
(Phi-3.5-MoE's 0.01) the block and then the router multiply their input in place by
uniform noise, each keeping its (T, h) noise (``moe_input_jitter``). The experts are
MixtralExperts (``mlp.experts``). peft 0.21.2 converts no targets for it
(_MODEL_TO_CONVERSION_PATTERN has no "phimoe"), and its all-linear wraps the router and
fails (refused); bitsandbytes leaves the router unquantised (measured: QLoRA's weights
exact with it counted in 16 bits).

Measured (stop 49, torch CPU, peft 0.21.2, the tiny ``phimoe`` of tests/conftest.py, jitter
and LM head bias on): 27 cases, weights, gradients and optimizer states exact, activations
within 96 B in fp32, bf16 and bf16-mixed; the jitter is 2 x 2 x 150 x 96 x 2 = 115,200 B of
the bf16 LoRA case (1,170,004 against 1,054,804 B without it, both measured so). Under
CUDA's autocast the softmaxes are fp32 (derived from pytorch's autocast policy, not
measured: MoE.routing_weight_bytes)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, every_layer, flag, number, opt_or, shown
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

PHIMOE_EXPERTS = {
    "router": "mlp.router",
    "gate_up": "mlp.experts.gate_up_proj",
    "down": "mlp.experts.down_proj",
}

# transformers 5.25 models/phimoe/configuration_phimoe.py, PhimoeConfig
DEFAULTS: Config = {"num_local_experts": 16, "num_experts_per_tok": 2}


def _read(cfg: Config, out: Config) -> None:
    k = opt_or(cfg, "num_experts_per_tok", DEFAULTS, limits.EXPERTS)
    if k != 2:
        raise ConfigError(
            f"config.json: num_experts_per_tok {shown(k)}: PhiMoE's sparsemixer routes every "
            "token to 2 experts whatever it says; only 2 is modelled."
        )
    jitter = number(cfg, "input_jitter_noise") or 0.0
    out.update(
        norm="layernorm",
        num_experts=opt_or(cfg, "num_local_experts", DEFAULTS, limits.EXPERTS),
        experts_per_token=k,
        head_bias=flag(cfg, "lm_head_bias", False),
        input_jitter=jitter > 0,
    )


def _build(arch: Architecture, kw: Config) -> None:
    kw.update(
        num_local_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
        input_jitter_noise=0.01 if arch.input_jitter else 0.0,
    )


FAMILY = Family(
    name="phimoe",
    model_types=("phimoe",),
    decoder_layer="PhimoeDecoderLayer",
    config=llama_map(
        "phimoe",
        LlamaKeys(optional=("attention_bias",), window="always", sliding=every_layer),
        _read,
        _build,
    ),
    names=replace(LLAMA_NAMES, experts=PHIMOE_EXPERTS),
    router_sparsemixer=True,
    moe_input_jitter=True,
    router_aux_loss=True,
    peft_all_linear_fails=(
        "peft wraps PhiMoE's router (an nn.Linear whose forward returns the routing) and its "
        "LoRA layer fails on that tuple"
    ),
    head_bias_switch="lm_head_bias",
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
