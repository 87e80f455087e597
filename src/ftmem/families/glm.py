"""GLM (GlmForCausalLM: THUDM/glm-4-9b-hf, glm-4-9b-chat-hf): GLM-4's block without its
two post-sublayer norms. transformers 5.24 models/glm/modeling_glm.py: two RMSNorms per
block, ``input_layernorm`` and ``post_attention_layernorm`` (lines 293-294, pre-norm as
Llama); the fused ``gate_up_proj`` (line 53); q/k/v biases under ``attention_bias``
(lines 211-219, default True: configuration_glm.py line 73) and o_proj without (line 220);
the rotary on half of each head (``partial_rotary_factor`` 0.5 by default,
configuration_glm.py line 76), interleaved, every layer rebuilding its cos/sin tables with
``repeat_interleave`` (lines 180-181) and concatenating after it (lines 193-194), as
GLM-4's modeling_glm4.py does line for line."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, rotary_dim
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture


def read_glm_keys(cfg: Config, out: Config) -> None:
    """GLM's and GLM-4's keys beyond Llama's: o_proj without a bias, half-head rotary."""
    head_dim = out.get("head_dim") or out["hidden_size"] // out["num_heads"]
    out.update(
        attention_out_bias=False,
        rotary_dim=rotary_dim(cfg, head_dim, ("partial_rotary_factor",), 0.5),
    )


def build_glm_keys(arch: Architecture, kw: Config) -> None:
    kw.update(
        attention_bias=arch.attention_qkv_bias,
        partial_rotary_factor=arch.rotary_size / arch.head_size,
    )


FAMILY = Family(
    name="glm",
    model_types=("glm",),
    decoder_layer="GlmDecoderLayer",
    config=llama_map(
        "glm",
        LlamaKeys(fixed_bias=None, optional=("attention_bias",)),
        read_glm_keys,
        build_glm_keys,
    ),
    names=replace(LLAMA_NAMES, mlp={"gate_up": "mlp.gate_up_proj", "down": "mlp.down_proj"}),
    rotary_tables_per_layer=True,
    o_proj_reads_kernel_output=False,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
