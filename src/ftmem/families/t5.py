"""T5 v1.0 / v1.1 / Flan-T5 (T5ForConditionalGeneration): an encoder and a decoder
stack, relative position buckets, dropout. Its block layout is built in
``ftmem.arch`` (self-, cross-attention and feed-forward per stack); the names here
are the stacks' shared ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import ConfigMap, Family, ModuleNames
from ftmem.families._config import (
    Config,
    activation,
    flag,
    need,
    number,
    opt,
    word,
    wrong,
)

if TYPE_CHECKING:
    from ftmem.arch import Architecture


# (mlp, activation) -> T5Config.feed_forward_proj
_FEED_FORWARD = {
    ("gated", "gelu_tanh"): "gated-gelu",
    ("gated", "gelu"): "gated-gelu",
    ("gated", "silu"): "gated-silu",
    ("gated", "relu"): "gated-relu",
    ("plain", "relu"): "relu",
    ("plain", "gelu"): "gelu",
    ("plain", "gelu_tanh"): "gelu_new",
    ("plain", "silu"): "silu",
}


def _read(cfg: Config) -> Config:
    layers = need(cfg, "num_layers", bound=limits.LAYERS)
    decoder = opt(cfg, "num_decoder_layers", limits.LAYERS) or layers
    if decoder != layers:
        raise ConfigError(
            f"config.json has {layers} encoder and {decoder} decoder layers; ftmem supports "
            "T5 models with as many of each (every T5 and Flan-T5 checkpoint)."
        )
    ff = word(cfg, "feed_forward_proj", "relu") or "relu"
    gated = ff.startswith("gated-")
    if ff == "gated-":  # transformers splits on "-": no activation after it
        raise wrong("feed_forward_proj", "an activation or gated-ACTIVATION", ff)
    dropout = number(cfg, "dropout_rate")
    return {
        "family": "t5",
        "vocab_size": need(cfg, "vocab_size"),
        "hidden_size": need(cfg, "d_model"),
        "num_layers": layers,
        "num_heads": need(cfg, "num_heads"),
        "head_dim": need(cfg, "d_kv"),
        "intermediate_size": need(cfg, "d_ff"),
        "mlp": "gated" if gated else "plain",
        "activation": activation(ff.removeprefix("gated-") if ff != "gated-gelu" else "gelu_new"),
        # T5 v1.0 ties the head (and scales the decoder output); v1.1 / Flan-T5 say false,
        # which transformers 5 saves as scale_decoder_outputs false (it writes tie true)
        "tie_embeddings": flag(cfg, "tie_word_embeddings", True)
        and flag(cfg, "scale_decoder_outputs", True),
        "position_embedding": "relative",
        "relative_attention_num_buckets": opt(cfg, "relative_attention_num_buckets") or 32,
        "max_position_embeddings": opt(cfg, "n_positions", limits.TOKENS) or 512,
        "dropout_rate": 0.1 if dropout is None else dropout,
    }


def _build(arch: Architecture) -> Config:
    return {
        "d_model": arch.hidden_size,
        "d_kv": arch.head_size,
        "d_ff": arch.intermediate_size,
        "num_layers": arch.num_layers,
        "num_decoder_layers": arch.num_layers,
        "num_heads": arch.num_heads,
        "relative_attention_num_buckets": arch.relative_attention_num_buckets,
        "feed_forward_proj": _FEED_FORWARD[arch.mlp, arch.activation],
        "dropout_rate": arch.dropout_rate,
        "decoder_start_token_id": 0,
        "pad_token_id": 0,
    }


FAMILY = Family(
    name="t5",
    # ColossalAI shardformer: policies/t5.py:79 warns and ignores sequence parallelism
    colossalai_policy=frozenset(),
    model_types=("t5",),
    decoder_layer="T5Block",  # encoder and decoder blocks alike
    config=ConfigMap(_read, _build),
    names=ModuleNames(
        blocks="encoder.block",
        attention={},
        mlp={},
        norms={},
        embedding="shared",
        final_norm="",
    ),
    encoder_decoder=True,
)
