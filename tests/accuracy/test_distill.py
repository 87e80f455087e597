"""Distillation steps measured on the CPU: a frozen tiny teacher and a tiny student in
ftmem's reference distillation loop (ftmem.distill), against the estimate."""

from __future__ import annotations

import pytest

from ftmem.distill import Teacher
from ftmem.estimate import estimate_step
from tests.conftest import tiny

from .cases import ACTIVATION_TOLERANCE, PEAK_TOLERANCE, Case
from .test_accuracy import error

pytest.importorskip("torch")
pytest.importorskip("peft")

WIDER = {"hidden_size": 128, "intermediate_size": 256, "num_layers": 3}
CASES = [
    (Case("llama", {"method": "lora", "precision": "bf16"}), "llama", WIDER),
    (Case("llama", {"method": "full", "precision": "bf16"}), "mistral", {}),
    (Case("gpt2", {"method": "full", "precision": "fp32"}), "gpt2", {"num_layers": 4}),
    (
        Case("qwen2", {"method": "lora", "precision": "bf16-mixed", "batch_size": 1}),
        "qwen2",
        {**WIDER, "num_layers": 4},
    ),
]


@pytest.mark.accuracy
@pytest.mark.parametrize(("case", "family", "changes"), CASES, ids=lambda x: getattr(x, "id", ""))
def test_distillation_step(case: Case, family: str, changes: dict) -> None:
    from ftmem.measure import measure

    teacher = Teacher(tiny(family, **changes))
    est = estimate_step(case.arch(), case.run(), teacher=teacher).memory
    got = measure(case.arch(), case.run(), teacher=teacher)
    for key in ("weights", "gradients", "optimizer_states"):
        assert getattr(est, f"{key}_bytes") == getattr(got, f"{key}_bytes"), key
    assert abs(error((est.activations_bytes, got.activations_bytes))) <= ACTIVATION_TOLERANCE
    assert abs(error((est.peak_allocated_bytes, got.peak_allocated_bytes))) <= PEAK_TOLERANCE
