"""How many configurations a second the estimator evaluates (a benchmark, not a test).

    python benchmarks/bench_estimate.py [--every N]
    python benchmarks/bench_estimate.py [--every N] --against OTHER/src [ROUNDS]

Sweeps models × methods × batch sizes × sequence lengths through the Python API's
core (``estimate_step``), then the same over multi-GPU strategies, and prints
configurations per second of CPU time (the process's own: on a shared machine the wall
clock mostly measures the other jobs) and of wall time. A configuration ftmem refuses
(InvalidInputError: a layout it does not model yet) is skipped and counted, as a user's
grid would skip it. ``--every N``: every N-th setting of each preset (the whole sweeps
take minutes; ``--against`` runs them ten times).

``--against`` compares two trees: it alternates ROUNDS runs (default 5) of both sweeps
in a fresh interpreter for this tree's ftmem and for the one under OTHER/src, one of
each in turn so that the machine's load weighs on both alike, prints each tree's median
and their ratio, and whether both trees gave the same estimates (a digest of every
result), so that a speed-up shows it moved no number.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import statistics
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

from ftmem.arch import Architecture
from ftmem.errors import InvalidInputError
from ftmem.estimate import estimate_step
from ftmem.hardware import Gpu
from ftmem.parallel import ParallelConfig
from ftmem.presets import get_gpu, model_presets
from ftmem.run import RunConfig

Config = tuple[Architecture, RunConfig, ParallelConfig | None]
Result = tuple[int, int, float, float, str]


def _sweeps(step: int) -> dict[str, list[Config]]:
    """The configurations of each sweep: (architecture, run, layout or None)."""
    archs = list(model_presets().values())
    runs = [
        RunConfig(method=m, batch_size=b, seq_len=s, grad_ckpt=g)
        for m, b, s, g in itertools.product(
            ("full", "lora", "qlora", "dora"), (1, 2, 4, 8), (512, 2048, 8192), (False, True)
        )
    ]
    # many GPUs: strategies × GPU counts, per-GPU memory of the largest rank
    pars = [
        ParallelConfig(gpus=g, strategy=st, pp=pp)
        for st, g, pp in itertools.product(("ddp", "zero1", "zero3", "fsdp"), (2, 4, 8), (1, 2))
        if not (pp > 1 and st == "zero3")
    ]
    return {
        "one GPU": [(arch, run, None) for arch in archs for run in runs[::step]],
        # pipeline stages need an even layer count; encoder-decoders run data-parallel only
        "many GPUs": [
            (arch, run, par)
            for arch in archs
            if not (arch.num_layers % 2 or arch.encoder_decoder)
            for run in runs[:: 4 * step]
            for par in pars[::step]
        ],
    }


def run_sweep(configs: list[Config], gpu: Gpu) -> Result:
    """Estimates every configuration: those estimated, those refused, CPU seconds, wall
    seconds, and a digest of the results (a refusal enters it as its error's type)."""
    digest = hashlib.sha256()
    refused = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for arch, run, par in configs:
        try:
            result = estimate_step(arch, run, gpu, par=par).model_dump_json()
        except InvalidInputError as e:
            refused += 1
            result = type(e).__name__
        digest.update(result.encode())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return len(configs) - refused, refused, cpu, wall, digest.hexdigest()[:16]


def _measure(step: int) -> dict[str, Result]:
    """Per sweep: run_sweep's figures."""
    gpu = get_gpu("a100-80gb")
    return {name: run_sweep(configs, gpu) for name, configs in _sweeps(step).items()}


def _print(results: dict[str, Result]) -> None:
    for name, (n, refused, cpu, wall, _) in results.items():
        print(
            f"{name}: {n} configurations: {n / cpu:,.0f} per second of CPU time "
            f"({n / wall:,.0f} per second of wall time); {refused} refused, skipped"
        )


def _child(src: str, step: int) -> dict[str, tuple[float, str]]:
    """One run of both sweeps in a fresh interpreter with ``src``'s ftmem: per sweep,
    configurations per CPU second and the results' digest."""
    env = {**os.environ, "PYTHONPATH": src}
    code = (
        f"import runpy, sys; sys.argv = ['bench', '--every', '{step}', '--child']; "
        f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout
    rows = [line.split("\t") for line in out.splitlines() if line.count("\t") == 2]
    return {name: (float(rate), digest) for name, rate, digest in rows}


def _against(other: str, rounds: int, step: int) -> None:
    spec = find_spec("ftmem")
    assert spec is not None and spec.origin is not None
    trees = {"this tree": str(Path(spec.origin).parents[1]), "other tree": other}
    rates: dict[tuple[str, str], list[float]] = {}
    digests: dict[str, set[str]] = {}
    for i in range(rounds):
        order = list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]
        for tree, src in order:
            for sweep, (rate, digest) in _child(src, step).items():
                rates.setdefault((sweep, tree), []).append(rate)
                digests.setdefault(sweep, set()).add(digest)
    for sweep in ("one GPU", "many GPUs"):
        mine = statistics.median(rates[sweep, "this tree"])
        theirs = statistics.median(rates[sweep, "other tree"])
        same = "same estimates" if len(digests[sweep]) == 1 else "ESTIMATES DIFFER"
        print(
            f"{sweep}: this tree {mine:,.0f}, other tree {theirs:,.0f} configurations per "
            f"CPU second (medians of {rounds}): {mine / theirs:.2f}x; {same}"
        )


def main() -> None:
    args = sys.argv[1:]
    step = 1
    if args[:1] == ["--every"] and len(args) > 1:
        step, args = int(args[1]), args[2:]
    # FTMEM_BENCH_QUICK=1 (tests/test_benchmarks.py): every preset, fewer settings, to
    # show the sweep runs to the end
    if os.environ.get("FTMEM_BENCH_QUICK") == "1":
        step = 24
    if args[:1] == ["--child"]:
        for name, (n, _, cpu, _, digest) in _measure(step).items():
            print(f"{name}\t{n / cpu}\t{digest}")
    elif args[:1] == ["--against"] and len(args) > 1:
        _against(args[1], int(args[2]) if len(args) > 2 else 5, step)
    else:
        _print(_measure(step))


if __name__ == "__main__":
    main()
