"""Rendering a merge estimate (``ftmem merge``): JSON, or a few lines of text. No
arithmetic of its own."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ftmem.units import UnitSystem, format_bytes, format_count

if TYPE_CHECKING:
    from ftmem.arch import Architecture
    from ftmem.merge import MergeConfig, MergeEstimate


def merge_json(arch: Architecture, cfg: MergeConfig, est: MergeEstimate) -> str:
    data = {
        "model": arch.name,
        "kind": cfg.kind,
        "result_blocks": est.result.num_layers,
        "result_params": est.result_params,
        "result_bytes": est.result_bytes,
        "inputs_bytes": est.inputs_bytes,
        "working_bytes": est.working_bytes,
        "peak_bytes": est.peak_bytes,
        "notes": list(est.notes),
    }
    return json.dumps(data, indent=2)


def merge_lines(
    arch: Architecture, cfg: MergeConfig, est: MergeEstimate, units: UnitSystem
) -> list[str]:
    """The merge, its result and the memory to compute it, one line each."""
    layers = cfg.layers
    what = f"{cfg.models} × {arch.name}" if cfg.kind == "weighted" else f"{arch.name} [{layers}]"
    how = "streamed" if cfg.streamed else "in memory"
    return [
        f"Merge ({cfg.kind}): {what}, {cfg.dtype}",
        f"  result: {est.result.num_layers} blocks, {format_count(est.result_params)} "
        f"parameters ({est.result_params:,}), {format_bytes(est.result_bytes, units)}",
        f"  inputs: {format_bytes(est.inputs_bytes, units)}",
        f"  memory to merge ({how}): {format_bytes(est.peak_bytes, units)}",
        *(f"  note: {note}" for note in est.notes),
    ]
