"""``record_stream``: a block used on another stream is not reused before that stream's
work is done. PyTorch's ``free`` of such a block drops ``allocated_bytes`` at once but
records an event on each using stream instead of returning the block to its pool
(``insert_events``); ``process_events``, at the start of the next ``malloc``, returns it
once the events have completed; ``empty_cache`` synchronises on them first
(pytorch/pytorch c10/cuda/CUDACachingAllocator.cpp @001074d2: ``free``, ``malloc``,
``release_cached_blocks``). Expected bytes below are derived by hand from the segment
rules (a request of 10 MiB or more gets a segment of its own, rounded to 2 MiB; one of
1-10 MiB is cut from a 20 MiB segment)."""

from __future__ import annotations

import pytest

from ftmem.errors import InvalidInputError
from ftmem.gpu.allocator import (
    POST_STREAM_ALLOC,
    PRE_STREAM_ALLOC,
    RECORDED_FREE,
    RELEASE_RECORDED,
    SIDE_STREAM_ALLOC,
    replay_streams,
)

MiB = 2**20


def test_a_recorded_free_is_not_reused_until_its_events_complete():
    # 40 MiB on the unshard stream, freed while record_stream'ed, asked again: the
    # block is still waiting, so a second 40 MiB segment; allocated counts one
    events = [(SIDE_STREAM_ALLOC, 40 * MiB), (RECORDED_FREE, 0), (SIDE_STREAM_ALLOC, 40 * MiB)]
    stats = replay_streams(events)
    assert (stats.peak_reserved, stats.peak_allocated) == (80 * MiB, 40 * MiB)
    # once its events completed the first block serves the next request
    released = [*events, (RELEASE_RECORDED, 0), (SIDE_STREAM_ALLOC, 40 * MiB)]
    assert replay_streams(released).peak_reserved == 80 * MiB
    # with a plain free the second request reuses the first segment
    plain = replay_streams(
        [(SIDE_STREAM_ALLOC, 40 * MiB), ("free", 0), (SIDE_STREAM_ALLOC, 40 * MiB)]
    )
    assert plain.peak_reserved == 40 * MiB


def test_release_keeps_the_newest_waiting():
    # two 30 MiB blocks freed with record_stream; all but the newest released; a
    # third request of 30 MiB reuses the oldest: 60 MiB reserved, not 90
    events = [
        (SIDE_STREAM_ALLOC, 30 * MiB),
        (SIDE_STREAM_ALLOC, 30 * MiB),
        (RECORDED_FREE, 0),
        (RECORDED_FREE, 1),
        (RELEASE_RECORDED, 1),
        (SIDE_STREAM_ALLOC, 30 * MiB),
        (SIDE_STREAM_ALLOC, 30 * MiB),  # the newest still waits: a third segment
    ]
    assert replay_streams(events[:6]).peak_reserved == 60 * MiB
    assert replay_streams(events).peak_reserved == 90 * MiB


def test_a_waiting_block_does_not_merge_with_its_free_neighbour():
    # one 20 MiB segment cut into A = 6 MiB, B = 6 MiB and an 8 MiB tail; A freed with
    # record_stream, B freed: B merges with the tail only (14 MiB), so 16 MiB needs a
    # segment of its own (16 MiB) -> 36 MiB; with A released first the three merge
    # back into 20 MiB, which serves it -> 20 MiB
    head = [("alloc", 6 * MiB), ("alloc", 6 * MiB), (RECORDED_FREE, 0), ("free", 1)]
    assert replay_streams([*head, ("alloc", 16 * MiB)]).peak_reserved == 36 * MiB
    merged = [*head, (RELEASE_RECORDED, 0), ("alloc", 16 * MiB)]
    assert replay_streams(merged).peak_reserved == 20 * MiB


def test_empty_cache_waits_for_the_events_then_releases():
    events = [(POST_STREAM_ALLOC, 40 * MiB), (RECORDED_FREE, 0), ("empty_cache", 0)]
    assert replay_streams(events).reserved == 0
    assert replay_streams(events[:2]).reserved == 40 * MiB


def test_a_recorded_free_of_nothing_is_one_sentence():
    with pytest.raises(InvalidInputError, match="frees no live allocation"):
        replay_streams([(RECORDED_FREE, 0)])


def _fsdp1_forward(units: int, unit: int, root: int, record: bool) -> list[tuple[str, int]]:
    """FSDP1's forward on the unshard stream with limit_all_gathers (torch 2.2
    torch/distributed/fsdp/_runtime_utils.py ``_unshard`` / ``_reshard``, _limiter_utils
    ``_FreeEventQueue``): the root unit gathered first and kept; per unit, the rate
    limiter synchronises on the oldest of two free events, so before each all-gather's
    malloc every freed unit but the newest is known complete; the unit's padded
    unsharded flat parameter is allocated on the unshard stream and, at its reshard,
    record_stream'ed on the compute stream and freed (``_free_unsharded_flat_param``)."""
    events: list[tuple[str, int]] = [(SIDE_STREAM_ALLOC, root)]
    for i in range(units):
        events += [(RELEASE_RECORDED, 1)] if record else []
        events += [(SIDE_STREAM_ALLOC, unit), (RECORDED_FREE if record else "free", i + 1)]
    return events


