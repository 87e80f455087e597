"""EXAONE 4.0 (Exaone4ForCausalLM): OLMo 2's wiring (the two RMSNorms after attention
and after the MLP, nothing normalising their inputs) with Qwen3's per-head q/k
RMSNorms, and global layers without the rotary in a hybrid stack (NoPE: the
projections' outputs go to the kernel as they are, tensors of the same size)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, every_nth_full
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture


def _read(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True


def _build(arch: Architecture, kw: Config) -> None:
    if arch.sliding_window is None:  # Exaone4Config's defaults would make layers local
        kw.update(sliding_window=None, layer_types=["full_attention"] * arch.num_layers)


FAMILY = Family(
    name="exaone4",
    model_types=("exaone4",),
    decoder_layer="Exaone4DecoderLayer",
    config=llama_map(
        "exaone4",
        LlamaKeys(window="when-set", sliding=every_nth_full("sliding_window_pattern", 4)),
        _read,
        _build,
    ),
    names=replace(
        LLAMA_NAMES, norms={2: ("post_attention_layernorm", "post_feedforward_layernorm")}
    ),
    qk_norm=True,
    norms_after_sublayers=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
