"""GPT-NeoX (GPTNeoXForCausalLM: Pythia, GPT-NeoX-20B, StableLM-alpha): one fused
query_key_value linear laid out head by head, the rotary on the first quarter of each
head (``rotary_pct``; it changes no tensor's size, only the shared cos/sin tables'),
LayerNorms and biases, and by default a parallel residual (``use_parallel_residual``:
attention and MLP both read the block input, each through its own norm). The head
(``embed_out`` in the checkpoints, ``lm_head`` once loaded) is untied."""

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
    rotary_dim,
    word,
)
from ftmem.versions import GPT_NEOX_OWN_SHIFTED_LOSS, GPT_NEOX_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture


def _read(cfg: Config) -> Config:
    bias = flag(cfg, "attention_bias", True)
    h, heads = need(cfg, "hidden_size"), need(cfg, "num_attention_heads")
    out: Config = {
        "family": "gpt_neox",
        "vocab_size": need(cfg, "vocab_size"),
        "hidden_size": h,
        "num_layers": need(cfg, "num_hidden_layers", bound=limits.LAYERS),
        "num_heads": heads,
        "intermediate_size": need(cfg, "intermediate_size"),
        "mlp": "plain",
        "activation": activation(word(cfg, "hidden_act", "gelu")),
        "norm": "layernorm",
        "parallel_attn_mlp": flag(cfg, "use_parallel_residual", True),
        "attention_qkv_bias": bias,
        "attention_out_bias": bias,
        "mlp_bias": True,
        "tie_embeddings": flag(cfg, "tie_word_embeddings", False),
        "max_position_embeddings": opt(cfg, "max_position_embeddings", limits.TOKENS) or 2048,
    }
    if h % heads == 0:  # (else the Architecture refuses it, naming both)
        out["rotary_dim"] = rotary_dim(cfg, h // heads, ("rotary_pct",), 0.25)
    return out


def _build(arch: Architecture) -> Config:
    if arch.attention_qkv_bias != arch.attention_out_bias or not arch.mlp_bias:
        raise ValueError("gpt_neox biases all four attention linears or none, the MLP always")
    return {
        "hidden_size": arch.hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "intermediate_size": arch.intermediate_size,
        "hidden_act": HF_ACTIVATIONS[arch.activation],
        "use_parallel_residual": arch.parallel_attn_mlp,
        "rotary_pct": arch.rotary_size / arch.head_size,
        "attention_bias": arch.attention_qkv_bias,
        "max_position_embeddings": arch.max_position_embeddings,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
    }


FAMILY = Family(
    name="gpt_neox",
    model_types=("gpt_neox",),
    decoder_layer="GPTNeoXLayer",
    config=ConfigMap(_read, _build),
    names=ModuleNames(
        blocks="gpt_neox.layers",
        attention={"qkv": "attention.query_key_value", "o": "attention.dense"},
        mlp={"up": "mlp.dense_h_to_4h", "down": "mlp.dense_4h_to_h"},
        norms={2: ("input_layernorm", "post_attention_layernorm")},
        embedding="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
    ),
    # torch.cat after the partial rotary makes q head-major, so the kernel's output is
    # too, and the (b, s, h·d) input of the dense projection is a copy (measured)
    o_proj_reads_kernel_output=False,
    # hidden_dropout acts on the embeddings and on both branches' outputs
    dropout_keys={"residual_dropout": "hidden_dropout", "embedding_dropout": "hidden_dropout"},
    sdpa_contiguous_releases=GPT_NEOX_SDPA_CONTIGUOUS,
    own_loss_releases=((GPT_NEOX_OWN_SHIFTED_LOSS, "shifted"),),
)
