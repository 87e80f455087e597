"""The fast best fit (gpu/best_fit.py) against the allocator model it stands in for.

gpu.allocator.CachingAllocator follows PyTorch's code rule by rule and is checked
against PyTorch's own examples (tests/test_gpu_allocator.py); BestFit must make the
very same decisions in the configuration it covers. Every test here replays one request
sequence through both and compares what PyTorch would report (every statistic, after
every call), the handles (the blocks' addresses) and, at the end, the free blocks of
both pools; the sequences are random (sizes in both pools, runs of equal sizes for the
carving shortcut, batches freed together for moment_many) and real (the estimate's own
runs).
"""

from __future__ import annotations

import random

import pytest

from ftmem.api import run_config
from ftmem.errors import InvalidInputError
from ftmem.estimate import _tensors
from ftmem.gpu import best_fit
from ftmem.gpu.allocator import CachingAllocator, TwoStreams, replay_streams
from ftmem.gpu.best_fit import BestFit, fits_best_fit, new_allocator
from ftmem.gpu.trace import replay_run, run_events
from ftmem.presets import get_model
from ftmem.step import step_parts

MIB = 2**20


def _pools(reference: CachingAllocator) -> list[tuple[int, int]]:
    return [(size, addr) for size, addr, _ in reference._free[True] + reference._free[False]]


def _sizes(rng: random.Random, n: int) -> list[int]:
    """Request sizes in both pools and across the segment sizes' edges (1 MiB, 10 MiB),
    a third of them repeated from the last (runs of equal requests), a few 0."""
    sizes: list[int] = []
    for _ in range(n):
        roll = rng.random()
        if sizes and roll < 0.33:
            sizes.append(sizes[-1])
        elif roll < 0.36:
            sizes.append(0)
        else:
            sizes.append(
                rng.choice(
                    (
                        rng.randrange(1, 4096),
                        rng.randrange(1, 3 * MIB),
                        rng.randrange(MIB - 2048, MIB + 2048),
                        rng.randrange(9 * MIB, 11 * MIB),
                        rng.randrange(1, 64 * MIB),
                        rng.choice((512, 2 * MIB, 20 * MIB)),
                    )
                )
            )
    return sizes


@pytest.mark.parametrize("seed", range(60))
def test_best_fit_decides_as_the_caching_allocator(seed):
    """Random calls of every kind, one request or a batch at a time: the same handles,
    the same statistics after each call, the same pools at the end."""
    rng = random.Random(seed)
    fast, slow = BestFit(), CachingAllocator()
    live: list[int] = []
    for _ in range(120):
        roll = rng.random()
        sizes = _sizes(rng, rng.choice((1, 2, 5, 20)))
        if roll < 0.35 or not live:
            handles = fast.malloc_many(sizes)
            assert handles == [slow.malloc(s) for s in sizes if s > 0]
            live += handles
        elif roll < 0.45:
            handle = fast.malloc(sizes[0])
            assert handle == slow.malloc(sizes[0])
            live += [handle] if handle else []
        elif roll < 0.55:
            fast.moment(sizes[0])
            slow.moment(sizes[0])
        elif roll < 0.7:
            fast.moment_many(sizes)
            slow_handles = [slow.malloc(s) for s in sizes if s > 0]
            for handle in slow_handles:
                slow.free(handle)
        elif roll < 0.72:
            fast.reset_peaks()
            slow.reset_peaks()
        elif roll < 0.75:  # torch.cuda.empty_cache() (torchtune's GRPO recipe calls it)
            fast.empty_cache()
            slow.empty_cache()
        else:  # free some live blocks, in a random order, one by one or together
            rng.shuffle(live)
            k = rng.randrange(1, len(live) + 1)
            chosen, live = live[:k], live[k:]
            if rng.random() < 0.5:
                fast.free_many(chosen)
            else:
                for handle in chosen:
                    fast.free(handle)
            for handle in chosen:
                slow.free(handle)
        assert fast.stats() == slow.stats()
    assert fast.free_blocks() == _pools(slow)
    assert sorted(fast._live) == sorted(slow._live)


def test_a_run_of_equal_requests_is_carved_as_the_pool_would_serve_it():
    """Equal requests after a cached block of each size class: the carving shortcut
    must leave each rest to the pool where a smaller cached block fits better."""
    for first in (3 * MIB, 12 * MIB, 700 * 1024, 40 * MIB):
        fast, slow = BestFit(), CachingAllocator()
        for allocator in (fast, slow):  # cached blocks of several sizes
            kept = [allocator.malloc(s) for s in (first, 5 * MIB, 1536, 300 * 1024)]
            allocator.free(kept[0])
            allocator.free(kept[2])
        for size in (2048, 2 * MIB, 300 * 1024, 4 * MIB):
            run = [size] * 7
            assert fast.malloc_many(run) == [slow.malloc(s) for s in run]
            assert fast.stats() == slow.stats()
        assert fast.free_blocks() == _pools(slow)


def test_a_moment_of_many_tensors_leaves_the_pools_as_their_frees_do():
    """moment_many skips the frees: the pools must come back as the frees leave them,
    with the segments the tensors needed cached whole (both pools)."""
    fast, slow = BestFit(), CachingAllocator()
    sizes = [3 * MIB, 512, 700 * 1024, 25 * MIB, 25 * MIB, 1536, 12 * MIB]
    for allocator in (fast, slow):
        kept = [allocator.malloc(s) for s in sizes]
        for handle in kept[::2]:
            allocator.free(handle)
    batch = [2 * MIB, 100, 900 * 1024, 30 * MIB, 3 * MIB, 3 * MIB, 64 * MIB]
    fast.moment_many(batch)
    for handle in [slow.malloc(s) for s in batch]:
        slow.free(handle)
    assert fast.stats() == slow.stats()
    assert fast.free_blocks() == _pools(slow)
    assert fast.malloc_many(batch) == [slow.malloc(s) for s in batch]


