"""Helium (HeliumForCausalLM, Kyutai's Helium-1): Llama's block with RMSNorms that scale
by an fp32 copy of their weight in fp32 before casting back, GLM's interleaved rotary
tables rebuilt in every layer, and an o_proj sized hidden → hidden.

What transformers 5.25 does (models/helium/modeling_helium.py), against
modeling_llama.py: HeliumRMSNorm returns ``(self.weight.to(torch.float32) *
hidden_states).to(input_dtype)`` (Family.norm_weight_cast_fp32: the product keeps the
weight's fp32 copy, h × 4 bytes a norm call with 16-bit weights, and the fp32 normalised
tensor where the weight trains); apply_rotary_pos_emb takes the first half of cos and
sin and ``repeat_interleave``s it per call, with an interleaved rotate_half (stack and
flatten): GLM's per-layer tables (Family.rotary_tables_per_layer), over the whole head.
HeliumAttention builds ``o_proj = nn.Linear(hidden_size, hidden_size)`` whatever
heads × head_dim is, and the attention's output (heads × head_dim wide) is fed to it: a
config where the two differ cannot run, and is refused. HeliumConfig
(configuration_helium.py): head_dim 128, 20 heads of a 2,560 hidden size, no biases
(``attention_bias`` on q/k/v only, o_proj never; ``mlp_bias``), untied embeddings,
max_position_embeddings 4096, no sliding window.

Measured (tests/accuracy, CPU, peft 0.21.2: two layers, 4 heads of 24 over 2 KV heads,
3 × 50 tokens; 23 cases: the matrix, QLoRA in two regimes, checkpointing, eager
attention, autocast over bf16 weights): weights, gradients, states and activations
exact but IA³'s +384 B (as the older families') and prefix tuning's +4,800 B (the
per-layer tables counted where no rotated tensor needs a gradient: GLM's +2,400 B, half
heads); peaks within 0.6 %. Modelled as Llama's norms, full bf16 finetuning was
145,920 B under and LoRA in bf16 1,536 B under (the weight copies)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem.errors import ConfigError
from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, flag
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# HeliumConfig's defaults for the keys a config.json may leave out
DEFAULT_HEAD_DIM = 128
DEFAULT_POSITIONS = 4096


def _read(cfg: Config, out: Config) -> None:
    out.pop("sliding_window", None)  # (HeliumConfig has no window)
    if "max_position_embeddings" not in cfg:
        out["max_position_embeddings"] = DEFAULT_POSITIONS
    if not out.get("head_dim"):  # (HeliumConfig's 128 where the key is absent or null)
        out["head_dim"] = DEFAULT_HEAD_DIM
    out["attention_out_bias"] = False
    out["attention_qkv_bias"] = flag(cfg, "attention_bias", False)
    _check_width("config.json", out["hidden_size"], out["num_heads"] * out["head_dim"])


def _check_width(where: str, hidden: int, width: int) -> None:
    if width != hidden:
        raise ConfigError(
            f"{where}: Helium's o_proj is hidden_size wide ({hidden}), but its heads are "
            f"{width} (num_attention_heads × head_dim): transformers cannot run this model."
        )


def _build(arch: Architecture, kw: Config) -> None:
    _check_width(arch.name, arch.hidden_size, arch.q_size)
    kw.update(attention_bias=arch.attention_qkv_bias, mlp_bias=arch.mlp_bias)


FAMILY = Family(
    # (peft 0.21.2 utils/constants.py has no helium entries: no LN-tuning defaults)
    name="helium",
    model_types=("helium",),
    decoder_layer="HeliumDecoderLayer",
    config=llama_map("helium", LlamaKeys(), _read, _build),
    names=LLAMA_NAMES,
    norm_weight_cast_fp32=True,
    rotary_tables_per_layer=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
