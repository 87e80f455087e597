"""Qwen3 (Qwen3ForCausalLM): Qwen2's block with per-head RMSNorms on queries and keys
before the rotary, no q/k/v biases by default (``attention_bias`` biases q, k, v and o
alike) and an explicit head_dim; the sliding window is off unless asked for."""

from __future__ import annotations

from ftmem.families import SP_MODES, Family
from ftmem.families._config import Config, LlamaKeys, above_max_window_layers
from ftmem.families._llama import LLAMA_NAMES, llama_map, window_off_by_default
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS


def _read_qwen3(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True
    window_off_by_default(cfg, out)


FAMILY = Family(
    # peft's LN-tuning defaults
    ln_tuning_targets=("post_attention_layernorm",),
    name="qwen3",
    # ColossalAI shardformer: modeling/qwen3.py refuses ring_attn
    colossalai_policy=SP_MODES - {"ring_attn"},
    # policies/qwen3.py:285-291 under flash attention or sequence parallelism;
    # modeling/qwen3.py:545-546 repeat_kv before ColoAttention (or the eager matmuls)
    colossalai_repeats_kv=frozenset({"flash", "sp"}),
    # its model forwards build ColoAttention's mask under flash (modeling/qwen3.py:127-135,
    # 655-663)
    colossalai_builds_mask=frozenset({"flash"}),
    # without flash attention the replaced forward takes eager matmuls (modeling/qwen3.py:557-575)
    colossalai_sp_eager=True,
    model_types=("qwen3",),
    decoder_layer="Qwen3DecoderLayer",
    config=llama_map(
        "qwen3",
        LlamaKeys(
            optional=("attention_bias",),
            window="use_sliding_window",
            sliding=above_max_window_layers,
        ),
        read_extra=_read_qwen3,
    ),
    names=LLAMA_NAMES,
    qk_norm=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
