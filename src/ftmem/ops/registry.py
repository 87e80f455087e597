"""One registration per op, the way ``torch.utils.flop_counter`` registers one formula
per aten op (``register_flop_formula`` raises ``RuntimeError("duplicate registrations
for ...")``, torch 2.13): an op's memory rules live in one class, and a second class
claiming the same op is a mistake caught at import, not two rules silently disagreeing.

The estimator's hot paths call the op classes directly (imported once); the registry is
for looking an op up by name (docs, explanations, tests).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar

_OPS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register("norm")`` files the class under its op's name."""

    def add(cls: T) -> T:
        if name in _OPS:
            raise RuntimeError(
                f"op {name!r} is registered twice: {_OPS[name].__qualname__} and {cls.__qualname__}"
            )
        _OPS[name] = cls
        return cls

    return add


# every module that registers an op: the registry loads them before a lookup
MODULES = (
    "ftmem.ops.attention",
    "ftmem.ops.biased_attention",
    "ftmem.ops.dropout",
    "ftmem.ops.embedding",
    "ftmem.ops.gated_deltanet",
    "ftmem.ops.latent_attention",
    "ftmem.ops.linear",
    "ftmem.ops.loss",
    "ftmem.ops.mlp",
    "ftmem.ops.moe",
    "ftmem.ops.norm",
    "ftmem.ops.output_gate",
    "ftmem.ops.per_layer_input",
    "ftmem.ops.router_aux",
    "ftmem.adapters.adalora",
    "ftmem.adapters.bottleneck",
    "ftmem.adapters.dora",
    "ftmem.adapters.ia3",
    "ftmem.adapters.llama_adapter",
    "ftmem.adapters.adaption_prompt",
    "ftmem.adapters.lycoris",
    "ftmem.adapters.vera",
    "ftmem.adapters.hira",
    "ftmem.adapters.peanut",
    "ftmem.adapters.osf",
    "ftmem.adapters.psoft",
    "ftmem.adapters.hra",
    "ftmem.adapters.beft",
    "ftmem.adapters.glora",
    "ftmem.adapters.randlora",
    "ftmem.adapters.vblora",
    "ftmem.adapters.tinylora",
    "ftmem.adapters.adamss",
    "ftmem.adapters.unilora",
    "ftmem.adapters.lily",
    "ftmem.adapters.miss",
    "ftmem.adapters.shira",
    "ftmem.adapters.supertuning",
    "ftmem.adapters.c3a",
    "ftmem.adapters.road",
    "ftmem.adapters.boft",
    "ftmem.adapters.oft",
    "ftmem.adapters.lora",
    "ftmem.adapters.head_lora",
    "ftmem.adapters.prompt",
)


def _load() -> None:
    for module in MODULES:
        importlib.import_module(module)


def get(name: str) -> type:
    """The class registered for this op (KeyError when there is none)."""
    _load()
    return _OPS[name]


def names() -> tuple[str, ...]:
    """Every registered op, sorted."""
    _load()
    return tuple(sorted(_OPS))
