"""The benchmarks still run to the end (they once stopped on an encoder-decoder preset
that refuses pipeline parallelism). Their speed is read from their output, not tested:
bench_cli runs its two commands once each here, and the others a sample of their sweeps
(FTMEM_BENCH_QUICK), enough to show they work."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_runs(path, capsys, monkeypatch):
    monkeypatch.setenv("FTMEM_BENCH_CLI_RUNS", "1")
    monkeypatch.setenv("FTMEM_BENCH_QUICK", "1")
    monkeypatch.setattr("sys.argv", [str(path)])
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip(), f"{path.name} printed nothing"
