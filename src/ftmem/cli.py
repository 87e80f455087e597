"""The ``ftmem`` command: parses options, calls the library, renders. Nothing else."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Optional, cast

import typer
from typer.core import TyperGroup

from ftmem import limits
from ftmem.cli_options import DISTILL, FROM, GPU, MULTI, RUN, SPREAD, with_options
from ftmem.errors import FtmemError
from ftmem.terminal import cli_streams, discard_stdout, error, say
from ftmem.terminal import echo as _echo
from ftmem.units import UnitSystem

if TYPE_CHECKING:
    from ftmem.arch import Architecture
    from ftmem.hardware import Gpu
    from ftmem.measure import Measurement
    from ftmem.result import Estimate
    from ftmem.run import RunConfig
    from ftmem.serve import ServeConfig, ServeEstimate

RUN_NAMES = tuple(p.name for p in RUN)
EXIT_DOES_NOT_FIT = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of the pipe stopped reading


class _Commands(TyperGroup):
    """Every command's errors go through :func:`_exit_code`: a user's mistake is one
    sentence on stderr and exit 2 (commands compute everything before they print, so
    stdout stays empty); a failure to print, its own code. Here, inside click's main,
    which would otherwise turn a broken pipe into exit 1, "does not fit", and Ctrl-C into
    a silent 130."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (FtmemError, OSError, UnicodeEncodeError, KeyboardInterrupt) as exc:
            code = _exit_code(exc)
            if code is None:
                raise
            raise typer.Exit(code) from None


