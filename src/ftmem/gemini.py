"""ColossalAI's GeminiPlugin: how it packs parameters into chunks and what one rank holds.

Read at hpcaitech/ColossalAI 4f9953be335e (0.5.0: the same text for every file cited).
Short names: ``search`` = ``zero/gemini/chunk/search_utils.py``, ``mgr`` =
``zero/gemini/chunk/manager.py``, ``chunk`` = ``zero/gemini/chunk/chunk.py``, ``ddp`` =
``zero/gemini/gemini_ddp.py``, ``optim`` = ``zero/gemini/gemini_optimizer.py``,
``policy`` = ``zero/gemini/placement_policy.py``, ``plugin`` =
``booster/plugin/gemini_plugin.py``, all under ``colossalai/``.

Gemini flattens the trainable parameters, in ``model.parameters()`` order, into equal
*chunks* of ``chunk_size`` elements (a tensor larger than that gets a chunk of its own),
and every rank of the ZeRO group (N ranks) keeps one contiguous ``chunk_size / N`` shard of
each chunk. The chunk size comes from a search that minimises the padding. Symbols: C = the
elements of all 16-bit chunks (padding included), s_c = chunk c's shard, used_c = its real
elements. Static placement, plugin defaults (``master_weights=True``, HybridAdam):

* GPU: 2·C/N (16-bit shards; after backward they hold the reduced gradients) + 4·C/N (fp32
  masters) + 8·own0 (Adam states of rank 0's real elements) + every frozen tensor whole in
  16-bit + the chunks gathered at the moment.
* Host: a pinned copy of every shard (6·C/N), because the default ``enable_async_reduce``
  forces ``pin_memory`` (plugin:491-496, chunk:313-316).

Pure Python (no torch): ftmem's sweeps call this thousands of times.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import NamedTuple

from ftmem.arch import HEAD, Architecture
from ftmem.errors import InvalidInputError
from ftmem.methods import TensorGroup

MIB_ELEMENTS = 1024**2  # search_range_m and min_chunk_size_m count 2^20 elements (search:143-144)
SEARCH_INTERVAL = 1024  # hidden_dim=None → search_interval 1024 (zero/gemini/chunk/utils.py:27-31)
FP32_BYTES = 4  # master copies are p.clone().float() (ddp:848-851)
# HybridAdam: exp_avg and exp_avg_sq, fp32, zeros_like(master) (nn/optimizer/hybrid_adam.py:110-116)
ADAM_STATE_BYTES = 8


class ParamEntry(NamedTuple):
    """One parameter tensor as ``model.parameters()`` yields it."""

    name: str  # the group's name (block tensors: without the block prefix)
    numel: int
    trainable: bool
    in_block: bool


# ----------------------------------------------------------------------------------------
# Parameter order


def parameter_order(
    groups: tuple[TensorGroup, ...], arch: Architecture, layers: int
) -> tuple[ParamEntry, ...]:
    """The parameter tensors of a decoder in ``model.parameters()`` order, one entry each.

    Hugging Face registers the embedding (and other outer modules) before the blocks and
    the final norm and the LM head after them. Gemini's search and packing walk that order
    (search:135-141, ddp:821). Within a block the plan's order is the modules' order; an
    adapter follows the module it wraps (peft keeps ``base_layer`` first).
    """
    head_side = (f"{arch.traits.names.final_norm}.", HEAD)  # as parallel._head_side
    return _parameter_order(groups, head_side, layers)


@lru_cache(maxsize=256)
def _parameter_order(
    groups: tuple[TensorGroup, ...], head: tuple[str, ...], layers: int
) -> tuple[ParamEntry, ...]:
    outer = [g for g in groups if not g.in_block]
    block = _adapters_after_their_module([g for g in groups if g.in_block])
    first = [g for g in outer if not g.name.startswith(head)]
    last = [g for g in outer if g.name.startswith(head)]
    out = [ParamEntry(g.name, g.numel, g.trainable, False) for g in first for _ in range(g.count)]
    for i in range(layers):
        for g in block:
            if _in_block(g, i, layers):
                out.append(ParamEntry(g.name, g.numel, g.trainable, True))
    out += [ParamEntry(g.name, g.numel, g.trainable, False) for g in last for _ in range(g.count)]
    return tuple(out)


def _in_block(g: TensorGroup, i: int, layers: int) -> bool:
    """Whether block ``i`` holds group ``g``: a partial group's trainable copies are the top
    blocks, its frozen copies the bottom ones (as parallel._groups_on_stage splits them)."""
    if g.count >= layers:
        return True
    return i >= layers - g.count if g.trainable else i < g.count


def _adapters_after_their_module(block: list[TensorGroup]) -> list[TensorGroup]:
    """Move each adapter tensor behind the module whose name it extends
    (``self_attn.q_proj.lora_A`` behind ``self_attn.q_proj.weight``)."""
    out = [g for g in block if not g.adapter]
    for a in (g for g in block if g.adapter):
        spot = len(out)
        for k, g in enumerate(out):
            module = g.name.rsplit(".", 1)[0]
            if a.name.startswith(module + "."):
                spot = k + 1
        out.insert(spot, a)
    return out


# ----------------------------------------------------------------------------------------
# Chunk size search


def chunk_size(
    sizes: Sequence[int],
    group: int,
    search_range_m: float = 32,
    min_chunk_size_m: float = 32,
    interval: int = SEARCH_INTERVAL,
) -> tuple[int, bool]:
    """``search_chunk_configuration`` (search:108-191): ``(chunk_size, keep_gathered)``.

    ``sizes``: the numel of every parameter in order, frozen ones included (they are
    only set aside later, ddp:826-827). ``group``: the ZeRO group size N.
    """
    if group < 1 or interval < 1 or search_range_m < 0 or min_chunk_size_m < 0:
        raise InvalidInputError(
            "Gemini's chunk search needs a group of at least one rank, a positive interval "
            "and non-negative search_range_m and min_chunk_size_m."
        )
    return _chunk_size(tuple(sizes), group, search_range_m, min_chunk_size_m, interval)


@lru_cache(maxsize=512)
def _chunk_size(
    sizes: tuple[int, ...],
    group: int,
    search_range_m: float,
    min_chunk_size_m: float,
    interval: int,
) -> tuple[int, bool]:
    search_range = round(search_range_m * MIB_ELEMENTS)  # search:143
    min_chunk = round(min_chunk_size_m * MIB_ELEMENTS)  # search:144
    total = sum(sizes)
    if total < min_chunk:
        # one chunk of exactly the model's size, never sharded: DDP-like (search:159-161)
        return total, True
    kept = _without_outliers(sizes)
    start = math.ceil(max(min_chunk, max(kept, default=0)) / interval) * interval  # search:168-171
    best = start + _least_waste(tuple(s for s in kept if s), start, interval, search_range)
    return best + (-best % group), False  # a multiple of every group size (search:185)


def _without_outliers(sizes: tuple[int, ...]) -> list[int]:
    """Drop sizes above mean + 3·(population) std (search:14-38, ``np.std``). Exact in
    integers: x > μ + 3σ ⇔ n·x − S > 3·sqrt(n·Σx² − S²) (both sides times n)."""
    n, total = len(sizes), sum(sizes)
    spread = n * sum(s * s for s in sizes) - total * total  # n²·σ²
    kept = []
    for s in sizes:
        d = n * s - total
        if d <= 0 or d * d <= 9 * spread:
            kept.append(s)
    return kept


def _least_waste(kept: tuple[int, ...], start: int, interval: int, search_range: int) -> int:
    """The offset from ``start`` of the first candidate ``start + k·interval`` (k = 0 ..
    search_range // interval) with the least waste, as the scan at search:173-182 finds it.

    The waste of a chunk size cs (``_get_unused_byte``, search:41-60) is next-fit
    packing's leftover: n(cs)·cs − Σkept, with n(cs) the chunks next-fit opens.

    n(cs) never grows with cs: let chunk j start at item a_j under cs and at b_j under
    cs' > cs, and suppose b_j ≥ a_j. Items b_j .. a_{j+1}−1 are a subset of chunk j under
    cs, so they sum to ≤ cs < cs' and next-fit under cs' keeps them together: b_{j+1} ≥
    a_{j+1}. By induction cs' never starts more chunks. Hence on a run of candidates with
    the same n the waste rises with cs and only the first candidate of each n can win.
    Branch and bound over the candidate index finds those: a stretch (lo, hi] whose ends
    have equal n holds nothing new, and one whose best conceivable waste,
    n(hi)·cs(lo + 1), cannot beat the best so far is skipped.
    """
    prefix = [0]
    for s in kept:
        prefix.append(prefix[-1] + s)
    last = len(kept)

    def chunks(cs: int) -> int:
        i = n = 0
        while i < last:  # each step: the longest run from item i that fits in cs
            i = bisect_right(prefix, prefix[i] + cs, i + 1) - 1
            n += 1
        return n

    top = search_range // interval
    n_lo, n_hi = chunks(start), chunks(start + top * interval)
    best = (n_lo * start, 0)
    cand = (n_hi * (start + top * interval), top)
    best = min(best, cand)
    stack = [(0, top, n_lo, n_hi)]
    while stack:
        lo, hi, n_lo, n_hi = stack.pop()
        if n_lo == n_hi or hi - lo < 2:
            continue
        bound = (n_hi * (start + (lo + 1) * interval), lo + 1)
        if bound >= best:  # nothing inside can come first with less or equal waste
            continue
        mid = (lo + hi) // 2
        n_mid = chunks(start + mid * interval)
        best = min(best, (n_mid * (start + mid * interval), mid))
        stack.append((mid, hi, n_mid, n_hi))
        stack.append((lo, mid, n_lo, n_mid))
    return best[1] * interval


# ----------------------------------------------------------------------------------------
# Packing


def pack(sizes: Sequence[int], chunk_size: int, group: int) -> tuple[tuple[int, int], ...]:
    """``ChunkManager.register_tensor`` (mgr:50-113) over the trainable tensors in order:
    ``(chunk elements, used elements)`` per chunk."""
    return _pack(tuple(sizes), chunk_size, group)[0]


@lru_cache(maxsize=512)
def _pack(
    sizes: tuple[int, ...], chunk_size: int, group: int
) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """The chunks and, per tensor, the index of its chunk."""
    chunks: list[list[int]] = []
    where = []
    for s in sizes:
        # append to the last chunk if it fits there (mgr:82, chunk:274-277) ...
        if chunks and chunks[-1][1] + s <= chunks[-1][0]:
            chunks[-1][1] += s
        else:
            # ... else open a new one; a larger tensor gets its own size, padded to a
            # multiple of the group (mgr:92-95)
            size = chunk_size if s <= chunk_size else s + (-s % group)
            chunks.append([size, s])
        where.append(len(chunks) - 1)
    return tuple((c, u) for c, u in chunks), tuple(where)


# ----------------------------------------------------------------------------------------
# One rank


@dataclass(frozen=True, slots=True)
class GeminiRank:
    """What rank 0 (the rank with the most optimizer state) holds, static placement.
    Bytes unless named otherwise. Rank 0 is the worst rank: its shard of every chunk is the
    first, so it owns real elements wherever any rank does (optim:354-360)."""

    chunk_size: int  # elements
    keep_gathered: bool  # a tiny model: one unsharded chunk (search:159-161)
    chunks: int
    chunk_elements: int  # C, padding included
    shards: int  # 16-bit shards on the GPU (2·C/N); with reuse they also hold the grads
    grads: int  # separate gradient shards on the GPU (no reuse: enable_gradient_accumulation)
    masters: int  # fp32 master shards on the GPU
    states: int  # Adam states on the GPU
    replicated: int  # frozen parameters, whole, 16-bit, on every GPU (ddp:826-832)
    # chunks gathered (full, 16-bit) at these moments, on top of the resident bytes:
    gathered_forward: int  # in the blocks' forward: two adjacent chunks (a chunk boundary)
    gathered_backward: int  # in the blocks' backward: the same (+ gradient chunks, no reuse)
    gathered_head: int  # backward at the LM head: its chunk (the embedding's if tied)
    gathered_outer: int  # the other outer chunks (the embedding), backward
    head_backward: int  # autograd's gradient + the hook's empty_like of the largest tensor
    block_backward: int  # the same for the largest tensor inside the blocks
    access_transient: int  # offloaded optimizer: fp32 shard copied up and cast, at access
    host_pinned: int  # per rank
    host_unpinned: int  # per rank: Adam states of offloaded chunks

    @property
    def resident(self) -> int:
        """The bytes one GPU keeps for the whole step."""
        return self.shards + self.grads + self.masters + self.states + self.replicated


def gemini_rank(
    groups: tuple[TensorGroup, ...],
    arch: Architecture,
    layers: int,
    group: int,
    half_bytes: int = 2,
    *,
    accumulation: bool = False,
    optim_frac: float = 0.0,
    offload_params: bool = False,
    shard_frac: float = 1.0,
    search_range_m: float = 32,
    min_chunk_size_m: float = 32,
) -> GeminiRank:
    """Rank 0's memory under GeminiPlugin's static placement over a ZeRO group of ``group``.

    ``accumulation``: ``enable_gradient_accumulation`` (separate gradient chunks, ddp:106).
    ``optim_frac``: ``offload_optim_frac``: masters, Adam states and reduced gradients of
    the offloaded chunks on the host (policy:91-105). ``offload_params``: ``offload_param_frac=1.0``: every chunk goes back
    to the host after use (policy:78-83); ColossalAI ignores it unless the optimizer is
    offloaded too (policy:59-61), so that combination is refused here. ``shard_frac``:
    ``shard_param_frac``: the newest chunks stay gathered within the rest (policy:70-77).
    """
    if offload_params and optim_frac < 1:
        raise InvalidInputError(
            "Gemini offloads parameters only together with the optimizer "
            "(offload_param_frac needs offload_optim_frac=1.0, placement_policy.py:59-61): "
            "add --offload-optimizer cpu."
        )
    tied = arch.tie_embeddings
    head = f"{arch.traits.names.embedding}.weight" if tied else f"{HEAD}."
    return _gemini_rank(
        groups,
        (f"{arch.traits.names.final_norm}.", HEAD),
        layers,
        head,
        group,
        half_bytes,
        accumulation,
        optim_frac,
        offload_params,
        shard_frac,
        search_range_m,
        min_chunk_size_m,
    )


def _inflated(chunks: tuple[tuple[int, int], ...], where: tuple[int, ...], half: int) -> int:
    """The total the static fractions are taken of: each chunk's bytes once per tensor it
    holds (policy:89 sums chunk_mem over the parameters, without removing repeats)."""
    return sum(chunks[k][0] * half for k in where)


def _offloaded(
    chunks: tuple[tuple[int, int], ...], where: tuple[int, ...], half: int, frac: float
) -> frozenset[int]:
    """The chunks ``offload_optim_frac`` sends to the host: ColossalAI goes over them in
    a set's order, each while less than ``frac`` of the inflated total is offloaded
    (policy:91-105: the test comes before the chunk, so it may overshoot by one). The set's
    order is not the chunks' order: ftmem takes the smallest first, so the GPU keeps the
    most that the fraction can leave there."""
    budget = frac * _inflated(chunks, where, half)
    taken: list[int] = []
    done = 0
    for k in sorted(range(len(chunks)), key=lambda k: (chunks[k][0], k)):
        if done >= budget:
            break
        taken.append(k)
        done += chunks[k][0] * half
    return frozenset(taken)


def _kept_gathered(
    chunks: tuple[tuple[int, int], ...], where: tuple[int, ...], half: int, frac: float
) -> frozenset[int]:
    """The chunks ``shard_param_frac`` keeps gathered: ColossalAI releases the accessed
    chunks from the oldest while their full size exceeds (1 − frac) of the inflated total
    (policy:70-77, mgr:191-200), so the newest ones that fit in it stay whole."""
    budget = (1 - frac) * _inflated(chunks, where, half)
    kept: list[int] = []
    used = 0
    for k in reversed(range(len(chunks))):
        if used + chunks[k][0] * half > budget:
            break
        kept.append(k)
        used += chunks[k][0] * half
    return frozenset(kept)


def _in_flight(
    chunks: tuple[tuple[int, int], ...],
    train: list[ParamEntry],
    where: tuple[int, ...],
    head: str,
    shard: int,
    half: int,
    reuse: bool,
    kept: frozenset[int],
) -> tuple[int, int, int, int]:
    """Bytes of chunks gathered whole: in the blocks' forward and backward, at the LM
    head, and the largest other outer chunk (the embedding's); chunks kept gathered
    are counted where they stay, not here."""

    def gathered(k: int) -> int:
        return 0 if k in kept else chunks[k][0] * half

    placed = list(zip(train, where, strict=True))
    block_chunks = sorted({w for p, w in placed if p.in_block})
    outer_chunks = {w for p, w in placed if not p.in_block}
    head_chunk = next((w for p, w in placed if p.name.startswith(head)), None)
    # an op gathers its chunk; the previous one is released at the next op (policy:69-77),
    # so at a chunk boundary two are whole at once (notes: colossalai-gemini.md §2.1)
    pairs = [gathered(a) + gathered(b) for a, b in pairwise(block_chunks) if b == a + 1]
    forward = max(pairs + [gathered(k) for k in block_chunks], default=0)
    # without reuse each gathered chunk has a gathered gradient chunk beside it (chunk:640-683);
    # the reduce-scatter's output shard is allocated while the chunk is whole (chunk:404-406)
    grad_copies = 1 if reuse else 2
    backward = forward * grad_copies + shard * half if forward else 0
    head_bytes = 0 if head_chunk is None else gathered(head_chunk) * grad_copies
    outer = [gathered(k) * grad_copies for k in outer_chunks if k != head_chunk]
    return forward, backward, head_bytes, max(outer, default=0)


@lru_cache(maxsize=1024)
def _gemini_rank(
    groups: tuple[TensorGroup, ...],
    head_side: tuple[str, ...],
    layers: int,
    head: str,
    n: int,
    half: int,
    accumulation: bool,
    optim_frac: float,
    offload_params: bool,
    shard_frac: float,
    search_range_m: float,
    min_chunk_size_m: float,
) -> GeminiRank:
    """gemini_rank's work, cached on what it depends on (groups hash once, by value)."""
    order = _parameter_order(groups, head_side, layers)
    cs, keep = chunk_size([p.numel for p in order], n, search_range_m, min_chunk_size_m)
    train = [p for p in order if p.trainable]
    chunks, where = _pack(tuple(p.numel for p in train), cs, n)
    total = sum(c for c, _ in chunks)
    reuse = not accumulation  # master_weights=True (ddp:106)
    if keep:
        # whole chunks, never sharded (chunk:102-104), never offloaded (policy:91-105) and
        # never pinned (chunk:147-148); rank 0 owns every real element (optim:356-357)
        shards = {0: (total, sum(u for _, u in chunks))}
        off: frozenset[int] = frozenset()
        kept: frozenset[int] = frozenset()
        offload_params = False
        pinned = 0
    else:
        shards = {k: (c // n, min(c // n, u)) for k, (c, u) in enumerate(chunks)}  # optim:358-360
        # pin_memory is forced by enable_async_reduce=True (plugin:491-496): a pinned host
        # copy of every 16-bit, fp32 and gradient shard (chunk:313-316, 670-673)
        pinned = total // n * (half + FP32_BYTES + (0 if reuse else half))
        off = _offloaded(chunks, where, half, optim_frac)
        kept = _kept_gathered(chunks, where, half, shard_frac)
    # grads_device holds the reduced grads, the masters and the states (ddp:429-431, 873-874)
    gpu = [k for k in shards if k not in off]
    frozen = sum(p.numel for p in order if not p.trainable)
    sixteen = sum(chunks[k][0] if k in kept else s for k, (s, _) in shards.items()) * half

    forward, backward, head_bytes, outer_bytes = (
        (0, 0, 0, 0) if keep else _in_flight(chunks, train, where, head, cs // n, half, reuse, kept)
    )
    largest = max((p.numel for p in train), default=0)
    largest_block = max((p.numel for p in train if p.in_block), default=0)
    return GeminiRank(
        chunk_size=cs,
        keep_gathered=keep,
        chunks=len(chunks),
        chunk_elements=total,
        shards=0 if offload_params else sixteen,
        grads=0 if reuse else sum(shards[k][0] for k in gpu) * half,
        masters=sum(shards[k][0] for k in gpu) * FP32_BYTES,
        states=sum(shards[k][1] for k in gpu) * ADAM_STATE_BYTES,
        replicated=frozen * half,  # cast to the mixed dtype and moved to the GPU (ddp:831)
        gathered_forward=forward,
        gathered_backward=backward,
        gathered_head=head_bytes,
        gathered_outer=outer_bytes,
        # the gradient autograd hands the hook + torch.empty_like(grad) (ddp:370-371)
        head_backward=2 * largest * half,
        block_backward=2 * largest_block * half,
        # __paired_shard_move: the fp32 shard comes up whole, then is cast (chunk:559-569)
        access_transient=FP32_BYTES * max((shards[k][0] for k in off), default=0),
        host_pinned=pinned,
        # Adam states are plain zeros_like, never pinned (hybrid_adam.py:110-116)
        host_unpinned=sum(shards[k][1] for k in off) * ADAM_STATE_BYTES,
    )
