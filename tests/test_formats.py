"""Output formats users expect: JSON (with its published schema), YAML, CSV, Markdown,
--quiet, NO_COLOR."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ftmem import estimate
from ftmem.cli import app

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "schema" / "estimate.schema.json"
runner = CliRunner()


def run(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env={"COLUMNS": "120", **(env or {})})


CASES = [
    ("llama2-13b", "--method", "qlora", "--gpu", "rtx4090"),
    ("llama2-70b", "--gpus", "8", "--strategy", "zero3", "--offload-optimizer", "cpu"),
    ("llama3-8b", "--gpus", "4", "--pp", "2", "--strategy", "zero1", "--grad-accum", "4"),
    # LoRA on the experts: the run lists them in adapted_parameters
    ("olmoe-1b-7b", "--method", "lora", "--lora-targets", "all-linear"),
]


@pytest.mark.parametrize("args", CASES, ids=["qlora", "zero3-offload", "pipeline", "experts"])
def test_json_validates_against_the_published_schema(args):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    res = run("estimate", *args, "--format", "json")
    assert res.exit_code == 0, res.output
    jsonschema.validate(json.loads(res.output), schema)


def test_published_schema_is_current():
    from ftmem.present.estimate import estimate_schema

    assert json.loads(SCHEMA.read_text()) == estimate_schema(), (
        "docs/schema/estimate.schema.json is stale; run `python scripts/update_docs.py`"
    )
    assert json.loads(run("schema").output) == estimate_schema()


def test_schema_rejects_a_broken_estimate():
    jsonschema = pytest.importorskip("jsonschema")
    data = json.loads(run("estimate", "gpt2", "--format", "json").output)
    del data["memory"]["peak_allocated_bytes"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json.loads(SCHEMA.read_text()))


def test_yaml_is_the_same_data_as_json():
    as_json = json.loads(run("estimate", "llama2-7b", "--format", "json").output)
    as_yaml = yaml.safe_load(run("estimate", "llama2-7b", "--format", "yaml").output)
    assert as_yaml == as_json


def test_csv_row_has_the_estimate_in_bytes():
    res = run("estimate", "llama2-7b", "--method", "lora", "--gpu", "a10g", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(res.output)))
    assert len(rows) == 1
    row = rows[0]
    est = estimate("llama2-7b", method="lora", gpu="a10g")
    assert int(row["total_bytes"]) == est.memory.total_bytes
    assert int(row["weights_bytes"]) == est.memory.weights_bytes
    assert row["fits"] == str(est.fits) and row["gpu"] == "a10g"
    assert row["method"] == "lora" and row["strategy"] == "single"


def test_quiet_prints_nothing_and_keeps_the_exit_code():
    res = run("estimate", "llama2-70b", "--gpu", "t4", "--check", "--quiet")
    assert res.exit_code == 1 and res.output == ""
    res = run("estimate", "gpt2", "--gpu", "h100", "--check", "-q")
    assert res.exit_code == 0 and res.output == ""


def test_no_color_leaves_no_escape_codes():
    colour = run("estimate", "gpt2", "--gpu", "h100", env={"FORCE_COLOR": "1", "TERM": "xterm"})
    plain = run("estimate", "gpt2", "--gpu", "h100", env={"NO_COLOR": "1", "TERM": "xterm"})
    assert "\x1b[" not in plain.output
    assert plain.exit_code == colour.exit_code == 0


def test_completion_is_available():
    res = run("--help")
    assert "--install-completion" in res.output
