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
