"""Qwen3-MoE (Qwen3MoeForCausalLM): Qwen3's attention (per-head q/k RMSNorms, no
biases) and Mixtral's routed experts, stored as 3-D parameters in transformers 5, with
their own width ``moe_intermediate_size``. transformers makes a layer dense when it is
in ``mlp_only_layers`` or off the ``decoder_sparse_step`` grid; every published Qwen3-MoE
config has all layers sparse, and a mixed stack is refused rather than mis-counted."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, every_layer, flag, need, opt, shown
from ftmem.families._llama import LLAMA_NAMES, llama_map, window_off_by_default
from ftmem.families.mixtral import EXPERT_NAMES
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture


def _read(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True
    window_off_by_default(cfg, out)
    dense_layers = cfg.get("mlp_only_layers") or []
    step = opt(cfg, "decoder_sparse_step", limits.LAYERS) or 1
    if dense_layers or step != 1:
        raise ConfigError(
            "config.json: a Qwen3-MoE stack with dense layers (mlp_only_layers "
            f"{shown(dense_layers)}, decoder_sparse_step {step}) is not supported yet; "
            "ftmem models stacks whose every layer has the same experts."
        )
    out.update(
        intermediate_size=need(cfg, "moe_intermediate_size"),
        # (transformers 5 writes num_experts back as num_local_experts, its attribute_map)
        num_experts=need(cfg, "num_experts", "num_local_experts", bound=limits.EXPERTS),
        experts_per_token=need(cfg, "num_experts_per_tok", bound=limits.EXPERTS),
        # (Qwen3MoeConfig's default is false; the published Qwen3-MoE configs say true)
        router_renormalises=flag(cfg, "norm_topk_prob", False),
    )


def _build(arch: Architecture, kw: Config) -> None:
    kw.update(
        moe_intermediate_size=arch.intermediate_size,
        num_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
        norm_topk_prob=arch.router_renormalises,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )


FAMILY = Family(
    name="qwen3_moe",
    model_types=("qwen3_moe",),
    decoder_layer="Qwen3MoeDecoderLayer",
    config=llama_map(
        "qwen3_moe",
        LlamaKeys(optional=("attention_bias",), window="use_sliding_window", sliding=every_layer),
        _read,
        _build,
    ),
    names=replace(LLAMA_NAMES, experts=EXPERT_NAMES),
    qk_norm=True,
    peft_converts_expert_targets=True,
    router_renormalisation_optional=True,
    routing_weights_in_router_dtype=True,
    router_aux_loss=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
