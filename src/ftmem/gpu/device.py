"""The three numbers of a run on a CUDA GPU: allocated, reserved, device.

* allocated (``torch.cuda.max_memory_allocated``): the step's tensors (the timeline's
  peak) and the cuBLAS workspaces PyTorch takes from its allocator, each counted as the
  whole block the allocator hands out (``block_rounding``: the replay's block peak less
  its requested peak);
* reserved (``max_memory_reserved``): what the caching allocator holds at its peak, the
  allocated peak plus the cache it keeps (rounding, segments it cannot reuse), from
  replaying the run's requests in order through the allocator model (gpu.trace,
  gpu.allocator);
* device (what nvidia-smi shows): reserved plus what lives outside the allocator: the
  CUDA context with its loaded kernels, and NCCL's buffers when there are several GPUs
  (gpu.runtime).

On the CPU (``device="cpu"``, the measured accuracy suite) there is no allocator cache,
no workspace and no context: the three are equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from ftmem.gpu.alloc_conf import AllocatorOptions
from ftmem.gpu.allocator import AllocatorOutOfMemoryError, AllocatorStats
from ftmem.gpu.runtime import Runtime, runtime_for
from ftmem.gpu.trace import STEP_ONLY, RunOutside, StepTensors, replay_run
from ftmem.hardware import Gpu
from ftmem.phases import StepSizes

# The PyTorch an estimate assumes when the run does not name one: the version ftmem's
# own measurements run with (the test pin).
DEFAULT_TORCH_VERSION = "2.13"


@dataclass(frozen=True, slots=True)
class DeviceFigures:
    reserved: int
    device: int
    allocator_cache: int  # reserved − allocated at the peak
    cuda_context: int
    nccl: int
    # False: the replay was skipped for a run that cannot fit (device_figures'
    # fits_within); the allocator cache and the block rounding are then taken as 0,
    # lower bounds
    replayed: bool = True
    # what the allocated peak gains from counting whole blocks (block_rounding); the
    # reserved and device figures include it
    block_rounding: int = 0


def cuda_runtime(
    gpu: Gpu | None, torch_version: str | None, gpus_per_node: int = 1, nodes: int = 1
) -> Runtime:
    """The context, workspaces and NCCL buffers of one GPU of the run."""
    return runtime_for(
        gpu, gpus=gpus_per_node, nodes=nodes, torch_version=torch_version or DEFAULT_TORCH_VERSION
    )


def workspace_bytes(rt: Runtime) -> int:
    """What the BLAS libraries hold in the allocator at the peak: the kept workspaces
    of both threads, or one GEMM's own when none is kept."""
    if not rt.through_allocator:
        return 0
    return rt.persistent_workspace_bytes + rt.transient_workspace_bytes


