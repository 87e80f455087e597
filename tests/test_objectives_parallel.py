"""Preference objectives on several GPUs: the frozen reference copy on each rank, as
TRL's trainers prepare it (trl/models/utils.py@f2cd57710ae3: prepare_deepspeed,
prepare_fsdp; accelerate's prepare_model(evaluation_mode=True)), against hand
derivations. The policy's part is the SFT run's (tests/test_parallel.py)."""

from math import ceil

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError

PSI_7B = 6_738_415_616  # Llama-2-7B
H, L = 4096, 32
NORMS_7B = (2 * L + 1) * H


def _run(strategy: str, method: str = "full", **kw):
    return estimate(
        "llama2-7b",
        method=method,
        precision="bf16",
        objective="dpo",
        gpus=8,
        strategy=strategy,
        seq_len=1024,
        **kw,
    )


def _sft(strategy: str, method: str = "full"):
    return estimate("llama2-7b", method=method, precision="bf16", gpus=8, strategy=strategy)


@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero2", "colossalai-zero2"])
def test_data_parallel_and_zero12_keep_the_whole_reference(strategy):
    """DDP: the reference moved whole to each GPU; ZeRO-1/2: TRL's stage-0 engine for it,
    whole in 16-bit; ColossalAI: a second boosted model without an optimizer: 2Ψ more
    on every GPU than the SFT run."""
    dpo, sft = _run(strategy).memory, _sft(strategy).memory
    assert dpo.weights_bytes == sft.weights_bytes + 2 * PSI_7B
    assert dpo.optimizer_states_bytes == sft.optimizer_states_bytes


def test_zero3_shards_the_reference_with_deepspeeds_default_threshold():
    """ZeRO-3: the reference is a stage-3 inference engine with DeepSpeed's default
    persistence threshold (1e5 elements: the 65 norms stay whole, as under HF's 'auto'
    10·h = 40,960 for the policy); its shard is 2(Ψ − norms)/8."""
    dpo, sft = _run("zero3").memory, _sft("zero3").memory
    assert dpo.weights_bytes == sft.weights_bytes + 2 * NORMS_7B + ceil(2 * (PSI_7B - NORMS_7B) / 8)


def test_fsdp_gathers_the_whole_reference_for_its_forward():
    """TRL's prepare_fsdp calls fully_shard on the root alone: the reference is one unit,
    sharded at rest (2Ψ/8) and gathered whole (2Ψ) for each of its forwards."""
    dpo, sft = _run("fsdp"), _sft("fsdp")
    assert dpo.memory.weights_bytes == sft.memory.weights_bytes + ceil(2 * PSI_7B / 8)
    assert dpo.memory.communication_bytes >= 2 * PSI_7B


def test_lora_has_no_reference_copy_on_any_strategy():
    """Under peft the reference is the policy with its adapter disabled: no copy."""
    for strategy in ("ddp", "zero2", "zero3", "fsdp"):
        assert (
            _run(strategy, "lora").memory.weights_bytes
            == _sft(strategy, "lora").memory.weights_bytes
        )


def test_precomputed_reference_has_no_copy():
    assert (
        _run("zero2", precompute_ref=True).memory.weights_bytes
        == _sft("zero2").memory.weights_bytes
    )


def test_model_parallel_and_grpo_are_refused():
    with pytest.raises(InvalidInputError, match="runs data parallel"):
        _run("zero1", tp=2)
    with pytest.raises(InvalidInputError, match="grpo is modelled on one GPU"):
        estimate(
            "llama2-7b",
            method="lora",
            objective="grpo",
            seq_len=1024,
            batch_size=8,
            gpus=2,
            strategy="zero2",
        )
