"""DeepSeek-V3 (DeepseekV3ForCausalLM) and the models built on its code (Moonlight, Kimi):
multi-head latent attention, routed experts with a shared dense MLP beside them, and a
stack whose first ``first_k_dense_replace`` blocks have a dense MLP instead
(transformers 5.24 models/deepseek_v3/modeling_deepseek_v3.py: DeepseekV3Attention,
DeepseekV3MoE, DeepseekV3DecoderLayer.__init__).

The router's weight is kept in fp32 whatever the model's dtype
(``_keep_in_fp32_modules_strict``) and its ``e_score_correction_bias`` is a buffer, not a
parameter; the multi-token-prediction layer of the published checkpoint (layer 61) is not
built by transformers (``_keys_to_ignore_on_load_unexpected``) and is not counted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, need, opt, shown
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.families.mixtral import EXPERT_NAMES

if TYPE_CHECKING:
    from ftmem.arch import Architecture

LATENT_ATTENTION = {
    "q": "self_attn.q_proj",
    "q_a": "self_attn.q_a_proj",
    "q_b": "self_attn.q_b_proj",
    "kv_a": "self_attn.kv_a_proj_with_mqa",
    "kv_b": "self_attn.kv_b_proj",
    "o": "self_attn.o_proj",
}
SHARED_EXPERTS = {
    "gate": "mlp.shared_experts.gate_proj",
    "up": "mlp.shared_experts.up_proj",
    "down": "mlp.shared_experts.down_proj",
}
NAMES = replace(
    LLAMA_NAMES, attention=LATENT_ATTENTION, experts=EXPERT_NAMES, shared_experts=SHARED_EXPERTS
)


def _counter(cfg: Config, defaults: Config) -> Callable[..., int]:
    """A count from config.json, else the config class's default (``defaults``; None:
    the class has none to fall back on)."""

    def count(key: str, bound: limits.Bound = limits.WIDTH) -> int:
        if defaults[key] is None:
            return need(cfg, key, bound=bound)
        value = opt(cfg, key, bound)
        return value if value is not None else defaults[key]

    return count


def read_deepseek_experts(cfg: Config, out: Config, defaults: Config) -> None:
    """DeepSeek's experts (routed, shared, the dense first blocks), the keys GLM-4.5's
    MoE copies too, with the config class's defaults for those a config.json leaves out."""
    count = _counter(cfg, defaults)
    routed = count("n_routed_experts", limits.EXPERTS)
    k = count("num_experts_per_tok", limits.EXPERTS)
    if "n_shared_experts" in cfg:
        shared = opt(cfg, "n_shared_experts", limits.EXPERTS) or 0
    elif defaults["n_shared_experts"] is None:  # (dots.llm1's class has no default)
        shared = need(cfg, "n_shared_experts", bound=limits.EXPERTS)
    else:
        shared = defaults["n_shared_experts"]
    first_dense = cfg.get("first_k_dense_replace", defaults["first_k_dense_replace"])
    if isinstance(first_dense, bool) or not isinstance(first_dense, int) or first_dense < 0:
        raise ConfigError(
            f"config.json: first_k_dense_replace must be a count, not {shown(first_dense)}."
        )
    moe_width = count("moe_intermediate_size")
    dense_width = out["intermediate_size"]
    out.update(
        num_experts=routed,
        experts_per_token=k,
        intermediate_size=moe_width,
        shared_experts_size=moe_width * shared,
    )
    if first_dense >= out["num_layers"]:
        raise ConfigError(
            f"config.json: first_k_dense_replace {shown(first_dense)} leaves no block with "
            "experts; ftmem models stacks with sparse blocks."
        )
    if first_dense:
        out.update(dense_layers=first_dense, dense_intermediate_size=dense_width)


def read_deepseek(cfg: Config, out: Config, defaults: Config) -> None:
    """The latent attention's and the experts' keys, with the config class's defaults
    for those a config.json leaves out (``defaults``)."""
    count = _counter(cfg, defaults)
    nope, rope = count("qk_nope_head_dim"), count("qk_rope_head_dim")
    heads = out["num_heads"]
    if out["num_kv_heads"] != heads:
        raise ConfigError(
            f"config.json: num_key_value_heads {shown(out['num_kv_heads'])} differs from "
            f"num_attention_heads {shown(heads)}; latent attention expands keys and values "
            "to every head."
        )
    # null: one q_proj, no query bottleneck (DeepSeek-V2-Lite)
    q_rank = opt(cfg, "q_lora_rank") if "q_lora_rank" in cfg else defaults["q_lora_rank"]
    out.update(
        head_dim=nope + rope,
        rotary_dim=rope,
        v_head_dim=count("v_head_dim"),
        kv_lora_rank=count("kv_lora_rank"),
        q_lora_rank=q_rank,
    )
    read_deepseek_experts(cfg, out, defaults)


# transformers 5.24 models/deepseek_v3/configuration_deepseek_v3.py, DeepseekV3Config
V3_DEFAULTS: Config = {
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "n_routed_experts": 256,
    "num_experts_per_tok": 8,
    "n_shared_experts": 1,
    "first_k_dense_replace": 3,
    "moe_intermediate_size": 2048,
}


def _read(cfg: Config, out: Config) -> None:
    read_deepseek(cfg, out, V3_DEFAULTS)


def build_deepseek_experts(arch: Architecture, kw: Config) -> None:
    """The transformers config keys of ``arch``'s experts (the reverse of
    :func:`read_deepseek_experts`)."""
    moe = arch.intermediate_size
    if arch.shared_experts_size % moe:
        raise ValueError(
            f"{arch.name}: shared_experts_size {arch.shared_experts_size} is not a whole number "
            f"of experts {moe} wide (transformers builds n_shared_experts x "
            "moe_intermediate_size)"
        )
    kw.update(
        intermediate_size=arch.dense_intermediate_size or moe,
        moe_intermediate_size=moe,
        n_routed_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
        n_shared_experts=arch.shared_experts_size // moe,
        first_k_dense_replace=arch.dense_layers,
        # one group, all kept: the group-limited choice is then plain top-k
        n_group=1,
        topk_group=1,
    )


def build_deepseek(arch: Architecture, kw: Config) -> None:
    """The transformers config of ``arch`` (the reverse of :func:`read_deepseek`)."""
    rope = arch.rotary_size
    kw.pop("head_dim", None)
    kw.update(
        qk_nope_head_dim=arch.head_size - rope,
        qk_rope_head_dim=rope,
        v_head_dim=arch.v_size // arch.num_heads,
        kv_lora_rank=arch.kv_lora_rank,
        q_lora_rank=arch.q_lora_rank,
    )
    build_deepseek_experts(arch, kw)


FAMILY = Family(
    name="deepseek_v3",
    model_types=("deepseek_v3",),
    decoder_layer="DeepseekV3DecoderLayer",
    config=llama_map("deepseek_v3", LlamaKeys(optional=("attention_bias",)), _read, build_deepseek),
    names=NAMES,
    router_fp32=True,
    peft_converts_expert_targets=True,
    # peft's prefix tuning sizes a key/value prefix per head; the latent attention's
    # cache holds compressed latents, which such a prefix does not fit
    prefix_tuning=False,
)
