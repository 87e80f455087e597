"""The CLI's standard streams: everything ftmem prints goes through here, sanitised
(:mod:`ftmem.display`), readable on any terminal, and a failure to print becomes one
sentence instead of a traceback.

Exit codes beyond ftmem's own (0 fits, 1 does not fit, 2 bad input): 130 when
interrupted (Ctrl-C), 141 (128 + SIGPIPE, what a shell reports for ``yes | head``) when
the reader of a pipe stops reading, silently, as Unix tools do. Any other failure to
write the output (``> /dev/full``, ``>&-``) is a bad environment: one sentence, exit 2.
"""

from __future__ import annotations

import errno
import io
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ftmem.display import one_line, printable, register_fallback
from ftmem.present.console import DEFAULT_WIDTH, MAX_WIDTH, MIN_WIDTH


def echo(text: str, nl: bool = True, err: bool = False) -> None:
    """Print ``text`` on stdout (stderr with ``err``), control characters shown as escapes."""
    out = sys.stderr if err else sys.stdout
    out.write(printable(text) + ("\n" if nl else ""))
    out.flush()


def error(message: str) -> None:
    """``Error: message`` as one bounded line on stderr."""
    say(f"Error: {message}")


def say(line: str) -> None:
    """One bounded line on stderr; a stderr that cannot be written is let be."""
    err = sys.stderr
    if err is None:
        return
    try:
        err.write(one_line(line) + "\n")
        err.flush()
    except (OSError, ValueError):
        pass


class _ClosedOutput(io.RawIOBase):
    """Stands for a standard output that was closed (``>&-``; Python then sets
    ``sys.stdout`` to None and every print vanishes): writing fails as writing to a
    closed descriptor does, until the failure has been reported."""

    reported = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.reported:
            return len(data)
        raise OSError(errno.EBADF, "standard output is closed")


def discard_stdout() -> None:
    """After a failed write: what is still buffered, and the interpreter's final flush,
    go nowhere (else Python reports the same failure again at exit, as status 120)."""
    out = sys.stdout
    raw = getattr(getattr(out, "buffer", None), "raw", None)
    if isinstance(raw, _ClosedOutput):
        raw.reported = True
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _readable(number: str) -> bool:
    """An environment value int() reads as a terminal size: isdigit() also holds for "²"
    (int() refuses it) and for 5,000 digits (past int()'s limit)."""
    return number.isascii() and number.isdigit() and len(number) <= 6


@contextmanager
def cli_streams() -> Iterator[None]:
    """The streams as a CLI run needs them, for the duration of the run."""
    handler = register_fallback()
    if sys.stdout is None:
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(_ClosedOutput()), encoding="utf-8")
    for stream in (sys.stdout, sys.stderr):
        # a terminal that cannot show "·" or "→" (PYTHONIOENCODING=ascii) gets "-" and
        # "->" instead of a UnicodeEncodeError; rich draws its boxes in ASCII there
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and stream.errors in ("strict", "backslashreplace"):
            reconfigure(errors=handler)
    columns = os.environ.get("COLUMNS", "")
    if columns and (not _readable(columns) or not MIN_WIDTH <= int(columns) <= MAX_WIDTH):
        os.environ["COLUMNS"] = str(DEFAULT_WIDTH)  # also read by the --help renderer
    if not _readable(os.environ.get("LINES", "0")):
        del os.environ["LINES"]  # rich's Console reads it with int() after isdigit()
    with warnings.catch_warnings():
        if not sys.warnoptions:  # the user's -W flags win
            warnings.simplefilter("ignore")  # a library's FutureWarning is not for users
        yield


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """The logs that transformers, torchao and torch write on stderr when imported, kept
    off it for the duration of the run: for the commands that may import them (the typer
    app's; the fast path of ftmem.cli.fast imports none of them, nor ``logging``:
    tests/test_startup.py)."""
    import logging  # ~2.5 % of `ftmem estimate`'s instructions: not for the fast path

    # transformers logs its own advice (`measure`: "loss_type=None ... unrecognized") on
    # stderr at import-time verbosity; the user's TRANSFORMERS_VERBOSITY wins
    quiet_hf = "TRANSFORMERS_VERBOSITY" not in os.environ
    if quiet_hf:
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    # transformers imports torchao where it is installed (quantizers/quantizer_torchao):
    # its loader logs a warning for each CUDA kernel library a build cannot load
    # (torchao 0.18.0 torchao/__init__.py l.90-96) and its register_constant calls make
    # torch log a deprecation (torch/utils/_pytree.py l.630): nothing `measure` uses
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(max(log.level, logging.ERROR))
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
        if quiet_hf:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
