"""A base shipped quantised (config.json's quantization_config): a LoRA on it trains on
the shipped format, as transformers loads it (issue 17)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ftmem.api import estimate
from ftmem.cli import app
from ftmem.quantized_base import on_quantized_base, quantized_base
from tests.test_sources import LLAMA_CFG

runner = CliRunner()

GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}
BNB_NF4 = {
    "quant_method": "bitsandbytes",
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
}


def _folder(tmp_path, quant):
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA_CFG, "quantization_config": quant}))
    return str(tmp_path)


@pytest.mark.parametrize(
    ("quant", "flags"),
    [
        (GPTQ, dict(quant="int4")),
        ({"quant_method": "awq", "bits": 4, "group_size": 128}, dict(quant="int4")),
        (BNB_NF4, dict(quant="nf4", double_quant=True)),
        ({**BNB_NF4, "bnb_4bit_use_double_quant": False}, dict(quant="nf4", double_quant=False)),
        (
            {"quant_method": "bitsandbytes", "load_in_4bit": True},
            dict(quant="fp4", double_quant=False),
        ),
        ({"quant_method": "bitsandbytes", "load_in_8bit": True}, dict(quant="int8")),
    ],
    ids=["gptq", "awq", "nf4-dq", "nf4", "bnb-default-fp4", "int8"],
)
def test_a_lora_on_a_quantised_base_is_the_qlora_of_its_format(tmp_path, quant, flags):
    """The same step as the explicit flags of the base's format (bitsandbytes'
    BitsAndBytesConfig defaults: fp4, no double quantisation)."""
    folder = _folder(tmp_path, quant)
    got = estimate(folder, method="lora", precision="bf16")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps(LLAMA_CFG))
    want = estimate(str(plain), method="qlora", precision="bf16", **flags)
    assert got.memory == want.memory
    assert any("the LoRA trains on it as shipped" in n for n in got.notes)


def test_the_cli_says_what_it_did(tmp_path):
    res = runner.invoke(app, ["estimate", _folder(tmp_path, GPTQ), "--method", "lora"])
    assert res.exit_code == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "the base is GPTQ 4-bit; the LoRA trains on it as shipped" in text
    assert "(--method qlora --quant int4)" in text


def test_full_finetuning_keeps_a_16_bit_copy_and_says_so(tmp_path):
    folder = _folder(tmp_path, GPTQ)
    got = estimate(folder, method="full", precision="bf16")
    assert got.run.method == "full"
    assert any("transformers trains adapters only on quantised weights" in n for n in got.notes)


@pytest.mark.parametrize(
    ("quant", "said"),
    [
        ({"quant_method": "fp8", "fmt": "e4m3"}, "the base is fp8-quantised"),
        ({"quant_method": "gptq", "bits": 8}, "the base is gptq-quantised"),
    ],
)
def test_formats_not_modelled_are_named(tmp_path, quant, said):
    got = estimate(_folder(tmp_path, quant), method="lora", precision="bf16")
    assert got.run.method == "lora"
    assert any(said in n and "does not model training on that format" in n for n in got.notes)


def test_mxfp4_is_trained_dequantised(tmp_path):
    """transformers 5.24 does not train MXFP4 (quantizer_mxfp4.py: is_trainable False);
    gpt-oss's experts are dequantised to bf16 for finetuning: the run's own dtypes."""
    got = estimate(_folder(tmp_path, {"quant_method": "mxfp4"}), method="lora", precision="bf16")
    assert got.run.method == "lora"
    said = "the base is mxfp4-quantised; transformers does not train MXFP4 weights"
    assert any(said in n and "Mxfp4Config(dequantize=True)" in n for n in got.notes)


@pytest.mark.parametrize(("group", "reads"), [(32, "low"), (-1, "high"), (256, "high")])
def test_a_group_size_other_than_128_is_named(group, reads):
    base = quantized_base({"quantization_config": {**GPTQ, "group_size": group}})
    _, notes = on_quantized_base(base, {"method": "lora"})
    assert notes[-1].endswith(f"so those constants read {reads}.")


def test_no_quantization_config_changes_nothing():
    settings = {"method": "lora"}
    assert on_quantized_base(quantized_base({}), settings) == (settings, [])


def test_traced_builds_transformers_own_model_unquantised(tmp_path):
    """--traced does not turn the LoRA into a QLoRA (which it cannot trace)."""
    pytest.importorskip("peft")
    folder = _folder(tmp_path, GPTQ)
    res = runner.invoke(
        app,
        ["estimate", folder, "--traced", "--method", "lora", "--seq-len", "16", "--format", "json"],
    )
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["run"]["method"] == "lora"
    assert data["notes"][0].startswith(
        "config.json's quantization_config: the base is GPTQ 4-bit; traced unquantised"
    )


@pytest.mark.parametrize(
    ("quant", "args", "message"),
    [
        (GPTQ, ["--method", "qlora", "--quant", "nf4"], "--quant nf4 does not match the base"),
        ({**GPTQ, "bits": "4"}, [], "quantization_config.bits must be a whole number"),
        ({**BNB_NF4, "bnb_4bit_quant_type": "nf3"}, [], "must be nf4 or fp4"),
        ({**BNB_NF4, "load_in_4bit": "yes"}, [], "load_in_4bit must be true or false"),
        ({**GPTQ, "group_size": 12.5}, [], "group_size must be a whole number"),
    ],
)
def test_bad_quantization_configs_are_one_sentence(tmp_path, quant, args, message):
    res = runner.invoke(app, ["estimate", _folder(tmp_path, quant), *args])
    assert res.exit_code == 2 and res.stdout == ""
    assert message in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
