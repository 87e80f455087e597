"""The three numbers of an estimate (gpu/device.py): allocated, reserved, device.

Expected values come from the cited constants (gpu/runtime.py's sources), written out
here: PyTorch's default cuBLAS workspace ``:4096:2:16:8`` (CublasHandlePool.cpp), 32 MiB
on Hopper, cuBLASLt's 1 MiB, one of each per BLAS thread (forward and autograd's), and
the CUDA context of a lazily loaded process (ptrblck in pytorch#109888: "around 400MB").
"""

from __future__ import annotations

import pytest

import ftmem
from ftmem.gpu.device import DEFAULT_TORCH_VERSION
from ftmem.gpu.runtime import runtime_for
from ftmem.presets import get_gpu

MiB = 2**20
CUBLAS_DEFAULT = 2 * 4096 * 1024 + 8 * 16 * 1024  # ":4096:2:16:8"
CUBLAS_HOPPER = 8 * 4096 * 1024  # ":4096:8"
CUBLASLT = 1024 * 1024
THREADS = 2


def test_the_cpu_has_no_allocator_cache_workspace_or_context():
    m = ftmem.estimate("gpt2", method="lora", device="cpu", optimizer_impl="for-loop").memory
    assert m.peak_allocated_bytes == m.peak_reserved_bytes == m.device_bytes == m.total_bytes
    assert m.at_peak.workspaces == 0
    assert m.beyond_allocated.model_dump() == {"allocator_cache": 0, "cuda_context": 0, "nccl": 0}


def test_an_a100_adds_two_kept_workspaces_and_the_lazy_context():
    m = ftmem.estimate("llama2-7b", method="lora", gpu="a100-80gb").memory
    assert m.at_peak.workspaces == THREADS * (CUBLAS_DEFAULT + CUBLASLT)
    assert m.peak_reserved_bytes == m.peak_allocated_bytes + m.beyond_allocated.allocator_cache
    assert m.device_bytes - m.peak_reserved_bytes == 400 * MiB
    assert m.beyond_allocated.cuda_context == 400 * MiB
    assert m.total_bytes == m.device_bytes
    assert m.overhead_bytes == m.device_bytes - m.peak_allocated_bytes


def test_hopper_workspaces_are_32_mib():
    m = ftmem.estimate("llama2-7b", method="lora", gpu="h100-80gb").memory
    assert m.at_peak.workspaces == THREADS * (CUBLAS_HOPPER + CUBLASLT)


def test_torch_1_13_leaves_the_workspace_to_cublas_outside_the_allocator():
    """Before 2.0 cuBLAS kept its own workspace (pytorch#95668): nvidia-smi sees it, the
    allocator does not. PyTorch 2.0-2.7 kept no cuBLASLt workspace per handle: a call
    takes its own 1 MiB from the allocator while it runs (PR #156495 made it kept)."""
    old = ftmem.estimate("llama2-7b", method="lora", gpu="a100-80gb", torch_version="1.13")
    new = ftmem.estimate("llama2-7b", method="lora", gpu="a100-80gb", torch_version="2.1")
    assert old.memory.at_peak.workspaces == 0
    assert new.memory.at_peak.workspaces == THREADS * CUBLAS_DEFAULT + CUBLASLT
    assert old.memory.beyond_allocated.cuda_context == 400 * MiB + THREADS * CUBLAS_DEFAULT


def test_the_default_torch_version_is_the_measured_one():
    assert DEFAULT_TORCH_VERSION == "2.13"
    implicit = ftmem.estimate("gpt2", gpu="a10g").memory
    explicit = ftmem.estimate("gpt2", gpu="a10g", torch_version="2.13").memory
    assert implicit == explicit


def test_a_users_overhead_replaces_everything_beyond_the_allocated_peak():
    m = ftmem.estimate("gpt2", gpu="a10g", overhead="1GiB").memory
    assert m.device_bytes == m.peak_allocated_bytes + 2**30
    assert m.beyond_allocated.cuda_context == 0


def test_several_gpus_add_nccls_buffers_outside_the_allocator():
    est = ftmem.estimate("llama2-7b", method="full", gpu="a100-80gb", gpus=8, strategy="zero3")
    nccl = runtime_for(get_gpu("a100-80gb"), gpus=8, torch_version="2.13").nccl_bytes
    m = est.memory
    assert nccl > 0
    assert m.beyond_allocated.nccl == nccl
    assert m.device_bytes == m.peak_reserved_bytes + 400 * MiB + nccl


@pytest.mark.parametrize("model", ["llama2-7b", "gpt2", "flan-t5-base"])
def test_reserved_is_never_below_allocated_and_fits_use_the_device_figure(model):
    est = ftmem.estimate(model, method="full", gpu="a100-80gb")
    m = est.memory
    context = m.device_bytes - m.peak_reserved_bytes
    assert m.peak_reserved_bytes >= m.peak_allocated_bytes
    # a GPU with room for the allocated peak but not the context beside it does not fit
    short = m.peak_allocated_bytes + context // 2
    tight = ftmem.estimate(model, method="full", gpu_memory=short)
    assert tight.fits is False
    assert tight.headroom_bytes == short - tight.memory.device_bytes


@pytest.mark.parametrize("model", ["llama2-7b", "gpt2", "flan-t5-base"])
def test_a_gpu_without_room_for_the_whole_cache_trims_it(model):
    """When cudaMalloc fails, PyTorch's malloc frees every wholly free cached segment and
    retries (gpu.device._within_device): on a GPU with room for the allocated peak, the
    context and half the cache the unbounded replay keeps, the run fits, its reserved
    peak within what the GPU has beside the context, the bytes its tensors ask for at
    the peak unchanged (the whole blocks counting them may differ: another layout)."""
    m = ftmem.estimate(model, method="full", gpu="a100-80gb").memory
    context = m.device_bytes - m.peak_reserved_bytes
    assert m.peak_reserved_bytes > m.peak_allocated_bytes  # a cache to trim
    memory = (m.peak_allocated_bytes + m.peak_reserved_bytes) // 2 + context
    tight = ftmem.estimate(model, method="full", gpu_memory=memory)
    assert tight.fits
    t = tight.memory
    requested = t.peak_allocated_bytes - t.at_peak.block_rounding
    assert requested == m.peak_allocated_bytes - m.at_peak.block_rounding
    assert t.peak_allocated_bytes <= t.peak_reserved_bytes <= memory - context
