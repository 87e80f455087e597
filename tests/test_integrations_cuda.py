"""The callbacks' CUDA path (issue 20: "the report after N steps carries the measured
numbers ... CUDA counters on a GPU"), tested without a GPU.

What is faked, and why: this suite runs on CPU-only machines (CI has no GPU), so the
five ``torch.cuda`` functions the measured step calls (``synchronize``,
``reset_peak_memory_stats``, ``max_memory_allocated``, ``max_memory_reserved``,
``mem_get_info``) are replaced by :class:`FakeCuda`, whose counters say numbers no
CPU run produces. The trainers themselves run for real on the CPU; ``device="cuda"``
(a setting given to the callback, which wins over the parameters' device) sends the
callback down its CUDA branch. What is checked is the wiring: the peaks are reset when
the measured step starts, read when it ends, and the numbers read are the ones in the
report line, the loggers' metrics and the record. ``torch.cuda.is_available`` is left
alone while a trainer runs (faking it would make the trainers try to use a GPU); the
last two tests fake it with ``get_device_properties`` where no trainer runs, for the
budget taken from the device and the record's device. That the real counters
are what a GPU run measures is the accuracy suite's business on a GPU machine.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from ftmem.integrations import preflight, report  # noqa: E402
from ftmem.integrations.hf import FtmemCallback, RunWillNotFitError  # noqa: E402

from .test_integrations_hf import Recorder, Rows, arguments, tiny_llama, with_lora  # noqa: E402

GIB = 2**30
# the stand-in device: numbers no CPU run of the tiny model could give (it measures
# about 1.3 MiB), each distinct so that a swapped pair would show
ALLOCATED, RESERVED = 3 * GIB + 5, 4 * GIB + 7
TOTAL, FREE = 80 * GIB, 75 * GIB - 11  # used: 5 GiB + 11 bytes
USED = TOTAL - FREE


class FakeCuda:
    """torch.cuda's allocator counters and the driver's free/total query, for a device
    that is not there. The peaks read are the ones since the last reset; a read
    before any reset is a wiring bug, and fails."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def synchronize(self, device: Any = None) -> None:
        self.calls.append("synchronize")

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self.calls.append("reset")

    def max_memory_allocated(self, device: Any = None) -> int:
        assert "reset" in self.calls, "peak read without a reset at the step's start"
        self.calls.append("allocated")
        return ALLOCATED

    def max_memory_reserved(self, device: Any = None) -> int:
        self.calls.append("reserved")
        return RESERVED

    def mem_get_info(self, device: Any = None) -> tuple[int, int]:
        self.calls.append("mem_get_info")
        return FREE, TOTAL


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    fake = FakeCuda()
    for name in ("synchronize", "reset_peak_memory_stats", "max_memory_allocated",
                 "max_memory_reserved", "mem_get_info"):  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    return fake


def test_read_cuda_takes_the_peaks_and_the_device_figure() -> None:
    fake = FakeCuda()
    preflight.start_cuda(fake)
    assert preflight.read_cuda(fake) == (ALLOCATED, RESERVED, USED, "cuda-allocator")
    # synchronised before the reset and before the reads: kernels still running count
    assert fake.calls == ["synchronize", "reset", "synchronize", "allocated", "reserved",
                          "mem_get_info"]  # fmt: skip


def test_read_cuda_without_a_driver_query_has_no_device_figure() -> None:
    class NoDriver(FakeCuda):
        def mem_get_info(self, device: Any = None) -> tuple[int, int]:
            raise RuntimeError("CUDA driver error: the query is not supported")

    fake = NoDriver()
    preflight.start_cuda(fake)
    assert preflight.read_cuda(fake) == (ALLOCATED, RESERVED, None, "cuda-allocator")


def assert_cuda_numbers(callback: Any, metrics: dict[str, float]) -> None:
    """The faked counters, unchanged, in the measurement, the line, the loggers' metrics
    and the record."""
    m, p = callback.measured, callback.predicted
    assert m is not None and p is not None
    assert (m.peak_allocated_bytes, m.peak_reserved_bytes, m.device_bytes, m.tracker) == (
        ALLOCATED,
        RESERVED,
        USED,
        "cuda-allocator",
    )
    assert metrics["ftmem/peak_allocated_gib"] == pytest.approx(ALLOCATED / GIB)
    assert metrics["ftmem/peak_reserved_gib"] == pytest.approx(RESERVED / GIB)
    assert metrics["ftmem/device_gib"] == pytest.approx(USED / GIB)
    assert metrics["ftmem/predicted_device_gib"] == pytest.approx(p.memory.device_bytes / GIB)
    line = callback.report_line()
    assert "measured peak 3.00 GiB allocated" in line
    assert "; reserved 4.00 GiB, predicted " in line
    assert "; device 5.00 GiB (nvidia-smi), predicted " in line
    assert "CPU" not in line
    record = callback.record()
    assert record["measured"]["peak_reserved_bytes"] == RESERVED
    assert record["measured"]["device_bytes"] == USED
    assert record["measured"]["tracker"] == "cuda-allocator"
    assert set(record["error_pct"]) == {"peak_allocated", "peak_reserved", "device"}
    # (predicted - measured) / measured, by hand from the record's own two numbers
    want = 100 * (record["predicted"]["device_bytes"] - USED) / USED
    assert record["error_pct"]["device"] == pytest.approx(want, abs=0.01)