app = typer.Typer(
    cls=_Commands,
    add_completion=True,
    no_args_is_help=True,
    help="How much GPU memory will this LLM finetuning run take? Estimate, check the fit.",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from ftmem import __version__

        _echo(f"ftmem {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """How much GPU memory will this LLM finetuning run take? Estimate, check the fit."""


ModelArg = Annotated[
    str, typer.Argument(help="Preset id (see `ftmem models`) or a config.json path/folder.")
]
OptModelArg = Annotated[
    Optional[str],  # noqa: UP045
    typer.Argument(
        help="Preset id (see `ftmem models`) or a config.json path/folder; with --from, "
        "the config's base model when omitted."
    ),
]


def _with_config(
    ctx: typer.Context, model: str | None, settings: dict[str, Any]
) -> tuple[str, dict[str, Any], list[str]]:
    """The model and settings, read from --from when given; explicit flags win."""
    path = settings.pop("from_config", None)
    if path is None:
        if model is None:
            raise FtmemError(
                "give a model (a preset id or config.json), or --from a training config."
            )
        return model, settings, []
    from ftmem.frameworks import read_framework_config, under_flags

    fw = read_framework_config(path)
    explicit = {
        k: v
        for k, v in settings.items()
        if (src := ctx.get_parameter_source(k)) is not None
        and src.name in ("COMMANDLINE", "ENVIRONMENT")
    }
    chosen = model or fw.model
    if chosen is None:
        raise FtmemError(
            f"{path} names no base model; give one: ftmem estimate MODEL --from {path}."
        )
    merged, dropped = under_flags(fw, explicit)
    return (
        chosen,
        {**settings, **merged},
        [f"Read from the {fw.framework} config {path}.", *fw.notes, *dropped],
    )


Format = Annotated[str, typer.Option("--format", help="table | json | yaml | markdown | csv")]
TableOrJson = Annotated[str, typer.Option("--format", help="table | json")]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print nothing; the exit code says it all.")
]


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (an output over the input it was read from)."""
    import os

    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one does not exist yet: not the same
        return False


def _write(path: str, text: str, inputs: Sequence[str | None] = ()) -> None:
    """Write an output file; one of ``inputs`` (the files the run read) is not replaced."""
    read = next((i for i in inputs if i is not None and _same_file(path, i)), None)
    if read is not None:
        raise FtmemError(f"{path} is the file the run was read from; write the output elsewhere.")
    if not path.strip():
        raise FtmemError("an output file name is empty; give a path.")
    if "\0" in path:  # possible through main([...]), never from a shell
        raise FtmemError(f"cannot write {path!r}: a path cannot hold a NUL byte.")
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise FtmemError(f"cannot write {path}: {exc.strerror}.") from None


Units = Annotated[str, typer.Option("--units", help="GiB (binary, default) or GB (10^9).")]


def _units(units: str) -> UnitSystem:
    if units not in ("GiB", "GB"):
        raise FtmemError("--units must be GiB or GB.")
    return cast("UnitSystem", units)


def _format(value: str, *allowed: str) -> str:
    if value not in allowed:
        choices = ", ".join(allowed[:-1]) + f" or {allowed[-1]}"
        raise FtmemError(f"--format must be {choices}.")
    return value


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
        str | None,
        typer.Option(
            help="Print the engine config for this plan instead of the table: deepspeed (JSON) | "
            "accelerate (YAML) | fsdp (Accelerate YAML).",
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
    **settings: Any,
) -> None:
    """Estimate the memory of one training step and whether it fits a GPU."""
    unit = _units(units)
    _format(output_format, "table", "json", "yaml", "markdown", "csv")
    read_from = [settings.get("from_config")]  # not to be replaced by --emit-to
    arch, est, search_line = _estimate_for(ctx, model, settings, fewest_gpus, unit)
    emitted = _emitted(est, emit, emit_to, inputs=[*read_from, arch.source])
    if not quiet:
        _print_estimate(est, output_format, unit, emitted if emit_to is None else None)
    table_like = output_format in ("table", "markdown") and (emit is None or emit_to is not None)
    if search_line is not None and table_like and not quiet:
        _echo(search_line)
    host = est.parallel.host_fits if est.parallel is not None else None
    if check and (est.fits is False or host is False):  # the GPU's memory or the host's RAM
        raise typer.Exit(EXIT_DOES_NOT_FIT)


def _estimate_for(
    ctx: typer.Context,
    model: str | None,
    settings: dict[str, Any],
    fewest_gpus: bool,
    unit: UnitSystem,
) -> tuple[Architecture, Estimate, str | None]:
    """`ftmem estimate`'s model and estimate (on the fewest GPUs that fit, with the line
    saying what was searched, under --fewest-gpus), the notes of its sources on it."""
    from ftmem.api import estimate as run_estimate
    from ftmem.sources import resolve_model, source_notes

    model, settings, notes = _with_config(ctx, model, settings)
    arch = resolve_model(model)
    notes += source_notes(model)
    search_line = None
    gpus = settings.pop("gpus")
    if fewest_gpus:
        nodes = settings.pop("nodes")
        est, search_line = _fewest_gpus(arch, settings, 8 if gpus is None else gpus, nodes, unit)
    else:
        est = run_estimate(arch, gpus=1 if gpus is None else gpus, **settings)
    if notes:
        est = est.model_copy(update={"notes": [*notes, *est.notes]})
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
        _write(emit_to, emitted, inputs=inputs)
    return emitted


def _print_estimate(
    est: Estimate, output_format: str, unit: UnitSystem, emitted: str | None
) -> None:
    """The estimate in ``output_format``, or the emitted engine config in its place."""
    from ftmem.present.estimate import markdown, table, to_csv, to_json, to_yaml

    if emitted is not None:
        _echo(emitted, nl=False)
    elif output_format == "json":
        _echo(to_json(est))
    elif output_format == "yaml":
        _echo(to_yaml(est), nl=False)
    elif output_format == "csv":
        _echo(to_csv(est), nl=False)
    elif output_format == "markdown":
        _echo(markdown(est, unit), nl=False)
    else:
        _console().print(table(est, unit))


def _fewest_gpus(arch, settings: dict, per_node: int, nodes: int, unit: UnitSystem):
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
            f"{format_bytes(last.estimate.memory.total_bytes, unit)}."
        )
    where = f"{found.nodes} nodes × {found.gpus_per_node}" if found.nodes > 1 else "one node"
    return found.estimate, (
        f"Fewest GPUs that fit: {found.total} ({where}); tried {len(tried)} GPU count(s)."
    )


@app.command()
@with_options(FROM, RUN, GPU, SPREAD, DISTILL)
def plan(
    ctx: typer.Context,
    model: OptModelArg = None,
    rows: Annotated[int, typer.Option(help="How many ways to fit to show.")] = 8,
    output_format: TableOrJson = "table",
    plot: Annotated[
        str | None,
        typer.Option(help="Write a stacked-bar picture of the candidates (.png or .svg)."),
    ] = None,
    units: Units = "GiB",
    **settings: Any,
) -> None:
    """Find the least invasive changes that make the run fit the GPU."""
    import json

    if rows < 1:
        raise FtmemError("--rows must be at least 1.")
    limits.PLAN_ROWS.check("--rows", rows)
    from ftmem.api import estimate as run_estimate
    from ftmem.api import plan as make_plan
    from ftmem.plan import all_levers_at_once
    from ftmem.present.searches import plan_json, plan_table
    from ftmem.sources import resolve_model

    unit = _units(units)
    _format(output_format, "table", "json")
    if rows < 1:
        raise FtmemError("--rows must be at least 1.")
    model, settings, _ = _with_config(ctx, model, settings)
    arch = resolve_model(model)
    hw = {k: settings.pop(k) for k in ("gpu", "gpu_memory", "overhead")}
    run_settings = {k: v for k, v in settings.items() if v is not None}
    result = make_plan(arch, rows=rows, **hw, **run_settings)
    closest = None
    if not result.fitting:
        try:
            closest = run_estimate(arch, **hw, **all_levers_at_once(run_settings))
        except FtmemError:
            closest = None
    if plot is not None:
        from ftmem.present.plot import plan_figure, save

        save(plan_figure(result), plot)
    if output_format == "json":
        _echo(json.dumps(plan_json(result), indent=2))
    else:
        _console().print(plan_table(result, unit, closest))
    if not result.fitting:
        raise typer.Exit(EXIT_DOES_NOT_FIT)


SEARCHABLE = {
    "batch-size": "batch_size",
    "seq-len": "seq_len",
    "target-len": "target_len",
    "lora-r": "lora_r",
}
SEARCH_LABELS = {
    "batch-size": "micro-batch size",
    "seq-len": "sequence length",
    "target-len": "decoder (target) length",
    "lora-r": "LoRA rank",
}


@app.command(name="max")
@with_options(FROM, RUN, GPU, SPREAD, DISTILL)
def largest(
    ctx: typer.Context,
    model: OptModelArg = None,
    for_: Annotated[
        str,
        typer.Option(
            "--for",
            help="batch-size | seq-len | target-len (encoder-decoders) | lora-r: what to maximise.",
        ),
    ] = "batch-size",
    plot: Annotated[
        str | None,
        typer.Option(
            help="Write memory against the searched value, the GPU's limit drawn (.png/.svg)."
        ),
    ] = None,
    output_format: TableOrJson = "table",
    units: Units = "GiB",
    **settings: Any,
) -> None:
    """The largest micro-batch, sequence length or LoRA rank that fits the GPU, exactly."""
    import json

    from ftmem.api import estimate as run_estimate
    from ftmem.api import largest as search_largest
    from ftmem.api import search_bound
    from ftmem.present.searches import largest_line
    from ftmem.sources import resolve_model

    unit = _units(units)
    if for_ not in SEARCHABLE:
        raise FtmemError(f"--for must be one of {', '.join(SEARCHABLE)}, not {for_!r}.")
    _format(output_format, "table", "json")
    key = SEARCHABLE[for_]  # the searched setting replaces any value given for it
    model, settings, _ = _with_config(ctx, model, settings)
    arch = resolve_model(model)
    given = {k: v for k, v in settings.items() if v is not None}
    result = search_largest(arch, key, **given)
    if plot is not None:
        from ftmem.present.plot import save, sweep_figure

        def estimate_at(n: int) -> Any:
            return run_estimate(arch, **{**given, key: n})

        highest = search_bound(arch, key, given)
        save(sweep_figure(estimate_at, SEARCH_LABELS[for_], result, highest), plot)
    if output_format == "json":
        data = {
            "for": for_,
            "largest": result.value,
            "evaluations": result.evaluations,
            "fits_at": result.fits_at.model_dump(mode="json") if result.fits_at else None,
            "fails_at_next": result.fails_at.model_dump(mode="json") if result.fails_at else None,
        }
        _echo(json.dumps(data, indent=2))
    else:
        _echo(largest_line(SEARCH_LABELS[for_], result, unit))
    if result.value is None:
        raise typer.Exit(EXIT_DOES_NOT_FIT)


@app.command()
@with_options(RUN, drop=("method",))
def compare(
    model: ModelArg,
    gpus: Annotated[
        str, typer.Option(help="GPU presets, comma-separated.")
    ] = "a100-80gb,h100-80gb,rtx4090,l4",
    methods: Annotated[str, typer.Option(help="Methods, comma-separated.")] = "full,lora,qlora",
    output_format: TableOrJson = "table",
    units: Units = "GiB",
    **settings: Any,
) -> None:
    """A matrix of totals and verdicts: methods × GPUs."""
    import json

    from ftmem.api import estimate as run_estimate
    from ftmem.present.searches import compare_table
    from ftmem.presets import get_gpu
    from ftmem.sources import resolve_model

    unit = _units(units)
    _format(output_format, "table", "json")
    gpu_ids = [g.strip() for g in gpus.split(",") if g.strip()]
    method_ids = [m.strip() for m in methods.split(",") if m.strip()]
    if not gpu_ids or not method_ids:
        raise FtmemError("--gpus and --methods each need at least one name.")
    for g in gpu_ids:
        get_gpu(g)  # unknown names fail here, with a suggestion
    arch = resolve_model(model)
    cells: dict[tuple[str, str], Any] = {}
    given = {k: v for k, v in settings.items() if v is not None}
    for m in method_ids:
        for g in gpu_ids:
            try:
                cells[(m, g)] = run_estimate(arch, gpu=g, method=m, **given)
            except FtmemError as exc:
                if len(method_ids) == 1 or "--method" in str(exc):
                    raise
                cells[(m, g)] = "n/a"
    if output_format == "json":
        data = [
            {
                "method": m,
                "gpu": g,
                "total_bytes": None if isinstance(c, str) else c.memory.total_bytes,
                "fits": None if isinstance(c, str) else c.fits,
            }
            for (m, g), c in cells.items()
        ]
        _echo(json.dumps(data, indent=2))
        return
    _console().print(compare_table(arch.name, cells, gpu_ids, method_ids, unit))


@app.command("compare-methods")
@with_options(RUN, GPU, drop=("method",))
def compare_methods(
    model: ModelArg,
    methods: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional spelled out on Python 3.10
        typer.Option(help="Methods, comma-separated (default: one of each kind)."),
    ] = None,
    inference: Annotated[
        bool,
        typer.Option(
            "--inference/--no-inference",
            help="Add the same model served in bf16 for the same batch × sequence length.",
        ),
    ] = True,
    output_format: TableOrJson = "table",
    units: Units = "GiB",
    **settings: Any,
) -> None:
    """The same run under each finetuning method: components, peak, total and verdict.

    Method-specific options (--lora-r, --virtual-tokens...) apply to the methods that
    take them; a method the model cannot use shows why instead of numbers.
    """
    import json

    from ftmem.api import compare_methods as run_compare
    from ftmem.present.searches import methods_table
    from ftmem.sources import resolve_model

    unit = _units(units)
    _format(output_format, "table", "json")
    names = None
    if methods is not None:
        names = [m.strip() for m in methods.split(",") if m.strip()]
        if not names:
            raise FtmemError("--methods needs at least one name.")
    arch = resolve_model(model)
    rows = run_compare(arch, names, **settings)
    served = None
    if inference and not arch.encoder_decoder:  # serve models decoder-only generation
        from ftmem.api import resolve_gpu, serve_config
        from ftmem.serve import estimate_serving

        cfg = serve_config(
            sequences=settings.get("batch_size") or 1, context=settings.get("seq_len") or 512
        )
        hw = resolve_gpu(settings.get("gpu"), settings.get("gpu_memory"))
        served = estimate_serving(arch, cfg, hw)
    if output_format == "json":
        data = [
            {"method": m, "error": r}
            if isinstance(r, str)
            else {"method": m, **json.loads(r.model_dump_json())}
            for m, r in rows.items()
        ]
        if served is not None:
            data.insert(0, {"method": "inference", **json.loads(served.model_dump_json())})
        _echo(json.dumps(data, indent=2))
        return
    gpu = settings.get("gpu") or settings.get("gpu_memory")
    note = (
        "no inference row: serving is modelled for decoder-only models"
        if (inference and arch.encoder_decoder)
        else ""
    )
    _console().print(methods_table(arch.name, rows, gpu, unit, served, note))


