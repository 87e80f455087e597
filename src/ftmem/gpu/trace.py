"""A training run's allocations and frees in order, for the allocator model to replay.

The timeline (phases.py) needs only sums; the CUDA caching allocator needs each request
in order, because what it reserves depends on which freed blocks a later request can
reuse. This module lays the step's known tensors out in time, as PyTorch requests them:

1. loading: every weight tensor;
2. two optimizer steps, each of one forward + backward pass, or two under gradient
   accumulation (``Gradients.persist``: from the second pass on every one is alike, the
   gradients held through it; passes_per_step):
   forward: per block, its transient, then the tensors it saves; the head's saved
   tensors, the logits' transient; backward: the loss's transient, the head's
   gradients, then per block from the top what its policy rebuilds and its workspace,
   its gradients, and its saved tensors freed; the embedding's gradient last;
   optimizer: the states on the first step (torch creates them lazily), the step's
   temporaries; ``zero_grad(set_to_none=True)`` frees the gradients.

A variable-length run (ftmem.lengths) replays one step per batch length instead, in
the order lengths.replay_order gives (run_events).

Two steps, because the first one creates the optimizer states after the activations
were freed and the second one then allocates its activations around them: the cache
the first leaves behind is what the second reuses or not.

Sizes are the estimate's own; tensors the estimate knows only as a sum (a block's
backward workspace, the step's temporaries) are one request of that size.

The estimate replays the requests as they are made (replay_run); run_events writes them
down as a list instead, for tests and for inspection. Both walk the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from ftmem.block_policies import Checkpointed, Offloaded
from ftmem.deepspeed_zero2 import Backward, Gradients
from ftmem.gpu.allocator import (
    POST_STREAM_ALLOC,
    PRE_STREAM_ALLOC,
    RECORDED_FREE,
    RELEASE_RECORDED,
    SIDE_STREAM_ALLOC,
    AllocatorStats,
    CachingAllocator,
    TwoStreams,
)
from ftmem.gpu.best_fit import AddressSpaceExceeded, BestFit, new_allocator, new_streams
from ftmem.gpu.program import PREVIOUS
from ftmem.methods import MethodPlan
from ftmem.phases import HeadRequests, StepSizes

# ("alloc", bytes): the k-th of them (or of "alloc@side", a side stream's) is allocation
# k; ("free", k) frees it (gpu.allocator.replay_streams' events)
Event = tuple[str, int]


@dataclass(frozen=True, slots=True)
class StepTensors:
    """The step's tensors one by one, where the estimate knows them (bytes each)."""

    weights: tuple[int, ...]
    block_grads: tuple[int, ...]  # one trainable block's gradients
    outer_grads: tuple[int, ...]  # outside the blocks, the token embedding's excluded
    embedding_grads: tuple[int, ...]
    states: tuple[int, ...]  # every optimizer state tensor
    # the optimizer step's temporaries, one per trainable tensor (foreach's lists; the
    # estimate knows their sum)
    step_temporaries: tuple[int, ...]
    block_saved: tuple[int, ...]  # one block's saved tensors (the typical block)
    below: tuple[int, ...]  # the embedding side's saved tensors
    above: tuple[int, ...]  # the head side's
    # a checkpointed layer's no-grad forward op by op (ops.nograd_requests), in place of
    # the timeline's one moment, and the number of its allocation that is the layer's
    # output; () where not derived
    block_forward: tuple[tuple[str, int], ...] = ()
    block_output: int = -1
    # the numbers of block_forward's allocations in autocast's cache (the adapters'
    # weight copies, ops.nograd_requests.LayerShape.weight_casts): every block's live
    # until the model's forward returns, where the head's program frees the cache
    block_cached: tuple[int, ...] = ()


def plan_tensors(
    plan: MethodPlan,
    sizes: StepSizes,
    block_saved: Sequence[int],
    below: Sequence[int],
    above: Sequence[int],
    state_shares: Sequence[int] = (),
    temporaries: Sequence[int] = (),
) -> StepTensors:
    """The tensors of a one-GPU step: weights and gradients from the plan's groups; the
    optimizer states in two tensors per trainable one (Adam's moments), the states' sum
    split in proportion to ``state_shares`` (each trainable tensor's state bytes,
    optim.state_bytes_per_tensor: a bf16 tensor's moments are half an fp32 one's of the
    same shape), else to the element counts; the step's temporaries as ``temporaries``
    (the tensors the optimizer's code makes, optim.optimizer_step_temporary_tensors)
    where they add up to the step's sum, else that sum split alike."""
    weights, block_grads, outer, late, trainable_numel, own = _plan_lists(plan)
    shares = tuple(state_shares) or trainable_numel
    temps = tuple(temporaries)
    if not temps or sum(temps) != sizes.optimizer.temporaries:
        temps = _split(sizes.optimizer.temporaries, shares, per_tensor=1)
    # weights beyond the plan's: a frozen reference copy (the plan's tensors again when
    # it is one in the same dtypes) or a teacher, else laid out as one tensor
    extra = sizes.weights - own
    if extra > 0:
        weights += weights if extra == own else (extra,)
    g = sizes.gradients
    if g.per_block and sum(block_grads) != g.per_block and not g.by_block:
        # the trainable blocks differ where the timeline has no block's own gradients
        # (partial training's modules): its average block, one tensor, and what the
        # average leaves over among the gradients outside the blocks, as the timeline
        # counts it (step._gradient_sizes). With them (step.block_gradients: DeepSeek's
        # dense first blocks) each block's backward requests its own (_blocks_backward).
        block_grads = (g.per_block,)
        left_over = g.outer - sum(outer) - sum(late)
        outer += (left_over,) if left_over > 0 else ()
    return StepTensors(
        weights=weights,
        block_grads=block_grads if g.per_block else (),
        outer_grads=outer if g.outer else (),
        embedding_grads=late if g.total else (),
        states=_split(sizes.states, shares),
        step_temporaries=temps,
        block_saved=tuple(block_saved),
        below=tuple(below),
        above=tuple(above),
    )


