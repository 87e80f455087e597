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
    from ftmem.api import merge_config
    from ftmem.merge import merge_estimate
    from ftmem.present.merge import merge_json, merge_lines
    from ftmem.sources import resolve_model
    from ftmem.units import parse_size

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
    if output_format == "json":
        echo(merge_json(arch, cfg, est))
        return
    for line in merge_lines(arch, cfg, est, units):
        echo(line)
