"""Measure realistic configurations on a CUDA GPU next to the estimate.

    python scripts/gpu_validation.py --out docs/gpu-validation      # on a GPU machine
    python scripts/gpu_validation.py --dry-run      # list the context probes, cases + estimates

For each case: build the model from its preset with random weights (no download),
run the steps with ftmem.measure on CUDA, and record the three numbers of the measured
step next to the estimate's (for --gpu, default h200): torch.cuda.max_memory_allocated()
against peak_allocated_bytes, max_memory_reserved() against peak_reserved_bytes, and the
device memory in use after the step (total - free of torch.cuda.mem_get_info, what
nvidia-smi shows) against device_bytes; plus the CUDA context size (device memory in use
after CUDA initialisation, before any tensor is allocated). Writes <out>.json and
<out>.md. Sized to finish within 8 minutes on one H200; a case that fails is recorded
with its error and the run goes on.

First, before this process touches CUDA, the context probes (scripts/context_probe.py,
issue 16): each module-loading variant in a fresh process, the device memory outside
PyTorch's allocator after CUDA initialisation, a matmul and a tiny training step, next
to nvidia-smi's reading. The outputs are rewritten after the probes and after every
case, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from ftmem.estimate import estimate_step
from ftmem.presets import get_gpu, get_model
from ftmem.run import RunConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the probe module beside this file
import context_probe

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
    parser.add_argument("--gpu", default="h200", help="the GPU preset the estimates are for")
    args = parser.parse_args()

    results: list[dict] = []
    meta: dict = {}
    started_all = time.time()
    if args.dry_run:
        for line in context_probe.dry_run_lines():
            print(json.dumps(line), flush=True)
    else:
        # before this process makes a context of its own: nvidia-smi counts every process
        meta = _meta(context_probe.run_probes())
        _write(args.out, results, meta)
        meta["context_bytes"] = _context_bytes()
    for preset, settings in CASES:
        if not args.dry_run and time.time() - started_all > TIME_BUDGET_S:
            results.append({"model": preset, **settings, "error": "skipped: time budget"})
            continue
        arch = get_model(preset)
        # the process's own allocator options, which the measured steps run under
        alloc_conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
        run = RunConfig(
            precision="bf16", device="cuda", alloc_conf=alloc_conf, **{"attn": "sdpa", **settings}
        )
        est = estimate_step(arch, run, gpu=get_gpu(args.gpu)).memory
        row = {
            "model": preset,
            **settings,
            "estimated_peak_bytes": est.peak_allocated_bytes,
            "estimated_reserved_bytes": est.peak_reserved_bytes,
            "estimated_device_bytes": est.device_bytes,
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
                    max_memory_reserved_bytes=got.peak_reserved_bytes,
                    measured_device_bytes=got.device_bytes,
                    activations_bytes=got.activations_bytes,
                    estimated_activations_bytes=est.activations_bytes,
                )
                row.update(errors(row))
            except Exception as exc:  # record and go on: one case must not sink the run
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            row["seconds"] = round(time.time() - started, 1)
            torch.cuda.empty_cache()
        results.append(row)
        print(json.dumps(row), flush=True)
        if not args.dry_run:
            _write(args.out, results, meta)
    return 0


def _meta(context_probes: dict) -> dict:
    import torch

    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "gpu": smi,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "context_bytes": None,
        "date": time.strftime("%Y-%m-%d"),
        "context_probes": context_probes,
    }


def _write(out: str, results: list[dict], meta: dict) -> None:
    Path(out + ".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    Path(out + ".md").write_text(markdown_report(results, meta))


# (metric class, the estimate's field in a row, the measurement's)
COMPARED = (
    ("allocated", "estimated_peak_bytes", "measured_peak_bytes"),
    ("reserved", "estimated_reserved_bytes", "max_memory_reserved_bytes"),
    ("device", "estimated_device_bytes", "measured_device_bytes"),
)


def errors(row: dict) -> dict[str, float | None]:
    """(estimate - measured) / measured per metric class; None where either is missing."""
    out: dict[str, float | None] = {}
    for name, est_key, got_key in COMPARED:
        est, got = row.get(est_key), row.get(got_key)
        out[f"{name}_error"] = (est - got) / got if est is not None and got else None
    return out


def _pair(row: dict, est_key: str, got_key: str, error: float | None) -> str:
    est, got = row.get(est_key), row.get(got_key)
    if est is None or got is None or error is None:
        return " | | "
    return f"{est / 2**30:.2f} GiB | {got / 2**30:.2f} GiB | {error:+.1%}"


def markdown_report(results: list[dict], meta: dict) -> str:
    """The committed table: each case's three estimated numbers against
    max_memory_allocated(), max_memory_reserved() and the device memory in use."""
    context = meta.get("context_bytes")
    context_text = "not measured" if context is None else f"{context / 2**20:.0f} MiB"
    head = " | ".join(f"{c} estimated | {c} measured | {c} error" for c, _, _ in COMPARED)
    lines = [
        f"# GPU validation ({meta['date']})",
        "",
        f"{meta['gpu']}; torch {meta['torch']} (CUDA {meta['cuda']}); CUDA context {context_text}",
        "",
        f"| model | settings | {head} |",
        "|---|---|" + "---:|" * 3 * len(COMPARED),
    ]
    run_fields = set(RunConfig.model_fields)
    for r in results:
        settings = ", ".join(f"{k}={v}" for k, v in r.items() if k in run_fields)
        if "measured_peak_bytes" in r:
            errs = errors(r)
            cells = " | ".join(
                _pair(r, est_key, got_key, errs[f"{name}_error"])
                for name, est_key, got_key in COMPARED
            )
            lines.append(f"| {r['model']} | {settings} | {cells} |")
        else:
            blanks = " | " * (3 * len(COMPARED) - 1)
            lines.append(f"| {r['model']} | {settings} | {r.get('error', 'failed')}{blanks}|")
    text = "\n".join(lines) + "\n"
    if meta.get("context_probes"):
        text += "\n" + context_probe.markdown_section(meta["context_probes"])
    return text


if __name__ == "__main__":
    sys.exit(main())
