"""Qwen3.5's MoE text model (family qwen3_5_moe_text): its parameters against transformers
5.25's Qwen3_5MoeForCausalLM built on the meta device (every tensor in its layer), the
config class's defaults, the config ftmem builds read back, peft's all-linear on the tiny
model, and what is refused in one sentence (LoRA that peft turns into expert LoRA on the
MLP names, QLoRA, serving, a default LoRA target)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from ftmem.arch import Architecture, count_params
from ftmem.cli import app
from ftmem.errors import ConfigError
from ftmem.sources import architecture_from_config
from tests.conftest import TINY_QWEN35_MOE_TEXT
from tests.family_configs import ftmem_tensors, meta_model


def _arch(cfg: dict[str, Any]) -> Architecture:
    return architecture_from_config(cfg, "tiny-qwen3_5_moe_text", "test")


def _built(cfg: dict[str, Any]) -> Any:
    return meta_model(cfg, "qwen3_5_moe")


CASES = {
    "default pattern": {},
    "given layer_types": {
        "layer_types": ["full_attention", "linear_attention"] * 3
        + ["linear_attention", "full_attention"]
    },
    "one expert a token, biases, tied": {
        "num_experts_per_tok": 1,
        "attention_bias": True,
        "tie_word_embeddings": True,
    },
    "every layer full": {"layer_types": ["full_attention"] * 8},
}


@pytest.mark.parametrize("changes", CASES.values(), ids=CASES.keys())
def test_every_tensor_is_transformers_one(changes):
    """Each name and size in its layer: the router, the 3-D gate_up and down experts, the
    shared expert's three linears and its (1, hidden) gate beside either layer kind."""
    cfg = {**TINY_QWEN35_MOE_TEXT, **changes}
    model = _built(cfg)
    arch = _arch(cfg)
    real = {name: p.numel() for name, p in model.named_parameters()}
    assert type(model).__name__ == "Qwen3_5MoeForCausalLM"
    assert ftmem_tensors(arch) == real
    assert count_params(arch) == sum(real.values())


def test_transformers_default_widths_count_exactly():
    """Qwen3_5MoeTextConfig's own defaults (hidden 2048, 40 layers, vocab 248,320, 256
    experts of 512, 8 a token, a shared one of 512), on the meta device."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("transformers.models.qwen3_5_moe")
    defaults = transformers.Qwen3_5MoeTextConfig().to_dict()
    cfg = {k: defaults[k] for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "linear_num_key_heads", "linear_num_value_heads",
        "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim",
        "tie_word_embeddings", "moe_intermediate_size", "shared_expert_intermediate_size",
        "num_experts", "num_experts_per_tok",
    )}  # fmt: skip
    cfg["model_type"] = "qwen3_5_moe_text"
    model = _built(cfg)
    assert count_params(_arch(cfg)) == sum(p.numel() for p in model.parameters())
    # the MoE keys left out: the same class defaults
    bare = {k: v for k, v in cfg.items() if "expert" not in k}
    assert count_params(_arch(bare)) == count_params(_arch(cfg))


def test_the_config_ftmem_builds_is_the_model_read():
    """Family.config.build (what `ftmem measure` builds) gives transformers a config whose
    model has the counted parameters and reads back as the same Architecture; a config as
    transformers saves it (to_dict) reads as the config.json it came from."""
    transformers = pytest.importorskip("transformers")
    from ftmem import families

    arch = _arch(TINY_QWEN35_MOE_TEXT)
    assert _arch(_built(TINY_QWEN35_MOE_TEXT).config.to_dict()) == arch
    kw = families.get("qwen3_5_moe_text").config.build(arch)
    config = transformers.AutoConfig.for_model("qwen3_5_moe_text", vocab_size=arch.vocab_size, **kw)
    model = _built(config.to_dict())
    assert count_params(arch) == sum(p.numel() for p in model.parameters())
    assert _arch(config.to_dict()) == arch


def test_all_linear_adapts_what_peft_adapts():
    """peft 0.21.2's all-linear on the tiny model: every nn.Linear but the head, so the
    shared expert's linears and its one-output gate too (the 3-D experts and the router
    are parameters, not modules); ftmem refuses that target (below), and its attention and
    Gated DeltaNet projections are the rest of peft's set."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    model = _built(TINY_QWEN35_MOE_TEXT).to_empty(device="cpu").to(torch.float32)
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules="all-linear"))
    leaves = {
        name.removeprefix("base_model.model.").split(".", 3)[3]
        for name, module in adapted.named_modules()
        if isinstance(module, peft.tuners.lora.LoraLayer)
    }
    assert {n for n in leaves if n.startswith("mlp.")} == {
        "mlp.shared_expert.gate_proj",
        "mlp.shared_expert.up_proj",
        "mlp.shared_expert.down_proj",
        "mlp.shared_expert_gate",
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shared_expert_intermediate_size": 0}, "must be positive"),
        ({"num_experts_per_tok": 5}, "more than num_experts"),
        ({"layer_types": ["full_attention"] * 7 + ["linear_attention"]}, "ends with a linear"),
    ],
)
def test_configs_ftmem_would_misstate_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        _arch({**TINY_QWEN35_MOE_TEXT, **changes})


