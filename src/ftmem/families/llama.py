"""Llama 2 / 3 (transformers' LlamaForCausalLM): the reference layout."""

from ftmem.families import SP_MODES, Family
from ftmem.families._config import LlamaKeys
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.ops.nograd_requests import llama_block_forward
from ftmem.versions import (
    LLAMA_CAUSAL_MASK_BOOL,
    LLAMA_CAUSAL_MASK_INT64,
    LLAMA_LAST_COS_SIN_KEPT,
    LLAMA_ROTARY_CACHE,
    LLAMA_ROTARY_PER_LAYER,
    LLAMA_SDPA_FLOAT_MASK,
    TRANSFORMERS_SDPA_CONTIGUOUS,
    UPCAST_IN_FORWARD_LOSS,
)

FAMILY = Family(
    # peft's LN-tuning defaults
    ln_tuning_targets=("input_layernorm", "post_attention_layernorm", "norm"),
    block_forward=llama_block_forward,
    name="llama",
    # ColossalAI shardformer: policies/llama.py, modeling/llama.py
    colossalai_policy=SP_MODES,
    # policies/llama.py:75-82 replaces LlamaAttention.forward under flash attention or
    # sequence parallelism; modeling/llama.py:551-552 repeat_kv before ColoAttention or
    # RingAttention (its eager branch too, :569)
    colossalai_repeats_kv=frozenset({"flash", "sp"}),
    # its model forward (policies/llama.py:84-94, every layout) builds ColoAttention's mask
    # under flash attention (modeling/llama.py:132-140; ring_attn prepares varlen instead)
    colossalai_builds_mask=frozenset({"flash"}),
    # without flash attention the replaced forward takes eager matmuls (modeling/llama.py:568-585)
    colossalai_sp_eager=True,
    model_types=("llama",),
    adaption_prompt_target="self_attn",
    decoder_layer="LlamaDecoderLayer",
    config=llama_map("llama", LlamaKeys(optional=("attention_bias", "mlp_bias"))),
    names=LLAMA_NAMES,
    rotary_cache_releases=LLAMA_ROTARY_CACHE,
    causal_mask_buffer=((LLAMA_CAUSAL_MASK_INT64, 8), (LLAMA_CAUSAL_MASK_BOOL, 1)),
    rotary_per_layer_releases=LLAMA_ROTARY_PER_LAYER,
    sdpa_float_mask_releases=LLAMA_SDPA_FLOAT_MASK,
    last_cos_sin_releases=LLAMA_LAST_COS_SIN_KEPT,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
    # its own upcast-shifted loss before 4.46 (versions.UPCAST_IN_FORWARD_LOSS)
    own_loss_releases=((UPCAST_IN_FORWARD_LOSS, "upcast-shifted"),),
)
