"""Qwen3-Next (family qwen3_next): its parameters against transformers 5.25's
Qwen3NextForCausalLM built on the meta device (every tensor in its layer, the fused
in_proj_qkvz and in_proj_ba included), the config class's defaults, the config ftmem builds
read back, a measured step estimated, and what is refused in one sentence (serving, dense
layers)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from ftmem.arch import Architecture, count_params
from ftmem.cli import app
from ftmem.errors import ConfigError
from ftmem.sources import architecture_from_config
from tests.conftest import TINY_QWEN3_NEXT as TINY
from tests.family_configs import ftmem_tensors, meta_model


def _arch(cfg: dict[str, Any]) -> Architecture:
    return architecture_from_config(cfg, "tiny-qwen3_next", "test")


def _built(cfg: dict[str, Any]) -> Any:
    return meta_model(cfg, "qwen3_next")


CASES = {
    "default pattern": {},
    "given layer_types, equal heads": {
        "layer_types": ["full_attention", "linear_attention"] * 3
        + ["linear_attention", "full_attention"],
        "linear_num_key_heads": 4,
    },
    "biases, tied, top-k not renormalised": {
        "attention_bias": True,
        "tie_word_embeddings": True,
        "norm_topk_prob": False,
    },
}


@pytest.mark.parametrize("changes", CASES.values(), ids=CASES.keys())
def test_every_tensor_is_transformers_one(changes):
    cfg = {**TINY, **changes}
    model = _built(cfg)
    arch = _arch(cfg)
    real = {name: p.numel() for name, p in model.named_parameters()}
    assert type(model).__name__ == "Qwen3NextForCausalLM"
    assert ftmem_tensors(arch) == real
    assert count_params(arch) == sum(real.values())
    assert arch.router_renormalises == changes.get("norm_topk_prob", True)


def test_transformers_default_widths_count_exactly():
    """Qwen3NextConfig's own defaults (hidden 2048, 48 layers, vocab 151,936, 512 experts
    of 512, 10 a token, a shared one of 512), on the meta device."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("transformers.models.qwen3_next")
    defaults = transformers.Qwen3NextConfig().to_dict()
    cfg = {k: defaults[k] for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "linear_num_key_heads",
        "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
        "linear_conv_kernel_dim", "tie_word_embeddings", "moe_intermediate_size",
        "shared_expert_intermediate_size", "num_experts", "num_experts_per_tok",
    )}  # fmt: skip
    cfg["model_type"] = "qwen3_next"
    model = _built(cfg)
    assert count_params(_arch(cfg)) == sum(p.numel() for p in model.parameters())
    bare = {k: v for k, v in cfg.items() if "expert" not in k and k != "intermediate_size"}
    assert count_params(_arch(bare)) == count_params(_arch(cfg))


def test_the_config_ftmem_builds_is_the_model_read():
    transformers = pytest.importorskip("transformers")
    from ftmem import families

    arch = _arch(TINY)
    kw = families.get("qwen3_next").config.build(arch)
    config = transformers.AutoConfig.for_model("qwen3_next", vocab_size=arch.vocab_size, **kw)
    model = _built(config.to_dict())
    assert count_params(arch) == sum(p.numel() for p in model.parameters())
    assert _arch(config.to_dict()) == arch


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mlp_only_layers": [0]}, "dense layers"),
        ({"decoder_sparse_step": 2}, "dense layers"),
        ({"num_experts": 0}, "num_experts must be positive"),
        ({"layer_types": ["full_attention"] * 7 + ["linear_attention"]}, "ends with a linear"),
    ],
)
def test_configs_ftmem_would_misstate_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        _arch({**TINY, **changes})


def test_serving_is_refused_in_one_sentence(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    res = CliRunner().invoke(app, ["serve", str(path)])
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert "Traceback" not in res.stderr
    said = " ".join(res.stderr.split())
    assert len(said.rstrip(".").split(". ")) == 1, said


def test_a_measured_step_is_estimated(tmp_path):
    """LoRA on the fused projections by name (tests/accuracy/cases.py _qwen3_next)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    targets = "in_proj_qkvz,in_proj_ba,out_proj,q_proj,v_proj"
    args = ["estimate", str(path), "--method", "lora", "--lora-targets", targets]
    res = CliRunner().invoke(app, [*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    assert "modelled on transformers' torch path" in " ".join(json.loads(res.stdout)["notes"])


# Qwen3-Next-80B-A3B's config.json (presets/models/qwen3-next-80b-a3b.yaml cites the copies)
QWEN3_NEXT_80B_A3B: dict[str, Any] = {
    "model_type": "qwen3_next",
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 5120,
    "num_hidden_layers": 48,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "full_attention_interval": 4,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4,
    "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512,
    "num_experts": 512,
    "num_experts_per_tok": 10,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "max_position_embeddings": 262144,
    "tie_word_embeddings": False,
    "partial_rotary_factor": 0.25,
    "rope_theta": 10_000_000,
}


def test_the_80b_a3b_preset_is_its_config_and_transformers_count():
    """The preset reads as its config.json does and counts what transformers builds on the
    meta device; by hand (the preset's comment): 48 x 1,614,813,184 (norms, experts,
    router, shared expert and its gate) + 36 Gated DeltaNet x 33,718,464 + 12 full
    attention x 27,263,488 + embeddings and head 2 x 311,164,928 + final norm 2,048."""
    from ftmem.sources import resolve_model

    preset = resolve_model("qwen3-next-80b-a3b")
    read = _arch(QWEN3_NEXT_80B_A3B)
    fields = {"name", "source", "published_params", "published_params_source"}
    assert preset.model_dump(exclude=fields) == read.model_dump(exclude=fields)
    by_hand = 48 * 1_614_813_184 + 36 * 33_718_464 + 12 * 27_263_488 + 2 * 311_164_928 + 2_048
    model = _built(QWEN3_NEXT_80B_A3B)
    assert count_params(preset) == sum(p.numel() for p in model.parameters()) == by_hand
    assert by_hand == 79_674_391_296
