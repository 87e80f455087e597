"""Liquid's LFM2 MoE text model (Lfm2MoeForCausalLM, model_type lfm2_moe; transformers 5.25
models/lfm2_moe/): LFM2's stack (families.lfm2: short-convolution and attention layers
in ``layer_types`` order, the same norms and names) whose first ``num_dense_layers``
blocks (default 2) keep a dense SwiGLU MLP of ``intermediate_size`` as given (Lfm2MoeMLP:
no width adjustment) and whose others hold Lfm2MoeSparseMoeBlock (l.198-217):
``feed_forward.gate.weight`` (experts, hidden; a bare parameter, sigmoid scores), the
3-D ``feed_forward.experts.gate_up_proj`` (experts, 2·moe_intermediate_size, hidden) and
``down_proj`` (experts, hidden, moe_intermediate_size), and with ``use_expert_bias``
(default true) an fp32 ``expert_bias`` buffer of one value an expert (a buffer, not a
parameter: not in the count, 4·experts bytes a sparse layer beside the weights).
Lfm2MoeConfig sets no default ``layer_types`` (the model indexes it), so config.json must
give it.

Measured (stop 51, helper lfm2): every tensor's name and size equals transformers 5.25's
model on the meta device (tests/test_lfm2.py). A training step and serving are refused in
one sentence (ops.short_conv.refuse), as for lfm2.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import ConfigMap
from ftmem.families._config import Config, flag, need, opt_or, wrong
from ftmem.families.lfm2 import FAMILY as LFM2
from ftmem.families.lfm2 import build_lfm2, read_lfm2

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# Lfm2MoeConfig's class defaults (transformers 5.25 configuration_lfm2_moe.py)
DEFAULTS: Config = {
    "vocab_size": 65536,
    "hidden_size": 2048,
    "intermediate_size": 7168,
    "moe_intermediate_size": 1792,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 128_000,
    "tie_word_embeddings": True,
    "conv_L_cache": 3,
    "num_dense_layers": 2,
    "num_experts_per_tok": 4,
    "num_experts": 32,
}


def _read(cfg: Config) -> Config:
    if cfg.get("layer_types") is None:
        raise ConfigError(
            "config.json lacks 'layer_types', which an lfm2_moe model needs (Lfm2MoeConfig "
            "has no default order)."
        )
    out, full = read_lfm2(cfg, "lfm2_moe", DEFAULTS)
    dense = full["num_dense_layers"]  # (full: with the defaults)
    if isinstance(dense, bool) or not isinstance(dense, int) or dense < 0:
        raise wrong("num_dense_layers", "a count", dense)
    if dense >= out["num_layers"]:
        raise ConfigError(
            f"config.json: num_dense_layers {dense} leaves no block with experts; ftmem models "
            "stacks with sparse blocks."
        )
    out.update(
        num_experts=opt_or(full, "num_experts", DEFAULTS, limits.EXPERTS),
        experts_per_token=opt_or(full, "num_experts_per_tok", DEFAULTS, limits.EXPERTS),
        intermediate_size=opt_or(full, "moe_intermediate_size", DEFAULTS),
        router_renormalises=flag(full, "norm_topk_prob", True),
    )
    if dense:
        out.update(dense_layers=dense, dense_intermediate_size=need(full, "intermediate_size"))
    return out


def _build(arch: Architecture) -> Config:
    kw = build_lfm2(arch)
    kw.update(
        num_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
        moe_intermediate_size=arch.intermediate_size,
        intermediate_size=arch.dense_intermediate_size or arch.intermediate_size,
        num_dense_layers=arch.dense_layers,
        norm_topk_prob=arch.router_renormalises,
    )
    return kw


EXPERT_NAMES = {
    "router": "feed_forward.gate",
    "gate_up": "feed_forward.experts.gate_up_proj",
    "down": "feed_forward.experts.down_proj",
}

FAMILY = replace(
    LFM2,
    name="lfm2_moe",
    model_types=("lfm2_moe",),
    decoder_layer="Lfm2MoeDecoderLayer",
    config=ConfigMap(_read, _build),
    names=replace(LFM2.names, experts=EXPERT_NAMES),
    router_renormalisation_optional=True,
)
