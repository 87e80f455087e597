"""`ftmem merge`: the memory to merge models (soups, task arithmetic, depth up-scaling)."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from ftmem.cli.options import ModelArg, TableOrJson, Units
from ftmem.cli.root import app
from ftmem.cli.terminal import echo

# ftmem.merge's MergeConfig.dtype, spelled out: importing ftmem.merge here would load it
# for every command (tests/test_cli_choices.py checks they agree)
MergeDtype = Literal["bf16", "fp16", "fp32"]


@app.command()
def merge(
    model: ModelArg,
    models: Annotated[int, typer.Option(help="Weighted merge: how many models combine.")] = 2,
    layers: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Stack merge (depth up-scaling): block slices, e.g. 0-24,8-32."),
    ] = None,
    dtype: Annotated[MergeDtype, typer.Option(help="Checkpoint dtype.")] = "bf16",
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
        echo(json.dumps(data, indent=2))
        return
    what = f"{cfg.models} × {arch.name}" if cfg.kind == "weighted" else f"{arch.name} [{layers}]"
    echo(f"Merge ({cfg.kind}): {what}, {cfg.dtype}")
    echo(
        f"  result: {est.result.num_layers} blocks, {format_count(est.result_params)} "
        f"parameters ({est.result_params:,}), {format_bytes(est.result_bytes, units)}"
    )
    echo(f"  inputs: {format_bytes(est.inputs_bytes, units)}")
    how = "streamed" if cfg.streamed else "in memory"
    echo(f"  memory to merge ({how}): {format_bytes(est.peak_bytes, units)}")
    for note in est.notes:
        echo(f"  note: {note}")
