"""`ftmem measure --device cuda` on a machine without CUDA, and the rows it would print
with a measurement (a fake one here: no GPU on the test machine)."""

import subprocess
import sys

import pytest

import ftmem
from ftmem.measure import Measurement
from ftmem.present.measure import measured_rows


def _ftmem(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ftmem.cli", *args], capture_output=True, text=True
    )


def _cuda_here() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_here(), reason="this machine has a CUDA GPU")
def test_measure_on_cuda_without_a_gpu_is_one_sentence():
    out = _ftmem("measure", "gpt2", "--device", "cuda")
    assert out.returncode == 2 and out.stdout == ""
    assert "--device cuda needs" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, words",
    [
        (["--snapshot", "s.pickle"], "add --device cuda"),
        (["--device", "cuda", "--snapshot", "/no/such/folder/s.pickle"], "does not exist"),
    ],
)
def test_snapshot_needs_cuda_and_a_folder(args, words):
    out = _ftmem("measure", "gpt2", *args)
    assert out.returncode == 2 and out.stdout == ""
    assert words in out.stderr and len(out.stderr.strip().splitlines()) == 1


def _fake(reserved: int | None, device: int | None) -> Measurement:
    return Measurement(
        weights_bytes=1,
        buffers_bytes=0,
        n_params=1,
        n_trainable_params=1,
        gradients_bytes=2,
        optimizer_states_bytes=3,
        activations_bytes=4,
        forward_retained_bytes=0,
        baseline_bytes=0,
        peak_allocated_bytes=5,
        peak_phase="backward",
        phase_peaks={},
        peak_reserved_bytes=reserved,
        device_bytes=device,
    )


def test_cuda_rows_put_reserved_and_device_next_to_the_estimate():
    est = ftmem.estimate("gpt2", gpu="h200", batch_size=2, seq_len=256).memory
    rows = {k: (e, g) for k, e, g in measured_rows(est, _fake(7 * 2**30, 8 * 2**30))}
    assert rows["peak_reserved"] == (est.peak_reserved_bytes, 7 * 2**30)
    assert rows["device"] == (est.device_bytes, 8 * 2**30)
    assert rows["peak_allocated"] == (est.peak_allocated_bytes, 5)


def test_cpu_rows_have_no_reserved_or_device():
    est = ftmem.estimate("gpt2", batch_size=2, seq_len=256).memory
    keys = [k for k, _, _ in measured_rows(est, _fake(None, None))]
    assert "peak_reserved" not in keys and "device" not in keys


@pytest.mark.parametrize(
    "name, total, preset",
    [
        ("NVIDIA H200", 150_109_945_856, "h200"),
        ("NVIDIA H100 80GB HBM3", 85_045_477_376, "h100-80gb"),
        ("NVIDIA A100-SXM4-40GB", 42_405_855_232, "a100-40gb"),
        ("NVIDIA L40S", 47_803_596_800, "l40s"),  # l4 matches the name too, not the memory
        ("Some Other GPU", 10**10, None),
    ],
)
def test_the_estimate_is_for_the_gpu_measured_on(monkeypatch, name, total, preset):
    import ftmem.measure
    from ftmem.cli.measure import _measured_gpu

    monkeypatch.setattr(ftmem.measure, "cuda_device", lambda: (name, total))
    gpu = _measured_gpu()
    assert (gpu.id if gpu else None) == preset
