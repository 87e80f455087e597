"""Qwen2-MoE (Qwen2MoeForCausalLM: Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen2's attention
(q/k/v biased as ``qkv_bias`` says, true by default; o_proj unbiased) over Qwen3-MoE's
router and 3-D experts, with one dense SwiGLU ``shared_expert`` of its own width
``shared_expert_intermediate_size`` beside them whose output is scaled per token by
``sigmoid(shared_expert_gate(x))``, a bias-free ``nn.Linear(hidden, 1)``
(transformers 5.25 models/qwen2_moe/modeling_qwen2_moe.py: Qwen2MoeAttention,
Qwen2MoeTopKRouter, Qwen2MoeSparseMoeBlock, Qwen2MoeDecoderLayer.__init__).

Against the families ftmem has: the router is Qwen3-MoE's line for line (a 16-bit
``F.linear``, not DeepSeek's fp32 one: no ``_keep_in_fp32_modules_strict``; an fp32
softmax over every expert, top-k, the optional ``norm_topk_prob`` renormalisation
(default false), the top-k cast back to the logits' dtype); the load-balancing loss when
``output_router_logits`` (Qwen2MoeForCausalLM.forward); no dense first blocks unless
``mlp_only_layers``/``decoder_sparse_step`` say so (refused, as for Qwen3-MoE); no q/k
norms; the rotary over whole heads. The gate is the one new op (Family.shared_expert_gate,
ops.mlp.shared_expert_gate_saved). Qwen2MoeConfig's window pattern (``(i + 1) % 2 and
i < max_window_layers``, configuration_qwen2_moe.py ``__post_init__``) only applies with
``use_sliding_window``, which every published config leaves false; a config that sets it
is refused. peft converts gate/up/down targets to the 3-D experts for this model type
(transformers 5.25 conversion_mapping.py: qwen2_moe is the mapping the DeepSeek-style
types copy)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, flag, opt, opt_or, shown
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.families.mixtral import EXPERT_NAMES
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

SHARED_EXPERT = {
    "gate": "mlp.shared_expert.gate_proj",
    "up": "mlp.shared_expert.up_proj",
    "down": "mlp.shared_expert.down_proj",
    # the sigmoid gate's nn.Linear(hidden, 1)
    "scale": "mlp.shared_expert_gate",
}

# transformers 5.25 configuration_qwen2_moe.py, Qwen2MoeConfig's defaults
DEFAULTS: Config = {
    "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632,
    "num_experts_per_tok": 4,
    "num_experts": 60,
}


def _read(cfg: Config, out: Config) -> None:
    if flag(cfg, "use_sliding_window", False):
        raise ConfigError(
            "config.json: use_sliding_window is not supported for qwen2_moe; ftmem models "
            "Qwen2-MoE stacks without a window, as every published config has them."
        )
    out.pop("sliding_window", None)
    dense_layers = cfg.get("mlp_only_layers") or []
    step = opt(cfg, "decoder_sparse_step", limits.LAYERS) or 1
    if dense_layers or step != 1:
        raise ConfigError(
            "config.json: a Qwen2-MoE stack with dense layers (mlp_only_layers "
            f"{shown(dense_layers)}, decoder_sparse_step {step}) is not supported yet; "
            "ftmem models stacks whose every layer has the same experts."
        )
    shared = opt_or(cfg, "shared_expert_intermediate_size", DEFAULTS)
    if not shared:
        raise ConfigError(
            "config.json: shared_expert_intermediate_size must be positive for qwen2_moe "
            "(transformers builds the shared expert in every sparse layer)."
        )
    out.update(
        attention_qkv_bias=flag(cfg, "qkv_bias", True),
        attention_out_bias=False,
        intermediate_size=opt_or(cfg, "moe_intermediate_size", DEFAULTS),
        shared_experts_size=shared,
        # (transformers 5 writes num_experts back as num_local_experts, its attribute_map)
        num_experts=opt(cfg, "num_experts", limits.EXPERTS)
        or opt(cfg, "num_local_experts", limits.EXPERTS)
        or DEFAULTS["num_experts"],
        experts_per_token=opt_or(cfg, "num_experts_per_tok", DEFAULTS, limits.EXPERTS),
        router_renormalises=flag(cfg, "norm_topk_prob", False),
    )


def _build(arch: Architecture, kw: Config) -> None:
    if arch.attention_out_bias:
        raise ConfigError("qwen2_moe's o_proj has no bias (attention_out_bias must be false).")
    kw.update(
        qkv_bias=arch.attention_qkv_bias,
        moe_intermediate_size=arch.intermediate_size,
        shared_expert_intermediate_size=arch.shared_experts_size,
        num_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
        norm_topk_prob=arch.router_renormalises,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        use_sliding_window=False,
    )


FAMILY = Family(
    name="qwen2_moe",
    model_types=("qwen2_moe",),
    decoder_layer="Qwen2MoeDecoderLayer",
    config=llama_map("qwen2_moe", LlamaKeys(), _read, _build),
    names=replace(LLAMA_NAMES, experts=EXPERT_NAMES, shared_experts=SHARED_EXPERT),
    shared_expert_gate=True,
    peft_converts_expert_targets=True,
    router_renormalisation_optional=True,
    routing_weights_in_router_dtype=True,
    router_aux_loss=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
