"""Variable-length batches: which padded lengths a run's steps have (``--lengths``).

A run that pads each batch to its longest member (HF Trainer's and TRL's collators
without packing, PEFT's method_comparison, torchtune and LitGPT without packing) has a
different activation and logit size every step. The allocated peak is the longest
batch's (``--seq-len``); the *reserved* peak is not: the caching allocator keeps the
segments it cut for the other lengths, and a longer batch cannot grow a cached block,
so it opens new segments beside them. gpu.device replays a sequence of steps over
these lengths to get that cache.

The spec (``RunConfig.lengths``):

* ``fixed`` (the default, also ``None``): every batch is ``seq_len`` tokens (packing,
  or padding to the maximum length);
* ``padded``: batches padded to their longest; their lengths over the whole range up
  to ``seq_len`` (the shortest unknown: from 0);
* ``padded:MIN``: padded lengths uniform from MIN to ``seq_len``;
* ``padded:MIN-MAX``: the same, with MAX = ``seq_len`` (given without ``seq_len``,
  MAX sets it);
* ``padded:L1,L2,...``: these padded lengths, the longest = ``seq_len``;
* ``grouped`` (and ``grouped:MIN``, ...): padded as above, with the longest batch
  first, as HF Trainer's ``group_by_length`` orders them (transformers
  src/transformers/trainer_pt_utils.py @010a915ce62bd1a3adb61d0eab2f0acca436b1c0,
  get_length_grouped_indices: "the batch ... containing the element of maximum length
  placed first, so that an OOM happens sooner rather than later"): no later batch is a
  record, so the replay runs only the mixed order, over lengths spread evenly over the
  range (8 of them: every eighth of it).

Which lengths the replay runs. The cache only grows between ``empty_cache`` calls, and
it grows when a batch is longer than every one before it (a *record*): its tensors find
no cached block large enough, while a shorter batch splits the blocks a longer one left.
For a range, the replay therefore runs the records a shuffled run meets in expectation
(record_quantile), ascending, then the longest; for a list, every length given, shortest
first (the user named the lengths that occur). Then the same lengths once more, mixed
(replay_order). The frequency of each length is not asked: it changes when records
occur, not what the cache holds once they have.
"""

from __future__ import annotations

import math
import re

MAX_REPLAYED_LENGTHS = 8
"""At most this many distinct lengths are replayed: each costs one step's sizes and two
replayed steps (about 10 ms each for a 28-layer model). For a shuffled range, the k-th
replayed length is the k-th record of a shuffled run (record_quantile): the 7th is at
quantile 1 - e^-7 = 0.9991, within 0.1 % of the range of the longest, and a run meets
a 7th record only after ~e^7 = 1,100 steps, so further ones would add lengths that
round to the same 2 MiB blocks as the longest."""

_RANGE = re.compile(r"^(?:padded|grouped):(\d+)(?:-(\d+))?$")
_LIST = re.compile(r"^(?:padded|grouped):(\d+(?:,\d+)+)$")


def _spec(text: str | None) -> str:
    return (text or "fixed").replace(" ", "")


def replayed_steps(text: str | None, seq_len: int) -> tuple[int, ...]:
    """The batch length of each replayed step, in order; () for fixed lengths."""
    lengths = padded_lengths(text, seq_len)
    if not lengths:
        return ()
    mixed = replay_order(lengths)[len(lengths) :]
    return mixed if _spec(text).startswith("grouped") else tuple(lengths) + mixed


def longest_given(text: str | None) -> int | None:
    """The longest padded length the spec names itself (MAX or the list's largest), or
    None (``fixed``, ``padded``, ``padded:MIN``; or a spec that is not valid)."""
    spec = _spec(text)
    if (m := _RANGE.match(spec)) and m.group(2):
        return int(m.group(2))
    if m := _LIST.match(spec):
        return max(int(x) for x in m.group(1).split(","))
    return None