@app.command()
@with_options(FROM, RUN, GPU, SPREAD, DISTILL)
def explain(
    ctx: typer.Context,
    model: OptModelArg = None,
    output_format: Annotated[str, typer.Option("--format", help="text | markdown")] = "text",
    units: Annotated[
        str, typer.Option("--units", help="GB (10^9, as blog posts write it; default) or GiB.")
    ] = "GB",
    **settings: Any,
) -> None:
    """The arithmetic behind the estimate, step by step (Markdown for blog posts)."""
    from ftmem.api import estimate as run_estimate
    from ftmem.api import run_config
    from ftmem.present.explain import explain as explain_sections
    from ftmem.present.explain import render_markdown, render_text
    from ftmem.sources import resolve_model, source_notes

    unit = _units(units)
    _format(output_format, "text", "markdown")
    model, settings, notes = _with_config(ctx, model, settings)
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
    sections = explain_sections(arch, run, est, unit, realistic)
    title = f"{arch.name}: {run.method}, {est.run['precision_regime']}"
    notes = [*notes, *est.notes]
    if output_format == "markdown":
        text = render_markdown(title, sections)
        text += "".join(f"> {n}\n>\n" for n in notes)
    else:
        text = f"{title}\n\n" + render_text(sections) + "".join(f"note: {n}\n" for n in notes)
    _echo(text.rstrip("\n>") + "\n", nl=False)


