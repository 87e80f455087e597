"""VaultGemma (VaultGemmaForCausalLM): Gemma 2 without its two post-norms.

What transformers 5.25 does (models/vaultgemma/modeling_vaultgemma.py), against
modeling_gemma2.py: VaultGemmaDecoderLayer keeps input_layernorm and
pre_feedforward_layernorm and drops post_attention_layernorm and
post_feedforward_layernorm (each sublayer's output is added to the residual as it is: a
sequential block of two norms, as Llama's); its attention is always causal. Everything
else is Gemma 2's: RMSNorms scaling by (1 + w) in fp32, the scaled embedding, the eager
attention with soft-capped scores (``_supports_sdpa = False``), query_pre_attn_scalar,
the tanh-GELU gated MLP, the final logits soft-capped, sliding and global layers
alternating (VaultGemmaConfig: layer 0, 2, ... slide; window 4096), tied embeddings,
head_dim 256 by default.

Measured (stop 49; tests/accuracy, CPU: Gemma 2's tiny shape, two norms a block; 22
cases: the matrix, QLoRA, checkpointing, a window on both layers): weights, gradients,
states and activations exact but IA³'s +512 B; peaks within 1.5 % (checkpointed LoRA
-1.5 %, full bf16-mixed -1.1 %)."""

from __future__ import annotations

from dataclasses import replace

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, alternating
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.families.gemma2 import FAMILY as GEMMA2
from ftmem.families.gemma2 import build_gemma2, read_softcaps

# VaultGemmaConfig's defaults for keys a config.json may leave out
DEFAULT_HEAD_DIM = 256
DEFAULT_POSITIONS = 8192


def _read(cfg: Config, out: Config) -> None:
    read_softcaps(cfg, out)
    out["norms_per_block"] = 2
    if not out.get("head_dim"):
        out["head_dim"] = DEFAULT_HEAD_DIM
    if "max_position_embeddings" not in cfg:
        out["max_position_embeddings"] = DEFAULT_POSITIONS


FAMILY: Family = replace(
    GEMMA2,
    name="vaultgemma",
    model_types=("vaultgemma",),
    decoder_layer="VaultGemmaDecoderLayer",
    config=llama_map(
        "vaultgemma",
        LlamaKeys(
            optional=("attention_bias",),
            activation="hidden_activation",
            window="when-set",
            sliding=alternating,
            tie=True,
        ),
        _read,
        build_gemma2,
    ),
    names=replace(LLAMA_NAMES, norms={2: ("input_layernorm", "pre_feedforward_layernorm")}),
    # (peft 0.21.2 utils/constants.py has no vaultgemma entries: no LN-tuning defaults)
    ln_tuning_targets=(),
    notes={
        "attention": (
            "VaultGemma has no sdpa path in transformers 5: its attention runs eagerly and "
            "keeps the soft-capped s² scores."
        )
    },
    own_loss_releases=(),
)
