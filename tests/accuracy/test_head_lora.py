"""LoRA on the LM head (``--lora-targets ...,lm_head``), measured: tiny models through
peft on the CPU against the estimate (weights, gradients and optimizer states exact,
activations within 3 %, the peak within 5 %, as tests/accuracy/cases.py), the adapter's
parameters against a hand derivation, and the paths not modelled refused."""

from __future__ import annotations

import pytest

from ftmem.errors import InvalidInputError
from ftmem.estimate import estimate_step
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from tests.conftest import tiny

from .cases import ACTIVATION_TOLERANCE, PEAK_TOLERANCE, Case
from .test_accuracy import compare, error

pytest.importorskip("torch")
pytest.importorskip("peft")

HEAD = "q,v,lm_head"
MEASURED = [
    # llama: an untied head; gpt2: the head is the tied embedding (peft wraps it anyway)
    Case("llama", {"method": "lora", "lora_targets": HEAD, "precision": "fp32"}),
    Case("llama", {"method": "lora", "lora_targets": HEAD, "precision": "bf16-mixed"}),
    Case("llama", {"method": "lora", "lora_targets": "all-linear,lm_head", "precision": "bf16"}),
    Case("llama", {"method": "lora", "lora_targets": HEAD, "lora_dropout": 0.1}),
    Case("gpt2", {"method": "lora", "lora_targets": HEAD, "precision": "fp32"}),
    Case("gpt2", {"method": "lora", "lora_targets": HEAD, "precision": "bf16-mixed"}),
    Case("llama", {"method": "qlora", "lora_targets": HEAD, "precision": "bf16-mixed"}),
]


@pytest.mark.parametrize("case", MEASURED, ids=lambda c: c.id)
def test_head_lora_matches_pytorch(case: Case) -> None:
    result = compare(case)
    for key in ("weights", "gradients", "optimizer_states"):
        assert result[key][0] == result[key][1], key
    assert abs(error(result["activations"])) <= ACTIVATION_TOLERANCE, result["activations"]
    assert abs(error(result["peak"])) <= PEAK_TOLERANCE, result["peak"]


def _run(**settings: object) -> RunConfig:
    base = {"batch_size": 3, "seq_len": 50, "device": "cpu", "method": "lora"}
    return RunConfig(**{**base, **settings})


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_head_adapter_is_r_times_h_plus_v(family: str) -> None:
    """Hu et al.'s A (r × in) and B (out × r) on the head: r·(h + V) trainable parameters
    more than the same run without it, tied head or not."""
    arch = tiny(family)
    r = 8
    without = plan_method(arch, _run(lora_targets="q,v", lora_r=r)).n_trainable
    plan = plan_method(arch, _run(lora_targets=HEAD, lora_r=r))
    assert plan.head_lora
    assert plan.n_trainable - without == r * (arch.hidden_size + arch.vocab_size)


def test_all_linear_leaves_the_head_out() -> None:
    """peft's all-linear excludes the output layer (_maybe_include_all_linear_layers)."""
    assert not plan_method(tiny("llama"), _run(lora_targets="all-linear")).head_lora


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"lora_targets": "lm_head"}, "alone"),
        ({"lora_targets": HEAD, "loss": "chunked"}, "chunked loss"),
        ({"lora_targets": HEAD, "loss": "fused"}, "fused loss"),
        ({"lora_targets": HEAD, "loss": "logprob-tiles"}, "logprob-tiles loss"),
        ({"lora_targets": HEAD, "method": "dora"}, "dora adapter"),
    ],
)
def test_unmodelled_head_paths_are_refused(settings: dict, named: str) -> None:
    with pytest.raises(InvalidInputError, match=named):
        estimate_step(tiny("llama"), _run(**settings))


def test_litgpts_chunked_head_is_modelled() -> None:
    """LitGPT's LoRALinear on its 128-position pieces (tests/test_litgpt_head_lora.py)."""
    assert plan_method(tiny("llama"), _run(lora_targets=HEAD, framework="litgpt")).head_lora
