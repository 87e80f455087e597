"""Combinations of options that once failed, each checked against what the engines do
(the sharding rules of ZeRO-3 and FSDP, FSDP's CPUOffload, DeepSpeed's fp16 mode)."""

from __future__ import annotations

from math import ceil

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError

QLORA_INT4 = dict(method="qlora", quant="int4")


@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero2", "zero3", "fsdp", "fsdp-grad-op"])
def test_a_gptq_int4_base_under_every_strategy(strategy):
    """--quant int4 under ZeRO once raised KeyError: 'int4'. Its weights follow the
    engine's rule: whole on every rank (DDP, ZeRO-1/2), or 1/8 each (FSDP); ZeRO-3 keeps
    tensors under 10 × hidden elements whole (65 norms of 4096, 128 LoRA A/B of 8 × 4096,
    in DeepSpeed's bf16) and shards the rest."""
    est = estimate("llama2-7b", **QLORA_INT4, gpus=8, strategy=strategy)
    deepspeed = strategy.startswith("zero")
    # DeepSpeed's 16-bit mode keeps the adapters in bf16, as this one-GPU run does
    one = estimate("llama2-7b", **QLORA_INT4, adapter_dtype="bf16" if deepspeed else "auto")
    whole = one.memory.weights_bytes
    if strategy in ("ddp", "zero1", "zero2"):
        assert est.memory.weights_bytes == whole
    elif strategy == "zero3":
        persistent = (65 * 4096 + 128 * 8 * 4096) * 2
        assert est.parallel.weights_replicated_bytes == persistent
        assert est.parallel.weights_sharded_bytes == ceil((whole - persistent) / 8)
    else:
        assert est.memory.weights_bytes == ceil(whole / 8)


def test_fsdp_offload_params_alone_is_cpu_offload():
    """FSDP's CPUOffload(offload_params=True) moves the weights, the gradients and the
    optimizer step to the host: --offload-params cpu alone says it all (it was refused
    with a message asking for --offload-params cpu)."""
    alone = estimate("llama2-7b", gpus=2, strategy="fsdp", offload_params="cpu")
    both = estimate(
        "llama2-7b", gpus=2, strategy="fsdp", offload_params="cpu", offload_optimizer="cpu"
    )
    assert alone == both
    assert alone.parallel.offload_optimizer == "cpu"
    with pytest.raises(InvalidInputError, match="add --offload-params cpu"):
        estimate("llama2-7b", gpus=2, strategy="fsdp", offload_optimizer="cpu")
    with pytest.raises(InvalidInputError, match="drop --offload-optimizer none"):
        estimate(
            "llama2-7b", gpus=2, strategy="fsdp", offload_params="cpu", offload_optimizer="none"
        )


@pytest.mark.parametrize(
    ("strategy", "precision", "engine"),
    [
        ("zero2", "fp16-mixed", "DeepSpeed's fp16 mode"),
        ("zero3", "fp16-mixed", "DeepSpeed's fp16 mode"),
        ("fsdp", "fp16-mixed", "FSDP's MixedPrecision"),
    ],
)
def test_t5_in_fp16_under_an_engine_names_the_engine(strategy, precision, engine):
    """T5 with fp16-mixed under these engines runs in fp16 whole, which ftmem refuses
    for T5; the refusal once told the user to use fp16-mixed, what they had given."""
    with pytest.raises(InvalidInputError) as info:
        estimate("flan-t5-small", gpus=2, strategy=strategy, precision=precision)
    message = str(info.value)
    assert engine in message and "bf16-mixed" in message and "fp16-mixed" not in message
    # and what it suggests is estimated
    estimate("flan-t5-small", gpus=2, strategy=strategy, precision="bf16-mixed")


@pytest.mark.parametrize(
    ("settings", "fused"),
    [
        (dict(optimizer="adamw"), True),
        (dict(optimizer="adamw-fp32"), True),
        (dict(optimizer="sgd-momentum"), True),
        (dict(optimizer="adamw-8bit"), False),
        (dict(optimizer="paged-adamw-8bit"), False),
        (dict(optimizer="ao-adamw-8bit"), False),
        (dict(optimizer="adafactor"), False),
        (dict(optimizer="lion"), False),
        (dict(method="galore"), False),
    ],
)
def test_fused_is_torchs_adamw_and_sgd_only(settings, fused):
    """torch.optim.AdamW and SGD take fused=True; bitsandbytes' 8-bit optimizers,
    transformers' Adafactor, Lion and galore_torch have no such switch: asking for it
    was silently ignored."""
    if fused:
        estimate("gpt2", optimizer_impl="fused", **settings)
    else:
        with pytest.raises(InvalidInputError, match="no fused variant"):
            estimate("gpt2", optimizer_impl="fused", **settings)


def test_t5_engine_configs_wrap_its_blocks():
    """--emit accelerate / fsdp for T5 raised KeyError: 't5'; transformers' T5 splits
    into T5Block (its _no_split_modules), which FSDP wraps."""
    import yaml

    from ftmem.present.emit import emit_config

    est = estimate("flan-t5-small", gpus=2, strategy="fsdp", precision="bf16-mixed")
    for kind in ("accelerate", "fsdp"):
        config = yaml.safe_load(emit_config(est, kind))
        assert config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "T5Block"


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--strategy", "single"], "--strategy single uses one GPU"),
        (["--accounting", "simple"], "--accounting simple is the seed's single-GPU sum"),
        (["--offload-optimizer", "cpu"], "--offload-optimizer needs a DeepSpeed ZeRO or FSDP"),
        (["--teacher", "llama2-7b"], "modelled on one GPU"),
    ],
)
def test_fewest_gpus_says_why_it_cannot_search(capsys, flags, reason):
    """A one-GPU feature, or an offload without a strategy, under --fewest-gpus: the
    search once answered "does not fit on up to 1 GPUs (128 nodes of 8)" or "no GPU
    count fits the layout rules; check --tp, --pp and --cp" (flags never given)."""
    from ftmem.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "llama2-13b", "--fewest-gpus", "--gpu", "rtx4090", *flags])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == ""
    assert err.startswith("Error: --fewest-gpus: ") and reason in err and err.count("\n") == 1
