"""Bad values of issue 16's options (the GPU model, frameworks, library versions, batch
lengths, the run's window): one sentence on stderr, exit 2, nothing on stdout."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ftmem.cli import app

runner = CliRunner()

CASES = [
    (["--torch-version", "x"], "--torch-version: takes a release as pip spells it"),
    (["--bnb-version", "1"], "--bnb-version: takes a release as pip spells it"),
    (["--torchao-version", "0.1.2.3.4;"], "--torchao-version: takes a release"),
    (["--framework", "foo"], "--framework must be hf, axolotl"),
    (["--lengths", "bogus"], "--lengths takes fixed, padded"),
    (["--alloc-conf", "junk"], "--alloc-conf: Allocator setting 'junk' needs ':'"),
    (["--peak-of", "x"], "--peak-of must be step or run"),
]


@pytest.mark.parametrize(
    ("args", "message"), CASES, ids=lambda a: " ".join(a) if isinstance(a, list) else ""
)
def test_one_sentence_exit_2_nothing_on_stdout(args, message):
    res = runner.invoke(app, ["estimate", "llama2-7b", *args])
    assert res.exit_code == 2
    assert res.stdout == ""
    assert message in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