@app.command()
def merge(
    model: ModelArg,
    models: Annotated[int, typer.Option(help="Weighted merge: how many models combine.")] = 2,
    layers: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Stack merge (depth up-scaling): block slices, e.g. 0-24,8-32."),
    ] = None,
    dtype: Annotated[str, typer.Option(help="Checkpoint dtype: bf16 | fp16 | fp32")] = "bf16",
    in_memory: Annotated[
        bool,
        typer.Option(
            "--in-memory", help="Load every model whole (default: streamed, tensor by tensor)."
        ),
    ] = False,
    shard_size: Annotated[
        str, typer.Option(help="Output shard the streamed writer fills before writing.")
    ] = "5GB",
    output_format: TableOrJson = "table",
    units: Units = "GiB",
) -> None:
    """Model merging (soups, task arithmetic, depth up-scaling): the result and the
    memory (host RAM, or GPU with mergekit --cuda) to compute it."""
    import json

    from ftmem.api import merge_config
    from ftmem.merge import merge_estimate
    from ftmem.sources import resolve_model
    from ftmem.units import format_bytes, format_count, parse_size

    unit = _units(units)
    _format(output_format, "table", "json")
    arch = resolve_model(model)
    cfg = merge_config(
        kind="stack" if layers else "weighted",
        models=models,
        layers=layers,
        dtype=dtype,
        streamed=not in_memory,
        shard_bytes=parse_size(shard_size, what="--shard-size"),
    )
    est = merge_estimate(arch, cfg)
    data = {
        "model": arch.name,
        "kind": cfg.kind,
        "result_blocks": est.result.num_layers,
        "result_params": est.result_params,
        "result_bytes": est.result_bytes,
        "inputs_bytes": est.inputs_bytes,
        "working_bytes": est.working_bytes,
        "peak_bytes": est.peak_bytes,
        "notes": list(est.notes),
    }
    if output_format == "json":
        _echo(json.dumps(data, indent=2))
        return
    what = f"{cfg.models} × {arch.name}" if cfg.kind == "weighted" else f"{arch.name} [{layers}]"
    _echo(f"Merge ({cfg.kind}): {what}, {cfg.dtype}")
    _echo(
        f"  result: {est.result.num_layers} blocks, {format_count(est.result_params)} "
        f"parameters ({est.result_params:,}), {format_bytes(est.result_bytes, unit)}"
    )
    _echo(f"  inputs: {format_bytes(est.inputs_bytes, unit)}")
    how = "streamed" if cfg.streamed else "in memory"
    _echo(f"  memory to merge ({how}): {format_bytes(est.peak_bytes, unit)}")
    for note in est.notes:
        _echo(f"  note: {note}")


