"""GPT-2 (GPT2LMHeadModel): Conv1D linears, learned positions, LayerNorm, NewGELU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.families import SP_MODES, ConfigMap, Family, ModuleNames
from ftmem.families._config import (
    HF_ACTIVATIONS,
    Config,
    activation,
    flag,
    need,
    opt,
    word,
)
from ftmem.versions import OWN_SHIFTED_LOSS

if TYPE_CHECKING:
    from ftmem.arch import Architecture


# Architecture.activation -> GPT2Config.activation_function (gelu_new: NewGELU, written out)
_ACTIVATIONS = {**HF_ACTIVATIONS, "gelu_tanh": "gelu_new"}


def read_gpt2_like(cfg: Config, family: str, default_activation: str) -> Config:
    """An Architecture's fields from GPT-2's config keys (GPTBigCode reads them too)."""
    h = need(cfg, "n_embd", "hidden_size")
    return {
        "family": family,
        "vocab_size": need(cfg, "vocab_size"),
        "hidden_size": h,
        "num_layers": need(cfg, "n_layer", "num_hidden_layers", bound=limits.LAYERS),
        "num_heads": need(cfg, "n_head", "num_attention_heads"),
        "intermediate_size": opt(cfg, "n_inner") or 4 * h,
        "mlp": "plain",
        "activation": activation(word(cfg, "activation_function", default_activation)),
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


def _read(cfg: Config) -> Config:
    return read_gpt2_like(cfg, "gpt2", "gelu_new")


# GPT-2's modules (GPTBigCode keeps the same names with nn.Linear weights)
GPT2_NAMES = ModuleNames(
    blocks="transformer.h",
    attention={"qkv": "attn.c_attn", "o": "attn.c_proj"},
    mlp={"up": "mlp.c_fc", "down": "mlp.c_proj"},
    norms={2: ("ln_1", "ln_2")},
    embedding="transformer.wte",
    positions="transformer.wpe",
    final_norm="transformer.ln_f",
)


def _build(arch: Architecture) -> Config:
    return {
        "n_embd": arch.hidden_size,
        "n_layer": arch.num_layers,
        "n_head": arch.num_heads,
        "n_positions": arch.max_position_embeddings,
        "n_inner": arch.intermediate_size,
        "activation_function": _ACTIVATIONS[arch.activation],
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "summary_first_dropout": 0.0,
    }


FAMILY = Family(
    # peft's LN-tuning defaults
    ln_tuning_targets=("ln_1", "ln_2", "ln_f"),
    name="gpt2",
    # ColossalAI shardformer: policies/gpt2.py:56 refuses all_to_all, :57-61 runs ring as split_gather
    colossalai_policy=SP_MODES - {"all_to_all"},
    model_types=("gpt2",),
    adaption_prompt_target="attn",
    decoder_layer="GPT2Block",
    config=ConfigMap(_read, _build),
    names=GPT2_NAMES,
    softmax_in_compute_dtype=True,
    eager_float_mask=True,
    conv1d=True,
    gelu_written_out=True,
    layer_holds_attention_output=True,
    dropout_keys={"residual_dropout": "resid_pdrop", "embedding_dropout": "embd_pdrop"},
    own_loss_releases=((OWN_SHIFTED_LOSS, "shifted"),),
)
