"""Mistral (MistralForCausalLM): Llama's block with a sliding window."""

from ftmem.families import Family
from ftmem.families._config import LlamaKeys, every_layer
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.ops.nograd_requests import llama_block_forward
from ftmem.versions import (
    MISTRAL_OWN_UPCAST_LOSS,
    MISTRAL_ROTARY_CACHE,
    MISTRAL_ROTARY_PER_LAYER,
    TRANSFORMERS_SDPA_CONTIGUOUS,
)

FAMILY = Family(
    # peft's LN-tuning defaults
    ln_tuning_targets=("input_layernorm", "post_attention_layernorm", "norm"),
    block_forward=llama_block_forward,
    name="mistral",
    # ColossalAI shardformer: policies/mistral.py:56 warns and ignores sequence parallelism
    colossalai_policy=frozenset(),
    # policies/mistral.py:241-247 under flash attention; modeling/mistral.py:541-545
    # repeat_kv before ColoAttention
    colossalai_repeats_kv=frozenset({"flash"}),
    # its model forwards build ColoAttention's mask under flash (modeling/mistral.py:89-97,
    # 431-439; policies/mistral.py:249-253)
    colossalai_builds_mask=frozenset({"flash"}),
    model_types=("mistral",),
    adaption_prompt_target="self_attn",
    decoder_layer="MistralDecoderLayer",
    config=llama_map("mistral", LlamaKeys(window="always", sliding=every_layer)),
    names=LLAMA_NAMES,
    rotary_cache_releases=MISTRAL_ROTARY_CACHE,
    rotary_per_layer_releases=MISTRAL_ROTARY_PER_LAYER,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
    own_loss_releases=((MISTRAL_OWN_UPCAST_LOSS, "upcast-shifted"),),
)
