"""FlexOlmo (FlexOlmoForCausalLM, model_type ``flex_olmo``): OLMo 2's block over OLMoE's
mixture of experts (transformers 5.25 models/flex_olmo/modular_flex_olmo.py:
FlexOlmoAttention is Olmo2Attention, FlexOlmoRMSNorm Olmo2RMSNorm, FlexOlmoRotaryEmbedding
Olmo2RotaryEmbedding; FlexOlmoTopKRouter, FlexOlmoSparseMoeBlock and FlexOlmoForCausalLM
are OLMoE's; FlexOlmoDecoderLayer is OlmoeDecoderLayer with the norms moved after each
sublayer and input_layernorm deleted).

So: RMSNorms on queries and keys across the whole projection (q_norm heads x head_dim
wide), the two block norms on each sublayer's output before the residual add, norms
that scale in fp32 before casting back, rotary tables left in fp32 (the rotated q and k
cast back to their dtype); a bias-free router whose fp32 softmax and top-k are OLMoE's,
its top-k weights renormalised only where ``norm_topk_prob`` says (false by default) and
cast back to the logits' dtype, ``num_experts`` routed experts of width
``intermediate_size`` as 3-D parameters, no shared expert, no dense block, and the
load-balancing loss where ``output_router_logits`` is true. FlexOlmoConfig has no
sliding window (FlexOlmoModel builds the full causal mask only).

Measured (stop 49, tests/accuracy ``^flexolmo-``: 27 tiny cases, peft 0.21.2, torch 2.13
CPU): weights, gradients and optimizer states exact; activations within 96 B but LoRA on
all linears under autocast (+4,416 B, +0.14 %, as OLMoE's); peaks within 0.2 % but QLoRA
under autocast (-0.67 %; OLMoE's -1.4 %) and, in the frozen autocast case, the forward's
peak (-0.17 %, as EXAONE 4's). No preset (no sourced config.json)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, flag, opt, opt_or
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.families.mixtral import EXPERT_NAMES
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# transformers 5.25 models/flex_olmo/configuration_flex_olmo.py, FlexOlmoConfig
DEFAULTS: Config = {"num_experts": 7, "num_experts_per_tok": 5}


def _read(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True
    out.pop("sliding_window", None)  # (no window in FlexOlmoConfig nor in its mask)
    out.update(
        # (num_local_experts is FlexOlmoConfig's attribute_map name for num_experts)
        num_experts=opt(cfg, "num_experts", limits.EXPERTS)
        or opt(cfg, "num_local_experts", limits.EXPERTS)
        or DEFAULTS["num_experts"],
        experts_per_token=opt_or(cfg, "num_experts_per_tok", DEFAULTS, limits.EXPERTS),
        router_renormalises=flag(cfg, "norm_topk_prob", False),
    )


def _build(arch: Architecture, kw: Config) -> None:
    kw.update(
        num_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
        norm_topk_prob=arch.router_renormalises,
    )


FAMILY = Family(
    name="flex_olmo",
    model_types=("flex_olmo",),
    decoder_layer="FlexOlmoDecoderLayer",
    config=llama_map("flex_olmo", LlamaKeys(optional=("attention_bias",)), _read, _build),
    names=replace(
        LLAMA_NAMES,
        norms={2: ("post_attention_layernorm", "post_feedforward_layernorm")},
        experts=EXPERT_NAMES,
    ),
    qk_norm=True,
    qk_norm_per_head=False,
    norms_after_sublayers=True,
    norm_scale_in_fp32=True,
    rotary_tables_fp32=True,
    peft_converts_expert_targets=True,
    router_renormalisation_optional=True,
    routing_weights_in_router_dtype=True,
    router_aux_loss=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
