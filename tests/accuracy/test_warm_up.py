"""The accuracy cases measure after ``warm_up="states"`` (the optimizer's states made over
zero gradients instead of a whole warm-up step, and no collection of its garbage: about a
third of each case's time). The CPU tracker counts the storages it is told of and those
ops make during the step, so the two warm-ups should give the same reading; here they
must, field by field, on cases that exercise what a first step leaves behind:
bitsandbytes' bias cast, GaLore's projectors, AdaLoRA's and AdaMSS's importance scores,
ReLoRA's merge, per-parameter optimizers stepped in backward, 8-bit states, activation
offload, preference objectives' references, an encoder-decoder, a vision model,
gradient accumulation and checkpointing."""

from __future__ import annotations

import dataclasses

import pytest

from .cases import CASES

pytest.importorskip("torch")
pytest.importorskip("peft")

IDS = (
    "llama-method=full-precision=fp32",
    "llama-method=qlora-precision=bf16-mixed-hiddensize=128-intermediatesize=256",
    "llama-galorerank=8-method=galore-precision=bf16",
    "llama-method=adalora-precision=bf16",
    "llama-adamssasa=True-method=adamss-precision=bf16",
    "llama-method=relora-precision=bf16",
    "llama-method=full-optimizerinbackward=True-precision=bf16",
    "llama-method=lora-optimizer=adamw-8bit-precision=bf16-hiddensize=128-intermediatesize=256",
    "llama-activationoffload=True-method=lora-precision=bf16",
    "llama-method=lora-objective=dpo-precision=bf16",
    "llama-method=lora-objective=kto-precision=bf16",
    "flan-t5-method=full-precision=fp32-targetlen=23",
    "mllama-llama-method=lora",
    "llama-gradaccum=2-method=lora-precision=bf16",
    "llama-gradckpt=True-method=lora-precision=bf16",
    "mixtral-method=lora-precision=bf16",
)
BY_ID = {c.id: c for c in CASES}
PROVENANCE = {"notes"}  # one note names the warm-up


@pytest.mark.accuracy
@pytest.mark.parametrize("case_id", IDS)
def test_the_states_alone_give_the_same_reading(case_id: str) -> None:
    from ftmem.measure import measure

    case = BY_ID[case_id]
    arch, run = case.arch(), case.run()
    step, states = (measure(arch, run, warm_up=w) for w in ("step", "states"))
    assert any("warm_up='states'" in n for n in states.notes)  # the short path was taken
    fields = [f.name for f in dataclasses.fields(step) if f.name not in PROVENANCE]
    differ = {f: (getattr(step, f), getattr(states, f)) for f in fields}
    differ = {f: pair for f, pair in differ.items() if pair[0] != pair[1]}
    assert not differ, f"{case_id}: the warm-ups read differently: {differ}"


def test_every_case_is_in_the_table() -> None:
    assert set(IDS) <= BY_ID.keys()
