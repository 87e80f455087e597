"""How fast the searches answer (a benchmark, not a test).

    python benchmarks/bench_plan.py

Times `ftmem plan` (ftmem.api.plan) for full finetuning of several presets on a 24 GB
card and the `ftmem max` searches (ftmem.api.largest), as the CLI runs them, and prints
candidates evaluated per second of wall and of CPU time (the process's own: on a shared
machine the wall clock mostly measures the other jobs).
"""

from __future__ import annotations

import os
import time

from ftmem.api import largest, plan
from ftmem.presets import get_model

# FTMEM_BENCH_QUICK=1 (tests/test_benchmarks.py): one model, to show the benchmark runs
MODELS = ("llama2-7b", "llama2-13b", "llama3-8b", "mistral-7b", "llama2-70b")


def main() -> None:
    quick = os.environ.get("FTMEM_BENCH_QUICK") == "1"
    for model in MODELS[:1] if quick else MODELS:
        start, cpu = time.perf_counter(), time.process_time()
        found = plan(get_model(model), gpu="rtx4090", method="full", batch_size=4, seq_len=2048)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(
            f"plan {model:12s}: {elapsed * 1000:6.1f} ms, {found.evaluated:4d} of "
            f"{found.searched} candidates evaluated ({found.evaluated / elapsed:,.0f}/s, "
            f"{found.evaluated / cpu:,.0f} per CPU second), {len(found.fitting)} rows"
        )
    arch = get_model("llama3-8b")
    for key in ("batch_size", "seq_len", "lora_r"):
        start, cpu = time.perf_counter(), time.process_time()
        result = largest(arch, key, gpu="a100-80gb", method="lora")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(
            f"max {key:10s}: {result.value:>9,} in {elapsed * 1000:5.1f} ms "
            f"({result.evaluations} estimates, {cpu * 1000:5.1f} ms of CPU time)"
        )


if __name__ == "__main__":
    main()
