"""`ftmem estimate`: one training step's memory, whether it fits, on the fewest GPUs
that do; or the engine config for it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import typer

from ftmem.cli.errors import EXIT_DOES_NOT_FIT
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
from ftmem.cli.output import console, write_file
from ftmem.cli.root import app
from ftmem.cli.settings import with_config
from ftmem.cli.terminal import echo
from ftmem.errors import FtmemError
from ftmem.units import UnitSystem

Emitter = Literal["deepspeed", "accelerate", "fsdp", "colossalai"]
"""The engine configs of :mod:`ftmem.present.emit` (its EMITTERS; not imported here,
where `ftmem estimate` without --emit would pay for it)."""

if TYPE_CHECKING:
    from ftmem.arch import Architecture
    from ftmem.result import Estimate


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
    read_from = [settings.get("from_config")]  # not to be replaced by --emit-to
    arch, est, search_line = _estimate_for(ctx, model, settings, fewest_gpus, units)
    emitted = _emitted(est, emit, emit_to, inputs=[*read_from, arch.source])
    if not quiet:
        _print_estimate(est, output_format, units, emitted if emit_to is None else None)
    table_like = output_format in ("table", "markdown") and (emit is None or emit_to is not None)
    if search_line is not None and table_like and not quiet:
        echo(search_line)
    host = est.parallel.host_fits if est.parallel is not None else None
    if check and (est.fits is False or host is False):  # the GPU's memory or the host's RAM
        raise typer.Exit(EXIT_DOES_NOT_FIT)


def _estimate_for(
    ctx: typer.Context,
    model: str | None,
    settings: dict[str, Any],
    fewest_gpus: bool,
    units: UnitSystem,
) -> tuple[Architecture, Estimate, str | None]:
    """`ftmem estimate`'s model and estimate (on the fewest GPUs that fit, with the line
    saying what was searched, under --fewest-gpus), the notes of its sources on it."""
    from ftmem.api import estimate as run_estimate
    from ftmem.sources import resolve_model, source_notes

    model, settings, notes, read = with_config(ctx, model, settings)
    arch = resolve_model(model)
    notes += source_notes(model)
    search_line = None
    gpus = settings.pop("gpus")
    if fewest_gpus:
        nodes = settings.pop("nodes")
        est, search_line = _fewest_gpus(arch, settings, 8 if gpus is None else gpus, nodes, units)
    else:
        est = run_estimate(arch, gpus=1 if gpus is None else gpus, **settings)
    if notes or read is not None:
        est = est.model_copy(update={"notes": [*notes, *est.notes], "config": read})
    return arch, est, search_line


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


def _emitted(
    est: Estimate, emit: str | None, emit_to: str | None, inputs: Sequence[str | None]
) -> str | None:
    """The --emit engine config, written to --emit-to when given (never over ``inputs``)."""
    if emit_to is not None and emit is None:
        raise FtmemError("--emit-to needs --emit deepspeed, accelerate or fsdp.")
    if emit is None:
        return None
    from ftmem.present.emit import emit_config

    emitted = emit_config(est, emit)
    if emit_to is not None:
        write_file(emit_to, emitted, inputs=inputs)
    return emitted


def _print_estimate(
    est: Estimate, output_format: str, units: UnitSystem, emitted: str | None
) -> None:
    """The estimate in ``output_format``, or the emitted engine config in its place."""
    from ftmem.present.estimate import markdown, table, to_csv, to_json, to_yaml

    if emitted is not None:
        echo(emitted, nl=False)
    elif output_format == "json":
        echo(to_json(est))
    elif output_format == "yaml":
        echo(to_yaml(est), nl=False)
    elif output_format == "csv":
        echo(to_csv(est), nl=False)
    elif output_format == "markdown":
        echo(markdown(est, units), nl=False)
    else:
        console().print(table(est, units))


def _fewest_gpus(arch, settings: dict, per_node: int, nodes: int, units: UnitSystem):
    """The estimate on the fewest GPUs that fit, and a line saying what was searched."""
    from ftmem.api import estimate as run_estimate
    from ftmem.search import MAX_NODES, fewest_gpus
    from ftmem.units import format_bytes

    if nodes != 1:
        raise FtmemError("--fewest-gpus chooses the node count; drop --nodes.")
    tp, pp, cp = settings["tp"], settings["pp"], settings["cp"]
    found, tried = fewest_gpus(
        lambda g, n: run_estimate(arch, gpus=g, nodes=n, **settings),
        per_node,
        multiple_of=tp * pp * cp,
    )
    if not tried:
        raise FtmemError("no GPU count fits the layout rules; check --tp, --pp and --cp.")
    if found is None:
        last = tried[-1]
        strategy = last.estimate.parallel.strategy if last.estimate.parallel else "single"
        hint = (
            " (DDP replicates everything: try --strategy zero3 or fsdp)"
            if strategy == "ddp"
            else ""
        )
        return last.estimate, (
            f"Does not fit on up to {last.total:,} GPUs ({MAX_NODES} nodes of {per_node}) with "
            f"{strategy}{hint}; at {last.total:,} each GPU needs "
            f"{format_bytes(last.estimate.memory.total_bytes, units)}."
        )
    where = f"{found.nodes} nodes × {found.gpus_per_node}" if found.nodes > 1 else "one node"
    return found.estimate, (
        f"Fewest GPUs that fit: {found.total} ({where}); tried {len(tried)} GPU count(s)."
    )
