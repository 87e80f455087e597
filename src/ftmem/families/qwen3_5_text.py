"""Qwen3.5's dense text model (Qwen3_5ForCausalLM, model_type qwen3_5_text; transformers
5.25 models/qwen3_5/): Qwen3's block (per-head q/k RMSNorms, no biases by default, an
explicit head_dim) whose attention is one of two kinds by ``layer_types``:
Qwen3_5GatedDeltaNet ("linear_attention", ``linear_attn``: ops.gated_deltanet) or the gated
Qwen3_5Attention ("full_attention", ``self_attn``: q_proj twice as wide for the output
gate, ops.output_gate). Its RMSNorms are zero-centred, ``x·(1 + w)`` in fp32
(Qwen3_5RMSNorm l.917-931); the rotary turns a quarter of each head by default
(``partial_rotary_factor`` 0.25, Qwen3_5TextConfig.__post_init__).

The layer order: config.json's ``layer_types`` (by default every fourth layer full,
``bool((i + 1) % full_attention_interval)``, interval 4), kept as
LinearAttention.indices; each Gated DeltaNet tensor is held by those blocks and each
full-attention one by the others (arch.Blocks), so every tensor sits in its own layer
(tests/test_qwen35_text.py compares names with their layer index), and the block walk
(step._block_activations) keys each block on its kind, the lowest trained block following
the order (LoRA on q_proj and v_proj trains from the lowest full-attention layer up).
Training steps are estimated for what was measured (ops.gated_deltanet.refuse_training:
full, freeze, LoRA, QLoRA in fp32, bf16 and bf16-mixed on one GPU; tests/accuracy/cases.py
_qwen3_5_text); a Gated DeltaNet block that keeps nothing in forward (frozen below the
lowest trained block) and a checkpointed one are placed by their forward transient and
backward workspace (helper gdn's replays, autocast included); a checkpointed one whose
projections carry LoRA is refused (calibration/notes/peft.md,
"Ordered block walk (stop 50, helper order)" and its continuation).

The multi-token-prediction layers (``mtp_*`` in config.json, ``mtp.*`` weights) are not
built: Qwen3_5ForCausalLM ignores them on loading (``_keys_to_ignore_on_load_unexpected``,
modeling_qwen3_5.py l.1742), so the count leaves them out as the model does. peft 0.21.2
has no default LoRA targets for qwen3_5_text (utils/constants.py): targets must be named.

Notes (stop 49, helper qwen35; the order: stop 50, helper order). Measured: every
tensor's name without its layer index, and its size, counted over the layers, equals
transformers 5.25's model on the meta device (tests/test_qwen35_text.py: the default
pattern, interval 2, a given order, equal heads with biases and tied embeddings, half the
head rotated; tiny 8-layer model 264,672 parameters; Qwen3_5TextConfig's own defaults,
32 layers at 4096 wide: 8,953,803,264, a linear layer 218,407,104 and a full one
209,723,904); peft 0.21.2's all-linear on the tiny model adapts exactly ftmem's
all-linear. Left: the op's forward transient and backward workspace (frozen and
checkpointed Gated DeltaNet blocks), the flash-linear-attention path
(``--linear-attention fla``, not measured), serving's recurrent and conv states,
qwen3_5_moe_text and qwen3_next (the same two kinds under Qwen3-MoE's experts, and
Qwen3-Next's fused projections).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import Family, ModuleNames
from ftmem.families._config import Config, LlamaKeys, opt, opt_or, rotary_dim, wrong
from ftmem.families._llama import LLAMA_NAMES, llama_map

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# Qwen3_5TextConfig.__post_init__'s default: every fourth layer attends in full
DEFAULT_FULL_ATTENTION_INTERVAL = 4
# Qwen3_5TextConfig's class defaults (transformers 5.25 configuration_qwen3_5.py l.81-101)
# for the keys a config.json may leave out
DEFAULTS: Config = {
    "head_dim": 256,
    "max_position_embeddings": 32768,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4,
}
LAYER_TYPES = ("linear_attention", "full_attention")


def linear_layer_indices(cfg: Config, layers: int) -> list[int]:
    """The layers config.json's ``layer_types`` makes Gated DeltaNet ones (else the config
    class's default pattern), bottom to top; the last layer must be a full-attention one,
    as ftmem's top block is (Architecture._fits_linear_attention)."""
    types = cfg.get("layer_types")
    if types is None:
        interval = opt(cfg, "full_attention_interval", limits.LAYERS)
        interval = interval or DEFAULT_FULL_ATTENTION_INTERVAL
        types = [LAYER_TYPES[not (i + 1) % interval] for i in range(layers)]
    if not isinstance(types, list) or len(types) != layers:
        raise wrong("layer_types", f"a list of the {layers} layers' types", types)
    if any(kind not in LAYER_TYPES for kind in types):
        raise wrong("layer_types", "a list of linear_attention and full_attention", types)
    if types[-1] != "full_attention":
        raise ConfigError(
            "config.json's layer_types ends with a linear-attention layer, which ftmem does "
            "not model (it takes the top layer to attend in full, as Qwen3.5's do)."
        )
    return [i for i, kind in enumerate(types) if kind == "linear_attention"]


