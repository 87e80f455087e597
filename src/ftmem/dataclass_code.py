"""The CLI's compiled dataclass methods, kept between runs as a module's bytecode is.

CPython writes each dataclass's methods (``__init__``, ``__repr__``, ``__eq__``,
``__hash__``, a frozen class's ``__setattr__`` and ``__delattr__``) as source text when
the class is created and compiles it there (``dataclasses._create_fn``: ``exec(txt,
globals, ns)``, CPython 3.10.13 dataclasses.py l.432, 3.11.7 l.433, 3.12.1 l.473; 3.13.0
compiles a class's methods in one ``exec``, l.498). Starting ``ftmem estimate`` creates
some 110 dataclasses (ftmem's and its dependencies'), about 590 such functions and
213,000 characters of source: compiling them was 15-20 % of the command's CPU time
(issue 19, benchmarks/bench_cli.py). Their code objects depend on nothing but that text
and the interpreter, so the CLI keeps them in one file next to ftmem's bytecode, keyed by
the text itself, and runs the stored code where the text is one it has compiled before:
what ``exec`` of the text would have run, without compiling it again.

While :func:`cached_dataclass_code` is active the ``dataclasses`` module's ``exec`` is
one that looks the text up first (a module global shadows the builtin for that module
only); on leaving, the builtin is back and what was compiled anew is added to the file
(not written under ``PYTHONDONTWRITEBYTECODE``, nor where the folder is read-only).
Only the CLI does this: a program importing ftmem compiles its dataclasses as usual.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import CodeType
from typing import Any

from ftmem.marshal_file import read_mapping, store_path, write_mapping

MAX_ENTRIES = 4096
"""Most functions the file keeps: ``ftmem estimate`` compiles about 590; past this the
file is rewritten with only what the last run used (a bound on its size, ~3 MB)."""

_STORED: dict[str, CodeType] | None = None  # the file's code, read once per process
_ADDED: dict[str, CodeType] = {}  # compiled in this process, not yet in the file


def cache_file() -> Path:
    """Where the code is kept: ftmem's ``__pycache__`` (or ``sys.pycache_prefix``), named
    for this interpreter and optimisation level as a module's bytecode would be."""
    return store_path("dataclass_methods")


def _read(path: Path) -> dict[str, CodeType]:
    """The stored code; empty when there is none, or it is unreadable or not this
    interpreter's (ftmem.marshal_file)."""
    stored = read_mapping(path)
    return {k: v for k, v in stored.items() if isinstance(k, str) and isinstance(v, CodeType)}


def _stored() -> dict[str, CodeType]:
    global _STORED
    if _STORED is None:
        _STORED = _read(cache_file())
    return _STORED


def _exec(source: Any, globals: Any = None, locals: Any = None, /) -> None:
    """``exec`` for the dataclasses module: source text compiled before runs its stored
    code. ``compile(..., dont_inherit=True)`` compiles as dataclasses' own ``exec`` of the
    text does (that module has no ``__future__`` imports to pass on), under the name
    ``"<string>"`` that ``exec`` gives a string."""
    if isinstance(source, str):
        code = _stored().get(source) or _ADDED.get(source)
        if code is None:
            code = compile(source, "<string>", "exec", dont_inherit=True)
            _ADDED[source] = code
        source = code
    exec(source, globals, locals)


def _write(path: Path) -> None:
    """Add what this process compiled to the file (ftmem.marshal_file: written whole,
    then renamed over it); a place that cannot be written compiles again next time."""
    stored = _stored()
    merged = {**stored, **_ADDED}
    if len(merged) > MAX_ENTRIES:
        merged = dict(_ADDED)
    if write_mapping(path, merged):
        stored.update(_ADDED)
        _ADDED.clear()


@contextmanager
def cached_dataclass_code() -> Iterator[None]:
    """Dataclasses created in the ``with`` block run stored code for the methods compiled
    by an earlier run; what is compiled anew is stored on leaving. Nested use is a no-op."""
    if "exec" in vars(dataclasses):  # already active (or set by someone else): leave it
        yield
        return
    dataclasses.exec = _exec  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del dataclasses.exec  # type: ignore[attr-defined]
        if _ADDED and not sys.dont_write_bytecode:
            _write(cache_file())
