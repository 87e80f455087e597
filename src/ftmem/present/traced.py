"""Rendering a traced step (``ftmem estimate --traced``). No arithmetic of its own."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ftmem.units import UnitSystem, format_bytes

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ftmem.measure.traced import Traced


def traced_rows(t: Traced) -> list[tuple[str, int]]:
    """(what, bytes): the traced step's components and peaks; on a GPU its three."""
    m = t.measured
    rows = [
        ("weights", m.weights_bytes),
        ("gradients", m.gradients_bytes),
        ("optimizer_states", m.optimizer_states_bytes),
        ("activations", m.activations_bytes),
        ("peak_tensors", m.peak_allocated_bytes),
    ]
    gpu = (
        ("peak_allocated", t.peak_allocated_bytes),
        ("peak_reserved", t.peak_reserved_bytes),
        ("device", t.device_bytes),
    )
    return rows + [(k, v) for k, v in gpu if v is not None]


def _title(t: Traced) -> str:
    run = t.run
    return (
        f"{t.name} ({t.model_type}): {run.method} · {run.precision} · batch {run.batch_size} × "
        f"{run.seq_len} · traced"
    )


def traced_table(t: Traced, units: UnitSystem) -> RenderableType:
    """The traced step as a table, its notes and its time below."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    m = t.measured
    tbl = Table(title=_title(t))
    tbl.add_column("Component")
    tbl.add_column("Traced", justify="right")
    tbl.add_row("parameters", f"{m.n_params:,} ({m.n_trainable_params:,} trainable)")
    labels = {
        "peak_tensors": f"peak of tensors ({m.peak_phase})",
        "peak_allocated": "peak allocated (CUDA allocator)",
        "peak_reserved": "peak reserved",
        "device": "device (nvidia-smi)",
    }
    for key, value in traced_rows(t):
        tbl.add_row(labels.get(key, key.replace("_", " ")), format_bytes(value, units))
    if t.fits is not None:
        tbl.add_row("fits", "yes" if t.fits else "NO")
    lines = [
        f"Traced in {t.seconds:.1f} s (transformers built the model; one step on fake tensors)."
    ]
    if t.adapted:
        lines.append(f"LoRA adapted: {', '.join(t.adapted)}.")
    lines += [f"Note: {n}" for n in t.notes]
    return Group(tbl, *(Text(line) for line in lines))


def traced_json(t: Traced) -> str:
    """The traced step for programs: bytes, the peak's phase, timing and notes."""
    m = t.measured
    data: dict[str, object] = {
        "traced": True,
        "model": {"name": t.name, "model_type": t.model_type},
        "run": t.run.model_dump(mode="json"),
        "parameters": m.n_params,
        "trainable_parameters": m.n_trainable_params,
        **{f"{k}_bytes": v for k, v in traced_rows(t)},
        "peak_phase": m.peak_phase,
        "phase_peaks_bytes": m.phase_peaks,
        "fits": t.fits,
        "lora_targets": list(t.adapted),
        "seconds": round(t.seconds, 2),
        "torch": m.torch_version,
        "transformers": m.transformers_version,
        "notes": list(t.notes),
    }
    return json.dumps(data, indent=2)
