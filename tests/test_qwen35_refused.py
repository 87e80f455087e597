"""Qwen3-Next (Gated DeltaNet layers between gated full-attention ones) is refused in one
sentence that offers the traced answer, and so are Qwen3.5's image-text configs (their
vision encoder, with their text model's type named); the text models are read
(tests/test_qwen35_text.py, tests/test_qwen35_moe_text.py)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ftmem.cli import app
from ftmem.sources import GATED_DELTANET_WRAPPERS

# transformers 5.25's Qwen3_5TextConfig keys (models/qwen3_5/configuration_qwen3_5.py)
TINY = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 8,
    "linear_conv_kernel_dim": 4,
    "layer_types": ["linear_attention"] * 3 + ["full_attention"],
    "vocab_size": 128,
}


@pytest.mark.parametrize("model_type", ["qwen3_next"])
def test_a_gated_deltanet_stack_is_refused_in_one_sentence(tmp_path, model_type):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": model_type, **TINY}))
    res = CliRunner().invoke(app, ["estimate", str(path), "--method", "lora"])
    assert res.exit_code == 2
    assert res.stdout == ""
    assert "Traceback" not in res.stderr
    assert f'model_type "{model_type}": its layers alternate Gated DeltaNet' in res.stderr
    assert "--traced" in res.stderr


@pytest.mark.parametrize("model_type", sorted(GATED_DELTANET_WRAPPERS))
def test_a_multimodal_qwen35_config_is_refused_for_its_vision_encoder(tmp_path, model_type):
    path = tmp_path / "config.json"
    text = {"model_type": f"{model_type}_text", **TINY}
    path.write_text(json.dumps({"model_type": model_type, "text_config": text}))
    res = CliRunner().invoke(app, ["estimate", str(path)])
    assert res.exit_code == 2 and res.stdout == ""
    said = " ".join(res.stderr.split())
    assert f'model_type "{model_type}", whose vision encoder ftmem does not model' in said
    assert f"text_config (model_type {model_type}_text)" in said
    assert "Traceback" not in res.stderr
