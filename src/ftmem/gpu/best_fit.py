"""The caching allocator's default configuration, replayed fast.

gpu.allocator.CachingAllocator follows PyTorch's code: blocks are linked objects, the
free pools sorted lists of (size, address, block) tuples, every option a branch. An
estimate replays thousands of requests through it (gpu.trace.replay_run), almost always
with PyTorch's defaults (no PYTORCH_CUDA_ALLOC_CONF) and no capacity to run out of; in
that configuration the allocator's choices reduce to a plain best fit, which this
module replays with flat data instead: a free block is one integer in its pool's sorted
list (size in the high bits, address in the low ones, so the list's order is
BlockComparatorSize's, size then address), and its neighbours are found by address
(a block's next one starts where it ends; segments are laid out end to end, so a
block's neighbour belongs to its segment unless their common address is a segment
boundary).

Same rules, same order of decisions, same statistics: BestFit is CachingAllocator with
``expandable_segments`` off, no ``max_split_size_mb`` (hence no oversize rule;
``max_non_split_rounding_mb`` acts only beside it), no ``roundup_power2_divisions`` and
no capacity (so no cudaMalloc failure and no retry; only empty_cache releases). tests/test_gpu_best_fit.py
replays random and real request sequences through both and compares every statistic
after every request and the pools at the end.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from typing import Any

from ftmem.errors import InvalidInputError
from ftmem.gpu.allocator import (
    K_LARGE_BUFFER,
    K_MIN_LARGE_ALLOC,
    K_SMALL_BUFFER,
    K_SMALL_SIZE,
    STREAMS,
    AllocatorStats,
    CachingAllocator,
    TwoStreams,
)

ADDRESS_BITS = 64
"""A free block's key is ``size << ADDRESS_BITS | address``: its address must stay below
2**64 (16 EiB of segments), else :class:`AddressSpaceExceeded` hands the replay back to
CachingAllocator."""
_ADDRESS_MASK = (1 << ADDRESS_BITS) - 1


class AddressSpaceExceeded(Exception):
    """The replay's segments outgrew the keys' address bits (replay with
    CachingAllocator instead)."""


def fits_best_fit(options: dict[str, Any]) -> bool:
    """Whether CachingAllocator(**options) is a plain best fit BestFit replays: PyTorch's
    defaults, where ``max_non_split_rounding_mb`` (read only with ``max_split_size_mb``)
    may be set."""
    return (
        not options.get("expandable_segments")
        and options.get("max_split_size_mb") is None
        and not options.get("roundup_power2_divisions")
        and options.get("capacity") is None
    )


def new_allocator(**options: Any) -> BestFit | CachingAllocator:
    """BestFit where the options allow it, else CachingAllocator (same statistics)."""
    if fits_best_fit(options):
        # CachingAllocator checks max_non_split_rounding_mb's value
        CachingAllocator(**options)
        return BestFit()
    return CachingAllocator(**options)


def new_streams(**options: Any) -> TwoStreams:
    """TwoStreams with a BestFit per stream where the options allow it (the same
    statistics: TwoStreams asks its allocators for malloc, free, free_recorded,
    release_one and empty_cache, which BestFit replays as CachingAllocator does); a
    capacity is the device's, shared by the streams (TwoStreams' own allocators)."""
    if options.get("capacity") is not None:
        return TwoStreams(**options)
    return TwoStreams(pools=[new_allocator(**options) for _ in range(STREAMS)])


class BestFit:
    """CachingAllocator's interface (malloc, moment, free, reset_peaks, stats and the
    running totals) for the default configuration. A handle is the block's address, as
    CachingAllocator's (the same addresses: segments are placed alike)."""

    __slots__ = (
        "_bounds",
        "_ends",
        "_free_end",
        "_free_start",
        "_large",
        "_live",
        "_next_addr",
        "_pending",
        "_small",
        "allocated",
        "num_device_alloc",
        "num_device_free",
        "peak_allocated",
        "peak_requested",
        "peak_reserved",
        "requested",
        "reserved",
        "segments",
    )

    def __init__(self) -> None:
        # free blocks per pool as sorted keys (size << ADDRESS_BITS | address)
        self._small: list[int] = []
        self._large: list[int] = []
        self._free_start: dict[int, int] = {}  # a free block's address: its size
        self._free_end: dict[int, int] = {}  # where a free block ends: its address
        self._live: dict[int, tuple[int, int]] = {}  # handle: (block size, requested)
        # blocks freed while record_stream'ed (free_recorded), oldest first: their sizes
        self._pending: dict[int, int] = {}
        self._next_addr = K_LARGE_BUFFER  # CachingAllocator's first address
        self._bounds = {self._next_addr}  # every segment's start and end
        self._ends: list[int] = []  # every segment's end, in order
        self.allocated = self.reserved = self.requested = 0
        self.peak_allocated = self.peak_reserved = self.peak_requested = 0
        self.segments = self.num_device_alloc = self.num_device_free = 0

    def malloc(self, size: int) -> int:
        """CachingAllocator.malloc (:meth:`malloc_many` of one size; 0 for 0 bytes)."""
        if size <= 0:
            if size < 0:
                raise InvalidInputError(f"An allocation cannot have a negative size ({size}).")
            return 0
        # malloc_many's loop for one request, written out: a multi-GPU replay makes
        # many single requests (communication buffers), where the loop's setup shows
        rounded = 512 if size < 512 else (size + 511) & ~511
        small = rounded <= K_SMALL_SIZE
        pool = self._small if small else self._large
        i = bisect_left(pool, rounded << ADDRESS_BITS)
        if i < len(pool):
            key = pool.pop(i)
            addr = key & _ADDRESS_MASK
            block = key >> ADDRESS_BITS
            del self._free_start[addr]
            del self._free_end[addr + block]
        else:
            addr, block = self._new_segment(rounded)
        remaining = block - rounded
        if remaining >= 512 if small else remaining > K_SMALL_SIZE:
            rest = addr + rounded
            insort(pool, remaining << ADDRESS_BITS | rest)
            self._free_start[rest] = remaining
            self._free_end[rest + remaining] = rest
            block = rounded
        self._live[addr] = (block, size)
        self.allocated += block
        self.requested += size
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated
        if self.requested > self.peak_requested:
            self.peak_requested = self.requested
        return addr

    def malloc_many(self, sizes: Iterable[int]) -> list[int]:
        """CachingAllocator.malloc of each positive size in turn (the others skipped, as
        gpu.trace asks for none of them): the smallest cached block of at least the
        rounded size (the lowest address among equals), split where the rest is worth
        keeping (512 bytes in the small pool, more than 1 MiB in the large one), else a
        new segment. One loop for a request's tensors: the replay's time is spent here.

        A run of equal requests (a group's weights, its optimizer states) is carved out
        of one block without going through the pool: the rest split off for one request
        is the next one's best fit whenever it is large enough, since it is smaller than
        the block it came from, which was the smallest cached block that fitted (or a
        new segment, when none did), and nothing enters the pool in between. That rest
        (``held``) enters the pool when the run ends, as if it had entered and left it."""
        small_pool, large_pool = self._small, self._large
        free_start, free_end, live = self._free_start, self._free_end, self._live
        allocated, requested = self.allocated, self.requested
        peak_allocated, peak_requested = self.peak_allocated, self.peak_requested
        handles = []
        held = held_addr = last = 0  # a split's rest not yet in the pool, of `last`'s run
        pool = small_pool
        for size in sizes:
            if size <= 0:
                continue
            rounded = 512 if size < 512 else (size + 511) & ~511
            small = rounded <= K_SMALL_SIZE
            if rounded == last and held >= rounded:
                addr, block = held_addr, held
            else:
                if held:  # the run's rest enters its pool (`pool`, still the run's)
                    insort(pool, held << ADDRESS_BITS | held_addr)
                    free_start[held_addr] = held
                    free_end[held_addr + held] = held_addr
                pool = small_pool if small else large_pool
                i = bisect_left(pool, rounded << ADDRESS_BITS)
                if i < len(pool):
                    key = pool.pop(i)
                    addr = key & _ADDRESS_MASK
                    block = key >> ADDRESS_BITS
                    del free_start[addr]
                    del free_end[addr + block]
                else:
                    addr, block = self._new_segment(rounded)
            held, last = 0, rounded
            remaining = block - rounded
            if remaining >= 512 if small else remaining > K_SMALL_SIZE:
                held, held_addr = remaining, addr + rounded
                block = rounded
            live[addr] = (block, size)
            allocated += block
            requested += size
            if allocated > peak_allocated:
                peak_allocated = allocated
            if requested > peak_requested:
                peak_requested = requested
            handles.append(addr)
        if held:
            insort(pool, held << ADDRESS_BITS | held_addr)
            free_start[held_addr] = held
            free_end[held_addr + held] = held_addr
        self.allocated, self.requested = allocated, requested
        self.peak_allocated, self.peak_requested = peak_allocated, peak_requested
        return handles

    def _new_segment(self, rounded: int) -> tuple[int, int]:
        """cudaMalloc a segment of allocation_size(rounded) after the last one."""
        if rounded <= K_SMALL_SIZE:
            size = K_SMALL_BUFFER
        elif rounded < K_MIN_LARGE_ALLOC:
            size = K_LARGE_BUFFER
        else:
            size = (rounded + 2 * 2**20 - 1) & ~(2 * 2**20 - 1)  # kRoundLarge
        addr = self._next_addr
        if addr + size > _ADDRESS_MASK:
            raise AddressSpaceExceeded(addr + size)
        self._next_addr = addr + size
        self._bounds.add(addr + size)
        self._ends.append(addr + size)
        self.reserved += size
        if self.reserved > self.peak_reserved:
            self.peak_reserved = self.reserved
        self.segments += 1
        self.num_device_alloc += 1
        return addr, size

    def moment(self, size: int) -> None:
        """``free(malloc(size))``; where a cached block serves it, only the peaks move
        (CachingAllocator.moment)."""
        if size > 0:
            rounded = 512 if size < 512 else (size + 511) & ~511
            small = rounded <= K_SMALL_SIZE
            pool = self._small if small else self._large
            i = bisect_left(pool, rounded << ADDRESS_BITS)
            if i < len(pool):
                found = pool[i] >> ADDRESS_BITS
                split = found - rounded >= 512 if small else found - rounded > K_SMALL_SIZE
                held = self.allocated + (rounded if split else found)
                if held > self.peak_allocated:
                    self.peak_allocated = held
                if self.requested + size > self.peak_requested:
                    self.peak_requested = self.requested + size
                return
        self.free(self.malloc(size))

    def moment_many(self, sizes: Sequence[int]) -> None:
        """``free_many(malloc_many(sizes))`` (tensors made together, then freed together),
        without the frees: once every block handed out is back, each free block the
        requests split is whole again (its pieces merge, and it had no free neighbour to
        merge with: merging is eager), and each segment they made is one free block. So
        the pools are as before plus those segments; only the peaks and the reserved
        memory moved. The requests run as in :meth:`malloc_many` on the pools alone
        (nothing is freed meanwhile, so no neighbour is looked up), then the blocks they
        took go back and the rests they split off come out (fewer steps than copying
        the pools, which hold hundreds of blocks in a step's backward)."""
        small_pool, large_pool = self._small, self._large
        allocated, requested = self.allocated, self.requested
        peak_allocated, peak_requested = self.peak_allocated, self.peak_requested
        made = len(self._ends)
        taken: list[tuple[list[int], int]] = []  # the cached blocks taken: (pool, key)
        rests: dict[int, list[int]] = {}  # rests split off and put in a pool: key: pool
        held = held_addr = last = 0  # as in malloc_many
        pool = small_pool
        for size in sizes:
            if size <= 0:
                continue
            rounded = 512 if size < 512 else (size + 511) & ~511
            small = rounded <= K_SMALL_SIZE
            if rounded == last and held >= rounded:
                addr, block = held_addr, held
            else:
                if held:
                    key = held << ADDRESS_BITS | held_addr
                    insort(pool, key)
                    rests[key] = pool
                pool = small_pool if small else large_pool
                i = bisect_left(pool, rounded << ADDRESS_BITS)
                if i < len(pool):
                    key = pool.pop(i)
                    if rests.pop(key, None) is None:
                        taken.append((pool, key))
                    addr = key & _ADDRESS_MASK
                    block = key >> ADDRESS_BITS
                else:
                    addr, block = self._new_segment(rounded)
            held, last = 0, rounded
            remaining = block - rounded
            if remaining >= 512 if small else remaining > K_SMALL_SIZE:
                held, held_addr = remaining, addr + rounded
                block = rounded
            allocated += block
            requested += size
            if allocated > peak_allocated:
                peak_allocated = allocated
            if requested > peak_requested:
                peak_requested = requested
        self.peak_allocated, self.peak_requested = peak_allocated, peak_requested
        for key, in_pool in rests.items():
            del in_pool[bisect_left(in_pool, key)]
        for in_pool, key in taken:
            insort(in_pool, key)
        self._cache_new_segments(made)

    def _cache_new_segments(self, made: int) -> None:
        """The segments made since the first ``made`` ones, each one free block."""
        ends, free_start, free_end = self._ends, self._free_start, self._free_end
        for n in range(made, len(ends)):
            start = ends[n - 1] if n else K_LARGE_BUFFER
            # a small-pool segment is 2 MiB, a large-pool one at least 10 MiB
            pool = self._small if ends[n] - start == K_SMALL_BUFFER else self._large
            insort(pool, (ends[n] - start) << ADDRESS_BITS | start)
            free_start[start] = ends[n] - start
            free_end[ends[n]] = start

    def free(self, handle: int) -> None:
        """CachingAllocator.free (:meth:`free_many` of one handle; 0 frees nothing)."""
        if handle != 0:
            self.free_many((handle,))

    def free_many(self, handles: Iterable[int]) -> None:
        """CachingAllocator.free of each handle in turn: the block back to its pool,
        merged with a free neighbour on either side within its segment."""
        small_pool, large_pool = self._small, self._large
        free_start, free_end, live, bounds = (
            self._free_start,
            self._free_end,
            self._live,
            self._bounds,
        )
        allocated, requested = self.allocated, self.requested
        for handle in handles:
            entry = live.pop(handle, None)
            if entry is None:
                # the totals as freeing one by one leaves them before this handle
                self.allocated, self.requested = allocated, requested
                raise InvalidInputError(f"Handle {handle} is not a live allocation.")
            block, size = entry
            allocated -= block
            requested -= size
            # an allocated block's pool is its size's: a small-pool block is at most the
            # 1 MiB it was rounded to (never split off with less than 512 bytes left over)
            pool = small_pool if block <= K_SMALL_SIZE else large_pool
            start, end = handle, handle + block
            before = free_end.get(start)
            if before is not None and start not in bounds:
                del free_end[start]
                del pool[bisect_left(pool, free_start.pop(before) << ADDRESS_BITS | before)]
                start = before
            after = free_start.get(end)
            if after is not None and end not in bounds:
                del free_start[end]
                del pool[bisect_left(pool, after << ADDRESS_BITS | end)]
                del free_end[end + after]
                end += after
            insort(pool, (end - start) << ADDRESS_BITS | start)
            free_start[start] = end - start
            free_end[end] = start
        self.allocated, self.requested = allocated, requested

    def free_recorded(self, handle: int) -> None:
        """CachingAllocator.free_recorded: the block leaves the allocated statistics now
        and its pool later (:meth:`release_one`); meanwhile no freed neighbour merges
        with it, since it is in no pool."""
        entry = self._live.pop(handle, None)
        if entry is None:
            raise InvalidInputError(f"Handle {handle} is not a live allocation.")
        self.allocated -= entry[0]
        self.requested -= entry[1]
        self._pending[handle] = entry[0]

    def release_one(self, handle: int) -> None:
        """CachingAllocator.release_one: a block freed with :meth:`free_recorded` back in
        its pool, merged with its free neighbours as :meth:`free_many` merges (put back
        among the live blocks, out of the statistics, and freed)."""
        block = self._pending.pop(handle)
        self._live[handle] = (block, 0)
        self.allocated += block
        self.free_many((handle,))

    def release_recorded(self, keep: int = 0) -> None:
        """CachingAllocator.release_recorded: every recorded free but the ``keep`` newest
        back in its pool."""
        for handle in list(self._pending)[: max(len(self._pending) - keep, 0)]:
            self.release_one(handle)

    def empty_cache(self) -> None:
        """``torch.cuda.empty_cache()`` (CachingAllocator.empty_cache without expandable
        segments): every wholly free segment goes back to the driver. A free block is a
        whole segment when both its ends are segment boundaries (blocks never span one);
        the released addresses are not used again, as in CachingAllocator. Blocks
        waiting on their events go back to their pools first (CachingAllocator's)."""
        self.release_recorded()
        bounds, free_start, free_end = self._bounds, self._free_start, self._free_end
        for pool in (self._large, self._small):
            kept = []
            for key in pool:
                addr, size = key & _ADDRESS_MASK, key >> ADDRESS_BITS
                if addr in bounds and addr + size in bounds:
                    del free_start[addr]
                    del free_end[addr + size]
                    self.reserved -= size
                    self.segments -= 1
                    self.num_device_free += 1
                else:
                    kept.append(key)
            pool[:] = kept

    def copy(self) -> BestFit:
        """An allocator in this one's state, that goes on on its own."""
        other = BestFit.__new__(BestFit)
        for name in BestFit.__slots__:
            value = getattr(self, name)
            setattr(other, name, value.copy() if isinstance(value, list | dict | set) else value)
        return other

    def layout(self) -> tuple[object, ...]:
        """What decides every later request (gpu.trace's settling replay): the pools'
        free blocks with their addresses, the blocks freed while record_stream'ed and
        not yet back, where the next segment goes, what is reserved; the live blocks are
        the segments' rest."""
        pending = tuple(self._pending.items())
        return (tuple(self._small), tuple(self._large), pending, self._next_addr, self.reserved)

    def reset_peaks(self) -> None:
        self.peak_allocated = self.allocated
        self.peak_reserved = self.reserved
        self.peak_requested = self.requested

    def free_blocks(self) -> list[tuple[int, int]]:
        """The pools' free blocks as (size, address), small pool first, each sorted (for
        comparison with CachingAllocator's pools)."""
        return [(k >> ADDRESS_BITS, k & _ADDRESS_MASK) for k in self._small + self._large]

    def stats(self) -> AllocatorStats:
        return AllocatorStats(
            allocated=self.allocated,
            reserved=self.reserved,
            requested=self.requested,
            peak_allocated=self.peak_allocated,
            peak_reserved=self.peak_reserved,
            peak_requested=self.peak_requested,
            segments=self.segments,
            num_alloc_retries=0,
            num_device_alloc=self.num_device_alloc,
            num_device_free=self.num_device_free,
        )
