"""`ftmem explain`: the arithmetic behind an estimate, step by step."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from ftmem.cli.options import (
    DISTILL,
    FROM,
    GPU,
    RUN,
    RUN_NAMES,
    SPREAD,
    OptModelArg,
    with_options,
)
from ftmem.cli.root import app
from ftmem.cli.settings import with_config
from ftmem.cli.terminal import echo
from ftmem.units import UnitSystem


@app.command()
@with_options(FROM, RUN, GPU, SPREAD, DISTILL)
def explain(
    ctx: typer.Context,
    model: OptModelArg = None,
    output_format: Annotated[
        Literal["text", "markdown"], typer.Option("--format", help="Plain text, or Markdown.")
    ] = "text",
    units: Annotated[
        UnitSystem,
        typer.Option("--units", help="GB (10^9, as blog posts write it; default) or GiB."),
    ] = "GB",
    **settings: Any,
) -> None:
    """The arithmetic behind the estimate, step by step (Markdown for blog posts)."""
    from ftmem.api import estimate as run_estimate
    from ftmem.api import run_config
    from ftmem.present.explain import explain as explain_sections
    from ftmem.present.explain import render_markdown, render_text
    from ftmem.sources import resolve_model, source_notes

    model, settings, notes, _ = with_config(ctx, model, settings)
    arch = resolve_model(model)
    notes += source_notes(model)
    gpus = settings.pop("gpus")
    est = run_estimate(arch, gpus=1 if gpus is None else gpus, **settings)
    run_keys = set(RUN_NAMES)
    run = run_config(**{k: v for k, v in settings.items() if k in run_keys})
    realistic = None
    if run.accounting == "simple":
        realistic = run_estimate(
            arch, gpus=1 if gpus is None else gpus, **{**settings, "accounting": "phases"}
        )
    sections = explain_sections(arch, run, est, units, realistic)
    title = f"{arch.name}: {run.method}, {est.run.precision_regime}"
    notes = [*notes, *est.notes]
    if output_format == "markdown":
        text = render_markdown(title, sections)
        text += "".join(f"> {n}\n>\n" for n in notes)
    else:
        text = f"{title}\n\n" + render_text(sections) + "".join(f"note: {n}\n" for n in notes)
    echo(text.rstrip("\n>") + "\n", nl=False)
