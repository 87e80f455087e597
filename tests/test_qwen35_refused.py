"""Qwen3.5's image-text configs are refused in one sentence for their vision encoder, with
their text model's type named; the text models and Qwen3-Next are read
(tests/test_qwen35_text.py, tests/test_qwen35_moe_text.py, tests/test_qwen3_next.py)."""

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