def padded_lengths(text: str | None, seq_len: int) -> tuple[int, ...]:
    """The distinct padded lengths to replay, ascending, the last one ``seq_len``; ()
    for fixed lengths. Raises ValueError with one sentence for a bad spec."""
    spec = _spec(text)
    if spec == "fixed":
        return ()
    given = longest_given(spec)
    if given is not None and given != seq_len:
        raise ValueError(
            f"--lengths {spec} ends at {given} but --seq-len is {seq_len}: --seq-len is the "
            f"longest batch's padded length; give --seq-len {given} or drop the maximum"
        )
    # shuffled: the records a run meets; longest first: no records, the range sampled
    lengths = _records if spec.startswith("padded") else _spread
    if spec in ("padded", "grouped"):
        return lengths(0, seq_len)
    if m := _RANGE.match(spec):
        shortest = int(m.group(1))
        if shortest < 1:
            raise ValueError(f"--lengths {spec}: the shortest padded length must be at least 1")
        # a longest batch below MIN (a search over --seq-len): every batch is that long
        return lengths(min(shortest, seq_len), seq_len)
    if m := _LIST.match(spec):
        values = sorted({int(x) for x in m.group(1).split(",")})
        if values[0] < 1 or len(values) > MAX_REPLAYED_LENGTHS:
            raise ValueError(
                f"--lengths {spec}: give 2 to {MAX_REPLAYED_LENGTHS} distinct positive lengths"
            )
        return tuple(values)
    raise ValueError(
        f"--lengths takes fixed, padded, padded:MIN, padded:MIN-MAX or padded:L1,L2,... "
        f"(grouped for the longest batch first), not {spec!r}"
    )


def record_quantile(k: int) -> float:
    """Where the k-th record (a batch longer than every one before it) of a run with
    lengths drawn independently from one continuous distribution lies, in expectation:
    the records' values -ln(1 - F(x)) form a Poisson process of rate 1 (Rényi's record
    theorem; Resnick, Extreme Values, Regular Variation and Point Processes, 1987,
    Prop. 4.1), so the k-th is at F = 1 - e^-k: 0.63, 0.86, 0.95, ..."""
    return 1.0 - math.exp(-k)


def _records(shortest: int, longest: int) -> tuple[int, ...]:
    """The lengths a shuffled run meets as records before its longest, padded lengths
    taken as uniform over [shortest, longest] (``padded``: over (0, longest]), and the
    longest itself: at most MAX_REPLAYED_LENGTHS, ascending."""
    span = longest - shortest
    values = {longest}
    for k in range(1, MAX_REPLAYED_LENGTHS):
        values.add(max(1, shortest + math.ceil(span * record_quantile(k))))
    return tuple(sorted(values))


def _spread(shortest: int, longest: int) -> tuple[int, ...]:
    """MAX_REPLAYED_LENGTHS lengths evenly over [shortest, longest] (from 0: the
    eighths of (0, longest]), both ends included."""
    n = MAX_REPLAYED_LENGTHS
    if shortest == 0:
        return tuple(sorted({-(-longest * k // n) for k in range(1, n + 1)}))
    steps = min(n, longest - shortest + 1)
    if steps == 1:
        return (longest,)
    span = longest - shortest
    return tuple(sorted({shortest + -(-span * k // (steps - 1)) for k in range(steps)}))


def replay_order(lengths: tuple[int, ...]) -> tuple[int, ...]:
    """The steps the allocator replay runs: every length once in increasing order (each
    batch longer than any before: new segments, the old ones stay cached), then mixed,
    alternating from the ends, longest first (a short batch splits the blocks a long one
    freed; the next long one no longer finds them whole): for 1..4, 1 2 3 4 4 1 3 2."""
    mixed: list[int] = []
    low, high = 0, len(lengths) - 1
    while low <= high:
        mixed.append(lengths[high])
        if low != high:
            mixed.append(lengths[low])
        low, high = low + 1, high - 1
    return tuple(lengths) + tuple(mixed)
