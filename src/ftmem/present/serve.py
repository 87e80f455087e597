"""Rendering a serving estimate (``ftmem serve``). No arithmetic of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem.units import UnitSystem, format_bytes

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ftmem.serve import ServeEstimate


def serving_table(name: str, est: ServeEstimate, units: UnitSystem) -> RenderableType:
    """The components of the serving memory of model ``name``, then peak, overhead, total."""
    from rich.table import Table

    c = est.config
    tbl = Table(
        title=f"{name} serving: {c.weights} weights · KV {c.kv_dtype} · "
        f"{c.sequences} × {c.context:,} tokens",
        title_justify="left",
    )
    tbl.add_column("Component")
    tbl.add_column(f"Size ({units})", justify="right")
    rows = [
        ("Weights", est.weights_bytes),
        (f"KV cache ({format_bytes(est.kv_bytes_per_token, units)} per token)", est.kv_cache_bytes),
        ("Resident LoRA adapters", est.adapters_bytes),
        ("Prefill transients and logits", est.prefill_bytes),
    ]
    for label, value in rows:
        tbl.add_row(label, format_bytes(value, units))
    tbl.add_section()
    tbl.add_row("Peak allocated", format_bytes(est.peak_allocated_bytes, units))
    tbl.add_row("Runtime overhead", format_bytes(est.overhead_bytes, units))
    tbl.add_row("Total", format_bytes(est.total_bytes, units))
    return tbl


def serving_verdict(est: ServeEstimate, units: UnitSystem) -> str | None:
    """Whether it fits the GPU, by how much; None without a GPU."""
    if est.gpu is None:
        return None
    verdict = "FITS" if est.fits else "DOES NOT FIT"
    return (
        f"{verdict} on {est.gpu['name']}: {format_bytes(abs(est.headroom_bytes or 0), units)} "
        f"{'headroom' if est.fits else 'short'}."
    )
