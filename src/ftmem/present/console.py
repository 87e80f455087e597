"""The rich console every table is printed with: user text in it stays inert text.

The import of rich is inside :func:`console`, so that a command printing JSON never pays
for it.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

from ftmem.display import is_inert, printable

DEFAULT_WIDTH = 80
MIN_WIDTH, MAX_WIDTH = 20, 1000
"""Terminal widths outside these (``COLUMNS=0``, a pty that reports no size) are taken
for :data:`DEFAULT_WIDTH`: at zero columns rich prints nothing at all."""


def console() -> Any:
    """A rich console that shows user text inert: no markup (a name with ``[/b]`` in it
    would raise), no emoji codes, control characters escaped; its width bounded."""
    from rich.console import Console

    class _Inert:
        """A renderable whose text segments are sanitised as they come out (rich
        ``Text`` objects built elsewhere bypass ``render_str``)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __rich_console__(self, con: Any, options: Any) -> Iterator[Any]:
            from rich.segment import Segment

            for seg in con.render(self.inner, options):
                if seg.control or is_inert(seg.text):
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
