"""Gemma 3 (Gemma3ForCausalLM; the language model of Gemma3ForConditionalGeneration):
Gemma 2's four norms per block and fp32-scaling RMSNorms, plus per-head RMSNorms on
queries and keys (scaled the same way), no soft-capping by default, and so transformers'
sdpa path. Published multimodal configs leave most of ``text_config`` to
Gemma3TextConfig's defaults; those are applied here as transformers applies them."""

from __future__ import annotations

from ftmem.families import ConfigMap, Family
from ftmem.families._config import Config, LlamaKeys, every_nth_full
from ftmem.families._llama import llama_map
from ftmem.families.gemma2 import GEMMA2_LN_TUNING, GEMMA2_NAMES, build_gemma2, read_softcaps
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

# Gemma3TextConfig's defaults (transformers 5.24, models/gemma3/configuration_gemma3.py):
# the Gemma 3 4B/12B/27B config.json files give only what differs from them.
TEXT_DEFAULTS: Config = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "sliding_window": 4096,
}


def _read_extra(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True
    read_softcaps(cfg, out)


_LLAMA_MAP = llama_map(
    "gemma3",
    LlamaKeys(
        optional=("attention_bias",),
        activation="hidden_activation",
        window="when-set",
        sliding=every_nth_full("sliding_window_pattern", 6),
        tie=True,
    ),
    _read_extra,
    build_gemma2,
)


def _read(cfg: Config) -> Config:
    given = {k: v for k, v in cfg.items() if v is not None}
    return _LLAMA_MAP.read({**TEXT_DEFAULTS, **given})


FAMILY = Family(
    # peft's LN-tuning defaults (its text model, gemma3_text)
    ln_tuning_targets=GEMMA2_LN_TUNING,
    name="gemma3",
    model_types=("gemma3_text",),
    decoder_layer="Gemma3DecoderLayer",
    config=ConfigMap(_read, _LLAMA_MAP.build),
    names=GEMMA2_NAMES,
    qk_norm=True,
    norm_scale_in_fp32=True,
    norm_scale_plus_one=True,
    image_tokens_bidirectional=True,
    rotary_tables_per_layer_type=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
