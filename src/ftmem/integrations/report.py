"""What the integrations and ``ftmem record`` say: the prediction in one line, the
measured step beside it, the numbers for a trainer's loggers, and the record, one
JSON-able dict in one format whoever writes it (docs/schema/record.schema.json).

Imports neither torch nor transformers: ``ftmem record`` builds its record here too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ftmem.errors import FtmemError
from ftmem.result import Estimate
from ftmem.units import format_bytes

RECORD_FORMAT = 1  # the version of the record's layout (docs/schema/record.schema.json)
LOG_PREFIX = "ftmem/"
# the distributions whose releases change what a step allocates, by their PyPI names
RECORDED_VERSIONS = (
    "ftmem",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "trl",
    "accelerate",
    "deepspeed",
    "lightning",
)
GIB = 2**30


class RunWillNotFitError(FtmemError, RuntimeError):
    """The estimate of a run, read from its live objects, exceeds the GPU's memory."""


@dataclass(frozen=True)
class Measured:
    """One measured training step (bytes). ``ftmem record`` fills what the user gives."""

    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None = None  # CUDA only
    # what nvidia-smi showed in use on the device (the callbacks: CUDA's total - free at
    # the measured step's end, preflight.read_cuda)
    device_bytes: int | None = None
    step: int | None = None
    batch_size: int | None = None  # the step's input_ids shape, as the model saw it
    seq_len: int | None = None
    micro_batches: int | None = None  # forward-backward passes of the step
    tracker: str | None = None  # cuda-allocator | dispatch (ftmem's CPU tracker) | user


