"""The searches over the estimator: `ftmem plan` (the least invasive changes that fit),
`ftmem max` (the largest value that fits), `ftmem compare` (methods × GPUs) and
`ftmem compare-methods` (one run under each method)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Optional, get_args

import typer

from ftmem import limits
from ftmem.cli.errors import EXIT_DOES_NOT_FIT
from ftmem.cli.options import (
    DISTILL,
    FROM,
    GPU,
    RUN,
    SPREAD,
    ModelArg,
    OptModelArg,
    TableOrJson,
    Units,
    with_options,
)
from ftmem.cli.output import console
from ftmem.cli.root import app
from ftmem.cli.settings import with_config
from ftmem.cli.terminal import echo
from ftmem.errors import FtmemError


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

    if rows < 1:
        raise FtmemError("--rows must be at least 1.")
    limits.PLAN_ROWS.check("--rows", rows)
    from ftmem.api import estimate as run_estimate
    from ftmem.api import plan as make_plan
    from ftmem.plan import all_levers_at_once
    from ftmem.present.searches import plan_json, plan_table
    from ftmem.sources import resolve_model

    if plot is not None:
        from ftmem.present.plot import check_plot_path

        check_plot_path(plot)
    model, settings, _, _ = with_config(ctx, model, settings)
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
        echo(json.dumps(plan_json(result), indent=2))
    else:
        console().print(plan_table(result, units, closest))
    if not result.fitting:
        raise typer.Exit(EXIT_DOES_NOT_FIT)


Searchable = Literal["batch-size", "seq-len", "target-len", "lora-r"]
SEARCHABLE = {flag: flag.replace("-", "_") for flag in get_args(Searchable)}  # to the setting
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
        Searchable,
        typer.Option(
            "--for",
            help="What to maximise (target-len: encoder-decoders).",
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
    from ftmem.api import estimate as run_estimate
    from ftmem.api import largest as search_largest
    from ftmem.api import search_bound
    from ftmem.present.searches import largest_json, largest_line
    from ftmem.sources import resolve_model

    key = SEARCHABLE[for_]  # the searched setting replaces any value given for it
    if plot is not None:
        from ftmem.present.plot import check_plot_path

        check_plot_path(plot)
    model, settings, _, _ = with_config(ctx, model, settings)
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
        echo(largest_json(for_, result))
    else:
        echo(largest_line(SEARCH_LABELS[for_], result, units))
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
    from ftmem.api import estimate as run_estimate
    from ftmem.present.searches import compare_json, compare_table
    from ftmem.presets import get_gpu
    from ftmem.sources import resolve_model

    gpu_ids = [g.strip() for g in gpus.split(",") if g.strip()]
    method_ids = [m.strip() for m in methods.split(",") if m.strip()]
    if not gpu_ids or not method_ids:
        raise FtmemError("--gpus and --methods each need at least one name.")
    for g in gpu_ids:
        get_gpu(g)  # unknown names fail here, with a suggestion
    arch = resolve_model(model)
    cells: dict[tuple[str, str], Any] = {}
    given = {k: v for k, v in settings.items() if v is not None}
    first_error: FtmemError | None = None
    for m in method_ids:
        for g in gpu_ids:
            try:
                cells[(m, g)] = run_estimate(arch, gpu=g, method=m, **given)
            except FtmemError as exc:
                if len(method_ids) == 1 or "--method" in str(exc):
                    raise
                first_error = first_error or exc
                cells[(m, g)] = "n/a"
    if first_error is not None and all(cell == "n/a" for cell in cells.values()):
        # no method runs on any GPU: the settings themselves are wrong (--batch-size 0
        # once printed a table of n/a and exit 0)
        raise first_error
    if output_format == "json":
        echo(compare_json(cells))
        return
    console().print(compare_table(arch.name, cells, gpu_ids, method_ids, units))


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
    from ftmem.api import compare_methods as run_compare
    from ftmem.present.searches import methods_json, methods_table
    from ftmem.sources import resolve_model

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
        echo(methods_json(rows, served))
        return
    gpu = settings.get("gpu") or settings.get("gpu_memory")
    note = (
        "no inference row: serving is modelled for decoder-only models"
        if (inference and arch.encoder_decoder)
        else ""
    )
    console().print(methods_table(arch.name, rows, gpu, units, served, note))
