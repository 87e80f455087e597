"""``PYTORCH_CUDA_ALLOC_CONF`` (or ``PYTORCH_ALLOC_CONF``) read into the options of
:class:`ftmem.gpu.allocator.CachingAllocator`.

The grammar and the checks are PyTorch's: ``key:value`` pairs separated by commas,
``roundup_power2_divisions`` also as ``[interval_mb:divisions,...,>:divisions]``
(pytorch/pytorch c10/core/AllocatorConfig.cpp @065861fba7598880aa3216822742a1172d0a197c,
AllocatorConfig::lexArgs and parseArgs). Options that do not change device memory
(pinned host memory, locking) are accepted and have no effect;
``garbage_collection_threshold`` is checked as PyTorch checks it (a fraction strictly between
0 and 1: CachingAllocatorConfig::parseGarbageCollectionThreshold's two TORCH_CHECKs, which
refuse NaN too) and not modelled (it acts only under ``set_per_process_memory_fraction``).
"""

from __future__ import annotations

import re
from typing import TypedDict

from ftmem.errors import InvalidInputError
from ftmem.gpu.allocator import ROUNDUP_INTERVALS


class AllocatorOptions(TypedDict, total=False):
    expandable_segments: bool
    max_split_size_mb: int
    max_non_split_rounding_mb: int
    roundup_power2_divisions: int | tuple[int, ...]


_TOKEN = re.compile(r"[,:\[\]]|[^,:\[\]]+")
_NO_DEVICE_EFFECT = frozenset(
    {
        "release_lock_on_cudamalloc",
        "release_lock_on_device_malloc",
        "pinned_use_cuda_host_register",
        "pinned_use_device_host_register",
        "pinned_num_register_threads",
        "pinned_use_background_threads",
        "pinned_reserve_segment_size_mb",
        "graph_capture_record_stream_reuse",
    }
)


def allocator_options(text: str) -> AllocatorOptions:
    """The allocator options a ``PYTORCH_CUDA_ALLOC_CONF`` value sets, e.g.
    ``"expandable_segments:True,max_split_size_mb:128"``."""
    tokens = _TOKEN.findall(text.replace(" ", ""))
    options: AllocatorOptions = {}
    i = 0
    while i < len(tokens):
        key = tokens[i]
        if i + 2 >= len(tokens) or tokens[i + 1] != ":":
            raise InvalidInputError(f"Allocator setting {key!r} needs ':' and a value.")
        if key == "roundup_power2_divisions" and tokens[i + 2] == "[":
            if "]" not in tokens[i:]:
                raise InvalidInputError("roundup_power2_divisions' list needs its closing ']'.")
            end = tokens.index("]", i)
            options["roundup_power2_divisions"] = _interval_divisions(tokens[i + 3 : end])
            i = end + 1
        else:
            _set(options, key, tokens[i + 2])
            i += 3
        if i < len(tokens) and tokens[i] != ",":
            raise InvalidInputError(f"Allocator settings expect ',' after {key!r}.")
        i += 1
    return options


def _set(options: AllocatorOptions, key: str, value: str) -> None:
    if key == "expandable_segments":
        if value not in ("True", "False"):
            raise InvalidInputError("expandable_segments takes True or False.")
        options["expandable_segments"] = value == "True"
    elif key == "max_split_size_mb":
        options["max_split_size_mb"] = _whole(key, value)
    elif key == "max_non_split_rounding_mb":
        options["max_non_split_rounding_mb"] = _whole(key, value)
    elif key == "roundup_power2_divisions":
        options["roundup_power2_divisions"] = _whole(key, value)
    elif key == "garbage_collection_threshold":
        _fraction(key, value)
    elif key == "backend":
        if value != "native":
            raise InvalidInputError(
                f"backend:{value} is not the caching allocator ftmem models; use native."
            )
    elif key not in _NO_DEVICE_EFFECT:
        raise InvalidInputError(f"Unrecognized CachingAllocator option {key!r}.")


def _whole(key: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()):  # "²" is a digit int() cannot read
        raise InvalidInputError(f"{key} takes a whole number, not {value!r}.")
    return int(value)


def _fraction(key: str, value: str) -> float:
    try:
        fraction = float(value) if value.isascii() else float("nan")
    except ValueError:
        fraction = float("nan")
    if not 0.0 < fraction < 1.0:  # also NaN, as PyTorch's val > 0 check refuses it
        raise InvalidInputError(f"{key} takes a fraction between 0 and 1, not {value!r}.")
    return fraction


def _interval_divisions(tokens: list[str]) -> tuple[int, ...]:
    """``[256:1,512:2,>:4]``: divisions per interval named by its lower bound in MiB; the
    first value also covers the intervals below it, ``>`` those after the last named
    (AllocatorConfig::parseRoundUpPower2Divisions, where ``>`` starts after the last
    named interval; the parser at 065861fb started it on that interval itself)."""
    table = [0] * ROUNDUP_INTERVALS
    pairs = [p for p in "".join(tokens).split(",") if p]
    last = -1
    for n, pair in enumerate(pairs):
        bound, _, value = pair.partition(":")
        divisions = _whole("roundup_power2_divisions", value)
        if bound == ">":
            table[last + 1 :] = [divisions] * (ROUNDUP_INTERVALS - last - 1)
            continue
        mib = _whole("roundup_power2_divisions", bound)
        if mib == 0 or mib & (mib - 1):
            raise InvalidInputError(
                f"roundup_power2_divisions intervals are powers of 2, not {mib}."
            )
        last = min(mib.bit_length() - 1, ROUNDUP_INTERVALS - 1)
        if n == 0:
            table[:last] = [divisions] * last
        table[last] = divisions
    return tuple(table)
