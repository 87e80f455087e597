"""How long the CLI takes to answer, against importing its own dependencies (a
benchmark, not a test).

    python benchmarks/bench_cli.py [RUNS] [--against OTHER/src]

Alternates RUNS runs (default 21; or ``FTMEM_BENCH_CLI_RUNS``) of a real ``ftmem
estimate`` in a fresh interpreter with RUNS runs of ``python -c "import typer, rich,
pydantic, yaml"``, one of each in turn so that the load of the machine weighs on both
alike, and prints both medians and their ratio (issue 19's goal: at most 1.3). A third
command, the smallest typer app that validates a pydantic model and prints a rich table,
shows the part of that ratio that any such CLI pays, and a fourth, one pydantic model
printed in a rich table without typer, the part that ftmem's fast path for the common
``estimate`` calls (ftmem.cli.fast) still pays. ``--against OTHER/src`` adds the
same ``ftmem estimate`` from another tree to the rotation (before and after a change).

Each command is timed twice: wall-clock, and the CPU time (user + system) its process
used (``resource.getrusage(RUSAGE_CHILDREN)``). On a machine shared with other jobs the
CPU time is the steadier of the two: waiting for a core does not count in it.
"""

from __future__ import annotations

import os
import resource
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
# a table loads rich's console. ftmem's common estimate calls skip typer (ftmem.cli.fast):
# their floor is MODEL_TABLE below.
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
# The same without typer: one pydantic model printed in a rich table, what ftmem's results
# and its table needed at the least while they were pydantic models (since 2026-12-03
# they are ftmem.validation's dataclasses, and the fast path imports no pydantic).
MODEL_TABLE_APP = """
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
class Run(BaseModel):
    method: str
table = Table("model", "method")
table.add_row("m", Run(method="qlora").method)
Console().print(table)
"""
MODEL_TABLE = [sys.executable, "-c", MODEL_TABLE_APP]


def _env(src: str | None = None) -> dict[str, str]:
    """This process's environment, with the ftmem being benchmarked (``src``, else this
    one) first on the path and bytecode caching on: an installed ftmem has its bytecode
    compiled, so compiling its sources on every run is not what a user waits for."""
    if src is None:
        spec = find_spec("ftmem")
        assert spec is not None and spec.origin is not None
        src = str(Path(spec.origin).parents[1])
    path = os.environ.get("PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": src + (os.pathsep + path if path else "")}


def _seconds(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu


def _arguments(args: list[str]) -> tuple[int, str | None]:
    other = None
    if "--against" in args:
        at = args.index("--against")
        other = args[at + 1]
        args = args[:at] + args[at + 2 :]
    runs = int(args[0]) if args and args[0].isdigit() else None
    return runs or int(os.environ.get(RUNS_ENV, "21")), other


def main() -> None:
    runs, other = _arguments(sys.argv[1:])
    env = _env()
    commands = {
        "cli": (CLI, env),
        "deps": (DEPS, env),
        "floor": (FLOOR, env),
        "model_table": (MODEL_TABLE, env),
    }
    if other is not None:
        commands["other"] = (CLI, _env(other))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for cmd, cmd_env in commands.values():
        _seconds(cmd, cmd_env)  # warm the file cache and write the bytecode: not counted
    for _ in range(runs):
        for name, (cmd, cmd_env) in commands.items():
            times[name].append(_seconds(cmd, cmd_env))
    wall = {name: statistics.median(t[0] for t in ts) * 1000 for name, ts in times.items()}
    cpu = {name: statistics.median(t[1] for t in ts) * 1000 for name, ts in times.items()}
    print(f"load average {os.getloadavg()[0]:.1f} at the end; medians of {runs} runs, wall | CPU")
    print(f"ftmem {' '.join(ARGS)}: {wall['cli']:.0f} | {cpu['cli']:.0f} ms")
    if other is not None:
        print(f"the same from {other}: {wall['other']:.0f} | {cpu['other']:.0f} ms")
    print(f"import typer, rich, pydantic, yaml: {wall['deps']:.0f} | {cpu['deps']:.0f} ms")
    print(
        f"a one-command typer app printing a pydantic value in a rich table: "
        f"{wall['floor']:.0f} | {cpu['floor']:.0f} ms"
    )
    print(
        f"a pydantic model printed in a rich table, no typer: "
        f"{wall['model_table']:.0f} | {cpu['model_table']:.0f} ms"
    )
    for label, ms in (("wall", wall), ("CPU", cpu)):
        line = (
            f"ratio ({label}): {ms['cli'] / ms['deps']:.2f} x the imports (goal: at most 1.3), "
            f"{ms['cli'] / ms['floor']:.2f} x the one-command app "
            f"(itself {ms['floor'] / ms['deps']:.2f} x the imports), "
            f"{ms['cli'] / ms['model_table']:.2f} x the model in a table "
            f"(itself {ms['model_table'] / ms['deps']:.2f} x the imports)"
        )
        if other is not None:
            line += f"; {other}: {ms['other'] / ms['deps']:.2f} x the imports"
        print(line)


if __name__ == "__main__":
    main()
