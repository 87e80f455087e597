"""Rendering the searches (plan, max, compare) and budget checks. No arithmetic of its own."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ftmem.plan import LEVER_COST, Plan
from ftmem.result import Estimate
from ftmem.search import Largest
from ftmem.units import UnitSystem, format_bytes

if TYPE_CHECKING:
    from rich.console import JustifyMethod, RenderableType

    from ftmem.budget import RunResult
    from ftmem.serve import ServeEstimate


def _gpu_name(est: Estimate) -> str:
    return est.gpu["name"] if est.gpu else "?"


def _headroom(est: Estimate, units: UnitSystem) -> str:
    if est.headroom_bytes is None:
        return ""
    sign = "" if est.headroom_bytes >= 0 else "-"
    return sign + format_bytes(abs(est.headroom_bytes), units)


def plan_summary(plan: Plan, units: UnitSystem) -> str:
    b = plan.baseline
    need = format_bytes(b.memory.total_bytes, units)
    if b.fits:
        return f"As given, the run fits {_gpu_name(b)}: {need} ({_headroom(b, units)} headroom)."
    return f"As given, the run needs {need} on {_gpu_name(b)}: short by {_headroom(b, units)[1:]}."


def plan_table(plan: Plan, units: UnitSystem, closest: Estimate | None = None) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[RenderableType] = [Text(plan_summary(plan, units))]
    if not plan.fitting:
        parts.append(Text(no_fit_line(plan, closest, units), style="bold red"))
        return Group(*parts)
    tbl = Table(
        title=f"Ways to fit {plan.baseline.model.name} on {_gpu_name(plan.baseline)}, "
        "least invasive first",
        title_justify="left",
    )
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("#", "right"),
        ("Change", "left"),
        ("Total", "right"),
    )
    for col, justify in columns:
        tbl.add_column(col, justify=justify)
    tbl.add_column("Headroom", justify="right")
    used: dict[str, str] = {}
    for i, cand in enumerate(plan.fitting, 1):
        for c in cand.changes:
            used.setdefault(c.lever, LEVER_COST[c.lever])
        what = " + ".join(c.what for c in cand.changes) or "nothing: it fits as given"
        tbl.add_row(
            str(i),
            what,
            format_bytes(cand.estimate.memory.total_bytes, units),
            _headroom(cand.estimate, units),
        )
    parts.append(tbl)
    if used:
        parts.append(Text("What each change costs (rules of thumb):"))
        parts += [Text(f"  {lever}: {cost}") for lever, cost in used.items()]
    parts.append(
        Text(
            f"{plan.evaluated} of {plan.searched} combinations evaluated "
            "(one that only adds to, or pushes further, a way that fits is skipped).",
            style="dim",
        )
    )
    return Group(*parts)


def no_fit_line(plan: Plan, closest: Estimate | None, units: UnitSystem) -> str:
    line = f"Nothing in the plan fits {_gpu_name(plan.baseline)}"
    if closest is not None:
        line += (
            f": with every lever at once it still needs {format_bytes(closest.memory.total_bytes, units)} "
            "per GPU"
        )
    return line + ". More GPUs than one node: `ftmem estimate ... --strategy zero3 --fewest-gpus`."


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "baseline": plan.baseline.model_dump(mode="json"),
        "evaluated": plan.evaluated,
        "searched": plan.searched,
        "fitting": [
            {
                "changes": [
                    {"lever": c.lever, "what": c.what, "settings": dict(c.updates)}
                    for c in cand.changes
                ],
                "penalty": cand.penalty,
                "total_bytes": cand.estimate.memory.total_bytes,
                "headroom_bytes": cand.estimate.headroom_bytes,
                "estimate": cand.estimate.model_dump(mode="json"),
            }
            for cand in plan.fitting
        ],
    }


def largest_json(what: str, result: Largest) -> str:
    """`ftmem max --format json`: the value found, and the estimates either side of it."""
    data = {
        "for": what,
        "largest": result.value,
        "evaluations": result.evaluations,
        "fits_at": result.fits_at.model_dump(mode="json") if result.fits_at else None,
        "fails_at_next": result.fails_at.model_dump(mode="json") if result.fails_at else None,
    }
    return json.dumps(data, indent=2)


def compare_json(cells: dict[tuple[str, str], Estimate | str]) -> str:
    """`ftmem compare --format json`: one record per (method, GPU); n/a cells as nulls."""
    data = [
        {
            "method": m,
            "gpu": g,
            "total_bytes": None if isinstance(c, str) else c.memory.total_bytes,
            "fits": None if isinstance(c, str) else c.fits,
        }
        for (m, g), c in cells.items()
    ]
    return json.dumps(data, indent=2)


def methods_json(rows: dict[str, Estimate | str], served: ServeEstimate | None) -> str:
    """`ftmem compare-methods --format json`: each method's estimate (or why it cannot
    run), the served model first."""
    data = [
        {"method": m, "error": r}
        if isinstance(r, str)
        else {"method": m, **json.loads(r.model_dump_json())}
        for m, r in rows.items()
    ]
    if served is not None:
        data.insert(0, {"method": "inference", **json.loads(served.model_dump_json())})
    return json.dumps(data, indent=2)


def largest_line(what: str, result: Largest, units: UnitSystem) -> str:
    if result.value is None:
        assert result.fails_at is not None
        est = result.fails_at
        return (
            f"Nothing fits {_gpu_name(est)}: even the smallest {what} needs "
            f"{format_bytes(est.memory.total_bytes, units)}."
        )
    assert result.fits_at is not None
    line = (
        f"Largest {what} that fits {_gpu_name(result.fits_at)}: {result.value:,} "
        f"({format_bytes(result.fits_at.memory.total_bytes, units)}, "
        f"{_headroom(result.fits_at, units)} headroom)"
    )
    if result.fails_at is None:
        return line + "; that is the upper bound searched."
    return (
        line + f"; at {result.value + 1:,} it needs "
        f"{format_bytes(result.fails_at.memory.total_bytes, units)}."
    )


def compare_table(
    model: str,
    cells: dict[tuple[str, str], Estimate | str],
    gpus: list[str],
    methods: list[str],
    units: UnitSystem,
) -> RenderableType:
    """Rows: methods; columns: GPUs; each cell the per-GPU total and the verdict."""
    from rich.table import Table
    from rich.text import Text

    tbl = Table(title=f"{model}: total per GPU and verdict", title_justify="left")
    tbl.add_column("method")
    for g in gpus:
        tbl.add_column(g, justify="right")
    for m in methods:
        row: list[Any] = [m]
        for g in gpus:
            cell = cells[(m, g)]
            if isinstance(cell, str):
                row.append(Text(cell, style="yellow"))
                continue
            mark, style = ("fits", "green") if cell.fits else ("no", "red")
            row.append(Text(f"{format_bytes(cell.memory.total_bytes, units)} {mark}", style=style))
        tbl.add_row(*row)
    return tbl


def methods_table(
    model: str,
    rows: dict[str, Estimate | str],
    gpu: str | None,
    units: UnitSystem,
    served: ServeEstimate | None = None,
    note: str = "",
) -> RenderableType:
    """One row per method: what trains, each component and the peak (one unit for the
    whole table, so that it fits a terminal), the total and the verdict. ``served`` adds
    a first row: the same model served (its KV cache in the activations column); ``note``
    goes under the table."""
    from rich.table import Table
    from rich.text import Text

    from ftmem.units import format_count, in_unit

    title = f"{model}: the same run under each method" + (f" on {gpu}" if gpu else "")
    caption = f"sizes in {units}"
    if note:
        caption += f"; {note}"
    tbl = Table(title=title, title_justify="left", caption=caption)
    cols = ("method", "trainable", "weights", "grads", "optim", "activ", "peak", "total")
    for col in (*cols, *(("fits",) if gpu else ())):
        tbl.add_column(col, justify="left" if col in ("method", "fits") else "right")
    if served is not None:
        sizes = (
            served.weights_bytes + served.adapters_bytes,
            0,
            0,
            served.kv_cache_bytes,
            served.peak_allocated_bytes,
            served.total_bytes,
        )
        cells: list[Any] = ["inference", "0", *(f"{in_unit(b, units):.2f}" for b in sizes)]
        if gpu:
            cells.append(Text("yes", style="green") if served.fits else Text("no", style="red"))
        tbl.add_row(*cells, end_section=True)
    for method, est in rows.items():
        if isinstance(est, str):
            tbl.add_row(method, Text(est, style="yellow"))
            continue
        m = est.memory
        sizes = (
            m.weights_bytes,
            m.gradients_bytes,
            m.optimizer_states_bytes,
            m.activations_bytes,
            m.peak_allocated_bytes,
            m.total_bytes,
        )
        cells = [
            method,
            format_count(est.model.n_trainable_params),
            *(f"{in_unit(b, units):.2f}" for b in sizes),
        ]
        if gpu:
            cells.append(Text("yes", style="green") if est.fits else Text("no", style="red"))
        tbl.add_row(*cells)
    return tbl


def budget_table(results: list[RunResult], units: UnitSystem) -> RenderableType:
    from rich.table import Table
    from rich.text import Text

    tbl = Table(title="Memory budgets", title_justify="left")
    for col in ("run", "model", "GPU", "total per GPU", "budget", "headroom", "result"):
        right = col in ("total per GPU", "headroom")
        tbl.add_column(col, justify="right" if right else "left")
    # run names and model ids are copied into commands: whole, never cut or wrapped
    copied = {"run": [r.run.name for r in results], "model": [r.run.model for r in results]}
    for column in tbl.columns:
        if column.header in copied:
            column.no_wrap = True
            column.min_width = max(len(str(column.header)), *map(len, copied[str(column.header)]))
    for r in results:
        est = r.estimate
        assert est is not None
        budget = []
        if r.run.max_total:
            budget.append(f"≤ {r.run.max_total}")
        if r.run.min_headroom:
            budget.append(f"headroom ≥ {r.run.min_headroom}")
        verdict = (
            Text("PASS", style="bold green")
            if r.passed
            else Text("FAIL: " + "; ".join(r.problems), style="bold red")
        )
        tbl.add_row(
            r.run.name,
            r.run.model,
            _gpu_name(est) if est.gpu else "",
            format_bytes(est.memory.total_bytes, units),
            ", ".join(budget) or ("fits the GPU" if est.gpu else ""),
            _headroom(est, units),
            verdict,
        )
    return tbl
