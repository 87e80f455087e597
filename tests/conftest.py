"""Shared fixtures: tiny architectures of each family, small enough for CPU measurement."""

from __future__ import annotations

import gc
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Tests never reach the network: Hub ids resolve from the local cache or fail at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ftmem.arch import Architecture


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what collection left alive (torch, transformers, peft and every test module:
    869,000 tracked objects after the whole suite's collection) where the cyclic collector
    no longer looks: each measured step's ``gc.collect()`` (ftmem.measure.step._settle) and
    every automatic full pass traversed them all, 0.59 s a pass on a 2-core machine."""
    gc.collect()
    gc.freeze()


# DeepSeek-V3: latent attention (a query latent and a key/value latent, each with its
# RMSNorm, the rotary on 8 of each head's 24 dims, values 16 wide), 8 routed experts with a
# shared one, and a dense first block (first_k_dense_replace 1)
_DEEPSEEK = dict(
    vocab_size=300,
    hidden_size=96,
    num_layers=3,
    num_heads=4,
    head_dim=24,
    rotary_dim=8,
    v_head_dim=16,
    q_lora_rank=32,
    kv_lora_rank=16,
    intermediate_size=48,
    num_experts=8,
    experts_per_token=2,
    shared_experts_size=48,
    dense_layers=1,
    dense_intermediate_size=160,
)

# the latent attention's own fields (a GQA family with DeepSeek's experts drops them)
_LATENT_KEYS = ("v_head_dim", "q_lora_rank", "kv_lora_rank", "rotary_dim")

# Qwen3-MoE's and gpt-oss's shape: GQA with head_dim (32) apart from hidden / heads (24),
# 8 small experts (48 wide), top-2
_SMALL_EXPERTS = dict(
    vocab_size=300,
    hidden_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    intermediate_size=48,
    num_experts=8,
    experts_per_token=2,
)

TINY: dict[str, dict] = {
    "llama": dict(
        family="llama",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=4,
        intermediate_size=160,
    ),
    "mistral": dict(
        family="mistral",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
    ),
    "qwen2": dict(
        family="qwen2",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
        attention_qkv_bias=True,
        tie_embeddings=True,
    ),
    # Qwen3: q/k RMSNorms per head, no biases, head_dim (32) apart from hidden / heads (24)
    "qwen3": dict(
        family="qwen3",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=160,
        qk_norm=True,
        tie_embeddings=True,
    ),
    "gemma": dict(
        family="gemma",
        vocab_size=1024,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=1,
        head_dim=32,
        intermediate_size=128,
        activation="gelu_tanh",
        tie_embeddings=True,
    ),
    "gemma2": dict(
        family="gemma2",
        vocab_size=300,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=128,
        activation="gelu_tanh",
        norms_per_block=4,
        tie_embeddings=True,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
    ),
    "phi3": dict(
        family="phi3",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=4,
        intermediate_size=160,
    ),
    "gpt2": dict(
        family="gpt2",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        intermediate_size=384,
        mlp="plain",
        activation="gelu_tanh",
        norm="layernorm",
        attention_qkv_bias=True,
        attention_out_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
        position_embedding="learned",
        max_position_embeddings=128,
    ),
    "falcon": dict(
        family="falcon",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=1,
        intermediate_size=384,
        mlp="plain",
        activation="gelu",
        norm="layernorm",
        norms_per_block=1,
        parallel_attn_mlp=True,
        tie_embeddings=True,
    ),
    "mixtral": dict(
        family="mixtral",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
        num_experts=4,
        experts_per_token=2,
    ),
    # Qwen2-MoE: Qwen2's biased q/k/v, Qwen3-MoE's router and small experts, a shared
    # expert of its own width (64) scaled by its sigmoid gate
    "qwen2_moe": dict(
        family="qwen2_moe",
        **{**_SMALL_EXPERTS, "head_dim": None},
        attention_qkv_bias=True,
        shared_experts_size=64,
    ),
    # MiniMax-M2: q/k RMSNorms across the whole projection, the rotary on half of each
    # head (rotary_dim 16 of 32), a sigmoid router over small experts, no shared expert
    "minimax_m2": dict(family="minimax_m2", **_SMALL_EXPERTS, qk_norm=True, rotary_dim=16),
    # Qwen3-MoE: Qwen3's attention, many small experts (moe_intermediate_size)
    "qwen3_moe": dict(family="qwen3_moe", **_SMALL_EXPERTS, qk_norm=True),
    # OLMoE: q/k RMSNorms across the whole projection (head_dim is hidden / heads), 8 small
    # experts (48 wide), top-2, routing weights not renormalised (norm_topk_prob false)
    "olmoe": dict(
        family="olmoe",
        **{**_SMALL_EXPERTS, "head_dim": None},
        qk_norm=True,
        router_renormalises=False,
    ),
    # gpt-oss: biased GQA attention with sinks, a sliding layer then a full one, 8 biased
    # experts (E, in, out) with the clamped SwiGLU, top-2 over a biased router
    "gpt_oss": dict(
        family="gpt_oss",
        **_SMALL_EXPERTS,
        attention_qkv_bias=True,
        attention_out_bias=True,
        sliding_window=16,
        sliding_layers=1,  # layer 0 (GptOssConfig's (i + 1) % 2)
    ),
    # DeepSeek-V3 (_DEEPSEEK)
    "deepseek_v3": dict(family="deepseek_v3", **_DEEPSEEK),
    # GLM-4.5: biased GQA attention with the rotary on half of each head and per-head q/k
    # RMSNorms (use_qk_norm), DeepSeek-V3's experts (_DEEPSEEK's shape)
    "glm4_moe": dict(
        family="glm4_moe",
        **{k: v for k, v in _DEEPSEEK.items() if k not in _LATENT_KEYS},
        rotary_dim=12,
        num_kv_heads=2,
        attention_qkv_bias=True,
        attention_out_bias=False,
        qk_norm=True,
    ),
    # dots.llm1: Qwen3's attention (per-head q/k RMSNorms), DeepSeek-V3's experts
    "dots1": dict(
        family="dots1",
        **{k: v for k, v in _DEEPSEEK.items() if k not in _LATENT_KEYS},
        num_kv_heads=2,
        qk_norm=True,
        router_renormalises=False,  # (Dots1Config's norm_topk_prob default)
    ),
    # GLM-4.7-Flash: DeepSeek-V3's model, its dense blocks from mlp_layer_types
    "glm4_moe_lite": dict(family="glm4_moe_lite", **_DEEPSEEK),
    # FlexOlmo: OLMo 2's block (norms after the sublayers, q/k RMSNorms across the whole
    # projection, fp32 rotary tables), OLMoE's router and 8 small experts, top-2
    "flex_olmo": dict(
        family="flex_olmo",
        **{**_SMALL_EXPERTS, "head_dim": None},
        qk_norm=True,
        router_renormalises=False,
    ),
    # K-EXAONE: EXAONE 4's attention (per-head q/k RMSNorms) in Llama's pre-norm block,
    # DeepSeek-V3's experts (_DEEPSEEK's shape)
    "exaone_moe": dict(
        family="exaone_moe",
        **{k: v for k, v in _DEEPSEEK.items() if k not in _LATENT_KEYS},
        num_kv_heads=2,
        qk_norm=True,
    ),
    # DeepSeek-V2: V3's tensors, its softmax router and complex fp32 rotary
    "deepseek_v2": dict(family="deepseek_v2", **_DEEPSEEK, router_renormalises=False),
    # Granite: Llama with scalar multipliers (the logits divided by logits_scaling)
    "granite": dict(
        family="granite",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
        tie_embeddings=True,
    ),
    # GraniteMoE: Granite's multipliers over 8 small experts (48 wide), top-2, whose router
    # takes an fp32 softmax over the top-k logits only
    "granitemoe": dict(
        family="granitemoe", **{**_SMALL_EXPERTS, "head_dim": None}, tie_embeddings=True
    ),
    # GraniteMoE-Shared: GraniteMoE with a shared gated MLP (fused input_linear, 64 wide)
    "granitemoeshared": dict(
        family="granitemoeshared",
        **{**_SMALL_EXPERTS, "head_dim": None},
        shared_experts_size=64,
        tie_embeddings=True,
    ),
    # PhiMoE: Mixtral's block with biased attention and LayerNorms, the sparsemixer router
    # (2 experts a token), a biased LM head and the input jitter (Phi-3.5-MoE's)
    "phimoe": dict(
        family="phimoe",
        **{**_SMALL_EXPERTS, "head_dim": None},
        norm="layernorm",
        attention_qkv_bias=True,
        attention_out_bias=True,
        head_bias=True,
        input_jitter=True,
    ),
    # Cohere2-MoE: Command R's parallel block and LayerNorm over 8 small experts (48 wide)
    # with a shared one, the first block dense (160 wide); the two sparse blocks slide
    "cohere2_moe": dict(
        family="cohere2_moe",
        **{**_SMALL_EXPERTS, "head_dim": None, "num_layers": 3},
        norms_per_block=1,
        parallel_attn_mlp=True,
        tie_embeddings=True,
        shared_experts_size=48,
        dense_layers=1,
        dense_intermediate_size=160,
        sliding_window=4096,
        sliding_layers=2,
    ),
    # SmolLM3: Llama with NoPE layers (every fourth; both tiny layers keep the rotary)
    "smollm3": dict(
        family="smollm3",
        vocab_size=300,
        hidden_size=96,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
        tie_embeddings=True,
    ),
    # StarCoder2: biases everywhere, plain MLP (c_fc, c_proj), LayerNorms
    "starcoder2": dict(
        family="starcoder2",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=384,
        mlp="plain",
        activation="gelu_tanh",
        norm="layernorm",
        attention_qkv_bias=True,
        attention_out_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
    ),
    # GPTBigCode (StarCoder): GPT-2's layout in nn.Linear, one key/value head
    "gpt_bigcode": dict(
        family="gpt_bigcode",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=1,
        intermediate_size=384,
        mlp="plain",
        activation="gelu_tanh",
        norm="layernorm",
        attention_qkv_bias=True,
        attention_out_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
        position_embedding="learned",
        max_position_embeddings=128,
    ),
    # GPT-NeoX (Pythia): fused qkv head by head, partial rotary, parallel residual with
    # two LayerNorms, untied embed_out
    "gpt_neox": dict(
        family="gpt_neox",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        rotary_dim=6,
        intermediate_size=384,
        mlp="plain",
        activation="gelu",
        norm="layernorm",
        parallel_attn_mlp=True,
        attention_qkv_bias=True,
        attention_out_bias=True,
        mlp_bias=True,
    ),
    # Phi-1.5/2: parallel block under one LayerNorm, biases, half-head rotary, written-out
    # tanh-GELU, an LM head with a bias
    "phi": dict(
        family="phi",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        rotary_dim=12,
        intermediate_size=384,
        mlp="plain",
        activation="gelu_tanh",
        norm="layernorm",
        norms_per_block=1,
        parallel_attn_mlp=True,
        attention_qkv_bias=True,
        attention_out_bias=True,
        mlp_bias=True,
    ),
    # StableLM: Llama's MLP with LayerNorms, q/k/v biases, quarter-head rotary
    "stablelm": dict(
        family="stablelm",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        rotary_dim=6,
        intermediate_size=160,
        norm="layernorm",
        attention_qkv_bias=True,
    ),
    # OLMo 2: norms after each sublayer only, q/k norms across the projection
    "olmo2": dict(
        family="olmo2",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
        qk_norm=True,
    ),
    # Gemma 3: Gemma 2's four norms plus per-head q/k norms, sdpa (no soft-capping)
    "gemma3": dict(
        family="gemma3",
        vocab_size=300,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=128,
        activation="gelu_tanh",
        norms_per_block=4,
        qk_norm=True,
        tie_embeddings=True,
    ),
    # Gemma 4's text model: Gemma 3's block with weight-scaled norms, a weightless v norm,
    # the last layer of each type storing its keys and values (src/ftmem/families/gemma4.py)
    "gemma4": dict(
        family="gemma4",
        vocab_size=300,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=128,
        activation="gelu_tanh",
        norms_per_block=4,
        qk_norm=True,
        tie_embeddings=True,
    ),
    # Command R: parallel block under one bias-free fp32 LayerNorm, tied, logit_scale
    "cohere": dict(
        family="cohere",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
        norms_per_block=1,
        parallel_attn_mlp=True,
        tie_embeddings=True,
    ),
    # GLM-4: four RMSNorms, fused gate_up, q/k/v biases, half-head interleaved rotary
    "glm4": dict(
        family="glm4",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        rotary_dim=12,
        intermediate_size=160,
        norms_per_block=4,
        attention_qkv_bias=True,
    ),
    # GLM (glm-4-9b-hf): GLM-4's block without its post-sublayer norms (two RMSNorms)
    "glm": dict(
        family="glm",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        rotary_dim=12,
        intermediate_size=160,
        attention_qkv_bias=True,
    ),
    # EXAONE 3.0/3.5: Llama's model under GPT-2-style config keys (num_layers, ...), tied
    "exaone": dict(
        family="exaone",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
        tie_embeddings=True,
    ),
    # EXAONE 4: OLMo 2's post-norms with Qwen3's per-head q/k norms
    "exaone4": dict(
        family="exaone4",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
        qk_norm=True,
    ),
    # OLMo 3: OLMo 2's block with three sliding layers of 16 and a full one (Olmo3Config's
    # default layer_types for four layers), one fp32 rotary pair per layer type
    "olmo3": dict(
        family="olmo3",
        vocab_size=300,
        hidden_size=96,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
        qk_norm=True,
        sliding_window=16,
        sliding_layers=3,
    ),
    # Ministral: Mistral's block, one sliding layer (window 16) under a full one
    "ministral": dict(
        family="ministral",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=24,
        intermediate_size=160,
        sliding_window=16,
        sliding_layers=1,
    ),
    # Ministral 3: Mistral's block with the rotated queries scaled by position (Llama 4's
    # attention scaling), no window (Ministral3Config's default)
    "ministral3": dict(
        family="ministral3",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=160,
    ),
    # ERNIE 4.5: Llama's block, the interleaved rotary in fp32 rebuilt per layer; tied
    # embeddings and head_dim 32 apart from hidden / heads (24)
    "ernie4_5": dict(
        family="ernie4_5",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=160,
        tie_embeddings=True,
    ),
    # ERNIE 4.5 MoE: ERNIE 4.5's attention over DeepSeek-shaped experts (two shared, the
    # first block dense), its fp32 softmax router with autocast off
    "ernie4_5_moe": dict(
        family="ernie4_5_moe",
        **{k: v for k, v in _DEEPSEEK.items() if k not in _LATENT_KEYS},
        num_kv_heads=2,
        tie_embeddings=True,
    ),
    # Seed-OSS: biases on q, k, v but not o (SeedOssConfig's defaults), head_dim 32 apart
    # from hidden / heads (24)
    "seed_oss": dict(
        family="seed_oss",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=160,
        attention_qkv_bias=True,
    ),
    # Hunyuan-V1-Dense: Qwen3's per-head q/k RMSNorms, after the rotary; head_dim 32 apart
    # from hidden / heads (24)
    "hunyuan_v1_dense": dict(
        family="hunyuan_v1_dense",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=160,
        qk_norm=True,
    ),
    # Hunyuan-V1-MoE: the dense model's attention over an fp32 softmax router, 8 experts
    # (top-2) and a shared MLP, both 48 wide
    "hunyuan_v1_moe": dict(
        family="hunyuan_v1_moe",
        **_SMALL_EXPERTS,
        qk_norm=True,
        shared_experts_size=48,
    ),
    # Helium: Llama's block with fp32-scaling norms (an fp32 copy of each weight) and
    # per-layer interleaved rotary tables; heads × head_dim = hidden (its o_proj's width,
    # so no head_dim of its own: the wider variant's heads widen with it)
    "helium": dict(
        family="helium",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
    ),
    # Arcee AFM: Llama's attention with a plain up/down MLP through ReLU²
    "arcee": dict(
        family="arcee",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
        mlp="plain",
        activation="relu2",
    ),
    # Nemotron: LayerNorm1P (w + 1, with biases), the rotary on half of each head, a
    # plain ReLU² MLP
    "nemotron": dict(
        family="nemotron",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
        mlp="plain",
        activation="relu2",
        norm="layernorm",
        rotary_dim=12,
    ),
    # Command R7B: Command R's parallel block with one sliding layer (window 16, under
    # 50 tokens) under a global one without the rotary
    "cohere2": dict(
        family="cohere2",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
        norms_per_block=1,
        parallel_attn_mlp=True,
        tie_embeddings=True,
        sliding_window=16,
        sliding_layers=1,
    ),
    # VaultGemma: Gemma 2 without the post-norms (input and pre-feedforward norms only)
    "vaultgemma": dict(
        family="vaultgemma",
        vocab_size=300,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=128,
        activation="gelu_tanh",
        tie_embeddings=True,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
    ),
    # Apertus: Qwen3's q/k norms, a plain MLP through xIELU (two trained scalars a layer)
    "apertus": dict(
        family="apertus",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
        mlp="plain",
        activation="xielu",
        qk_norm=True,
    ),
    # OLMo 1: LayerNorms without parameters on an fp32 copy, fp32 rotary tables
    "olmo": dict(
        family="olmo",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=160,
        norm="layernorm",
    ),
}

# Qwen3.5's dense text model (transformers 5.25 Qwen3_5TextConfig keys): grouped linear
# attention (2 key heads, 4 value heads), 8 layers by the default pattern (layers 3 and 7
# attend in full). Not in TINY: its training steps are refused (ops.gated_deltanet).
TINY_QWEN35_TEXT: dict[str, Any] = {
    "model_type": "qwen3_5_text",
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 8,
    "linear_conv_kernel_dim": 4,
}

# Qwen3.5's MoE text model (transformers 5.25 Qwen3_5MoeTextConfig keys): the dense
# model's widths over 4 routed experts (2 a token) of width 32 and a shared one of 48
TINY_QWEN35_MOE_TEXT: dict[str, Any] = {
    **{k: v for k, v in TINY_QWEN35_TEXT.items() if k != "intermediate_size"},
    "model_type": "qwen3_5_moe_text",
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 48,
    "num_experts": 4,
    "num_experts_per_tok": 2,
}

# Qwen3-Next (transformers 5.25 Qwen3NextConfig keys): the same widths, its fused Gated
# DeltaNet projections; intermediate_size is its dense MLP's, which no layer builds here
TINY_QWEN3_NEXT: dict[str, Any] = {
    **TINY_QWEN35_MOE_TEXT,
    "model_type": "qwen3_next",
    "intermediate_size": 96,
}

# LFM2 (transformers 5.25 Lfm2Config keys): 6 layers, conv ones at 0, 1, 3 and 5 (the top
# one too), attention at 2 and 4; block_ff_dim 200 -> int(2·200/3) = 133 -> 160 (multiple
# of 32). Not in TINY: its training steps are refused (ops.short_conv).
TINY_LFM2: dict[str, Any] = {
    "model_type": "lfm2",
    "vocab_size": 128,
    "hidden_size": 64,
    "block_ff_dim": 200,
    "block_multiple_of": 32,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "conv_L_cache": 3,
    "layer_types": ["conv", "conv", "full_attention", "conv", "full_attention", "conv"],
}

# LFM2 MoE (transformers 5.25 Lfm2MoeConfig keys): LFM2's 6 layers, the first 2 (the
# default num_dense_layers) with a dense MLP of 96, the others 4 experts (2 a token) of 32
TINY_LFM2_MOE: dict[str, Any] = {
    **{k: v for k, v in TINY_LFM2.items() if k not in ("block_ff_dim", "block_multiple_of")},
    "model_type": "lfm2_moe",
    "intermediate_size": 96,
    "moe_intermediate_size": 32,
    "num_experts": 4,
    "num_experts_per_tok": 2,
}

# Encoder-decoders, kept apart: they support a subset of the methods and features.
# "flan-t5": T5 v1.1 / Flan-T5 (gated GELU, untied head); "t5": T5 v1.0 (ReLU, tied
# head with the decoder output scaled). inner = heads x d_kv (144) differs from d_model.
TINY_SEQ2SEQ: dict[str, dict] = {
    "flan-t5": dict(
        family="t5",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=6,
        head_dim=24,
        intermediate_size=160,
        mlp="gated",
        activation="gelu_tanh",
        position_embedding="relative",
        relative_attention_num_buckets=32,
    ),
    "t5": dict(
        family="t5",
        vocab_size=300,
        hidden_size=96,
        num_layers=2,
        num_heads=6,
        head_dim=24,
        intermediate_size=160,
        mlp="plain",
        activation="relu",
        position_embedding="relative",
        tie_embeddings=True,
    ),
}


def tiny(family: str, **changes: object) -> Architecture:
    spec = TINY_SEQ2SEQ[family] if family in TINY_SEQ2SEQ else TINY[family]
    return Architecture(name=f"tiny-{family}", **{**spec, **changes})


@pytest.fixture(params=sorted(TINY))
def tiny_arch(request: pytest.FixtureRequest) -> Architecture:
    return tiny(request.param)


def write_files(root: Path, files: dict[str, str | bytes]) -> None:
    """A case's files under ``root`` (relative names, folders made as needed)."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def hub_cache_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repo_id: str, cfg: dict
) -> None:
    """An offline Hugging Face cache under ``tmp_path`` holding ``repo_id``'s config.json
    (one snapshot, named by refs/main), made the one huggingface_hub reads."""
    org, name = repo_id.split("/")
    entry = tmp_path / f"models--{org}--{name}"
    snap = entry / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(cfg))
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(snap.name)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


