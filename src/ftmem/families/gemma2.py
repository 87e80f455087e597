"""Gemma 2 (Gemma2ForCausalLM): pre and post norms around attention and MLP, soft-capped
attention scores and logits; transformers 5 has no sdpa path for it."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, alternating, number, wrong
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS, UPCAST_IN_FORWARD_LOSS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

SOFTCAPS = ("final_logit_softcapping", "attn_logit_softcapping")
# Gemma 2 and 3: a norm before and after each of attention and MLP
GEMMA2_NAMES = replace(
    LLAMA_NAMES,
    norms={
        4: (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        )
    },
)


def read_softcaps(cfg: Config, out: Config) -> None:
    """Four norms per block, and the soft-caps a config gives (Gemma 2 and 3)."""
    out["norms_per_block"] = 4
    for key in SOFTCAPS:
        cap = number(cfg, key)
        if cap is not None and cap <= 0:  # gemma2 divides the logits by it
            raise wrong(key, "positive (or null)", cfg[key])
        if cap:
            out[key] = cap


def build_gemma2(arch: Architecture, kw: Config) -> None:
    if arch.sliding_window is None:  # no local layers: every layer attends globally
        kw["layer_types"] = ["full_attention"] * arch.num_layers
    kw.update(
        final_logit_softcapping=arch.final_logit_softcapping,
        attn_logit_softcapping=arch.attn_logit_softcapping,
        query_pre_attn_scalar=arch.head_size,
    )


# peft's default LN-tuning targets for gemma2 and gemma3 (the four sandwich norms and the
# final one)
GEMMA2_LN_TUNING = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
    "norm",
)

FAMILY = Family(
    # peft's LN-tuning defaults
    ln_tuning_targets=GEMMA2_LN_TUNING,
    name="gemma2",
    model_types=("gemma2",),
    decoder_layer="Gemma2DecoderLayer",
    config=llama_map(
        "gemma2",
        LlamaKeys(
            optional=("attention_bias",),
            activation="hidden_activation",
            window="when-set",
            sliding=alternating,
            tie=True,
        ),
        read_softcaps,
        build_gemma2,
    ),
    names=GEMMA2_NAMES,
    attention="eager",
    norm_scale_in_fp32=True,
    norm_scale_plus_one=True,
    notes={
        "attention": (
            "Gemma-2 has no sdpa path in transformers 5: its attention runs eagerly and keeps "
            "the soft-capped s² scores."
        )
    },
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
    # its own upcast-shifted loss before 4.46 (versions.UPCAST_IN_FORWARD_LOSS)
    own_loss_releases=((UPCAST_IN_FORWARD_LOSS, "upcast-shifted"),),
)
