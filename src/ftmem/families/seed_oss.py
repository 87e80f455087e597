"""Seed-OSS (SeedOssForCausalLM, ByteDance's Seed-OSS-36B): Llama's block with biases on
q, k and v but none on o (two switches), head_dim apart from hidden / heads (128 by
default), and dropout on the attention's and the MLP's outputs in training (0.1 by
default) beside the attention's own.

What transformers 5.25 does (models/seed_oss/modeling_seed_oss.py), against
modeling_llama.py: SeedOssAttention builds q/k/v with ``bias=config.attention_bias`` and
o_proj with ``bias=config.attention_out_bias`` (l.166-180) and applies
``nn.functional.dropout(attn_output, p=config.residual_dropout)`` after o_proj (l.224);
SeedOssMLP the same dropout after down_proj (l.83): GPT-2's resid_pdrop sites, whose masks
Dropout keeps (Family.dropout_keys). The attention's own dropout (attention_dropout, into
the kernel) is said in a note, not counted. Norms, rotary (tables in the hidden states'
dtype), causal mask and loss are Llama's. SeedOssConfig (configuration_seed_oss.py):
attention_bias true, attention_out_bias false, mlp_bias false, head_dim 128 (hidden /
heads when null), attention_dropout and residual_dropout 0.1, untied embeddings, no
sliding window.

Measured (tests/accuracy, CPU): the matrix's 17 cases, SeedOssConfig's residual dropout
0.1 in three precision regimes under full finetuning and LoRA and checkpointed, QLoRA in
two regimes and BitFit (the q/k/v biases): activations exact to the byte (IA³ +512 B, as
in the older families' IA³ cases, e.g. Qwen3's +512 B), peaks within 0.1 %."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, flag
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# SeedOssConfig's defaults for the keys a config.json may leave out
DEFAULT_HEAD_DIM = 128
DEFAULT_POSITIONS = 524_288


def _read(cfg: Config, out: Config) -> None:
    out["attention_qkv_bias"] = flag(cfg, "attention_bias", True)
    out["attention_out_bias"] = flag(cfg, "attention_out_bias", False)
    if "max_position_embeddings" not in cfg:  # (SeedOssConfig's default)
        out["max_position_embeddings"] = DEFAULT_POSITIONS
    if "head_dim" not in cfg:
        out["head_dim"] = DEFAULT_HEAD_DIM


def _build(arch: Architecture, kw: Config) -> None:
    kw.update(
        attention_bias=arch.attention_qkv_bias,
        attention_out_bias=arch.attention_out_bias,
        mlp_bias=arch.mlp_bias,
    )


FAMILY = Family(
    # (peft 0.21.2 utils/constants.py has no seed_oss entries: no LN-tuning defaults)
    name="seed_oss",
    model_types=("seed_oss",),
    decoder_layer="SeedOssDecoderLayer",
    config=llama_map("seed_oss", LlamaKeys(), _read, _build),
    names=LLAMA_NAMES,
    dropout_keys={"residual_dropout": "residual_dropout"},
    dropout_defaults={"residual_dropout": 0.1, "attention_dropout": 0.1},
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
