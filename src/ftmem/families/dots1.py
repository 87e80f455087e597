"""dots.llm1 (Dots1ForCausalLM: rednote-hilab's dots.llm1.base and .inst): Qwen3's attention
(per-head RMSNorms on queries and keys before the rotary, ``attention_bias`` biasing q, k, v
and o alike) and DeepSeek-V3's mixture of experts line for line: an fp32 sigmoid router with a
correction bias, routed experts as 3-D parameters, shared experts beside them and dense MLPs
in the first ``first_k_dense_replace`` blocks (transformers 5.25 models/dots1/modeling_dots1.py:
Dots1Attention, Dots1TopkRouter, Dots1MoE, Dots1DecoderLayer.__init__; the router, experts and
MoE classes are DeepseekV3's but for names). The window slides on the layers from
``max_window_layers`` on, 62 by default (configuration_dots1.py ``__post_init__``): none of
a 62-layer stack's."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, flag, from_max_window_layers
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.families.deepseek_v3 import (
    SHARED_EXPERTS,
    build_deepseek_experts,
    read_deepseek_experts,
)
from ftmem.families.mixtral import EXPERT_NAMES
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

SLIDING = from_max_window_layers(62)

# transformers 5.25 models/dots1/configuration_dots1.py, Dots1Config: the experts' counts
# default to None there (the model cannot be built without them)
DEFAULTS: Config = {
    "n_routed_experts": None,
    "num_experts_per_tok": None,
    "n_shared_experts": None,
    "first_k_dense_replace": 0,
    "moe_intermediate_size": 1408,
}


def _read(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True
    if not cfg.get("layer_types") and not SLIDING(cfg, out["num_layers"]):
        out.pop("sliding_window", None)  # (Dots1Config's default window, on no layer)
    read_deepseek_experts(cfg, out, DEFAULTS)
    # (the router divides its top-k weights by their sum only when norm_topk_prob says so)
    out["router_renormalises"] = flag(cfg, "norm_topk_prob", False)


def _build(arch: Architecture, kw: Config) -> None:
    build_deepseek_experts(arch, kw)
    kw["norm_topk_prob"] = arch.router_renormalises
    kw.update(
        sliding_window=arch.sliding_window,
        max_window_layers=arch.num_layers - arch.sliding_layers if arch.sliding_window else 0,
    )


FAMILY = Family(
    name="dots1",
    model_types=("dots1",),
    decoder_layer="Dots1DecoderLayer",
    config=llama_map(
        "dots1", LlamaKeys(optional=("attention_bias",), sliding=SLIDING), _read, _build
    ),
    names=replace(LLAMA_NAMES, experts=EXPERT_NAMES, shared_experts=SHARED_EXPERTS),
    qk_norm=True,
    router_fp32=True,
    router_renormalisation_optional=True,
    peft_converts_expert_targets=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
