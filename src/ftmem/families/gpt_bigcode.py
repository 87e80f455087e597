"""GPTBigCode (GPTBigCodeForCausalLM: SantaCoder, StarCoder/StarCoderBase): GPT-2's
layout with ``nn.Linear`` weights, learned positions and, with ``multi_query``, one
key/value head (c_attn is q plus one head each of k and v). Its q, k and v are views of
c_attn's output (no rotary), so the attention kernel keeps that whole output."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.families import ConfigMap, Family, ModuleNames
from ftmem.families._config import (
    HF_ACTIVATIONS,
    Config,
    activation,
    flag,
    need,
    opt,
    word,
)

if TYPE_CHECKING:
    from ftmem.arch import Architecture


def _read(cfg: Config) -> Config:
    h = need(cfg, "n_embd", "hidden_size")
    heads = need(cfg, "n_head", "num_attention_heads")
    return {
        "family": "gpt_bigcode",
        "vocab_size": need(cfg, "vocab_size"),
        "hidden_size": h,
        "num_layers": need(cfg, "n_layer", "num_hidden_layers", bound=limits.LAYERS),
        "num_heads": heads,
        "num_kv_heads": 1 if flag(cfg, "multi_query", True) else heads,
        "intermediate_size": opt(cfg, "n_inner") or 4 * h,
        "mlp": "plain",
        "activation": activation(word(cfg, "activation_function", "gelu_pytorch_tanh")),
        "norm": "layernorm",
        "attention_qkv_bias": True,
        "attention_out_bias": True,
        "mlp_bias": True,
        "tie_embeddings": flag(cfg, "tie_word_embeddings", True),
        "position_embedding": "learned",
        "max_position_embeddings": need(
            cfg, "n_positions", "max_position_embeddings", bound=limits.TOKENS
        ),
    }


def _build(arch: Architecture) -> Config:
    if arch.kv_heads not in (1, arch.num_heads):
        raise ValueError("gpt_bigcode has one key/value head (multi_query) or one per head")
    return {
        "n_embd": arch.hidden_size,
        "n_layer": arch.num_layers,
        "n_head": arch.num_heads,
        "n_positions": arch.max_position_embeddings,
        "n_inner": arch.intermediate_size,
        "multi_query": arch.kv_heads == 1,
        "activation_function": HF_ACTIVATIONS[arch.activation],
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }


FAMILY = Family(
    name="gpt_bigcode",
    model_types=("gpt_bigcode",),
    decoder_layer="GPTBigCodeBlock",
    config=ConfigMap(_read, _build),
    names=ModuleNames(
        blocks="transformer.h",
        attention={"qkv": "attn.c_attn", "o": "attn.c_proj"},
        mlp={"up": "mlp.c_fc", "down": "mlp.c_proj"},
        norms={2: ("ln_1", "ln_2")},
        embedding="transformer.wte",
        positions="transformer.wpe",
        final_norm="transformer.ln_f",
    ),
    dropout_keys={"residual_dropout": "resid_pdrop", "embedding_dropout": "embd_pdrop"},
)
