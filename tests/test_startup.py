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
    src = str(Path(ftmem.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("FTMEM_PRESETS", None)
    done = subprocess.run(
        [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120
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
