"""Preference objectives (--objective dpo | ipo | simpo | orpo | kto | apo-zero-unpaired):
what the estimate adds to SFT's step, stated by hand from TRL's trainers
(huggingface/trl @f2cd57710ae3: trl/trainer/dpo_trainer.py _compute_loss,
trl/trainer/kto_trainer.py _compute_loss, trl/trainer/utils.py selective_log_softmax,
entropy_from_logits). Measured against faithful loops in tests/accuracy/cases.py
(_preference_objectives, _kto).
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
        (
            dict(objective="simpo", precompute_ref=True),
            "--precompute-ref applies to dpo, ipo, kto and apo-zero-unpaired",
        ),
        # trl/trainer/kto_trainer.py __init__: "Actual (not effective) batch size must be > 1"
        (dict(objective="kto", batch_size=1), "--objective kto needs --batch-size 2 or more"),
        (dict(objective="kto", framework="torchtune"), "modelled on TRL's KTOTrainer"),
        (
            dict(objective="apo-zero-unpaired", framework="llama-factory"),
            "not on llama-factory's",
        ),
        (dict(objective="dpo", loss="fused"), "drop --loss fused"),
    ],
)
def test_settings_that_do_not_fit_are_refused(settings, words):
    with pytest.raises(ValueError, match=words):
        _run(**settings)


def test_what_is_not_modelled_is_refused_in_one_sentence():
    with pytest.raises(InvalidInputError, match="encoder-decoder"):
        estimate_step(tiny("t5"), _run(objective="dpo"))
    with pytest.raises(InvalidInputError, match="runs data parallel"):
        estimate_step(LLAMA, _run(objective="dpo"), par=ParallelConfig(gpus=2, tp=2))


def test_the_cli_takes_the_objective():
    res = CliRunner().invoke(
        app,
        ["estimate", "llama2-7b", "--method", "lora", "--objective", "dpo", "--format", "json"],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["run"]["objective"] == "dpo"
    assert any("reference: the adapter disabled" in n for n in out["notes"])
    # KTO at one completion per micro-batch: TRL refuses it, and so does ftmem
    res = CliRunner().invoke(app, ["estimate", "llama2-7b", "--objective", "kto"])
    assert res.exit_code == 2
    assert "needs --batch-size 2 or more" in res.output and "Traceback" not in res.output
    args = ["estimate", "llama2-7b", "--method", "lora", "--objective", "kto", "--batch-size", "2"]
    res = CliRunner().invoke(app, [*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["run"]["objective"] == "kto"


def _trl(tmp_path: Path, data: dict) -> dict:
    path = tmp_path / "dpo.json"
    path.write_text(json.dumps({"model_name_or_path": "gpt2", "beta": 0.1, **data}))
    cfg = read_framework_config(str(path))
    return {"settings": cfg.settings, "notes": cfg.notes, "assumed": cfg.assumed}


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
    # read as the newest TRL (>= 1.16): the fused LM head's tiles, assumed and listed
    assert _trl(tmp_path, {})["settings"]["loss"] == "logprob-tiles"
    assert any(a.startswith("loss logprob-tiles") for a in _trl(tmp_path, {})["assumed"])
    # TRL >= 1.16 turns Liger's fused loss off and keeps the tiles (dpo_trainer.py:939)
    liger = _trl(tmp_path, {"use_liger_kernel": True})
    assert liger["settings"]["loss"] == "logprob-tiles"
    assert any("Liger DPO loss is not modelled" in n for n in liger["notes"])


def test_trl_kto_configs(tmp_path):
    # KTOConfig: loss_type "kto" by default, or "apo_zero_unpaired" (no KL term)
    got = _trl(tmp_path, {"desirable_weight": 1.0})
    assert got["settings"]["objective"] == "kto"
    assert got["settings"]["batch_size"] == 8  # per_device_train_batch_size's default
    assert got["settings"]["grad_ckpt"] is True and got["settings"]["seq_len"] == 1024
    loss = {"desirable_weight": 1.0, "loss_type": "apo_zero_unpaired"}
    assert _trl(tmp_path, loss)["settings"]["objective"] == "apo-zero-unpaired"
    got = _trl(tmp_path, {"desirable_weight": 1.0, "precompute_ref_log_probs": True})
    assert got["settings"]["precompute_ref"] is True
    liger = _trl(tmp_path, {"desirable_weight": 1.0, "use_liger_kernel": True})
    assert liger["settings"]["loss"] == "logprob-tiles"
    assert any("Liger KTO loss is not modelled" in n for n in liger["notes"])
    with pytest.raises(ValueError, match="KTO loss types"):
        _trl(tmp_path, {"desirable_weight": 1.0, "loss_type": "sigmoid"})


def test_the_worked_example_of_docs_objectives():
    """docs/objectives.md: Llama-2-7B, bf16, one pair of 1,024 tokens."""

    def memory(**settings):
        run = RunConfig(batch_size=1, seq_len=1024, precision="bf16", **settings)
        return estimate_step(model_presets()["llama2-7b"], run).memory

    full_dpo, full = memory(method="full", objective="dpo"), memory(method="full")
    assert full_dpo.weights_bytes - full.weights_bytes == 6_738_415_616 * 2
    orpo, dpo = memory(method="lora", objective="orpo"), memory(method="lora", objective="dpo")
    assert orpo.activations_bytes - dpo.activations_bytes == 1023 * 32_000 * 2 + 1023 * 8 + 2


def test_kto_runs_b_unpaired_completions_with_the_pairs_loss():
    """KTOTrainer's forward runs the batch's b completions (not 2b): its activations are
    those of DPO over b/2 pairs, and SFT's at batch b with the log-probabilities' loss
    in place of the cross-entropy."""
    kto = step_parts(LLAMA, _run(method="lora", batch_size=2 * B, objective="kto")).activations
    dpo = step_parts(LLAMA, _run(method="lora", objective="dpo")).activations
    assert kto == dpo
    sft = step_parts(LLAMA, _run(method="lora")).activations
    kto = step_parts(LLAMA, _run(method="lora", objective="kto")).activations
    sft_loss = B * S * V * 4 + B * S * 8 + 4  # fp32 log-softmax, int64 labels, normaliser
    shifted = B * (S - 1)  # bf16 log-softmax, bool completion mask, token ids
    assert kto == sft - sft_loss + shifted * V * 2 + shifted + B * S * 8


def test_kto_reference_weights():
    def weights(**settings) -> int:
        return estimate_step(LLAMA, _run(**settings)).memory.weights_bytes

    full = weights(method="full")
    assert weights(method="full", objective="kto") == 2 * full  # the frozen copy
    assert weights(method="full", objective="apo-zero-unpaired") == 2 * full
    assert weights(method="full", objective="kto", precompute_ref=True) == full
    assert weights(method="lora", objective="kto") == weights(method="lora")


def test_kto_metrics_make_the_forward_peak():
    """After the loss, KTOTrainer's metrics run beside every saved tensor, the policy's
    bf16 logits (outputs) and the reference's (ref_outputs): entropy_from_logits copies
    the shifted logits into rows (T' = 3 × 49 = 147 rows of 300) and holds 3 chunks of
    128 rows (log-softmax, exp, product); the chosen logits' index_select and masked
    copies (147 rows each) are smaller here."""
    T, shifted = B * S, B * (S - 1)
    held = T * V * 2 + T * V * 2  # policy's and reference's bf16 logits: 90,000 each
    entropy = shifted * V * 2 + 3 * 128 * V * 2  # 88,200 + 230,400
    assert held + entropy == 498_600
    for settings, beyond in (
        (dict(objective="kto"), 498_600),
        (dict(objective="apo-zero-unpaired"), 498_600),
        (dict(objective="kto", precompute_ref=True), 498_600 - T * V * 2),  # no ref_outputs
    ):
        m = estimate_step(LLAMA, _run(method="lora", **settings)).memory
        assert m.peak_phase == "forward"
        assert m.phases.forward == (
            m.weights_bytes + m.optimizer_states_bytes + m.activations_bytes + beyond
        )


@pytest.mark.parametrize(
    ("settings", "note"),
    [
        (
            dict(method="lora", objective="kto"),
            "KTO: 3 unpaired completions per forward, the KL term's 3 mismatched ones in "
            "no_grad forwards; the metrics' logit copies after the loss; reference: the "
            "adapter disabled, two forwards under no_grad after the policy's.",
        ),
        (
            # the tiny Llama in bf16: embedding and head 2 × 300 × 96, per block q, k, v, o
            # 4 × 96² and the MLP 3 × 96 × 160 and 2 norms of 96, the final norm:
            # 57,600 + 2 × 83,136 + 96 = 223,968 parameters × 2 bytes
            dict(method="full", objective="kto"),
            "reference: a frozen copy (447,936 bytes, included in Weights), its two forwards",
        ),
        (
            dict(method="lora", objective="apo-zero-unpaired"),
            "APO-ZERO-UNPAIRED: 3 unpaired completions per forward; the metrics' logit copies "
            "after the loss; reference: the adapter disabled, a forward under no_grad",
        ),
    ],
)
def test_kto_notes(settings, note):
    assert any(note in n for n in estimate_step(LLAMA, _run(**settings)).notes)


def test_the_kto_worked_example_of_docs_objectives():
    """docs/objectives.md: Llama-2-7B, bf16 LoRA, 4 completions of 1,024 tokens (T = 4,096,
    T' = 4,092, V = 32,000): at the metrics, beside every saved tensor, the policy's and
    the reference's bf16 logits (4,096 × 32,000 × 2 = 262,144,000 each), the entropy's
    row copy (4,092 × 32,000 × 2 = 261,888,000) and the chosen logits' masked copy
    (261,888,000 for a batch of one label, larger than the entropy's 3 chunks of 128
    rows, 24,576,000): 1,048,064,000 bytes."""
    assert 2 * 262_144_000 + 2 * 261_888_000 == 1_048_064_000

    def beyond(**settings) -> int:
        run = RunConfig(batch_size=4, seq_len=1024, precision="bf16", device="cpu", **settings)
        m = estimate_step(model_presets()["llama2-7b"], run).memory
        return m.phases.forward - m.weights_bytes - m.optimizer_states_bytes - m.activations_bytes

    assert beyond(method="lora", objective="kto") == 1_048_064_000
    assert (
        beyond(method="lora", objective="kto", precompute_ref=True) == 1_048_064_000 - 262_144_000
    )


def test_llama_factory_kto_holds_the_logits_copies():
    """LLaMA-Factory's CustomKTOTrainer (no batch-size check: it skips TRL's __init__):
    the policy's fp32 logits (T = 150: 150 × 300 × 4 = 180,000 bytes), then the chosen
    and rejected copies of them, held while the reference runs; its KL forward, the
    largest moment, comes beside its own fp32 logits (180,000) and is one no_grad
    forward's logits with their fp32 log-softmax (180,000 + 147 × 300 × 4 = 356,400,
    more than the bf16 logits beside their fp32 copy, 90,000)."""
    run = _run(method="lora", objective="kto", framework="llama-factory")
    m = estimate_step(LLAMA, run).memory
    beyond = 180_000 + 180_000 + 180_000 + 147 * 300 * 4
    assert beyond == 716_400
    assert m.phases.forward == (
        m.weights_bytes + m.optimizer_states_bytes + m.activations_bytes + beyond
    )
    assert _run(objective="kto", framework="llama-factory", batch_size=1).batch_size == 1
