"""Llama-3.2-Vision's text model (MllamaTextModel, ``mllama_text_model``): Llama's
self-attention layers, among which ``cross_attention_layers`` are cross-attention layers
to the image states. The Architecture's blocks are the self-attention layers; the
cross-attention layers are sized with the vision tower (ftmem.mllama), since a text-only
forward skips them and over images their keys and values are the image tokens. Its
embed_tokens holds vocab_size + 8 rows (transformers 5.24 modeling_mllama.py
MllamaTextModel.__init__), its LM head vocab_size."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem.families import ConfigMap, Family
from ftmem.families._config import Config, LlamaKeys
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import MLLAMA_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# MllamaTextConfig's defaults (transformers 5.24 models/mllama/configuration_mllama.py):
# Llama-3.2-11B-Vision's text model.
TEXT_DEFAULTS: Config = {
    "vocab_size": 128_256,
    "hidden_size": 4096,
    "hidden_act": "silu",
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14_336,
    "max_position_embeddings": 131_072,
    "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
}
# embed_tokens = nn.Embedding(config.vocab_size + 8, ...) (MllamaTextModel.__init__)
EXTRA_EMBEDDING_ROWS = 8

_LLAMA_MAP = llama_map("mllama", LlamaKeys())


def cross_layers(cfg: Config) -> tuple[int, ...]:
    """The text config's cross_attention_layers (MllamaTextConfig's default where unset)."""
    given = cfg.get("cross_attention_layers")
    layers = TEXT_DEFAULTS["cross_attention_layers"] if given is None else given
    if not isinstance(layers, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in layers
    ):
        raise ValueError("cross_attention_layers must be a list of layer indices")
    return tuple(sorted(set(layers)))


def _read(cfg: Config) -> Config:
    given = {k: v for k, v in cfg.items() if v is not None}
    full = {**TEXT_DEFAULTS, **given}
    total = full["num_hidden_layers"]
    cross = cross_layers(full)
    if not isinstance(total, int) or any(not 0 <= i < total for i in cross):
        raise ValueError("cross_attention_layers must index the text model's layers")
    if len(cross) >= total:
        raise ValueError("cross_attention_layers must leave self-attention layers")
    out = _LLAMA_MAP.read({**full, "num_hidden_layers": total - len(cross)})
    out["embedding_extra_rows"] = EXTRA_EMBEDDING_ROWS
    return out


def _build(arch: Architecture) -> Config:
    """MllamaTextConfig's kwargs: the self-attention blocks and the cross-attention
    layers the vision tower carries, interleaved at their indices."""
    kw = _LLAMA_MAP.build(arch)
    v = arch.vision
    layers = () if v is None or v.mllama is None else v.mllama.cross_layers
    kw.pop("head_dim", None)  # MllamaTextConfig has none: hidden_size // heads
    kw.pop("attention_dropout", None)
    kw["num_hidden_layers"] = arch.num_layers + len(layers)
    kw["cross_attention_layers"] = list(layers)
    # MllamaTextConfig's token ids are typed int (not None): inside a tiny vocabulary
    kw.update(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return kw


FAMILY = Family(
    name="mllama",
    model_types=("mllama_text_model",),
    decoder_layer="MllamaSelfAttentionDecoderLayer",
    config=ConfigMap(_read, _build),
    names=LLAMA_NAMES,
    sdpa_contiguous_releases=MLLAMA_SDPA_CONTIGUOUS,
)
