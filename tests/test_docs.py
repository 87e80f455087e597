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


def test_readme_counts_the_other_suites():
    from tests.accuracy.cases import REAL_SIZE_CASES
    from tests.accuracy.test_sharded import SHARDED_CASES, WORLD
    from tests.test_bad_inputs import CORPUS

    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert f"a corpus of {len(CORPUS)} bad inputs" in readme
    presets = len({c.preset for c in REAL_SIZE_CASES})
    assert f"{len(REAL_SIZE_CASES)} real-size configurations of {presets} presets" in readme
    assert f"{len(SHARDED_CASES)} FSDP configurations on {WORLD} CPU ranks" in readme


def test_readme_counts_the_phase_gaps_of_the_accuracy_table():
    import re

    doc = (ROOT / "docs" / "accuracy.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Each phase's largest moment") : doc.index("## Known gaps")]
    cases = int(re.search(r"Of the (\d+) single-device cases", section)[1])
    gaps = sum(line.startswith("- `") for line in section.splitlines())
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert f"({gaps} of {3 * cases:,})" in readme