def kept_per_thread(rt: Runtime) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The workspaces each of the two BLAS threads (forward, backward) allocates."""
    if not rt.through_allocator:
        return (), ()
    threads: list[list[int]] = [[], []]
    for count, size in (
        (rt.cublas_workspaces, rt.cublas_workspace_bytes),
        (rt.cublaslt_workspaces, rt.cublaslt_workspace_bytes),
    ):
        for thread in threads[:count]:
            thread.append(size)
    return tuple(threads[0]), tuple(threads[1])


Steps = tuple[tuple[StepSizes, StepTensors], ...]


@lru_cache(maxsize=512)  # plan, compare and sweeps estimate the same step more than once
def replayed_stats(
    steps: Steps,
    kept: tuple[tuple[int, ...], tuple[int, ...]],
    comm_stream: bool = False,
    outside: RunOutside = STEP_ONLY,
    options: tuple[tuple[str, object], ...] = (),
    grad_stream: bool = False,
    settle: bool = False,
) -> AllocatorStats:
    """The caching allocator's statistics after the run's requests, replayed through its
    rules (``comm_stream``: FSDP requests its all-gather and reduce-scatter buffers on
    streams of their own; ``options``: PYTORCH_CUDA_ALLOC_CONF's, as items;
    ``grad_stream``: a sharded FSDP run's gradient shards are made on its post-backward
    stream; ``settle``: the last step repeated until the allocator's steady state,
    gpu.trace.replay_run). The replay's peaks are the longest step's."""
    return replay_run(
        steps, kept, comm_stream, outside, grad_stream=grad_stream, settle=settle, **dict(options)
    )


def _within_device(
    stats: AllocatorStats,
    steps: Steps,
    kept: tuple[tuple[int, ...], tuple[int, ...]],
    comm_stream: bool,
    outside: RunOutside,
    options: tuple[tuple[str, object], ...],
    grad_stream: bool,
    settle: bool,
    room: int,
) -> AllocatorStats:
    """The replay again where its cache outgrew the device: ``stats``, replayed without
    a bound, reserved more than the ``room`` cudaMalloc has (the GPU's memory less what
    lives outside the allocator). When cudaMalloc fails, PyTorch's malloc frees every
    cached segment no block of which is in use and retries (gpu.allocator.SOURCE, malloc:
    ``release_available_cached_blocks``, a no-op without max_split_size, then
    ``release_cached_blocks`` over every stream's pool, then ``alloc_block`` again); it
    is out of memory only where that fails too. So the replay runs within ``room``
    (gpu.allocator's ``capacity``, shared by the streams); a run that does not fit
    even then keeps the unbounded figures (its reserved: the cache it would need)."""
    bounded = tuple(sorted((*options, ("capacity", room))))
    try:
        return replayed_stats(steps, kept, comm_stream, outside, bounded, grad_stream, settle)
    except AllocatorOutOfMemoryError:
        return stats


def block_rounding(stats: AllocatorStats) -> int:
    """What ``max_memory_allocated`` counts beyond the bytes the tensors asked for, at the
    replay's peak. In gpu.allocator.SOURCE, malloc rounds the request (``size_t size =
    round_size(orig_size);``: up to a multiple of 512 bytes), takes a block and splits it
    only where should_split says so (the rest at least 512 bytes in the small pool, more
    than 1 MiB in the large one), else hands out the whole block; alloc_found_block then
    counts ``increase_stat(stats.allocated_bytes[stat_type], block->size)`` beside
    ``increase_stat(stats.requested_bytes[stat_type], block->requested_size)``, the size
    asked for. max_memory_allocated reads the first's peak ("allocated_bytes.all.peak");
    the timeline sums the second. Never negative: at every moment the blocks cover the
    requests, so the block peak is at least the requested one."""
    return max(0, stats.peak_allocated - stats.peak_requested)


def device_figures(
    allocated: int,
    sizes: StepSizes,
    tensors: StepTensors,
    rt: Runtime | None,
    *,
    overhead: int | None = None,
    comm_stream: bool = False,
    grad_stream: bool = False,
    outside: RunOutside = STEP_ONLY,
    steps: Sequence[tuple[StepSizes, StepTensors]] = (),
    allocator: AllocatorOptions | None = None,
    fits_within: int | None = None,
    whole_blocks: bool = True,
    memory: int | None = None,
) -> DeviceFigures:
    """Reserved and device figures around the ``allocated`` peak (workspaces included;
    the timeline's requested bytes, to which the replay's block rounding is added);
    ``rt`` None: the CPU; ``comm_stream`` / ``grad_stream``: FSDP's side streams
    (gpu.trace.run_events); ``overhead``: the user's own figure for everything beyond the
    allocated peak; ``outside``: the run's moments beside the step, replayed with it;
    ``steps``: a variable-length run's steps in replay order (each length's sizes; the
    longest is ``sizes``), else ``sizes``' step until the allocator settles; ``allocator``:
    PYTORCH_CUDA_ALLOC_CONF's options for the replay; ``fits_within``: a GPU's memory,
    where only whether the run fits it matters: when the allocated peak and what lives
    beyond the allocator already exceed it, no cache can make the run fit (the reserved
    peak is never below the allocated one), so the replay is skipped and the cache
    taken as 0; ``whole_blocks`` False: the allocated figure stays in the bytes asked
    for (the seed's simple accounting, a sum of buckets rather than the replayed step);
    ``memory``: the GPU's, within which the allocator works (:func:`_within_device`)."""
    if rt is None:
        return DeviceFigures(allocated, allocated, 0, 0, 0)
    beyond = rt.outside_allocator_bytes if overhead is None else overhead
    if fits_within is not None and allocated + beyond > fits_within:
        context = 0 if overhead is not None else beyond - rt.nccl_bytes
        nccl = 0 if overhead is not None else rt.nccl_bytes
        return DeviceFigures(allocated, allocated + beyond, 0, context, nccl, replayed=False)
    # a fixed-length run: its step repeated until the pools repeat (a long run's steady
    # state; the first step also makes the optimizer states); a variable-length one in
    # the order its lengths come
    replayed = tuple(steps) or ((sizes, tensors),)
    options = tuple(sorted((allocator or {}).items()))
    stats = replayed_stats(
        replayed, kept_per_thread(rt), comm_stream, outside, options, grad_stream, not steps
    )
    if memory is not None and stats.peak_reserved > memory - beyond > 0:
        stats = _within_device(
            stats,
            replayed,
            kept_per_thread(rt),
            comm_stream,
            outside,
            options,
            grad_stream,
            not steps,
            memory - beyond,
        )
    # the timeline's peak counts the bytes asked for; the allocator counts whole blocks
    rounding = block_rounding(stats) if whole_blocks else 0
    allocated += rounding
    cache = max(0, stats.peak_reserved - stats.peak_allocated)
    reserved = allocated + cache
    if overhead is not None:
        return DeviceFigures(reserved, allocated + overhead, cache, 0, 0, True, rounding)
    device = reserved + rt.outside_allocator_bytes
    context = rt.outside_allocator_bytes - rt.nccl_bytes  # cuBLAS's own workspaces too
    return DeviceFigures(reserved, device, cache, context, rt.nccl_bytes, True, rounding)
