"""How fast the searches answer (a benchmark, not a test).

    python benchmarks/bench_plan.py

Times `make_plan` for full finetuning of several presets on a 24 GB card, the `max`
searches, and prints candidates evaluated per second.
"""

from __future__ import annotations

import os
import time

from ftmem import estimate
from ftmem.plan import make_plan
from ftmem.presets import get_model
from ftmem.search import largest_fitting

# FTMEM_BENCH_QUICK=1 (tests/test_benchmarks.py): one model, to show the benchmark runs
MODELS = ("llama2-7b", "llama2-13b", "llama3-8b", "mistral-7b", "llama2-70b")


def main() -> None:
    quick = os.environ.get("FTMEM_BENCH_QUICK") == "1"
    for model in MODELS[:1] if quick else MODELS:
        arch = get_model(model)
        start = time.perf_counter()
        plan = make_plan(
            lambda s, arch=arch: estimate(arch, gpu="rtx4090", **s),
            {"method": "full", "batch_size": 4, "seq_len": 2048},
        )
        elapsed = time.perf_counter() - start
        print(
            f"plan {model:12s}: {elapsed * 1000:6.1f} ms, {plan.evaluated:4d} of {plan.searched} "
            f"candidates evaluated ({plan.evaluated / elapsed:,.0f}/s), {len(plan.fitting)} rows"
        )
    arch = get_model("llama3-8b")
    for key, highest in (("batch_size", 2**16), ("seq_len", 2**21), ("lora_r", 1024)):
        start = time.perf_counter()
        result = largest_fitting(
            lambda n, key=key: estimate(arch, gpu="a100-80gb", method="lora", **{key: n}),
            1,
            highest,
        )
        elapsed = time.perf_counter() - start
        print(
            f"max {key:10s}: {result.value:>9,} in {elapsed * 1000:5.1f} ms "
            f"({result.evaluations} estimates)"
        )


if __name__ == "__main__":
    main()
