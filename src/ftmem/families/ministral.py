"""Ministral (MinistralForCausalLM, Ministral-8B): Mistral's block (no biases, SwiGLU,
RMSNorms, rotary tables in the hidden states' dtype) whose layers slide or attend
globally per ``layer_types``.

What transformers 5.25 does (models/ministral/modeling_ministral.py), against
modeling_mistral.py: MinistralAttention takes its window from its layer's type (l.142,
l.155) and builds q/k/v/o without biases whatever the config (l.150-154); the model
builds a causal and a sliding-window mask and gives each layer its type's (l.375-397);
everything else is Mistral's. MinistralConfig (configuration_ministral.py): window 4096,
every layer "sliding_attention" when layer_types is absent and a window is set, untied
embeddings; ``head_dim`` defaults to None and the attention reads it as given
(``getattr(config, "head_dim", ...)``, l.145: None fails at ``head_dim ** -0.5``), so a
config.json must give it.

Measured (tests/accuracy, CPU: one sliding layer of 16 under a full one, 3 × 50 tokens):
the matrix's 17 cases, checkpointed LoRA and full finetuning (the checkpoints hold the
sliding layer's mask), QLoRA: activations exact to the byte (IA³ +384 B, as in the older
families' IA³ cases, e.g. Mistral's +384 B), peaks within 0.3 %."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, every_layer, need
from ftmem.families._llama import LLAMA_NAMES, llama_map, sliding_mask_always
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# MinistralConfig's default window (configuration_ministral.py)
DEFAULT_WINDOW = 4096
DEFAULT_POSITIONS = 4096 * 32


def _read(cfg: Config, out: Config) -> None:
    out["head_dim"] = need(cfg, "head_dim")
    out["mlp_bias"] = False  # (its MLP and attention take no bias switch)
    if "max_position_embeddings" not in cfg:  # (MinistralConfig's default)
        out["max_position_embeddings"] = DEFAULT_POSITIONS
    sliding_mask_always(cfg, out, DEFAULT_WINDOW, every_layer, "Ministral")


def build_layer_types(arch: Architecture, kw: Config) -> None:
    """The window and the layer types: the lowest ``sliding_layers`` layers slide (the
    order ftmem takes, step._sliding_blocks); for measure, a stack without sliding
    layers keeps a window too long for its unread mask to be built at test lengths."""
    sliding = arch.sliding_layers if arch.sliding_window else 0
    kw.update(
        sliding_window=arch.sliding_window or DEFAULT_WINDOW,
        layer_types=["sliding_attention"] * sliding
        + ["full_attention"] * (arch.num_layers - sliding),
    )


FAMILY = Family(
    # (peft 0.21.2 utils/constants.py has no ministral entries: no LN-tuning defaults)
    name="ministral",
    model_types=("ministral",),
    decoder_layer="MinistralDecoderLayer",
    config=llama_map(
        "ministral",
        LlamaKeys(fixed_bias=(False, False), sliding=every_layer),
        _read,
        build_layer_types,
    ),
    names=LLAMA_NAMES,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
