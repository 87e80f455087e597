"""Byte sizes: one parser and one formatter, binary and decimal units kept apart.

GPU memory is reported by drivers in binary units (an "80GB" A100 reports
81,920 MiB), so ftmem prints GiB by default and GB (10^9) on request.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Literal

from ftmem.display import clipped
from ftmem.errors import InvalidInputError
from ftmem.limits import HOST_MEMORY, Bound

UnitSystem = Literal["GiB", "GB"]

_BINARY = {"B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_DECIMAL = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_RE = re.compile(r"^\s*([0-9]*)(?:\.([0-9]+))?\s*([A-Za-z]*)\s*$")
# Fractions of a byte past the 30th decimal cannot change a size rounded to bytes (the
# largest unit is 2^40 bytes), and digits past it only cost time.
_FRACTION_DIGITS = 30
MIN_BARE_BYTES = 2**20
"""A size typed without a unit below this (1 MiB) is a unit forgotten, not a byte count:
no GPU, host or budget is measured in kilobytes."""


def _quoted(text: str) -> str:
    """The user's text in a message, cut short (a size can be typed 300 digits long)."""
    return repr(clipped(text))


def parse_size(text: str | int, bound: Bound = HOST_MEMORY, what: str = "") -> int:
    """Parse ``"24GiB"``, ``"24 GB"``, ``"80000MiB"`` or a plain byte count into bytes,
    exactly (no float rounding) and within ``bound``; ``what`` (an option or key) starts
    the errors.

    A bare letter such as ``24g`` is refused: it is ambiguous between GB and GiB,
    which differ by 7 %. So is a bare number under 1 MiB (``24``): a unit left out.
    """
    where = f"{what}: " if what else ""
    if isinstance(text, bool):  # an int to Python, but no size
        raise InvalidInputError(f"{where}Cannot read {text} as a size; write it like 24GiB.")
    bare = False  # typed without a unit
    if isinstance(text, int):
        value_bytes = text
    else:
        match = _SIZE_RE.match(str(text))
        if not match or not (match.group(1) or match.group(2)):
            raise InvalidInputError(
                f"{where}Cannot read {_quoted(str(text))} as a size; write it like 24GiB or 24GB."
            )
        whole, part, unit = match.group(1), match.group(2) or "", match.group(3).upper()
        factor = _BINARY.get(unit) or _DECIMAL.get(unit) or (1 if unit == "" else None)
        if factor is None:
            raise InvalidInputError(
                f"{where}Unknown size unit {_quoted(match.group(3))}; use B, KiB, MiB, GiB, "
                "TiB (binary) or KB, MB, GB, TB (decimal)."
            )
        whole = whole.lstrip("0")
        if len(whole) > 20:  # past any bound whatever the unit: no need to read it all
            value_bytes = 10 ** (len(whole) - 1) * factor
        else:
            number = Fraction(f"{whole or 0}.{part[:_FRACTION_DIGITS] or 0}")
            value_bytes = round(number * factor)
        bare = unit == ""
    bound.check(what or "the size", value_bytes)
    if value_bytes <= 0:
        raise InvalidInputError(f"{where}Size {_quoted(str(text))} must be positive.")
    if bare and value_bytes < MIN_BARE_BYTES:
        # `--gpu-memory 24` meant 24 GB or GiB, not a 24-byte GPU ("DOES NOT FIT", exit 0)
        t = str(text).strip()
        raise InvalidInputError(
            f"{where}{_quoted(t)} has no unit, which reads as {value_bytes:,} bytes; "
            f"write {t}GiB or {t}GB."
        )
    return value_bytes


def format_bytes(n_bytes: int, units: UnitSystem = "GiB", digits: int = 2) -> str:
    """Format a byte count in GiB (binary, default) or GB (decimal), always labelled."""
    base = 1024 if units == "GiB" else 1000
    names = ["B", "KiB", "MiB", "GiB", "TiB"] if units == "GiB" else ["B", "KB", "MB", "GB", "TB"]
    value = float(n_bytes)
    sign = "-" if value < 0 else ""
    value = abs(value)
    index = 0
    while index < len(names) - 1 and round(value, digits) >= base:
        value /= base
        index += 1
    if index == 0:
        return f"{sign}{int(value)} B"
    return f"{sign}{value:.{digits}f} {names[index]}"


def in_unit(n_bytes: int, units: UnitSystem = "GiB") -> float:
    """Bytes expressed as GiB or GB (for tables that share one unit per column)."""
    return n_bytes / (2**30 if units == "GiB" else 10**9)


def format_count(n: int) -> str:
    """A parameter count as 6.74B / 124.4M / 8,192."""
    for threshold, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= threshold:
            return f"{n / threshold:.2f}{suffix}"
    return str(n)
