"""config.json's values read with their types, and the Llama-style key map used in both
directions: reading a config into an Architecture, and writing the kwargs of the
transformers config that ``ftmem measure`` builds.

As transformers 5 reads them (its configs are strict dataclasses): a flag is a JSON
true/false, never the string "false" (truthy) nor 0; a count is an integer, never a
bool, a float or a string; a count that may be absent may be null. Each count is
checked against its physical bound (ftmem.limits) before any arithmetic sees it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftmem import limits
from ftmem.display import clipped
from ftmem.errors import ConfigError

if TYPE_CHECKING:
    from ftmem.arch import Architecture

Config = dict[str, Any]

# Whether a multimodal model ties its LM head when config.json does not say: the outer
# config class's default, which decides (transformers 5.24, modeling_utils.py
# get_expanded_tied_weights_keys reads the model's own config; each class's
# configuration_*.py gives the default).
MULTIMODAL_TIE_DEFAULT = {
    "gemma3": True,
    "paligemma": True,
    "mistral3": True,
    "llava": False,
    "llava_next": False,
    "qwen2_5_vl": False,
    "qwen2_vl": False,
    "idefics3": False,
}

# Architecture.activation -> transformers' ACT2FN names
HF_ACTIVATIONS = {
    "silu": "silu",
    "gelu": "gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
    "relu": "relu",
    "relu2": "relu2",
    "xielu": "xielu",
}


def shown(value: Any) -> str:
    """A config value in a message, as JSON and cut short."""
    import json  # (an error's text only)

    big = isinstance(value, int) and not isinstance(value, bool)
    text = limits.shown(value) if big else json.dumps(value)
    return clipped(text)


def wrong(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"config.json: {key} must be {expected}, not {shown(value)}.")


def _present(cfg: Config, keys: tuple[str, ...]) -> tuple[str, Any] | None:
    """The first of ``keys`` that config.json gives a value (null counts as absent)."""
    for key in keys:
        if cfg.get(key) is not None:
            return key, cfg[key]
    return None


def _count(key: str, value: Any, bound: limits.Bound) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong(key, "an integer", value)
    if value <= 0:
        raise wrong(key, "positive", value)
    problem = bound.problem(f"config.json: {key}", value)
    if problem:
        raise ConfigError(problem + ".")
    return value


def need(cfg: Config, *keys: str, bound: limits.Bound = limits.WIDTH) -> int:
    """A count config.json must give (under one of ``keys``)."""
    found = _present(cfg, keys)
    if found is None:
        raise ConfigError(
            f"config.json lacks '{keys[0]}', which a {cfg.get('model_type')} model needs."
        )
    return _count(*found, bound)


def opt(cfg: Config, key: str, bound: limits.Bound = limits.WIDTH) -> int | None:
    """A count config.json may leave out (or give as null)."""
    found = _present(cfg, (key,))
    return None if found is None else _count(*found, bound)


def opt_or(cfg: Config, key: str, defaults: Config, bound: limits.Bound = limits.WIDTH) -> int:
    """A count config.json may leave out, else its config class's default (``defaults``)."""
    value = opt(cfg, key, bound)
    return defaults[key] if value is None else value


