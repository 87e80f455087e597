"""The README's test command also enforces lint, format and types, so CI fails on either.

ruff and mypy are in the ``test`` extra: a missing tool is a broken install, not a skip.
Each check runs the tool as a developer would and fails with its own report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINTED = ["src", "tests", "scripts", "benchmarks"]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    # the tools installed beside this interpreter (the test extra), run from the root so
    # that pyproject.toml's settings apply
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _assert_clean(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def test_ruff_check() -> None:
    _assert_clean(_run("ruff", "check", *LINTED))


def test_ruff_format() -> None:
    _assert_clean(_run("ruff", "format", "--check", *LINTED))


@pytest.mark.slow
def test_mypy() -> None:
    # files, plugins and per-module settings come from [tool.mypy] in pyproject.toml
    _assert_clean(_run("mypy"))
