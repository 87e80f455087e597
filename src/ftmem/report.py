"""Rendering an Estimate: rich table, JSON, Markdown. No arithmetic beyond unit conversion."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ftmem.result import Estimate
from ftmem.units import UnitSystem, format_bytes, format_count

if TYPE_CHECKING:
    from rich.console import RenderableType

COMPONENTS = (
    ("weights", "Weights", "weights_bytes"),
    ("gradients", "Gradients", "gradients_bytes"),
    ("optimizer_states", "Optimizer states", "optimizer_states_bytes"),
    ("activations", "Activations (saved for backward)", "activations_bytes"),
    ("temporaries", "Temporaries at the peak", "temporaries_bytes"),
)


def to_json(est: Estimate) -> str:
    return json.dumps(est.model_dump(mode="json"), indent=2)


def _verdict(est: Estimate, units: UnitSystem) -> str:
    if est.fits is None or est.headroom_bytes is None or est.gpu is None:
        return "No GPU given: use --gpu or --gpu-memory for a verdict."
    if est.fits:
        share = est.headroom_bytes / est.gpu["memory_bytes"]
        return (
            f"FITS on {est.gpu['name']}: {format_bytes(est.headroom_bytes, units)} headroom "
            f"({share:.0%} of {format_bytes(est.gpu['memory_bytes'], units)})."
        )
    return (
        f"DOES NOT FIT on {est.gpu['name']}: short by "
        f"{format_bytes(-est.headroom_bytes, units)} "
        f"(needs {format_bytes(est.memory.total_bytes, units)}, has "
        f"{format_bytes(est.gpu['memory_bytes'], units)})."
    )


def table(est: Estimate, units: UnitSystem = "GiB") -> RenderableType:
    """The estimate as a rich renderable (import of rich kept lazy for fast start)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    m = est.memory
    run = est.run
    title = (
        f"{est.model.name}: {run['method']} · {run['precision_regime']} · {run['optimizer']} · "
        f"batch {run['batch_size']} × seq {run['seq_len']}"
        f"{' · grad-ckpt' if run['grad_ckpt'] else ''} · attn {run['attn']}"
    )
    tbl = Table(title=title, title_justify="left")
    tbl.add_column("Component")
    tbl.add_column(f"Size ({units})", justify="right")
    tbl.add_column(f"At peak ({units})", justify="right")
    tbl.add_column("Share of peak", justify="right")
    peak = m.peak_allocated_bytes or 1
    for key, label, field in COMPONENTS:
        size = getattr(m, field)
        live = getattr(m.at_peak, key)
        tbl.add_row(
            label, format_bytes(size, units), format_bytes(live, units), f"{live / peak:.1%}"
        )
    tbl.add_section()
    tbl.add_row(
        f"Peak allocated ({m.peak_phase})",
        "",
        format_bytes(m.peak_allocated_bytes, units),
        "100.0%",
    )
    tbl.add_row(
        "Runtime overhead (CUDA context + allocator)", "", format_bytes(m.overhead_bytes, units), ""
    )
    tbl.add_row(
        Text("Total", style="bold"), "", Text(format_bytes(m.total_bytes, units), style="bold"), ""
    )
    params = (
        f"Parameters: {format_count(est.model.n_params)} total "
        f"({est.model.n_params:,}), {format_count(est.model.n_trainable_params)} trainable "
        f"({est.model.n_trainable_params:,})."
    )
    verdict = _verdict(est, units)
    style = "bold green" if est.fits else "bold red" if est.fits is False else "yellow"
    parts: list[RenderableType] = [tbl, Text(params), Text(verdict, style=style)]
    parts += [Text(f"note: {n}", style="dim") for n in est.notes]
    return Group(*parts)


def markdown(est: Estimate, units: UnitSystem = "GiB") -> str:
    m = est.memory
    lines = [
        f"### {est.model.name}: {est.run['method']} ({est.run['precision_regime']})",
        "",
        f"| Component | Size ({units}) | At peak ({units}) |",
        "|---|---:|---:|",
    ]
    for key, label, field in COMPONENTS:
        lines.append(
            f"| {label} | {format_bytes(getattr(m, field), units)} | "
            f"{format_bytes(getattr(m.at_peak, key), units)} |"
        )
    lines += [
        f"| **Peak allocated** ({m.peak_phase}) | | {format_bytes(m.peak_allocated_bytes, units)} |",
        f"| Runtime overhead | | {format_bytes(m.overhead_bytes, units)} |",
        f"| **Total** | | **{format_bytes(m.total_bytes, units)}** |",
        "",
        _verdict(est, units),
    ]
    return "\n".join(lines) + "\n"
