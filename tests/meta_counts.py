"""Parameter counts of the image-text models transformers builds from a config.json on
the meta device (its classes fill the keys the config leaves out): the truth the
families' counts are checked against."""

from __future__ import annotations

import pytest


def image_text_params(cfg: dict) -> list[tuple[str, int]]:
    """(name, elements) of each parameter of AutoModelForImageTextToText built from ``cfg``."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    kwargs = {k: v for k, v in cfg.items() if k != "model_type"}
    config = transformers.CONFIG_MAPPING[cfg["model_type"]](**kwargs)
    with torch.device("meta"):
        model = transformers.AutoModelForImageTextToText.from_config(config)
    return [(name, p.numel()) for name, p in model.named_parameters()]


def counted(params: list[tuple[str, int]], *parts: str) -> int:
    """The elements of the parameters whose name holds one of ``parts`` (all: none given)."""
    return sum(n for name, n in params if not parts or any(part in name for part in parts))
