"""The GPU validation script's CPU-side parts: case list, estimates, the report table."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_validation.py"
spec = importlib.util.spec_from_file_location("gpu_validation", SCRIPT)
gpu_validation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_validation)


def test_dry_run_lists_every_case_with_its_estimate():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, check=True
    ).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == len(gpu_validation.CASES)
    assert all(r["estimated_peak_bytes"] > 0 for r in rows)


def test_markdown_report_computes_the_error():
    meta = {
        "date": "2026-11-28",
        "gpu": "NVIDIA H200, 570.00, 143771 MiB",
        "torch": "2.13.0",
        "cuda": "12.8",
        "context_bytes": 500 * 2**20,
    }
    results = [
        {
            "model": "llama3-8b",
            "method": "lora",
            "seq_len": 2048,
            "estimated_peak_bytes": 21 * 2**30,
            "measured_peak_bytes": 20 * 2**30,
            "estimated_reserved_bytes": 22 * 2**30,
            "max_memory_reserved_bytes": 25 * 2**30,
            "estimated_device_bytes": 23 * 2**30,
            "measured_device_bytes": 25 * 2**30 + 2**29,
        },
        {"model": "qwen2.5-3b", "method": "qlora", "error": "skipped: time budget"},
    ]
    text = gpu_validation.markdown_report(results, meta)
    assert "CUDA context 500 MiB" in text
    # (21 - 20) / 20, (22 - 25) / 25, (23 - 25.5) / 25.5
    assert (
        "| llama3-8b | method=lora, seq_len=2048 | 21.00 GiB | 20.00 GiB | +5.0% | "
        "22.00 GiB | 25.00 GiB | -12.0% | 23.00 GiB | 25.50 GiB | -9.8% |" in text
    )
    assert "skipped: time budget" in text


def test_errors_per_metric_class_from_a_fake_measurement():
    row = {
        "estimated_peak_bytes": 90,
        "measured_peak_bytes": 100,
        "estimated_reserved_bytes": 120,
        "max_memory_reserved_bytes": 100,
        "estimated_device_bytes": 100,
        "measured_device_bytes": None,  # a case whose device reading failed
    }
    assert gpu_validation.errors(row) == {
        "allocated_error": -0.1,
        "reserved_error": 0.2,
        "device_error": None,
    }


def test_dry_run_estimates_all_three_numbers_for_the_gpu():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, check=True
    ).stdout
    row = json.loads(out.splitlines()[0])
    # allocated <= reserved (the cache is never negative) < device (+ the CUDA context)
    assert row["estimated_peak_bytes"] <= row["estimated_reserved_bytes"]
    assert row["estimated_reserved_bytes"] < row["estimated_device_bytes"]
