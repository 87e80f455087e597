"""Model merging: the size of the result and the memory to compute it.

Two kinds of merge:

* **weighted** (model soup, task arithmetic, TIES, SLERP...): K models of one
  architecture combined tensor by tensor into one of the same architecture. Each output
  tensor is computed in fp32 from the K inputs (upcast and stacked), then cast to the
  output dtype.
* **stack** (passthrough / depth up-scaling, as SOLAR 10.7B was built from two copies
  of Mistral-7B's layers): the output's blocks are slices of the input's, concatenated;
  tensors are copied, not computed. The architecture changes: more (or fewer) blocks.

Two ways to run it (ftmem's reference implementations in ``ftmem.measure.merge``):

* **in memory**: every input model loaded whole, the output built whole, then saved;
* **streamed** (mergekit's lazy loading): one output tensor at a time; its inputs are
  read, the tensor computed and handed to a shard writer, which holds up to
  ``shard_size`` bytes of output before writing them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ftmem import limits
from ftmem.arch import Architecture, count_params, layout
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.errors import InvalidInputError
from ftmem.validation import Field, PositiveInt

DEFAULT_SHARD_BYTES = 5 * 10**9  # mergekit's --out-shard-size default (5B)


# The physical bound of each count a merge takes (ftmem.limits).
MERGE_BOUNDS: dict[str, limits.Bound] = {"models": limits.MERGED_MODELS}


class MergeConfig(limits.BoundedSettings):
    BOUNDS = MERGE_BOUNDS

    kind: Literal["weighted", "stack"] = "weighted"
    models: PositiveInt = Field(2, description="weighted: how many models are combined.")
    layers: str | None = Field(
        None, description="stack: slices of the input's blocks, e.g. 0-24,8-32 (end excluded)."
    )
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"  # inputs and output
    streamed: bool = True
    # a shard is held in host RAM before it is written
    shard_bytes: int = Field(DEFAULT_SHARD_BYTES, ge=0, le=limits.HOST_MEMORY.limit)


@dataclass(frozen=True, slots=True)
class MergeEstimate:
    result: Architecture
    result_params: int
    result_bytes: int
    inputs_bytes: int  # all inputs, whole
    working_bytes: int  # the largest per-tensor working set
    peak_bytes: int  # what the merge holds at its largest moment
    notes: tuple[str, ...]


def parse_slices(spec: str, num_layers: int) -> list[tuple[int, int]]:
    """``0-24,8-32`` → [(0, 24), (8, 32)]: half-open block ranges within the model."""
    out = []
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        start, sep, end = item.partition("-")
        # isdecimal, not isdigit: "²" is a digit that int() refuses (a ValueError traceback)
        if not sep or not start.strip().isdecimal() or not end.strip().isdecimal():
            raise InvalidInputError(f"--layers: {item!r} is not a range like 0-24.")
        a, b = int(start), int(end)
        if a >= b:  # ("5-2 is outside the model's 12 blocks" before)
            raise InvalidInputError(
                f"--layers: {item} holds no block; a slice is START-END with START below "
                "END (half-open, as 0-24)."
            )
        if not b <= num_layers:
            raise InvalidInputError(
                f"--layers: {item} is outside the model's {num_layers} blocks (0-{num_layers})."
            )
        out.append((a, b))
    if not out:
        raise InvalidInputError("--layers is empty; give slices such as 0-24,8-32.")
    return out


def merge_estimate(arch: Architecture, cfg: MergeConfig) -> MergeEstimate:
    e = BYTES_PER_ELEMENT[cfg.dtype]
    lay = layout(arch)
    tensors = [p.numel for p in lay.outer] + [p.numel for p in lay.block]
    largest = max(tensors)
    notes: list[str] = []
    if cfg.kind == "stack":
        if cfg.layers is None:
            raise InvalidInputError("A stack merge needs --layers, e.g. 0-24,8-32.")
        if arch.encoder_decoder:
            raise InvalidInputError(
                f"{arch.name} is an encoder-decoder: stack merges (depth up-scaling) slice "
                "decoder-only blocks; use a weighted merge."
            )
        if arch.dense_layers:
            raise InvalidInputError(
                f"{arch.name}'s first {arch.dense_layers} blocks are dense and the others have "
                "experts: stack merges of blocks that differ are not modelled; use a weighted merge."
            )
        slices = parse_slices(cfg.layers, arch.num_layers)
        blocks = sum(b - a for a, b in slices)
        limits.LAYERS.check("--layers (the stacked model's blocks)", blocks)  # 5,000 slices
        result = arch.model_copy(update={"num_layers": blocks, "name": f"{arch.name} stacked"})
        inputs = count_params(arch) * e
        compute = 0  # tensors are copied, not computed
        read = largest * e
    else:
        if cfg.layers is not None:
            raise InvalidInputError("--layers applies to stack merges, not weighted ones.")
        result = arch
        inputs = cfg.models * count_params(arch) * e
        # the K inputs stacked in fp32, their weighted copy, the fp32 sum and its cast
        compute = largest * (2 * cfg.models * FP32 + FP32 + (e if e != FP32 else 0))
        read = largest * cfg.models * e
    result_params = count_params(result)
    result_bytes = result_params * e
    if cfg.streamed:
        # one tensor's inputs read and computed, beside the output shard being filled
        working = read + compute
        peak = working + min(cfg.shard_bytes, result_bytes)
        notes.append(
            "streamed: one output tensor at a time, the output written shard by shard "
            f"(up to {cfg.shard_bytes:,} bytes held before a shard is written)."
        )
    else:
        working = compute
        # an upper bound: the largest tensor's arithmetic as if done last
        peak = inputs + result_bytes + compute
        notes.append("in memory: every input and the whole output held at once.")
    return MergeEstimate(result, result_params, result_bytes, inputs, working, peak, tuple(notes))
