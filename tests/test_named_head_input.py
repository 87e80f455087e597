"""The LM head's input at the forward's loss moment (step._named_head_input).

transformers' causal LMs compute the loss inside their forward when given labels:
``hidden_states = outputs[0]``, ``logits = self.lm_head(hidden_states[:, ...])``, then
``self.loss_function(logits, labels, ...)`` (4.48.1 models/mistral/modeling_mistral.py:846-852,
models/mixtral/modeling_mixtral.py:1072-1078; 5.x the same). The final norm's output is
therefore alive, named, until the loss returns, whether or not autograd saves it. With a
frozen head (LoRA, QLoRA, prefix tuning) nothing saves it, and ftmem used to count it
nowhere: the forward's loss moment was b·s·h·e short. Loops that call the model for its
logits and compute the loss afterwards (torchtune's _loss_step, LitGPT's fit) free it as the
forward returns.

For fms-acceleration's one-GPU Mistral-7B / Mixtral rows (calibration/notes/carryover.md)
that is b × 4096 × 4096 × 2 B = 32 MiB a sample, the miss they showed at that moment.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

import ftmem.profiles as profiles
from ftmem import estimate
from tests.transformers4_sites import run_probe

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("transformers4_head_input_probe.py")
BF16 = 2


def _fms_row(model: str, **changes: object) -> dict:
    """The calibrated one-GPU accelerated QLoRA row's settings (calibration/settings/fms.yaml),
    with the carry-over rows' changes (calibration/notes/carryover.py)."""
    rows = yaml.safe_load((ROOT / "calibration/settings/fms.yaml").read_text())
    row = next(
        r for r in rows if r["id"] == "fms-llama-2-70b-hf-qlora-accelerated-peft-bnb-1gpu-bs4"
    )
    config = ROOT / "calibration/configs" / model / "config.json"
    return {"model": str(config), "gpu": row["gpu"], **row["settings"], **changes}


def _without_named_input(monkeypatch: pytest.MonkeyPatch, framework: str = "hf") -> None:
    """The framework's profile with the loss computed after the forward (no input named)."""
    changed = dataclasses.replace(profiles.PROFILES[framework], loss_in_model_forward=False)
    monkeypatch.setitem(profiles.PROFILES, framework, changed)


@pytest.mark.parametrize(
    ("model", "b"), [("mistral-7b-v0.1", 4), ("mistral-7b-v0.1", 8), ("mixtral-8x7b", 4)]
)
def test_fms_one_gpu_rows_loss_moment_holds_the_head_input(monkeypatch, model, b):
    """Derivation: Mistral-7B and Mixtral-8x7B have h = 4096 (config.json), the run s = 4096,
    bf16 residual stream (bf16 weights under autocast), the head frozen (QLoRA on q,k,v,o):
    the forward's loss moment, these rows' peak, grows by b·s·h·2 = b × 33,554,432 B."""
    settings = _fms_row(model, batch_size=b, transformers_version="4.48.1")
    path = settings.pop("model")
    now = estimate(path, **settings).memory
    _without_named_input(monkeypatch)
    before = estimate(path, **settings).memory
    assert now.peak_phase == before.peak_phase == "forward"
    assert now.phases.forward - before.phases.forward == b * 4096 * 4096 * BF16
    assert now.phases.backward == before.phases.backward  # freed as the forward returns


@pytest.mark.parametrize(
    "settings",
    [
        {"method": "full"},  # the head trains: Loss.saved keeps its input already
        {"method": "lora", "loss": "fused"},  # Liger's chunks take the hidden states
        {"method": "lora", "loss": "chunked"},  # torchtune's loss, after the forward
        {"method": "lora", "activation_offload": True},  # _offloaded_loss_inputs names it
    ],
    ids=str,
)
def test_nothing_added_where_the_input_is_saved_or_named_elsewhere(monkeypatch, settings):
    from ftmem.estimate import estimate_step
    from tests.accuracy.cases import Case

    case = Case("mistral", {"precision": "bf16", "grad_ckpt": True, **settings})
    arch, cfg = case.arch(), case.run()
    assert estimate_step(arch, cfg).memory.phases.forward == _forward_without(
        monkeypatch, arch, cfg
    )


def test_loops_that_compute_the_loss_after_the_forward():
    """torchtune's _loss_step (recipes/full_finetune_single_device.py@1814feb17a90 l.625-647)
    and LitGPT's fit (litgpt@00af8b0d litgpt/finetune/lora.py l.304-307) take the logits
    from the returned model output; everything else runs transformers' forward with labels."""
    off = {name for name, p in profiles.PROFILES.items() if not p.loss_in_model_forward}
    assert off == {"torchtune", "litgpt"}


def _forward_without(monkeypatch, arch, run_cfg):
    from ftmem.estimate import estimate_step

    with monkeypatch.context() as m:
        _without_named_input(m)
        return estimate_step(arch, run_cfg).memory.phases.forward


@pytest.mark.accuracy
@pytest.mark.parametrize("b", [2, 4])
def test_forward_loss_moment_measured_on_the_cpu(monkeypatch, b):
    """A tiny Mistral (h 256, vocab 4000: the loss moment is the forward's peak), LoRA in
    bf16 with transformers' checkpointing, the model given the labels: the measured forward
    peak is the estimate's within 0.05 %, and T·h·2 above the estimate without the head's
    input (measured before the change: 65,536 + 2,836 B and 131,072 + 4,900 B short)."""
    from ftmem.estimate import estimate_step
    from ftmem.measure import measure
    from tests.accuracy.cases import Case

    settings = {"method": "lora", "precision": "bf16", "grad_ckpt": True}
    case = Case(
        "mistral",
        {**settings, "batch_size": b, "seq_len": 64},
        {"vocab_size": 4000, "hidden_size": 256, "intermediate_size": 512},
    )
    arch, cfg = case.arch(), case.run()
    est = estimate_step(arch, cfg).memory.phases.forward
    got = measure(arch, cfg).phase_peaks["forward"]
    assert abs(est - got) / got < 5e-4
    T = b * 64
    assert est - _forward_without(monkeypatch, arch, cfg) == T * 256 * BF16
    assert got - _forward_without(monkeypatch, arch, cfg) > T * 256 * BF16


def test_head_input_alive_at_the_loss_under_the_installed_release():
    """The probe's step: the head's input storage is referenced when log_softmax runs and
    freed once the forward has returned; with the loss computed after the forward (the
    torchtune / LitGPT way) it is already gone at the log-softmax."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("head_input_probe", PROBE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    got = mod.probe(2, 16, 64, 500)
    assert got == {**got, "head_input_bytes": 2 * 16 * 64 * BF16}
    assert got["live_at_log_softmax"] and got["freed_after_forward"]
    after = mod.probe(2, 16, 64, 500, in_forward=False)
    assert after["live_at_log_softmax"] is False


def test_head_input_alive_at_the_loss_under_4_48_1():
    """The same under the fms rows' own transformers (opt-in: FTMEM_TRANSFORMERS4_SITES)."""
    got = run_probe("4.48.1", PROBE, "2", "16", "64", "500")
    assert got["head_input_bytes"] == 2 * 16 * 64 * BF16
    assert got["live_at_log_softmax"] and got["freed_after_forward"]
