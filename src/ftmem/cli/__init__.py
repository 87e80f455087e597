"""The ``ftmem`` command line: parses options, calls the library, prints through
:mod:`ftmem.present`. Nothing else: no arithmetic, no rendering, no rich.

One module per command group; importing :mod:`ftmem.cli.root` registers their commands
on its typer app, in the order ``ftmem --help`` lists them. Each command imports what it
computes with inside its body, so ``ftmem estimate`` loads no more than an estimate needs
(tests/test_startup.py). The common ``ftmem estimate`` calls do not load typer at all
(:mod:`ftmem.cli.fast`): :func:`main` hands them to that path and everything else to the
app, which is imported here only when asked for (``ftmem.cli.app``).
"""

from __future__ import annotations

import sys
from typing import Any

from ftmem.dataclass_code import cached_dataclass_code
from ftmem.paused_gc import paused_gc

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point (ftmem.cli.root.main for what it does): a plain ``ftmem estimate`` on
    the fast path, anything else through the typer app."""
    args = sys.argv[1:] if argv is None else argv
    request = None
    # the modules load here: nothing to collect, dataclasses compiled before
    with paused_gc(), cached_dataclass_code():
        if args[:1] == ["estimate"]:
            from ftmem.cli.fast import parse_estimate

            request = parse_estimate(args)
        if request is None:
            from ftmem.cli.root import main as run_app
    if request is not None:
        from ftmem.cli.fast import run_estimate

        sys.exit(run_estimate(request))
    run_app(argv)


def __getattr__(name: str) -> Any:
    """``ftmem.cli.app``, ``ftmem.cli.COMMAND_GROUPS``: the typer app, loaded when asked."""
    if name not in ("app", "COMMAND_GROUPS"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with paused_gc(), cached_dataclass_code():  # typer, the settings' models, every group
        from ftmem.cli import root
    return getattr(root, name)
