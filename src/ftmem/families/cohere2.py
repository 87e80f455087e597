"""Command R7B / Command A (Cohere2ForCausalLM): Command R's parallel block (one
bias-free LayerNorm written out in fp32, a gated MLP, tied embeddings, scaled logits)
whose layers slide or attend globally per ``layer_types``, the global ones without the
rotary.

What transformers 5.25 does (models/cohere2/modeling_cohere2.py), against
modeling_cohere.py: Cohere2Attention takes its window from its layer's type and applies
the rotary only where it slides (``if self.sliding_window is not None``): a global
layer hands the projections' outputs to the kernel as they are, tensors of the rotary
outputs' size (EXAONE 4's and SmolLM3's NoPE layers); it has no q/k norms. The model
builds a causal and a sliding-window mask every forward and gives each layer its
type's (Ministral's: a stack without sliding layers is refused,
_llama.sliding_mask_always). Cohere2Config (configuration_cohere2.py): head_dim
hidden / heads unless config.json gives one (``__post_init__`` sets it before the
given keys are applied), window 4096, every fourth layer global (``sliding_window_pattern``), tied embeddings, ``attention_bias`` on q, k,
v and o.

Measured (stop 49; tests/accuracy, CPU: Command R's tiny shape, one sliding layer of 16
under a global one, 3 × 50 tokens; 24 cases: the matrix, QLoRA, checkpointing, eager
attention, a window on both layers, freeze): weights, gradients, states and activations
exact but IA³'s +1,024 B and prefix tuning's +4,800 B (one bf16 table pair counted that
nothing keeps there, not traced); peaks within 0.7 %. Training only the top (global)
block was +9,600 B (the fp32 tables) before Family.rotary_on_sliding_layers_only."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, every_nth_full
from ftmem.families._llama import LLAMA_NAMES, llama_map, sliding_mask_always
from ftmem.families.ministral import build_layer_types
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# Cohere2Config's defaults
DEFAULT_WINDOW = 4096
SLIDING = every_nth_full("sliding_window_pattern", 4)


def _read(cfg: Config, out: Config) -> None:
    out.update(norms_per_block=1, parallel_attn_mlp=True)
    if "max_position_embeddings" not in cfg:
        out["max_position_embeddings"] = 8192
    sliding_mask_always(cfg, out, DEFAULT_WINDOW, SLIDING, "Command R7B / Command A")


def _build(arch: Architecture, kw: Config) -> None:
    build_layer_types(arch, kw)


FAMILY = Family(
    name="cohere2",
    model_types=("cohere2",),
    decoder_layer="Cohere2DecoderLayer",
    config=llama_map(
        "cohere2", LlamaKeys(optional=("attention_bias",), sliding=SLIDING, tie=True), _read, _build
    ),
    names=replace(LLAMA_NAMES, norms={1: ("input_layernorm",)}),
    norm_scale_in_fp32=True,
    norm_centres_twice=True,
    rotary_on_sliding_layers_only=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