def flag(cfg: Config, key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise wrong(key, "true or false", value)
    return value


def number(cfg: Config, key: str) -> float | None:
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise wrong(key, "a number", value)
    if not math.isfinite(value):
        raise wrong(key, "a finite number", value)
    return float(value)


def word(cfg: Config, key: str, default: str | None = None) -> str | None:
    value = cfg.get(key, default)
    if value is not None and (not isinstance(value, str) or not value):
        raise wrong(key, "a non-empty string", value)
    return value


def rotary_dim(cfg: Config, head_dim: int, keys: tuple[str, ...], default: float) -> int | None:
    """The part of each head the rotary turns, as transformers computes it
    (``int(head_dim * partial_rotary_factor)``), from the first of ``keys`` the config
    gives, else its ``rope_parameters``; None for the whole head."""
    rope = cfg.get("rope_parameters")
    sources = [cfg] + ([rope] if isinstance(rope, dict) else [])
    key, factor = keys[0], default
    for source in sources:
        found = next(
            (k for k in (*keys, "partial_rotary_factor") if source.get(k) is not None), None
        )
        if found:
            key, factor = found, number(source, found) or 0.0
            break
    if not 0 < factor <= 1:
        raise wrong(key, "a fraction of the head in (0, 1]", factor)
    dim = int(head_dim * factor)
    if dim < 1:
        raise wrong(
            key, f"large enough to turn at least one of the head's {head_dim} dimensions", factor
        )
    return None if dim == head_dim else dim


def activation(name: str | None) -> str:
    """transformers' activation name -> Architecture.activation."""
    name = (name or "silu").lower()
    if name in ("silu", "swish"):
        return "silu"
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_tanh", "gelu_fast"):
        return "gelu_tanh"
    if name.startswith("gelu"):
        return "gelu"
    if name == "relu":
        return "relu"
    if name == "relu2":  # transformers 5.25 activations.py ReLUSquaredActivation
        return "relu2"
    if name == "xielu":  # XIELUActivation (Apertus)
        return "xielu"
    raise ConfigError(f"Unsupported activation {shown(name)} in config.json.")


# How many of a config's ``layers`` layers are sliding when it gives no layer_types.
SlidingPattern = Callable[[Config, int], int]


@dataclass(frozen=True, slots=True)
class LlamaKeys:
    """What varies between the config classes that copy Llama's.

    ``fixed_bias``: (q/k/v, o) biases the family always has (Qwen2: q/k/v only), instead
    of reading ``attention_bias``; ``optional``: the keys of that list its config class
    takes (``attention_bias``, ``mlp_bias``); ``activation``: the activation's key;
    ``window``: how the sliding window is written ("always", "when-set", or
    "use_sliding_window" with the flag); ``sliding``: how many layers the window slides
    on when config.json gives no ``layer_types`` (the config class's default pattern,
    ``SlidingPattern``; None: the family is not checked, and no layer's cache is counted
    at the window); ``tie``: tied embeddings when the config does not say."""

    fixed_bias: tuple[bool, bool] | None = None
    optional: tuple[str, ...] = ()
    activation: str = "hidden_act"
    window: str = ""
    sliding: SlidingPattern | None = None
    tie: bool = False


def dense_prefix(cfg: Config, layers: int, default: int) -> int:
    """How many first blocks are dense, from ``mlp_layer_types`` (``default`` without
    it); ftmem models a stack whose dense blocks all come first."""
    types = cfg.get("mlp_layer_types")
    if types is None:
        return default
    if (
        not isinstance(types, list)
        or len(types) != layers
        or any(t not in ("dense", "sparse") for t in types)
    ):
        raise ConfigError(
            f"config.json: mlp_layer_types must list 'dense' or 'sparse' for each of the "
            f"{layers} layers, not {shown(types)}."
        )
    dense = types.count("dense")
    if types[:dense] != ["dense"] * dense:
        raise ConfigError(
            "config.json: mlp_layer_types puts a dense block after a sparse one; ftmem models "
            "stacks whose dense blocks come first."
        )
    return dense


def dense_prefix_or_first_k(cfg: Config, layers: int, default_first: int) -> int:
    """How many first blocks are dense: ``mlp_layer_types`` where config.json gives it (it
    takes precedence), else the count ``first_k_dense_replace`` (``default_first``)."""
    if cfg.get("mlp_layer_types") is not None:
        return dense_prefix(cfg, layers, default_first)
    first = cfg.get("first_k_dense_replace", default_first)
    if isinstance(first, bool) or not isinstance(first, int) or first < 0:
        raise ConfigError(
            f"config.json: first_k_dense_replace must be a count, not {shown(first)}."
        )
    return first


def every_layer(cfg: Config, layers: int) -> int:
    """Config classes without ``layer_types`` (Mistral, Mixtral, Phi-3, StarCoder2,
    Qwen3-MoE): transformers 5.24 cache_utils.py get_layer_types_and_kwargs makes every
    layer "sliding_attention" when the layer's config has a sliding_window."""
    return layers


def alternating(cfg: Config, layers: int) -> int:
    """Gemma2Config and GptOssConfig: ``"sliding_attention" if bool((i + 1) % 2)``
    (transformers 5.24 configuration_gemma2.py __post_init__, configuration_gpt_oss.py
    validate_architecture): layers 0, 2, 4, ... slide."""
    return (layers + 1) // 2


def every_nth_full(key: str, default: int) -> SlidingPattern:
    """Gemma3TextConfig (``sliding_window_pattern``, 6) and Exaone4Config (4): every
    layer slides but each ``pattern``-th, ``bool((i + 1) % pattern)`` (transformers 5.24
    configuration_gemma3.py, configuration_exaone4.py __post_init__)."""

    def count(cfg: Config, layers: int) -> int:
        pattern = opt(cfg, key, limits.LAYERS) or default
        return layers - layers // pattern

    return count


def from_max_window_layers(default: int) -> SlidingPattern:
    """Config classes that slide ``"sliding_attention" if ... i >= max_window_layers``: the
    layers from max_window_layers on slide, ``default`` where config.json does not say."""

    def count(cfg: Config, layers: int) -> int:
        first = cfg.get("max_window_layers", default)
        if isinstance(first, bool) or not isinstance(first, int) or first < 0:
            raise wrong("max_window_layers", "a non-negative integer", first)
        return max(0, layers - first)

    return count


# Qwen2Config and Qwen3Config (transformers 5.24 configuration_qwen2.py,
# configuration_qwen3.py __post_init__; max_window_layers defaults to 28)
above_max_window_layers = from_max_window_layers(28)


def on_nope_layers(cfg: Config, layers: int) -> int:
    """SmolLM3Config: the window slides on the layers without the rotary
    (``no_rope_layers[i]`` 0; by default every ``no_rope_layer_interval``-th, 4:
    transformers 5.24 configuration_smollm3.py __post_init__)."""
    given = cfg.get("no_rope_layers")
    if isinstance(given, list) and len(given) == layers:
        return sum(1 for has_rope in given if has_rope == 0)
    if given is not None:
        raise wrong("no_rope_layers", f"a list of {layers} 0s and 1s", given)
    return layers // (opt(cfg, "no_rope_layer_interval", limits.LAYERS) or 4)


def sliding_layer_count(cfg: Config, layers: int, pattern: SlidingPattern) -> int:
    """The layers whose cache transformers 5 keeps at the window
    (DynamicSlidingWindowLayer): those config.json's ``layer_types`` names
    "sliding_attention", else the config class's default ``pattern``."""
    types = cfg.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != layers:
            raise wrong("layer_types", f"a list of the {layers} layers' types", types)
        return sum(1 for kind in types if kind == "sliding_attention")
    return pattern(cfg, layers)


def read_llama_like(cfg: Config, family: str, keys: LlamaKeys) -> Config:
    """An Architecture's fields from a Llama-style config.json."""
    heads = need(cfg, "num_attention_heads")
    attention_bias = flag(cfg, "attention_bias", False)
    qkv_bias, out_bias = keys.fixed_bias or (attention_bias, attention_bias)
    out: Config = {
        "family": family,
        "vocab_size": need(cfg, "vocab_size"),
        "hidden_size": need(cfg, "hidden_size"),
        "num_layers": need(cfg, "num_hidden_layers", bound=limits.LAYERS),
        "num_heads": heads,
        "num_kv_heads": opt(cfg, "num_key_value_heads") or heads,
        "intermediate_size": need(cfg, "intermediate_size"),
        # a family's configs name it either way (Gemma's hidden_act, hidden_activation)
        "activation": activation(word(cfg, "hidden_act") or word(cfg, "hidden_activation")),
        "tie_embeddings": flag(cfg, "tie_word_embeddings", keys.tie),
        "max_position_embeddings": opt(cfg, "max_position_embeddings", limits.TOKENS) or 4096,
        "attention_qkv_bias": qkv_bias,
        "attention_out_bias": out_bias,
        "mlp_bias": flag(cfg, "mlp_bias", False),
    }
    head_dim = opt(cfg, "head_dim")
    if head_dim:
        out["head_dim"] = head_dim
    no_window = type(cfg.get("sliding_window")) is int and cfg["sliding_window"] == 0
    window = None if no_window else opt(cfg, "sliding_window", limits.TOKENS)
    # a window no layer uses is no window (transformers 5 writes layer_types, and a
    # sliding_window default beside an all-global stack)
    types = cfg.get("layer_types")
    all_global = isinstance(types, list) and types and "sliding_attention" not in types
    if flag(cfg, "use_sliding_window", True) and window and not all_global:
        out["sliding_window"] = window
    return out


def build_llama_like(arch: Architecture, keys: LlamaKeys) -> Config:
    """The kwargs of the transformers config of ``arch`` (the reverse of the reading)."""
    kw: Config = {
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.kv_heads,
        "head_dim": arch.head_size,
        "max_position_embeddings": arch.max_position_embeddings,
        "attention_dropout": 0.0,
        keys.activation: HF_ACTIVATIONS[arch.activation],
    }
    if "attention_bias" in keys.optional:
        kw["attention_bias"] = arch.attention_qkv_bias
    if "mlp_bias" in keys.optional:
        kw["mlp_bias"] = arch.mlp_bias
    if keys.window == "always" or (keys.window == "when-set" and arch.sliding_window):
        kw["sliding_window"] = arch.sliding_window
    elif keys.window == "use_sliding_window" and arch.sliding_window:
        kw.update(use_sliding_window=True, sliding_window=arch.sliding_window)
    return kw
