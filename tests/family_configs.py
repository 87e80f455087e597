"""Two helpers of the family tests: a config.json read as ftmem reads it, and the
parameters transformers builds from it on the meta device (the count ftmem must equal)."""

from __future__ import annotations

import json

import pytest

from ftmem.sources import resolve_model


def transformers_count(cfg: dict) -> int:
    """The parameters of AutoModelForCausalLM built from ``cfg`` on the meta device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def read_config(tmp_path, cfg: dict):
    """ftmem's Architecture of ``cfg`` written as a model folder's config.json."""
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return resolve_model(str(tmp_path))
