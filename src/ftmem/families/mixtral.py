"""Mixtral (MixtralForCausalLM): Llama's attention, a routed mixture of experts stored
as 3-D parameters (transformers 5)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.families import SP_MODES, Family
from ftmem.families._config import Config, LlamaKeys, every_layer, need
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import (
    MISTRAL_ROTARY_PER_LAYER,
    MIXTRAL_ROTARY_CACHE,
    TRANSFORMERS_SDPA_CONTIGUOUS,
    UPCAST_IN_FORWARD_LOSS,
)

if TYPE_CHECKING:
    from ftmem.arch import Architecture


# the router and the 3-D expert weights, as transformers 5 names them (Qwen3-MoE too)
EXPERT_NAMES = {
    "router": "mlp.gate",
    "gate_up": "mlp.experts.gate_up_proj",
    "down": "mlp.experts.down_proj",
}


def _read_experts(cfg: Config, out: Config) -> None:
    out.update(
        num_experts=need(cfg, "num_local_experts", bound=limits.EXPERTS),
        experts_per_token=need(cfg, "num_experts_per_tok", bound=limits.EXPERTS),
    )


def _build_experts(arch: Architecture, kw: Config) -> None:
    kw.update(
        num_local_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
        router_jitter_noise=0.0,
    )


FAMILY = Family(
    name="mixtral",
    # ColossalAI shardformer: modeling/mixtral.py:591 refuses ring_attn
    colossalai_policy=SP_MODES - {"ring_attn"},
    # policies/mixtral.py:70-80 under sequence parallelism only (:278-280 turns
    # enable_flash_attention off); modeling/mixtral.py:648-649 repeat_kv before
    # transformers' attention function
    colossalai_repeats_kv=frozenset({"sp"}),
    model_types=("mixtral",),
    decoder_layer="MixtralDecoderLayer",
    config=llama_map(
        "mixtral", LlamaKeys(window="always", sliding=every_layer), _read_experts, _build_experts
    ),
    names=replace(LLAMA_NAMES, experts=EXPERT_NAMES),
    peft_converts_expert_targets=True,
    rotary_cache_releases=MIXTRAL_ROTARY_CACHE,
    rotary_per_layer_releases=MISTRAL_ROTARY_PER_LAYER,
    router_aux_loss=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
    # its own upcast-shifted loss before 4.46 (versions.UPCAST_IN_FORWARD_LOSS)
    own_loss_releases=((UPCAST_IN_FORWARD_LOSS, "upcast-shifted"),),
)