@lru_cache(maxsize=256)  # a sweep's runs of one model and method share the plan
def _plan_lists(
    plan: MethodPlan,
) -> tuple[
    tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], int
]:
    """From the plan alone: each weight tensor's bytes, one trainable block's gradients,
    the gradients outside the blocks made at the head side's backward and those made
    after the blocks' (MethodPlan.gradient_after_blocks, as the timeline reads them),
    each trainable tensor's element count, and the plan's weight bytes."""
    weights: list[int] = []
    block_grads: list[int] = []
    outer: list[int] = []
    late: list[int] = []
    trainable_numel: list[int] = []
    blocks = max(plan.trainable_blocks, 1)
    for g in plan.groups:
        weights += [g.nbytes // g.count] * g.count
        if not g.trainable:
            continue
        grad = g.grad_bytes
        trainable_numel += [g.numel] * g.count
        if g.in_block and not plan.gradient_at_head(g):
            block_grads += [grad] * max(g.count // blocks, 1)
        elif plan.gradient_after_blocks(g):
            late += [grad] * g.count
        else:
            outer += [grad] * g.count
    own = sum(g.nbytes for g in plan.groups)
    lists = (tuple(weights), tuple(block_grads), tuple(outer), tuple(late))
    return (*lists, tuple(trainable_numel), own)


def coarse_tensors(
    sizes: StepSizes, block_saved: Sequence[int], below: Sequence[int], above: Sequence[int]
) -> StepTensors:
    """A rank's tensors when they are shards of the plan's (ZeRO, FSDP, pipeline
    stages): weights, gradients and states as one flat buffer per block, as the sharding
    engines hold them."""
    g = sizes.gradients
    chunks = max(len(sizes.activations.per_block), 1)
    return StepTensors(
        weights=_chunks(sizes.weights, chunks),
        block_grads=(g.per_block,) if g.per_block else (),
        outer_grads=(g.outer - g.embedding,) if g.outer > g.embedding else (),
        embedding_grads=(g.embedding,) if g.embedding else (),
        states=_chunks(sizes.states, chunks),
        step_temporaries=sizes.optimizer.tensors or _chunks(sizes.optimizer.temporaries, chunks),
        block_saved=tuple(block_saved),
        below=tuple(below),
        above=tuple(above),
    )


def leaf_grad_shards(plan: MethodPlan, per_block: int, shards: int) -> tuple[int, ...]:
    """One trainable block's gradient shards on a rank where each trainable tensor is an
    FSDP unit of its own (fsdp_qlora's lambda policy, HF Trainer's peft policy under FSDP1): one
    reduce-scattered shard per tensor, 1/``shards`` of it, summing to ``per_block`` (the
    rank's bytes; the last takes the rounding)."""
    grads = _plan_lists(plan)[1]
    if not per_block or not grads:
        return (per_block,) if per_block else ()
    parts = [-(-g // shards) for g in grads]
    parts[-1] += per_block - sum(parts)
    return tuple(parts) if parts[-1] > 0 else (per_block,)


def leaf_units(plan: MethodPlan, shards: int) -> tuple[int, ...]:
    """Each trainable tensor's flat parameter on a rank where every trainable tensor is an
    FSDP unit of its own (fsdp_qlora's lambda policy), in the order ``model.parameters()``
    yields them (block after block, then those outside the blocks): ceil(n / ``shards``)
    elements each (FSDP1 ``FlatParamHandle._get_shard``: rank 0's chunk, the others padded
    to it; ``shards`` 1: NO_SHARD's whole flat parameter), in bytes. AdamW keeps its
    moments per parameter (torch/optim/adamw.py ``_init_group``: ``torch.zeros_like(p)``
    for each), so the optimizer's states and its foreach temporaries come in these sizes,
    not as one buffer per block."""
    blocks = max(plan.trainable_blocks, 1)
    trainable = [g for g in plan.groups if g.trainable]
    per_block = [g for g in trainable if g.in_block]
    units: list[int] = []
    for _ in range(blocks):
        for g in per_block:
            units += [-(-g.numel // shards) * g.element_bytes] * max(g.count // blocks, 1)
    for g in trainable:
        if not g.in_block:
            units += [-(-g.numel // shards) * g.element_bytes] * g.count
    return tuple(units)


def leaf_unit_tensors(coarse: StepTensors, sizes: StepSizes, units: tuple[int, ...]) -> StepTensors:
    """A rank's tensors where each trainable tensor is an FSDP unit of its own
    (leaf_units): the optimizer's states as two moments per unit and the step's
    temporaries (foreach AdamW's ``_foreach_sqrt`` of the second moments, one per
    parameter) as one per unit, each in proportion to the unit's size; the rest as
    ``coarse`` has them (coarse_tensors)."""
    if not units:
        return coarse
    states = _split(sizes.states, units) if sizes.states else ()
    temps = coarse.step_temporaries
    if not sizes.optimizer.tensors and sizes.optimizer.temporaries:
        temps = _split(sizes.optimizer.temporaries, units, per_tensor=1)
    return replace(coarse, states=states, step_temporaries=temps)


def _chunks(total: int, n: int) -> tuple[int, ...]:
    if not total:
        return ()
    parts = [total // n] * n
    parts[-1] += total - sum(parts)
    return tuple(p for p in parts if p)


def outer_sides(items: Sequence[int], below: int, above: int) -> tuple[list[int], list[int]]:
    """The embedding side's and the head side's tensors out of the step's outer items
    (below first), each one request of its sum where the items do not add up to it
    (activation offload keeps none on the GPU; a pipeline stage only one side)."""
    n, total = 0, 0
    while n < len(items) and total < below:
        total, n = total + items[n], n + 1
    low = list(items[:n]) if total == below else [below]
    high = list(items[n:]) if sum(items[n:]) == above else [above]
    return [b for b in low if b], [a for a in high if a]


@lru_cache(maxsize=256)  # the states' and temporaries' sums depend on the method alone
def _split(total: int, numels: tuple[int, ...], per_tensor: int = 2) -> tuple[int, ...]:
    """``total`` bytes as ``per_tensor`` tensors per trainable tensor, in proportion to
    its size."""
    if not total or not numels:
        return (total,) if total else ()
    whole = sum(numels)
    parts = [total * n // (per_tensor * whole) for n in numels for _ in range(per_tensor)]
    parts[-1] += total - sum(parts)
    return tuple(p for p in parts if p > 0)


class _EventLog:
    """Takes the run's requests down as events (gpu.allocator.replay_streams' form)
    instead of replaying them: the k-th request's handle is k."""

    __slots__ = ("events", "requests")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.requests = 0

    def malloc(self, size: int) -> int:
        return self._request("alloc", size)

    def malloc_side(self, size: int) -> int:
        return self._request(SIDE_STREAM_ALLOC, size)

    def malloc_post(self, size: int) -> int:
        return self._request(POST_STREAM_ALLOC, size)

    def malloc_pre(self, size: int) -> int:
        return self._request(PRE_STREAM_ALLOC, size)

    def free_recorded(self, key: int) -> None:
        self.events.append((RECORDED_FREE, key))

    def release_recorded(self, keep: int = 0) -> None:
        self.events.append((RELEASE_RECORDED, keep))

    def _request(self, kind: str, size: int) -> int:
        self.events.append((kind, size))
        self.requests += 1
        return self.requests - 1

    def free(self, key: int) -> None:
        self.events.append(("free", key))

    def moment(self, size: int) -> None:
        self.free(self.malloc(size))

    def reset_peaks(self) -> None:
        self.events.append(("reset_peaks", 0))

    def empty_cache(self) -> None:
        self.events.append(("empty_cache", 0))


class _Recorder:
    """Hands the run's requests, in order, to an allocator (gpu.allocator's
    CachingAllocator or TwoStreams, which replay them as they come) or to an _EventLog;
    ``comm_stream``: the communication buffers are requested on a side stream (FSDP's);
    ``grad_stream``: the gradients made in backward on another (the reduce-scattered
    shards of a sharded FSDP run, made on its post-backward stream)."""

    __slots__ = (
        "_comm",
        "_free",
        "_free_many",
        "_grad",
        "_malloc",
        "_malloc_many",
        "_moment",
        "_moment_many",
        "target",
    )

    def __init__(self, target: Any, comm_stream: bool = False, grad_stream: bool = False) -> None:
        self.target = target
        self._malloc = target.malloc
        self._free = target.free
        self._moment = target.moment
        self._comm = target.malloc_side if comm_stream else target.malloc
        self._grad = target.malloc_post if grad_stream else None
        # gpu.best_fit.BestFit takes a request's tensors in one call
        self._malloc_many = getattr(target, "malloc_many", None)
        self._free_many = getattr(target, "free_many", None)
        self._moment_many = getattr(target, "moment_many", None)

    def alloc(self, sizes: Sequence[int]) -> list[int]:
        if self._malloc_many is not None:
            return self._malloc_many(sizes)  # skips sizes of 0, as below
        malloc = self._malloc
        return [malloc(size) for size in sizes if size > 0]

    def grads(self, sizes: Sequence[int]) -> list[int]:
        """Gradients made in backward, on the post-backward stream where they are
        reduce-scattered shards (``grad_stream``)."""
        if self._grad is None:
            return self.alloc(sizes)
        grad = self._grad
        return [grad(size) for size in sizes if size > 0]

    def host_copy(self, size: int) -> None:
        """CPU offload's copy of a shard before its all-gather (parallel._host_copies): on
        the pre-unshard stream, record_stream'ed on the unshard stream and freed once the
        all-gather is issued, so its block waits for that all-gather. Before the copy,
        every earlier copy's all-gather is taken as done but the newest's. (Timing, not
        source: the rate limiter's ``event.synchronize()`` guarantees the all-gathers up
        to two units back are done; the one a unit back overlapped that unit's compute
        and is taken as done too; the newest, issued just before, as still running.)"""
        if size <= 0:
            return
        target = self.target
        target.release_recorded(1)
        target.free_recorded(target.malloc_pre(size))

    def side(self, size: int) -> list[int]:
        """A request on a side stream of the engine's own (ZeRO-3's reduce stream),
        whose blocks the default stream never reuses."""
        return [self.target.malloc_side(size)] if size > 0 else []

    def comm(self, size: int) -> list[int]:
        """A communication buffer (gathered weights, reduce buckets)."""
        return [self._comm(size)] if size > 0 else []

    def free(self, keys: Sequence[int]) -> None:
        if not keys:
            return
        if self._free_many is not None:
            self._free_many(keys)
            return
        free = self._free
        for key in keys:
            free(key)

    def empty_cache(self) -> None:
        """torch.cuda.empty_cache(): the target's free segments released (a target that
        keeps no cache has nothing to release)."""
        release = getattr(self.target, "empty_cache", None)
        if release is not None:
            release()

    def moment(self, size: int) -> None:
        """A transient: allocated, then freed before anything else is requested."""
        if size > 0:
            self._moment(size)

    def moments(self, sizes: Sequence[int]) -> None:
        """Transients allocated together, then freed together."""
        if len(sizes) == 1:
            self.moment(sizes[0])
        elif self._moment_many is not None:
            self._moment_many(sizes)
        else:
            self.free(self.alloc(sizes))


@dataclass(frozen=True, slots=True)
class RunOutside:
    """The run's moments beside the step, as the allocator sees them (run_phases):
    ``loading``: per weight tensor (``StepTensors.weights``' order), the program that
    puts it on the GPU (run_phases.Program; empty: allocated as it is); ``after``: per
    moment after the steps, its tensors;
    ``reset``: the window starts after loading (``reset_peak_memory_stats``, which
    frees nothing: the reserved peak starts from what loading left cached);
    ``requantise``: the checkpoint is loaded into already quantised parameters, each
    quantised again and replaced (torchtune's NF4 ``inplace_copy``); ``wrap``: instead of
    the weights, FSDP's wrapping of a model held on the CPU (fsdp_init.WrapProgram: its
    requests and frees; what it never frees is the rank's weights), or DeepSpeed ZeRO-3's
    optimizer init (deepspeed_zero3.init_program); ``made``: the wrap made the optimizer
    states and the gradients' buffer too (ZeRO-3), so the steps request neither;
    ``optimizer_init``: after loading, an optimizer's init that makes its states and
    frees its transients (DeepSpeed ZeRO-1/2, deepspeed_zero2.init_program, as
    ("alloc", bytes) / ("free", j) / ("empty_cache", 0)), so the steps request no
    states; ``zero2_grads``: DeepSpeed ZeRO-2's gradients on one rank
    (deepspeed_zero2.Backward: ipg buffers, autograd's gradients copied into them and
    freed, one flat partition) in place of the per-tensor gradients held to the step
    and the sizes' backward buckets; ``moved_to_cpu``: bytes of the loaded weights the
    optimizer init moves to the CPU before its ``empty_cache`` (ZeRO-1/2's trainable
    weights, which its program makes again as one flat buffer): the replay loads the
    weights less these bytes, spread over the weights' tensors (a rank's weights are
    flat chunks: which blocks the trainable ones held is not laid out)."""

    loading: tuple[tuple[tuple[str, int], ...], ...] = ()
    after: tuple[tuple[int, ...], ...] = ()
    reset: bool = False
    requantise: bool = False
    wrap: tuple[tuple[str, int], ...] = ()
    made: bool = False
    optimizer_init: tuple[tuple[str, int], ...] = ()
    zero2_grads: Gradients | None = None
    moved_to_cpu: int = 0


STEP_ONLY = RunOutside()  # the step and plain loading, nothing else


def _load(rec: _Recorder, outside: RunOutside, weights: tuple[int, ...]) -> None:
    """Each weight allocated within its loading program (run_phases.Program: the
    transients of quantising it, in order); with ``requantise``, a second pass
    (load_state_dict into quantised parameters) runs each program again, making the
    weight anew, and frees the old one; with ``wrap``, FSDP's wrapping makes the weights."""
    if outside.wrap:
        _run_wrap(rec, outside.wrap)
        return
    if not outside.loading:
        rec.alloc(weights)
        return
    keys = [_run_program(rec, w, p) for w, p in zip(weights, outside.loading, strict=True)]
    if not outside.requantise:
        return
    for i, (weight, program) in enumerate(zip(weights, outside.loading, strict=True)):
        if program:
            new = _run_program(rec, weight, program)
            rec.free(keys[i])
            keys[i] = new


def _run_wrap(rec: _Recorder, program: tuple[tuple[str, int], ...]) -> None:
    """A program's requests in order (fsdp_init.WrapProgram's, an optimizer init's):
    ("alloc", bytes), ("free", j) the j-th."""
    keys: list[list[int]] = []
    for op, value in program:
        if op == "alloc":
            keys.append(rec.alloc((value,)))
        elif op == "empty_cache":
            rec.empty_cache()
        else:
            rec.free(keys[value])


def _run_side(rec: _Recorder, program: tuple[tuple[str, int], ...]) -> None:
    """A program's requests on the side stream (Optimizer.side_program): ("alloc",
    bytes), ("free", j) the j-th."""
    keys: list[list[int]] = []
    for op, value in program:
        if op == "alloc":
            keys.append(rec.side(value))
        else:
            rec.free(keys[value])


def uses_side_stream(steps: Sequence[tuple[StepSizes, StepTensors]]) -> bool:
    """Whether a step requests on a side stream of its engine (Optimizer.side_program)."""
    return any(sizes.optimizer.side_program for sizes, _ in steps)


def _run_program(rec: _Recorder, weight: int, program: tuple[tuple[str, int], ...]) -> list[int]:
    """One weight's loading program; returns the weight's key."""
    if not program:
        return rec.alloc((weight,))
    local: list[list[int]] = []
    key: list[int] = []
    for op, value in program:
        if op == "alloc":
            local.append(rec.alloc((value,)))
        elif op == "weight":
            key = rec.alloc((weight,))
        else:
            rec.free(local[value])
    return key


def step_events(
    sizes: StepSizes,
    t: StepTensors,
    kept_workspaces: tuple[tuple[int, ...], tuple[int, ...]] = ((), ()),
    comm_stream: bool = False,
    outside: RunOutside = STEP_ONLY,
    grad_stream: bool = False,
) -> list[Event]:
    """Loading, then two optimizer steps, then the moments after them (run_events of the
    same step twice)."""
    return run_events(
        [(sizes, t), (sizes, t)], kept_workspaces, comm_stream, outside, grad_stream=grad_stream
    )


def run_events(
    steps: Sequence[tuple[StepSizes, StepTensors]],
    kept_workspaces: tuple[tuple[int, ...], tuple[int, ...]] = ((), ()),
    comm_stream: bool = False,
    outside: RunOutside = STEP_ONLY,
    grad_stream: bool = False,
) -> list[Event]:
    """Loading (the first step's weights), then one optimizer step (passes_per_step
    passes) per (sizes, tensors) in ``steps``, in order (a variable-length run's steps,
    each with its own batch length; their weights, gradients and states are alike), then
    the moments after them. ``kept_workspaces``: the cuBLAS workspaces of the forward's
    and the backward's threads, allocated at each one's first GEMM and kept
    (gpu.runtime); ``comm_stream``: communication buffers are requested on a side stream
    (FSDP's all-gather and reduce-scatter streams; gpu.allocator.replay_streams);
    ``grad_stream``: the gradients made in backward are requested on another (a sharded
    FSDP run's reduce-scattered shards, made on its post-backward stream)."""
    log = _EventLog()
    rec = _Recorder(log, comm_stream, grad_stream)
    _request_run(rec, steps, kept_workspaces, outside)
    return log.events


def replay_run(
    steps: Sequence[tuple[StepSizes, StepTensors]],
    kept_workspaces: tuple[tuple[int, ...], tuple[int, ...]] = ((), ()),
    comm_stream: bool = False,
    outside: RunOutside = STEP_ONLY,
    grad_stream: bool = False,
    settle: bool = False,
    **options: Any,
) -> AllocatorStats:
    """The allocator's statistics after :func:`run_events`' requests, replayed as they
    are made (no event list: the same statistics as ``replay_streams(run_events(...))``,
    in a fraction of the time); ``options``: gpu.allocator.CachingAllocator's. With
    PyTorch's defaults the replay runs on gpu.best_fit.BestFit (the same decisions,
    faster), its requests handed over a tensor list at a time. ``grad_stream``: as
    run_events'. ``settle``: the last of ``steps`` is repeated until the allocator's
    steady state (a step that leaves the pools as the one before; SETTLING_STEPS): a long
    run's reserved figure, not the first few steps'."""
    streams = comm_stream or grad_stream or uses_side_stream(steps)
    try:
        # (FSDP's streams: a BestFit per stream, its requests handed over one at a time)
        target = new_streams(**options) if streams else new_allocator(**options)
        loaded = isinstance(target, BestFit)
        if loaded:  # the loading's replay depends on the weights alone: replayed once
            o = outside
            weights = _loaded_weights(steps[0][1].weights, o)
            target = _loaded_best_fit(weights, o.loading, o.requantise, o.wrap).copy()
        rec = _Recorder(target, comm_stream, grad_stream)
        _request_run(rec, steps, kept_workspaces, outside, loaded, settle)
    except AddressSpaceExceeded:  # beyond 16 EiB of segments: the reference replay
        target = TwoStreams(**options) if streams else CachingAllocator(**options)
        rec = _Recorder(target, comm_stream, grad_stream)
        _request_run(rec, steps, kept_workspaces, outside, settle=settle)
    return target.stats()


def _loaded_weights(weights: tuple[int, ...], outside: RunOutside) -> tuple[int, ...]:
    """The weights the GPU holds from loading on (RunOutside.moved_to_cpu taken out)."""
    moved = outside.moved_to_cpu
    if not moved:
        return weights
    if moved > sum(weights) or outside.loading:  # (only a rank's flat chunks are spread)
        raise ValueError(f"{moved} bytes moved to the CPU out of {sum(weights)} loaded")
    # as many tensors as before (a per-weight loading program stays aligned), the empty
    # ones skipped by the requests
    kept = _chunks(sum(weights) - moved, len(weights))
    return kept + (0,) * (len(weights) - len(kept))


@lru_cache(maxsize=64)  # a sweep's runs of one model and method load the same weights
def _loaded_best_fit(
    weights: tuple[int, ...],
    loading: tuple[tuple[tuple[str, int], ...], ...],
    requantise: bool,
    wrap: tuple[tuple[str, int], ...],
) -> BestFit:
    """A BestFit allocator after the run's loading (_load), to be copied, not changed."""
    target = BestFit()
    outside = RunOutside(loading=loading, requantise=requantise, wrap=wrap)
    _load(_Recorder(target), outside, weights)
    return target


SETTLING_STEPS = 8
"""The most optimizer steps a settling replay (``replay_run(settle=True)``) lays out.
A run of identical steps reaches the allocator's steady state once a step leaves the
pools as the step before left them (free blocks, their addresses, the next segment's
address, what is reserved): the requests being the same, every later step then repeats
it block for block, and the peaks stop moving. Every calibration run's replay repeats by
its fourth step (calibration/notes/qwen.md); the bound only caps the cost of a replay
that does not, whose figure is then its last step's."""


def _request_run(
    rec: _Recorder,
    steps: Sequence[tuple[StepSizes, StepTensors]],
    kept_workspaces: tuple[tuple[int, ...], tuple[int, ...]],
    outside: RunOutside,
    loaded: bool = False,
    settle: bool = False,
) -> None:
    """The run's requests, in order, to ``rec``; ``loaded``: its target has loaded the
    weights already; ``settle``: the last step is repeated until the allocator's pools
    repeat (SETTLING_STEPS at most)."""
    if not loaded:
        _load(rec, outside, _loaded_weights(steps[0][1].weights, outside))
    _run_wrap(rec, outside.optimizer_init)
    if outside.reset:
        rec.target.reset_peaks()
    # the loop's last output (LitGPT's fp32 logits), from then on; a head program that
    # holds its own into the next forward (torchtune 0.1's shifted copy) requests that
    # part itself, pass by pass (carried)
    loop_held = steps[0][0].loop_held - _program_held(*steps[0])
    if loop_held:
        rec.alloc((loop_held,))
    carried: list[int] = []
    states_made = steps[0][0].states == 0 or outside.made or bool(outside.optimizer_init)
    first = True
    layout = None
    for n in range(max(SETTLING_STEPS, len(steps)) if settle else len(steps)):
        sizes, t = steps[min(n, len(steps) - 1)]
        if outside.made:  # ZeRO-3 copies each gradient into its buffer and frees it
            t = replace(t, block_grads=(), outer_grads=(), embedding_grads=())
        if outside.zero2_grads is not None:  # its buckets are requested with its gradients
            c = replace(sizes.comm, backward=0, loss_backward=None, head_backward=None)
            sizes = replace(sizes, comm=c)
        grads: list[int] = []
        output: list[int] = []  # the model's output the loop holds (StepSizes.output_held)
        for _ in range(passes_per_step(sizes)):
            # (the run's first pass has no last graph)
            previous = () if first else _previous_graph(sizes)
            rec.free(output)  # dropped before the next forward
            output = []
            workspaces = kept_workspaces if first else ((), ())
            grads = _pass(
                rec, sizes, t, grads, workspaces, previous, output, carried, outside.zero2_grads
            )
            first = False
        if not states_made:
            rec.alloc(t.states)
            states_made = True
        step = sizes.optimizer
        buffers = rec.comm(sizes.comm.optimizer)
        if not step.in_backward:
            _run_side(rec, step.side_program)
            rec.moment(step.norm_copy)
            rec.moments(t.step_temporaries or (step.temporaries,))
        rec.free(buffers)
        rec.free(grads)  # zero_grad(set_to_none=True)
        rec.free(output)
        rec.moment(step.merge)
        if settle and n >= len(steps) - 1:
            # the steps from here on are alike: one that left the pools as the one
            # before it did is what every later one does
            now = rec.target.layout()
            if now == layout:
                break
            layout = now
    for tensors in outside.after:  # evaluation, generation, merging: freed when done
        rec.moments(tensors)


def _program_held(s: StepSizes, t: StepTensors) -> int:
    """Bytes of the loop-held output the step's head program requests itself
    (HeadRequests.into_next_forward), which StepSizes.loop_held counts too."""
    r = _head_requests(s, t)
    if r is None or not r.into_next_forward:
        return 0
    return [value for op, value in r.forward if op == "alloc"][r.output]


def passes_per_step(s: StepSizes) -> int:
    """The forward and backward passes the replay lays out per optimizer step: the
    timeline's own reading of the step (one source of truth): under accumulation
    (``Gradients.persist``) the second pass is every later one's likeness, with the
    gradients held through its forward; else one."""
    return 2 if s.gradients.persist else 1


def _previous_graph(s: StepSizes) -> tuple[int, ...]:
    """The last pass's graph-held tensors, one request per block (StepSizes.previous_graph;
    requested anew here rather than kept from that pass: the same bytes, its blocks'
    places in the cache aside)."""
    if not s.previous_graph:
        return ()
    L = len(s.activations.per_block) or 1
    share = s.previous_graph // L
    return (share,) * (L - 1) + (s.previous_graph - share * (L - 1),)


def _pass(
    rec: _Recorder,
    s: StepSizes,
    t: StepTensors,
    grads: list[int],
    workspaces: tuple[tuple[int, ...], tuple[int, ...]],
    previous: tuple[int, ...] = (),
    output: list[int] | None = None,
    carried: list[int] | None = None,
    zero2: Gradients | None = None,
) -> list[int]:
    """One forward and backward, in the order of phases.find_peak's moments; ``grads``:
    the gradients already held (accumulation), ``workspaces``: the cuBLAS ones its first
    GEMMs create; ``previous``: the last pass's graph-held tensors, freed once this
    pass's loss exists; ``output`` takes the model's output the loop holds past the
    pass (StepSizes.output_held), for the caller to free; ``carried``: what the last
    pass's head program holds into this forward (HeadRequests.into_next_forward), freed
    at its program's ("previous", 0) request and replaced by this pass's; ``zero2``:
    DeepSpeed ZeRO-2's gradients (deepspeed_zero2.Backward), made anew in every pass.
    Returns the gradients held after it."""
    output = [] if output is None else output
    first = not grads
    new_grads = first or zero2 is not None
    last_graph = rec.alloc(previous)
    c = s.comm
    _before_forward(rec, s)
    # a pipeline stage: the other micro-batches' activations it holds meanwhile
    rec.host_copy(c.root_copy)  # the root unit's, at the model's pre-forward
    others = rec.alloc((s.activations.held,))
    below = rec.alloc(t.below)
    rec.moment(s.forward_start)  # (before the first block: StepSizes.forward_start)
    rec.alloc(workspaces[0])
    returned: list[int] = []
    requests = _head_requests(s, t)
    casts = _cached_casts(s, t, requests)
    kept = _blocks_forward(rec, s, t, returned, casts)
    above = rec.alloc(t.above if requests is None else _without(t.above, requests.saved_item))
    rec.free(rec.comm(c.forward_waiting))
    gathered = rec.comm(_or(c.head_forward, c.forward))
    head = _head_forward(rec, s, requests, [] if carried is None else carried, output, casts)
    rec.free(gathered)
    rec.free(returned)  # the model's output dropped: the blocks' returned caches
    if s.empties_cache:
        rec.empty_cache()
    rec.free(last_graph)  # the loop's loss now names this pass's graph
    flat = Backward(zero2, rec) if zero2 is not None else None
    make = _flat_grads(flat) if flat is not None else rec.grads
    gathered = rec.comm(_or(c.loss_backward, c.backward))
    if requests is None:
        rec.moment(s.head.loss_backward)
    else:
        _run_requests(rec, requests.backward, head)
    rec.free(gathered)
    rec.alloc(workspaces[1])  # the LM head's backward GEMM, on the autograd thread
    rec.free(above)
    if new_grads:
        grads = grads + make(t.outer_grads)
    # stepped in backward: a tied weight's LM-head part, held until its sum at the end
    tied = rec.alloc((s.gradients.tied_held,))
    gathered = rec.comm(_or(c.head_backward, c.backward))
    rec.moment(s.head.workspace + s.optimizer.at_head)
    rec.free(gathered)
    grads, held = _blocks_backward(rec, s, t, kept, grads, new_grads, make)
    rec.free(tied)
    _backward_ends(rec, s)
    if s.vision_backward:
        rec.moment(s.vision_backward)  # the vision tower's backward, after the blocks'
    if s.optimizer.in_backward:
        rec.moment(s.optimizer.outer)  # the embedding's own step, last
    for keys in held:  # FSDP1's _finalize_params removes the hooks that held them
        rec.free(keys)
    rec.free(below)
    rec.free(others)
    if flat is not None:  # the epilogue, once autograd's backward has returned
        grads = grads + flat.end(first)
    return grads


def _head_forward(
    rec: _Recorder,
    s: StepSizes,
    requests: HeadRequests | None,
    carried: list[int],
    output: list[int],
    casts: _Casts | None = None,
) -> list[list[int]]:
    """The LM head's and the loss's forward: one moment, or the program's tensors one by
    one; what the model's output holds past the pass joins ``output``, a program's part
    held into the next forward ``carried``; ``casts``: the autocast cache's copies the
    blocks made, freed with the program's cache (_run_requests). Returns the program's
    allocations."""
    if requests is None:
        rec.free(carried)  # (a program's copy, where this pass has none: the model returned)
        carried.clear()
        rec.moment(s.head.logits_forward)
        output += rec.alloc((s.output_held,)) if s.output_held else []
        return []
    head = _run_requests(rec, requests.forward, [], carried, cache=requests.cache, casts=casts)
    if requests.output >= 0 and requests.into_next_forward:
        carried.extend(head[requests.output])
    elif requests.output >= 0:
        output += head[requests.output]
    return head


def _flat_grads(flat: Backward) -> Callable[[Sequence[int]], list[int]]:
    """Autograd's gradients handed to ZeRO-2's hooks: none stays with the caller."""

    def make(sizes: Sequence[int]) -> list[int]:
        for size in sizes:
            if size > 0:
                flat.gradient(size)
        return []

    return make


def _before_forward(rec: _Recorder, s: StepSizes) -> None:
    """The moment before the forward (a teacher's forward), with its gathering."""
    c = s.comm
    if not (s.teacher_forward or c.before):
        return
    if s.empties_cache:
        rec.empty_cache()
    known = s.before_requests
    gathered = rec.alloc(known) + rec.comm(_or(c.before, c.forward) - sum(known))
    rec.moment(s.teacher_forward)
    rec.free(gathered)
    if s.empties_cache:
        rec.empty_cache()


def _blocks_forward(
    rec: _Recorder,
    s: StepSizes,
    t: StepTensors,
    returned: list[int],
    casts: _Casts | None = None,
) -> list[list[int]]:
    """The blocks' forward: each block's saved tensors, kept for the backward; what each
    returns to the model's output (StepSizes.block_returns) joins ``returned``; the
    autocast cache's copies a derived block makes join ``casts`` (none made without)."""
    c = s.comm
    kept: list[list[int]] = []
    typical = sum(t.block_saved)
    if c.unit_copy or c.forward or s.block_returns:
        for size in s.activations.per_block:
            rec.host_copy(c.unit_copy)
            rec.free(rec.comm(c.forward_waiting))  # FSDP1's waiting unit: reserved only
            gathered = rec.comm(c.forward)
            # (requested first: it lives through the block's MLP, as the timeline has it)
            returned.extend(rec.alloc((s.block_returns,)))
            if _derived_forward(t, size):
                kept.append(_layer_forward(rec, t, casts))
            else:
                kept.append(rec.alloc(t.block_saved if size == typical else (size,)))
                rec.moment(s.block.forward)  # with the block's saved tensors, as the timeline
            rec.free(gathered)
    else:  # the same requests without copies or communication (one GPU), calls spared
        alloc, moment, transient = rec.alloc, rec.moment, s.block.forward
        for size in s.activations.per_block:
            if _derived_forward(t, size):
                kept.append(_layer_forward(rec, t, casts))
                continue
            kept.append(alloc(t.block_saved if size == typical else (size,)))
            moment(transient)
    return kept


def _derived_forward(t: StepTensors, kept: int) -> bool:
    """Whether a block's forward is replayed op by op: derived for the run's layer, and
    the block keeps just its checkpointed input, the size of the layer's output."""
    if not t.block_forward:
        return False
    sizes = [v for op, v in t.block_forward if op == "alloc"]
    return sizes[t.block_output] == kept


def _layer_forward(rec: _Recorder, t: StepTensors, casts: _Casts | None) -> list[int]:
    """A checkpointed layer's no-grad forward (StepTensors.block_forward): its requests
    in order; the layer's output, the next block's checkpointed input, stays, as do
    autocast's cached weight copies (StepTensors.block_cached), which join ``casts``;
    without ``casts`` they are not requested (the head's cache stands for them)."""
    if casts is None:
        keys = _run_requests(rec, t.block_forward, [], skip=frozenset(t.block_cached))
        return keys[t.block_output]
    keys = _run_requests(rec, t.block_forward, [])
    for k in t.block_cached:
        casts.keys.extend(keys[k])
    return keys[t.block_output]


@dataclass(slots=True)
class _Casts:
    """Autocast's cached weight copies the blocks' forwards make (StepTensors.block_cached):
    their allocations, and their bytes in all, which the head's cache request
    (HeadRequests.cache) stood for: the head requests the rest of it and frees these
    with it, when the forward's autocast region ends."""

    keys: list[int]
    size: int


def _cached_casts(s: StepSizes, t: StepTensors, requests: HeadRequests | None) -> _Casts | None:
    """The pass's cached copies, to be made in the blocks, where the head's program
    holds autocast's cache as one request of at least their bytes; else None (the
    blocks skip them, the head's request stands for them, or there are none)."""
    if not t.block_cached or requests is None or requests.cache < 0:
        return None
    sizes = [value for op, value in t.block_forward if op == "alloc"]
    per_block = sum(sizes[k] for k in t.block_cached)
    blocks = sum(1 for size in s.activations.per_block if _derived_forward(t, size))
    held = [value for op, value in requests.forward if op == "alloc"][requests.cache]
    if blocks * per_block > held:
        return None
    return _Casts([], blocks * per_block)


def _backward_ends(rec: _Recorder, s: StepSizes) -> None:
    """FSDP's post-backward final callback under CPU offload waits for the GPU
    (``current_stream().synchronize()`` before the CPU step reads the gradients: torch
    2.2-2.13 _runtime_utils._post_backward_final_callback), so every host copy's
    all-gather is done and its block back in its pool."""
    if s.comm.unit_copy:
        rec.target.release_recorded(0)


def _head_requests(s: StepSizes, t: StepTensors) -> HeadRequests | None:
    """The head's requests where they still lay out its moments (a step reshaped since,
    by a rank's strategy or another objective, is replayed as moments) and the head
    side's tensors hold the loss's saved item they make (none: activation offload
    leaves it on the host)."""
    r = s.head.requests
    if r is None or (r.logits_forward, r.loss_backward) != (
        s.head.logits_forward,
        s.head.loss_backward,
    ):
        return None
    return r if not r.saved_item or r.saved_item in t.above else None


def _without(sizes: tuple[int, ...], item: int) -> tuple[int, ...]:
    """``sizes`` without the last one equal to ``item`` (as they are for 0)."""
    if not item:
        return sizes
    i = len(sizes) - 1 - sizes[::-1].index(item)
    return sizes[:i] + sizes[i + 1 :]


def _run_requests(
    rec: _Recorder,
    requests: tuple[tuple[str, int], ...],
    keys: list[list[int]],
    carried: list[int] | None = None,
    skip: frozenset[int] = frozenset(),
    cache: int = -1,
    casts: _Casts | None = None,
) -> list[list[int]]:
    """A program's requests (phases.HeadRequests, a layer's forward): ("alloc", bytes),
    ("free", k) its k-th allocation, ("previous", 0) the last pass's held output
    (``carried``, emptied); ``keys``: its earlier phase's, extended; ``skip``: the
    allocations not requested; ``cache``: the allocation that stands for autocast's
    cache, requested less the copies the blocks made (``casts``) and freed with them."""
    for op, value in requests:
        if op == "alloc":
            n = len(keys)
            if n in skip:
                keys.append([])
                continue
            if n == cache and casts is not None:
                value -= casts.size
            keys.append(rec.alloc((value,)))
        elif op == PREVIOUS:
            if carried:
                rec.free(carried)
                carried.clear()
        else:
            rec.free(keys[value])
            if value == cache and casts is not None:
                rec.free(casts.keys)
                casts.keys.clear()
    return keys


def _as_saved(total: int, saved: tuple[int, ...]) -> tuple[int, ...]:
    """What a block's backward rebuilds (checkpointing's recompute) as the tensors its
    forward saved, as far as they go, the rest as one request: the recompute makes them
    one by one, as the forward did."""
    out: list[int] = []
    left = total
    for size in saved:
        if size > left:
            break
        out.append(size)
        left -= size
    return (*out, left) if left else tuple(out)


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _blocks_backward(
    rec: _Recorder,
    s: StepSizes,
    t: StepTensors,
    kept: list[list[int]],
    grads: list[int],
    new_grads: bool,
    make: Callable[[Sequence[int]], list[int]] | None = None,
) -> tuple[list[int], list[list[int]]]:
    """Each block's backward from the top: what its policy holds and its workspace (or a
    weight's step, the larger), then its saved tensors freed and its gradients made; the
    token embedding's gradient after the block it follows (the last, or an
    encoder-decoder's decoder bottom) and a tied one's sum. Returns the gradients and
    what stays held until backward ends (Checkpointed.held)."""
    g = s.gradients
    L, trainable = len(kept), g.trainable_blocks
    holds = s.block.policy.backward_holds(L, trainable)
    copy, backward = s.comm.unit_copy, s.comm.backward
    # the gradients the workspace counts as made come as the block's own, below; a
    # sharded unit's (its parameters gathered for backward) are unsharded ones, freed
    # once reduced after the unit: part of the moment
    made = 0 if copy or backward else s.block.workspace_grads
    workspace = max(s.block.workspace - made, s.optimizer.block)
    # a step in backward larger than the block's workspace, as the requests it makes
    step = s.optimizer
    largest: tuple[int, ...] = (workspace,)
    if step.block_tensors and step.block >= s.block.workspace - made:
        largest = step.block_tensors
    policy = s.block.policy
    idle = policy.idle_entries(L) if isinstance(policy, Offloaded) else [False] * L
    embedding_at = g.embedding_at if 0 < g.embedding_at < L else 0
    grads = list(grads)  # extended in place below: the caller's list stays as it was
    make = rec.grads if make is None else make
    transients: dict[int, tuple[int, ...]] = {}  # a policy's hold: the block's transients
    # FSDP1's reshard-only hook on the checkpoint's input (Checkpointed.held): each
    # block's input, then the gradient of the input above, freed when backward ends
    held = policy.held if isinstance(policy, Checkpointed) else ()
    deferred: list[list[int]] = []
    for i in range(L - 1, -1, -1):
        hold = holds[L - 1 - i]
        moments = transients.get(hold)
        if idle[L - 1 - i]:  # (phases._blocks_backward) autograd never reaches it
            moments = ()
        elif hold < 0:  # an offloaded block's moment below the others' workspace
            moments = (workspace + hold,)
        elif moments is None:
            moments = transients[hold] = (*_as_saved(hold, t.block_saved), *largest)
        if copy or backward:
            rec.host_copy(copy)
            # FSDP1's unit resharded last, still waiting for the compute stream: its
            # block, in the side stream's pool that only gathers take from, stays
            # reserved but not allocated while this unit gathers (requested first, so
            # its instant adds nothing to the allocated peak)
            rec.free(rec.comm(s.comm.backward_waiting))
            gathered = rec.comm(backward)
            if moments:
                rec.moments(moments)
            rec.free(gathered)
        elif moments:
            rec.moments(moments)
        if held:  # the input stays, and the gradient of the input above now with it
            deferred.append(kept[i])
            if i + 1 < L:
                deferred.append(rec.alloc((held[i + 1],)))
        else:
            rec.free(kept[i])
        if new_grads:
            if g.by_block:
                grads += make((g.by_block[i],))
            elif i >= L - trainable:
                grads += make(t.block_grads)
        if i == embedding_at and new_grads:
            grads += make(t.embedding_grads)
            rec.moment(g.tied_backward)
    return grads, deferred
