"""The ``ftmem`` command line: parses options, calls the library, prints through
:mod:`ftmem.present`. Nothing else: no arithmetic, no rendering, no rich.

One module per command group; importing them registers their commands on
:data:`~ftmem.cli.root.app`, in the order ``ftmem --help`` lists them. Each command
imports what it computes with inside its body, so ``ftmem estimate`` loads no more than
an estimate needs (tests/test_startup.py).
"""

from __future__ import annotations

from importlib import import_module

from ftmem.paused_gc import paused_gc

# importing a group registers its commands; this order is their order in `ftmem --help`
COMMAND_GROUPS = (
    "estimate",
    "search",
    "explain",
    "merge",
    "serve",
    "budgets",
    "measure",
    "record",
    "listings",
)
with paused_gc():  # typer and the settings' models load here: nothing to collect
    from ftmem.cli.root import app, main

    for _group in COMMAND_GROUPS:
        import_module(f"ftmem.cli.{_group}")

__all__ = ["COMMAND_GROUPS", "app", "main"]
