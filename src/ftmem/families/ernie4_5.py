"""ERNIE 4.5 dense (Ernie4_5ForCausalLM: baidu/ERNIE-4.5-0.3B-PT and its siblings): Llama's
block with one bias switch for every linear, and GLM's interleaved rotary in fp32: each
layer rebuilds its cos and sin interleaved, in fp32, and turns fp32 copies of q and k.

What transformers 5.25 does (models/ernie4_5/modeling_ernie4_5.py), against Llama's:
Ernie4_5RotaryEmbedding.forward returns fp32 cos and sin "in full precision" (no cast to
x's dtype, l.85-91); apply_rotary_pos_emb (l.146-176) slices half of each table and
``repeat_interleave``s it (a new fp32 (1, s, head_dim) pair per layer, GLM's
Family.rotary_tables_per_layer), multiplies ``q.float()`` and ``rotate_half(q).float()``
by them and casts the sums back to q's dtype: the multiplies keep the fp32 tables (their
other operand needs no gradient), and the kernel gets q and k in the compute dtype as
Llama's. ``config.use_bias`` biases q, k, v, o (l.187-190) and gate, up, down (l.100-102).
Norms (RMSNorm, pre-norm), MLP, causal mask and loss are Llama's; no dropout (the
attention's is fixed at 0.0, l.184). Ernie4_5Config (configuration_ernie4_5.py):
use_bias false, head_dim 128, num_key_value_heads 2 when left out (its own heads when
null), max_position_embeddings 131072, tied embeddings.

Measured (tests/accuracy, CPU, peft 0.21.2, transformers 5.25, tiny model of 2 layers,
3 × 50 tokens): the matrix's 17 cases, QLoRA in two regimes, checkpointed LoRA, and
use_bias under BitFit, autocast and checkpointing: weights, gradients, states and
activations exact to the byte (IA³ +512 B as the older families'; prefix tuning's
+12,800 B before the first layer's tables were left out, which no multiply keeps: only
the prefix's keys need a gradient there; GLM-4's +2,400 B alike), peaks within 0.2 % but
checkpointed LoRA's -1.2 % (the recompute's fp32 copies of q and k, not modelled). Without the fp32 tables
the bf16 cases would miss 12,800 B (two layers × 2 × 50 × 32 × 2 B)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, flag
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# Ernie4_5Config's defaults for the keys a config.json may leave out
DEFAULT_HEAD_DIM = 128
DEFAULT_KV_HEADS = 2
DEFAULT_POSITIONS = 131_072


def _read(cfg: Config, out: Config) -> None:
    bias = flag(cfg, "use_bias", False)
    out.update(attention_qkv_bias=bias, attention_out_bias=bias, mlp_bias=bias)
    if "num_key_value_heads" not in cfg:  # (null: as many as heads, read_llama_like's)
        out["num_kv_heads"] = DEFAULT_KV_HEADS
    if "max_position_embeddings" not in cfg:
        out["max_position_embeddings"] = DEFAULT_POSITIONS
    if "head_dim" not in cfg:
        out["head_dim"] = DEFAULT_HEAD_DIM


def _build(arch: Architecture, kw: Config) -> None:
    kw["use_bias"] = arch.attention_qkv_bias
    kw["tie_word_embeddings"] = arch.tie_embeddings


FAMILY = Family(
    name="ernie4_5",
    model_types=("ernie4_5",),
    decoder_layer="Ernie4_5DecoderLayer",
    config=llama_map("ernie4_5", LlamaKeys(tie=True), _read, _build),
    names=LLAMA_NAMES,
    rotary_tables_per_layer=True,
    rotary_tables_fp32=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