@app.command()
def serve(
    model: ModelArg,
    weights: Annotated[
        str,
        typer.Option(
            help="bf16 | fp16 | fp32 | fp8 | int8 | nf4 | fp4 | int4 (GPTQ/AWQ-style) | "
            "ternary (BitNet b1.58)"
        ),
    ] = "bf16",
    kv_dtype: Annotated[
        str, typer.Option(help="KV cache dtype: bf16 | fp16 | fp32 | fp8")
    ] = "bf16",
    sequences: Annotated[int, typer.Option(help="Concurrent sequences.")] = 1,
    context: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="Tokens per sequence (prompt + generated); default 4,096, or the model's "
            "learned positions when fewer (GPT-2: 1,024)."
        ),
    ] = None,
    prefill_chunk: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="Tokens of one prefill forward, all sequences together (vLLM's "
            "max_num_batched_tokens); default: every whole context at once."
        ),
    ] = None,
    lora_adapters: Annotated[int, typer.Option(help="Resident LoRA adapters (multi-LoRA).")] = 0,
    lora_r: Annotated[int, typer.Option(help="Rank of the resident adapters.")] = 16,
    lora_targets: Annotated[str, typer.Option(help="Their targets.")] = "all-linear",
    max_sequences: Annotated[
        bool,
        typer.Option("--max-sequences", help="Find the most concurrent sequences that fit --gpu."),
    ] = False,
    max_context: Annotated[
        bool,
        typer.Option("--max-context", help="Find the longest context that fits --gpu."),
    ] = False,
    gpu: Annotated[Optional[str], typer.Option(help="GPU preset.")] = None,  # noqa: UP045
    gpu_memory: Annotated[Optional[str], typer.Option(help="GPU memory, e.g. 24GiB.")] = None,  # noqa: UP045
    output_format: TableOrJson = "table",
    units: Units = "GiB",
) -> None:
    """Inference / serving memory: weights, KV cache, prefill, resident adapters."""
    from ftmem.api import resolve_gpu, serve_config
    from ftmem.present.serve import serving_table, serving_verdict
    from ftmem.serve import default_context, estimate_serving
    from ftmem.sources import resolve_model

    unit = _units(units)
    _format(output_format, "table", "json")
    arch = resolve_model(model)
    hw = resolve_gpu(gpu, gpu_memory)
    cfg = serve_config(
        weights=weights,
        kv_dtype=kv_dtype,
        sequences=sequences,
        context=default_context(arch) if context is None else context,
        prefill_chunk=prefill_chunk,
        lora_adapters=lora_adapters,
        lora_r=lora_r,
        lora_targets=lora_targets,
    )
    est = estimate_serving(arch, cfg, hw)
    line = None
    if max_sequences and max_context:
        raise FtmemError("Give --max-sequences or --max-context, not both.")
    if max_sequences or max_context:
        est, line = _serve_search(arch, cfg, hw, max_sequences, est)
    if output_format == "json":
        _echo(est.model_dump_json(indent=2))
        return
    _console().print(serving_table(arch.name, est, unit))
    for text in (serving_verdict(est, unit), line, *(f"note: {n}" for n in est.notes)):
        if text:
            _echo(text)


