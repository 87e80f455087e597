"""Rendering a measured step beside its estimate (``ftmem measure``). No arithmetic of
its own."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ftmem.units import format_bytes

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ftmem.measure import Measurement
    from ftmem.result import Estimate, Memory

Row = tuple[str, int, int]
"""A component, its estimated bytes and its measured bytes."""


def measured_rows(m: Memory, got: Measurement) -> list[Row]:
    """The components one device measures, beside the estimate's; on CUDA also the
    reserved peak and the device memory in use (the estimate's three numbers)."""
    rows = [
        ("weights", m.weights_bytes, got.weights_bytes),
        ("gradients", m.gradients_bytes, got.gradients_bytes),
        ("optimizer_states", m.optimizer_states_bytes, got.optimizer_states_bytes),
        ("activations", m.activations_bytes, got.activations_bytes),
        ("peak_allocated", m.peak_allocated_bytes, got.peak_allocated_bytes),
    ]
    if got.peak_reserved_bytes is not None:
        rows.append(("peak_reserved", m.peak_reserved_bytes, got.peak_reserved_bytes))
    if got.device_bytes is not None:
        rows.append(("device", m.device_bytes, got.device_bytes))
    return rows


def measured_json(est: Estimate, got: Measurement, fake: bool) -> str:
    """The estimate's JSON with a ``measured`` part: what was measured, and with what."""
    data = est.model_dump(mode="json")
    data["measured"] = {f"{k}_bytes": g for k, _, g in measured_rows(est.memory, got)}
    data["measured"].update(
        fake=fake,
        notes=list(got.notes),
        peak_phase=got.peak_phase,
        device=got.device,
        torch=got.torch_version,
        transformers=got.transformers_version,
        peft=got.peft_version,
    )
    return json.dumps(data, indent=2)


def measured_table(
    title: str,
    estimated: str,
    rows: Sequence[Row],
    phases: tuple[str, str] | None = None,
) -> RenderableType:
    """(component, estimated bytes, measured bytes) rows with the estimate's relative
    error, in GiB; ``estimated`` heads the estimate's column; ``phases`` (estimated,
    measured) adds the phase of each peak."""
    from rich.table import Table

    tbl = Table(title=title)
    for col in ("Component", estimated, "Measured", "Error"):
        tbl.add_column(col, justify="left" if col == "Component" else "right")
    for key, e, g in rows:
        err = f"{(e - g) / g:+.1%}" if g else ("exact" if e == g else "n/a")
        tbl.add_row(key.replace("_", " "), format_bytes(e, "GiB"), format_bytes(g, "GiB"), err)
    if phases is not None:
        tbl.add_row("peak phase", *phases, "")
    return tbl
