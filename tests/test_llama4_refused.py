"""Llama 4's text model (llama4_text, and the image-text llama4 through its text_config) is
refused in one sentence that says why (sources.NOT_MODELLED), and the reason is checked
against transformers: Llama4TextMoe keeps a copy of every token for every expert, so what
one MoE block saves grows with num_local_experts, not with num_experts_per_tok
(calibration/notes/llama4_text.py derives those bytes exactly)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ftmem.cli import app
from ftmem.errors import ConfigError
from tests.family_configs import read_config

# transformers 5.25 Llama4TextConfig keys (models/llama4/configuration_llama4.py); layers
# 1 and 3 are MoE layers (interleave_moe_layer_step 2), 0 and 2 dense
TINY = {
    "model_type": "llama4_text",
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 32,
    "intermediate_size_mlp": 48,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_local_experts": 4,
    "num_experts_per_tok": 1,
    "interleave_moe_layer_step": 2,
}
REASON = r"every token through every expert .* interleave, which ftmem does not model yet"


def test_llama4_text_is_refused_with_its_reason(tmp_path):
    with pytest.raises(ConfigError, match=rf"llama4_text.*{REASON}.*--traced"):
        read_config(tmp_path, TINY)


def test_the_image_text_llama4_is_refused_for_its_text_model(tmp_path):
    cfg = {
        "model_type": "llama4",
        "text_config": TINY,
        "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 32},
    }
    with pytest.raises(ConfigError, match=rf'model_type "llama4_text": .*{REASON}'):
        read_config(tmp_path, cfg)


def test_the_cli_says_it_in_one_sentence(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    res = CliRunner().invoke(app, ["estimate", str(tmp_path)])
    assert res.exit_code == 2 and res.stdout == ""
    said = " ".join(res.stderr.split())
    assert "every token through every expert" in said and "--traced" in said
    assert "Traceback" not in res.stderr


def _moe_saved_bytes(experts: int, top_k: int) -> int:
    """The distinct non-parameter bytes one Llama4TextMoe saves for backward (fp32, its
    weights trained, 2 x 10 tokens)."""
    torch = pytest.importorskip("torch")
    llama4 = pytest.importorskip("transformers.models.llama4.modeling_llama4")
    from transformers import Llama4TextConfig

    cfg = Llama4TextConfig(**{**TINY, "num_local_experts": experts, "num_experts_per_tok": top_k})
    block = llama4.Llama4TextMoe(cfg)
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(2, 10, cfg.hidden_size, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    return sum(kept.values())


def test_the_reason_holds_every_expert_keeps_every_token():
    """Doubling the experts at one expert a token adds E * T * (2H + 4I + 1) * 4 B (the
    repeated tokens, their scaled copies, gate_up, silu and the product; the score column)
    and T * E * 4 B (the sigmoid's fp32 scores); raising the top-k adds only its indices."""
    T, H, I = 20, TINY["hidden_size"], TINY["intermediate_size"]
    four, eight = _moe_saved_bytes(4, 1), _moe_saved_bytes(8, 1)
    assert eight - four == 4 * T * (2 * H + 4 * I + 1) * 4 + T * 4 * 4
    assert _moe_saved_bytes(4, 3) - four == T * 2 * 8  # (two more int64 indices a token)