def test_the_errors_are_the_caching_allocators():
    fast = BestFit()
    with pytest.raises(InvalidInputError, match="negative size"):
        fast.malloc(-1)
    with pytest.raises(InvalidInputError, match="not a live allocation"):
        fast.free(12345)
    assert fast.malloc(0) == 0
    fast.free(0)


def test_other_options_keep_the_caching_allocator():
    assert fits_best_fit({}) and fits_best_fit({"max_non_split_rounding_mb": 40})
    for options in (
        {"expandable_segments": True},
        {"max_split_size_mb": 64},
        {"roundup_power2_divisions": 4},
        {"capacity": 80 * 2**30},
    ):
        assert not fits_best_fit(options)
        assert isinstance(new_allocator(**options), CachingAllocator)
    assert isinstance(new_allocator(), BestFit)
    with pytest.raises(InvalidInputError):  # the options are still checked
        new_allocator(max_non_split_rounding_mb=5)


RUNS = [
    ("llama2-7b", {"method": "lora"}),
    ("llama2-7b", {"method": "full", "grad_ckpt": True}),
    ("llama2-7b", {"method": "qlora", "grad_accum": 2}),
    ("mixtral-8x7b", {"method": "lora", "grad_ckpt": True}),
    ("qwen2.5-0.5b", {"method": "dora", "precision": "bf16-mixed"}),
    ("flan-t5-base", {"method": "full"}),
]


@pytest.mark.parametrize(("model", "settings"), RUNS, ids=lambda x: str(x))
def test_real_runs_replay_as_their_events_do(model, settings):
    """The estimate's own runs, twice (the second starts from the cached loading):
    replay_run with BestFit against the event list through CachingAllocator."""
    arch = get_model(model)
    run = run_config(**settings, seq_len=1024, batch_size=2)
    parts = step_parts(arch, run)
    steps = ((parts.sizes, _tensors(parts, parts.sizes)),) * 2
    args = (steps, ((8_519_680,), (8_519_680, MIB)), False)
    expected = replay_streams(run_events(*args))
    assert replay_run(*args) == expected
    assert replay_run(*args) == expected


def test_beyond_the_keys_address_space_the_replay_falls_back(monkeypatch):
    """Segments beyond the keys' address bits: replay_run starts over with
    CachingAllocator (here with the bound lowered to 256 MiB)."""
    arch = get_model("gpt2")
    run = run_config(method="full", seq_len=256, batch_size=2)
    parts = step_parts(arch, run)
    steps = ((parts.sizes, _tensors(parts, parts.sizes)),) * 2
    expected = replay_streams(run_events(steps))
    monkeypatch.setattr(best_fit, "_ADDRESS_MASK", 256 * MIB - 1)
    with pytest.raises(best_fit.AddressSpaceExceeded):
        BestFit().malloc_many([100 * MIB] * 3)
    assert replay_run(steps) == expected


@pytest.mark.parametrize("seed", range(30))
def test_streams_of_best_fits_decide_as_streams_of_caching_allocators(seed):
    """FSDP's replay (TwoStreams) on a BestFit per stream: random requests on every
    stream, frees held back by record_stream and released oldest first, empty_cache;
    the same handles and statistics after each call, the same pools at the end."""
    rng = random.Random(seed)
    fast, slow = best_fit.new_streams(), TwoStreams()
    assert all(isinstance(pool, BestFit) for pool in fast.pools)
    live: list[int] = []
    for _ in range(150):
        roll = rng.random()
        size = _sizes(rng, 1)[0]
        if roll < 0.45 or not live:
            stream = rng.choice(("malloc", "malloc_side", "malloc_post", "malloc_pre"))
            handle = getattr(fast, stream)(size)
            assert handle == getattr(slow, stream)(size)
            live += [handle] if handle & ~3 else []
        elif roll < 0.55:
            fast.moment(size)
            slow.moment(size)
        elif roll < 0.6:
            keep = rng.randrange(3)
            fast.release_recorded(keep)
            slow.release_recorded(keep)
        elif roll < 0.62:
            fast.empty_cache()
            slow.empty_cache()
        else:  # a free now, or one record_stream holds back until its release
            handle = live.pop(rng.randrange(len(live)))
            free = "free" if rng.random() < 0.5 else "free_recorded"
            getattr(fast, free)(handle)
            getattr(slow, free)(handle)
        assert fast.stats() == slow.stats()
    for mine, theirs in zip(fast.pools, slow.pools, strict=True):
        assert mine.free_blocks() == _pools(theirs)
        assert sorted(mine._live) == sorted(theirs._live)


def test_empty_cache_first_returns_the_blocks_held_back_by_record_stream():
    """A block freed while record_stream'ed is out of its pool until released;
    empty_cache releases it first (as CachingAllocator does), so its whole segment goes
    back to the driver."""
    fast, slow = BestFit(), CachingAllocator()
    for allocator in (fast, slow):
        held = allocator.malloc(30 * MIB)
        allocator.malloc(3 * MIB)
        allocator.free_recorded(held)
        allocator.empty_cache()
    assert fast.stats() == slow.stats()
    assert fast.stats().segments == 1  # the 30 MiB segment released, the 3 MiB one kept
    assert fast.free_blocks() == _pools(slow)