def test_fsdp1_units_hold_two_gathered_units_under_the_rate_limiter():
    """With the CPU ahead of the GPU, the unit freed last is still waiting when the
    next one is gathered: the unshard stream's pool holds the root and two units (by
    hand: 500 + 2 x 98 MiB), where plain frees would hold the root and one. That is
    what the trace's one request of root + BLOCKS_IN_FLIGHT units per block reserves."""
    root, unit = 500 * MiB, 98 * MiB
    recorded = replay_streams(_fsdp1_forward(32, unit, root, record=True))
    assert recorded.peak_reserved == root + 2 * unit
    assert recorded.peak_allocated == root + unit
    assert replay_streams(_fsdp1_forward(32, unit, root, record=False)).peak_reserved == root + unit
    coarse = [(SIDE_STREAM_ALLOC, root + 2 * unit), ("free", 0)]
    assert replay_streams(coarse).peak_reserved == recorded.peak_reserved


def _fsdp_rank(offload: bool, strategy: str = "fsdp"):
    from ftmem.api import parallel_config, run_config
    from ftmem.estimate import _tensors
    from ftmem.parallel import parallel_step
    from ftmem.presets import get_model

    arch = get_model("gpt2")
    run = run_config(method="lora", seq_len=256, batch_size=2)
    layout = {"offload_params": "cpu", "offload_optimizer": "cpu"} if offload else {}
    step = parallel_step(arch, run, parallel_config(gpus=2, strategy=strategy, **layout))
    sizes = step.ranks[step.worst].sizes
    return arch, sizes, _tensors(step.parts, sizes)


def test_sharded_fsdp_makes_its_gradient_shards_on_the_post_backward_stream():
    """FSDP1's post-backward hook reduce-scatters under ``with stream(post_backward)``,
    where ``_get_reduce_scatter_tensors`` allocates the shard (``torch.empty_like``)
    that ``_accumulate_sharded_grad`` keeps as the gradient (torch 2.2-2.13
    torch/distributed/fsdp/_runtime_utils.py): each trainable block's gradient shard is
    a request on that stream, in the first pass of each of the two steps; NO_SHARD
    all-reduces the autograd gradient in place and makes none there."""
    from ftmem.gpu.trace import run_events

    arch, sizes, tensors = _fsdp_rank(offload=False)
    events = run_events([(sizes, tensors)] * 2, ((), ()), True, grad_stream=True)
    posted = [n for kind, n in events if kind == POST_STREAM_ALLOC]
    assert posted == [sizes.gradients.per_block] * (2 * arch.num_layers)
    assert sum(posted) // 2 == sizes.gradients.total  # LoRA: every gradient is in a block
    plain = run_events([(sizes, tensors)] * 2, ((), ()), True)
    assert not [kind for kind, _ in plain if kind == POST_STREAM_ALLOC]


def test_cpu_offload_copies_each_shard_on_the_pre_unshard_stream():
    """Under CPUOffload, FSDP1's ``pre_unshard`` copies the unit's shard to the GPU on
    the pre-unshard stream before every all-gather (the root's once per forward, each
    block's in forward and again in backward), record_stream'ed on the unshard stream
    and freed as soon as the all-gather is issued."""
    from ftmem.gpu.trace import run_events

    arch, sizes, tensors = _fsdp_rank(offload=True)
    c = sizes.comm
    assert c.unit_copy > 0 and c.root_copy > c.unit_copy
    events = run_events([(sizes, tensors)] * 2, ((), ()), True)
    copies = [n for kind, n in events if kind == PRE_STREAM_ALLOC]
    per_pass = [c.root_copy] + [c.unit_copy] * (2 * arch.num_layers)
    assert copies == per_pass * 2
    recorded = [kind for kind, _ in events if kind == RECORDED_FREE]
    assert len(recorded) == len(copies)


def test_the_pre_unshard_pool_holds_the_roots_copy_and_one_units():
    """By hand: the root's copy (R) is still waiting when the first unit's is made, so
    that one gets a segment of its own (U); from then on each copy finds the block of
    the one before last free again (R's, split, or U's): the pool holds R + U. At the
    end of backward the offload callback's synchronize returns everything, so the next
    step's root copy finds its segment whole again."""
    from ftmem.gpu.allocator import TwoStreams

    R, U, L = 250 * MiB, 98 * MiB, 12
    streams = TwoStreams()
    for _ in range(2):  # two steps
        for size in [R] + [U] * (2 * L):
            streams.release_recorded(1)
            streams.free_recorded(streams.malloc_pre(size))
        streams.release_recorded(0)
    assert streams.pools[3].peak_reserved == R + U
    assert streams.pools[3].reserved == R + U


def test_fsdp1_cpu_offload_keeps_the_gradient_shards_on_the_gpu_through_backward():
    """``_offload_grad`` copies each shard to ``_cpu_grad`` but ``_saved_grad_shard``
    keeps the GPU one until the post-backward final callback (torch 2.2-2.13
    _runtime_utils.py ``_accumulate_sharded_grad``, _flat_param.py
    ``prepare_gradient_for_optim``): the fsdp_qlora profile (FSDP1) keeps the rank's
    gradients on the GPU under offload; the default (FSDP2's ``fully_shard``, whose
    reduce moves them to the CPU) keeps none."""
    from ftmem.api import parallel_config, run_config
    from ftmem.parallel import parallel_step
    from ftmem.presets import get_model

    arch = get_model("gpt2")
    layout = parallel_config(gpus=2, strategy="fsdp", offload_params="cpu", offload_optimizer="cpu")
    kept = {}
    for framework in ("fsdp_qlora", None):
        extra = {"framework": framework} if framework else {}
        run = run_config(method="lora", seq_len=256, batch_size=2, **extra)
        step = parallel_step(arch, run, layout)
        kept[framework] = step.ranks[step.worst].sizes.gradients.total
    plain = parallel_step(
        arch,
        run_config(method="lora", seq_len=256, batch_size=2),
        parallel_config(gpus=2, strategy="fsdp"),
    )
    assert kept[None] == 0
    assert kept["fsdp_qlora"] == plain.ranks[plain.worst].sizes.gradients.total > 0
