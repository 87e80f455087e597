"""The CLI's parsed preset files, kept between runs as a module's bytecode is.

Presets are YAML, and importing PyYAML (its scanner, parser, resolver and constructor
modules, the regular expressions they compile, libyaml's extension module) cost
``ftmem estimate MODEL --gpu GPU`` far more than parsing its two preset files: about
90 M of the command's 680 M instructions (valgrind's callgrind, 2026-12-04; issue 19,
benchmarks/bench_cli.py). The values a preset's text parses to depend on nothing but
that text and the parser, so the CLI keeps them in one file next to ftmem's bytecode
(:mod:`ftmem.marshal_file`), keyed by the text itself, together with the stamp of the
PyYAML that parsed them (its ``__init__.py``: place, size, modification time; another
PyYAML reads the file as empty). A preset whose text was parsed by an earlier run takes
its values from there and PyYAML is not imported; an edited file is another text.

While :func:`stored_presets` is active, :func:`parsed_preset` looks the text up first;
on leaving, what was parsed anew is added to the file (not written under
``PYTHONDONTWRITEBYTECODE``, nor where the folder is read-only). Only values marshal can
write are kept: the safe loader's text, numbers, booleans, None, lists and mappings (a
date is parsed again each time). A text that does not parse is never stored: its error
is PyYAML's, every time. Only the CLI does this: a program importing ftmem parses its
presets as usual.
"""

from __future__ import annotations

import marshal
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from typing import Any

from ftmem.marshal_file import read_mapping, store_path, write_mapping
from ftmem.textfiles import parse_yaml

MAX_ENTRIES = 512
"""Most preset texts the file keeps (ftmem ships about 140 presets); past this it is
rewritten with only what the last run parsed (a bound on its size, under 1 MB)."""

_ACTIVE = False
_STORED: dict[str, Any] | None = None  # the file's values, read once per process
_ADDED: dict[str, Any] = {}  # parsed in this process, not yet in the file


def _parser_stamp() -> tuple[str, int, int] | None:
    """What changes when PyYAML does (found without importing it): the place, modification
    time and size of its ``__init__.py``."""
    spec = find_spec("yaml")
    if spec is None or spec.origin is None:
        return None
    try:
        info = os.stat(spec.origin)
    except OSError:
        return None
    return (spec.origin, info.st_mtime_ns, info.st_size)


def _stored() -> dict[str, Any]:
    global _STORED
    if _STORED is None:
        stored = read_mapping(store_path("preset_values"))
        values = stored.get("values")
        if stored.get("parser") != _parser_stamp() or not isinstance(values, dict):
            values = {}
        _STORED = {k: v for k, v in values.items() if isinstance(k, str)}
    return _STORED


def _writable(value: Any) -> bool:
    try:
        marshal.dumps(value)
    except ValueError:  # a date, a timestamp: "unmarshallable object"
        return False
    return True


def parsed_preset(text: str, where: str) -> Any:
    """``text`` (a preset file's) as Python values (:func:`ftmem.textfiles.parse_yaml`;
    ``where`` names the file in errors): the stored values of a text parsed before while
    :func:`stored_presets` is active. Callers must not change them."""
    if not _ACTIVE:
        return parse_yaml(text, where)
    stored = _stored()
    if text in stored:
        return stored[text]
    if text in _ADDED:
        return _ADDED[text]
    value = parse_yaml(text, where)
    if _writable(value):
        _ADDED[text] = value
    return value


def _write() -> None:
    """Add what this process parsed to the file; a place that cannot be written parses
    again next time."""
    stored = _stored()
    merged = {**stored, **_ADDED}
    if len(merged) > MAX_ENTRIES:
        merged = dict(_ADDED)
    mapping = {"parser": _parser_stamp(), "values": merged}
    if write_mapping(store_path("preset_values"), mapping):
        stored.update(_ADDED)
        _ADDED.clear()


@contextmanager
def stored_presets() -> Iterator[None]:
    """Preset texts parsed by an earlier run take their stored values in the ``with``
    block; what is parsed anew is stored on leaving. Nested use is a no-op."""
    global _ACTIVE
    if _ACTIVE:
        yield
        return
    _ACTIVE = True
    try:
        yield
    finally:
        _ACTIVE = False
        if _ADDED and not sys.dont_write_bytecode:
            _write()
