"""Helpers of the family tests: a config.json read as ftmem reads it, the model
transformers builds from it on the meta device (the parameters ftmem must equal), and
ftmem's own tensors named as transformers names them."""

from __future__ import annotations

import json

import pytest

from ftmem.arch import Architecture, layout, param_path
from ftmem.sources import resolve_model


def meta_model(cfg: dict, module: str | None = None):
    """AutoModelForCausalLM built from ``cfg`` on the meta device (skipped where torch,
    transformers or its ``transformers.models.<module>`` is missing)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if module is not None:
        pytest.importorskip(f"transformers.models.{module}")
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def transformers_count(cfg: dict) -> int:
    """The parameters of AutoModelForCausalLM built from ``cfg`` on the meta device."""
    return sum(p.numel() for p in meta_model(cfg).parameters())


def ftmem_tensors(arch: Architecture) -> dict[str, int]:
    """Each tensor of ftmem's layout by the name transformers gives it, with its size."""
    lay = layout(arch)
    out = {p.name: p.numel for p in lay.outer}
    for i in range(arch.num_layers):
        out.update({param_path(arch, i, p.name): p.numel for p in lay.block if p.in_block(i)})
    return out


def read_config(tmp_path, cfg: dict):
    """ftmem's Architecture of ``cfg`` written as a model folder's config.json."""
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return resolve_model(str(tmp_path))
