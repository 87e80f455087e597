"""docs/api.md runs as a doctest: its examples are what the API returns."""

from __future__ import annotations

import doctest
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_api_doc_examples(monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples use paths relative to the repository
    monkeypatch.delenv("FTMEM_PRESETS", raising=False)
    result = doctest.testfile(
        str(ROOT / "docs" / "api.md"),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.attempted >= 15
    assert result.failed == 0, f"{result.failed} example(s) in docs/api.md differ"
    assert os.getcwd() == str(ROOT)
