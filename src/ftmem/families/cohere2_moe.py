"""Cohere2-MoE (Cohere2MoeForCausalLM, ``cohere2_moe``): Command R's parallel block under
one fp32-written LayerNorm (``families.cohere``: attention and MLP read the same normalised
input, logits times ``logit_scale``, embeddings tied) with Cohere2's attention (the rotary
on the sliding layers and on the dense prefix, none on the other full layers) and
Mixtral's 3-D experts (transformers 5.25 models/cohere2_moe/modular_cohere2_moe.py:
Cohere2MoeTopKRouter, Cohere2MoeSparseMoeBlock, Cohere2MoeAttention, Cohere2MoeDecoderLayer).

The router, ``mlp.gate``, is a bare (E, h) weight in the model's dtype: top-k of its
logits, a softmax over the k in fp32 (``dtype=torch.float``), cast to the hidden states'
dtype: what GraniteMoE's keeps (``router_topk_softmax_fp32``). ``num_shared_experts``
dense MLPs of the experts' width sit beside them (``mlp.shared_experts``), their output
summed or averaged with the experts' (a division by 2 keeps nothing). The first blocks
are dense where ``mlp_layer_types`` (or ``first_k_dense_replace``, which its
``__post_init__`` reads) says, ``prefix_dense_intermediate_size`` wide. peft 0.21.2
converts its expert targets (transformers' _MODEL_TO_CONVERSION_PATTERN: "qwen2_moe").

Not modelled, refused: ``rms_norm_eps`` (an RMSNorm instead of the LayerNorm) and
``expert_selection_fn`` "sigmoid" (a router not measured here), both of which the published
North checkpoint sets (its config.json as a public loader pins it, code index file
70142688610): that model is refused until they are measured.

Measured (stop 49, torch CPU, peft 0.21.2, the tiny ``cohere2_moe`` of tests/conftest.py):
20 cases, weights, gradients and optimizer states exact, activations within 64 B once the
router's input is the norm output the attention keeps (MoE.saved ``shared_input``: it was
counted again, +57,600 B a sparse block in fp32 full finetuning), peaks within 0.3 % but
the checkpointed LoRA case, -2.9 %."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families._config import (
    Config,
    LlamaKeys,
    dense_prefix_or_first_k,
    opt,
    opt_or,
    shown,
    word,
)
from ftmem.families._llama import llama_map
from ftmem.families.cohere import FAMILY as COHERE
from ftmem.families.deepseek_v3 import SHARED_EXPERTS
from ftmem.families.mixtral import EXPERT_NAMES

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# transformers 5.25 models/cohere2_moe/configuration_cohere2_moe.py, Cohere2MoeConfig
DEFAULTS: Config = {
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "num_shared_experts": 0,
    "sliding_window_pattern": 4,
    "prefix_dense_sliding_window_pattern": 1,
}


def _sliding(cfg: Config, layers: int) -> int:
    """Cohere2MoeConfig.__post_init__'s layer_types: the dense prefix slides but on every
    ``prefix_dense_sliding_window_pattern``-th layer, the rest but on every
    ``sliding_window_pattern``-th."""
    first = cfg.get("first_k_dense_replace", 0)
    prefix = opt_or(cfg, "prefix_dense_sliding_window_pattern", DEFAULTS, limits.LAYERS)
    rest = opt_or(cfg, "sliding_window_pattern", DEFAULTS, limits.LAYERS)
    return sum((i + 1) % prefix != 0 for i in range(first)) + sum(
        (i + 1) % rest != 0 for i in range(layers - first)
    )


def _read(cfg: Config, out: Config) -> None:
    if cfg.get("rms_norm_eps") is not None:
        raise ConfigError(
            "config.json: rms_norm_eps makes Cohere2-MoE's norms RMSNorms, which ftmem has "
            "not measured; only its LayerNorm (rms_norm_eps null) is modelled."
        )
    selection = word(cfg, "expert_selection_fn", "softmax")
    if selection != "softmax":
        raise ConfigError(
            f"config.json: expert_selection_fn {shown(selection)} is not modelled; only "
            "Cohere2-MoE's softmax router is."
        )
    width = out["intermediate_size"]
    shared = cfg.get("num_shared_experts") or 0  # (0, the class's default: none)
    if isinstance(shared, bool) or not isinstance(shared, int) or shared < 0:
        raise ConfigError(f"config.json: num_shared_experts must be a count, not {shown(shared)}.")
    out.update(
        norms_per_block=1,
        parallel_attn_mlp=True,
        num_experts=opt_or(cfg, "num_experts", DEFAULTS, limits.EXPERTS),
        experts_per_token=opt_or(cfg, "num_experts_per_tok", DEFAULTS, limits.EXPERTS),
        shared_experts_size=width * shared,
    )
    first = dense_prefix_or_first_k(cfg, out["num_layers"], 0)
    if first >= out["num_layers"]:
        raise ConfigError(
            "config.json: no block with experts; ftmem models stacks with sparse blocks."
        )
    if first:
        dense = opt(cfg, "prefix_dense_intermediate_size") or width
        out.update(dense_layers=first, dense_intermediate_size=dense)


def _build(arch: Architecture, kw: Config) -> None:
    dense = arch.dense_layers
    pattern = [
        "full_attention" if i < dense or (i - dense + 1) % 4 == 0 else "sliding_attention"
        for i in range(arch.num_layers)
    ]
    if arch.sliding_window and pattern.count("sliding_attention") != arch.sliding_layers:
        raise ValueError(
            f"{arch.name}: {arch.sliding_layers} sliding layers is not Cohere2-MoE's pattern "
            "(the dense prefix full, then every fourth layer)"
        )
    kw.update(
        num_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
        num_shared_experts=arch.shared_experts_size // arch.intermediate_size,
        mlp_layer_types=["dense"] * dense + ["sparse"] * (arch.num_layers - dense),
        prefix_dense_intermediate_size=arch.dense_intermediate_size or arch.intermediate_size,
        layer_types=pattern if arch.sliding_window else ["full_attention"] * arch.num_layers,
        sliding_window=arch.sliding_window or 4096,
    )


FAMILY = replace(
    COHERE,
    name="cohere2_moe",
    model_types=("cohere2_moe",),
    decoder_layer="Cohere2MoeDecoderLayer",
    config=llama_map(
        "cohere2_moe",
        LlamaKeys(optional=("attention_bias",), window="always", sliding=_sliding, tie=True),
        _read,
        _build,
    ),
    names=replace(COHERE.names, experts=EXPERT_NAMES, shared_experts=SHARED_EXPERTS),
    qk_norm_switch=None,
    colossalai_policy=None,
    colossalai_repeats_kv=frozenset(),
    colossalai_builds_mask=frozenset(),
    causal_mask_buffer=(),
    rotary_per_layer_releases=(),
    sdpa_float_mask_releases=(),
    own_loss_releases=(),
    router_topk_softmax=True,
    router_topk_softmax_fp32=True,
    routing_weights_in_hidden_dtype=True,
    peft_converts_expert_targets=True,
)
