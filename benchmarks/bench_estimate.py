"""How many configurations a second the estimator evaluates (a benchmark, not a test).

    python benchmarks/bench_estimate.py

Sweeps models × methods × batch sizes × sequence lengths through the Python API's
core (``estimate_step``), then the same over multi-GPU strategies, and prints
configurations per second.
"""

from __future__ import annotations

import itertools
import os
import time

from ftmem.estimate import estimate_step
from ftmem.parallel import ParallelConfig
from ftmem.presets import get_gpu, model_presets
from ftmem.run import RunConfig


def main() -> None:
    # FTMEM_BENCH_QUICK=1 (tests/test_benchmarks.py): every preset, fewer settings, to
    # show the sweep runs to the end
    step = 24 if os.environ.get("FTMEM_BENCH_QUICK") == "1" else 1
    gpu = get_gpu("a100-80gb")
    archs = list(model_presets().values())
    runs = [
        RunConfig(method=m, batch_size=b, seq_len=s, grad_ckpt=g)
        for m, b, s, g in itertools.product(
            ("full", "lora", "qlora", "dora"), (1, 2, 4, 8), (512, 2048, 8192), (False, True)
        )
    ]
    start = time.perf_counter()
    n = 0
    for arch in archs:
        for run in runs[::step]:
            estimate_step(arch, run, gpu)
            n += 1
    elapsed = time.perf_counter() - start
    print(f"one GPU: {n} configurations in {elapsed:.2f} s: {n / elapsed:,.0f} per second")

    # many GPUs: strategies × GPU counts, per-GPU memory of the largest rank
    pars = [
        ParallelConfig(gpus=g, strategy=st, pp=pp)
        for st, g, pp in itertools.product(("ddp", "zero1", "zero3", "fsdp"), (2, 4, 8), (1, 2))
        if not (pp > 1 and st == "zero3")
    ]
    start = time.perf_counter()
    n = 0
    for arch in archs:
        # pipeline stages need an even layer count; encoder-decoders run data-parallel only
        if arch.num_layers % 2 or arch.encoder_decoder:
            continue
        for run in runs[:: 4 * step]:
            for par in pars[::step]:
                estimate_step(arch, run, gpu, par=par)
                n += 1
    elapsed = time.perf_counter() - start
    print(f"many GPUs: {n} configurations in {elapsed:.2f} s: {n / elapsed:,.0f} per second")


if __name__ == "__main__":
    main()
