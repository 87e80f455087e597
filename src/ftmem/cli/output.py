"""Where a command's output goes besides stdout: files it writes (never over its input)
and the rich console of :mod:`ftmem.present.console`, imported when a table is printed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ftmem.errors import FtmemError


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (an output over the input it was read from)."""
    import os

    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one does not exist yet: not the same
        return False


def write_file(path: str, text: str, inputs: Sequence[str | None] = ()) -> None:
    """Write an output file; one of ``inputs`` (the files the run read) is not replaced."""
    read = next((i for i in inputs if i is not None and same_file(path, i)), None)
    if read is not None:
        raise FtmemError(f"{path} is the file the run was read from; write the output elsewhere.")
    if not path.strip():
        raise FtmemError("an output file name is empty; give a path.")
    if "\0" in path:  # possible through main([...]), never from a shell
        raise FtmemError(f"cannot write {path!r}: a path cannot hold a NUL byte.")
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise FtmemError(f"cannot write {path}: {exc.strerror}.") from None


def console() -> Any:
    """The console tables are printed on (rich is imported here, not at start-up)."""
    from ftmem.present.console import console as make_console

    return make_console()
