"""Measure realistic configurations on a CUDA GPU next to the estimate.

    python scripts/gpu_validation.py --out docs/gpu-validation      # on a GPU machine
    python scripts/gpu_validation.py --dry-run                     # list cases + estimates

For each case: build the model from its preset with random weights (no download),
run the steps with ftmem.measure on CUDA, and record torch.cuda.max_memory_allocated()
and max_memory_reserved() of the measured step, plus the CUDA context size (device
memory in use after CUDA initialisation, from torch.cuda.mem_get_info, before any
tensor is allocated). Writes <out>.json and <out>.md. Sized to finish within 8 minutes
on one H200; a case that fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from ftmem.estimate import estimate_step
from ftmem.presets import get_model
from ftmem.run import RunConfig

CASES: list[tuple[str, dict]] = [
    ("qwen2.5-0.5b", {"method": "full", "seq_len": 1024, "batch_size": 4}),
    ("qwen2.5-0.5b", {"method": "full", "seq_len": 1024, "batch_size": 4, "grad_ckpt": True}),
    ("qwen2.5-0.5b", {"method": "lora", "seq_len": 2048, "batch_size": 4}),
    ("qwen2.5-1.5b", {"method": "full", "seq_len": 1024, "batch_size": 2}),
    ("qwen2.5-1.5b", {"method": "lora", "seq_len": 2048, "batch_size": 2, "attn": "eager"}),
    ("qwen2.5-3b", {"method": "lora", "seq_len": 2048, "batch_size": 2}),
    # QLoRA loads through save_pretrained/from_pretrained: kept to small models
    ("qwen2.5-1.5b", {"method": "qlora", "seq_len": 2048, "batch_size": 2}),
    ("qwen2.5-3b", {"method": "qlora", "seq_len": 2048, "batch_size": 2, "grad_ckpt": True}),
    ("llama3-8b", {"method": "lora", "seq_len": 2048, "batch_size": 1}),
    ("llama3-8b", {"method": "lora", "seq_len": 2048, "batch_size": 2, "grad_ckpt": True}),
    ("mistral-7b", {"method": "full", "seq_len": 512, "batch_size": 1, "optimizer": "adamw-8bit"}),
    # an encoder-decoder: the memory-efficient kernel with a trained bias, bool dropout masks
    ("flan-t5-large", {"method": "full", "seq_len": 512, "target_len": 128, "batch_size": 8}),
    ("flan-t5-xl", {"method": "lora", "seq_len": 512, "target_len": 128, "batch_size": 8}),
]
TIME_BUDGET_S = 420  # stop starting new cases after 7 minutes (the device call allows 8)


def _context_bytes() -> int:
    import torch

    torch.cuda.init()
    free, total = torch.cuda.mem_get_info()
    return total - free - torch.cuda.memory_reserved()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/gpu-validation")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    results = []
    context = None
    if not args.dry_run:
        context = _context_bytes()
    started_all = time.time()
    for preset, settings in CASES:
        if not args.dry_run and time.time() - started_all > TIME_BUDGET_S:
            results.append({"model": preset, **settings, "error": "skipped: time budget"})
            continue
        arch = get_model(preset)
        run = RunConfig(precision="bf16", device="cuda", **{"attn": "sdpa", **settings})
        est = estimate_step(arch, run, overhead_bytes=0).memory
        row = {
            "model": preset,
            **settings,
            "estimated_peak_bytes": est.peak_allocated_bytes,
            "estimated_phase": est.peak_phase,
        }
        if not args.dry_run:
            import torch

            from ftmem.measure import measure

            started = time.time()
            try:
                got = measure(arch, run, device="cuda", steps=args.steps)
                row.update(
                    measured_peak_bytes=got.peak_allocated_bytes,
                    measured_phase=got.peak_phase,
                    max_memory_reserved_bytes=torch.cuda.max_memory_reserved(),
                    activations_bytes=got.activations_bytes,
                    estimated_activations_bytes=est.activations_bytes,
                )
            except Exception as exc:  # record and go on: one case must not sink the run
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            row["seconds"] = round(time.time() - started, 1)
            torch.cuda.empty_cache()
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.dry_run:
        return 0
    import torch

    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    meta = {
        "gpu": smi,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "context_bytes": context,
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    Path(args.out + ".md").write_text(markdown_report(results, meta))
    return 0


def markdown_report(results: list[dict], meta: dict) -> str:
    """The committed table: estimate vs torch.cuda.max_memory_allocated() per case."""
    context = meta.get("context_bytes") or 0
    lines = [
        f"# GPU validation ({meta['date']})",
        "",
        f"{meta['gpu']}; torch {meta['torch']} (CUDA {meta['cuda']}); "
        f"CUDA context {context / 2**20:.0f} MiB",
        "",
        "| model | settings | estimated peak | measured peak | error | reserved |",
        "|---|---|---:|---:|---:|---:|",
    ]
    run_fields = set(RunConfig.model_fields)
    for r in results:
        settings = ", ".join(f"{k}={v}" for k, v in r.items() if k in run_fields)
        if "measured_peak_bytes" in r:
            est, got = r["estimated_peak_bytes"], r["measured_peak_bytes"]
            lines.append(
                f"| {r['model']} | {settings} | {est / 2**30:.2f} GiB | {got / 2**30:.2f} GiB | "
                f"{(est - got) / got:+.1%} | {r['max_memory_reserved_bytes'] / 2**30:.2f} GiB |"
            )
        else:
            lines.append(f"| {r['model']} | {settings} | | {r.get('error', 'failed')} | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
