"""The caching allocator's model against PyTorch's own rules.

Each expected number is derived here from the rule it tests, as
c10/cuda/CUDACachingAllocator.cpp (pytorch/pytorch @001074d2) states it:
- round_size: sizes round up to kMinBlockSize = 512 bytes;
- get_pool: <= kSmallSize (1 MiB) is the small pool, larger the large pool;
- get_allocation_size: a new segment is kSmallBuffer (2 MiB) for the small pool,
  kLargeBuffer (20 MiB) below kMinLargeAlloc (10 MiB), else the size rounded up to
  kRoundLarge (2 MiB);
- should_split: the small pool splits off a remainder >= 512 bytes, the large pool only
  one > 1 MiB (else the whole block is handed out and counted as allocated);
- get_free_block: the smallest free block that fits, the lowest address among equals;
- free_block: a freed block merges with free neighbours of its segment;
- malloc: when cudaMalloc fails, free cached blocks that are whole segments and retry;
- expandable segments: one segment per pool grown by pages of 2 MiB (small) and
  20 MiB (large), every remainder of 512 bytes split off.
"""

from __future__ import annotations

import random

import pytest

from ftmem.errors import InvalidInputError
from ftmem.gpu.allocator import (
    AllocatorOutOfMemoryError,
    CachingAllocator,
    _roundup_power2_next_division,
    replay,
    round_size,
)

KIB = 2**10
MIB = 2**20


