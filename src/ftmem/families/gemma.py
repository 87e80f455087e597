"""Gemma (GemmaForCausalLM): Llama's block; RMSNorm scales by (1 + w) in fp32."""

from ftmem.families import Family
from ftmem.families._config import LlamaKeys
from ftmem.families._llama import LLAMA_NAMES, llama_map

FAMILY = Family(
    name="gemma",
    model_types=("gemma",),
    decoder_layer="GemmaDecoderLayer",
    config=llama_map("gemma", LlamaKeys(optional=("attention_bias",), tie=True)),
    names=LLAMA_NAMES,
    norm_scale_in_fp32=True,
)
