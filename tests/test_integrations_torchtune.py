"""check() (ftmem.integrations.torchtune) on torchtune's shipped configs, held in memory
as a recipe holds its cfg (a dict, or OmegaConf's DictConfig with a command-line
override), without torchtune installed: the same settings and prediction as
`ftmem estimate --from` the file; a run that will not fit is stopped (issue 20)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ftmem.cli import main
from ftmem.integrations.report import RunWillNotFitError

pytest.importorskip("torch")  # the hook runs inside a recipe, which has torch

from ftmem.integrations.torchtune import check

SHIPPED = Path(__file__).resolve().parent / "fixtures" / "frameworks" / "torchtune"
CONFIGS = {
    "llama3_1_8B_lora_single_device.yaml": "lora_finetune_single_device",
    "llama3_1_8B_full_single_device.yaml": "full_finetune_single_device",
    "llama3_1_8B_qlora_single_device.yaml": "lora_finetune_single_device",
}


def estimate_from(capsys: pytest.CaptureFixture, path: Path, *flags: str) -> dict:
    """`ftmem estimate --from PATH --format json`: the CLI's own reading of the file."""
    with pytest.raises(SystemExit) as done:
        main(["estimate", "--from", str(path), "--gpu", "h100", "--format", "json", *flags])
    out, _ = capsys.readouterr()
    assert done.value.code == 0
    return json.loads(out)


@pytest.mark.parametrize(("name", "recipe"), CONFIGS.items())
def test_a_cfg_in_memory_is_estimated_as_the_file_is(
    capsys: pytest.CaptureFixture, name: str, recipe: str
) -> None:
    path = SHIPPED / name
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    done = check(data, recipe=recipe, gpu="h100", quiet=True)
    assert done.estimate is not None and done.live is not None
    cli = estimate_from(capsys, path)
    assert done.estimate.memory.peak_allocated_bytes == cli["memory"]["peak_allocated_bytes"]
    assert done.estimate.run.method == cli["run"]["method"]
    assert done.live.settings["framework"] == "torchtune"
    assert not any("live model" in n for n in done.estimate.notes)  # no live model here


def test_a_dictconfig_with_an_override(capsys: pytest.CaptureFixture) -> None:
    omegaconf = pytest.importorskip("omegaconf")
    path = SHIPPED / "llama3_1_8B_lora_single_device.yaml"
    cfg = omegaconf.OmegaConf.load(path)
    cfg.batch_size = 8  # `tune run ... batch_size=8`
    done = check(cfg, recipe="lora_finetune_single_device", gpu="h100")
    assert done.live is not None and done.live.settings["batch_size"] == 8
    printed = capsys.readouterr().out
    assert printed.startswith("ftmem: predicted peak") and "batch 8 × 512 tokens" in printed
    cli = estimate_from(capsys, path, "--batch-size", "8")
    assert done.estimate is not None
    assert done.estimate.memory.peak_allocated_bytes == cli["memory"]["peak_allocated_bytes"]
    assert done.record()["source"] == "torchtune"


def test_a_run_that_will_not_fit_is_stopped() -> None:
    data = yaml.safe_load((SHIPPED / "llama3_1_8B_full_single_device.yaml").read_text())
    # full finetuning of an 8B model: its bf16 weights alone are over 14 GiB. (On a 24 GB
    # 4090 it runs, as torchtune's README says: its PagedAdamW8bit states page to host RAM,
    # ftmem.gpu.managed; a 16 GB card cannot hold the rest.)
    with pytest.raises(RunWillNotFitError, match=r"more than the NVIDIA Tesla T4's"):
        check(data, gpu="t4", fail_if_not_fits=True, quiet=True)


def test_paged_states_that_page_to_host_do_not_stop_the_run() -> None:
    """torchtune ships the 8B full config for one 24 GB card (README: 18.9 GiB on a
    4090): the paged 8-bit states that do not fit beside the rest go to host RAM."""
    data = yaml.safe_load((SHIPPED / "llama3_1_8B_full_single_device.yaml").read_text())
    done = check(data, gpu="rtx4090", fail_if_not_fits=True, quiet=True)
    assert done.estimate is not None and done.estimate.fits
    assert done.estimate.memory.beyond_allocated.paged_to_host > 0
    assert any("slower" in n for n in done.estimate.notes)


def test_a_config_it_cannot_read_does_not_stop_the_run(capsys: pytest.CaptureFixture) -> None:
    data = yaml.safe_load((SHIPPED / "eleuther_evaluation.yaml").read_text())
    done = check(data, recipe="eleuther_eval", gpu="h100", fail_if_not_fits=True)
    assert done.estimate is None and "not a training one" in (done.problem or "")
    assert capsys.readouterr().out.startswith("ftmem: no estimate for this run:")
