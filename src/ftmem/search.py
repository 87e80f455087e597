"""Searches over the estimator: the fewest GPUs a run fits on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ftmem.errors import InvalidInputError
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
    everything), so the search walks the counts in order rather than bisecting.
    """
    tried: list[GpuCount] = []
    for g, n in gpu_counts(gpus_per_node, max_nodes, multiple_of):
        try:
            est = estimate_on(g, n)
        except InvalidInputError:
            continue
        if est.fits is None:
            raise InvalidInputError("--fewest-gpus needs a GPU: give --gpu or --gpu-memory.")
        count = GpuCount(g, n, est)
        tried.append(count)
        if est.fits:
            return count, tried
    return None, tried
