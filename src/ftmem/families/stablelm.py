"""StableLM (StableLmForCausalLM: StableLM-3B-4E1T, StableLM-2): Llama's gated MLP and
projections with LayerNorms, optional q/k/v biases (``use_qkv_bias``), the rotary on a
quarter of each head (``partial_rotary_factor``), and with ``use_parallel_residual`` a
parallel block under one norm. ``qk_layernorm`` (StableLM-2-12B) puts a bias-free
LayerNorm module on each query and key head (StableLmLayerNormPerHead: a ModuleList, one
head_dim weight each), on the transposed (b, heads, s, head_dim) views before the partial
rotary; each keeps its input view (the projection's output, one storage) and its rows'
mean and rstd, and torch.cat joins the heads again (modelled by ops.norm.QKNorm)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, flag, rotary_dim
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import OWN_SHIFTED_LOSS, QWEN2_ROTARY_CACHE, QWEN2_ROTARY_PER_LAYER

if TYPE_CHECKING:
    from ftmem.arch import Architecture


QK_NORM_KEY = "qk_layernorm"


def _read(cfg: Config, out: Config) -> None:
    parallel = flag(cfg, "use_parallel_residual", False)
    head_dim = out["hidden_size"] // out["num_heads"]
    out.update(
        norm="layernorm",
        norms_per_block=1 if parallel else 2,
        parallel_attn_mlp=parallel,
        attention_qkv_bias=flag(cfg, "use_qkv_bias", False),
        attention_out_bias=False,
        rotary_dim=rotary_dim(cfg, head_dim, ("partial_rotary_factor",), 0.25),
        qk_norm=flag(cfg, QK_NORM_KEY, False),
    )


def _build(arch: Architecture, kw: Config) -> None:
    kw.pop("head_dim")  # StableLmConfig derives it from hidden_size / heads
    kw.update(
        use_qkv_bias=arch.attention_qkv_bias,
        use_parallel_residual=arch.parallel_attn_mlp,
        partial_rotary_factor=arch.rotary_size / arch.head_size,
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
    qk_norm_switch=QK_NORM_KEY,
    qk_norm_weights="modules",
    qk_norm_names=("q_layernorm", "k_layernorm"),
    rotary_cache_releases=QWEN2_ROTARY_CACHE,
    rotary_per_layer_releases=QWEN2_ROTARY_PER_LAYER,
    own_loss_releases=((OWN_SHIFTED_LOSS, "shifted"),),
)
