"""Phi-1 / Phi-1.5 / Phi-2 (PhiForCausalLM): a parallel block under one shared LayerNorm
(Falcon-7B's wiring), q, k, v and dense projections with biases, a plain fc1/fc2 MLP
with the written-out tanh-GELU, the rotary on part of each head
(``partial_rotary_factor``, 0.5 in the published configs) and an LM head with a bias.
Its optional q/k LayerNorms (``qk_layernorm``, off in every published config) are one
nn.LayerNorm(head_dim) with its bias for all query heads and one for the key heads, on
the transposed (b, heads, s, head_dim) views before the partial rotary; each keeps its
input view (the projection's output) and its rows' mean and rstd (ops.norm.QKNorm)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, flag, rotary_dim
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import (
    QWEN2_ROTARY_CACHE,
    QWEN2_ROTARY_PER_LAYER,
    TRANSFORMERS_SDPA_CONTIGUOUS,
    UPCAST_IN_FORWARD_LOSS,
)

if TYPE_CHECKING:
    from ftmem.arch import Architecture


QK_NORM_KEY = "qk_layernorm"


def _read(cfg: Config, out: Config) -> None:
    head_dim = out["hidden_size"] // out["num_heads"]
    out.update(
        mlp="plain",
        norm="layernorm",
        norms_per_block=1,
        parallel_attn_mlp=True,
        attention_qkv_bias=True,
        attention_out_bias=True,
        mlp_bias=True,
        rotary_dim=rotary_dim(cfg, head_dim, ("partial_rotary_factor",), 0.5),
        qk_norm=flag(cfg, QK_NORM_KEY, False),
    )


def _build(arch: Architecture, kw: Config) -> None:
    kw.pop("head_dim")  # PhiConfig derives it from hidden_size / heads
    kw.update(
        hidden_act="gelu_new" if arch.activation == "gelu_tanh" else kw["hidden_act"],
        partial_rotary_factor=arch.rotary_size / arch.head_size,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
    )


FAMILY = Family(
    # peft's LN-tuning defaults
    ln_tuning_targets=("input_layernorm", "final_layernorm"),
    name="phi",
    model_types=("phi",),
    decoder_layer="PhiDecoderLayer",
    config=llama_map("phi", LlamaKeys(), _read, _build),
    names=replace(
        LLAMA_NAMES,
        attention={
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.dense",
        },
        mlp={"up": "mlp.fc1", "down": "mlp.fc2"},
        norms={1: ("input_layernorm",)},
        final_norm="model.final_layernorm",
    ),
    gelu_written_out=True,
    head_bias=True,
    # torch.cat after the partial rotary makes q head-major: the dense projection reads
    # a copy of the kernel's output (measured, as GPT-NeoX)
    o_proj_reads_kernel_output=False,
    qk_norm_switch=QK_NORM_KEY,
    qk_norm_names=("q_layernorm", "k_layernorm"),
    qk_norm_bias=True,
    dropout_keys={"residual_dropout": "resid_pdrop", "embedding_dropout": "embd_pdrop"},
    rotary_cache_releases=QWEN2_ROTARY_CACHE,
    rotary_per_layer_releases=QWEN2_ROTARY_PER_LAYER,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
    # its own upcast-shifted loss before 4.46 (versions.UPCAST_IN_FORWARD_LOSS)
    own_loss_releases=((UPCAST_IN_FORWARD_LOSS, "upcast-shifted"),),
)
