"""Blocks belong to the stream that allocated them (CUDACachingAllocator.cpp,
get_free_block searches its pool for a block of the same stream): FSDP's all-gather
and reduce-scatter buffers, made on streams of their own, leave cache the default
stream cannot reuse."""

from __future__ import annotations

import pytest

import ftmem
from ftmem.errors import InvalidInputError
from ftmem.gpu.allocator import SIDE_STREAM_ALLOC, TwoStreams, replay, replay_streams

MiB = 2**20


def test_a_block_freed_on_a_side_stream_is_not_reused_by_the_default_one():
    # 40 MiB (>= 10 MiB: a segment of its own, rounded to 2 MiB) on the side stream,
    # freed, then the same on the default stream: a second segment
    events = [(SIDE_STREAM_ALLOC, 40 * MiB), ("free", 0), ("alloc", 40 * MiB)]
    two = replay_streams(events)
    assert (two.peak_reserved, two.peak_allocated) == (80 * MiB, 40 * MiB)
    # on one stream the freed segment serves the second request
    one = replay([("alloc", 40 * MiB), ("free", 0), ("alloc", 40 * MiB)])
    assert (one.peak_reserved, one.peak_allocated) == (40 * MiB, 40 * MiB)


def test_each_stream_reuses_its_own_blocks():
    events = [
        (SIDE_STREAM_ALLOC, 30 * MiB),
        ("free", 0),
        (SIDE_STREAM_ALLOC, 30 * MiB),
        ("alloc", 12 * MiB),
        ("free", 2),
        ("alloc", 12 * MiB),
    ]
    stats = replay_streams(events)
    assert stats.peak_reserved == 30 * MiB + 12 * MiB
    assert stats.peak_allocated == 42 * MiB


def test_bad_events_are_one_sentence():
    with pytest.raises(InvalidInputError, match="frees no live allocation"):
        replay_streams([("free", 3)])
    with pytest.raises(InvalidInputError, match="Unknown allocator event"):
        replay_streams([("malloc", 3)])


def test_fsdps_side_streams_cache_more_than_one_pool_would():
    """The same rank's requests, with the gathered layers and buckets on a side stream
    or on the default one: the side stream's pool cannot lend its blocks back."""
    from ftmem.api import parallel_config, run_config
    from ftmem.estimate import _tensors
    from ftmem.gpu.device import replayed_stats
    from ftmem.parallel import parallel_step
    from ftmem.presets import get_model

    arch, run = get_model("llama2-7b"), run_config(method="full", seq_len=1024)
    step = parallel_step(arch, run, parallel_config(gpus=8, strategy="fsdp"))
    sizes = step.ranks[step.worst].sizes
    tensors = _tensors(step.parts, sizes)
    steps = ((sizes, tensors), (sizes, tensors))
    apart, together = (
        (st := replayed_stats(steps, ((), ()), streams)).peak_reserved - st.peak_allocated
        for streams in (True, False)
    )
    assert apart > together
    est = ftmem.estimate("llama2-7b", method="full", seq_len=1024, gpus=8, strategy="fsdp")
    assert est.memory.beyond_allocated.allocator_cache >= apart


def test_the_streams_share_the_devices_capacity():
    """The device's memory is one for every stream: a side stream's request that finds
    no room frees the default stream's cached segments too (release_cached_blocks walks
    the whole pool), where per-stream limits would have let the two outgrow the GPU."""
    streams = TwoStreams(capacity=100 * MiB)
    streams.free(streams.malloc(60 * MiB))  # a 60 MiB segment cached on the default stream
    streams.malloc_side(50 * MiB)  # 60 + 50 > 100: the cached 60 MiB goes back, then 50
    s = streams.stats()
    assert (s.reserved, s.peak_reserved, s.num_alloc_retries) == (50 * MiB, 60 * MiB, 1)
