"""Listings (`ftmem models`, `ftmem gpus`, `ftmem methods`): tables whose ids are never
cut, since users copy them into commands."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ftmem.units import UnitSystem, format_bytes, format_count

if TYPE_CHECKING:
    from rich.console import RenderableType


@dataclass(frozen=True)
class Column:
    header: str
    justify: Literal["left", "right"] = "left"
    wraps: bool = False
    """Prose that may wrap (a name); every other column stays whole on one line."""
    drop: int = 0
    """0: always shown; else, on a narrow terminal, the highest rank is left out first."""


EDGE = 3  # a column's padding (a space each side) and its rule; the table adds one more
WRAPPED_MIN = 12  # a wrapping column narrower than this reads one syllable a line


def listing(
    title: str, columns: list[Column], rows: Sequence[tuple[str, ...]], width: int
) -> tuple[RenderableType, int]:
    """A table for a terminal ``width`` columns wide whose ids (and numbers) are never cut
    or wrapped, since users copy them: the prose column wraps, and where even that is too
    wide, columns are left out by rank, the caption naming them. Returns the table and the
    width it takes: more than ``width`` only when the columns never left out are."""
    from rich.table import Table

    natural = [max([len(c.header), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]

    def needed(shown: list[int]) -> int:
        cells = (min(natural[i], WRAPPED_MIN) if columns[i].wraps else natural[i] for i in shown)
        return 1 + sum(EDGE + w for w in cells)

    shown = list(range(len(columns)))
    for i in sorted((i for i, c in enumerate(columns) if c.drop), key=lambda i: -columns[i].drop):
        if needed(shown) <= width:
            break
        shown.remove(i)
    left_out = [c.header for i, c in enumerate(columns) if i not in shown]
    caption = f"Left out at {width} columns: {', '.join(left_out)}." if left_out else None
    tbl = Table(title=title, caption=caption)
    for i in shown:
        c = columns[i]
        whole = not c.wraps
        tbl.add_column(
            c.header, justify=c.justify, no_wrap=whole, min_width=natural[i] if whole else None
        )
    for row in rows:
        tbl.add_row(*(row[i] for i in shown))
    return tbl, needed(shown)


Listing = tuple[str, list[Column], list[tuple[str, ...]]]
"""A listing's title, columns and rows, laid out by :func:`listing` at the terminal's width."""


def models_listing(units: UnitSystem) -> Listing:
    """The model presets with their exact parameter counts (`ftmem models`)."""
    from ftmem.arch import count_params
    from ftmem.presets import model_presets

    rows: list[tuple[str, ...]] = []
    for preset_id, arch in sorted(model_presets().items()):
        n = count_params(arch)
        rows.append(
            (
                preset_id,
                arch.name,
                arch.family,
                format_count(n),
                f"{n:,}",
                format_bytes(2 * n, units),
            )
        )
    columns = [
        Column("id"),
        Column("name", wraps=True, drop=4),
        Column("family", drop=5),
        Column("parameters", "right", drop=2),
        Column("exact count", "right"),
        Column("bf16 weights", "right", drop=3),
    ]
    return "Model presets", columns, rows


def gpus_listing(units: UnitSystem) -> Listing:
    """The GPU presets with the memory each reports (`ftmem gpus`)."""
    from ftmem.presets import gpu_presets

    rows: list[tuple[str, ...]] = [
        (
            gpu.id,
            gpu.name,
            format_bytes(gpu.memory_bytes, units),
            f"{gpu.memory_bytes:,}",
            "yes" if gpu.bf16 else "no",
        )
        for gpu in sorted(gpu_presets().values(), key=lambda g: g.memory_bytes)
    ]
    columns = [
        Column("id"),
        Column("name", wraps=True, drop=3),
        Column("memory", "right"),
        Column("bytes", "right", drop=2),
        Column("bf16", drop=4),
    ]
    return "GPU presets (memory as the device reports it)", columns, rows


def methods_table() -> RenderableType:
    """The finetuning methods with what each trains and its source (`ftmem methods`)."""
    from rich.table import Table

    from ftmem.methods import METHOD_CATALOG

    tbl = Table(title="Finetuning methods (--method)")
    for col in ("method", "what trains", "source"):
        tbl.add_column(col)
    for name, (what, source) in METHOD_CATALOG.items():
        tbl.add_row(name, what, source)
    return tbl
