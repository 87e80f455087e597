"""StarCoder2 (Starcoder2ForCausalLM): Llama's attention with biases everywhere
(``use_bias``), a plain two-linear MLP (c_fc, c_proj), LayerNorms with biases, tied
embeddings by default."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, every_layer, flag
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import (
    QWEN2_ROTARY_CACHE,
    QWEN2_ROTARY_PER_LAYER,
    STARCODER2_OWN_UPCAST_LOSS,
    TRANSFORMERS_SDPA_CONTIGUOUS,
)

if TYPE_CHECKING:
    from ftmem.arch import Architecture


def _read(cfg: Config, out: Config) -> None:
    bias = flag(cfg, "use_bias", True)
    out.update(
        mlp="plain",
        norm="layernorm",
        attention_qkv_bias=bias,
        attention_out_bias=bias,
        mlp_bias=bias,
    )


def _build(arch: Architecture, kw: Config) -> None:
    kw.update(
        use_bias=arch.attention_qkv_bias,
        residual_dropout=0.0,
        embedding_dropout=0.0,
    )


FAMILY = Family(
    name="starcoder2",
    model_types=("starcoder2",),
    decoder_layer="Starcoder2DecoderLayer",
    config=llama_map(
        "starcoder2", LlamaKeys(window="when-set", sliding=every_layer, tie=True), _read, _build
    ),
    names=replace(LLAMA_NAMES, mlp={"up": "mlp.c_fc", "down": "mlp.c_proj"}),
    dropout_keys={"residual_dropout": "residual_dropout", "embedding_dropout": "embedding_dropout"},
    rotary_cache_releases=QWEN2_ROTARY_CACHE,
    rotary_per_layer_releases=QWEN2_ROTARY_PER_LAYER,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
    own_loss_releases=((STARCODER2_OWN_UPCAST_LOSS, "upcast-shifted"),),
)
