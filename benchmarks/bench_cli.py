"""How long the CLI takes to answer, against importing its own dependencies (a
benchmark, not a test).

    python benchmarks/bench_cli.py [RUNS]

Alternates RUNS runs (default 21; or ``FTMEM_BENCH_CLI_RUNS``) of a real ``ftmem
estimate`` in a fresh interpreter with RUNS runs of ``python -c "import typer, rich,
pydantic, yaml"``, one of each in turn so that the load of the machine weighs on both
alike, and prints both medians and their ratio (issue 19's goal: at most 1.3). A third
command, the smallest typer app that validates a pydantic model and prints a rich table,
shows the part of that ratio that any such CLI pays.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

RUNS_ENV = "FTMEM_BENCH_CLI_RUNS"
ARGS = ["estimate", "llama2-13b", "--method", "qlora", "--gpu", "rtx4090"]
# what the `ftmem` console script runs
CLI = [sys.executable, "-c", "import sys; from ftmem.cli import main; main(sys.argv[1:])", *ARGS]
DEPS = [sys.executable, "-c", "import typer, rich, pydantic, yaml"]
# The least any typer + pydantic + rich command pays: typer builds its options through
# pydantic, a first model class loads pydantic's schema machinery (and its plugin scan),
# a table loads rich's console. ftmem cannot start faster than this.
FLOOR_APP = """
import typer
app = typer.Typer()
@app.callback()
def root() -> None: ...
@app.command()
def estimate(model: str, method: str = "full", gpu: str = "a100") -> None:
    from pydantic import BaseModel
    from rich.console import Console
    from rich.table import Table
    class Run(BaseModel):
        method: str
    table = Table("model", "method")
    table.add_row(model, Run(method=method).method)
    Console().print(table)
app(["estimate", "m", "--method", "qlora"], standalone_mode=False)
"""
FLOOR = [sys.executable, "-c", FLOOR_APP]


def _env() -> dict[str, str]:
    """This process's environment, with the ftmem being benchmarked first on the path
    and bytecode caching on: an installed ftmem has its bytecode compiled, so compiling
    its sources on every run is not what a user waits for."""
    spec = find_spec("ftmem")
    assert spec is not None and spec.origin is not None
    src = str(Path(spec.origin).parents[1])
    path = os.environ.get("PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": src + (os.pathsep + path if path else "")}


def _seconds(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else None
    runs = runs or int(os.environ.get(RUNS_ENV, "21"))
    env = _env()
    commands = {"cli": CLI, "deps": DEPS, "floor": FLOOR}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for cmd in commands.values():
        _seconds(cmd, env)  # warm the file cache and write the bytecode: not counted
    for _ in range(runs):
        for name, cmd in commands.items():
            times[name].append(_seconds(cmd, env))
    ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
    print(f"ftmem {' '.join(ARGS)}: median {ms['cli']:.0f} ms of {runs} runs")
    print(f"import typer, rich, pydantic, yaml: median {ms['deps']:.0f} ms")
    print(
        f"a one-command typer app printing a pydantic value in a rich table: median "
        f"{ms['floor']:.0f} ms ({ms['floor'] / ms['deps']:.2f} x the imports)"
    )
    print(
        f"ratio: {ms['cli'] / ms['deps']:.2f} x the imports (goal: at most 1.3), "
        f"{ms['cli'] / ms['floor']:.2f} x the one-command app"
    )


if __name__ == "__main__":
    main()