def installed(dist: str) -> str | None:
    """The installed release of a distribution, without importing it."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {dist: installed(dist) for dist in RECORDED_VERSIONS}


def nvidia_smi() -> dict[str, Any] | None:
    """The first GPU's name, driver and memory as nvidia-smi reports them, or None
    where there is no nvidia-smi (or it fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    query = "--query-gpu=name,driver_version,memory.total"
    try:
        done = subprocess.run(
            [exe, query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        name, driver, mib = (x.strip() for x in done.stdout.splitlines()[0].split(","))
        return {"name": name, "driver": driver, "memory_bytes": int(mib) * 2**20}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def predicted(est: Estimate | None) -> dict[str, Any] | None:
    """The prediction's numbers for a record."""
    if est is None:
        return None
    mem = est.memory
    return {
        "peak_allocated_bytes": mem.peak_allocated_bytes,
        "peak_reserved_bytes": mem.peak_reserved_bytes,
        "device_bytes": mem.device_bytes,
        "peak_phase": mem.peak_phase,
        "batch_size": est.run.batch_size,
        "seq_len": est.run.seq_len,
        "fits": est.fits,
    }


def build_record(
    *,
    source: str,
    model: str | None,
    architecture: dict[str, Any] | None,
    settings: dict[str, Any] | None,
    read_from: dict[str, str] | None,
    estimate: Estimate | None,
    measured: Measured | None,
    notes: list[str],
    device: dict[str, Any],
) -> dict[str, Any]:
    """The one record format (docs/schema/record.schema.json), for ``ftmem record`` and
    the callbacks' ``record()``: the settings the estimate took, what it predicted, what
    was measured, with the libraries' versions and the device."""
    out: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "source": source,
        "model": model,
        "architecture": architecture,
        "settings": settings,
        "read_from": read_from,
        "predicted": predicted(estimate),
        "measured": asdict(measured) if measured is not None else None,
        "error_pct": error_pct(estimate, measured),
        "notes": list(notes),
        "versions": versions(),
        "device": device,
    }
    # a value that JSON cannot carry is a bug of the caller's, found here
    json.dumps(out, allow_nan=False)
    return out


def error_pct(est: Estimate | None, m: Measured | None) -> dict[str, float] | None:
    """(predicted - measured) / measured in %, for each number measured."""
    if est is None or m is None:
        return None
    pairs = {
        "peak_allocated": (m.peak_allocated_bytes, est.memory.peak_allocated_bytes),
        "peak_reserved": (m.peak_reserved_bytes, est.memory.peak_reserved_bytes),
        "device": (m.device_bytes, est.memory.device_bytes),
    }
    return {k: round(pct(got, want), 2) for k, (got, want) in pairs.items() if got}


def pct(measured: int, predicted: int) -> float:
    return 100.0 * (predicted - measured) / measured if measured else 0.0


def summary(est: Estimate, settings: dict[str, Any]) -> str:
    """The prediction, in one line."""
    what = f"{est.model.name}, {settings.get('method', 'full')}, batch {settings.get('batch_size')}"
    what += f" × {est.run.seq_len} tokens, {est.run.precision}"
    what += ", checkpointing" if est.run.grad_ckpt else ""
    mem = est.memory
    line = (
        f"ftmem: predicted peak {format_bytes(mem.peak_allocated_bytes)} allocated, "
        f"{format_bytes(mem.total_bytes)} on the device ({what})"
    )
    if est.gpu is not None and est.fits is not None:
        line += f"; {'fits' if est.fits else 'does NOT fit'} {est.gpu.get('name')}"
        line += f" ({format_bytes(int(est.gpu['memory_bytes']))})"
    return line


def not_fitting(est: Estimate, stopped: bool) -> str:
    """Why the run will not fit, in one sentence."""
    assert est.gpu is not None
    over = -(est.headroom_bytes or 0)
    size = format_bytes(int(est.gpu["memory_bytes"]))
    budget = (
        f"the {size} budget"
        if est.gpu.get("id") == "custom"
        else (f"the {est.gpu.get('name')}'s {size}")
    )
    what = "stopped before step 1" if stopped else "it will likely run out of memory"
    return (
        f"ftmem: this run needs {format_bytes(est.memory.total_bytes)} per GPU, "
        f"{format_bytes(over)} more than {budget}: {what} "
        "(`ftmem plan` or ftmem.plan(...) lists changes that make it fit)."
    )


def report_line(m: Measured, p: Estimate) -> str:
    """The measured step beside the prediction, in one line."""
    shape = f"batch {m.batch_size} × {m.seq_len} tokens" if m.seq_len else "its batch"
    if m.micro_batches and m.micro_batches > 1:
        shape += f", {m.micro_batches} micro-batches"
    got = m.peak_allocated_bytes or 0
    pred = p.memory.peak_allocated_bytes
    line = (
        f"ftmem: step {m.step} ({shape}): measured peak {format_bytes(got)}"
        f" allocated, predicted {format_bytes(pred)} ({pct(got, pred):+.1f} %)"
    )
    if m.peak_reserved_bytes is not None:
        line += (
            f"; reserved {format_bytes(m.peak_reserved_bytes)}, predicted "
            f"{format_bytes(p.memory.peak_reserved_bytes)}"
        )
    if m.device_bytes is not None:
        line += (
            f"; device {format_bytes(m.device_bytes)} (nvidia-smi), predicted "
            f"{format_bytes(p.memory.device_bytes)}"
        )
    if m.tracker == "dispatch":
        line += "; CPU: live tensor bytes (ftmem's tracker)"
    return line


def logged(m: Measured | None, p: Estimate | None) -> dict[str, float]:
    """What goes to a trainer's loggers (GiB, and the prediction's error in %)."""
    if m is None or p is None or m.peak_allocated_bytes is None:
        return {}
    out = {
        "peak_allocated_gib": m.peak_allocated_bytes / GIB,
        "predicted_peak_allocated_gib": p.memory.peak_allocated_bytes / GIB,
        "predicted_error_pct": pct(m.peak_allocated_bytes, p.memory.peak_allocated_bytes),
    }
    if m.peak_reserved_bytes is not None:
        out["peak_reserved_gib"] = m.peak_reserved_bytes / GIB
        out["predicted_peak_reserved_gib"] = p.memory.peak_reserved_bytes / GIB
    if m.device_bytes is not None:
        out["device_gib"] = m.device_bytes / GIB
        out["predicted_device_gib"] = p.memory.device_bytes / GIB
    return {LOG_PREFIX + k: v for k, v in out.items()}
