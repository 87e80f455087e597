"""StableLM (StableLmForCausalLM: StableLM-3B-4E1T, StableLM-2): Llama's gated MLP and
projections with LayerNorms, optional q/k/v biases (``use_qkv_bias``), the rotary on a
quarter of each head (``partial_rotary_factor``), and with ``use_parallel_residual`` a
parallel block under one norm. Its per-head q/k LayerNorms (``qk_layernorm``:
StableLM-2-12B) are not modelled and refused."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.errors import ConfigError
from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, flag, rotary_dim
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import QWEN2_ROTARY_CACHE, QWEN2_ROTARY_PER_LAYER

if TYPE_CHECKING:
    from ftmem.arch import Architecture


def _read(cfg: Config, out: Config) -> None:
    if flag(cfg, "qk_layernorm", False):
        raise ConfigError(
            "config.json: qk_layernorm true (StableLM-2-12B's per-head LayerNorms on queries "
            "and keys) is not modelled yet."
        )
    parallel = flag(cfg, "use_parallel_residual", False)
    head_dim = out["hidden_size"] // out["num_heads"]
    out.update(
        norm="layernorm",
        norms_per_block=1 if parallel else 2,
        parallel_attn_mlp=parallel,
        attention_qkv_bias=flag(cfg, "use_qkv_bias", False),
        attention_out_bias=False,
        rotary_dim=rotary_dim(cfg, head_dim, ("partial_rotary_factor",), 0.25),
    )


def _build(arch: Architecture, kw: Config) -> None:
    kw.pop("head_dim")  # StableLmConfig derives it from hidden_size / heads
    kw.update(
        use_qkv_bias=arch.attention_qkv_bias,
        use_parallel_residual=arch.parallel_attn_mlp,
        partial_rotary_factor=arch.rotary_size / arch.head_size,
        qk_layernorm=False,
        hidden_dropout=0.0,
    )


FAMILY = Family(
    name="stablelm",
    model_types=("stablelm",),
    decoder_layer="StableLmDecoderLayer",
    config=llama_map("stablelm", LlamaKeys(), _read, _build),
    names=replace(
        LLAMA_NAMES,
        norms={
            1: ("input_layernorm",),
            2: ("input_layernorm", "post_attention_layernorm"),
        },
    ),
    # torch.cat after the partial rotary makes q head-major: o_proj reads a copy of the
    # kernel's output (as GPT-NeoX and Phi)
    o_proj_reads_kernel_output=False,
    rotary_cache_releases=QWEN2_ROTARY_CACHE,
    rotary_per_layer_releases=QWEN2_ROTARY_PER_LAYER,
)
