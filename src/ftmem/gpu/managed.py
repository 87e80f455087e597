"""Optimizer states in CUDA managed memory: bitsandbytes' paged optimizers.

bitsandbytes takes a paged optimizer's state buffers of every parameter of at least 1e5
elements from ``cudaMallocManaged`` (ftmem.optim.pages_states). PyTorch's allocator never
sees them, so they are in neither ``max_memory_allocated`` nor ``max_memory_reserved``.
The kernels touch them every step (bitsandbytes prefetches each parameter's states to
the GPU before its update, optim/optimizer.py ``prefetch_state``), so their pages are
resident on the GPU and in nvidia-smi's figure as long as the card has room. When it
has none the driver evicts managed pages to host RAM instead of failing an allocation:
the run goes on, and each step moves the evicted states in and out over PCIe.

So a run with paged states has two device figures: the hard requirement (everything
but the paged states: the reserved peak and what lives outside the allocator), which
must fit or the run fails with an out-of-memory error, and that plus the paged states,
what nvidia-smi shows when they all stay resident. ftmem's device figure is the hard
requirement plus as many paged bytes as the card has room for (all of them when no GPU
is named: an upper bound), and the fit verdict follows it: a run whose hard requirement
fits does fit (torchtune ships its Llama-3.1-8B full single-device config, paged 8-bit
AdamW, for a 24 GB card although its states alone take 15 GiB); a note says how much
pages to host and that the step slows down.
"""

from __future__ import annotations

from ftmem.hardware import Gpu
from ftmem.result import Memory

GIB = 2**30
PAGED_PARALLEL_NOTE = (
    "paged optimizer with expert parallelism: its states are counted in each GPU's "
    "allocated peak here, as non-paged ones (bitsandbytes keeps those of tensors of 1e5+ "
    "elements in managed memory, outside the allocator: not modelled for the experts' own "
    "ZeRO group; DDP, DeepSpeed ZeRO, FSDP1, ColossalAI's ZeRO and colossalai-3d are, with "
    "tensor and pipeline parallelism too, ftmem.paged_ranks)."
)


def resident_bytes(hard: int, paged: int, gpu: Gpu | None) -> int:
    """Paged bytes resident on the GPU beside the ``hard`` requirement: all of them
    without a named GPU, else what its memory leaves (never negative)."""
    if gpu is None:
        return paged
    return max(0, min(paged, gpu.memory_bytes - hard))


def with_paged_states(memory: Memory, paged: int, gpu: Gpu | None) -> Memory:
    """``memory`` (whose device figure is the hard requirement) with the resident part
    of ``paged`` state bytes added to the device total, and what the card has no room
    for kept apart as ``paged_to_host``."""
    if not paged:
        return memory
    hard = memory.device_bytes
    resident = resident_bytes(hard, paged, gpu)
    with_resident = memory.with_outside(paged_optimizer_states=resident)
    host = with_resident.beyond_allocated.model_copy(update={"paged_to_host": paged - resident})
    return with_resident.model_copy(update={"beyond_allocated": host})


def paged_notes(memory: Memory, paged: int, gpu: Gpu | None) -> list[str]:
    """What the estimate says of paged optimizer states (``memory`` from
    :func:`with_paged_states`)."""
    if not paged:
        return []
    b = memory.beyond_allocated
    hard = memory.device_bytes - b.paged_optimizer_states
    head = (
        f"paged optimizer: {paged / GIB:.2f} GiB of optimizer states (of the tensors of "
        "1e5+ elements it steps) live in CUDA managed memory, outside PyTorch's allocator: they "
        "are in neither the allocated nor the reserved peak. "
    )
    if gpu is not None and hard > gpu.memory_bytes:
        return [
            head + f"The hard requirement without them, {hard / GIB:.2f} GiB, already "
            "exceeds the GPU: paging them to host RAM cannot make the run fit."
        ]
    if b.paged_to_host:
        return [
            head + f"The hard requirement is {hard / GIB:.2f} GiB; the GPU has room for "
            f"{b.paged_optimizer_states / GIB:.2f} GiB of the states beside it, and the "
            f"driver keeps the other {b.paged_to_host / GIB:.2f} GiB in host RAM, moving "
            "them over PCIe in every optimizer step: the run does not fail but each step "
            "is slower. The fit verdict uses the hard requirement."
        ]
    where = "on this GPU" if gpu is not None else "when the GPU has room"
    return [
        head + f"The device figure counts them resident {where} (an upper bound: "
        "under memory pressure the driver evicts them to host RAM instead of failing); "
        f"the hard requirement is {hard / GIB:.2f} GiB."
    ]
