"""OLMo 1 (OlmoForCausalLM: OLMo-1B/7B-hf, OLMo-7B-0424/0724-hf): Llama's block with
LayerNorms that have no weight or bias, q, k and v optionally clamped, and rotary tables
left in fp32.

What transformers 5.25 does (models/olmo/modeling_olmo.py), against modeling_llama.py:
- OlmoLayerNorm (the block's two norms and the final one) is ``F.layer_norm(x.to(
  torch.float32), shape, None, None, eps=1e-5).to(orig_dtype)``: no parameters;
  native_layer_norm keeps the fp32 copy of its input (the input itself when fp32) and
  fp32 mean and rstd, where the input needs a gradient (Family.norms_without_parameters).
  Under autocast the residual stream is fp32 already and layer_norm is on CUDA's fp32
  list: no cast either way.
- OlmoAttention clamps q, k and v in place after their projections when ``clip_qkv`` is
  set (``clamp_``: each keeps a copy of its input for the backward, Attention.clamp_saved,
  as OLMoE's).
- OlmoRotaryEmbedding returns cos and sin in fp32 and apply_rotary_pos_emb casts the
  rotated q and k back to their dtype (OLMo 2's rotary, Family.rotary_tables_fp32).
- OlmoMLP is Llama's gated MLP without biases (``bias=False`` whatever the config says);
  ``attention_bias`` on q, k, v and o; untied embeddings and 2,048 positions by default;
  no sliding window.

Measured (stop 49; tests/accuracy, CPU: the tiny Llama shape; 29 cases: the matrix,
QLoRA, checkpointing in two regimes, offloading, eager attention, clip_qkv 8 in four,
freeze in bf16): weights, gradients, states and activations exact but IA³'s +384 B;
peaks within 1.0 % (offloaded -1.0 %). Before no norm was said to train, the
freeze-finetuned bf16-mixed case was +4.1 % (q/k/v's 16-bit weight copies for an input
gradient nothing needs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, number
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# OlmoConfig's max_position_embeddings where config.json leaves it out
DEFAULT_POSITIONS = 2048


def _read(cfg: Config, out: Config) -> None:
    out.pop("sliding_window", None)  # (OlmoConfig has no window)
    out["mlp_bias"] = False  # (OlmoMLP's linears never have one)
    out["norm"] = "layernorm"  # (without parameters: Family.norms_without_parameters)
    out["qkv_clip"] = number(cfg, "clip_qkv")
    if "max_position_embeddings" not in cfg:
        out["max_position_embeddings"] = DEFAULT_POSITIONS


def _build(arch: Architecture, kw: Config) -> None:
    kw.pop("head_dim")  # (OlmoConfig has no such field: hidden / heads)
    kw.update(attention_bias=arch.attention_qkv_bias, clip_qkv=arch.qkv_clip)


FAMILY = Family(
    name="olmo",
    model_types=("olmo",),
    decoder_layer="OlmoDecoderLayer",
    config=llama_map("olmo", LlamaKeys(), _read, _build),
    names=LLAMA_NAMES,
    norms_without_parameters=True,
    qkv_clip=True,
    rotary_tables_fp32=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
