"""The CLI's contract checked on generated inputs of every surface (files, folders, the
environment): one in-process run, its exit code, stdout and stderr judged as
tests/test_option_space.py judges the option space."""

from __future__ import annotations

import os
from collections.abc import Mapping
from unittest import mock

from hypothesis import HealthCheck, settings

from tests.test_option_space import contract_broken, run_cli

# a run takes 10 to 100 ms in-process: 80 examples per surface keep the whole under a
# minute; FTMEM_SURFACE_SCALE=10 (say) searches longer
SCALE = float(os.environ.get("FTMEM_SURFACE_SCALE", "1"))
FEW = settings(
    max_examples=round(80 * SCALE), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def judged(
    argv: list[str], env: Mapping[str, str | None] | None = None
) -> tuple[str | None, int, str]:
    """One run with ``env`` set (None values unset): what breaks the contract (None when
    nothing does; a traceback is the worst break), the exit code and stdout."""
    changes = {k: v for k, v in (env or {}).items() if v is not None}
    with mock.patch.dict(os.environ, changes):
        for name, value in (env or {}).items():
            if value is None:
                os.environ.pop(name, None)
        try:
            code, out, err, seconds = run_cli(argv)
        except Exception as exc:
            return f"{' '.join(argv)}\n    raised {type(exc).__name__}: {exc}", -1, ""
    problem = contract_broken(argv, code, out, err, seconds)
    return (f"{' '.join(argv)}\n    {problem}" if problem else None), code, out


def broken(argv: list[str], env: Mapping[str, str | None] | None = None) -> str | None:
    """What breaks the contract in one run, or None."""
    return judged(argv, env)[0]
