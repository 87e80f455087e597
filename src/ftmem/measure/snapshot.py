"""The CUDA caching allocator's own record of a measured step, saved for inspection.

``torch.cuda.memory._record_memory_history`` makes the allocator keep each block's
allocation and free (with its Python and C++ stack); ``torch.cuda.memory._snapshot()``
then returns the segments, their blocks and that history as a dict, the format that
https://pytorch.org/memory_viz and ``torch/cuda/_memory_viz.py`` read from a pickle
(PyTorch's "Understanding CUDA Memory Usage" notes). Imports torch: load only for
``ftmem measure --device cuda --snapshot``.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

# the allocator keeps at most this many alloc/free events (a 7B step has ~10^4)
MAX_ENTRIES = 100_000


@contextmanager
def recording_to(path: Path) -> Iterator[None]:
    """Record the allocator's history while the body runs, then pickle its snapshot to
    ``path`` (also when the body fails: the snapshot shows what led there)."""
    torch.cuda.memory._record_memory_history(max_entries=MAX_ENTRIES)
    try:
        yield
    finally:
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        with path.open("wb") as f:
            pickle.dump(snapshot, f)
