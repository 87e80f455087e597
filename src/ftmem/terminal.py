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

DEFAULT_WIDTH = 80
MIN_WIDTH, MAX_WIDTH = 20, 1000
"""Terminal widths outside these (``COLUMNS=0``, a pty that reports no size) are taken
for :data:`DEFAULT_WIDTH`: at zero columns rich prints nothing at all."""


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


def console() -> Any:
    """A rich console that shows user text inert: no markup (a name with ``[/b]`` in it
    would raise), no emoji codes, control characters escaped; its width bounded."""
    from rich.console import Console

    from ftmem.display import UNSAFE

    class _Inert:
        """A renderable whose text segments are sanitised as they come out (rich
        ``Text`` objects built elsewhere bypass ``render_str``)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __rich_console__(self, con: Any, options: Any) -> Iterator[Any]:
            from rich.segment import Segment

            for seg in con.render(self.inner, options):
                if seg.control or not UNSAFE.search(seg.text):
                    yield seg
                else:
                    yield Segment(printable(seg.text), seg.style)

    class _SafeConsole(Console):
        def render_str(self, text: str, **kwargs: Any) -> Any:
            # before layout, so the escaped text is measured as it will be shown
            return super().render_str(printable(text), **kwargs)

        def print(self, *objects: Any, **kwargs: Any) -> None:
            wrapped = [o if isinstance(o, str) else _Inert(o) for o in objects]
            super().print(*wrapped, **kwargs)

        def on_broken_pipe(self) -> None:
            # rich would exit 1, which is ftmem's "does not fit": let the CLI decide
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    con = _SafeConsole(soft_wrap=False, markup=False, emoji=False)
    if not MIN_WIDTH <= con.width <= MAX_WIDTH:
        con.width = DEFAULT_WIDTH
    return con


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
    # isdigit() holds for "²" (int() refuses it) and for 5,000 digits (past int()'s limit)
    number = columns.isascii() and columns.isdigit() and len(columns) <= 6
    if columns and (not number or not MIN_WIDTH <= int(columns) <= MAX_WIDTH):
        os.environ["COLUMNS"] = str(DEFAULT_WIDTH)  # also read by the --help renderer
    # transformers logs its own advice (`measure`: "loss_type=None ... unrecognized") on
    # stderr at import-time verbosity; the user's TRANSFORMERS_VERBOSITY wins
    quiet_hf = "TRANSFORMERS_VERBOSITY" not in os.environ
    if quiet_hf:
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    try:
        with warnings.catch_warnings():
            if not sys.warnoptions:  # the user's -W flags win
                warnings.simplefilter("ignore")  # a library's FutureWarning is not for users
            yield
    finally:
        if quiet_hf:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
