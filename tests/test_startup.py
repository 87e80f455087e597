"""`ftmem estimate` loads only what an estimate needs (issue 19: the CLI took 4x the
import of its dependencies, partly by importing every module). Speed itself is measured
by benchmarks/bench_cli.py, not tested."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ftmem

# what `ftmem estimate PRESET --gpu GPU` has no use for
NOT_NEEDED = (
    "ftmem.budget",
    "ftmem.frameworks",
    "ftmem.merge",
    "ftmem.serve",
    "ftmem.distill",
    "ftmem.present.explain",
    "ftmem.present.emit",
    "ftmem.search",
    "ftmem.present.plot",
    "ftmem.measure",
    "xml.etree.ElementTree",
    # the command line is read by ftmem.cli.fast, without typer (and its click)
    "typer",
    # one call site each, for what a shipped preset on one GPU never has
    "ftmem.gemini",  # ColossalAI's GeminiPlugin
    "ftmem.fsdp_init",  # a framework that wraps a CPU-held model with FSDP
    "ftmem.hub_names",  # a Hub id that is not a preset
    "ftmem.safetensors_headers",  # a local model folder
    "ftmem.plan",  # `ftmem plan`'s levers
    # what the table never needs: JSON (--format json), the suggestions of an unknown
    # name (difflib), and logging, which only the libraries of `ftmem measure` write to
    # (ftmem.cli.terminal.quiet_libraries: not on the fast path, which imports none)
    "json",
    "difflib",
    "logging",
    "torch",
    "transformers",
    # PyYAML is not imported either once the presets' values are stored (a first run):
    # tests/test_preset_values.py
)

CODE = """
import sys
from ftmem.cli import main
try:
    main(["estimate", "llama2-13b", "--method", "qlora", "--gpu", "rtx4090"])
except SystemExit:
    pass
print("LOADED", *sorted(sys.modules))
"""


def test_estimate_loads_only_what_it_needs():
    done = subprocess.run(
        [sys.executable, "-c", CODE], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "FITS" in done.stdout  # it did estimate
    loaded = set(done.stdout.split("LOADED", 1)[1].split())
    assert "ftmem.estimate" in loaded
    assert not loaded & set(NOT_NEEDED), sorted(loaded & set(NOT_NEEDED))


def test_the_lazy_names_still_import():
    from ftmem import check_budgets, read_framework_config

    assert callable(check_budgets) and callable(read_framework_config)
    assert ftmem.estimate.__module__ == "ftmem.api"  # the function, not the module
    assert ftmem.plan.__module__ == "ftmem.api"


GC_CODE = """
import gc, sys
import contextlib, importlib, types, typing  # the standard library's, before ftmem's own
gc.collect()  # the counts from zero: the passes after this one are ftmem's
# a pass once ftmem's option records load is over the objects the start-up creates (the
# core's modules, pydantic's), until they are frozen
passes = []


def seen(phase, info):
    if phase == "stop" and "ftmem.cli.option_specs" in sys.modules:
        passes.append(gc.get_freeze_count())


gc.callbacks.append(seen)
from ftmem.cli import main
try:
    main(["estimate", "llama2-13b", "--method", "qlora", "--gpu", "rtx4090"])
except SystemExit:
    pass
print("PASSES", passes.count(0), gc.isenabled(), gc.get_freeze_count())
"""


def test_the_cli_starts_without_collecting():
    """Start-up creates long-lived objects and next to no garbage (ftmem.paused_gc): the
    collector makes no pass over them while the CLI imports and runs (they are frozen
    after), and is on again after."""
    done = subprocess.run(
        [sys.executable, "-c", GC_CODE], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    passes, enabled, frozen = done.stdout.split("PASSES", 1)[1].split()
    assert (passes, enabled) == ("0", "True")
    assert int(frozen) > 30_000  # rich's, yaml's and ftmem's objects (46,000 on 2026-12-03)


def test_importing_ftmem_leaves_the_collector_alone():
    """Only the CLI pauses the collector; a program that imports ftmem and estimates keeps
    its own (nothing frozen, still on)."""
    code = (
        "import gc, ftmem; ftmem.estimate('gpt2', gpu='t4'); "
        "print('STATE', gc.isenabled(), gc.get_freeze_count())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("STATE", 1)[1].split() == ["True", "0"]


def test_the_package_names_are_the_api_functions():
    """ftmem.estimate and ftmem.plan are both functions and modules: the package keeps the
    functions whichever loads first (the import system binds a submodule on its package)."""
    code = (
        "import ftmem.estimate, ftmem.plan, ftmem.search; import ftmem; "
        "from ftmem import estimate, plan; "
        "print('KINDS', *(type(x).__name__ for x in (estimate, plan, ftmem.estimate, ftmem.plan)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("KINDS", 1)[1].split() == ["function"] * 4


def test_options_left_out_build_no_coercion():
    """typer coerces None to None (or () for a repeated option) without its pydantic
    adapter (typer/_coercion.py, RuntimeParam.coerce): an option the user did not give,
    whose default is None, never builds one; the ones given are coerced as typer does."""
    import typer

    from ftmem.cli import app
    from ftmem.cli.root import _NoneFirst

    command = typer.main.get_command(app)
    given = {"method": "qlora", "gpu": "rtx4090"}
    args = ["estimate", "llama2-13b", *(f"--{k}={v}" for k, v in given.items())]
    ctx = command.make_context("ftmem", list(args))
    name, sub, rest = command.resolve_command(ctx, list(args))
    sub_ctx = sub.make_context(name, rest, parent=ctx)
    params = {p.name: p for p in sub.params}
    assert sub_ctx.params["method"] == "qlora" and sub_ctx.params["gpu"] == "rtx4090"
    given_names = {"model", *given}
    left_out = [p for p in params.values() if p.default is None and p.name not in given_names]
    if not hasattr(params["method"], "_runtime_param"):  # a typer before 0.2x: no adapters
        return
    assert len(left_out) > 40  # most of estimate's options
    assert all(isinstance(p._runtime_param, _NoneFirst) for p in left_out)
    assert all(sub_ctx.params[p.name] in (None, ()) for p in left_out)
    assert not any(isinstance(params[n]._runtime_param, _NoneFirst) for n in given_names)


def _env() -> dict[str, str]:
    src = str(Path(ftmem.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("FTMEM_PRESETS", None)
    return env


def test_measure_keeps_the_collector_running():
    """`ftmem measure` runs real models: their reference cycles are collected as in the
    user's script, so the pause that speeds up the estimate commands is not applied."""
    from contextlib import nullcontext

    from ftmem.cli.root import collector_pause

    assert isinstance(collector_pause(["measure", "gpt2"]), nullcontext)
    assert not isinstance(collector_pause(["estimate", "gpt2"]), nullcontext)