def test_hf_callback_reports_the_cuda_counters(
    tmp_path: Path, fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report.shutil, "which", lambda _: None)  # no nvidia-smi here
    callback = FtmemCallback(report_after=2, quiet=True, gpu="h100", device="cuda")
    recorder = Recorder()
    trainer = transformers.Trainer(
        model=with_lora(tiny_llama()),
        args=arguments(tmp_path),
        train_dataset=Rows(),
        callbacks=[recorder, callback],
    )
    trainer.train()
    # one reset (step 2's start) and one read (its end): step 1 is not measured
    assert fake_cuda.calls.count("reset") == 1 and fake_cuda.calls.count("allocated") == 1
    assert callback.measured is not None and callback.measured.step == 2
    logged = [x for x in recorder.logs if "ftmem/peak_allocated_gib" in x]
    assert len(logged) == 1
    assert_cuda_numbers(callback, logged[0])


def test_lightning_callback_reports_the_cuda_counters(
    tmp_path: Path, fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("lightning")
    from ftmem.integrations.lightning import FtmemCallback as LightningCallback

    from .test_integrations_lightning import LitLlama, fit

    monkeypatch.setattr(report.shutil, "which", lambda _: None)
    callback = LightningCallback(report_after=2, quiet=True, gpu="h100", device="cuda")
    _, recorder = fit(LitLlama(with_lora(tiny_llama())), callback, tmp_path)
    assert fake_cuda.calls.count("reset") == 1 and fake_cuda.calls.count("allocated") == 1
    logged = [x for step, x in recorder.metrics if "ftmem/peak_allocated_gib" in x]
    assert len(logged) == 1
    assert_cuda_numbers(callback, logged[0])


def test_the_cpu_tracker_is_used_off_cuda(tmp_path: Path, fake_cuda: FakeCuda) -> None:
    """The same run without device="cuda": the CPU tracker measures, CUDA is not asked."""
    callback = FtmemCallback(report_after=2, quiet=True)
    transformers.Trainer(
        model=with_lora(tiny_llama()), args=arguments(tmp_path), train_dataset=Rows(),
        callbacks=[callback],
    ).train()  # fmt: skip
    assert fake_cuda.calls == []
    m = callback.measured
    assert m is not None and m.tracker == "dispatch"
    assert (m.peak_reserved_bytes, m.device_bytes) == (None, None)
    assert m.peak_allocated_bytes is not None and m.peak_allocated_bytes < GIB


def fake_device(monkeypatch: pytest.MonkeyPatch, total: int) -> None:
    """torch.cuda's device properties for a device that is not there (no trainer runs
    while they are faked: is_available would send it to the GPU)."""
    props = SimpleNamespace(name="Stand-in GPU", total_memory=total)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _: props)


def test_without_a_budget_the_cuda_devices_memory_is_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No gpu= nor gpu_memory=: a model on CUDA is checked against the device's total
    memory (torch.cuda.get_device_properties), and stopped when it is too small."""
    fake_device(monkeypatch, 512 * 2**10)  # below the tiny model's fp32 weights alone
    callback = FtmemCallback(fail_if_not_fits=True, quiet=True, device="cuda", seq_len=32)
    state = SimpleNamespace(global_step=0, max_steps=2, is_world_process_zero=True)
    args = SimpleNamespace(per_device_train_batch_size=1, gradient_accumulation_steps=1)
    with pytest.raises(RunWillNotFitError, match=r"more than the 512.00 KiB budget: stopped"):
        callback.on_train_begin(args, state, SimpleNamespace(), model=tiny_llama())
    assert callback.estimate is not None and callback.estimate.gpu is not None
    assert callback.estimate.gpu["name"] == "Stand-in GPU"
    assert callback.estimate.gpu["memory_bytes"] == 512 * 2**10


def test_the_records_device_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The record's device on a GPU: torch's name and memory, CUDA's version, the driver
    as nvidia-smi reports it."""
    fake_device(monkeypatch, 80 * GIB)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    smi = {"name": "Stand-in GPU", "driver": "570.86.15", "memory_bytes": 80 * GIB}
    monkeypatch.setattr(report, "nvidia_smi", lambda: smi)
    assert preflight.device() == {
        "kind": "cuda",
        "name": "Stand-in GPU",
        "memory_bytes": 80 * GIB,
        "cuda": "12.8",
        "driver": "570.86.15",
    }


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on one)")
def test_on_a_real_gpu_the_report_carries_torch_cudas_own_counters(tmp_path: Path) -> None:
    """Where a GPU exists, nothing is faked: the HF callback's report after step 2 holds
    the numbers torch.cuda itself gives for that step (read here right after training,
    the peaks being those since the callback's reset at step 2's start)."""
    args = arguments(tmp_path, use_cpu=False)
    callback = FtmemCallback(report_after=2, quiet=True, gpu="h100")
    trainer = transformers.Trainer(
        model=with_lora(tiny_llama()).to("cuda"), args=args, train_dataset=Rows(),
        callbacks=[callback],
    )  # fmt: skip
    trainer.train()
    m = callback.measured
    assert m is not None and m.step == 2 and m.tracker == "cuda-allocator"
    # the step's peak is below what torch says for the whole process since the reset
    # (training ends after step 2), and the weights alone are on the device
    weights = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    assert weights <= m.peak_allocated_bytes <= torch.cuda.max_memory_allocated()
    assert m.peak_allocated_bytes <= m.peak_reserved_bytes <= torch.cuda.max_memory_reserved()
    _free, total = torch.cuda.mem_get_info()
    assert m.device_bytes is not None and m.peak_reserved_bytes < m.device_bytes <= total
