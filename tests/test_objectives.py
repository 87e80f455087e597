"""Preference objectives (--objective dpo | ipo | simpo | orpo): what the estimate adds to
SFT's step, stated by hand from TRL's trainers (huggingface/trl @f2cd57710ae3:
trl/trainer/dpo_trainer.py _compute_loss, trl/trainer/utils.py selective_log_softmax).
Measured against a faithful loop in tests/accuracy/cases.py (_preference_objectives).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftmem.cli.root import app
from ftmem.errors import InvalidInputError
from ftmem.estimate import estimate_step
from ftmem.frameworks import read_framework_config
from ftmem.parallel import ParallelConfig
from ftmem.presets import model_presets
from ftmem.run import RunConfig
from ftmem.step import step_parts
from tests.conftest import tiny

LLAMA = tiny("llama")  # vocabulary 300, hidden 96, 2 blocks
B, S, V = 3, 50, 300


def _run(**settings) -> RunConfig:
    base = dict(batch_size=B, seq_len=S, device="cpu", precision="bf16")
    return RunConfig(**{**base, **settings})


def test_the_pair_forward_is_sft_at_twice_the_batch_with_the_pairs_loss():
    sft_pairs = step_parts(LLAMA, _run(method="lora", batch_size=2 * B)).activations
    dpo = step_parts(LLAMA, _run(method="lora", objective="dpo")).activations
    # SFT's loss keeps the fp32 log-softmax of every position, int64 labels, a normaliser
    sft_loss = 2 * B * S * V * 4 + 2 * B * S * 8 + 4
    # DPO's: each sequence's bf16 log-softmax over its s - 1 shifted positions, the bool
    # prompt mask, and gather's index (the token ids: the frozen embedding keeps none)
    shifted = 2 * B * (S - 1)
    dpo_loss = shifted * V * 2 + shifted + 2 * B * S * 8
    assert dpo == sft_pairs - sft_loss + dpo_loss


def test_the_reference_copy_is_a_second_set_of_weights_only_without_an_adapter():
    def weights(**settings) -> int:
        return estimate_step(LLAMA, _run(**settings)).memory.weights_bytes

    full = weights(method="full")
    assert weights(method="full", objective="dpo") == 2 * full
    assert weights(method="full", objective="ipo") == 2 * full
    assert weights(method="full", objective="dpo", precompute_ref=True) == full
    assert weights(method="full", objective="simpo") == full
    assert weights(method="full", objective="orpo") == full
    lora = weights(method="lora")
    assert weights(method="lora", objective="dpo") == lora  # the adapter disabled


def test_the_reference_forward_adds_to_the_forward_peak():
    with_ref = estimate_step(LLAMA, _run(method="lora", objective="dpo")).memory
    precomputed = estimate_step(
        LLAMA, _run(method="lora", objective="dpo", precompute_ref=True)
    ).memory
    assert with_ref.peak_phase == "forward"
    # beside every activation and the policy's bf16 logits: the reference's own logits
    # and one sequence's log-softmax, at least
    ref_logits = 2 * B * S * V * 2 + (S - 1) * V * 2
    assert with_ref.phases.forward - precomputed.phases.forward >= ref_logits


@pytest.mark.parametrize(
    ("settings", "note"),
    [
        (
            dict(method="full", objective="dpo"),
            "DPO: chosen and rejected concatenated (batch 6); reference: a frozen copy",
        ),
        (
            dict(method="lora", objective="ipo"),
            "IPO: chosen and rejected concatenated (batch 6); reference: the adapter disabled",
        ),
        (dict(method="lora", objective="dpo", precompute_ref=True), "reference: precomputed."),
        (dict(method="full", objective="orpo"), "ORPO: chosen and rejected concatenated"),
    ],
)
def test_the_notes_say_what_is_modelled(settings, note):
    assert any(note in n for n in estimate_step(LLAMA, _run(**settings)).notes)


def test_sft_estimates_do_not_name_the_objective():
    run = _run(method="lora")
    assert "objective" not in run.model_dump() and "precompute_ref" not in run.model_dump()
    assert not any("concatenated" in n for n in estimate_step(LLAMA, run).notes)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (dict(objective="simpo", precompute_ref=True), "--precompute-ref applies to dpo and ipo"),
        (dict(objective="dpo", loss="fused"), "drop --loss fused"),
    ],
)
def test_settings_that_do_not_fit_are_refused(settings, words):
    with pytest.raises(ValueError, match=words):
        _run(**settings)


def test_what_is_not_modelled_is_refused_in_one_sentence():
    with pytest.raises(InvalidInputError, match="encoder-decoder"):
        estimate_step(tiny("t5"), _run(objective="dpo"))
    with pytest.raises(InvalidInputError, match="modelled on one GPU"):
        estimate_step(LLAMA, _run(objective="dpo"), par=ParallelConfig(gpus=2, strategy="zero2"))


def test_the_cli_takes_the_objective():
    res = CliRunner().invoke(
        app,
        ["estimate", "llama2-7b", "--method", "lora", "--objective", "dpo", "--format", "json"],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["run"]["objective"] == "dpo"
    assert any("reference: the adapter disabled" in n for n in out["notes"])
    res = CliRunner().invoke(app, ["estimate", "llama2-7b", "--objective", "kto"])
    assert res.exit_code != 0


def _trl(tmp_path: Path, data: dict) -> dict:
    path = tmp_path / "dpo.json"
    path.write_text(json.dumps({"model_name_or_path": "gpt2", "beta": 0.1, **data}))
    cfg = read_framework_config(str(path))
    return {"settings": cfg.settings, "notes": cfg.notes}


def test_trl_dpo_configs(tmp_path):
    # DPOConfig: loss_type ["sigmoid"] by default; ["ipo"] is IPO; every other pair loss
    # reads the same log-probabilities (estimated as dpo)
    assert _trl(tmp_path, {})["settings"]["objective"] == "dpo"
    assert _trl(tmp_path, {"loss_type": ["ipo"]})["settings"]["objective"] == "ipo"
    assert _trl(tmp_path, {"loss_type": "hinge"})["settings"]["objective"] == "dpo"
    mpo = _trl(tmp_path, {"loss_type": ["sigmoid", "sft"]})
    assert any(n.startswith("loss_type sft") for n in mpo["notes"])
    got = _trl(tmp_path, {"precompute_ref_log_probs": True})
    assert got["settings"]["precompute_ref"] is True
    liger = _trl(tmp_path, {"use_liger_kernel": True})
    assert "loss" not in liger["settings"]
    assert any("Liger DPO loss" in n for n in liger["notes"])


def test_trl_kto_and_grpo_stay_sft_with_a_note(tmp_path):
    got = _trl(tmp_path, {"desirable_weight": 1.0})
    assert "objective" not in got["settings"]
    assert any("TRL KTO" in n and "not modelled" in n for n in got["notes"])


def test_the_worked_example_of_docs_objectives():
    """docs/objectives.md: Llama-2-7B, bf16, one pair of 1,024 tokens."""

    def memory(**settings):
        run = RunConfig(batch_size=1, seq_len=1024, precision="bf16", **settings)
        return estimate_step(model_presets()["llama2-7b"], run).memory

    full_dpo, full = memory(method="full", objective="dpo"), memory(method="full")
    assert full_dpo.weights_bytes - full.weights_bytes == 6_738_415_616 * 2
    orpo, dpo = memory(method="lora", objective="orpo"), memory(method="lora", objective="dpo")
    assert orpo.activations_bytes - dpo.activations_bytes == 1023 * 32_000 * 2 + 1023 * 8 + 2
