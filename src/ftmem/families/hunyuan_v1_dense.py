"""Hunyuan-V1-Dense (HunYuanDenseV1ForCausalLM, Tencent's Hunyuan-7B and its smaller
siblings): Llama's block with per-head RMSNorms on queries and keys, applied after the
rotary (Qwen3 applies them before), named query_layernorm and key_layernorm.

What transformers 5.25 does (models/hunyuan_v1_dense/modeling_hunyuan_v1_dense.py),
against modeling_qwen3.py: HunYuanDenseV1Attention (l.151-217) projects, transposes,
rotates, and only then normalises the rotated q and k per head (l.196-198). The saved
tensors are the same in kind and size as Qwen3's: the norm keeps its fp32 copy and
rstd of the rotated tensor (Qwen3's: of the projection's output), and the kernel keeps
the normalised tensor (Qwen3's: the rotated one); the rotary's multiplies keep only the
shared cos and sin (they need no gradient). Norms (fp32 statistics, the weight times the
input-dtype result), rotary tables cast to the hidden states' dtype, the MLP and the
loss are Llama's; HunYuanDenseV1RotaryEmbedding's fixed-``alpha`` NTK type changes the
frequencies only. HunYuanDenseV1Config (configuration_hunyuan_v1_dense.py):
attention_bias false (biases q, k, v and o alike), max_position_embeddings 2048,
untied embeddings, no sliding window; its ``head_dim`` defaults to None, which the
attention reads as given (``getattr(config, "head_dim", ...)``, l.161: None fails at
``head_dim ** -0.5``), so a config without it is refused.

Where the norms come after the rotary the normalised tensor a trained weight keeps is
in the rotated q/k's dtype (Family.qk_norm_after_rotary): under autocast the fp32
tables make it fp32, where Qwen3's is the projection's 16-bit dtype. Measured (tests/
accuracy, CPU, peft 0.21.2, transformers 5.25: two layers, 4 heads of 32 over 2 KV
heads, 3 × 50 tokens; 25 cases: the matrix, QLoRA in two regimes, checkpointing, eager
attention, offloading, autocast over bf16 weights): weights, gradients, states and
activations exact (IA³ +512 B, as Qwen3's); modelled as Qwen3's the bf16-mixed full
finetuning case was 57,600 B a layer under (T × (q + kv) × 2). Peaks within 1.0 %
(offloaded full finetuning).

Not in transformers' port, so not here: the remote code's cross-layer attention
(``use_cla``); the norms are always there (no ``use_qk_norm`` switch is read)."""

from __future__ import annotations

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, need
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

# HunYuanDenseV1Config's default, used where config.json leaves the key out
DEFAULT_POSITIONS = 2048


def _read(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True
    out["head_dim"] = need(cfg, "head_dim")
    out.pop("sliding_window", None)  # (HunYuanDenseV1Config has no window)
    if "max_position_embeddings" not in cfg:
        out["max_position_embeddings"] = DEFAULT_POSITIONS


FAMILY = Family(
    # (peft 0.21.2 utils/constants.py has no hunyuan entries: no LN-tuning defaults)
    name="hunyuan_v1_dense",
    model_types=("hunyuan_v1_dense",),
    decoder_layer="HunYuanDenseV1DecoderLayer",
    config=llama_map("hunyuan_v1_dense", LlamaKeys(optional=("attention_bias",)), _read),
    names=LLAMA_NAMES,
    qk_norm=True,
    qk_norm_names=("query_layernorm", "key_layernorm"),
    qk_norm_after_rotary=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