def assert_nothing_unread(cfg: Any, reader: Any) -> None:
    """A framework config's every key is read (applied or noted) or one its reader knows
    has no effect on memory: none is left "not read by ftmem". The values of a nested
    DeepSpeed config or fsdp_config are listed by their dotted paths, and
    test_frameworks_distributed.py states them file by file."""
    from ftmem.frameworks.shared import NO_MEMORY_EFFECT

    nested = set(cfg.nested_no_effect) | set(cfg.nested_not_read)
    assert set(cfg.not_read) <= set(cfg.nested_not_read), cfg.notes
    assert set(cfg.ignored) - nested <= NO_MEMORY_EFFECT | reader.NO_MEMORY_EFFECT


def page_keys(text: str) -> set[str]:
    """The keys a docs/frameworks page's tables name: every `code` span in the first
    column of a table row that starts with one."""
    return {
        key
        for line in text.splitlines()
        if line.startswith("| `")
        for key in re.findall(r"`([^`]+)`", line.split("|")[1])
    }


def profile_switch(monkeypatch: pytest.MonkeyPatch, name: str) -> Iterator[Any]:
    """A fixture's body: a function that switches mechanisms off in framework ``name``'s
    profile (plans are cached per run settings, which do not see the profile: the caches
    are emptied around each use)."""
    import dataclasses

    from ftmem import methods, profiles, step

    def without(**changes: Any) -> None:
        patched = dataclasses.replace(profiles.PROFILES[name], **changes)
        monkeypatch.setitem(profiles.PROFILES, name, patched)
        methods._PLANS.clear()
        step._PLAN_SIZES.clear()

    yield without
    methods._PLANS.clear()
    step._PLAN_SIZES.clear()


