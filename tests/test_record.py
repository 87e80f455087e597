"""`ftmem record` and the integrations' record(): one JSON line in one format
(docs/schema/record.schema.json), the prediction as ftmem.estimate makes it, the
measured numbers as given, the installed versions; bad input is one sentence, exit 2,
nothing on stdout (issue 20)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ftmem
import ftmem.cli.record  # registers `ftmem record` (until cli/__init__ lists it)
from ftmem.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "schema" / "record.schema.json").read_text())
GIB = 2**30
ARGS = ("llama2-7b", "--method", "lora", "--seq-len", "1024", "--gpu", "a100-80gb")


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(["record", *args])
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def validate(record: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(record, SCHEMA)


@pytest.fixture
def no_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))


def test_one_json_line_with_the_prediction_and_what_was_measured(
    capsys: pytest.CaptureFixture, no_nvidia_smi: None
) -> None:
    code, out, err = run(
        capsys, *ARGS, "--measured-allocated", "14.5GiB", "--measured-device", "16GiB",
        "--step", "5",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.endswith("\n") and out.count("\n") == 1
    record = json.loads(out)
    validate(record)
    assert (record["format"], record["source"], record["model"]) == (1, "cli", "llama2-7b")
    # the prediction is ftmem.estimate's with the same settings
    est = ftmem.estimate("llama2-7b", method="lora", seq_len=1024, gpu="a100-80gb")
    p = record["predicted"]
    assert p["peak_allocated_bytes"] == est.memory.peak_allocated_bytes
    assert p["device_bytes"] == est.memory.device_bytes
    assert (p["batch_size"], p["seq_len"], p["fits"]) == (1, 1024, True)
    # the settings given, not every option's default
    assert record["settings"] == {"method": "lora", "seq_len": 1024, "gpu": "a100-80gb"}
    m = record["measured"]
    assert m["peak_allocated_bytes"] == 29 * GIB // 2  # 14.5 GiB
    assert (m["device_bytes"], m["peak_reserved_bytes"]) == (16 * GIB, None)
    assert (m["step"], m["tracker"], m["seq_len"]) == (5, "user", 1024)
    want = 100 * (est.memory.peak_allocated_bytes - 29 * GIB // 2) / (29 * GIB // 2)
    assert record["error_pct"]["peak_allocated"] == pytest.approx(want, abs=0.005)
    assert set(record["error_pct"]) == {"peak_allocated", "device"}
    assert record["versions"]["ftmem"] == ftmem.__version__
    assert record["device"] == {"kind": None, "name": None, "memory_bytes": None, "driver": None}


def test_settings_read_with_from_are_recorded(
    capsys: pytest.CaptureFixture, no_nvidia_smi: None
) -> None:
    config = ROOT / "tests" / "fixtures" / "frameworks" / "torchtune"
    config = config / "llama3_1_8B_lora_single_device.yaml"
    code, out, _ = run(
        capsys, "--from", str(config), "--batch-size", "4", "--measured-allocated", "20GiB"
    )
    assert code == 0
    record = json.loads(out)
    s = record["settings"]
    # the file's (batch_size: 2, gradient_accumulation_steps: 8, lora_rank: 8) under the flag
    assert (s["batch_size"], s["grad_accum"], s["lora_r"]) == (4, 8, 8)
    assert (s["framework"], s["method"]) == ("torchtune", "lora")
    assert record["model"] == "llama3.1-8b" and record["predicted"]["batch_size"] == 4


def test_versions_are_the_installed_ones(capsys: pytest.CaptureFixture, no_nvidia_smi: None):
    torch = pytest.importorskip("torch")
    _, out, _ = run(capsys, *ARGS, "--measured-reserved", "20GiB")
    versions = json.loads(out)["versions"]
    assert versions["torch"] == torch.__version__
    for dist in ("transformers", "peft"):
        module = pytest.importorskip(dist)
        assert versions[dist] == module.__version__


def test_gpu_and_driver_given_or_read_from_nvidia_smi(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # a stand-in for nvidia-smi: what `--query-gpu=name,driver_version,memory.total
    # --format=csv,noheader,nounits` prints on an H100 SXM (81559 MiB)
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 550.54.15, 81559'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    _, out, _ = run(capsys, *ARGS, "--measured-allocated", "14GiB")
    device = json.loads(out)["device"]
    assert device == {
        "kind": "cuda",
        "name": "NVIDIA H100 80GB HBM3",
        "memory_bytes": 81559 * 2**20,
        "driver": "550.54.15",
    }
    _, out, _ = run(
        capsys, *ARGS, "--measured-allocated", "14GiB", "--gpu-name", "A100", "--driver", "535.1"
    )
    device = json.loads(out)["device"]
    assert (device["name"], device["driver"], device["memory_bytes"]) == ("A100", "535.1", None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (ARGS, "give what was measured: --measured-allocated"),
        ((*ARGS, "--measured-allocated", "14"), "--measured-allocated: '14' has no unit"),
        ((*ARGS, "--measured-device", "lots"), "--measured-device: Cannot read 'lots'"),
        ((*ARGS, "--measured-allocated", "1GiB", "--step", "0"), "--step counts optimizer"),
        (("no-such-model", "--measured-allocated", "1GiB"), "no-such-model"),
        (("llama2-7b", "--measured-allocated", "1GiB", "--seq-len", "0"), "seq"),
    ],
)
def test_bad_input_is_one_sentence_exit_2(
    capsys: pytest.CaptureFixture, args: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, *args)
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("Error: ") and message in lines[0]


def test_the_command_imports_no_torch() -> None:
    code = (
        "import sys\nimport ftmem.cli.record\nfrom ftmem.cli import main\n"
        "try:\n    main(['record', 'llama2-7b', '--measured-allocated', '14GiB'])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stderr.strip() == "False", done.stderr
    json.loads(done.stdout)


# -- the integrations' record() --------------------------------------------------------------


def test_the_hf_callbacks_record_has_the_same_format(
    capsys: pytest.CaptureFixture, tmp_path: Path, no_nvidia_smi: None
) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from .test_integrations_hf import FtmemCallback, arguments, tiny_llama, train

    callback = FtmemCallback(report_after=1, quiet=True)
    train(tiny_llama(), arguments(tmp_path, max_steps=1), callback)
    record = callback.record()
    validate(record)
    assert record["source"] == "hf-trainer" and record["measured"]["tracker"] == "dispatch"
    assert record["device"]["kind"] == "cpu"
    capsys.readouterr()  # what the training printed (deepspeed's accelerator line...)
    _, out, _ = run(capsys, *ARGS, "--measured-allocated", "14GiB")
    assert set(json.loads(out)) == set(record)
    assert set(json.loads(out)["measured"]) == set(record["measured"])


def test_the_lightning_callbacks_record_has_the_same_format(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("peft")
    from .test_integrations_lightning import FtmemCallback, LitLlama, fit, tiny_llama

    callback = FtmemCallback(report_after=1, quiet=True)
    fit(LitLlama(tiny_llama()), callback, tmp_path, max_steps=1)
    record = callback.record()
    validate(record)
    assert record["source"] == "lightning" and record["measured"]["step"] == 1
    assert record["read_from"]["grad_accum"] == "Trainer.accumulate_grad_batches"


def test_a_record_without_an_estimate_is_valid_too() -> None:
    """A callback that could not estimate the run still gives a record (for the bug
    report): no prediction, its reason as the note."""
    pytest.importorskip("transformers")
    from ftmem.integrations.hf import FtmemCallback

    callback = FtmemCallback(quiet=True)
    callback.problem = "Linear has no transformers config."
    record = callback.record()
    validate(record)
    assert record["predicted"] is None and record["notes"] == [callback.problem]


def test_the_docs_example_is_what_the_command_prints(
    capsys: pytest.CaptureFixture, no_nvidia_smi: None
) -> None:
    """docs/integrations.md's example record: valid, and every key but the architecture
    (cut short there) and the versions (the environment's) as the command prints it."""
    import re
    import shlex

    doc = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
    block = re.search(
        r"<!-- ftmem-record: (?P<args>.+?) -->\n```json\n(?P<json>.*?)```\n", doc, re.S
    )
    assert block is not None
    shown = json.loads(block["json"])
    validate(shown)
    code, out, _ = run(capsys, *shlex.split(block["args"]))
    assert code == 0
    printed = json.loads(out)
    assert shown["architecture"]["name"] == printed["architecture"]["name"]
    for key in set(printed) - {"architecture", "versions"}:
        assert shown[key] == printed[key], (
            f"docs/integrations.md's record example: {key} is stale; paste the output of "
            "`ftmem record ARGS` (json.dumps(indent=2), the architecture cut to its name)"
        )
