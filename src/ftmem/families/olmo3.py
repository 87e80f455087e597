"""OLMo 3 (Olmo3ForCausalLM): OLMo 2's block (the two RMSNorms after attention and
after the MLP, RMSNorms on queries and keys across the whole projection, norms that
scale in fp32 before casting back, rotary tables left in fp32) in a stack of sliding and
full layers (``layer_types``; by default every fourth layer is full), with one fp32 cos
and sin pair per layer type.

What transformers 5.25 does (models/olmo3/modeling_olmo3.py), against olmo2's file:
Olmo3Attention reads ``config.layer_types[layer_idx]`` and passes the window to the
kernel in sliding layers (l.160-161, l.201); Olmo3Model.forward builds a causal and a
sliding-window mask (l.405-419) and calls the rotary once per type in
``set(config.layer_types)`` (l.422-424), each forward returning fp32 cos and sin
(l.318-328, "returns cos/sin in fp32 without casting"); the RMSNorm (l.43-57), the q/k
norms over heads × head_dim (l.157-158), the post-norm block (l.222-265) and the MLP are
OLMo 2's. Olmo3Config (configuration_olmo3.py): sliding_window 4096,
``"sliding_attention" if (i + 1) % 4 != 0`` when layer_types is absent, no
attention_bias by default, untied embeddings.

Measured (tests/accuracy, CPU, peft 0.21.2, transformers 5.25: a tiny stack of three
sliding layers of 16 under a full one, 3 × 50 tokens): the matrix's 17 cases, QLoRA in
two regimes, checkpointed LoRA and partial freezing: weights, gradients, states and
activations exact to the byte (IA³ +384 B, as in the older families' IA³ cases, e.g.
Mistral's +384 B), peaks within 0.7 % (checkpointed LoRA +0.7 %). Frozen below its top
full layer it keeps no sliding pair: +9,600 B (one fp32 pair, 50 × 24 × 4 × 2) before
``grad_blocks``."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys
from ftmem.families._llama import LLAMA_NAMES, llama_map, sliding_mask_always
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# Olmo3Config's default window (configuration_olmo3.py), used where config.json leaves
# the key out
DEFAULT_WINDOW = 4096
DEFAULT_POSITIONS = 2048


def every_fourth_full(cfg: Config, layers: int) -> int:
    """Olmo3Config without ``layer_types``: ``"sliding_attention" if (i + 1) % 4 != 0``
    (transformers 5.25 configuration_olmo3.py __post_init__): all but every fourth slide."""
    return layers - layers // 4


def _read(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True
    if "max_position_embeddings" not in cfg:  # (Olmo3Config's default)
        out["max_position_embeddings"] = DEFAULT_POSITIONS
    sliding_mask_always(cfg, out, DEFAULT_WINDOW, every_fourth_full, "OLMo 3")


def _build(arch: Architecture, kw: Config) -> None:
    if arch.sliding_window is None:  # (measure only: the window no layer uses, too
        # long for its mask to be built at the tiny models' lengths)
        kw.update(sliding_window=DEFAULT_WINDOW, layer_types=["full_attention"] * arch.num_layers)


FAMILY = Family(
    name="olmo3",
    model_types=("olmo3",),
    decoder_layer="Olmo3DecoderLayer",
    config=llama_map(
        "olmo3",
        LlamaKeys(optional=("attention_bias",), window="when-set", sliding=every_fourth_full),
        _read,
        _build,
    ),
    names=replace(
        LLAMA_NAMES, norms={2: ("post_attention_layernorm", "post_feedforward_layernorm")}
    ),
    qk_norm=True,
    qk_norm_per_head=False,
    norms_after_sublayers=True,
    norm_scale_in_fp32=True,
    rotary_tables_fp32=True,
    rotary_tables_per_layer_type=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
