"""Reference merges on the CPU, measured with the live-storage tracker.

Random tensors of the architecture's exact shapes stand in for the checkpoints;
"reading" a tensor creates it. Weighted merges compute each output tensor as
``(w · stack(inputs).float()).sum(0)`` cast to the output dtype (a linear soup; TIES
and SLERP do more arithmetic per tensor but hold the same tensors); stack merges copy
block slices. The shard writer holds output tensors until adding one would pass the
shard size, then drops them (written out).
"""

from __future__ import annotations

import torch

from ftmem.arch import Architecture, block_prefix, layout, param_path
from ftmem.measure.tracker import LiveBytesTracker
from ftmem.merge import MergeConfig, parse_slices

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _names(arch: Architecture, blocks: list[int]) -> list[tuple[str, tuple[int, ...]]]:
    """(output name, shape) in checkpoint order; block i of the output is input block
    ``blocks[i]``."""
    lay = layout(arch)
    out = [(p.name, p.shape) for p in lay.outer]
    for i, _src in enumerate(blocks):
        out += [(param_path(arch, i, p.name), p.shape) for p in lay.block if p.in_block(_src)]
    return out


class _ShardWriter:
    def __init__(self, shard_bytes: int) -> None:
        self.shard_bytes, self.held = shard_bytes, 0
        self.tensors: list[torch.Tensor] = []

    def add(self, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        if self.held + nbytes > self.shard_bytes:
            self.tensors, self.held = [], 0  # the shard is written out
        self.tensors.append(t)
        self.held += nbytes


def measure_merge(arch: Architecture, cfg: MergeConfig) -> int:
    """Peak bytes of the reference merge of ``arch`` under ``cfg``."""
    dtype = _DTYPES[cfg.dtype]
    if cfg.kind == "stack":
        slices = parse_slices(cfg.layers or "", arch.num_layers)
        blocks = [i for a, b in slices for i in range(a, b)]
        k = 1
    else:
        blocks, k = list(range(arch.num_layers)), cfg.models
    names = _names(arch, blocks)
    weights = torch.full((k,), 1.0 / k)
    tracker = LiveBytesTracker()
    with tracker:
        if cfg.streamed:
            writer = _ShardWriter(cfg.shard_bytes)
            for _name, shape in names:
                inputs = [_read(shape, dtype) for _ in range(k)]
                writer.add(_combine(inputs, weights, dtype, cfg.kind, copy=False))
                del inputs
        else:
            models = [[_read(shape, dtype) for _, shape in _input_names(arch)] for _ in range(k)]
            index = {name: i for i, (name, _) in enumerate(_input_names(arch))}
            result = []
            for name, _shape in names:
                src = _source_name(arch, name, blocks)
                inputs = [m[index[src]] for m in models]
                result.append(_combine(inputs, weights, dtype, cfg.kind, copy=True))
                del inputs
    return tracker.peak


def _read(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A checkpoint tensor as loading gives it: allocated in its dtype, once."""
    return torch.empty(shape, dtype=dtype).normal_()


def _input_names(arch: Architecture) -> list[tuple[str, tuple[int, ...]]]:
    return _names(arch, list(range(arch.num_layers)))


def _source_name(arch: Architecture, name: str, blocks: list[int]) -> str:
    prefix = block_prefix(arch) + "."
    if not name.startswith(prefix):
        return name
    index, _, rest = name[len(prefix) :].partition(".")
    return f"{prefix}{blocks[int(index)]}.{rest}"


def _combine(
    inputs: list[torch.Tensor], w: torch.Tensor, dtype: torch.dtype, kind: str, copy: bool
) -> torch.Tensor:
    if kind == "stack":
        # streamed: the tensor read is the output; in memory: a copy of the input's
        return inputs[0].clone() if copy else inputs[0]
    stacked = torch.stack(inputs).float()
    weighted = w.view(-1, *([1] * (stacked.dim() - 1))) * stacked
    return weighted.sum(0).to(dtype)
