"""OLMo 2 (Olmo2ForCausalLM): Llama's projections and MLP with the two RMSNorms moved
after each sublayer (on its output, before the residual add; nothing normalises the
sublayer's input), RMSNorms on queries and keys across the whole projection, norms that
scale in fp32 before casting back, and rotary tables left in fp32."""

from __future__ import annotations

from dataclasses import replace

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS


def _read(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True


FAMILY = Family(
    name="olmo2",
    model_types=("olmo2",),
    decoder_layer="Olmo2DecoderLayer",
    config=llama_map("olmo2", LlamaKeys(optional=("attention_bias",)), _read),
    names=replace(
        LLAMA_NAMES, norms={2: ("post_attention_layernorm", "post_feedforward_layernorm")}
    ),
    qk_norm=True,
    qk_norm_per_head=False,
    norms_after_sublayers=True,
    norm_scale_in_fp32=True,
    rotary_tables_fp32=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
