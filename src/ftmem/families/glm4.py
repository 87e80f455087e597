"""GLM-4 (Glm4ForCausalLM: GLM-4-9B-0414, GLM-4-32B-0414): four RMSNorms per block (before
and after each of attention and MLP, as Gemma 2), a fused gate_up projection, q/k/v
biases, and the rotary on half of each head, interleaved: every layer rebuilds its own
cos/sin tables (``repeat_interleave``) and keeps them, and ``torch.cat`` after the partial
rotary makes o_proj read a copy of the kernel's output (as GPT-NeoX)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.families.glm import build_glm_keys, read_glm_keys
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    pass


def _read(cfg: Config, out: Config) -> None:
    read_glm_keys(cfg, out)
    out["norms_per_block"] = 4  # the post-sublayer norms GLM's block lacks


FAMILY = Family(
    name="glm4",
    model_types=("glm4",),
    decoder_layer="Glm4DecoderLayer",
    config=llama_map(
        "glm4",
        LlamaKeys(fixed_bias=None, optional=("attention_bias",)),
        _read,
        build_glm_keys,
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
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
