"""Gemma (GemmaForCausalLM): Llama's block; RMSNorm scales by (1 + w) in fp32."""

from ftmem.families import Family
from ftmem.families._config import LlamaKeys
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import (
    LLAMA_CAUSAL_MASK_BOOL,
    LLAMA_CAUSAL_MASK_INT64,
    LLAMA_SDPA_FLOAT_MASK,
    MISTRAL_ROTARY_PER_LAYER,
    TRANSFORMERS_SDPA_CONTIGUOUS,
    UPCAST_IN_FORWARD_LOSS,
)

FAMILY = Family(
    # peft's LN-tuning defaults
    ln_tuning_targets=("input_layernorm", "post_attention_layernorm", "norm"),
    name="gemma",
    model_types=("gemma",),
    decoder_layer="GemmaDecoderLayer",
    config=llama_map("gemma", LlamaKeys(optional=("attention_bias",), tie=True)),
    names=LLAMA_NAMES,
    norm_scale_in_fp32=True,
    norm_scale_plus_one=True,
    causal_mask_buffer=((LLAMA_CAUSAL_MASK_INT64, 8), (LLAMA_CAUSAL_MASK_BOOL, 1)),
    rotary_per_layer_releases=MISTRAL_ROTARY_PER_LAYER,
    sdpa_float_mask_releases=LLAMA_SDPA_FLOAT_MASK,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
    # its own upcast-shifted loss before 4.46 (versions.UPCAST_IN_FORWARD_LOSS)
    own_loss_releases=((UPCAST_IN_FORWARD_LOSS, "upcast-shifted"),),
)
