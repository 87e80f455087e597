"""The CLI's pause of Python's cyclic garbage collector while it starts.

Starting ``ftmem estimate`` creates some 46,000 tracked objects that live as long as
the process (ftmem's ~120 dataclasses' generated methods, rich's, yaml's and ftmem's
modules; 75,000 while its settings were pydantic models) and next to no garbage: 1,500
unreachable objects after a whole ``ftmem plan``. With CPython's default thresholds
(``gc.get_threshold()``: 700, 10, 10) the collector ran about a hundred passes over them
during start-up, some fifth of the CPU time of the command
(issue 19, benchmarks/bench_cli.py). Paused, then frozen (``gc.freeze``: moved where no
later pass looks), they cost nothing. Only the CLI does this: a program importing
ftmem keeps its collector as it is.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic collector off for the ``with`` block; then what the block left alive is
    frozen and the collector is back as it was (still off when it had been turned off)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
