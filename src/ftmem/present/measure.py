"""Rendering a measured step beside its estimate (``ftmem measure``). No arithmetic of
its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ftmem.units import format_bytes

if TYPE_CHECKING:
    from rich.console import RenderableType


def measured_table(
    title: str,
    estimated: str,
    rows: Sequence[tuple[str, int, int]],
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
