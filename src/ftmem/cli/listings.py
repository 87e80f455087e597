"""The listings: `ftmem schema`, `ftmem methods`, `ftmem models`, `ftmem gpus`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ftmem.cli.options import Units
from ftmem.cli.output import console
from ftmem.cli.root import app
from ftmem.cli.terminal import echo


@app.command()
def schema() -> None:
    """Print the JSON Schema of `ftmem estimate --format json`."""
    import json

    from ftmem.present.estimate import estimate_schema

    echo(json.dumps(estimate_schema(), indent=2))


@app.command()
def methods() -> None:
    """List the finetuning methods with what each trains and its source."""
    from ftmem.present.listings import methods_table

    console().print(methods_table())


@app.command()
def models(units: Units = "GiB") -> None:
    """List the model presets with their exact parameter counts."""
    from ftmem.present.listings import models_listing

    _print_listing(*models_listing(units))


@app.command()
def gpus(units: Units = "GiB") -> None:
    """List the GPU presets with the memory each reports."""
    from ftmem.present.listings import gpus_listing

    _print_listing(*gpus_listing(units))


def _print_listing(title: str, columns: list[Any], rows: Sequence[tuple[str, ...]]) -> None:
    from ftmem.present.listings import listing

    con = console()
    tbl, width = listing(title, columns, rows, con.width)
    con.print(tbl, width=max(width, con.width), crop=False)  # ids whole, even past the edge
