"""The benchmarks still run to the end (they once stopped on an encoder-decoder preset
that refuses pipeline parallelism). Their speed is read from their output, not tested:
bench_cli runs its two commands once each here, and the others a sample of their sweeps
(FTMEM_BENCH_QUICK), enough to show they work."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from ftmem.presets import get_gpu

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_runs(path, capsys, monkeypatch):
    monkeypatch.setenv("FTMEM_BENCH_CLI_RUNS", "1")
    monkeypatch.setenv("FTMEM_BENCH_QUICK", "1")
    monkeypatch.setattr("sys.argv", [str(path)])
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip(), f"{path.name} printed nothing"


def test_the_estimate_sweeps_skip_and_count_refused_configurations():
    """bench_estimate's sweep code on a slice of both sweeps, with the configurations
    ftmem refused when the sweep once stopped on them (DeepSeek-V2's dense first block
    over two pipeline stages): every configuration is estimated or counted as refused,
    and the results' digest comes back."""
    bench = runpy.run_path(str(BENCHMARKS[0].with_name("bench_estimate.py")))
    gpu = get_gpu("a100-80gb")
    for name, configs in bench["_sweeps"](1).items():
        picked = (
            configs[::997]
            + [c for c in configs if c[0].name == "DeepSeek-V2" and c[2] and c[2].pp == 2][:2]
        )
        estimated, refused, _, _, digest = bench["run_sweep"](picked, gpu)
        assert estimated + refused == len(picked), name
        assert estimated > 0 and len(digest) == 16, name