def _serve_search(
    arch: Architecture,
    cfg: ServeConfig,
    hw: Gpu | None,
    max_sequences: bool,
    est: ServeEstimate,
) -> tuple[ServeEstimate, str]:
    """--max-sequences (else --max-context): the estimate at the largest count that fits
    the GPU (``est`` when none does), and the line that says it."""
    from ftmem.search import largest_fitting
    from ftmem.serve import context_limit, estimate_serving

    if hw is None:
        flag = "--max-sequences" if max_sequences else "--max-context"
        raise FtmemError(f"{flag} needs a GPU: give --gpu or --gpu-memory.")
    what = "sequences" if max_sequences else "context"

    def at(n: int) -> Any:
        return estimate_serving(arch, cfg.model_copy(update={what: n}), hw)

    highest = 2**20 if max_sequences else context_limit(arch)
    learned = arch.position_embedding == "learned"  # then the limit is the model's
    found = largest_fitting(at, 1, highest)
    if found.value is None:
        if max_sequences:
            return est, f"Not even one sequence of {cfg.context:,} tokens fits {hw.name}."
        return est, f"Not even {cfg.sequences} sequence(s) of one token fit {hw.name}."
    if max_sequences:
        line = (
            f"Most concurrent sequences of {cfg.context:,} tokens that fit {hw.name}: "
            f"{found.value:,}."
        )
    else:
        whole = learned and found.value == highest
        line = (
            f"Longest context for {cfg.sequences} sequence(s) that fits {hw.name}: "
            f"{found.value:,} tokens" + (f" (all of {arch.name}'s positions)." if whole else ".")
        )
    # largest_fitting is typed for training estimates; it searched serving ones here
    return cast("ServeEstimate", found.fits_at), line


@app.command()
def check(
    budgets: Annotated[str, typer.Argument(help="Budgets YAML file (see docs/budgets.md).")],
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write the results as JSON here (- for stdout).")
    ] = None,
    junit_out: Annotated[
        str | None, typer.Option("--junit", help="Write a JUnit XML report here (- for stdout).")
    ] = None,
    units: Units = "GiB",
    quiet: Quiet = False,
) -> None:
    """Check named runs against memory budgets; exit 1 when any fails (for CI)."""
    import os

    from ftmem.budget import check_budgets, github_annotations, results_json, results_junit
    from ftmem.present.searches import budget_table

    to_stdout = [flag for flag, out in (("--json", json_out), ("--junit", junit_out)) if out == "-"]
    if len(to_stdout) > 1:
        raise FtmemError("--json - and --junit - both write to stdout; send one to a file.")
    if json_out is not None and json_out == junit_out:  # the second report would replace the first
        raise FtmemError(f"--json and --junit both write {json_out}; give each its own file.")
    unit = _units(units)
    results = check_budgets(budgets)
    reports = {
        "--json": (json_out, results_json(results)),
        "--junit": (junit_out, results_junit(results, budgets)),
    }
    for out, text in reports.values():
        if out is not None and out != "-":
            _write(out, text, inputs=[budgets])
    if to_stdout:  # the report alone on stdout, for a pipe
        _echo(reports[to_stdout[0]][1])
    elif not quiet:
        _console().print(budget_table(results, unit))
    if os.environ.get("GITHUB_ACTIONS") == "true" and not quiet:
        # the runner reads workflow commands on stderr too: there when stdout is a report
        for line in github_annotations(results, budgets):
            _echo(line, err=bool(to_stdout))
    failed = [r for r in results if not r.passed]
    if not to_stdout and not quiet:
        _echo(f"{len(results) - len(failed)} of {len(results)} runs within budget.")
    if failed:
        raise typer.Exit(EXIT_DOES_NOT_FIT)


