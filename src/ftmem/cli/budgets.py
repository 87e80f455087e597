"""`ftmem check`: named runs against memory budgets, for CI."""

from __future__ import annotations

from typing import Annotated

import typer

from ftmem.cli.errors import EXIT_DOES_NOT_FIT
from ftmem.cli.options import Quiet, Units
from ftmem.cli.output import console, write_file
from ftmem.cli.root import app
from ftmem.cli.terminal import echo
from ftmem.errors import FtmemError


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
    results = check_budgets(budgets)
    reports = {
        "--json": (json_out, results_json(results)),
        "--junit": (junit_out, results_junit(results, budgets)),
    }
    for out, text in reports.values():
        if out is not None and out != "-":
            write_file(out, text, inputs=[budgets])
    if to_stdout:  # the report alone on stdout, for a pipe
        echo(reports[to_stdout[0]][1])
    elif not quiet:
        console().print(budget_table(results, units))
    if os.environ.get("GITHUB_ACTIONS") == "true" and not quiet:
        # the runner reads workflow commands on stderr too: there when stdout is a report
        for line in github_annotations(results, budgets):
            echo(line, err=bool(to_stdout))
    failed = [r for r in results if not r.passed]
    if not to_stdout and not quiet:
        echo(f"{len(results) - len(failed)} of {len(results)} runs within budget.")
    if failed:
        raise typer.Exit(EXIT_DOES_NOT_FIT)
