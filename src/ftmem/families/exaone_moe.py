"""K-EXAONE (ExaoneMoeForCausalLM, model_type ``exaone_moe``): EXAONE 4's attention under
Llama's pre-norm block, over DeepSeek-V3's mixture of experts line for line
(transformers 5.25 models/exaone_moe/modular_exaone_moe.py: ExaoneMoeAttention is
Exaone4Attention, ExaoneMoeDecoderLayer is OlmoeDecoderLayer, i.e. input_layernorm and
post_attention_layernorm before each sublayer, and ExaoneMoeTopkRouter, ExaoneMoeExperts
and ExaoneMoeSparseMoEBlock are DeepseekV3's classes but for the keys they read).

The attention: per-head RMSNorms on queries and keys (on the (b, heads, s, head_dim)
views, as EXAONE 4's), no biases, and in a hybrid stack the global layers without the
rotary (NoPE: ``if self.sliding_window is None or self.is_sliding``), which hand the
kernel tensors of the same size. The experts: an fp32 sigmoid router with a correction
bias buffer (``_keep_in_fp32_modules_strict = ["e_score_correction_bias",
"gate.weight"]``), top-k weights renormalised as ``norm_topk_prob`` says (true by default)
and scaled by ``routed_scaling_factor``, routed experts as 3-D parameters
(``num_experts`` x ``moe_intermediate_size``), ``num_shared_experts`` x
``moe_intermediate_size`` of shared MLP beside them, and dense MLPs of ``intermediate_size``
where ``mlp_layer_types`` says "dense", by default the first ``first_k_dense_replace`` (1)
blocks (configuration_exaone_moe.py ``__post_init__``). The multi-token-prediction layers
of the published checkpoints are not built (``_keys_to_ignore_on_load_unexpected``
``mtp.*``) and are not counted.

Measured (stop 49, tests/accuracy ``^exaonemoe-``: 27 tiny cases, peft 0.21.2, torch 2.13
CPU): weights, gradients and optimizer states exact; activations 64 B under the
measurement in fp32 and bf16 and +7,736 B (+0.2-0.3 %) under autocast, as DeepSeek-V3's
and GLM-4.5's same experts; checkpointed LoRA peaks +3.4-3.6 %, as dots.llm1's. Before
``rotary_on_sliding_layers_only`` every case without checkpointing read the unused
tables, +9,600 B (50 positions x 24 x 4 B, cos and sin). Not measured: a published
checkpoint (no sourced config.json: no preset); QLoRA leaves the fp32 router and the 3-D
experts unquantised, as DeepSeek's (measured exact)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import Family
from ftmem.families._config import (
    Config,
    LlamaKeys,
    dense_prefix_or_first_k,
    every_nth_full,
    flag,
    opt_or,
    shown,
)
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.families.deepseek_v3 import SHARED_EXPERTS
from ftmem.families.mixtral import EXPERT_NAMES
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# transformers 5.25 models/exaone_moe/configuration_exaone_moe.py, ExaoneMoeConfig
DEFAULTS: Config = {
    "num_experts": 64,
    "num_experts_per_tok": 8,
    "num_shared_experts": 1,
    "first_k_dense_replace": 1,
    "moe_intermediate_size": 1024,
}


DEFAULT_WINDOW = 4096


def _check_moe_layers(cfg: Config, layers: int, dense: int) -> None:
    """Some K-EXAONE config.json copies also carry ``is_moe_layer`` (another runtime's
    key, with ``first_last_k_dense_replace``), which ExaoneMoeConfig does not read: where
    it names other blocks sparse than transformers builds, the checkpoint's weights would
    not fit the model, so the config is refused rather than counted either way."""
    given = cfg.get("is_moe_layer")
    if given is None:
        return
    built = [i >= dense for i in range(layers)]
    if given != built:
        raise ConfigError(
            f"config.json: is_moe_layer {shown(given)} differs from the blocks transformers "
            "builds with experts (mlp_layer_types, else first_k_dense_replace); give "
            "mlp_layer_types to match the checkpoint."
        )


def _read(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True
    types = cfg.get("layer_types")
    all_global = isinstance(types, list) and "sliding_attention" not in types
    if "sliding_window" not in cfg and not all_global:  # (ExaoneMoeConfig's default)
        out["sliding_window"] = DEFAULT_WINDOW
    layers = out["num_layers"]
    dense = dense_prefix_or_first_k(cfg, layers, DEFAULTS["first_k_dense_replace"])
    _check_moe_layers(cfg, layers, dense)
    if dense >= layers:
        raise ConfigError(
            f"config.json: {dense} dense MLPs leave no block with experts; ftmem models "
            "stacks with sparse blocks."
        )
    moe_width = opt_or(cfg, "moe_intermediate_size", DEFAULTS)
    shared = opt_or(cfg, "num_shared_experts", DEFAULTS, limits.EXPERTS)
    if dense:
        out.update(dense_layers=dense, dense_intermediate_size=out["intermediate_size"])
    out.update(
        num_experts=opt_or(cfg, "num_experts", DEFAULTS, limits.EXPERTS),
        experts_per_token=opt_or(cfg, "num_experts_per_tok", DEFAULTS, limits.EXPERTS),
        intermediate_size=moe_width,
        shared_experts_size=moe_width * shared,
        # (the router divides its top-k weights by their sum only when norm_topk_prob says so)
        router_renormalises=flag(cfg, "norm_topk_prob", True),
    )


def _build(arch: Architecture, kw: Config) -> None:
    moe = arch.intermediate_size
    if not arch.shared_experts_size or arch.shared_experts_size % moe:
        raise ValueError(
            f"{arch.name}: shared_experts_size {arch.shared_experts_size} is not a positive "
            f"whole number of experts {moe} wide (transformers builds num_shared_experts x "
            "moe_intermediate_size)"
        )
    sliding = arch.sliding_layers if arch.sliding_window else 0
    kw.update(
        intermediate_size=arch.dense_intermediate_size or moe,
        moe_intermediate_size=moe,
        num_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
        num_shared_experts=arch.shared_experts_size // moe,
        mlp_layer_types=["dense"] * arch.dense_layers
        + ["sparse"] * (arch.num_layers - arch.dense_layers),
        norm_topk_prob=arch.router_renormalises,
        # one group, all kept: the group-limited choice is then plain top-k
        n_group=1,
        topk_group=1,
        # ExaoneMoeConfig's window is an int, never null (its strict dataclass refuses
        # None), and its default pattern would make layers local: the layer types say
        # which slide, the lowest ones as ftmem takes them
        sliding_window=arch.sliding_window or DEFAULT_WINDOW,
        layer_types=["sliding_attention"] * sliding
        + ["full_attention"] * (arch.num_layers - sliding),
    )


FAMILY = Family(
    name="exaone_moe",
    model_types=("exaone_moe",),
    decoder_layer="ExaoneMoeDecoderLayer",
    config=llama_map(
        "exaone_moe",
        LlamaKeys(
            # (ExaoneMoeAttention's projections are built bias=False: no attention_bias)
            fixed_bias=(False, False),
            window="when-set",
            sliding=every_nth_full("sliding_window_pattern", 4),
        ),
        _read,
        _build,
    ),
    names=replace(LLAMA_NAMES, experts=EXPERT_NAMES, shared_experts=SHARED_EXPERTS),
    qk_norm=True,
    rotary_on_sliding_layers_only=True,
    router_fp32=True,
    router_renormalisation_optional=True,
    peft_converts_expert_targets=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
