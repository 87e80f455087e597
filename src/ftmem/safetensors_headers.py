"""What a model folder's safetensors files hold, from their JSON headers only.

A safetensors file starts with an 8-byte little-endian header length and a JSON header
naming every tensor with its dtype and shape (the data follows; it is never read). An
``model.safetensors.index.json`` maps tensor names to shard files. From the headers
ftmem knows the checkpoint's exact tensors, dtypes and bytes, and can tell whether it
matches the layout it estimates (or is already quantised: GPTQ, AWQ, bitsandbytes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.textfiles import parse_json, read_text

MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit on the header
MAX_INDEX_BYTES = 16 * 2**20
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
    "I16": 2, "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1,
}  # fmt: skip
# tensor name suffixes that only quantised checkpoints have
QUANT_MARKERS = {
    ".qweight": "GPTQ/AWQ",
    ".qzeros": "GPTQ/AWQ",
    ".g_idx": "GPTQ",
    ".absmax": "bitsandbytes 4-bit",
    ".quant_map": "bitsandbytes 4-bit",
    ".SCB": "bitsandbytes 8-bit",
}


@dataclass
class Checkpoint:
    files: list[str]
    tensors: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return sum(prod(shape) for _, shape in self.tensors.values())

    @property
    def nbytes(self) -> int:
        return sum(prod(shape) * DTYPE_BYTES.get(dt, 0) for dt, shape in self.tensors.values())

    def bytes_by_dtype(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for dt, shape in self.tensors.values():
            out[dt] = out.get(dt, 0) + prod(shape) * DTYPE_BYTES.get(dt, 0)
        return out

    @property
    def quantization(self) -> str | None:
        for name in self.tensors:
            for suffix, kind in QUANT_MARKERS.items():
                if name.endswith(suffix):
                    return kind
        return None


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name → (dtype, shape) from one safetensors file's header."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ConfigError(f"{path.name} is too short to be a safetensors file.")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES or length > size - 8:
            raise ConfigError(
                f"{path.name} has a header length ({length:,}) that does not fit the file."
            )
        text = fh.read(length)
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path.name} has a header that is not JSON (not UTF-8): not a safetensors file."
        ) from None
    header = parse_json(decoded, f"{path.name}'s header")
    if not isinstance(header, dict):
        raise ConfigError(f"{path.name} has a header that is not a JSON object.")
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    # The physical bound of a shape: its elements' data must lie in the file, at one bit
    # per element at the least (a 4-bit dtype ftmem does not know; 8 bits for I8...).
    data_bits = 8 * (size - 8 - length)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        label = _label(name)
        if not isinstance(info, dict) or "dtype" not in info or "shape" not in info:
            raise ConfigError(f"{path.name}: tensor {label} has no dtype or shape in the header.")
        shape, dtype = info["shape"], info["dtype"]
        if not isinstance(dtype, str) or not 0 < len(dtype) <= 20:
            raise ConfigError(f"{path.name}: tensor {label} has a malformed dtype.")
        if not isinstance(shape, list) or not all(
            type(d) is int and 0 <= d <= data_bits for d in shape
        ):
            if isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape):
                raise ConfigError(
                    f"{path.name}: tensor {label} has a dimension over the file size bound "
                    f"(its {data_bits // 8:,} bytes of data hold fewer elements)."
                )
            raise ConfigError(f"{path.name}: tensor {label} has a malformed shape.")
        bits = 8 * DTYPE_BYTES.get(dtype, 0) or 1
        if prod(shape) * bits > data_bits:
            raise ConfigError(
                f"{path.name}: tensor {label} has {limits.shown(prod(shape))} elements of "
                f"{dtype}, over the file size bound (its {data_bits // 8:,} bytes of data "
                "cannot hold them)."
            )
        out[name] = (dtype, tuple(shape))
    return out


def _label(name: str) -> str:
    """A tensor name from a header in a message: quoted and cut short."""
    return repr(name if len(name) <= 60 else name[:57] + "...")


def read_checkpoint(folder: Path) -> Checkpoint | None:
    """The safetensors checkpoint of a model folder, or None when it has none."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = parse_json(read_text(index, "safetensors index", MAX_INDEX_BYTES), index.name)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(map(_is_file_name, weight_map.values())):
            raise ConfigError(
                f"{index.name} has no weight_map of tensor names to file names in its folder."
            )
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        return None
    ckpt = Checkpoint(files)
    for name in files:
        path = folder / name
        try:
            if not path.is_file():
                raise ConfigError(f"{path} is named in the index but missing.")
            ckpt.tensors.update(read_header(path))
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}.") from None
    return ckpt


def _is_file_name(value: object) -> bool:
    """A file in the index's own folder (no path, no NUL, within NAME_MAX)."""
    return (
        isinstance(value, str)
        and 0 < len(value.encode("utf-8", "replace")) <= 255
        and not any(c in value for c in "/\\\0")
        and value not in (".", "..")
    )
