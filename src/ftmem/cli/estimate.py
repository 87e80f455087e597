"""`ftmem estimate`: one training step's memory, whether it fits, on the fewest GPUs
that do; or the engine config for it."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import typer

from ftmem.cli.errors import EXIT_DOES_NOT_FIT
from ftmem.cli.estimating import estimate_and_print
from ftmem.cli.options import (
    DISTILL,
    FROM,
    GPU,
    MULTI,
    RUN,
    SPREAD,
    Format,
    OptModelArg,
    Quiet,
    Units,
    with_options,
)
from ftmem.cli.output import console
from ftmem.cli.root import app
from ftmem.cli.settings import with_config
from ftmem.cli.terminal import echo
from ftmem.errors import FtmemError
from ftmem.units import UnitSystem

Emitter = Literal["deepspeed", "accelerate", "fsdp", "colossalai"]
"""The engine configs of :mod:`ftmem.present.emit` (its EMITTERS; not imported here,
where `ftmem estimate` without --emit would pay for it)."""

if TYPE_CHECKING:
    pass


@app.command()
@with_options(FROM, RUN, GPU, SPREAD, DISTILL)
def estimate(
    ctx: typer.Context,
    model: OptModelArg = None,
    fewest_gpus: Annotated[
        bool,
        typer.Option(
            "--fewest-gpus",
            help="Search the smallest GPU count that fits --gpu, filling nodes of --gpus "
            "(default 8).",
            rich_help_panel=MULTI,
        ),
    ] = False,
    emit: Annotated[
        Optional[Emitter],  # noqa: UP045 - typer needs Optional spelled out on Python 3.10
        typer.Option(
            help="Print the engine config for this plan instead of the table: deepspeed (JSON), "
            "accelerate (YAML) or fsdp (Accelerate YAML).",
            rich_help_panel=MULTI,
        ),
    ] = None,
    emit_to: Annotated[
        str | None,
        typer.Option(
            help="Write the --emit config to this file and print the table.", rich_help_panel=MULTI
        ),
    ] = None,
    output_format: Format = "table",
    units: Units = "GiB",
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when it does not fit (for CI).")
    ] = False,
    quiet: Quiet = False,
    traced: Annotated[
        bool,
        typer.Option(
            "--traced",
            help="For a model ftmem does not model: transformers builds it from its "
            "config.json and one step runs on fake tensors at full size, replayed through "
            'the CUDA allocator (one GPU; needs pip install "ftmem[measure]").',
        ),
    ] = False,
    **settings: Any,
) -> None:
    """Estimate the memory of one training step and whether it fits a GPU."""
    if traced:
        if fewest_gpus or emit is not None or emit_to is not None:
            raise FtmemError("--traced runs one GPU's step; drop --fewest-gpus and --emit.")
        _traced(ctx, model, settings, output_format, units, check, quiet)
        return
    code = estimate_and_print(
        ctx,
        model,
        settings,
        fewest_gpus=fewest_gpus,
        emit=emit,
        emit_to=emit_to,
        output_format=output_format,
        units=units,
        check=check,
        quiet=quiet,
    )
    if code:
        raise typer.Exit(code)


def _traced(
    ctx: typer.Context,
    model: str | None,
    settings: dict[str, Any],
    output_format: str,
    units: UnitSystem,
    check: bool,
    quiet: bool,
) -> None:
    """`ftmem estimate --traced`: the traced step, as a table or JSON."""
    from ftmem.api import traced
    from ftmem.cli.measure import measure_errors
    from ftmem.present.traced import traced_json, traced_table

    if output_format not in ("table", "json"):
        raise FtmemError("--traced prints a table or JSON: --format table or json.")
    # the traced model is transformers' own build, not a quantised load
    model, settings, notes, _ = with_config(ctx, model, settings, quantized_base=False)
    if settings.get("gpus") is None:
        settings.pop("gpus", None)
    with measure_errors():
        got = traced(model, **settings)
    if notes:
        got = replace(got, notes=(*notes, *got.notes))
    if not quiet:
        if output_format == "json":
            echo(traced_json(got))
        else:
            console().print(traced_table(got, units))
    if check and got.fits is False:
        raise typer.Exit(EXIT_DOES_NOT_FIT)
