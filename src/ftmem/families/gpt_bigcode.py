"""GPTBigCode (GPTBigCodeForCausalLM: SantaCoder, StarCoder/StarCoderBase): GPT-2's
layout with ``nn.Linear`` weights, learned positions and, with ``multi_query``, one
key/value head (c_attn is q plus one head each of k and v). Its q, k and v are views of
c_attn's output (no rotary), so the attention kernel keeps that whole output."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem.families import ConfigMap, Family
from ftmem.families._config import HF_ACTIVATIONS, Config, flag
from ftmem.families.gpt2 import GPT2_NAMES, read_gpt2_like
from ftmem.versions import GPT_BIGCODE_CHECKPOINTED_CACHE, OWN_SHIFTED_LOSS

if TYPE_CHECKING:
    from ftmem.arch import Architecture


def _read(cfg: Config) -> Config:
    out = read_gpt2_like(cfg, "gpt_bigcode", "gelu_pytorch_tanh")
    out["num_kv_heads"] = 1 if flag(cfg, "multi_query", True) else out["num_heads"]
    return out


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
    names=GPT2_NAMES,
    dropout_keys={"residual_dropout": "resid_pdrop", "embedding_dropout": "embd_pdrop"},
    checkpointed_cache_releases=GPT_BIGCODE_CHECKPOINTED_CACHE,
    own_loss_releases=((OWN_SHIFTED_LOSS, "shifted"),),
)
