"""Qwen2 / Qwen2.5 (Qwen2ForCausalLM): Llama's block with q/k/v biases."""

from ftmem.families import SP_MODES, Family
from ftmem.families._config import LlamaKeys, above_max_window_layers
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import (
    QWEN2_ROTARY_CACHE,
    QWEN2_ROTARY_PER_LAYER,
    TRANSFORMERS_SDPA_CONTIGUOUS,
    UPCAST_IN_FORWARD_LOSS,
)

FAMILY = Family(
    # peft's LN-tuning defaults
    ln_tuning_targets=("post_attention_layernorm",),
    name="qwen2",
    # ColossalAI shardformer: modeling/qwen2.py:492 refuses ring_attn
    colossalai_policy=SP_MODES - {"ring_attn"},
    # policies/qwen2.py:285-291 under flash attention or sequence parallelism;
    # modeling/qwen2.py:559-560 repeat_kv before ColoAttention (or the eager matmuls)
    colossalai_repeats_kv=frozenset({"flash", "sp"}),
    # its model forwards build ColoAttention's mask under flash (modeling/qwen2.py:129-137,
    # 663-671)
    colossalai_builds_mask=frozenset({"flash"}),
    # without flash attention the replaced forward takes eager matmuls (modeling/qwen2.py:565-583)
    colossalai_sp_eager=True,
    model_types=("qwen2",),
    decoder_layer="Qwen2DecoderLayer",
    config=llama_map(
        "qwen2",
        LlamaKeys(
            fixed_bias=(True, False),
            window="use_sliding_window",
            sliding=above_max_window_layers,
        ),
    ),
    names=LLAMA_NAMES,
    rotary_cache_releases=QWEN2_ROTARY_CACHE,
    rotary_per_layer_releases=QWEN2_ROTARY_PER_LAYER,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
    # its own upcast-shifted loss before 4.46 (versions.UPCAST_IN_FORWARD_LOSS)
    own_loss_releases=((UPCAST_IN_FORWARD_LOSS, "upcast-shifted"),),
)