@app.command()
@with_options(RUN, drop=("optimizer_impl", "accounting"))
def measure(
    model: Annotated[
        str,
        typer.Argument(help="Preset id or config.json path/folder (built with random weights)."),
    ],
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    fsdp: Annotated[
        int,
        typer.Option(
            help="Measure torch FSDP2 (FULL_SHARD) on this many CPU ranks against the "
            "per-GPU estimate, instead of one device."
        ),
    ] = 0,
    fsdp_ranks: Annotated[
        str,
        typer.Option(
            help="simulated: each rank in turn in this process, over a fake process group "
            "(same peak on every run) | gloo: one process per rank, real collectives "
            "(the peak moves with thread timing)."
        ),
    ] = "simulated",
    steps: Annotated[int, typer.Option(help="Training steps; the last one is measured.")] = 2,
    fake: Annotated[
        bool,
        typer.Option(
            "--fake",
            help="Real-size shapes under FakeTensorMode, nothing allocated (CPU only; "
            "no bitsandbytes; kernel workspaces and the CUDA allocator are not seen).",
        ),
    ] = False,
    output_format: TableOrJson = "table",
    **settings: Any,
) -> None:
    """Run the step for real (torch, random weights) and compare with the estimate."""
    from ftmem.api import run_config
    from ftmem.sources import resolve_model

    _check_measure_options(device, steps, fsdp, fsdp_ranks, fake)
    arch = resolve_model(model)
    run = run_config(
        **settings,
        device=device,
        optimizer_impl="for-loop" if device == "cpu" else "foreach",
    )
    with _measure_errors():
        if fsdp:
            return _measure_fsdp(arch, run, fsdp, fsdp_ranks, output_format)
        from ftmem.measure import measure as run_measure

        got = run_measure(arch, run, device=device, steps=steps, fake=fake)
    _print_measured(arch, run, got, fake, output_format)


def _check_measure_options(device: str, steps: int, fsdp: int, fsdp_ranks: str, fake: bool) -> None:
    """`ftmem measure`'s own options, before anything is built."""
    if device not in ("cpu", "cuda"):
        raise FtmemError("--device must be cpu or cuda.")
    if steps < 2:
        raise FtmemError("--steps must be at least 2 (step 1 creates the optimizer states).")
    limits.MEASURED_STEPS.check("--steps", steps)
    limits.MEASURED_RANKS.check("--fsdp", fsdp)
    if fake and device != "cpu":
        raise FtmemError("--fake runs on the CPU only; drop --device cuda.")
    if fsdp and (fsdp < 2 or fake or device != "cpu"):
        raise FtmemError("--fsdp takes 2 or more CPU ranks, without --fake or --device cuda.")
    if fsdp_ranks not in ("simulated", "gloo"):
        raise FtmemError(f"--fsdp-ranks must be simulated or gloo, not {fsdp_ranks!r}.")


@contextmanager
def _measure_errors() -> Iterator[None]:
    """A missing optional dependency, or torch refusing the run, as one sentence."""
    try:
        yield
    except ImportError as exc:
        raise FtmemError(
            f"`ftmem measure` needs torch, transformers and peft ({exc.name} is missing): "
            'pip install "ftmem[measure]".'
        ) from None
    except RuntimeError as exc:
        raise FtmemError(str(exc).splitlines()[0]) from None


def _print_measured(
    arch: Architecture, run: RunConfig, got: Measurement, fake: bool, output_format: str
) -> None:
    """The measured step beside the estimate of the same run: a table, or the estimate's
    JSON with a ``measured`` part."""
    import json

    from ftmem.estimate import estimate_step
    from ftmem.present.measure import measured_table

    est = estimate_step(arch, run)
    m = est.memory
    rows = [
        ("weights", m.weights_bytes, got.weights_bytes),
        ("gradients", m.gradients_bytes, got.gradients_bytes),
        ("optimizer_states", m.optimizer_states_bytes, got.optimizer_states_bytes),
        ("activations", m.activations_bytes, got.activations_bytes),
        ("peak_allocated", m.peak_allocated_bytes, got.peak_allocated_bytes),
    ]
    if output_format == "json":
        data = est.model_dump(mode="json")
        data["measured"] = {f"{k}_bytes": g for k, _, g in rows}
        data["measured"].update(
            fake=fake,
            notes=list(got.notes),
            peak_phase=got.peak_phase,
            device=got.device,
            torch=got.torch_version,
            transformers=got.transformers_version,
            peft=got.peft_version,
        )
        _echo(json.dumps(data, indent=2))
        return
    where = "fake tensors (nothing allocated)" if fake else got.device
    title = f"{arch.name}: {run.method} · {run.precision} · measured on {where}"
    _console().print(measured_table(title, "Estimated", rows, (m.peak_phase, got.peak_phase)))


