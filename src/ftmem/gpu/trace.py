"""A training run's allocations and frees in order, for the allocator model to replay.

The timeline (phases.py) needs only sums; the CUDA caching allocator needs each request
in order, because what it reserves depends on which freed blocks a later request can
reuse. This module lays the step's known tensors out in time, as PyTorch requests them:

1. loading: every weight tensor;
2. two optimizer steps, each of ``micro_batches`` forward + backward passes:
   forward: per block, its transient, then the tensors it saves; the head's saved
   tensors, the logits' transient; backward: the loss's transient, the head's
   gradients, then per block from the top what its policy rebuilds and its workspace,
   its gradients, and its saved tensors freed; the embedding's gradient last;
   optimizer: the states on the first step (torch creates them lazily), the step's
   temporaries; ``zero_grad(set_to_none=True)`` frees the gradients.

Two steps, because the first one creates the optimizer states after the activations
were freed and the second one then allocates its activations around them: the cache
the first leaves behind is what the second reuses or not.

Sizes are the estimate's own; tensors the estimate knows only as a sum (a block's
backward workspace, the step's temporaries) are one request of that size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ftmem.methods import MethodPlan
from ftmem.phases import StepSizes

# ("alloc", bytes): the k-th of them is allocation k; ("free", k) frees it
# (gpu.allocator.replay's events)
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


def plan_tensors(
    plan: MethodPlan,
    sizes: StepSizes,
    block_saved: Sequence[int],
    below: Sequence[int],
    above: Sequence[int],
) -> StepTensors:
    """The tensors of a one-GPU step: weights and gradients from the plan's groups; the
    optimizer states in two tensors per trainable one (Adam's moments; a sum split by
    size for the others)."""
    weights: list[int] = []
    block_grads: list[int] = []
    outer: list[tuple[str, int]] = []
    trainable_numel: list[int] = []
    blocks = max(plan.trainable_blocks, 1)
    for g in plan.groups:
        weights += [g.nbytes // g.count] * g.count
        if not g.trainable:
            continue
        grad = g.numel * g.element_bytes
        trainable_numel += [g.numel] * g.count
        if g.in_block:
            block_grads += [grad] * max(g.count // blocks, 1)
        else:
            outer += [(g.name, grad)] * g.count
    embedding_total = sizes.gradients.embedding
    embedding = [b for _, b in outer if embedding_total and b == embedding_total][:1]
    rest = [b for _, b in outer]
    if embedding:
        rest.remove(embedding[0])
    return StepTensors(
        weights=tuple(weights),
        block_grads=tuple(block_grads) if sizes.gradients.per_block else (),
        outer_grads=tuple(rest) if sizes.gradients.outer else (),
        embedding_grads=tuple(embedding) if sizes.gradients.total else (),
        states=_split(sizes.states, trainable_numel),
        step_temporaries=_split(sizes.optimizer.temporaries, trainable_numel, per_tensor=1),
        block_saved=tuple(block_saved),
        below=tuple(below),
        above=tuple(above),
    )


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
        step_temporaries=_chunks(sizes.optimizer.temporaries, chunks),
        block_saved=tuple(block_saved),
        below=tuple(below),
        above=tuple(above),
    )


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


def _split(total: int, numels: list[int], per_tensor: int = 2) -> tuple[int, ...]:
    """``total`` bytes as ``per_tensor`` tensors per trainable tensor, in proportion to
    its size."""
    if not total or not numels:
        return (total,) if total else ()
    whole = sum(numels)
    parts = [total * n // (per_tensor * whole) for n in numels for _ in range(per_tensor)]
    parts[-1] += total - sum(parts)
    return tuple(p for p in parts if p > 0)


class _Recorder:
    """Hands out keys and records the events."""

    __slots__ = ("events", "next_key")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.next_key = 0

    def alloc(self, sizes: Sequence[int]) -> list[int]:
        keys = []
        for size in sizes:
            if size > 0:
                keys.append(self.next_key)
                self.next_key += 1
                self.events.append(("alloc", size))
        return keys

    def free(self, keys: Sequence[int]) -> None:
        self.events.extend(("free", k) for k in keys)

    def moment(self, size: int) -> None:
        """A transient: allocated, then freed before anything else is requested."""
        self.free(self.alloc((size,)))


def step_events(
    sizes: StepSizes,
    t: StepTensors,
    micro_batches: int = 1,
    kept_workspaces: tuple[tuple[int, ...], tuple[int, ...]] = ((), ()),
) -> list[Event]:
    """Loading, then two optimizer steps of ``micro_batches`` passes each;
    ``kept_workspaces``: the cuBLAS workspaces of the forward's and the backward's
    threads, allocated at each one's first GEMM and kept (gpu.runtime)."""
    rec = _Recorder()
    rec.alloc(t.weights)
    if sizes.loop_held:  # the loop's last output (LitGPT's fp32 logits), from then on
        rec.alloc((sizes.loop_held,))
    states_made = sizes.states == 0
    first = True
    for _ in range(2):
        grads: list[int] = []
        for _ in range(micro_batches):
            grads = _pass(rec, sizes, t, grads, kept_workspaces if first else ((), ()))
            first = False
        if not states_made:
            rec.alloc(t.states)
            states_made = True
        temporaries = t.step_temporaries or (sizes.optimizer.temporaries,)
        rec.free(rec.alloc(temporaries))
        rec.free(grads)  # zero_grad(set_to_none=True)
    return rec.events


def _pass(
    rec: _Recorder,
    s: StepSizes,
    t: StepTensors,
    grads: list[int],
    workspaces: tuple[tuple[int, ...], tuple[int, ...]],
) -> list[int]:
    """One forward and backward; ``grads``: the gradients already held (accumulation),
    ``workspaces``: the cuBLAS ones its first GEMMs create. Returns the gradients held
    after it."""
    accumulating = bool(grads)
    per_block = s.activations.per_block
    typical = sum(t.block_saved)
    below = rec.alloc(t.below)
    rec.alloc(workspaces[0])
    kept: list[list[int]] = []
    for size in per_block:
        rec.moment(s.block.forward)
        kept.append(rec.alloc(t.block_saved if size == typical else (size,)))
    above = rec.alloc(t.above)
    rec.moment(s.head.logits_forward)
    rec.moment(s.head.loss_backward)
    rec.alloc(workspaces[1])  # the LM head's backward GEMM, on the autograd thread
    rec.free(above)
    if not accumulating:
        grads = grads + rec.alloc(t.outer_grads)
    rec.moment(s.head.workspace)
    L, trainable = len(per_block), s.gradients.trainable_blocks
    holds = s.block.policy.backward_holds(L, trainable)
    for i in range(L - 1, -1, -1):
        held = rec.alloc((holds[L - 1 - i], s.block.workspace))
        if not accumulating and i >= L - trainable:
            grads = grads + rec.alloc(t.block_grads)
        rec.free(held)
        rec.free(kept[i])
    if not accumulating:
        grads = grads + rec.alloc(t.embedding_grads)
    rec.free(below)
    return grads
