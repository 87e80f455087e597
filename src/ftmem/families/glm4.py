"""GLM-4 (Glm4ForCausalLM: GLM-4-9B-0414, GLM-4-32B-0414): four RMSNorms per block (before
and after each of attention and MLP, as Gemma 2), a fused gate_up projection, q/k/v
biases, and the rotary on half of each head, interleaved: every layer rebuilds its own
cos/sin tables (``repeat_interleave``) and keeps them, and ``torch.cat`` after the partial
rotary makes o_proj read a copy of the kernel's output (as GPT-NeoX)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, rotary_dim
from ftmem.families._llama import LLAMA_NAMES, llama_map

if TYPE_CHECKING:
    from ftmem.arch import Architecture


def _read(cfg: Config, out: Config) -> None:
    head_dim = out.get("head_dim") or out["hidden_size"] // out["num_heads"]
    out.update(
        norms_per_block=4,
        attention_out_bias=False,
        rotary_dim=rotary_dim(cfg, head_dim, ("partial_rotary_factor",), 0.5),
    )


def _build(arch: Architecture, kw: Config) -> None:
    kw.update(
        attention_bias=arch.attention_qkv_bias,
        partial_rotary_factor=arch.rotary_size / arch.head_size,
    )


FAMILY = Family(
    name="glm4",
    model_types=("glm4",),
    decoder_layer="Glm4DecoderLayer",
    config=llama_map(
        "glm4",
        LlamaKeys(fixed_bias=None, optional=("attention_bias",)),
        _read,
        _build,
    ),
    names=replace(
        LLAMA_NAMES,
        mlp={"gate_up": "mlp.gate_up_proj", "down": "mlp.down_proj"},
        norms={
            4: (
                "input_layernorm",
                "post_self_attn_layernorm",
                "post_attention_layernorm",
                "post_mlp_layernorm",
            )
        },
    ),
    rotary_tables_per_layer=True,
    o_proj_reads_kernel_output=False,
)
