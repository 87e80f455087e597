"""PyTorch's CUDA caching allocator, replayed in pure Python.

``torch.cuda.max_memory_allocated`` counts the allocator's *blocks*, not the tensors'
bytes, and ``max_memory_reserved`` counts the segments it took from the driver and
keeps. Both depend on the order of allocations and frees, so this module replays that
order through a model of ``DeviceCachingAllocator`` and reads the same statistics.

Source: pytorch/pytorch ``c10/cuda/CUDACachingAllocator.cpp`` at commit
001074d25084fdb87a799823e395a50f5ec044d3 (SOURCE; the function named beside each rule),
a main-branch version of about 2024 (before max_non_split_rounding_mb). The rules
(rounding, the two pools, segment sizes, best fit, splitting, merging, the cudaMalloc
retry, ``max_split_size_mb``, ``roundup_power2_divisions``, ``expandable_segments``)
read the same in 2.0/2.1-era copies of the file and in 2025 sources
(c10/core/AllocatorConfig.cpp); where versions differ, the comment says so. A PyTorch maintainer's worked examples (pytorch/devlogs
content/eager/2026-06-01-cuda-caching-allocator.md) come out as stated
(tests/test_gpu_allocator.py).

Modelled on purpose, not: one device; one stream per allocator (blocks freed on a
stream are reused only on that stream: TwoStreams keeps one allocator per stream);
``record_stream``'s delay is modelled as a free whose block stays reserved until the
caller says its events completed (free_recorded, release_recorded), not from a GPU
timeline; no CUDA graph private pools, no ``garbage_collection_threshold``
(it acts only under ``set_per_process_memory_fraction``). Addresses are virtual and
grow with each new segment, as fresh cudaMalloc addresses usually do; they only break
ties between free blocks of equal size.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ftmem.errors import InvalidInputError

SOURCE = (
    "pytorch/pytorch c10/cuda/CUDACachingAllocator.cpp @001074d25084fdb87a799823e395a50f5ec044d3"
)

MIB = 2**20
# The constants at the top of CUDACachingAllocator.cpp (SOURCE), unchanged since 1.x:
K_MIN_BLOCK_SIZE = 512  # kMinBlockSize: "all sizes are rounded to at least 512 bytes"
K_SMALL_SIZE = 1 * MIB  # kSmallSize: "largest 'small' allocation is 1 MiB"
K_SMALL_BUFFER = 2 * MIB  # kSmallBuffer: "'small' allocations are packed in 2 MiB blocks"
K_LARGE_BUFFER = 20 * MIB  # kLargeBuffer: "'large' allocations may be packed in 20 MiB blocks"
K_MIN_LARGE_ALLOC = 10 * MIB  # kMinLargeAlloc: "between 1 and 10 MiB may use kLargeBuffer"
K_ROUND_LARGE = 2 * MIB  # kRoundLarge: "round up large allocations to 2 MiB"

# Expandable segments map physical memory in pages of kSmallBuffer for the small pool
# and kLargeBuffer for the large one (SOURCE, find_expandable_block: `segment_size =
# pool->is_small ? kSmallBuffer : kLargeBuffer`; Note [Expandable Segments]: "we use
# 2MiB pages for our small pool and 20MiB pages for our large pool").
EXPANDABLE_ADDRESS_SPACE = 2**50
"""Virtual address space of one expandable segment. PyTorch reserves 1 1/8 of the GPU's
memory (SOURCE, ExpandableSegment's constructor); what it may *map* is bounded here by
``capacity``, so a space no replay can fill stands in for it."""


class AllocatorOutOfMemoryError(InvalidInputError):
    """The replay needed more than ``capacity`` even after the allocator's retry: the run
    would stop with ``torch.OutOfMemoryError`` ("CUDA out of memory") at that point.
    ``needed`` is the device memory the failing request asked the driver for; ``reserved``
    and ``allocated`` are the allocator's state when it gave up."""

    def __init__(self, message: str, *, needed: int, reserved: int, allocated: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.reserved = reserved
        self.allocated = allocated


@dataclass(frozen=True)
class AllocatorStats:
    """What ``torch.cuda.memory_stats()`` would report (all in bytes, aggregate pool).

    ``allocated`` is the sum of the blocks handed out, each rounded up (to 512 bytes,
    and to a whole unsplit block where the remainder is too small to split), as
    ``memory_allocated()`` counts it; ``requested`` is the sum of the sizes asked for
    (``requested_bytes``). ``reserved`` is what the allocator holds from the driver
    (``memory_reserved()``). ``active`` equals ``allocated`` on one stream. ``segments``
    counts cudaMalloc'd segments; pages mapped into expandable segments are not counted
    there, as in PyTorch (map_block adds to reserved_bytes only).
    """

    allocated: int
    reserved: int
    requested: int
    peak_allocated: int
    peak_reserved: int
    peak_requested: int
    segments: int
    num_alloc_retries: int
    num_device_alloc: int
    num_device_free: int


class _Block:
    """One block: a piece of a segment, free or handed out (the C++ ``Block``)."""

    __slots__ = ("addr", "allocated", "mapped", "next", "prev", "requested", "size", "small")

    def __init__(self, addr: int, size: int, small: bool, mapped: bool = True) -> None:
        self.addr = addr
        self.size = size
        self.small = small
        self.mapped = mapped
        self.allocated = False
        self.requested = 0
        self.prev: _Block | None = None
        self.next: _Block | None = None

    def link_after(self, before: _Block) -> None:
        """Splice this block into the segment right after ``before``."""
        self.prev = before
        self.next = before.next
        if before.next is not None:
            before.next.prev = self
        before.next = self


ROUNDUP_INTERVALS = 16
"""``roundup_power2_divisions`` takes one value per power-of-two interval of sizes, from
[1 MiB, 2 MiB) to [32 GiB, 64 GiB) and above: kRoundUpPowerOfTwoIntervals (pytorch/pytorch
c10/core/AllocatorConfig.cpp @065861fba7598880aa3216822742a1172d0a197c,
AllocatorConfig::roundup_power2_divisions; sizes below 1 MiB use the first)."""

Divisions = int | Sequence[int]
"""One ``roundup_power2_divisions`` for every size, or one per interval (16 values)."""


def _divisions_for(size: int, divisions: Divisions) -> int:
    if isinstance(divisions, int):
        return divisions
    index = min(max(size.bit_length() - 1 - 20, 0), ROUNDUP_INTERVALS - 1)
    return divisions[index]


def round_size(size: int, roundup_power2_divisions: Divisions = 0) -> int:
    """The block size a request of ``size`` bytes gets (SOURCE, round_size)."""
    if size < K_MIN_BLOCK_SIZE:
        return K_MIN_BLOCK_SIZE
    divisions = _divisions_for(size, roundup_power2_divisions)
    # `divisions > 1` at SOURCE; 2.0/2.1-era copies test `divisions > 0`, where a value
    # of 1 rounds up to the next power of two (the default, 0, is off in both).
    if divisions > 1 and size > K_MIN_BLOCK_SIZE * divisions:
        return _roundup_power2_next_division(size, divisions)
    return K_MIN_BLOCK_SIZE * ((size + K_MIN_BLOCK_SIZE - 1) // K_MIN_BLOCK_SIZE)


def _roundup_power2_next_division(size: int, divisions: int) -> int:
    """Round up to the next of ``divisions`` equal steps between two powers of two, e.g.
    1200 with 4 divisions -> 1280 (SOURCE, roundup_power2_next_division)."""
    if size & (size - 1) == 0:
        return size
    power2_floor = 1 << (size.bit_length() - 1)
    step = power2_floor >> (divisions.bit_length() - 1)
    if step == 0:
        return power2_floor << 1
    floor = size & ~(step - 1)
    return size if floor == size else floor + step


def allocation_size(size: int) -> int:
    """The segment cudaMalloc'd for a rounded request no cached block fits (SOURCE,
    get_allocation_size): 2 MiB for the small pool, 20 MiB up to 10 MiB, else the
    request rounded up to 2 MiB."""
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return K_ROUND_LARGE * ((size + K_ROUND_LARGE - 1) // K_ROUND_LARGE)


def _page(small: bool) -> int:
    return K_SMALL_BUFFER if small else K_LARGE_BUFFER


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / MIB:,.2f} MiB"


class CachingAllocator:
    """``DeviceCachingAllocator`` for one device and one stream.

    ``malloc`` returns a handle (the block's virtual address; 0 for a 0-byte request,
    as PyTorch returns a null pointer), ``free`` takes it back. ``capacity`` (bytes) is
    what cudaMalloc can still give this process (the GPU's memory less the CUDA context
    and memory held outside the allocator); ``None`` means unlimited. Options mirror
    ``PYTORCH_CUDA_ALLOC_CONF`` (:func:`ftmem.gpu.alloc_conf.allocator_options` reads
    its text): ``expandable_segments``, ``max_split_size_mb`` (None: unlimited, the
    default), ``max_non_split_rounding_mb`` (None: 20 MiB, the default) and
    ``roundup_power2_divisions`` (0: off, the default; or 16 values, one per interval).
    """

    def __init__(
        self,
        *,
        expandable_segments: bool = False,
        capacity: int | None = None,
        max_split_size_mb: int | None = None,
        max_non_split_rounding_mb: int | None = None,
        roundup_power2_divisions: Divisions = 0,
    ) -> None:
        _check_options(capacity, max_split_size_mb, max_non_split_rounding_mb)
        self.expandable = expandable_segments
        self.capacity = capacity
        # unset, PyTorch uses SIZE_MAX, i.e. no limit (AllocatorConfig's constructor)
        self.max_split_size = None if max_split_size_mb is None else max_split_size_mb * MIB
        # how much larger than an oversize request a cached oversize block may be:
        # kLargeBuffer by default (AllocatorConfig's constructor; a fixed kLargeBuffer
        # in get_free_block before the option existed)
        self.non_split_rounding = (max_non_split_rounding_mb or K_LARGE_BUFFER // MIB) * MIB
        self.divisions = _checked_divisions(roundup_power2_divisions)
        # get_free_block is a plain best fit: no oversize rule, no growable segments
        self._best_fit_only = self.max_split_size is None and not expandable_segments
        # free mapped blocks per pool (key: is_small), sorted as BlockComparatorSize:
        # by size, then address
        self._free: dict[bool, list[tuple[int, int, _Block]]] = {True: [], False: []}
        # unmapped address ranges of expandable segments, by address (BlockPool::unmapped)
        self._unmapped: dict[bool, list[tuple[int, _Block]]] = {True: [], False: []}
        self._live: dict[int, _Block] = {}
        # blocks freed while record_stream'ed on another stream, oldest first: out of
        # the allocated statistics, not yet back in a pool (free_recorded)
        self._pending: dict[int, _Block] = {}
        self._next_addr = K_LARGE_BUFFER  # address 0 stays the null pointer
        self.allocated = self.reserved = self.requested = 0
        self.peak_allocated = self.peak_reserved = self.peak_requested = 0
        self.segments = self.num_alloc_retries = 0
        self.num_device_alloc = self.num_device_free = 0
        # the TwoStreams whose streams share the device (and ``capacity``) with this one
        self.device: TwoStreams | None = None

    # -- the public calls ---------------------------------------------------------------

    def malloc(self, size: int) -> int:
        """Hand out a block for ``size`` bytes (SOURCE, DeviceCachingAllocator::malloc).
        The calls malloc makes (get_pool, get_free_block, should_split, the split in
        alloc_found_block) are inlined for the default options: a replay makes
        thousands of requests."""
        if size <= 0:
            if size < 0:
                raise InvalidInputError(f"An allocation cannot have a negative size ({size}).")
            return 0  # NativeCachingAllocator::allocate: no block for 0 bytes
        if self.divisions == 0:  # round_size without power-of-two divisions, inlined
            rounded = K_MIN_BLOCK_SIZE if size < K_MIN_BLOCK_SIZE else (size + 511) & ~511
        else:
            rounded = round_size(size, self.divisions)
        small = rounded <= K_SMALL_SIZE  # get_pool
        free = self._free[small]
        if self._best_fit_only:
            i = bisect_left(free, (rounded, 0))
            block = free.pop(i)[2] if i < len(free) else self._new_block(small, rounded, size)
        else:
            found = self._get_free_block(small, rounded)
            block = found if found is not None else self._new_block(small, rounded, size)
        remaining = block.size - rounded
        if (
            remaining >= K_MIN_BLOCK_SIZE
            if small or self.expandable
            else remaining > K_SMALL_SIZE
            and (self.max_split_size is None or rounded < self.max_split_size)
        ):  # should_split; then keep the first `rounded` bytes and cache the rest
            rest = _Block(block.addr + rounded, remaining, small)
            rest.link_after(block)
            block.size = rounded
            insort(free, (remaining, rest.addr, rest))
        block.allocated = True
        block.requested = size
        self._live[block.addr] = block
        self.allocated += block.size  # alloc_found_block: allocated_bytes += block->size
        self.requested += size
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated
        if self.requested > self.peak_requested:
            self.peak_requested = self.requested
        return block.addr

    def moment(self, size: int) -> None:
        """``free(malloc(size))``. Where a cached block serves the request, the block
        split off and merged back leaves every pool as it was, so only the peaks move."""
        if size > 0 and self._best_fit_only and self.divisions == 0:
            rounded = K_MIN_BLOCK_SIZE if size < K_MIN_BLOCK_SIZE else (size + 511) & ~511
            small = rounded <= K_SMALL_SIZE
            free = self._free[small]
            i = bisect_left(free, (rounded, 0))
            if i < len(free):
                found = free[i][0]
                split = (
                    found - rounded >= K_MIN_BLOCK_SIZE if small else found - rounded > K_SMALL_SIZE
                )
                self.peak_allocated = max(
                    self.peak_allocated, self.allocated + (rounded if split else found)
                )
                self.peak_requested = max(self.peak_requested, self.requested + size)
                return
        self.free(self.malloc(size))

    def free(self, handle: int) -> None:
        """Give a block back to its pool, merged with free neighbours (SOURCE, free and
        free_block). Nothing returns to the driver here."""
        if handle == 0:
            return
        self._free_block(self._take_live(handle))

    def _take_live(self, handle: int) -> _Block:
        """The live block ``handle`` names, out of the live set and of the allocated
        statistics (SOURCE, free: ``allocated_bytes`` drops before anything else)."""
        block = self._live.pop(handle, None)
        if block is None:
            raise InvalidInputError(f"Handle {handle} is not a live allocation.")
        self.allocated -= block.size
        self.requested -= block.requested
        return block

    def _free_block(self, block: _Block) -> None:
        """Back into its pool, merged with its free neighbours (SOURCE, free_block)."""
        block.allocated = False
        if block.prev is not None and not block.prev.allocated:
            self._merge(block, block.prev)
        if block.next is not None and not block.next.allocated:
            self._merge(block, block.next)
        insort(self._free[block.small], (block.size, block.addr, block))

    def free_recorded(self, handle: int) -> None:
        """``free`` of a block ``record_stream``'ed on another stream (SOURCE, free: a
        block with ``stream_uses`` gets ``insert_events`` instead of ``free_block``): it
        leaves the allocated statistics now but stays out of its pool, still reserved,
        until :meth:`release_recorded` says its events have completed."""
        # (block.allocated stays set: no free neighbour may merge with it yet, as
        # try_merge_blocks skips a block with outstanding events)
        block = self._take_live(handle)
        self._pending[block.addr] = block

    def release_recorded(self, keep: int = 0) -> None:
        """Every block freed with :meth:`free_recorded` but the ``keep`` newest back in
        its pool: their events are known complete (SOURCE, process_events at the next
        malloc: ``cudaEventQuery`` succeeded, ``event_count`` reached 0, free_block)."""
        for addr in list(self._pending)[: max(len(self._pending) - keep, 0)]:
            self.release_one(addr)

    def release_one(self, handle: int) -> None:
        """One block freed with :meth:`free_recorded` back in its pool."""
        self._free_block(self._pending.pop(handle))

    def empty_cache(self) -> None:
        """Return every wholly free segment to the driver, and with expandable segments
        every free page (SOURCE, release_cached_blocks and release_blocks). Blocks still
        waiting on their events go back to their pools first (release_cached_blocks
        begins with synchronize_and_free_events)."""
        self.release_recorded()
        for small in (False, True):  # large_blocks first, as release_cached_blocks
            to_unmap = []
            for _, _, block in list(self._free[small]):
                if self.expandable:
                    to_unmap.append(block)
                elif block.prev is None and block.next is None:
                    self._release_segment(block)
            for block in to_unmap:
                self._unmap(block)
                if block.prev is None and block.next is None:
                    self._unmapped[small].remove((block.addr, block))  # whole segment gone

    def layout(self) -> tuple[object, ...]:
        """What decides every later request (gpu.trace's settling replay): the free
        blocks (mapped and unmapped) with their addresses, the blocks waiting on another
        stream, where the next segment goes, what is reserved."""
        free = tuple((s, a) for pool in self._free.values() for s, a, _ in pool)
        unmapped = tuple((a, b.size) for pool in self._unmapped.values() for a, b in pool)
        pending = tuple(self._pending)
        return (free, unmapped, pending, self._next_addr, self.reserved)

    def reset_peaks(self) -> None:
        """``torch.cuda.reset_peak_memory_stats``: each peak restarts at its current value."""
        self.peak_allocated = self.allocated
        self.peak_reserved = self.reserved
        self.peak_requested = self.requested

    def stats(self) -> AllocatorStats:
        return AllocatorStats(
            allocated=self.allocated,
            reserved=self.reserved,
            requested=self.requested,
            peak_allocated=self.peak_allocated,
            peak_reserved=self.peak_reserved,
            peak_requested=self.peak_requested,
            segments=self.segments,
            num_alloc_retries=self.num_alloc_retries,
            num_device_alloc=self.num_device_alloc,
            num_device_free=self.num_device_free,
        )

    # -- finding a block ----------------------------------------------------------------

    def _get_free_block(self, small: bool, size: int) -> _Block | None:
        """Best fit: the smallest cached block of at least ``size`` bytes, the lowest
        address among equals (SOURCE, get_free_block)."""
        free = self._free[small]
        i = bisect_left(free, (size, 0))
        if i == len(free):
            return None
        if self.expandable:
            # a block that can grow into unmapped space counts at the size it can grow
            # to, so a fitting block elsewhere is preferred to the segment's free tail
            while i + 1 < len(free) and _growable(free[i + 1][2]) < _growable(free[i][2]):
                i += 1
        found = free[i][0]
        limit = self.max_split_size
        if limit is not None:
            if size < limit <= found:
                return None  # "Do not return an oversized block for a large request"
            # "Allow oversized block size to be rounded up but within a limit"
            if size >= limit and found >= size + self.non_split_rounding:
                return None
        return free.pop(i)[2]

    def _new_block(self, small: bool, rounded: int, size: int) -> _Block:
        """cudaMalloc a segment; on failure free cached memory and retry (SOURCE, malloc:
        alloc_block, then release_available_cached_blocks, then release_cached_blocks)."""
        block = self._alloc_block(small, rounded)
        if block is None and self._release_available_cached_blocks(small, rounded):
            block = self._alloc_block(small, rounded)
        if block is None:  # release_cached_blocks: every stream's free segments
            (self if self.device is None else self.device).empty_cache()
            self.num_alloc_retries += 1
            block = self._alloc_block(small, rounded)
        if block is None:
            need = rounded if self.expandable else allocation_size(rounded)
            raise AllocatorOutOfMemoryError(
                f"CUDA out of memory: {size:,} bytes asked for a new {_mib(need)} of device "
                f"memory while {_mib(self.reserved)} are reserved ({_mib(self.allocated)} "
                f"allocated) of a capacity of {_mib(self.capacity or 0)}.",
                needed=need,
                reserved=self.reserved,
                allocated=self.allocated,
            )
        return block

    def _alloc_block(self, small: bool, rounded: int) -> _Block | None:
        """A new segment of allocation_size (SOURCE, alloc_block), or with expandable
        segments more pages mapped (try_allocate_expandable_block); None when the
        device has no room."""
        if self.expandable:
            return self._grow_expandable(small, rounded)
        size = allocation_size(rounded)
        if self.capacity is not None and self._device_reserved() + size > self.capacity:
            return None  # cudaErrorMemoryAllocation
        block = _Block(self._next_addr, size, small)
        self._next_addr += size
        self._reserve(size)
        self.segments += 1
        return block

    def _device_reserved(self) -> int:
        """What the device has given this process: this pool's segments, or every
        stream's where they share it (TwoStreams with a capacity)."""
        return self.reserved if self.device is None else self.device.reserved_now()

    def _merge(self, dst: _Block, src: _Block | None) -> None:
        """Absorb a free neighbour in the same segment (SOURCE, try_merge_blocks)."""
        if src is None or src.allocated or src.mapped != dst.mapped:
            return
        if src.mapped:
            self._remove_free(src)
        else:
            self._unmapped[src.small].remove((src.addr, src))
        if src is dst.prev:
            dst.addr = src.addr
            dst.prev = src.prev
            if src.prev is not None:
                src.prev.next = dst
        else:
            dst.next = src.next
            if src.next is not None:
                src.next.prev = dst
        dst.size += src.size

    def _remove_free(self, block: _Block) -> None:
        free = self._free[block.small]
        del free[bisect_left(free, (block.size, block.addr))]

    # -- giving memory back ---------------------------------------------------------------

    def _release_available_cached_blocks(self, small: bool, size: int) -> bool:
        """With max_split_size set, cudaFree oversize cached blocks, just enough for this
        request (SOURCE, release_available_cached_blocks); without it, nothing."""
        limit = self.max_split_size
        if limit is None:
            return False
        free = self._free[small]
        key = max(size, limit)
        i = bisect_left(free, (key, 0))
        if i < len(free):
            self._release_segment(free[i][2])
            return True
        released = 0
        while free and released < key and free[-1][0] >= limit:
            released += free[-1][0]
            self._release_segment(free[-1][2])
        return released >= key

    def _release_segment(self, block: _Block) -> None:
        """cudaFree a wholly free segment (SOURCE, release_block)."""
        self._remove_free(block)
        self.reserved -= block.size
        self.segments -= 1
        self.num_device_free += 1

    def _reserve(self, size: int) -> None:
        self.reserved += size
        if self.reserved > self.peak_reserved:
            self.peak_reserved = self.reserved
        self.num_device_alloc += 1

    # -- expandable segments ----------------------------------------------------------------

    def _grow_expandable(self, small: bool, size: int) -> _Block | None:
        """Map pages at the lowest address where ``size`` bytes fit, merging with the free
        block before them (SOURCE, try_allocate_expandable_block)."""
        candidate = self._find_expandable_block(small, size)
        if not candidate.mapped and not self._map(candidate, min(candidate.size, size)):
            return None
        while candidate.size < size:
            following = candidate.next
            assert following is not None  # an unmapped range follows a short free block
            if not self._map(following, min(size - candidate.size, following.size)):
                return None
            candidate = following
        self._remove_free(candidate)
        return candidate

    def _find_expandable_block(self, small: bool, size: int) -> _Block:
        """The lowest free-or-unmapped run of ``size`` bytes (SOURCE,
        find_expandable_block); the pool's segment is created on first use."""
        for _, block in self._unmapped[small]:
            start = block.prev if block.prev is not None and not block.prev.allocated else block
            run = 0  # has_available_address_space
            walk: _Block | None = start
            while run < size and walk is not None and not walk.allocated:
                run += walk.size
                walk = walk.next
            if run >= size:
                return start
        base = -(-self._next_addr // K_LARGE_BUFFER) * K_LARGE_BUFFER  # page-aligned
        segment = _Block(base, EXPANDABLE_ADDRESS_SPACE, small, mapped=False)
        self._next_addr = base + EXPANDABLE_ADDRESS_SPACE
        insort(self._unmapped[small], (segment.addr, segment))
        return segment

    def _map(self, block: _Block, size: int) -> bool:
        """Back the first ``size`` bytes of an unmapped range with whole pages (SOURCE,
        map_block and ExpandableSegment::map); False when the device has no room."""
        page = _page(block.small)
        mapped = -(-size // page) * page
        if self.capacity is not None and self._device_reserved() + mapped > self.capacity:
            return False  # cuMemCreate: CUDA_ERROR_OUT_OF_MEMORY
        self._unmapped[block.small].remove((block.addr, block))
        block.mapped = True
        if mapped < block.size:
            rest = _Block(block.addr + mapped, block.size - mapped, block.small, mapped=False)
            rest.link_after(block)
            block.size = mapped
            insort(self._unmapped[block.small], (rest.addr, rest))
        self._merge(block, block.prev)
        self._merge(block, block.next)
        insort(self._free[block.small], (block.size, block.addr, block))
        self._reserve(mapped)
        return True

    def _unmap(self, block: _Block) -> None:
        """Give back the whole pages inside a free block; the partial pages at its ends
        stay cached as free blocks (SOURCE, unmap_block and ExpandableSegment::unmap)."""
        page = _page(block.small)
        begin = -(-block.addr // page) * page
        end = (block.addr + block.size) // page * page
        if begin >= end:
            return
        self._remove_free(block)
        if begin > block.addr:
            before = _Block(block.addr, begin - block.addr, block.small)
            if block.prev is not None:
                before.link_after(block.prev)
            else:
                before.next, block.prev = block, before
            insort(self._free[block.small], (before.size, before.addr, before))
        if end < block.addr + block.size:
            after = _Block(end, block.addr + block.size - end, block.small)
            after.link_after(block)
            insort(self._free[block.small], (after.size, after.addr, after))
        block.addr, block.size, block.mapped = begin, end - begin, False
        self._merge(block, block.prev)
        self._merge(block, block.next)
        insort(self._unmapped[block.small], (block.addr, block))
        self.reserved -= end - begin
        self.num_device_free += 1


def _growable(block: _Block) -> int:
    """A free block's size plus the unmapped range right after it (SOURCE,
    get_free_block's expandable_size)."""
    following = block.next
    return block.size + (following.size if following is not None and not following.mapped else 0)


def _check_options(
    capacity: int | None, max_split_size_mb: int | None, max_non_split_rounding_mb: int | None
) -> None:
    if capacity is not None and capacity <= 0:
        raise InvalidInputError(f"The allocator's capacity must be positive, not {capacity}.")
    # AllocatorConfig::parseMaxSplitSize and parseMaxNonSplitRoundingSize (c10/core/
    # AllocatorConfig.cpp @065861fb): "too small, must be >= 20" (kLargeBuffer in MiB);
    # the 2.0/2.1-era parser asked for more than 20
    for name, value in (
        ("max_split_size_mb", max_split_size_mb),
        ("max_non_split_rounding_mb", max_non_split_rounding_mb),
    ):
        if value is not None and value < K_LARGE_BUFFER // MIB:
            raise InvalidInputError(
                f"{name} must be at least {K_LARGE_BUFFER // MIB}, not {value}."
            )


def _checked_divisions(divisions: Divisions) -> Divisions:
    """parseRoundUpPower2Divisions: each value a power of 2, or 0 for no rounding."""
    values = [divisions] if isinstance(divisions, int) else list(divisions)
    if not isinstance(divisions, int) and len(values) != ROUNDUP_INTERVALS:
        raise InvalidInputError(
            f"roundup_power2_divisions takes one value or {ROUNDUP_INTERVALS}, not {len(values)}."
        )
    for value in values:
        if value < 0 or value & (value - 1):
            raise InvalidInputError(
                f"roundup_power2_divisions must be 0 or a power of 2, not {value}."
            )
    return divisions if isinstance(divisions, int) else tuple(values)


def replay(
    events: Iterable[tuple[str, int]],
    *,
    expandable_segments: bool = False,
    capacity: int | None = None,
    max_split_size_mb: int | None = None,
    max_non_split_rounding_mb: int | None = None,
    roundup_power2_divisions: Divisions = 0,
) -> AllocatorStats:
    """Replay a step's allocations and frees; return the allocator's statistics.

    Events, in order: ``("alloc", n_bytes)`` (the k-th alloc event gets id k, from 0),
    ``("free", id)``, ``("empty_cache", 0)`` and ``("reset_peaks", 0)``. The options are
    :class:`CachingAllocator`'s. Raises :class:`AllocatorOutOfMemoryError` where the
    replay outgrows ``capacity`` and :class:`InvalidInputError` for a bad event.
    """
    allocator = CachingAllocator(
        expandable_segments=expandable_segments,
        capacity=capacity,
        max_split_size_mb=max_split_size_mb,
        max_non_split_rounding_mb=max_non_split_rounding_mb,
        roundup_power2_divisions=roundup_power2_divisions,
    )
    _feed(events, allocator, ("alloc", "free", "empty_cache", "reset_peaks"))
    return allocator.stats()


SIDE_STREAM_ALLOC = "alloc@side"
"""An event kind for :func:`replay_streams`: a request made on a side stream (FSDP's
unshard stream: the all-gathered flat parameters)."""

POST_STREAM_ALLOC = "alloc@post"
"""An event kind for :func:`replay_streams`: a request made on a second side stream
(FSDP's post-backward stream: the reduce-scattered gradient shards)."""

PRE_STREAM_ALLOC = "alloc@pre"
"""An event kind for :func:`replay_streams`: a request made on a third side stream
(FSDP's pre-unshard stream: CPU offload's host-to-device copies of the shards)."""

RECORDED_FREE = "free@recorded"
"""``("free@recorded", k)``: allocation k freed while ``record_stream``'ed on another
stream (:meth:`CachingAllocator.free_recorded`)."""

RELEASE_RECORDED = "release_recorded"
"""``("release_recorded", n)``: the events of every recorded free but the ``n`` newest
have completed (:meth:`CachingAllocator.release_recorded`)."""

STREAMS = 4  # the default stream and three side streams; a handle's two low bits say which


class TwoStreams:
    """Requests made on the default stream and on side streams, replayed as they come:
    ``malloc`` on the default stream, ``malloc_side`` on a side stream (FSDP's unshard
    stream), ``malloc_post`` and ``malloc_pre`` on others (FSDP's post-backward and
    pre-unshard streams). A block belongs
    to the stream that allocated it and is reused only by that stream's requests
    (SOURCE, get_free_block: the pool is searched for a block of the same ``stream``;
    BlockComparatorSize orders by stream first), so each stream has pools of its own:
    modelled as one allocator per stream, their reserved and allocated summed at every
    request. ``free`` takes effect at once; ``free_recorded`` is the free of a block
    ``record_stream``'ed on another stream, which stays reserved until
    ``release_recorded`` (the oldest first, over all streams). ``options``:
    :class:`CachingAllocator`'s, for every stream; a ``capacity`` is the device's, which
    the streams share: a request that finds no room releases every stream's free
    segments and retries (SOURCE, malloc: ``release_cached_blocks`` walks the whole
    pool); ``pools``: instead, the streams' allocators themselves (STREAMS of them:
    gpu.best_fit.new_streams gives each a BestFit where the options allow)."""

    def __init__(self, pools: Sequence[Any] = (), **options: Any) -> None:
        self.pools = tuple(pools) or tuple(CachingAllocator(**options) for _ in range(STREAMS))
        if len(self.pools) != STREAMS:
            raise ValueError(f"TwoStreams takes {STREAMS} allocators, not {len(self.pools)}.")
        if not pools and options.get("capacity") is not None:
            for pool in self.pools:
                pool.device = self
        self.peak_allocated = self.peak_reserved = self.peak_requested = 0
        self._pending: list[int] = []  # recorded frees' handles, oldest first

    def reserved_now(self) -> int:
        a, b, c, d = self.pools
        return a.reserved + b.reserved + c.reserved + d.reserved

    def malloc(self, size: int) -> int:
        return self._malloc(0, size)

    def malloc_side(self, size: int) -> int:
        return self._malloc(1, size)

    def malloc_post(self, size: int) -> int:
        return self._malloc(2, size)

    def malloc_pre(self, size: int) -> int:
        return self._malloc(3, size)

    def _malloc(self, stream: int, size: int) -> int:
        # a handle names its stream in its two lowest bits (addresses are 512-byte aligned)
        handle = self.pools[stream].malloc(size) | stream
        # the totals over the streams, written out (an FSDP replay makes thousands of
        # requests, and generator sums cost more than the request itself)
        a, b, c, d = self.pools
        allocated = a.allocated + b.allocated + c.allocated + d.allocated
        if allocated > self.peak_allocated:
            self.peak_allocated = allocated
        reserved = a.reserved + b.reserved + c.reserved + d.reserved
        if reserved > self.peak_reserved:
            self.peak_reserved = reserved
        requested = a.requested + b.requested + c.requested + d.requested
        if requested > self.peak_requested:
            self.peak_requested = requested
        return handle

    def free(self, handle: int) -> None:
        self.pools[handle & 3].free(handle & ~3)

    def free_recorded(self, handle: int) -> None:
        if handle & ~3:  # (a 0-byte request's handle is its stream alone)
            self.pools[handle & 3].free_recorded(handle & ~3)
            self._pending.append(handle)

    def release_recorded(self, keep: int = 0) -> None:
        done = max(len(self._pending) - keep, 0)
        for handle in self._pending[:done]:
            self.pools[handle & 3].release_one(handle & ~3)
        del self._pending[:done]

    def moment(self, size: int) -> None:
        self.free(self.malloc(size))

    def empty_cache(self) -> None:
        """torch.cuda.empty_cache(): every stream's free segments released (SOURCE,
        release_cached_blocks walks the whole pool, after synchronize_and_free_events)."""
        self.release_recorded()
        for pool in self.pools:
            pool.empty_cache()

    def layout(self) -> tuple[object, ...]:
        """Every stream's CachingAllocator.layout and the recorded frees still waiting."""
        return (tuple(p.layout() for p in self.pools), tuple(self._pending))

    def reset_peaks(self) -> None:
        """torch.cuda.reset_peak_memory_stats: from now on."""
        self.peak_allocated = sum(p.allocated for p in self.pools)
        self.peak_reserved = sum(p.reserved for p in self.pools)
        self.peak_requested = sum(p.requested for p in self.pools)

    def stats(self) -> AllocatorStats:
        each = [p.stats() for p in self.pools]
        return AllocatorStats(
            allocated=sum(s.allocated for s in each),
            reserved=sum(s.reserved for s in each),
            requested=sum(s.requested for s in each),
            peak_allocated=self.peak_allocated,
            peak_reserved=self.peak_reserved,
            peak_requested=self.peak_requested,
            segments=sum(s.segments for s in each),
            num_alloc_retries=sum(s.num_alloc_retries for s in each),
            num_device_alloc=sum(s.num_device_alloc for s in each),
            num_device_free=sum(s.num_device_free for s in each),
        )


_KINDS = (
    "alloc",
    SIDE_STREAM_ALLOC,
    POST_STREAM_ALLOC,
    PRE_STREAM_ALLOC,
    "free",
    RECORDED_FREE,
    RELEASE_RECORDED,
    "empty_cache",
    "reset_peaks",
)


def replay_streams(events: Iterable[tuple[str, int]], **options: Any) -> AllocatorStats:
    """Replay requests made on several streams (:class:`TwoStreams`): ``("alloc", n)`` on
    the default one, ``("alloc@side", n)``, ``("alloc@post", n)`` and ``("alloc@pre", n)``
    on side streams,
    ``("free", k)`` either, ``("free@recorded", k)`` a free held back by record_stream,
    ``("release_recorded", n)`` all such but the n newest returned, ``("empty_cache", 0)``,
    ``("reset_peaks", 0)``. ``options``: :class:`CachingAllocator`'s, for every stream."""
    events = list(events)
    if all(kind in ("alloc", "free", "empty_cache", "reset_peaks") for kind, _ in events):
        return replay(events, **options)  # one stream: one allocator keeps its own peaks
    streams = TwoStreams(**options)
    _feed(events, streams, _KINDS)
    return streams.stats()


def _feed(events: Iterable[tuple[str, int]], target: Any, kinds: tuple[str, ...]) -> None:
    """Hand each event to ``target`` (a CachingAllocator or TwoStreams): the k-th
    request's handle is what ``free`` k gives back."""
    handles: list[int | None] = []
    for kind, value in events:
        if kind == "alloc":
            handles.append(target.malloc(value))
        elif kind == "free":
            handle = handles[value] if 0 <= value < len(handles) else None
            if handle is None:
                raise InvalidInputError(f"Event ('free', {value}) frees no live allocation.")
            target.free(handle)
            handles[value] = None
        elif kind not in kinds:
            raise InvalidInputError(
                f"Unknown allocator event {kind!r}; use {', '.join(kinds[:-1])} or {kinds[-1]}."
            )
        elif kind == SIDE_STREAM_ALLOC:
            handles.append(target.malloc_side(value))
        elif kind == POST_STREAM_ALLOC:
            handles.append(target.malloc_post(value))
        elif kind == PRE_STREAM_ALLOC:
            handles.append(target.malloc_pre(value))
        elif kind == RECORDED_FREE:
            handle = handles[value] if 0 <= value < len(handles) else None
            if handle is None:
                raise InvalidInputError(f"Event ({kind!r}, {value}) frees no live allocation.")
            target.free_recorded(handle)
            handles[value] = None
        elif kind == RELEASE_RECORDED:
            target.release_recorded(value)
        elif kind == "empty_cache":
            target.empty_cache()
        else:
            target.reset_peaks()