def _measure_fsdp(arch: Any, run: Any, ranks: int, mode: str, output_format: str) -> None:
    """`ftmem measure --fsdp N`: each rank's shards and the largest peak, beside the
    per-GPU estimate of the same run with ``--gpus N --strategy fsdp``."""
    import json

    from ftmem.estimate import estimate_step
    from ftmem.measure.sharded import measure_fsdp
    from ftmem.parallel import ParallelConfig
    from ftmem.present.measure import measured_table

    measured = measure_fsdp(arch, run, ranks, mode=mode)
    est = estimate_step(arch, run, par=ParallelConfig(gpus=ranks, strategy="fsdp")).memory
    rows = [
        (key.removesuffix("_bytes"), getattr(est, key), max(r[key] for r in measured))
        for key in (
            "weights_bytes",
            "gradients_bytes",
            "optimizer_states_bytes",
            "peak_allocated_bytes",
        )
    ]
    if output_format == "json":
        _echo(json.dumps({"estimate": est.model_dump(mode="json"), "ranks": measured}, indent=2))
        return
    title = f"{arch.name}: {run.method} · FSDP over {ranks} CPU ranks ({mode}), largest rank"
    _console().print(measured_table(title, "Estimated per GPU", rows))


@app.command()
def schema() -> None:
    """Print the JSON Schema of `ftmem estimate --format json`."""
    import json

    from ftmem.present.estimate import estimate_schema

    _echo(json.dumps(estimate_schema(), indent=2))


@app.command()
def methods() -> None:
    """List the finetuning methods with what each trains and its source."""
    from ftmem.present.listings import methods_table

    _console().print(methods_table())


@app.command()
def models(units: Units = "GiB") -> None:
    """List the model presets with their exact parameter counts."""
    from ftmem.present.listings import models_listing

    _print_listing(*models_listing(_units(units)))


@app.command()
def gpus(units: Units = "GiB") -> None:
    """List the GPU presets with the memory each reports."""
    from ftmem.present.listings import gpus_listing

    _print_listing(*gpus_listing(_units(units)))


def _print_listing(title: str, columns: list[Any], rows: Sequence[tuple[str, ...]]) -> None:
    from ftmem.present.listings import listing

    con = _console()
    tbl, width = listing(title, columns, rows, con.width)
    con.print(tbl, width=max(width, con.width), crop=False)  # ids whole, even past the edge


def _console() -> Any:
    from ftmem.present.console import console

    return console()


def _is(exc: BaseException, name: str) -> bool:
    # typer vendors click (typer._click); match its exception classes by name
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def _exit_code(exc: BaseException) -> int | None:
    """The exit code of an error that reached the top, its sentence on stderr; None for
    a bug, whose traceback is worth seeing."""
    if isinstance(exc, FtmemError):
        error(str(exc))
        return EXIT_BAD_INPUT
    if isinstance(exc, KeyboardInterrupt) or _is(exc, "Abort"):
        say("Aborted.")
        return EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError):
        discard_stdout()
        return EXIT_BROKEN_PIPE
    if isinstance(exc, OSError) and exc.filename is None:  # writing stdout (or stderr)
        discard_stdout()
        error(f"cannot write the output: {exc.strerror or exc}.")
        return EXIT_BAD_INPUT
    if isinstance(exc, OSError):
        # a path from the user the system refuses where no reader expected it (a
        # 5,000-character deepspeed: in a --from config: ENAMETOOLONG from is_file)
        error(f"cannot use {exc.filename}: {exc.strerror or exc}.")
        return EXIT_BAD_INPUT
    if isinstance(exc, UnicodeEncodeError):
        discard_stdout()
        error(
            f"the output has characters the terminal's encoding ({exc.encoding}) cannot "
            "show; set PYTHONIOENCODING=utf-8."
        )
        return EXIT_BAD_INPUT
    if _is(exc, "UsageError"):
        ctx = getattr(exc, "ctx", None)
        hint = f" See `{ctx.command_path} --help`." if ctx is not None else ""
        message = exc.format_message().rstrip()  # type: ignore[attr-defined]
        if not message.endswith((".", "?", "!")):
            message += "."
        error(f"{message}{hint}")
        return EXIT_BAD_INPUT
    return None


def _app_for(args: list[str]) -> typer.Typer:
    """The app with only the command being run: typer builds the click command of every
    registered one before it dispatches (15 commands, ~400 options: about a fifth of
    `ftmem estimate`'s start-up). Anything else (no command, --help, --version, an
    unknown name) gets the whole app, so listings and suggestions stay complete."""
    name = args[0] if args else ""
    for info in app.registered_commands:
        callback_name = info.callback.__name__ if info.callback else ""
        if (info.name or typer.main.get_command_name(callback_name)) == name:
            one = copy.copy(app)
            one.registered_commands = [info]
            return one
    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 0 valid output, 1 does not fit, 2 one sentence on stderr and
    nothing on stdout; never a traceback for what a user can cause (ftmem.terminal)."""
    with cli_streams():
        try:
            code = _app_for(sys.argv[1:] if argv is None else argv)(
                args=argv, standalone_mode=False
            )
            sys.stdout.flush()  # a full disk fails here, not at exit
        except (Exception, KeyboardInterrupt) as exc:
            code = _exit_code(exc)
            if code is None:
                raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # python -m ftmem.cli
    main()
