"""`ftmem check` gates a CI job: exit codes, JSON, JUnit XML and GitHub annotations."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from typer.testing import CliRunner

from ftmem import estimate
from ftmem.cli import app, main

SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "budgets.yaml"
runner = CliRunner()

FAILING = textwrap.dedent(
    """\
    runs:
      - name: fits
        model: llama3-8b
        method: qlora
        gpu: rtx4090

      - name: too-big
        model: llama2-13b
        method: full
        gpu: rtx4090

      - name: over-its-own-cap
        model: llama3-8b
        method: qlora
        gpu: h100-80gb
        max_total: 4GiB
    """
)


def run(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env={"COLUMNS": "160", "NO_COLOR": "1", **(env or {})})


def test_sample_budgets_pass(tmp_path):
    out_json, out_xml = tmp_path / "r.json", tmp_path / "r.xml"
    res = run("check", str(SAMPLE), "--json", str(out_json), "--junit", str(out_xml))
    assert res.exit_code == 0, res.output
    assert "3 of 3 runs within budget" in res.output
    data = json.loads(out_json.read_text())
    assert data["passed"] is True
    # each run's total is what `ftmem estimate` says for the same settings
    qlora = data["runs"][0]
    est = estimate("llama3-8b", method="qlora", seq_len=2048, gpu="rtx4090", precision="bf16",
                   grad_ckpt=True)  # fmt: skip
    assert qlora["total_bytes"] == est.memory.total_bytes
    suite = ET.parse(out_xml).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "3" and suite.get("failures") == "0"


def test_failing_budgets_exit_1_with_reports(tmp_path):
    path = tmp_path / "budgets.yaml"
    path.write_text(FAILING)
    out_xml = tmp_path / "junit.xml"
    res = run("check", str(path), "--junit", str(out_xml), env={"GITHUB_ACTIONS": "true"})
    assert res.exit_code == 1, res.output
    assert "1 of 3 runs within budget" in res.output
    # GitHub annotations point at each run's line
    errors = [line for line in res.output.splitlines() if line.startswith("::error ")]
    notices = [line for line in res.output.splitlines() if line.startswith("::notice ")]
    assert len(errors) == 2 and len(notices) == 1
    assert errors[0].startswith(
        f"::error file={path},line=7,title=ftmem budget::too-big: does not fit"
    )
    assert "line=12," in errors[1] and "over max_total 4.00 GiB" in errors[1]
    assert "line=2," in notices[0]
    # JUnit: one failure element per failing run
    suite = ET.parse(out_xml).getroot()
    assert suite.get("failures") == "2"
    failed = {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None}
    assert failed == {"too-big", "over-its-own-cap"}
    # JSON to stdout
    res = run("check", str(path), "--json", "-")
    data = json.loads(res.output)
    assert data["passed"] is False
    assert [r["passed"] for r in data["runs"]] == [True, False, False]


def test_no_annotations_outside_github(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(FAILING)
    res = run("check", str(path), env={"GITHUB_ACTIONS": ""})
    assert "::error" not in res.output


def test_min_headroom_percentage_is_of_the_gpu(tmp_path):
    est = estimate("llama3-8b", method="qlora", gpu="rtx4090")
    share = est.headroom_bytes / est.gpu["memory_bytes"] * 100
    path = tmp_path / "b.yaml"
    for pct, code in ((int(share), 0), (int(share) + 1, 1)):
        path.write_text(
            f"runs:\n  - name: x\n    model: llama3-8b\n    method: qlora\n    gpu: rtx4090\n"
            f"    min_headroom: {pct}%\n"
        )
        assert run("check", str(path)).exit_code == code


BAD_FILES = [
    ("runs: [\n", "line 2"),  # malformed YAML
    ("- just a list\n", "line 1: expected a mapping"),
    ("runs: []\n", "runs: List should have at least 1 item"),
    ("run:\n  - name: a\n", "line 1: run: unknown key"),
    ("runs:\n  - name: a\n    gpu: h100\n", "line 2: runs.0.model: Field required"),
    (
        "runs:\n  - name: a\n    model: llama3-8b\n    gpu: h100\n    seq_len: 0\n",
        "line 5: run 'a': --seq-len",
    ),
    ("runs:\n  - name: a\n    model: llama9-8b\n    gpu: h100\n", "line 3: run 'a': Unknown model"),
    (
        "runs:\n  - name: a\n    model: llama3-8b\n    gpu: h100\n    sequence: 4\n",
        "line 5: run 'a': Unknown setting 'sequence'",
    ),
    ("runs:\n  - name: a\n    model: llama3-8b\n", "line 2: run 'a': no budget"),
    (
        "runs:\n  - name: a\n    model: llama3-8b\n    gpu: h100\n  - name: a\n    model: gpt2\n    gpu: h100\n",
        "line 5: run name 'a' is used twice",
    ),
    (
        "runs:\n  - name: a\n    model: llama3-8b\n    gpu: h100\n    min_headroom: lots%\n",
        "not a percentage",
    ),
    (
        "runs:\n  - name: a\n    model: llama3-8b\n    gpu: h100\n    max_total: -3GiB\n",
        "line 5: run 'a'",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_bad_budget_files_name_the_line(tmp_path, capsys, text, expected):
    path = tmp_path / "budgets.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["check", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_budget_file(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "/no/such/budgets.yaml"])
    assert exit_info.value.code == 2
    assert "No budgets file at" in capsys.readouterr().err
