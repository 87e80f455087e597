"""Llama 2 / 3 (transformers' LlamaForCausalLM): the reference layout."""

from ftmem.families import SP_MODES, Family
from ftmem.families._config import LlamaKeys
from ftmem.families._llama import LLAMA_NAMES, llama_map

FAMILY = Family(
    name="llama",
    # ColossalAI shardformer: policies/llama.py, modeling/llama.py
    colossalai_policy=SP_MODES,
    model_types=("llama",),
    decoder_layer="LlamaDecoderLayer",
    config=llama_map("llama", LlamaKeys(optional=("attention_bias", "mlp_bias"))),
    names=LLAMA_NAMES,
)
