"""Hunyuan-V1-MoE (HunYuanMoEV1ForCausalLM, Tencent's Hunyuan-A13B): Hunyuan-V1-Dense's
attention (per-head q/k RMSNorms after the rotary, ``families.hunyuan_v1_dense``) over
a softmax router in fp32, routed 3-D experts and one dense SwiGLU ``shared_mlp`` beside
them, experts and shared MLP both ``intermediate_size`` wide, in every layer.

What transformers 5.25 does (models/hunyuan_v1_moe/modeling_hunyuan_v1_moe.py):
HunYuanMoEV1Gate (l.225-242) builds ``wg = nn.Linear(hidden, experts, bias=False,
dtype=torch.float32)``: an explicit dtype, not ``_keep_in_fp32_modules``, yet it stays
fp32 under ``from_config(dtype=bf16)`` and ``from_pretrained(dtype=bf16)``, whatever
dtype the checkpoint stores it in (checked, transformers 5.25 on the CPU: only a later
``model.to(bf16)`` casts it); as DeepSeek's router (Family.router_fp32) the linear then
runs on ``hidden_states.float()``, an fp32 copy of its input. Then an fp32 softmax over
every expert, top-k, the top-k always divided by their sum, cast to the logits' dtype
(Family.routing_weights_in_router_dtype): fp32 routing weights, as Mixtral's, but
16-bit under autocast, which casts the router's linear. HunYuanMoEV1Experts (l.245-282) is
Mixtral's 3-D ``gate_up_proj``/``down_proj`` pair; HunYuanMoEV1Moe (l.285-301) adds
``shared_mlp(x)`` (HunYuanMoEV1MLP, ``intermediate_size`` wide) on the same input, as
DeepSeek's shared experts; no gate on it, no dense layers. HunYuanMoEV1ForCausalLM adds
no load-balancing loss (it returns the router logits only). peft converts gate/up/down
targets to the 3-D experts (transformers 5.25 conversion_mapping.py: hunyuan_v1_moe →
qwen2_moe's mapping).

HunYuanMoEV1Config (configuration_hunyuan_v1_moe.py): ``num_experts`` default 1,
``moe_topk`` an int or one per layer (the gate reads ``moe_topk[layer_idx]``); its
``num_experts`` is a strict int field (a list fails there, though the gate would read
one), and top-k that varies by layer is not expressible in ftmem's one
``experts_per_token``: both are refused, as is a single expert (no routing to model). Keys of the remote code the port
never reads (``moe_intermediate_size``, ``num_shared_expert``, ``use_mixed_mlp_moe``)
are refused where they describe another model than the one transformers builds (experts
of another width, not exactly one shared MLP). bitsandbytes quantises the router's
nn.Linear too (a Linear4bit under QLoRA, measured): quantised weights are refused.

Measured (tests/accuracy, CPU, peft 0.21.2: two layers of 8 experts, top-2, 48 wide,
3 × 50 tokens): weights, gradients and states exact; activations within 64 B
(the MoE families' 64 B, e.g. Qwen3-MoE's; under autocast +568 B a layer with the
routing weights counted fp32), IA³ +448 B (as Qwen3-MoE's); peaks within 1.5 % (checkpointed full bf16 +1.4 %): 23 cases, the matrix
(attention-only LoRA), checkpointing, LoRA on the 3-D experts and on the names peft
rewrites into them."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, need, shown, wrong
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

EXPERT_NAMES = {
    "router": "mlp.gate.wg",
    "gate_up": "mlp.experts.gate_up_proj",
    "down": "mlp.experts.down_proj",
}
SHARED_MLP = {
    "gate": "mlp.shared_mlp.gate_proj",
    "up": "mlp.shared_mlp.up_proj",
    "down": "mlp.shared_mlp.down_proj",
}

# HunYuanMoEV1Config's defaults, used where config.json leaves the key out
DEFAULT_POSITIONS = 2048
DEFAULT_TOPK = 1


def _one_value(cfg: Config, key: str, default: Any) -> Any:
    """An int, or a list of one value per layer that does not vary (refused if it does)."""
    value = cfg.get(key, default)
    if isinstance(value, list):
        if not value or any(v != value[0] for v in value):
            raise ConfigError(
                f"config.json: {key} {shown(value)} varies by layer; ftmem models "
                "Hunyuan-V1-MoE stacks whose every layer has the same experts."
            )
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise wrong(key, "a positive integer (or one per layer)", value)
    return value


def _read(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True
    out["head_dim"] = need(cfg, "head_dim")  # (read as given, l.160, as the dense model)
    out.pop("sliding_window", None)  # (HunYuanMoEV1Config has no window)
    if "max_position_embeddings" not in cfg:
        out["max_position_embeddings"] = DEFAULT_POSITIONS
    experts = cfg.get("num_experts", cfg.get("num_local_experts", 1))
    if isinstance(experts, list):
        raise ConfigError(
            f"config.json: num_experts {shown(experts)} is a list; transformers' "
            "HunYuanMoEV1Config takes one expert count for every layer (an int)."
        )
    experts = need({"num_experts": experts}, "num_experts", bound=limits.EXPERTS)
    if experts < 2:
        raise ConfigError(
            f"config.json: num_experts {experts}: ftmem models Hunyuan-V1-MoE with two or "
            "more routed experts."
        )
    width = out["intermediate_size"]
    if _one_value(cfg, "moe_intermediate_size", width) != width:
        raise ConfigError(
            "config.json: moe_intermediate_size differs from intermediate_size; "
            "transformers' Hunyuan-V1-MoE builds its experts intermediate_size wide."
        )
    if _one_value(cfg, "num_shared_expert", 1) != 1 or cfg.get("use_mixed_mlp_moe") is False:
        raise ConfigError(
            "config.json: transformers' Hunyuan-V1-MoE builds exactly one shared MLP "
            "(num_shared_expert 1, use_mixed_mlp_moe true)."
        )
    topk = _one_value(cfg, "moe_topk", cfg.get("num_experts_per_tok", DEFAULT_TOPK))
    out.update(num_experts=experts, experts_per_token=topk, shared_experts_size=width)


def _build(arch: Architecture, kw: Config) -> None:
    if arch.shared_experts_size != arch.intermediate_size:
        raise ConfigError(
            f"{arch.name}: hunyuan_v1_moe's shared MLP is intermediate_size wide "
            f"(shared_experts_size {arch.shared_experts_size} != {arch.intermediate_size})."
        )
    kw.update(num_experts=arch.num_experts, moe_topk=arch.experts_per_token)


FAMILY = Family(
    # (peft 0.21.2 utils/constants.py has no hunyuan entries: no LN-tuning defaults)
    name="hunyuan_v1_moe",
    model_types=("hunyuan_v1_moe",),
    decoder_layer="HunYuanMoEV1DecoderLayer",
    config=llama_map("hunyuan_v1_moe", LlamaKeys(optional=("attention_bias",)), _read, _build),
    names=replace(LLAMA_NAMES, experts=EXPERT_NAMES, shared_experts=SHARED_MLP),
    qk_norm=True,
    qk_norm_names=("query_layernorm", "key_layernorm"),
    qk_norm_after_rotary=True,
    router_fp32=True,
    routing_weights_in_router_dtype=True,
    # (measured on the tiny model under QLoRA: wg a Linear4bit, (512, 1) uint8 with its
    # quantisation state; weights -2,472 B a layer against an fp32 router)
    quantisation_unmodelled="bitsandbytes quantises their fp32 router wg too",
    peft_converts_expert_targets=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