def _cli(cfg: dict[str, Any], tmp_path, *args: str) -> Any:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return CliRunner().invoke(app, [args[0], str(path), *args[1:]])


REFUSED = {
    "all-linear": ("estimate", "--method", "lora", "--lora-targets", "all-linear"),
    "qlora": ("estimate", "--method", "qlora", "--lora-targets", "q_proj,v_proj"),
    "no targets": ("estimate", "--method", "lora"),
    "serving": ("serve",),
    "dora": ("estimate", "--method", "dora", "--lora-targets", "q_proj,v_proj"),
    "shared expert by name": (
        "estimate",
        "--method",
        "lora",
        "--lora-targets",
        "q_proj,v_proj,gate_proj,up_proj,down_proj",
    ),
}


@pytest.mark.parametrize("args", REFUSED.values(), ids=REFUSED.keys())
def test_unmodelled_runs_are_refused_in_one_sentence(tmp_path, args):
    res = _cli(TINY_QWEN35_MOE_TEXT, tmp_path, *args)
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert "Traceback" not in res.stderr
    said = " ".join(res.stderr.split())
    assert len(said.rstrip(".").split(". ")) == 1, said


def test_measured_steps_are_estimated(tmp_path):
    res = _cli(
        TINY_QWEN35_MOE_TEXT,
        tmp_path,
        "estimate",
        "--method",
        "lora",
        "--lora-targets",
        "q_proj,v_proj",
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.output
    assert "modelled on transformers' torch path" in " ".join(json.loads(res.stdout)["notes"])


# Qwen3.5-35B-A3B's text_config architecture keys (presets/models/qwen3.5-35b-a3b.yaml cites
# the public copies; also Qwen3_5MoeTextConfig's class defaults)
QWEN35_35B_A3B: dict[str, Any] = {
    "model_type": "qwen3_5_moe_text",
    "vocab_size": 248320,
    "hidden_size": 2048,
    "num_hidden_layers": 40,
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
    "num_experts": 256,
    "num_experts_per_tok": 8,
    "max_position_embeddings": 262144,
    "tie_word_embeddings": False,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10_000_000.0,
        "partial_rotary_factor": 0.25,
        "mrope_interleaved": True,
        "mrope_section": [11, 11, 10],
    },
}


def test_the_35b_a3b_preset_is_its_config_and_transformers_count():
    """The preset reads as its config.json's text model does, and counts what transformers
    builds on the meta device; by hand (the preset's comment): 40 x 808,982,528 (norms,
    experts, router, shared expert and its gate) + 30 Gated DeltaNet x 33,718,464 + 10 full
    attention x 27,263,488 + embeddings and head 2 x 508,559,360 + final norm 2,048."""
    from ftmem.sources import resolve_model

    preset = resolve_model("qwen3.5-35b-a3b")
    read = _arch(QWEN35_35B_A3B)
    fields = ("name", "source", "published_params", "published_params_source")
    assert preset.model_dump(exclude=set(fields)) == read.model_dump(exclude=set(fields))
    by_hand = 40 * 808_982_528 + 30 * 33_718_464 + 10 * 27_263_488 + 2 * 508_559_360 + 2_048
    model = _built(QWEN35_35B_A3B)
    assert count_params(preset) == sum(p.numel() for p in model.parameters()) == by_hand
    assert by_hand == 34_660_610_688


def test_lora_on_the_experts_trains_every_block():
    """LoRA on q and v alone trains from the lowest full-attention layer up (layer 3 of 8
    by the default pattern); with the routed experts (in every layer) beside them, all 8
    blocks train (measured: tests/accuracy/cases.py, q,v,gate,up,down)."""
    from ftmem.methods import plan_method
    from ftmem.run import RunConfig

    arch = _arch(TINY_QWEN35_MOE_TEXT)
    qv = RunConfig(method="lora", lora_targets="q_proj,v_proj", lora_r=2)
    assert plan_method(arch, qv).trainable_blocks == 8 - 3
    with_experts = RunConfig(method="lora", lora_targets="q,v,gate,up,down", lora_r=2)
    assert plan_method(arch, with_experts).trainable_blocks == 8
