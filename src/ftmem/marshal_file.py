"""A mapping kept between runs in one file next to ftmem's bytecode, in the bytecode's own
format: the CLI's start-up stores (:mod:`ftmem.dataclass_code`, :mod:`ftmem.preset_values`)
are written and read here.

The file is the interpreter's bytecode magic number followed by the ``marshal`` dump of
a dict: marshal's format may change with each Python version, and the magic number with
it, so a file written by another interpreter reads as empty (as a stale ``.pyc`` is
recompiled). It is written whole to a temporary name, then renamed over the old one,
so that a concurrent run reads the old file or the new one.
"""

from __future__ import annotations

import marshal
import os
from contextlib import suppress
from importlib.util import MAGIC_NUMBER, cache_from_source
from pathlib import Path
from typing import Any


def store_path(name: str) -> Path:
    """Where the store ``name`` is kept: ftmem's ``__pycache__`` (or
    ``sys.pycache_prefix``), named for this interpreter and optimisation level as the
    bytecode of a module ``ftmem/NAME.py`` would be, with the suffix ``.marshal``."""
    pyc = cache_from_source(str(Path(__file__).with_name(f"{name}.py")))
    return Path(pyc).with_suffix(".marshal")


def read_mapping(path: Path) -> dict[Any, Any]:
    """The stored dict; empty when there is none, or it is unreadable, not a dict or not
    this interpreter's."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    if not data.startswith(MAGIC_NUMBER):
        return {}
    try:
        stored = marshal.loads(memoryview(data)[len(MAGIC_NUMBER) :])  # (no copy)
    except (EOFError, ValueError, TypeError):
        return {}
    return stored if isinstance(stored, dict) else {}


def write_mapping(path: Path, mapping: dict[Any, Any]) -> bool:
    """Store ``mapping`` (of values marshal can write) at ``path``; False where the place
    cannot be written (a read-only install), leaving no temporary file behind."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(MAGIC_NUMBER + marshal.dumps(mapping))
        os.replace(tmp, path)
    except OSError:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
    return True
