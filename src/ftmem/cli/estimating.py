"""What `ftmem estimate` computes and prints, without typer: the command
(:mod:`ftmem.cli.estimate`) and the fast path of the common calls (:mod:`ftmem.cli.fast`)
both run :func:`estimate_and_print`, so the two print the same bytes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ftmem.cli.errors import EXIT_DOES_NOT_FIT
from ftmem.cli.output import console, write_file
from ftmem.cli.settings import with_config
from ftmem.cli.terminal import echo
from ftmem.errors import FtmemError
from ftmem.units import UnitSystem

if TYPE_CHECKING:
    import typer

    from ftmem.arch import Architecture
    from ftmem.result import Estimate


def estimate_and_print(
    ctx: typer.Context | None,
    model: str | None,
    settings: dict[str, Any],
    *,
    fewest_gpus: bool,
    emit: str | None,
    emit_to: str | None,
    output_format: str,
    units: UnitSystem,
    check: bool,
    quiet: bool,
) -> int:
    """`ftmem estimate` without --traced: the estimate printed in ``output_format`` (or
    its engine config), and the exit code: 1 under ``check`` when the GPU's memory or the
    host's RAM does not fit, else 0. ``ctx`` tells flags from --from's settings (None:
    no --from and no --launcher)."""
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
        return EXIT_DOES_NOT_FIT
    return 0


def _estimate_for(
    ctx: typer.Context | None,
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
