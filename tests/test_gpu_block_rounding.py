"""``max_memory_allocated`` counts the caching allocator's blocks, not the bytes asked for
(gpu/device.py's block_rounding, as an estimate's allocated peak carries it).

The expected figures are derived here by hand from the allocator's rules in
pytorch/pytorch c10/cuda/CUDACachingAllocator.cpp @001074d25084fdb87a799823e395a50f5ec044d3:
- malloc: ``size_t size = round_size(orig_size);``, a multiple of kMinBlockSize = 512
  (round_size: ``kMinBlockSize * ((size + kMinBlockSize - 1) / kMinBlockSize)``);
- get_pool: up to kSmallSize = 1 MiB the small pool, else the large one;
- get_allocation_size: a new segment of kSmallBuffer = 2 MiB for the small pool,
  kLargeBuffer = 20 MiB below kMinLargeAlloc = 10 MiB, else the size rounded up to
  kRoundLarge = 2 MiB;
- get_free_block: the smallest cached block of at least the rounded size;
- should_split: in the small pool when ``remaining >= kMinBlockSize``, in the large one
  when ``remaining > kSmallSize`` (with max_split_size unlimited, the default);
- alloc_found_block: ``increase_stat(stats.allocated_bytes[stat_type], block->size)``
  and ``increase_stat(stats.requested_bytes[stat_type], block->requested_size)``.
"""

from __future__ import annotations

import json

import ftmem
from ftmem.gpu.allocator import CachingAllocator, replay
from ftmem.gpu.best_fit import BestFit
from ftmem.gpu.device import block_rounding
from ftmem.present.estimate import to_json

MiB = 2**20

# 1. 1000 bytes: rounded to 1024, small pool, a new 2 MiB segment split (the rest is
#    2 MiB - 1024 >= 512): a block of 1024 bytes, 24 more than asked for.
# 2. 12 MiB: large pool, a new segment of exactly 12 MiB (>= 10 MiB: rounded to 2 MiB),
#    then freed: cached whole.
# 3. 11.5 MiB: the cached 12 MiB block is the best fit; its rest, 0.5 MiB, is not more
#    than 1 MiB, so it is not split: the whole 12 MiB block counts, 0.5 MiB more.
# 4. 5 MiB: large pool, no cached block, a new 20 MiB segment (between 1 and 10 MiB),
#    split (the rest, 15 MiB, is more than 1 MiB): a block of exactly 5 MiB.
EVENTS = [
    ("alloc", 1000),
    ("alloc", 12 * MiB),
    ("free", 1),
    ("alloc", 12 * MiB - MiB // 2),
    ("alloc", 5 * MiB),
]
BLOCKS = 1024 + 12 * MiB + 5 * MiB  # live at the end, the peak
REQUESTED = 1000 + (12 * MiB - MiB // 2) + 5 * MiB
ROUNDING = 24 + MiB // 2


def test_the_block_figure_of_a_hand_derived_sequence():
    stats = replay(EVENTS)
    assert stats.peak_allocated == BLOCKS
    assert stats.peak_requested == REQUESTED
    assert block_rounding(stats) == ROUNDING
    # three segments: 2 MiB (small), 12 MiB and 20 MiB (large)
    assert stats.peak_reserved == 2 * MiB + 12 * MiB + 20 * MiB


def test_the_fast_replay_counts_the_same_blocks():
    fast, reference = BestFit(), CachingAllocator()
    for target in (fast, reference):
        keep = [target.malloc(1000), target.malloc(12 * MiB)]
        target.free(keep.pop())
        keep += [target.malloc(12 * MiB - MiB // 2), target.malloc(5 * MiB)]
    assert block_rounding(fast.stats()) == block_rounding(reference.stats()) == ROUNDING


def test_a_split_large_block_and_small_requests_round_to_512_bytes_only():
    # 3 MiB + 1 byte from a fresh 20 MiB segment: split, the block is the request
    # rounded up to 512 bytes; 100 bytes from the small pool: 512
    stats = replay([("alloc", 3 * MiB + 1), ("alloc", 100)])
    assert block_rounding(stats) == 511 + 412


def test_a_cuda_estimate_counts_whole_blocks_and_shows_the_difference_as_a_part():
    cuda = ftmem.estimate("llama2-7b", method="lora", gpu="a100-80gb").memory
    rounding = cuda.at_peak.block_rounding
    assert 0 < rounding < 64 * MiB  # 512-byte rounding and unsplit rests of <= 1 MiB each
    assert cuda.at_peak.total == cuda.peak_allocated_bytes
    assert cuda.peak_reserved_bytes == cuda.peak_allocated_bytes + (
        cuda.beyond_allocated.allocator_cache
    )
    assert cuda.total_bytes == cuda.peak_allocated_bytes + cuda.overhead_bytes


def test_the_cpu_counts_the_bytes_asked_for():
    """No caching allocator on the CPU (the measured accuracy suite compares with the
    tensors' bytes): no block rounding, the three figures equal."""
    m = ftmem.estimate("gpt2", method="lora", device="cpu").memory
    assert m.at_peak.block_rounding == 0
    assert m.peak_allocated_bytes == m.at_peak.total == m.peak_reserved_bytes


def test_the_cpu_dump_has_no_block_rounding_field():
    """The JSON contract stays additive: the field appears where it is not 0 only."""
    est = ftmem.estimate("gpt2", method="lora", device="cpu")
    assert "block_rounding" not in json.loads(to_json(est))["memory"]["at_peak"]
    cuda = ftmem.estimate("gpt2", method="lora", device="cuda")
    at_peak = json.loads(to_json(cuda))["memory"]["at_peak"]
    assert at_peak["block_rounding"] == cuda.memory.at_peak.block_rounding > 0
