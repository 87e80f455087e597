"""Llama's module names and config map in transformers, which most families copy."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ftmem.errors import ConfigError
from ftmem.families import ConfigMap, ModuleNames
from ftmem.families._config import (
    Config,
    LlamaKeys,
    SlidingPattern,
    build_llama_like,
    flag,
    read_llama_like,
    sliding_layer_count,
)

if TYPE_CHECKING:
    from ftmem.arch import Architecture

LLAMA_NAMES = ModuleNames(
    blocks="model.layers",
    attention={
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
    },
    mlp={"gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"},
    norms={2: ("input_layernorm", "post_attention_layernorm")},
    embedding="model.embed_tokens",
    final_norm="model.norm",
)


def llama_map(
    family: str,
    keys: LlamaKeys,
    read_extra: Callable[[Config, Config], None] | None = None,
    build_extra: Callable[[Architecture, Config], None] | None = None,
) -> ConfigMap:
    """The key map of a Llama-style config; ``read_extra``/``build_extra`` add the
    family's own keys to what is read (cfg, fields) or built (arch, kwargs)."""

    def read(cfg: Config) -> Config:
        out = read_llama_like(cfg, family, keys)
        if read_extra:
            read_extra(cfg, out)
        # after the family's own keys, which may add the window (gpt-oss) or drop it
        if keys.sliding and out.get("sliding_window"):
            out["sliding_layers"] = sliding_layer_count(cfg, out["num_layers"], keys.sliding)
        return out

    def build(arch: Architecture) -> Config:
        kw = build_llama_like(arch, keys)
        if build_extra:
            build_extra(arch, kw)
        return kw

    return ConfigMap(read, build)


def window_off_by_default(cfg: Config, out: Config) -> None:
    """For config classes whose ``use_sliding_window`` defaults to false (Qwen3,
    SmolLM3), unlike Qwen2's: a window given without the flag is not used."""
    if not flag(cfg, "use_sliding_window", False):
        out.pop("sliding_window", None)


def sliding_mask_always(
    cfg: Config, out: Config, default_window: int, pattern: SlidingPattern, model: str
) -> None:
    """For models whose forward builds the sliding-window mask whatever the layer types
    (transformers 5.25 Olmo3Model.forward l.405-419, MinistralModel.forward l.375-389:
    ``create_sliding_window_causal_mask`` beside the causal one): the config class's
    window where config.json leaves the key out, and a refusal of stacks without sliding
    layers, where that mask raises (no window) or is built for no layer to read."""
    if "sliding_window" not in cfg:  # the config class's default, not "no window"
        out["sliding_window"] = default_window
    if not out.get("sliding_window") or not sliding_layer_count(cfg, out["num_layers"], pattern):
        raise ConfigError(
            f"{model} configs without sliding layers (sliding_window null, or no "
            "'sliding_attention' in layer_types) are not modelled."
        )
