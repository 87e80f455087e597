"""Ministral 3 (Ministral3ForCausalLM; the language model of the Ministral 3 and
Devstral 2 image-text checkpoints): Mistral's bias-free block, with each query scaled
after the rotary by a factor that grows with its position (Llama 4's attention scaling).

What transformers 5.25 does (models/ministral3/modeling_ministral3.py), against
modeling_mistral.py: Ministral3Attention multiplies the rotated queries by
``get_llama_4_attn_scale(position_ids, beta, original_max_position_embeddings)`` cast to
their dtype (l.104-107, l.146-150): a (1, 1, s, 1) tensor, which the multiply keeps for
the queries' gradient (s elements per layer in the rotated queries' dtype:
Family.query_position_scale); its product replaces the rotated queries as the tensor
sdpa keeps, so the saved tensors are otherwise Mistral's. The window, when set, slides on
every layer as Mistral's (l.367, ``sliding_window=getattr(self.config, ...)``).
Ministral3Config (configuration_ministral3.py): head_dim 128 when config.json leaves the
key out (a strict int field: null is refused), YaRN rotary by default, no window,
untied embeddings.

Measured (tests/accuracy, CPU): the matrix's 17 cases were under by exactly the factor,
s × 2 B a layer in bf16 and s × 4 B in fp32 and bf16-mixed (-200 B and -400 B of about
1.2-2.3 MB); counted, they are exact (IA³ +512 B, as in the older families' IA³ cases,
e.g. Qwen3's +512 B), as are a window on both layers, checkpointed LoRA and three cases
under Mistral 3's vision tower; peaks within 0.1 %."""

from __future__ import annotations

from ftmem.errors import ConfigError
from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, every_layer, wrong
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

# Ministral3Config's head_dim default (configuration_ministral3.py), used where
# config.json leaves the key out
DEFAULT_HEAD_DIM = 128
DEFAULT_POSITIONS = 262_144


def _read(cfg: Config, out: Config) -> None:
    if "head_dim" not in cfg:
        out["head_dim"] = DEFAULT_HEAD_DIM
    elif cfg["head_dim"] is None:  # (a strict int field: transformers refuses null too)
        raise wrong("head_dim", "an integer", None)
    out["mlp_bias"] = False  # (its MLP and attention take no bias switch)
    if "max_position_embeddings" not in cfg:  # (Ministral3Config's default)
        out["max_position_embeddings"] = DEFAULT_POSITIONS
    # the query scale reads two rope parameters, which a given rope dict replaces
    # (Ministral3Config.__post_init__ fills its default only when none is given; a
    # legacy rope_scaling becomes rope_parameters): without them the forward raises
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    needed = ("llama_4_scaling_beta", "original_max_position_embeddings")
    if isinstance(rope, dict) and any(rope.get(key) is None for key in needed):
        raise ConfigError(
            "config.json: Ministral 3's rope_parameters need llama_4_scaling_beta and "
            "original_max_position_embeddings (its query scaling reads them)."
        )


FAMILY = Family(
    # (peft 0.21.2 utils/constants.py has no ministral3 entries: no LN-tuning defaults)
    name="ministral3",
    model_types=("ministral3",),
    decoder_layer="Ministral3DecoderLayer",
    config=llama_map(
        "ministral3",
        LlamaKeys(fixed_bias=(False, False), window="always", sliding=every_layer),
        _read,
    ),
    names=LLAMA_NAMES,
    query_position_scale=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
