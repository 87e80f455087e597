"""`ftmem compare-methods`: one run under each method, options routed to their methods."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ftmem import estimate
from ftmem.api import COMPARED_METHODS, compare_methods
from ftmem.cli import app
from ftmem.errors import InvalidInputError


def test_rows_are_the_estimates_of_each_method() -> None:
    rows = compare_methods("mistral-7b", gpu="rtx4090", seq_len=1024, lora_r=16, virtual_tokens=8)
    # Mistral has no biases: BitFit is left out of the default list
    assert list(rows) == [m for m in COMPARED_METHODS if m != "bitfit"]
    assert rows["lora"] == estimate(
        "mistral-7b", gpu="rtx4090", seq_len=1024, method="lora", lora_r=16
    )
    assert rows["prompt-tuning"] == estimate(
        "mistral-7b", gpu="rtx4090", seq_len=1024, method="prompt-tuning", virtual_tokens=8
    )
    # lora_r reached the LoRA family only; virtual_tokens the prompt methods only
    assert rows["full"] == estimate("mistral-7b", gpu="rtx4090", seq_len=1024)
    assert rows["ia3"].model.n_trainable_params == 32 * (1024 + 1024 + 14336)


def test_a_method_the_model_cannot_use_shows_why() -> None:
    rows = compare_methods("falcon-7b", ["lora", "prefix-tuning"])
    assert isinstance(rows["prefix-tuning"], str) and "falcon" in rows["prefix-tuning"]
    rows = compare_methods("llama2-7b", ["lora", "bitfit"])
    assert "no bias terms" in rows["bitfit"]


def test_errors_that_concern_every_method_are_raised() -> None:
    with pytest.raises(InvalidInputError, match="--method"):
        compare_methods("llama2-7b", ["lora", "nope"])
    with pytest.raises(InvalidInputError, match="no bias terms"):
        compare_methods("llama2-7b", ["bitfit"])


def test_cli_table_and_json() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["compare-methods", "mistral-7b", "--gpu", "rtx4090"])
    assert res.exit_code == 0, res.output
    for m in ("full", "lora", "qlora", "dora", "ia3", "prompt-tuning", "prefix-tuning", "p-tuning"):
        assert m[:7] in res.output
    assert "sizes in GiB" in res.output
    res = runner.invoke(
        app, ["compare-methods", "gpt2", "--methods", "bitfit,ia3", "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    # the same model served first: weights and a KV cache of 1 × 512 tokens
    assert [d["method"] for d in data] == ["inference", "bitfit", "ia3"]
    served = data.pop(0)
    assert served["kv_cache_bytes"] == 512 * 2 * 12 * 768 * 2  # k and v, 12 layers, bf16
    assert (
        data[0]["model"]["n_trainable_params"]
        == estimate("gpt2", method="bitfit").model.n_trainable_params
    )
    bad = runner.invoke(app, ["compare-methods", "gpt2", "--methods", " , "])
    assert bad.exit_code == 2 and "at least one" in bad.output
