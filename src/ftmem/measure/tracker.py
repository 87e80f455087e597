"""Live tensor-memory tracking on the CPU (no allocator statistics there).

:class:`LiveBytesTracker` is a ``TorchDispatchMode``: every tensor an ATen op returns
has its untyped storage registered once (keyed by the storage's data pointer) with a
``weakref.finalize`` that subtracts its bytes when the storage is freed. Storages
that existed before tracking began (weights, optimizer states, inputs) are registered
with :meth:`LiveBytesTracker.track`. The tracker keeps the running total of live bytes
and its maximum; :meth:`reset_peak` starts a new phase.

Ops run by ``loss.backward()`` (including autograd's gradient accumulation) and by
``optimizer.step()`` dispatch through the mode while it is active, so gradients and
optimizer temporaries are counted. Allocations made *inside* a kernel (scratch
buffers that never become an op output) are invisible, as are allocator rounding and
fragmentation: the numbers are exact tensor bytes, like ``torch.cuda.memory_allocated``
without the 512-byte rounding.

With ``events`` the tracker also logs each storage's allocation and free in order, as
:func:`ftmem.gpu.allocator.replay` takes them (``ftmem estimate --traced`` replays a
fake step through the CUDA caching allocator's rules).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    """(identity, nbytes) of the tensor's untyped storage, or None if it has none.

    The identity is the address of the StorageImpl, which views share; unlike the
    data pointer it also tells fake tensors' storages apart (``--fake``).
    """
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse, meta-less subclasses, ...
        return None
    if t.device.type == "meta":
        return None
    nbytes = st.nbytes()
    if nbytes == 0:
        return None
    return st._cdata, nbytes


class LiveBytesTracker(TorchDispatchMode):
    """Running total and peak of live tensor-storage bytes, each storage once.

    Under any dispatch mode (this one, or a mode that does nothing) autograd sums a
    gradient's several contributions out of place every time; without one, as on CUDA,
    the sums after the first are in place (torch/csrc/autograd/input_buffer.cpp
    ``accumulate``: ``can_accumulate_inplace``). A peak made of such sums is the same
    in both (tests/test_loss_requests.py); what follows a multi-use tensor's last sum can
    read higher here than on a GPU."""

    def __init__(self, events: list[tuple[str, int]] | None = None) -> None:
        super().__init__()
        self._live: dict[int, int] = {}  # storage identity -> bytes
        self.current = 0
        self.peak = 0
        self.events = events
        self._event_ids: dict[int, int] = {}  # storage identity -> its alloc event's id
        self._allocs = 0

    # -- registration -------------------------------------------------------------
    def track(self, *tensors: Any) -> None:
        """Register tensors (any pytree of them) whose storages are live now."""
        for t in tree_leaves(tensors):
            if isinstance(t, torch.Tensor):
                self._register(t)

    def _register(self, t: torch.Tensor) -> None:
        # DTensor (FSDP2 shards) is a wrapper whose storage reports the global size;
        # what a rank holds is its local tensor
        local = getattr(t, "_local_tensor", None)
        if isinstance(local, torch.Tensor):
            t = local
        if t.layout == torch.sparse_coo:
            # a sparse COO tensor has no storage of its own: its indices and values do
            # (peft's SHiRA builds one every forward)
            self._register(t._indices())
            self._register(t._values())
            return
        key = storage_key(t)
        if key is None:
            return
        ptr, nbytes = key
        known = self._live.get(ptr)
        if known is not None:
            if known != nbytes:  # storage resized in place (resize_, out= ops)
                self._live[ptr] = nbytes
                self._add(nbytes - known)
                self._log_resize(ptr, nbytes)
            return
        self._live[ptr] = nbytes
        self._add(nbytes)
        self._log_alloc(ptr, nbytes)
        fin = weakref.finalize(t.untyped_storage(), self._free, ptr)
        fin.atexit = False

    def resized(self, t: torch.Tensor) -> None:
        """A storage changed size outside any tensor op (``untyped_storage().resize_``,
        as FSDP2 frees and re-allocates its gathered weights); follow it."""
        st = t.untyped_storage()
        ptr, nbytes = st._cdata, st.nbytes()
        known = self._live.get(ptr)
        if known is None:
            if nbytes:
                self._register(t)
            return
        self._live[ptr] = nbytes
        self._add(nbytes - known)
        self._log_resize(ptr, nbytes)

    def _free(self, ptr: int) -> None:
        nbytes = self._live.pop(ptr, None)
        if nbytes is not None:
            self.current -= nbytes
            self._log_free(ptr)

    def _add(self, nbytes: int) -> None:
        self.current += nbytes
        if self.current > self.peak:
            self.peak = self.current

    # -- the event log --------------------------------------------------------------
    def _log_alloc(self, ptr: int, nbytes: int) -> None:
        if self.events is None:
            return
        self.events.append(("alloc", nbytes))
        self._event_ids[ptr] = self._allocs
        self._allocs += 1

    def _log_free(self, ptr: int) -> None:
        event = self._event_ids.pop(ptr, None)
        if self.events is not None and event is not None:
            self.events.append(("free", event))

    def _log_resize(self, ptr: int, nbytes: int) -> None:
        """A resize is a new allocation, then the old one's free (resize_ copies)."""
        if self.events is None:
            return
        old = self._event_ids.pop(ptr, None)
        if nbytes:
            self._log_alloc(ptr, nbytes)
        if old is not None:
            self.events.append(("free", old))

    # -- phases -------------------------------------------------------------------
    def reset_peak(self) -> None:
        self.peak = self.current

    @property
    def num_storages(self) -> int:
        return len(self._live)

    # -- the mode -----------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._register(t)
        return out
