"""Probes run under a real transformers 4.x release: its unpacked site named by
FTMEM_TRANSFORMERS4_SITES (``version=path;version=path``) on PYTHONPATH, in a process of
its own. A test skips when its release is absent (CI has no network to fetch one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_probe(version: str, probe: Path, *args: str, timeout: int = 300) -> dict:
    """The probe's last stdout line as JSON, run under ``version``'s site; its own
    ``version`` field must name that release."""
    spec = os.environ.get("FTMEM_TRANSFORMERS4_SITES", "")
    sites = dict(item.split("=", 1) for item in spec.split(";") if "=" in item)
    site = sites.get(version)
    if not site:
        pytest.skip(f"no unpacked transformers {version} (FTMEM_TRANSFORMERS4_SITES)")
    done = subprocess.run(
        [sys.executable, str(probe), *args],
        env=os.environ | {"PYTHONPATH": site},
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    )
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["version"] == version
    return got
