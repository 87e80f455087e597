"""Searches over the estimator: the fewest GPUs a run fits on, the largest batch,
sequence or rank that fits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ftmem.errors import InvalidInputError
from ftmem.estimate import SCREENED_NOTE, screening
from ftmem.result import Estimate

MAX_NODES = 128


@dataclass(frozen=True, slots=True)
class GpuCount:
    gpus_per_node: int
    nodes: int
    estimate: Estimate

    @property
    def total(self) -> int:
        return self.gpus_per_node * self.nodes


def gpu_counts(gpus_per_node: int, max_nodes: int, multiple_of: int) -> list[tuple[int, int]]:
    """(GPUs per node, nodes) in increasing total: a partial node first, then whole nodes."""
    counts = [(g, 1) for g in range(1, gpus_per_node + 1)]
    counts += [(gpus_per_node, n) for n in range(2, max_nodes + 1)]
    return [(g, n) for g, n in counts if (g * n) % multiple_of == 0]


def fewest_gpus(
    estimate_on: Callable[[int, int], Estimate],
    gpus_per_node: int,
    multiple_of: int = 1,
    max_nodes: int = MAX_NODES,
) -> tuple[GpuCount | None, list[GpuCount]]:
    """The smallest GPU count whose per-GPU total fits, and every count tried.

    ``estimate_on(gpus_per_node, nodes)`` gives the estimate with a GPU (so ``fits`` is
    set). Counts the layout rules refuse (e.g. hybrid sharding over uneven nodes) are
    skipped. Per-GPU memory does not always fall with more GPUs (DDP replicates
    everything), so the search walks the counts in order rather than bisecting. The
    counts are estimated under ftmem.estimate.screening: the one that fits, or the
    largest tried, is the one shown, with every figure.
    """
    tried: list[GpuCount] = []
    refused: list[str] = []
    for g, n in gpu_counts(gpus_per_node, max_nodes, multiple_of):
        try:
            with screening():
                est = estimate_on(g, n)
        except InvalidInputError as exc:
            refused.append(str(exc))
            continue
        if est.fits is None:
            raise InvalidInputError("--fewest-gpus needs a GPU: give --gpu or --gpu-memory.")
        count = GpuCount(g, n, est)
        tried.append(count)
        if est.fits:
            return count, tried
    if refused and len(tried) <= 1:
        # no count, or one GPU only, could be estimated: the refusal is the answer
        # (a one-GPU feature such as --accounting simple, an offload without a strategy)
        raise InvalidInputError(f"--fewest-gpus: {refused[0]}")
    if tried:  # the largest count tried is shown: its figures whole
        last = tried[-1]
        whole = _whole(lambda _: estimate_on(last.gpus_per_node, last.nodes), 0, last.estimate)
        tried[-1] = GpuCount(last.gpus_per_node, last.nodes, whole)
    return None, tried


@dataclass(frozen=True, slots=True)
class Largest:
    """The largest value that fits, and the estimates on both sides of the edge."""

    value: int | None  # None: not even the smallest value fits
    fits_at: Estimate | None
    fails_at: Estimate | None  # at value + 1 (None when value is the upper bound)
    evaluations: int


def largest_fitting(estimate_at: Callable[[int], Estimate], lowest: int, highest: int) -> Largest:
    """The largest integer in [lowest, highest] whose estimate fits, by doubling then
    bisection, so that it fits and the next integer does not (memory grows with batch
    size, sequence length and rank; the bisection keeps that invariant at its edge)."""
    evaluations = 0

    def fits(n: int) -> tuple[bool, Estimate]:
        nonlocal evaluations
        evaluations += 1
        with screening():  # the one shown beyond the edge is estimated again, whole
            est = estimate_at(n)
        if est.fits is None:
            raise InvalidInputError("a search needs a GPU: give --gpu or --gpu-memory.")
        return bool(est.fits), est

    ok, est = fits(lowest)
    if not ok:
        return Largest(None, None, _whole(estimate_at, lowest, est), evaluations)
    good, good_est = lowest, est
    bad: int | None = None
    bad_est = est
    step = max(1, lowest)
    while bad is None:
        probe = min(good + step, highest)
        if probe == good:  # the upper bound fits
            return Largest(good, good_est, None, evaluations)
        ok, est = fits(probe)
        if ok:
            good, good_est = probe, est
            step *= 2
        else:
            bad, bad_est = probe, est
    while bad - good > 1:
        mid = (good + bad) // 2
        ok, est = fits(mid)
        if ok:
            good, good_est = mid, est
        else:
            bad, bad_est = mid, est
    return Largest(good, good_est, _whole(estimate_at, bad, bad_est), evaluations)


def _whole(estimate_at: Callable[[int], Estimate], n: int, est: Estimate) -> Estimate:
    """``est`` with every figure replayed, where screening left the cache out."""
    return estimate_at(n) if SCREENED_NOTE in est.notes else est
