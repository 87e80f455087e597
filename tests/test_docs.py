"""Docs that cannot drift: every embedded CLI block equals what the CLI prints now."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("update_docs", ROOT / "scripts" / "update_docs.py")
update_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(update_docs)


@pytest.mark.parametrize("path", update_docs.DOC_FILES, ids=lambda p: p.name)
def test_embedded_output_is_current(path):
    text = path.read_text(encoding="utf-8")
    assert text == update_docs.regenerate(text), (
        f"{path.name} is stale: run `python scripts/update_docs.py`"
    )


def test_readme_has_blocks():
    assert len(update_docs.BLOCK.findall((ROOT / "README.md").read_text())) >= 2


def test_readme_counts_the_accuracy_cases():
    from tests.accuracy.cases import CASES, KNOWN_GAPS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"{len(CASES) - len(KNOWN_GAPS)} tiny configurations" in readme
