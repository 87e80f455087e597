"""What autograd saves while a function runs, measured on the CPU: the distinct storages
the saved-tensor hooks see (a view counts as its base's storage, as the allocator sees
it), parameters left out. The tests of a saved item's requests compare against it."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def saved_storages(run: Callable[[], object], params: Iterable[torch.Tensor]) -> list[int]:
    """The bytes of each storage saved for backward while ``run()`` runs, sorted."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sorted(seen.values())
