"""Pictures (optional extra ``plot``: matplotlib): the plan's candidates as stacked bars,
memory against a searched value with the GPU's limit. Figures are returned so tests can
read their axes; :func:`save` writes PNG or SVG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmem.errors import FtmemError
from ftmem.plan import Plan
from ftmem.result import Estimate
from ftmem.search import Largest

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GIB = 2**30
SWEEP_POINTS = 40
PARTS = (
    ("weights", "Weights"),
    ("gradients", "Gradients"),
    ("optimizer_states", "Optimizer states"),
    ("activations", "Activations"),
    ("temporaries", "Temporaries"),
    ("communication", "Gathered weights, buckets"),
    ("workspaces", "BLAS workspaces"),
    ("block_rounding", "Allocator block rounding"),
)


def _figure() -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise FtmemError('--plot needs matplotlib: pip install "ftmem[plot]".') from None
    return Figure(figsize=(9, 5), layout="constrained")


def _limit(ax: Any, est: Estimate) -> float | None:
    if est.gpu is None:
        return None
    limit = est.gpu["memory_bytes"] / GIB
    ax.axhline(limit, color="black", linestyle="--", linewidth=1)
    ax.annotate(
        f"{est.gpu['name']}: {limit:.1f} GiB",
        (0, limit),
        xycoords=("axes fraction", "data"),
        xytext=(4, 4),
        textcoords="offset points",
    )
    return limit


def plan_figure(plan: Plan) -> Figure:
    """One stacked bar per candidate (the run as given first): the at-peak parts and
    the runtime overhead, in GiB, with the GPU's memory drawn."""
    fig = _figure()
    ax = fig.add_subplot()
    rows = [("as given", plan.baseline)] + [
        (f"#{i}", c.estimate) for i, c in enumerate(plan.fitting, 1)
    ]
    labels = [name for name, _ in rows]
    bottom = [0.0] * len(rows)
    for key, legend in (*PARTS, ("overhead", "Beyond allocated (cache, context)")):
        values = [
            (e.memory.overhead_bytes if key == "overhead" else getattr(e.memory.at_peak, key)) / GIB
            for _, e in rows
        ]
        if any(values):
            ax.bar(labels, values, bottom=bottom, label=legend)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    _limit(ax, plan.baseline)
    ax.set_xlabel("candidate (see the plan table)")
    ax.set_ylabel("memory per GPU at the peak (GiB)")
    ax.set_title(f"{plan.baseline.model.name}: ways to fit")
    ax.legend(loc="upper right", fontsize="small")
    return fig


def sweep_points(result: Largest, highest: int) -> list[int]:
    """Values to draw: from 1 to about twice the largest that fits, within the bound."""
    top = min(highest, max(2 * (result.value or 1), 8))
    step = max(1, top // SWEEP_POINTS)
    points = set(range(1, top + 1, step)) | {top}
    if result.value is not None:
        points |= {result.value, min(result.value + 1, highest)}
    return sorted(points)


def sweep_figure(
    estimate_at: Callable[[int], Estimate], label: str, result: Largest, highest: int
) -> Figure:
    """Total memory per GPU against the searched value, the GPU's limit and the last
    value that fits marked."""
    fig = _figure()
    ax = fig.add_subplot()
    xs = sweep_points(result, highest)
    ests = [estimate_at(x) for x in xs]
    ax.plot(xs, [e.memory.total_bytes / GIB for e in ests], marker=".", label="total per GPU")
    ax.plot(
        xs,
        [e.memory.peak_allocated_bytes / GIB for e in ests],
        linestyle=":",
        label="peak allocated",
    )
    _limit(ax, ests[0])
    if result.value is not None and result.fits_at is not None:
        y = result.fits_at.memory.total_bytes / GIB
        ax.axvline(result.value, color="green", linewidth=1)
        ax.plot([result.value], [y], marker="o", color="green")
        ax.annotate(
            f"largest that fits: {result.value:,}",
            (result.value, y),
            xytext=(6, -14),
            textcoords="offset points",
        )
    ax.set_xlabel(label)
    ax.set_ylabel("memory per GPU (GiB)")
    ax.set_title(f"{ests[0].model.name}: memory against {label}")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def check_plot_path(path: str) -> None:
    """--plot's file, refused before anything is estimated: PNG or SVG, a real path."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".png", ".svg"):
        raise FtmemError(f"--plot writes .png or .svg files, not {suffix or 'no extension'}.")
    if "\0" in path:  # possible through main([...]), never from a shell
        raise FtmemError(f"cannot write {path!r}: a path cannot hold a NUL byte.")


def save(fig: Figure, path: str) -> None:
    check_plot_path(path)
    suffix = Path(path).suffix.lower()
    try:
        fig.savefig(path, format=suffix[1:])
    except OSError as exc:
        raise FtmemError(f"cannot write {path}: {exc.strerror}.") from None
