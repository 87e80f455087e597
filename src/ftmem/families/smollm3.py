"""SmolLM3 (SmolLM3ForCausalLM): Llama's block with the rotary left out of every fourth
layer (``no_rope_layers``: NoPE). A NoPE layer hands the projections' outputs to the
attention kernel as they are, which keeps tensors of the rotary outputs' size, so the
memory is Llama's; embeddings tied unless the config says not."""

from __future__ import annotations

from ftmem.families import Family
from ftmem.families._config import LlamaKeys, on_nope_layers
from ftmem.families._llama import LLAMA_NAMES, llama_map, window_off_by_default
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

FAMILY = Family(
    name="smollm3",
    model_types=("smollm3",),
    decoder_layer="SmolLM3DecoderLayer",
    config=llama_map(
        "smollm3",
        LlamaKeys(
            optional=("attention_bias", "mlp_bias"),
            window="use_sliding_window",
            sliding=on_nope_layers,
            tie=True,
        ),
        read_extra=window_off_by_default,
    ),
    names=LLAMA_NAMES,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