def _read(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True
    out.pop("sliding_window", None)  # (Qwen3_5TextConfig has no window)
    out["head_dim"] = opt_or(cfg, "head_dim", DEFAULTS)  # (not hidden / heads)
    positions = opt_or(cfg, "max_position_embeddings", DEFAULTS, limits.TOKENS)
    out["max_position_embeddings"] = positions
    out["rotary_dim"] = rotary_dim(cfg, out["head_dim"], ("partial_rotary_factor",), 0.25)
    indices = linear_layer_indices(cfg, out["num_layers"])
    if indices:
        out["linear_attention"] = {
            field: opt_or(cfg, key, DEFAULTS)
            for field, key in (
                ("key_heads", "linear_num_key_heads"),
                ("value_heads", "linear_num_value_heads"),
                ("key_head_dim", "linear_key_head_dim"),
                ("value_head_dim", "linear_value_head_dim"),
                ("conv_kernel", "linear_conv_kernel_dim"),
            )
        }
        out["linear_attention"]["layers"] = len(indices)
        out["linear_attention"]["indices"] = tuple(indices)


def _build(arch: Architecture, kw: Config) -> None:
    """The transformers config of ``arch``: its layer_types in its order
    (Architecture.linear_attention_blocks), its widths and rotary fraction."""
    lin, linear = arch.linear_attention, arch.linear_attention_blocks
    kw["layer_types"] = [
        LAYER_TYPES[linear is None or not linear.holds(i)] for i in range(arch.num_layers)
    ]
    kw["tie_word_embeddings"] = arch.tie_embeddings
    rotary = arch.rotary_dim or arch.head_size
    kw["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10_000_000.0,
        "partial_rotary_factor": rotary / arch.head_size,
    }
    if lin is not None:
        kw.update(
            linear_num_key_heads=lin.key_heads,
            linear_num_value_heads=lin.value_heads,
            linear_key_head_dim=lin.key_head_dim,
            linear_value_head_dim=lin.value_head_dim,
            linear_conv_kernel_dim=lin.conv_kernel,
        )


NAMES = ModuleNames(
    blocks=LLAMA_NAMES.blocks,
    attention=LLAMA_NAMES.attention,
    mlp=LLAMA_NAMES.mlp,
    norms=LLAMA_NAMES.norms,
    embedding=LLAMA_NAMES.embedding,
    final_norm=LLAMA_NAMES.final_norm,
)

FAMILY = Family(
    name="qwen3_5_text",
    model_types=("qwen3_5_text",),
    decoder_layer="Qwen3_5DecoderLayer",
    config=llama_map(
        "qwen3_5_text",
        LlamaKeys(optional=("attention_bias",)),
        read_extra=_read,
        build_extra=_build,
    ),
    names=NAMES,
    qk_norm=True,
    norm_scale_in_fp32=True,
    norm_scale_plus_one=True,
    rotary_tables_per_sequence=True,
    linear_attention_module="linear_attn",
    attention_output_gate=True,
    # not measured for a stack of two kinds: nothing of ColossalAI's
    colossalai_policy=None,
)
