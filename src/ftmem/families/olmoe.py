"""OLMoE (OlmoeForCausalLM): Llama's pre-norm block with RMSNorms on queries and keys
across the whole projection (OLMo 2's, ``q_norm`` hidden_size wide), and a routed
mixture of experts stored as 3-D parameters (transformers 5.24 models/olmoe/
modeling_olmoe.py: OlmoeAttention, OlmoeExperts, OlmoeTopKRouter, a router without a
bias whose fp32 softmax and top-k are Qwen3-MoE's). The published models take 64 experts
of width ``intermediate_size`` 1024, top-8, with ``norm_topk_prob`` false."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, flag, need, number, opt, shown
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.families.mixtral import EXPERT_NAMES
from ftmem.versions import UPCAST_IN_FORWARD_LOSS

if TYPE_CHECKING:
    from ftmem.arch import Architecture


def _read(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True
    # OlmoeConfig has no sliding window, and create_causal_mask builds a full causal
    # mask ("diff with mixtral: no sliding"): a stray key slides nothing
    out.pop("sliding_window", None)
    # OlmoeAttention sizes q_norm by hidden_size and k_norm by (hidden / heads)·kv_heads
    # while it projects to heads·head_dim: another head_dim fails in transformers
    heads = out["num_heads"]
    head_dim = opt(cfg, "head_dim")
    if head_dim and head_dim * heads != out["hidden_size"]:
        raise ConfigError(
            f"config.json: head_dim {shown(head_dim)} with {heads} heads is not hidden_size "
            f"{shown(out['hidden_size'])}; OlmoeAttention's q/k norms are hidden_size wide."
        )
    out.pop("head_dim", None)
    out.update(
        # (q, k and v clamped in place: Attention.clamp_saved; every published config: null)
        qkv_clip=number(cfg, "clip_qkv"),
        # (transformers 5 writes num_experts back as num_local_experts, its attribute_map)
        num_experts=need(cfg, "num_experts", "num_local_experts", bound=limits.EXPERTS),
        experts_per_token=need(cfg, "num_experts_per_tok", bound=limits.EXPERTS),
        router_renormalises=flag(cfg, "norm_topk_prob", False),
    )


def _build(arch: Architecture, kw: Config) -> None:
    kw.pop("head_dim", None)  # (OlmoeConfig has no such field: hidden / heads)
    kw.update(
        num_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
        norm_topk_prob=arch.router_renormalises,
        clip_qkv=arch.qkv_clip,
    )


FAMILY = Family(
    name="olmoe",
    model_types=("olmoe",),
    decoder_layer="OlmoeDecoderLayer",
    config=llama_map("olmoe", LlamaKeys(optional=("attention_bias",)), _read, _build),
    names=replace(LLAMA_NAMES, experts=EXPERT_NAMES),
    qkv_clip=True,
    qk_norm=True,
    qk_norm_per_head=False,
    peft_converts_expert_targets=True,
    router_renormalisation_optional=True,
    routing_weights_in_router_dtype=True,
    router_aux_loss=True,
    # its own upcast-shifted loss before 4.46 (versions.UPCAST_IN_FORWARD_LOSS)
    own_loss_releases=((UPCAST_IN_FORWARD_LOSS, "upcast-shifted"),),
)