def _ceil(n: int, step: int) -> int:
    return -(-n // step) * step


# -- rounding, pools and segment sizes -------------------------------------------------------


def test_one_byte_is_a_512_byte_block_in_a_2_mib_segment():
    a = CachingAllocator()
    a.malloc(1)
    assert (a.allocated, a.reserved, a.requested) == (512, 2 * MIB, 1)


def test_sizes_round_up_to_512_bytes():
    a = CachingAllocator()
    for size in (511, 512, 513, 1000, 4097):
        a.malloc(size)
    assert a.allocated == 512 + 512 + 1024 + 1024 + 4608
    assert a.reserved == 2 * MIB  # all small: one 2 MiB segment holds them


def test_small_segment_holds_4096_blocks_of_512_bytes():
    a = CachingAllocator()
    for _ in range(2 * MIB // 512):
        a.malloc(512)
    assert (a.allocated, a.reserved, a.segments) == (2 * MIB, 2 * MIB, 1)
    a.malloc(512)  # the first segment is full: a second 2 MiB one
    assert (a.reserved, a.segments) == (4 * MIB, 2)


def test_exactly_1_mib_is_still_small():
    a = CachingAllocator()
    a.malloc(1 * MIB)
    assert (a.allocated, a.reserved) == (1 * MIB, 2 * MIB)


def test_one_byte_over_1_mib_takes_a_20_mib_segment():
    a = CachingAllocator()
    a.malloc(MIB + 1)
    # rounded to 1 MiB + 512, large pool, < 10 MiB: a 20 MiB segment; the remainder
    # (19 MiB - 512) is over 1 MiB, so it is split off and only the block is allocated
    assert (a.allocated, a.reserved) == (MIB + 512, 20 * MIB)


def test_11_mib_takes_a_12_mib_segment_counted_whole_as_allocated():
    a = CachingAllocator()
    a.malloc(11 * MIB)
    # >= 10 MiB: the segment is 11 MiB rounded up to 2 MiB = 12 MiB; the 1 MiB left is
    # not > kSmallSize, so the block is not split: memory_allocated counts 12 MiB
    assert (a.allocated, a.reserved, a.requested) == (12 * MIB, 12 * MIB, 11 * MIB)


@pytest.mark.parametrize(
    ("request_bytes", "segment", "allocated"),
    [
        # < 10 MiB: a 20 MiB segment, 10.5 MiB left: split
        (9 * MIB + 512 * KIB, 20 * MIB, 9 * MIB + 512 * KIB),
        # 10 MiB is not < kMinLargeAlloc: the segment is 10 MiB exactly
        (10 * MIB, 10 * MIB, 10 * MIB),
        # rounded to 10 MiB + 512, segment 12 MiB, 2 MiB - 512 left > 1 MiB: split
        (10 * MIB + 1, 12 * MIB, 10 * MIB + 512),
        # 20 MiB segment, 0.5 MiB left: not split, the whole 20 MiB is allocated
        (19 * MIB + 512 * KIB, 20 * MIB, 20 * MIB),
        # 22 MiB segment, 1 MiB left is not > 1 MiB: not split
        (21 * MIB, 22 * MIB, 22 * MIB),
    ],
)
def test_large_segment_sizes_and_split_thresholds(request_bytes, segment, allocated):
    a = CachingAllocator()
    a.malloc(request_bytes)
    assert (a.allocated, a.reserved) == (allocated, segment)


# -- best fit, splitting and merging ---------------------------------------------------------


def test_a_freed_20_mib_segment_serves_two_8_mib_requests():
    a = CachingAllocator()
    a.free(a.malloc(20 * MIB))  # a 20 MiB segment (>= 10 MiB, already a 2 MiB multiple)
    assert (a.allocated, a.reserved) == (0, 20 * MIB)
    a.malloc(8 * MIB)  # 20 - 8 = 12 MiB left > 1 MiB: split
    a.malloc(8 * MIB)  # best fit is the 12 MiB remainder; 4 MiB left > 1 MiB: split
    assert (a.allocated, a.reserved, a.segments) == (16 * MIB, 20 * MIB, 1)
    a.malloc(8 * MIB)  # only 4 MiB cached: a new 20 MiB segment (8 MiB < 10 MiB)
    assert (a.allocated, a.reserved, a.segments) == (24 * MIB, 40 * MIB, 2)


def test_best_fit_takes_the_smallest_block_that_fits():
    a = CachingAllocator()
    small, big = a.malloc(12 * MIB), a.malloc(30 * MIB)
    a.free(big)
    a.free(small)
    # 11 MiB fits both; the 12 MiB block is the smaller, and 1 MiB left does not split
    assert a.malloc(11 * MIB) == small
    assert a.allocated == 12 * MIB
    assert a.malloc(25 * MIB) == big  # the 30 MiB segment, split (5 MiB left)
    assert (a.allocated, a.reserved) == (12 * MIB + 25 * MIB, 42 * MIB)


def test_equal_free_blocks_go_by_lowest_address():
    a = CachingAllocator()
    first, second = a.malloc(20 * MIB), a.malloc(20 * MIB)
    assert first < second  # new segments get rising addresses in the model
    a.free(second)
    a.free(first)
    assert a.malloc(20 * MIB) == first  # freed last but lower


def test_freed_neighbours_merge_within_their_segment():
    a = CachingAllocator()
    h1, h2, _ = (a.malloc(3 * MIB) for _ in range(3))  # one 20 MiB segment: 3+3+3, 11 left
    assert a.reserved == 20 * MIB
    a.free(h1)
    a.free(h2)
    # merged, h1+h2 is one 6 MiB block: the best fit for 6 MiB (the 11 MiB tail is larger);
    # unmerged, neither 3 MiB block would fit and the tail would be taken
    assert a.malloc(6 * MIB) == h1
    assert (a.allocated, a.reserved) == (9 * MIB, 20 * MIB)


def test_small_and_large_pools_do_not_share_blocks():
    a = CachingAllocator()
    a.free(a.malloc(20 * MIB))  # a cached large segment
    a.malloc(4 * KIB)  # small: needs a 2 MiB small segment all the same
    assert a.reserved == 22 * MIB


# -- what stays reserved ----------------------------------------------------------------------


def test_interleaved_frees_leave_holes_so_reserved_grows():
    a = CachingAllocator()
    handles = [a.malloc(9 * MIB) for _ in range(10)]
    # 9 MiB < 10 MiB: 20 MiB segments; each holds two (9 + 9, then 2 MiB left): 5 segments
    assert (a.allocated, a.reserved) == (90 * MIB, 100 * MIB)
    for h in handles[1::2]:
        a.free(h)  # the second of each segment merges with its 2 MiB tail: 11 MiB holes
    cached = a.reserved - a.allocated
    assert cached == 55 * MIB
    for k in range(1, 4):
        a.malloc(15 * MIB)  # fits no 11 MiB hole: a new 16 MiB segment, not split
        assert (a.allocated, a.reserved) == ((45 + 16 * k) * MIB, (100 + 16 * k) * MIB)


def test_empty_cache_returns_only_wholly_free_segments():
    a = CachingAllocator()
    kept = a.malloc(2 * MIB)  # a 20 MiB segment, split (18 MiB cached in it)
    gone = a.malloc(30 * MIB)  # a 30 MiB segment
    tiny = a.malloc(100)  # a 2 MiB small segment
    a.free(gone)
    a.free(tiny)
    assert a.reserved == 52 * MIB  # frees return nothing to the driver
    a.empty_cache()
    assert (a.reserved, a.segments) == (20 * MIB, 1)  # the split one stays
    a.free(kept)  # merges back into one free 20 MiB block
    a.empty_cache()
    assert (a.reserved, a.segments, a.allocated) == (0, 0, 0)


def test_peaks_and_reset():
    a = CachingAllocator()
    h = a.malloc(30 * MIB)
    a.free(h)
    assert (a.peak_allocated, a.peak_reserved) == (30 * MIB, 30 * MIB)
    a.empty_cache()
    a.reset_peaks()  # like torch.cuda.reset_peak_memory_stats: peaks restart at current
    assert (a.peak_allocated, a.peak_reserved) == (0, 0)
    a.malloc(1)
    assert (a.peak_allocated, a.peak_reserved, a.peak_requested) == (512, 2 * MIB, 1)


# -- capacity: the retry before "CUDA out of memory" -------------------------------------------


def test_a_full_device_frees_cached_segments_and_retries():
    a = CachingAllocator(capacity=60 * MIB)
    a.free(a.malloc(30 * MIB))  # 30 MiB cached
    a.malloc(40 * MIB)  # 30 + 40 > 60: cudaMalloc fails, the 30 MiB goes back, retry fits
    assert (a.allocated, a.reserved, a.peak_reserved) == (40 * MIB, 40 * MIB, 40 * MIB)
    assert a.num_alloc_retries == 1
    unlimited = CachingAllocator()
    unlimited.free(unlimited.malloc(30 * MIB))
    unlimited.malloc(40 * MIB)
    assert unlimited.reserved == 70 * MIB  # without the limit the cache is kept


def test_a_split_segment_cannot_be_given_back():
    def run(capacity: int) -> CachingAllocator:
        a = CachingAllocator(capacity=capacity)
        a.malloc(2 * MIB)  # 20 MiB segment, split: 18 MiB cached inside it
        a.free(a.malloc(20 * MIB))  # 18 MiB is too small: a second 20 MiB segment, cached
        a.malloc(22 * MIB)  # no cached block fits: needs 22 MiB more
        return a

    # 40 + 22 > 42: the retry frees the whole 20 MiB segment, not the split one: 20 + 22
    assert run(42 * MIB).reserved == 42 * MIB
    with pytest.raises(AllocatorOutOfMemoryError, match="CUDA out of memory") as error:
        run(41 * MIB)
    assert isinstance(error.value, InvalidInputError)
    assert str(error.value).count(".") >= 1 and "\n" not in str(error.value)


# -- PYTORCH_CUDA_ALLOC_CONF options ------------------------------------------------------------


def test_max_split_size_keeps_oversize_blocks_whole():
    a = CachingAllocator(max_split_size_mb=64)
    big = a.malloc(100 * MIB)  # >= 64 MiB: never split
    a.free(big)
    a.malloc(30 * MIB)  # < 64 MiB may not take an oversize block: a new 30 MiB segment
    assert a.reserved == 130 * MIB
    assert a.malloc(85 * MIB) == big  # oversize may be rounded up by < 20 MiB: 100 < 105
    assert a.allocated == 30 * MIB + 100 * MIB
    a.free(big)
    a.malloc(70 * MIB)  # 100 >= 70 + 20: not reused, a new 70 MiB segment
    assert a.reserved == 200 * MIB


def test_max_split_size_frees_oversize_blocks_before_the_full_retry():
    a = CachingAllocator(max_split_size_mb=64, capacity=120 * MIB)
    a.free(a.malloc(100 * MIB))
    a.malloc(30 * MIB)  # 100 + 30 > 120: release_available_cached_blocks frees the 100 MiB
    assert (a.reserved, a.num_alloc_retries) == (30 * MIB, 0)


def test_max_non_split_rounding_widens_the_reuse_of_oversize_blocks():
    a = CachingAllocator(max_split_size_mb=64, max_non_split_rounding_mb=40)
    big = a.malloc(100 * MIB)
    a.free(big)
    assert a.malloc(70 * MIB) == big  # 100 < 70 + 40: reused (with the default 20: not)
    assert (a.allocated, a.reserved) == (100 * MIB, 100 * MIB)


def test_max_split_size_is_at_least_20_mib():
    # AllocatorConfig::parseMaxSplitSize: "too small, must be >= 20" (2.1-era: > 20)
    CachingAllocator(max_split_size_mb=20)
    with pytest.raises(InvalidInputError, match="at least 20"):
        CachingAllocator(max_split_size_mb=19)


def test_roundup_power2_divisions():
    # the source's own example (roundup_power2_next_division): 1200, 4 divisions -> 1280
    assert _roundup_power2_next_division(1200, 4) == 1280
    # round_size applies it only above kMinBlockSize * divisions (2048): 1200 -> 1536
    assert round_size(1200, 4) == 1536
    # 5 MiB + 1 lies in [4, 8) MiB, 4 divisions of 1 MiB: 6 MiB
    assert round_size(5 * MIB + 1, 4) == 6 * MIB
    assert round_size(5 * MIB + 1) == _ceil(5 * MIB + 1, 512)  # off by default
    with pytest.raises(InvalidInputError):
        CachingAllocator(roundup_power2_divisions=3)


# -- expandable segments ----------------------------------------------------------------------


@pytest.mark.parametrize("expandable", [False, True])
def test_growing_sizes_from_step_to_step(expandable):
    # Note [Expandable Segments] (CUDACachingAllocator.cpp): a batch that grows slightly
    # from one iteration to the next needs slightly larger allocations than the cached
    # ones. Four tensors per step of 12, then 14, then 16 MiB, all freed after the step.
    a = CachingAllocator(expandable_segments=expandable)
    for mib in (12, 14, 16):
        _free(a, _allocate(a, 4, mib))
    if expandable:
        # one segment, the largest step in 20 MiB pages: 64 MiB -> 80 MiB
        assert a.reserved == _ceil(4 * 16 * MIB, 20 * MIB) == 80 * MIB
    else:
        # >= 10 MiB: exact 2 MiB-rounded segments, and no cached block of the earlier
        # steps fits a larger tensor: every step adds its own (48 + 56 + 64 MiB)
        assert a.reserved == (48 + 56 + 64) * MIB
    shrinking = CachingAllocator(expandable_segments=expandable)
    for mib in (16, 14, 12):
        _free(shrinking, _allocate(shrinking, 4, mib))
    # the other way round the first step's memory serves the later ones
    assert shrinking.reserved == (80 if expandable else 64) * MIB


def test_expandable_segments_reserve_allocated_rounded_to_pages():
    n, size = 30, 7 * MIB
    plain = CachingAllocator()
    grown = CachingAllocator(expandable_segments=True)
    for a in (plain, grown):
        for _ in range(n):
            a.malloc(size)
        assert a.allocated == n * size
    # one segment grown by 20 MiB pages: 210 MiB -> 11 pages
    assert grown.reserved == _ceil(n * size, 20 * MIB) == 220 * MIB
    # plain: 20 MiB segments of two 7 MiB blocks each (6 MiB left is too small)
    assert plain.reserved == (n // 2) * 20 * MIB == 300 * MIB


def test_expandable_small_pool_grows_by_2_mib_pages():
    a = CachingAllocator(expandable_segments=True)
    a.malloc(1)
    assert (a.allocated, a.reserved) == (512, 2 * MIB)
    a.malloc(MIB + 1)  # large pool: one 20 MiB page
    assert a.reserved == 22 * MIB
    a.malloc(11 * MIB)  # fits the same page: 12 MiB + 512 of 20 MiB used
    # every remainder >= 512 splits with expandable segments: allocated counts 11 MiB
    assert (a.allocated, a.reserved) == (512 + MIB + 512 + 11 * MIB, 22 * MIB)


def test_expandable_segments_refill_holes_and_grow_only_for_the_shortfall():
    a = CachingAllocator(expandable_segments=True)
    handles = [a.malloc(9 * MIB) for _ in range(10)]
    assert a.reserved == _ceil(90 * MIB, 20 * MIB) == 100 * MIB
    for h in handles[1::2]:
        a.free(h)  # 9 MiB holes, the last merged with the 10 MiB page tail: 19 MiB
    a.malloc(15 * MIB)  # fits the 19 MiB tail: no new page
    assert a.reserved == 100 * MIB
    a.malloc(15 * MIB)  # 4 MiB tail + 11 MiB more: one more 20 MiB page
    assert (a.allocated, a.reserved) == (75 * MIB, 120 * MIB)


def test_expandable_best_fit_passes_over_the_growable_tail():
    a = CachingAllocator(expandable_segments=True)
    hole = a.malloc(8 * MIB)
    a.malloc(7 * MIB)  # one 20 MiB page: 8 + 7, a 5 MiB free tail before unmapped space
    a.free(hole)
    # 4 MiB: the smallest fit is the 5 MiB tail, but get_free_block counts a block followed
    # by unmapped space at the size it can grow to, so the 8 MiB hole is taken instead
    assert a.malloc(4 * MIB) == hole
    assert a.reserved == 20 * MIB


def test_expandable_empty_cache_unmaps_whole_free_pages_only():
    a = CachingAllocator(expandable_segments=True)
    h = [a.malloc(20 * MIB) for _ in range(3)]  # three whole pages
    a.free(h[1])
    a.empty_cache()  # the middle page is free: unmapped
    assert a.reserved == 40 * MIB
    partial = a.malloc(7 * MIB)  # maps a page again (lowest free address first)
    assert a.reserved == 60 * MIB
    a.free(h[0])  # page 0 free, page 1 holds 7 MiB
    a.empty_cache()
    assert a.reserved == 40 * MIB
    a.free(partial)
    a.free(h[2])
    a.empty_cache()
    assert (a.reserved, a.allocated) == (0, 0)


def test_expandable_segments_at_capacity_unmap_free_pages_and_retry():
    a = CachingAllocator(expandable_segments=True, capacity=80 * MIB)
    _, middle, _ = (a.malloc(20 * MIB) for _ in range(3))  # pages 0-2
    a.free(middle)  # page 1 free between two live pages
    # 25 MiB fits no cached block: two more pages past the end, 60 + 40 > 80: the retry
    # unmaps the free page 1 (40 + 40 = 80) and maps them
    a.malloc(25 * MIB)
    assert (a.reserved, a.allocated, a.num_alloc_retries) == (80 * MIB, 65 * MIB, 1)
    a.malloc(15 * MIB)  # the 15 MiB left on page 4: no new page
    assert a.reserved == 80 * MIB
    # 20 MiB: the lowest room is the unmapped page 1, one page, 100 > 80; nothing whole
    # is free to unmap: out of memory
    with pytest.raises(AllocatorOutOfMemoryError):
        a.malloc(20 * MIB)


# -- the worked examples of a PyTorch maintainer's post ------------------------------------------
# pytorch/devlogs content/eager/2026-06-01-cuda-caching-allocator.md @5e6ea704 (E. Yang,
# "When does fragmentation occur in the CUDA caching allocator?"): numbers it states.


def _allocate(a: CachingAllocator, n: int, mib: float) -> list[int]:
    return [a.malloc(int(mib * MIB)) for _ in range(n)]


def _free(a: CachingAllocator, handles: list[int]) -> None:
    for h in handles:
        a.free(h)


def test_post_small_then_large_reserves_twice_large_then_small():
    bad = CachingAllocator()
    _free(bad, _allocate(bad, 8, 16))
    _allocate(bad, 4, 32)
    assert bad.reserved == 256 * MIB  # "eight stale 16 MiB segments plus four new 32 MiB"
    good = CachingAllocator()
    _free(good, _allocate(good, 4, 32))
    _allocate(good, 8, 16)
    assert good.reserved == 128 * MIB  # "still 128 MiB reserved"


def test_post_expandable_8_times_16_mib_maps_7_pages():
    a = CachingAllocator(expandable_segments=True)
    mapped = []
    handles = []
    for _ in range(8):
        handles.append(a.malloc(16 * MIB))
        mapped.append(a.reserved // MIB)
    # steps 1-5 as the post traces them (20, 40, 60, 80, still 80), then "the cycle
    # repeats"; "7 large pages: 140 MiB of physical memory for 128 MiB of allocations"
    assert mapped == [20, 40, 60, 80, 80, 100, 120, 140]
    _free(a, handles)
    _allocate(a, 4, 32)  # "carved out without mapping any new physical memory"
    assert a.reserved == 140 * MIB


def test_post_expandable_live_blocks_pin_the_splits():
    a = CachingAllocator(expandable_segments=True)
    ts = _allocate(a, 4, 16)
    a.free(ts[0])
    a.free(ts[2])
    before = a.reserved
    big = a.malloc(32 * MIB)  # "A 32M allocation has to grow the segment"
    assert a.reserved > before
    a.free(big)
    a.free(ts[1])
    a.free(ts[3])
    grown = a.reserved
    a.malloc(32 * MIB)  # "32M fits without growing" once everything merged
    assert a.reserved == grown


def test_post_the_1_mib_loophole():
    a = CachingAllocator(expandable_segments=True)
    _free(a, _allocate(a, 1, 2))
    _allocate(a, 1, 0.5)
    assert a.reserved == 22 * MIB  # "22 MiB with 20M/2M pages"
    b = CachingAllocator(expandable_segments=True)
    _free(b, _allocate(b, 1, 2))
    _allocate(b, 1, 2)
    assert b.reserved == 20 * MIB


# -- replay ------------------------------------------------------------------------------------


def test_replay_by_alloc_index():
    stats = replay([("alloc", 20 * MIB), ("free", 0), ("alloc", 8 * MIB), ("alloc", 8 * MIB)])
    assert (stats.allocated, stats.reserved, stats.peak_allocated) == (16 * MIB, 20 * MIB, 20 * MIB)
    stats = replay([("alloc", 30 * MIB), ("free", 0), ("empty_cache", 0), ("reset_peaks", 0)])
    assert (stats.peak_reserved, stats.reserved) == (0, 0)


@pytest.mark.parametrize(
    "events",
    [
        [("free", 0)],
        [("alloc", 1), ("free", 0), ("free", 0)],
        [("alloc", -1)],
        [("grow", 1)],
    ],
)
def test_replay_rejects_bad_events(events):
    with pytest.raises(InvalidInputError):
        replay(events)


def test_zero_bytes_is_a_null_handle():
    a = CachingAllocator()
    assert a.malloc(0) == 0
    a.free(0)
    assert (a.allocated, a.reserved) == (0, 0)


def _random_events(seed: int, n: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    events: list[tuple[str, int]] = []
    live: list[int] = []
    count = 0
    for _ in range(n):
        if live and rng.random() < 0.48:
            events.append(("free", live.pop(rng.randrange(len(live)))))
        else:
            size = rng.choice([rng.randrange(1, MIB), rng.randrange(MIB, 48 * MIB)])
            events.append(("alloc", size))
            live.append(count)
            count += 1
    return events


@pytest.mark.parametrize("expandable", [False, True])
def test_random_replays_keep_the_rules_invariants(expandable):
    a = CachingAllocator(expandable_segments=expandable)
    handles: list[int] = []
    sizes: dict[int, int] = {}
    for kind, value in _random_events(seed=7, n=3000):
        if kind == "alloc":
            h = a.malloc(value)
            handles.append(h)
            sizes[h] = value
        else:
            h = handles[value]
            a.free(h)
            del sizes[h]
        rounded = sum(round_size(s) for s in sizes.values())
        # a block is its rounded request plus a remainder too small to split: < 512 bytes
        # (small pool, expandable) or at most 1 MiB (large pool)
        slack = sum((MIB if s > MIB and not expandable else 511) for s in sizes.values())
        assert rounded <= a.allocated <= rounded + slack
        assert a.requested == sum(sizes.values())
        assert a.allocated <= a.reserved
        assert a.reserved % (2 * MIB) == 0  # segments and pages are 2 MiB multiples
    for h in list(sizes):
        a.free(h)
    a.empty_cache()
    assert (a.allocated, a.reserved) == (0, 0)


def test_100k_events_replay():
    stats = replay(_random_events(seed=1, n=100_000))
    assert stats.peak_allocated <= stats.peak_reserved
    stats = replay(_random_events(seed=1, n=100_000), expandable_segments=True)
    assert stats.peak_allocated <= stats.peak_reserved
