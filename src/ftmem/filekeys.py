"""Typed reads of the keys of a user's config file.

A YAML or JSON file gives any type for any key (``stage: auto``, ``tokenizer: abc``,
``lora_target: 5``, a list where a number belongs). Readers ask a :class:`Keys` for
the type they need; a value of another type is one :class:`~ftmem.errors.ConfigError`
sentence naming the file, the key (dotted, from the top of the file) and what it must
be, instead of a traceback or a silent misread (``"false"`` read as true).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ftmem.display import clipped
from ftmem.errors import ConfigError

_WORDS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def shown(value: Any) -> str:
    """A wrong value as the error quotes it: its YAML-ish spelling, cut short."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if value is None:
        return "empty"
    text = repr(value) if isinstance(value, str) else str(value).lower()
    text = text.encode("ascii", "backslashreplace").decode("ascii")  # no control characters
    return clipped(text)


class Keys:
    """One mapping of ``file`` (at ``where``, a dotted prefix), read key by key.

    Every accessor returns ``None`` (or the default) for a missing key or an empty
    (``null``) value, the value when it has the asked type, and raises otherwise.
    """

    def __init__(
        self, data: Mapping[str, Any], file: str, where: str = "", read: set[str] | None = None
    ) -> None:
        self._data = data
        self.file = file
        self.where = where
        # the dotted names of the keys whose value was asked for, shared with the sections
        # (unread_leaves: what a nested mapping held that no reader looked at)
        self.read: set[str] = set() if read is None else read

    def _get(self, key: str) -> Any:
        self.read.add(self.name(key))
        return self._data.get(key)

    def unread_leaves(self) -> list[str]:
        """The dotted names of the values under this mapping that no accessor read (a
        nested mapping's own keys, each down to its values), in the file's order."""
        out: list[str] = []

        def walk(data: Mapping[str, Any], where: str) -> None:
            for key, value in data.items():
                name = f"{where}{key}"
                if isinstance(value, Mapping) and value:
                    walk(value, f"{name}.")
                elif name not in self.read:
                    out.append(name)

        walk(self._data, self.where)
        return out

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __iter__(self):
        return iter(self._data)

    def name(self, key: str) -> str:
        """The key as the error names it: dotted from the top of the file."""
        return f"{self.where}{key}"

    def wrong(self, key: str, expected: str) -> ConfigError:
        value = self._data.get(key)
        return ConfigError(f"{self.file}: {self.name(key)} must be {expected}, not {shown(value)}.")

    def raw(self, key: str) -> Any:
        return self._get(key)

    def text(self, key: str, default: str | None = None) -> str | None:
        """A string (a name, a path, a choice)."""
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.wrong(key, "a string")
        return value

    def choice(self, key: str, choices: Mapping[str, Any] | tuple[str, ...]) -> str | None:
        """A string out of ``choices`` (case-insensitive), lowered."""
        value = self.text(key)
        if value is None:
            return None
        if value.lower() not in choices:
            listed = list(choices)
            words = ", ".join(listed[:-1]) + f" or {listed[-1]}" if len(listed) > 1 else listed[0]
            raise self.wrong(key, f"one of {words}")
        return value.lower()

    def integer(self, key: str, minimum: int = 1) -> int | None:
        """A whole number of at least ``minimum`` (YAML's ``4.0`` counts; ``true`` does not)."""
        value = self._get(key)
        if value is None:
            return None
        whole = isinstance(value, int) or (
            isinstance(value, float) and math.isfinite(value) and value.is_integer()
        )
        if isinstance(value, bool) or not whole:
            raise self.wrong(key, f"a whole number (at least {minimum})")
        if value < minimum:
            raise self.wrong(key, f"at least {minimum}")
        return int(value)

    def number(
        self, key: str, low: float | None = None, below: float | None = None
    ) -> float | None:
        """A finite number in ``[low, below)`` (either end open when not given)."""
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.wrong(key, "a number")
        if abs(value) > 1e300 or not math.isfinite(value):  # (an int past floats first)
            raise self.wrong(key, "a finite number")
        if low is not None and value < low:
            raise self.wrong(key, f"at least {low:g}")
        if below is not None and value >= below:
            raise self.wrong(key, f"below {below:g}")
        return value

    def flag(self, key: str, spelled: bool = False) -> bool:
        """true or false (missing or empty: false). Strings are refused (``"false"`` is
        a true value in Python and would be misread) unless ``spelled``: then "true" and
        "false" as words too, where the framework reads them so (transformers'
        ``str_to_bool`` over ``fsdp_config``)."""
        value = self._get(key)
        if value is None:
            return False
        if spelled and isinstance(value, str) and value.strip().lower() in _WORDS:
            return _WORDS[value.strip().lower()]
        if not isinstance(value, bool):
            raise self.wrong(key, "true or false")
        return value

    def flag_or_text(self, key: str, names: tuple[str, ...]) -> bool | str:
        """A switch that frameworks also spell as a mode name (axolotl's
        ``gradient_checkpointing: offload``): one of ``names``, or the boolean. Another
        string is refused (``"false"`` or a typo was read as on)."""
        value = self._get(key)
        if isinstance(value, str):
            if value in names:
                return value
            raise self.wrong(key, f"true, false or one of {', '.join(names)}")
        return self.flag(key)

    def names(self, key: str) -> list[str] | None:
        """Names given as one comma-separated string or as a list of strings."""
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, str):
            return [x.strip() for x in value.split(",") if x.strip()]
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            return [x.strip() for x in value if x.strip()]
        raise self.wrong(key, "a name or a list of names")

    def patterns(self, key: str) -> list[str] | None:
        """Regular expressions: one string (commas may be part of it) or a list of them."""
        value = self._get(key)
        if isinstance(value, str):
            return [value] if value.strip() else []
        if value is None or (isinstance(value, list) and all(isinstance(x, str) for x in value)):
            return value
        raise self.wrong(key, "a regular expression or a list of them")

    def section(self, key: str) -> Keys:
        """A nested mapping (missing or empty: an empty one)."""
        value = self._get(key)
        if value is None:
            return Keys({}, self.file, f"{self.name(key)}.", self.read)
        if not isinstance(value, Mapping):
            raise self.wrong(key, "a mapping of settings")
        return Keys(value, self.file, f"{self.name(key)}.", self.read)
