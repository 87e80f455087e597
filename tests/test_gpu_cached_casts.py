"""Autocast's cached weight copies in the allocator replay (gpu.trace): made where the
blocks' forwards make them, freed where the head's program frees autocast's cache.

torch caches the 16-bit copy of each fp32 leaf that requires grad the first time an
autocast op casts it, and drops the cache when the outermost autocast region ends
(aten/src/ATen/autocast_mode.cpp ``cached_cast``; torch/amp/autocast_mode.py
``__exit__``). Under gradient checkpointing nothing else keeps those copies, so the
timeline counts them once, in the head's forward moment (LinearOp.autocast_cache); the
head's requests hold them as one request (HeadRequests.cache). Where the blocks' requests
make them (ops.nograd_requests.LayerShape.weight_casts: fp32 adapters under autocast),
the replay requests them there, a few MiB at a time, and the head's request only for the
rest: one request of their sum at the head can take a block the head's own tensors would
have reused, and the next of them then a segment of its own.

The step below is made by hand, every size a multiple of 2 MiB and at least 10 MiB, so
each request is its own size in the large pool and each new segment exactly that size
(CUDACachingAllocator: round_size, get_allocation_size above kMinLargeAlloc)."""

from __future__ import annotations

from dataclasses import replace

from ftmem.block_policies import PLAIN
from ftmem.gpu.trace import StepTensors, replay_run, run_events
from ftmem.phases import (
    Activations,
    BlockTransients,
    Gradients,
    HeadRequests,
    HeadTransients,
    OptimizerStep,
    StepSizes,
)

MIB = 2**20
TRANSIENT, CAST, OUTPUT, LOGITS, GRAD = 60 * MIB, 12 * MIB, 20 * MIB, 60 * MIB, 40 * MIB
HELD = 2 * CAST  # two blocks' copies: the autocast cache the head's request stands for

# a block's forward: a transient, the cached copy (#1), the output (#2), the transient freed
BLOCK = (("alloc", TRANSIENT), ("alloc", CAST), ("alloc", OUTPUT), ("free", 0))
HEAD = HeadRequests(
    saved_item=0,
    # the cache (#0), the logits (#1); the forward returns: both freed
    forward=(("alloc", HELD), ("alloc", LOGITS), ("free", 0), ("free", 1)),
    backward=(("alloc", GRAD), ("free", 2)),
    logits_forward=HELD + LOGITS,
    loss_backward=GRAD,
    cache=0,
)
SIZES = StepSizes(
    weights=0,
    states=0,
    gradients=Gradients(total=0, outer=0, per_block=0, trainable_blocks=0, persist=False),
    activations=Activations((OUTPUT, OUTPUT), below=0, above=0),
    block=BlockTransients(forward=TRANSIENT + CAST + OUTPUT, workspace=0, policy=PLAIN),
    head=HeadTransients(HELD + LOGITS, GRAD, workspace=0, requests=HEAD),
    optimizer=OptimizerStep(temporaries=0),
)
TENSORS = StepTensors(
    weights=(),
    block_grads=(),
    outer_grads=(),
    embedding_grads=(),
    states=(),
    step_temporaries=(),
    block_saved=(OUTPUT,),
    below=(),
    above=(),
    block_forward=BLOCK,
    block_output=2,
    block_cached=(1,),
)


def test_the_copies_are_made_in_the_blocks_and_freed_with_the_cache():
    events = run_events([(SIZES, TENSORS)])
    requested = [size for op, size in events if op == "alloc"]
    # each block's copy in its forward; the head's cache request holds nothing more
    assert requested == [TRANSIENT, CAST, OUTPUT] * 2 + [LOGITS, GRAD]
    # allocations: 0 transient, 1 cast, 2 output, 3, 4, 5 (block 2), 6 logits, 7 gradient
    cast_frees = [i for i, (op, k) in enumerate(events) if op == "free" and k in (1, 4)]
    logits_free = events.index(("free", 6))
    assert cast_frees == [logits_free - 2, logits_free - 1]  # with the cache, then the logits


def test_reserved_by_hand():
    """Block 1: its transient cudaMallocs A (60 MiB), its copy B (12), its output C (20);
    the transient goes back to A. Block 2: the transient takes A again, a new copy D (12),
    a new output E (20). The head: nothing left of the cache; the logits take A (the only
    free block of 60 MiB), the copies B and D are freed with the cache, the logits at the
    return; the loss's gradient splits A (40 + 20 left, over 1 MiB). Reserved: 60 + 12 +
    20 + 12 + 20 = 124 MiB; at most 124 MiB live (in block 2: 20 + 24 + 60 + 20, and at
    the logits: 40 + 24 + 60)."""
    stats = replay_run([(SIZES, TENSORS)])
    assert stats.peak_reserved == 124 * MIB
    assert stats.peak_allocated == 124 * MIB


def test_as_one_request_at_the_head_the_cache_takes_the_logits_block():
    """The same step with the copies held by the head's request alone (a block program
    without them): the blocks reserve A, C, E (100 MiB); the cache's 24 MiB take A (the
    only free block), split (36 MiB left), so the logits cudaMalloc a segment of their
    own: 160 MiB reserved."""
    alone = replace(
        TENSORS,
        block_forward=(("alloc", TRANSIENT), ("alloc", OUTPUT), ("free", 0)),
        block_output=1,
        block_cached=(),
    )
    assert replay_run([(SIZES, alone)]).peak_reserved == 160 * MIB


def test_without_a_head_program_the_blocks_do_not_make_them():
    """Where the head is replayed as moments (no program names the cache), the head's
    moment counts the copies: the blocks skip them."""
    head = replace(SIZES.head, requests=None)
    events = run_events([(replace(SIZES, head=head), TENSORS)])
    requested = [size for op, size in events if op == "alloc"]
    assert CAST not in requested
    assert requested == [TRANSIENT, OUTPUT] * 2 + [HELD + LOGITS, GRAD]