def framework_parts(model: str, **settings: object) -> Any:
    """The step's parts as the run's framework builds them (its own architecture)."""
    from ftmem import step
    from ftmem.api import _architecture, run_config
    from ftmem.profiles import framework_arch

    run = run_config(**settings)
    return step.step_parts(framework_arch(_architecture(model), run), run)


def assert_transformers_count(cfg: dict[str, Any], preset: str) -> Architecture:
    """The published config read as ``preset`` counts what transformers allocates for it
    (built on the meta device), and the preset says what the config says (its shapes;
    the published count and its source may be its own). Returns the config's
    Architecture."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ftmem.arch import count_params
    from ftmem.presets import get_model
    from ftmem.sources import architecture_from_config

    arch = architecture_from_config(cfg, preset, "test")
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert count_params(arch) == sum(p.numel() for p in model.parameters())
    preset_arch = get_model(preset)
    shape_fields = set(arch.model_fields) - {"name", "source"}
    differs = {f for f in shape_fields if getattr(arch, f) != getattr(preset_arch, f)}
    assert differs <= {"published_params", "published_params_source"}
    return arch


def masks_seen(model: Any, layers: Any, ids: Any, **inputs: Any) -> list:
    """The attention_mask each of ``layers``' self-attention is called with in one
    training step of ``model`` on ``ids`` (labels = ids)."""
    seen: list = []

    def hook(module: Any, args: Any, kwargs: dict) -> None:
        seen.append(kwargs.get("attention_mask"))

    for layer in layers:
        layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True)
    model(input_ids=ids, labels=ids, **inputs).loss.backward()
    return seen
