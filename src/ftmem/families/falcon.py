"""Falcon (FalconForCausalLM): fused qkv, parallel attention and MLP under one shared
norm (7B) or two (40B/180B); an attention computed eagerly in fp32 before transformers
5.25, through the shared attention interface (sdpa, with an explicit mask) from 5.25."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.families import ConfigMap, Family, ModuleNames
from ftmem.families._config import (
    HF_ACTIVATIONS,
    Config,
    flag,
    need,
    opt,
    wrong,
)
from ftmem.versions import (
    OWN_SHIFTED_LOSS,
    QWEN2_ROTARY_CACHE,
    QWEN2_ROTARY_PER_LAYER,
    TRANSFORMERS_FALCON_ATTENTION_INTERFACE,
)

if TYPE_CHECKING:
    from ftmem.arch import Architecture


def _read(cfg: Config) -> Config:
    h = need(cfg, "hidden_size")
    heads = need(cfg, "num_attention_heads", "n_head")
    new_arch = flag(cfg, "new_decoder_architecture", False)
    if new_arch:
        kv = opt(cfg, "num_kv_heads") or heads
    else:
        kv = 1 if flag(cfg, "multi_query", True) else heads
    bias = flag(cfg, "bias", False)
    parallel = flag(cfg, "parallel_attn", True) or new_arch
    norms = cfg.get("num_ln_in_parallel_attn", 2)
    if norms is not None and (isinstance(norms, bool) or not isinstance(norms, int)):
        raise wrong("num_ln_in_parallel_attn", "an integer or null", norms)
    return {
        "family": "falcon",
        "vocab_size": need(cfg, "vocab_size"),
        "hidden_size": h,
        "num_layers": need(cfg, "num_hidden_layers", "n_layer", bound=limits.LAYERS),
        "num_heads": heads,
        "num_kv_heads": kv,
        "intermediate_size": opt(cfg, "ffn_hidden_size") or 4 * h,
        "mlp": "plain",
        "activation": "gelu",
        "norm": "layernorm",
        # FalconDecoderLayer.__init__: a sequential block (parallel_attn false, falcon-rw)
        # has input_layernorm and post_attention_layernorm; a parallel one ln_attn and
        # ln_mlp (num_ln_in_parallel_attn 2) or input_layernorm alone
        "norms_per_block": 2 if (new_arch and norms == 2) or not parallel else 1,
        "parallel_attn_mlp": parallel,
        "attention_qkv_bias": bias,
        "attention_out_bias": bias,
        "mlp_bias": bias,
        "tie_embeddings": flag(cfg, "tie_word_embeddings", True),
        "position_embedding": "alibi" if flag(cfg, "alibi", False) else "rotary",
        "max_position_embeddings": opt(cfg, "max_position_embeddings", limits.TOKENS) or 2048,
    }


def _build(arch: Architecture) -> Config:
    kw: Config = {
        "hidden_size": arch.hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "ffn_hidden_size": arch.intermediate_size,
        "activation": HF_ACTIVATIONS[arch.activation],
        "bias": arch.attention_qkv_bias,
        "alibi": arch.position_embedding == "alibi",
        "parallel_attn": arch.parallel_attn_mlp,
        "max_position_embeddings": arch.max_position_embeddings,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
    }
    kv = arch.kv_heads
    if not arch.parallel_attn_mlp or (arch.norms_per_block == 1 and kv in (1, arch.num_heads)):
        # Falcon-RW / 7B: multi-query or full heads, one shared norm (or sequential)
        kw.update(multi_query=kv == 1, new_decoder_architecture=False)
    else:  # Falcon-40B/180B: grouped KV heads, ln_attn + ln_mlp (or one shared norm)
        kw.update(
            multi_query=False,
            new_decoder_architecture=True,
            num_kv_heads=kv,
            num_ln_in_parallel_attn=2 if arch.norms_per_block == 2 else 1,
        )
    return kw


FAMILY = Family(
    # peft's LN-tuning defaults
    ln_tuning_targets=("input_layernorm", "post_attention_layernorm", "ln_f"),
    name="falcon",
    # ColossalAI shardformer: policies/falcon.py:43 warns and ignores sequence parallelism
    colossalai_policy=frozenset(),
    model_types=("falcon",),
    decoder_layer="FalconDecoderLayer",
    config=ConfigMap(_read, _build),
    names=ModuleNames(
        blocks="transformer.h",
        attention={"qkv": "self_attention.query_key_value", "o": "self_attention.dense"},
        mlp={"up": "mlp.dense_h_to_4h", "down": "mlp.dense_4h_to_h"},
        norms={1: ("input_layernorm",), 2: ("ln_attn", "ln_mlp")},
        sequential_norms=("input_layernorm", "post_attention_layernorm"),
        embedding="transformer.word_embeddings",
        final_norm="transformer.ln_f",
    ),
    attention="eager-fp32",
    bias_added_after_matmul=True,
    layer_holds_attention_output=True,
    layer_holds_attention_norm_output=True,
    rotary_tables_with_alibi=True,
    linear_weight_transposed=True,
    causal_mask_materialized_from=TRANSFORMERS_FALCON_ATTENTION_INTERFACE,
    prefix_tuning=False,
    notes={
        "attention": (
            "Falcon's attention runs eagerly in fp32 before transformers 5.25: s² scores kept."
        ),
        # measured: replace_with_bnb_linear converts only modules whose type is exactly
        # nn.Linear, and Falcon's are FalconLinear
        "qlora": (
            "transformers 5 does not quantize Falcon's linears with bitsandbytes (they "
            "are FalconLinear, a subclass it skips): loaded that way they stay 16-bit, "
            "while this estimate counts them quantized."
        ),
        # measured 2026-12-03 against the 5.24.0 wheel (tiny Falcon, bf16): checkpointed
        # 1,256,600 B against 1,090,980 estimated, eager 1,604,524 against 1,897,192; under
        # 5.25's shared attention both cases are within 0.3 % (docs/accuracy.md)
        "bitfit-recompute": (
            "BitFit on Falcon with checkpointing or eager attention under transformers "
            "before 5.25 (its own fp32 attention): with 5.24 the peak measured 15 % above "
            "this estimate checkpointed and 15 % below it under eager."
        ),
    },
    rotary_cache_releases=QWEN2_ROTARY_CACHE,
    rotary_per_layer_releases=QWEN2_ROTARY_PER_LAYER,
    own_loss_releases=((OWN_SHIFTED_LOSS, "shifted"),),
)
