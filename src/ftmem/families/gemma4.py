"""Gemma 4's language model (Gemma4ForCausalLM, model_type gemma4_text; transformers 5.25
models/gemma4/modeling_gemma4.py Gemma4Text*, configuration_gemma4.py Gemma4TextConfig).

Gemma 3's block (four sandwich norms, per-head q/k norms, the scaled embedding inside its
module, one cos/sin pair per layer type, the soft-capped head) with these differences,
each read from modeling_gemma4.py:

- Gemma4RMSNorm (l.196-214) scales by its weight, not ``1 + w``: ``normed *
  self.weight.float()``, an fp32 copy of a 16-bit weight kept by the multiply
  (Family.norm_weight_cast_fp32, as Helium's), and the fp32 normalised tensor for the
  weight's gradient. Its statistic is ``torch.pow(mean_squared, -0.5)``, whose backward
  reads its input: two fp32 values a row kept, not rsqrt's one (Family.norm_rstd_by_pow).
- The values pass a weightless RMSNorm (``v_norm``, with_scale=False, l.1173): its fp32
  input and statistics are kept where v needs a gradient (Family.values_normed).
- ``scaling = 1.0`` (l.1160): the kernel's scale, no tensor.
- Each decoder layer multiplies its output in place by ``layer_scalar``, a one-element
  buffer in the model's dtype (l.1348, l.1418): the multiply keeps nothing (the buffer
  needs no gradient), and the buffer is left out of the weights as Gemma 3's embed_scale
  and every rotary inv_freq are (measure.saved counts parameters).
- The last layer of each layer type "stores" its keys and values in the model's
  KVSharingDict even when no layer reuses them (configuration_gemma4.py kv_sharing_modes,
  l.243-246; modeling l.1228-1229): that dict is a keyword argument of every checkpointed
  layer, so under checkpointing it holds those keys and values until the backward has
  passed the layers (activations.stored_kv_held).

What this family does not model, refused in one sentence each (_refuse_unmodelled): the
per-layer inputs (E2B/E4B: hidden_size_per_layer_input, the per-layer embedding table and
its projection), key/value sharing across layers (num_kv_shared_layers, and the
double-wide MLP of the sharing layers), global layers whose values are their keys
(attention_k_eq_v), a global head_dim other than head_dim (global_head_dim: the 31B's
global layers are 512 wide where its sliding ones are 256), the MoE block beside the MLP
(enable_moe_block), bidirectional attention, and rotary types other than the default and
proportional ones (both make cos and sin tables head_dim wide: modeling_rope_utils.py
_compute_proportional_rope_parameters pads the unrotated angles with zeros).

Measured (stop 49, helper gemma4; transformers 5.25, peft 0.21.2, torch 2.13 CPU, the tiny
gemma4 of tests/conftest.py at 3 × 50 tokens): 36 accuracy cases (ids ``^gemma4-``):
weights, gradients, optimizer states and activations exact in all but IA³ (+512 B, as on
Gemma 3); peaks within Gemma 3's own offsets for the same case (full, freeze, LoRA, DoRA,
IA³ within 8 B of them, checkpointed ones within 600 B; offloaded activations 2,812 B, 0.2 %,
over, not located), the largest -3.4 % (checkpointed LoRA
bf16-mixed; Gemma 3 -4.0 %) and +3.3 % (checkpointed QLoRA bf16-mixed; Gemma 3 +3.7 %).
Without the stored keys' hold the checkpointed peaks were -9.8 % (full bf16: 1,986,112 /
2,202,910 B) and -11.2 % (LoRA bf16: 1,234,368 / 1,390,478 B); holding the whole recomputed
history from the forward on overshot LoRA fp32 by +3.5 %: it is held from the storing
layer's backward on (the recompute's kernel keeps the same key and value until then).
Counts equal transformers' on the meta device (tests/test_gemma4.py).

Left, doubtful: with a sliding layer under checkpointing the peaks read 4,872 B (0.2 %) over
the same runs without one, as Mistral's and Ministral's checkpointed sliding cases read
about 5,000 B over theirs (generic, not located); Architecture keeps only how many layers slide, so
the storing sliding layer is taken as the highest of the lowest ones (step._sliding_blocks):
with freeze on a published pattern (every sixth layer global) the real one is the
second-highest layer, trained where two or more layers train, frozen in the estimate below
that; without checkpointing a frozen storing layer's key and value live to the end of the
model's forward (not counted: never the peak measured). Not measured on a GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import ConfigMap, Family
from ftmem.families._config import Config, LlamaKeys, flag, opt, opt_or, shown, wrong
from ftmem.families._llama import llama_map
from ftmem.families.gemma2 import GEMMA2_NAMES, read_softcaps

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# Gemma4TextConfig's defaults (transformers 5.25 configuration_gemma4.py l.130-161, and
# __post_init__'s global_head_dim 512 l.183)
TEXT_DEFAULTS: Config = {
    "vocab_size": 262_144,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 30,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "sliding_window": 512,
    "hidden_size_per_layer_input": 256,
    "num_kv_shared_layers": 0,
    "global_head_dim": 512,
}
# the rotary types whose tables are head_dim wide without a scaling factor
# (modeling_rope_utils.py: "default", and "proportional" with its zero-padded angles)
ROTARY_TYPES = ("default", "proportional")


def _sliding_count(cfg: Config, layers: int) -> int:
    """Gemma4TextConfig.__post_init__ (l.166-176): layer_types, else every sixth layer
    global (``bool((i + 1) % 6)``), and the last layer forced global whatever was given."""
    types = cfg.get("layer_types")
    if types is None:
        types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(layers)]
    elif not isinstance(types, list) or len(types) != layers:
        raise wrong("layer_types", f"a list of the {layers} layers' types", types)
    return sum(1 for kind in types[:-1] if kind == "sliding_attention")


def _size_or_off(cfg: Config, key: str) -> int:
    """A count where 0 switches the mechanism off (Gemma4TextModel's ``if
    self.hidden_size_per_layer_input``)."""
    value = cfg.get(key)
    if type(value) is int and value == 0:
        return 0
    return opt(cfg, key, limits.LAYERS if key == "num_kv_shared_layers" else limits.WIDTH) or 0


def _one_attention_shape(cfg: Config) -> None:
    """Every layer's attention is head_dim wide with num_key_value_heads: the
    per_layer_config transformers writes into config.json (its overrides of the global
    layers; PreTrainedConfig.__init__ applies them last, configuration_utils.py l.496-517),
    else Gemma4TextConfig's global_head_dim (512 by default) on the global layers
    (configuration_gemma4.py l.183-196)."""
    overrides = cfg.get("per_layer_config")
    if overrides is None:
        head_dim = opt_or(cfg, "head_dim", TEXT_DEFAULTS)
        global_head_dim = opt_or(cfg, "global_head_dim", TEXT_DEFAULTS)
        if global_head_dim != head_dim:
            raise ConfigError(
                f"Gemma 4's global layers with another head size (global_head_dim "
                f"{global_head_dim}, head_dim {head_dim}) are not modelled yet: ftmem's "
                "layers share one attention shape."
            )
        return
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise wrong("per_layer_config", "an object of per-layer objects", overrides)
    for layer, values in overrides.items():
        for key, value in values.items():
            if key in ("head_dim", "num_key_value_heads") and value == opt_or(
                cfg, key, TEXT_DEFAULTS
            ):
                continue
            raise ConfigError(
                f"Gemma 4's per-layer overrides (per_layer_config: layer {shown(layer)}'s "
                f"{shown(key)} {shown(value)}) are not modelled yet: ftmem's layers share one "
                "attention shape."
            )


def _refuse_unmodelled(cfg: Config) -> None:
    """What the family leaves out, refused before anything is estimated."""
    per_layer = _size_or_off(cfg, "hidden_size_per_layer_input")
    if per_layer:
        raise ConfigError(
            f"Gemma 4's per-layer inputs (hidden_size_per_layer_input {per_layer}: the "
            "E2B/E4B per-layer embedding table and its projection) are not modelled yet; "
            "ftmem models Gemma 4 text configs with hidden_size_per_layer_input 0."
        )
    shared = _size_or_off(cfg, "num_kv_shared_layers")
    if shared:
        raise ConfigError(
            f"Gemma 4's key/value sharing (num_kv_shared_layers {shared}: layers that reuse an "
            "earlier layer's keys and values) is not modelled yet."
        )
    for key, what in (
        ("attention_k_eq_v", "global layers whose values are their keys"),
        ("enable_moe_block", "the mixture-of-experts block beside the MLP"),
    ):
        if flag(cfg, key, False):
            raise ConfigError(f"Gemma 4's {key} ({what}) is not modelled yet.")
    _one_attention_shape(cfg)
    if cfg.get("use_bidirectional_attention") == "all":
        raise ConfigError(
            "Gemma 4 with use_bidirectional_attention 'all' (no causal mask) is not modelled."
        )
    rope = cfg.get("rope_parameters")
    for kind, params in rope.items() if isinstance(rope, dict) else ():
        if not isinstance(params, dict):  # (Gemma4TextRotaryEmbedding reads one per type)
            raise wrong("rope_parameters", "an object per layer type", rope)
        rope_type = params.get("rope_type", "default")
        if rope_type not in ROTARY_TYPES:
            raise ConfigError(
                f"config.json: rope_parameters' {kind} rotary type {shown(rope_type)} is not "
                "modelled for Gemma 4 (default and proportional are)."
            )


def _read_extra(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True
    read_softcaps({k: cfg.get(k) for k in ("final_logit_softcapping",)}, out)


def _build(arch: Architecture, kw: Config) -> None:
    # the layers' types as the Architecture counts them: the sliding ones first, the last
    # layer global (Gemma4TextConfig forces it); no sharing, no per-layer inputs, no MoE
    sliding = arch.sliding_layers if arch.sliding_window else 0
    full = arch.num_layers - sliding
    kw.update(
        layer_types=["sliding_attention"] * sliding + ["full_attention"] * full,
        final_logit_softcapping=arch.final_logit_softcapping,
        hidden_size_per_layer_input=0,
        num_kv_shared_layers=0,
        global_head_dim=arch.head_size,
        attention_k_eq_v=False,
        enable_moe_block=False,
        vocab_size_per_layer_input=arch.vocab_size,
    )
    if not arch.sliding_window:  # (the class's default window, read by no layer)
        kw.pop("sliding_window", None)


_LLAMA_MAP = llama_map(
    "gemma4",
    LlamaKeys(
        optional=("attention_bias",),
        activation="hidden_activation",
        window="when-set",
        sliding=_sliding_count,
        tie=True,
    ),
    _read_extra,
    _build,
)


def _read(cfg: Config) -> Config:
    for key in ("hidden_size_per_layer_input", "num_kv_shared_layers", "global_head_dim"):
        if key in cfg and cfg[key] is None:  # (Gemma4TextConfig's strict int fields)
            raise wrong(key, "an integer", None)
    given = {k: v for k, v in cfg.items() if v is not None}
    full = {**TEXT_DEFAULTS, **given}
    _refuse_unmodelled(full)
    out = _LLAMA_MAP.read(full)
    if out.get("sliding_layers"):  # (a given last sliding layer is made global)
        out["sliding_layers"] = _sliding_count(full, out["num_layers"])
    return out


FAMILY = Family(
    name="gemma4",
    model_types=("gemma4_text",),
    decoder_layer="Gemma4TextDecoderLayer",
    config=ConfigMap(_read, _LLAMA_MAP.build),
    names=GEMMA2_NAMES,
    qk_norm=True,
    norm_scale_in_fp32=True,
    norm_weight_cast_fp32=True,
    norm_rstd_by_pow=True,
    values_normed=True,
    rotary_tables_per_layer_type=True,
    stores_last_kv_per_layer_type=True,
    top_layer_global=True,
    since_transformers=(5, 25, 0),
)
