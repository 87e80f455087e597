"""What autograd saves for backward: a saved_tensors_hooks registry and a graph walk."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ftmem.measure.tracker import storage_key


def weight_storage_ptrs(model: nn.Module) -> set[int]:
    """Data pointers of every parameter, buffer and quantisation-state tensor."""
    ptrs: set[int] = set()
    for t in model_state_tensors(model):
        key = storage_key(t)
        if key is not None:
            ptrs.add(key[0])
    return ptrs


def _quant_tensors(p: torch.Tensor) -> list[torch.Tensor]:
    """Tensors hanging off a bitsandbytes parameter: 4-bit quant_state (absmax, code,
    nested state2), 8-bit SCB/CB."""
    out: list[torch.Tensor] = []
    qs = getattr(p, "quant_state", None)
    stack = [qs] if qs is not None else []
    while stack:
        obj = stack.pop()
        for v in vars(obj).values():
            if isinstance(v, torch.Tensor):
                out.append(v)
            elif hasattr(v, "__dict__") and type(v).__name__ == "QuantState":
                stack.append(v)
    for attr in ("SCB", "CB"):
        v = getattr(p, attr, None)
        if isinstance(v, torch.Tensor):
            out.append(v)
    return out


# the name measure.build gives the rotary cache a framework's modules register
# (Profile.rotary_cache_buffer), which ftmem counts beside the weights
FRAMEWORK_ROTARY_CACHE = "framework_rotary_cache"
# peft VeRA's shared projections (BufferDicts "vera_A" and "vera_B"), which ftmem counts
# beside the weights too (adapters.vera.projection_bytes)
VERA_PROJECTIONS = (".vera_A.default", ".vera_B.default")
# PVeRA's and RandLoRA's shared bases (BufferDicts as VeRA's)
SHARED_BASES = (
    ".pvera_A.default",
    ".pvera_B.default",
    ".randlora_A.default",
    ".randlora_B.default",
)
# and the buffers peft's adapters register that ftmem counts so too: BOFT's fp32
# permutation matrices (peft 0.21.2 tuners/boft/layer.py:362 ``boft_P``), OFT's int64
# upper-triangle indices (tuners/oft/layer.py:102-103 OFTRotationModule ``rows``, ``cols``),
# VeRA's projections
ESTIMATED_BUFFERS = (
    FRAMEWORK_ROTARY_CACHE,
    "boft_P",
    "oft_R.default.rows",
    "oft_R.default.cols",
    # PSOFT's frozen fp32 A and B (tuners/psoft/layer.py BufferDicts ``_psoft_A_cache``,
    # ``_psoft_B_cache``) and OrthLayer's int64 ``rows``, ``cols``
    # GLoRA's zero C, D and E on a bias-free linear (tuners/glora/layer.py GloraEmptyPath)
    # trainable tokens' original rows (tuners/trainable_tokens/layer.py BufferDict)
    "trainable_tokens_original.default",
    "glora_C.default.zeros",
    "glora_D.default.zeros",
    "glora_E.default.zeros",
    # OSF's frozen SVD factors (tuners/osf/layer.py BufferDicts ``_osf_*``)
    "_osf_U_low_init.default",
    "_osf_S_low_init.default",
    "_osf_V_low_init.default",
    "_osf_U_high.default",
    "_osf_V_high.default",
    # Super-Tuning's int32 entry indices (tuners/supertuning/layer.py BufferDict
    # ``supertuning_indices``)
    "supertuning_indices.default",
    "_psoft_A_cache.default",
    "_psoft_B_cache.default",
    "psoft_R.default.rows",
    "psoft_R.default.cols",
    *VERA_PROJECTIONS,
    "delora_w_norm.default",  # (peft 0.21.2 tuners/delora/layer.py:152)
    # TinyLoRA's frozen SVD factors and projections (tuners/tinylora/layer.py BufferDicts)
    "tinylora_A.default",
    "tinylora_B.default",
    "tinylora_P.default",
    # AdaMSS's SVD projection (tuners/adamss/layer.py, a BufferDict)
    "adamss_newB.default",
    # UniLoRA's int64 indices and scales (tuners/unilora/layer.py BufferDicts)
    "unilora_indices_A.default",
    "unilora_indices_B.default",
    "unilora_scales_A.default",
    "unilora_scales_B.default",
    *SHARED_BASES,
)


def model_state_tensors(model: nn.Module, *, buffers: bool = True) -> list[torch.Tensor]:
    ts: list[torch.Tensor] = []
    for p in model.parameters():
        ts.append(p)
        ts.extend(_quant_tensors(p))
    # bitsandbytes int8 layers move the row scales (SCB) from the weight to the
    # module's MatmulLtState at the first forward
    for module in model.modules():
        state = getattr(module, "state", None)
        if type(state).__name__ == "MatmulLtState":
            ts.extend(v for v in vars(state).values() if isinstance(v, torch.Tensor))
    # peft FourierFT's spectral indices: a plain dict of int64 (2 × n) tensors on each
    # adapted layer, moved with the model, neither parameter nor buffer; ftmem counts them
    # beside the weights (adapters.lycoris.fourier_index_bytes)
    for module in model.modules():
        indices = getattr(module, "indices", None)
        if isinstance(indices, dict) and hasattr(module, "fourierft_spectrum"):
            ts.extend(t for t in indices.values() if isinstance(t, torch.Tensor))
        # SHiRA's likewise: int32 (2 × n) in ``shira_indices`` (adapters.shira.index_bytes)
        shira = getattr(module, "shira_indices", None)
        if isinstance(shira, dict):
            ts.extend(t for t in shira.values() if isinstance(t, torch.Tensor))
    if buffers:
        ts.extend(model.buffers())
    else:  # the buffers the estimate counts as weights: a framework's own rotary cache
        ts.extend(b for name, b in model.named_buffers() if name.endswith(ESTIMATED_BUFFERS))
    return ts


def storage_bytes(tensors: Iterable[torch.Tensor], exclude: set[int] | None = None) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for t in tensors:
        key = storage_key(t)
        if key is None or (exclude and key[0] in exclude):
            continue
        seen[key[0]] = key[1]
    return sum(seen.values())


class SavedRegistry:
    """Storages packed by autograd while active, minus those freed since.

    Use ``with torch.autograd.graph.saved_tensors_hooks(reg.pack, reg.unpack):``.
    """

    def __init__(self, exclude_ptrs: set[int]) -> None:
        self.exclude = exclude_ptrs
        self.live: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        # a sparse COO tensor (SHiRA's delta) keeps its indices and values, each a storage
        parts = [t._indices(), t._values()] if t.layout == torch.sparse_coo else [t]
        for part in parts:
            key = storage_key(part)
            if key is None:
                continue
            ptr, nbytes = key
            if ptr not in self.exclude and ptr not in self.live:
                self.live[ptr] = nbytes
                fin = weakref.finalize(part.untyped_storage(), self.live.pop, ptr, None)
                fin.atexit = False
        # Handed back as it is, a node's own output (sigmoid's, softmax's result) would hold
        # its grad_fn, which holds it: a reference cycle that only the cyclic collector,
        # disabled through the step, frees. Without hooks autograd keeps no such link, so a
        # graph the loss does not reach (the layers after LLaVA's vision_feature_layer)
        # is freed at once; the detached alias (same storage, same gradients) keeps that so.
        return t.detach() if t.grad_fn is not None else t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def nbytes(self) -> int:
        return sum(self.live.values())


class HostOffload(SavedRegistry):
    """Activation offloading as torch's ``save_on_cpu`` / torchtune's OffloadActivations
    do it, emulated on the CPU: every saved tensor but the parameters is copied out of
    torch's storages (a NumPy buffer stands in for pinned host memory, which the tracker
    does not count) and brought back as a fresh tensor when backward unpacks it.

    A sparse COO tensor (SHiRA's delta, kept by ``sparse_coo_tensor``'s node) goes to the
    host too: ``save_on_cpu``'s pack copies any layout (torch 2.13 autograd/graph.py
    l.403-414 ``pack_to_cpu``: ``tensor.cpu()``, or a same-layout ``torch.empty`` and
    ``copy_``), and its unpack's ``.to(device)`` brings back its indices and values."""

    def __init__(self, exclude_ptrs: set[int]) -> None:
        super().__init__(exclude_ptrs)
        self.host_bytes = 0

    # packs to a host tuple where the base keeps the tensor: autograd takes any object
    def pack(self, t: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        if t.layout == torch.sparse_coo:
            parts = (self.pack(t._indices()), self.pack(t._values()))
            return ("sparse", parts, tuple(t.shape), t.is_coalesced())
        key = storage_key(t)
        if key is None or key[0] in self.exclude:
            return ("device", t)
        flat = t.detach().contiguous().view(-1)
        host = flat.view(torch.uint8).numpy().copy() if flat.numel() else None
        self.host_bytes += flat.numel() * flat.element_size()
        return ("host", host, t.dtype, tuple(t.shape), t.requires_grad)

    @staticmethod
    def unpack(packed: tuple[Any, ...]) -> torch.Tensor:  # type: ignore[override]
        if packed[0] == "device":
            return packed[1]
        if packed[0] == "sparse":
            _, (indices, values), shape, coalesced = packed
            return torch.sparse_coo_tensor(
                HostOffload.unpack(indices),
                HostOffload.unpack(values),
                shape,
                is_coalesced=coalesced,
            )
        _, host, dtype, shape, _ = packed
        if host is None:
            return torch.empty(shape, dtype=dtype)
        return torch.from_numpy(host.copy()).view(dtype).view(shape)


@dataclass(frozen=True)
class SavedTensor:
    op: str  # autograd node type, e.g. "MmBackward0"
    attr: str  # e.g. "_saved_self"
    shape: tuple[int, ...]
    dtype: str
    nbytes: int  # bytes of the whole storage (0 if already counted for another entry)
    storage_nbytes: int
    ptr: int
    seq: int  # node sequence number (creation order)


def _tensors_in(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def graph_nodes(root: torch.autograd.graph.Node | None) -> list[torch.autograd.graph.Node]:
    """Every node reachable from ``root``, in creation (sequence-number) order."""
    nodes: list[torch.autograd.graph.Node] = []
    seen: set[int] = set()
    stack: list[torch.autograd.graph.Node | None] = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(fn for fn, _ in node.next_functions)
    nodes.sort(key=lambda n: n._sequence_nr())
    return nodes


def _node_tensors(node: torch.autograd.graph.Node, unpack: bool) -> list[tuple[str, torch.Tensor]]:
    """(attribute, tensor) pairs a node keeps for backward.

    ``unpack``: also read ``_saved_*`` attributes and a custom Function's
    ``saved_tensors`` (this runs unpack hooks: under checkpointing it recomputes).
    Tensors a custom autograd.Function stashes directly on ``ctx`` (bitsandbytes does:
    ``ctx.tensors = (CAt, subA, A)``) are read from the ctx's ``__dict__`` always;
    saved-tensor hooks never see those.
    """
    items: list[tuple[str, torch.Tensor]] = []
    if unpack:
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            try:
                value = getattr(node, attr)
                if (
                    isinstance(value, torch.Tensor)
                    and value.dim() == 0
                    and value.dtype in (torch.float64, torch.int64, torch.complex128, torch.bool)
                    and value.device.type == "cpu"
                ):
                    # a Python number wrapped as a CPU scalar (``x * 0.5``, ``x / 2``): saved, but
                    # not device memory, and never passed to saved-tensor hooks
                    continue
            except RuntimeError:  # already freed
                continue
            items += [(attr, t) for t in _tensors_in(value)]
    if isinstance(node, torch.autograd.function.BackwardCFunction):
        if unpack:
            with contextlib.suppress(RuntimeError):
                items += [("saved_tensors", t) for t in _tensors_in(node.saved_tensors)]
        for attr, value in vars(node).items():
            items += [(f"ctx.{attr}", t) for t in _tensors_in(value)]
    return items


def walk_saved(
    root: torch.autograd.graph.Node | None,
    exclude_ptrs: set[int],
    seq_range: tuple[int, int] | None = None,
    *,
    unpack: bool = True,
) -> list[SavedTensor]:
    """Every tensor kept by a node reachable from ``root`` (optionally only nodes whose
    sequence number lies strictly inside ``seq_range``), in creation order. Each storage
    gets its bytes once (on the first node that keeps it); parameters, buffers and
    quantisation state (``exclude_ptrs``) get 0.

    With ``unpack`` (the default) saved tensors are unpacked: under non-reentrant
    checkpointing that would recompute, so pass ``unpack=False`` there (then only
    tensors stashed on custom-Function ctx objects are seen).
    """
    out: list[SavedTensor] = []
    counted: set[int] = set()
    for node in graph_nodes(root):
        seq = node._sequence_nr()
        if seq_range is not None and not (seq_range[0] < seq < seq_range[1]):
            continue
        op = type(node).__name__
        for attr, t in _node_tensors(node, unpack):
            key = storage_key(t)
            if key is None:
                continue
            ptr, nbytes = key
            counted_now = 0
            if ptr not in exclude_ptrs and ptr not in counted:
                counted.add(ptr)
                counted_now = nbytes
            out.append(
                SavedTensor(
                    op,
                    attr,
                    tuple(t.shape),
                    str(t.dtype).replace("torch.", ""),
                    counted_now,
                    nbytes,
                    ptr,
                    seq,
                )
            )
    return out


def bytes_by_op(saved: list[SavedTensor]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in saved:
        if s.nbytes:
            out[s.op] = out.get(s.op, 0) + s.nbytes
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def next_sequence_nr() -> int:
    """The sequence number the next autograd node will get (creates a throwaway node)."""
    with torch.enable_grad():
        probe = torch.zeros((), requires_grad=True).clone()
    assert probe.grad_fn is not None  # clone of a tensor that requires grad: CloneBackward
    return probe.grad_fn._sequence_nr()
