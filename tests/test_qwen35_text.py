"""Qwen3.5's dense text model (family qwen3_5_text): its parameters against transformers'
model built on the meta device (every tensor, by layer kind), peft's all-linear targets on
the tiny model, its config read and refused where ftmem would mis-state it, and its
training steps and serving refused in one sentence."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest
from typer.testing import CliRunner

from ftmem.arch import Architecture, count_params
from ftmem.cli import app
from ftmem.errors import ConfigError
from ftmem.methods import select_linears
from ftmem.sources import architecture_from_config
from tests.conftest import TINY_QWEN35_TEXT
from tests.family_configs import ftmem_tensors, meta_model

LAYER = re.compile(r"^model\.layers\.\d+\.")


def _arch(cfg: dict[str, Any]) -> Architecture:
    return architecture_from_config(cfg, "tiny-qwen3_5_text", "test")


def _built(cfg: dict[str, Any]) -> Any:
    return meta_model(cfg, "qwen3_5")


def _by_kind(names_sizes: dict[str, int]) -> Counter:
    """Each block tensor's name without its layer index, with its size, counted over the
    layers (the outer tensors as they are): equal for any order of the two kinds."""
    return Counter((LAYER.sub("", name), n) for name, n in names_sizes.items())


# (layer pattern, grouping, biases, tying, rotary fraction) each against transformers
CASES = {
    "default pattern": {},
    "interval 2": {"full_attention_interval": 2},
    "given layer_types": {
        "layer_types": ["full_attention", "linear_attention"] * 3
        + ["linear_attention"] * 1
        + ["full_attention"]
    },
    "equal heads, biases, tied": {
        "linear_num_key_heads": 4,
        "attention_bias": True,
        "tie_word_embeddings": True,
    },
    "half the head turned": {
        "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}
    },
}


@pytest.mark.parametrize("changes", CASES.values(), ids=CASES.keys())
def test_every_tensor_is_transformers_one(changes):
    cfg = {**TINY_QWEN35_TEXT, **changes}
    model = _built(cfg)
    arch = _arch(cfg)
    real = {name: p.numel() for name, p in model.named_parameters()}
    assert count_params(arch) == sum(real.values())
    assert _by_kind(ftmem_tensors(arch)) == _by_kind(real)
    assert ftmem_tensors(arch) == real  # (each tensor in its own layer: the order)
    kinds = model.config.layer_types
    assert arch.linear_attention is not None
    assert arch.linear_attention.layers == kinds.count("linear_attention")
    linear = arch.linear_attention_blocks
    assert [linear.holds(i) for i in range(len(kinds))] == [
        kind == "linear_attention" for kind in kinds
    ]
    rotary = changes.get("rope_parameters", {}).get("partial_rotary_factor", 0.25)
    assert arch.rotary_size == int(16 * rotary)


def test_keys_left_out_take_the_config_class_defaults():
    """Without head_dim and the linear_* widths Qwen3_5TextConfig's defaults apply (head_dim
    256, not hidden / heads; 16 key and 32 value heads of 128, kernel 4)."""
    left_out = ("head_dim", "linear_num_key_heads", "linear_num_value_heads",
                "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim")  # fmt: skip
    cfg = {k: v for k, v in TINY_QWEN35_TEXT.items() if k not in left_out}
    model = _built(cfg)
    assert count_params(_arch(cfg)) == sum(p.numel() for p in model.parameters())
    assert _arch(cfg).head_size == 256


def test_transformers_default_widths_count_exactly():
    """Qwen3_5TextConfig's own defaults (hidden 4096, 32 layers, vocab 248,320, 16 key /
    32 value heads of 128): a 27B-class width, on the meta device."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("transformers.models.qwen3_5")
    defaults = transformers.Qwen3_5TextConfig().to_dict()
    cfg = {k: defaults[k] for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "linear_num_key_heads",
        "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
        "linear_conv_kernel_dim", "tie_word_embeddings",
    )}  # fmt: skip
    cfg["model_type"] = "qwen3_5_text"
    model = _built(cfg)
    assert count_params(_arch(cfg)) == sum(p.numel() for p in model.parameters())


def test_all_linear_is_peft_all_linear():
    """peft 0.21.2's all-linear (tuners_utils._maybe_include_all_linear_layers: every
    nn.Linear but the output layer) on the tiny model adapts the modules ftmem selects,
    and the q role picks the full-attention layers' q_proj only (peft matches names)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    model = _built(TINY_QWEN35_TEXT).to_empty(device="cpu").to(torch.float32)
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules="all-linear"))
    leaves = {
        LAYER.sub("", name.removeprefix("base_model.model."))
        for name, module in adapted.named_modules()
        if hasattr(module, "lora_A") and isinstance(module, peft.tuners.lora.LoraLayer)
    }
    arch = _arch(TINY_QWEN35_TEXT)
    assert {lin.module for lin in select_linears(arch, "all-linear", "target")} == leaves
    assert [lin.module for lin in select_linears(arch, "q", "target")] == ["self_attn.q_proj"]
    by_name = select_linears(arch, "in_proj_qkv", "target")
    assert [lin.module for lin in by_name] == ["linear_attn.in_proj_qkv"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"layer_types": ["full_attention"] * 7 + ["linear_attention"]}, "ends with a linear"),
        ({"layer_types": ["linear_attention"] * 7 + ["sliding_attention"]}, "linear_attention and"),
        ({"layer_types": ["full_attention"] * 3}, "a list of the 8 layers"),
        ({"linear_num_key_heads": 3}, "must divide its value_heads"),
    ],
)
def test_configs_ftmem_would_misstate_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        _arch({**TINY_QWEN35_TEXT, **changes})


def _cli(tmp_path, cfg: dict[str, Any], *args: str) -> Any:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return CliRunner().invoke(app, [args[0], str(path), *args[1:]])


def test_serving_is_refused_in_one_sentence(tmp_path):
    """Its recurrent and conv states are no KV cache: not modelled."""
    res = _cli(tmp_path, TINY_QWEN35_TEXT, "serve")
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert "Traceback" not in res.stderr
    said = " ".join(res.stderr.split())
    assert "serving of Qwen3.5's layers (Gated DeltaNet and gated full attention) is not" in said


# what the accuracy cases did not measure (tests/accuracy/cases.py, _qwen3_5_text)
UNMEASURED = {
    "dora": ("--method", "dora", "--lora-targets", "all-linear", "--lora-r", "2"),
    "fp16": ("--method", "full", "--precision", "fp16"),
    "eager": ("--method", "full", "--attn", "eager"),
    "dpo": ("--method", "full", "--objective", "dpo"),
    "offload": ("--method", "full", "--activation-offload"),
    "tensor parallel": ("--method", "full", "--gpus", "2", "--tp", "2"),
    "data parallel": ("--method", "full", "--gpus", "2"),
    "some in_proj": ("--method", "lora", "--lora-targets", "in_proj_qkv,q_proj", "--lora-r", "2"),
    # (a checkpointed Gated DeltaNet block whose projections carry LoRA, or whose
    # weights train under gradient accumulation: not yet)
    "checkpointed, trained, accumulated": ("--method", "full", "--grad-ckpt", "--grad-accum", "2"),
    "checkpointed, adapted": (
        "--method",
        "lora",
        "--lora-targets",
        "all-linear",
        "--lora-r",
        "2",
        "--grad-ckpt",
    ),
}


@pytest.mark.parametrize("args", UNMEASURED.values(), ids=UNMEASURED.keys())
def test_unmeasured_steps_are_refused_in_one_sentence(tmp_path, args):
    res = _cli(tmp_path, TINY_QWEN35_TEXT, "estimate", *args)
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert "Traceback" not in res.stderr
    assert len(" ".join(res.stderr.split()).rstrip(".").split(". ")) == 1, res.stderr


def test_the_lowest_trained_block_follows_the_layer_order():
    """LoRA on q_proj and v_proj trains from the lowest full-attention layer up: by the
    default pattern of 8 layers (every fourth full) that is layer 3, so 5 blocks hold
    trainable tensors; with the first layer full, all 8."""
    from ftmem.methods import plan_method
    from ftmem.run import RunConfig

    run = RunConfig(method="lora", lora_targets="q_proj,v_proj", lora_r=2)
    assert plan_method(_arch(TINY_QWEN35_TEXT), run).trainable_blocks == 8 - 3
    first_full = {
        **TINY_QWEN35_TEXT,
        "layer_types": ["full_attention"] + ["linear_attention"] * 6 + ["full_attention"],
    }
    assert plan_method(_arch(first_full), run).trainable_blocks == 8


def test_lora_needs_named_targets(tmp_path):
    """peft 0.21.2 has no default targets for qwen3_5_text (utils/constants.py)."""
    res = _cli(tmp_path, TINY_QWEN35_TEXT, "estimate", "--method", "lora")
    assert res.exit_code == 2 and res.stdout == ""
    assert "no default LoRA targets" in res.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("--method", "full"),
        ("--method", "lora", "--lora-targets", "all-linear", "--lora-r", "2"),
        ("--method", "freeze", "--trainable-layers", "1", "--precision", "fp32"),
        ("--method", "lora", "--lora-targets", "q_proj,v_proj", "--lora-r", "2"),
        ("--method", "lora", "--lora-targets", "q_proj,v_proj", "--lora-r", "2", "--grad-ckpt"),
        ("--method", "full", "--grad-ckpt"),
        ("--method", "freeze", "--trainable-layers", "1", "--precision", "bf16-mixed"),
    ],
)
def test_measured_steps_are_estimated_with_the_torch_path_said(tmp_path, args):
    res = _cli(tmp_path, TINY_QWEN35_TEXT, "estimate", *args, "--format", "json")
    assert res.exit_code == 0, res.output
    said = " ".join(json.loads(res.stdout)["notes"])
    assert "modelled on transformers' torch path" in said


def test_a_stack_without_linear_layers_is_qwen3_with_a_gated_query():
    """Every layer full (layer_types all full_attention): no linear_attention, and the
    count is still transformers' (q_proj doubled for the gate)."""
    cfg = {**TINY_QWEN35_TEXT, "layer_types": ["full_attention"] * 8}
    model = _built(cfg)
    arch = _arch(cfg)
    assert arch.linear_attention is None
    assert count_params(arch) == sum(p.numel() for p in model.parameters())


def test_the_config_ftmem_builds_is_the_model_read():
    """Family.config.build (what `ftmem measure` builds) gives transformers a config whose
    model has the counted parameters, and which reads back as the same Architecture (the
    layer kinds in the config's order); a config as transformers saves it (to_dict: the
    rope_parameters with mrope keys) reads as the config.json it came from."""
    transformers = pytest.importorskip("transformers")
    from ftmem import families

    rope = {"rope_type": "default", "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1]}
    cfg = {**TINY_QWEN35_TEXT, "rope_parameters": rope}
    arch = _arch(cfg)
    assert _arch(_built(cfg).config.to_dict()) == arch
    kw = families.get("qwen3_5_text").config.build(arch)
    config = transformers.AutoConfig.for_model("qwen3_5_text", vocab_size=arch.vocab_size, **kw)
    assert config.layer_types == (["linear_attention"] * 3 + ["full_attention"]) * 2
    model = _built(config.to_dict())
    assert count_params(arch) == sum(p.numel() for p in model.parameters())
    assert _arch(config.to_dict()) == arch


# Qwen3.5-0.8B's text_config (presets/models/qwen3.5-0.8b.yaml cites the public copies)
QWEN35_0_8B: dict[str, Any] = {
    "model_type": "qwen3_5_text",
    "vocab_size": 248320,
    "hidden_size": 1024,
    "intermediate_size": 3584,
    "num_hidden_layers": 24,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "layer_types": (["linear_attention"] * 3 + ["full_attention"]) * 6,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 16,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4,
    "max_position_embeddings": 262144,
    "tie_word_embeddings": True,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10_000_000,
        "partial_rotary_factor": 0.25,
        "mrope_interleaved": True,
        "mrope_section": [11, 11, 10],
    },
}


def test_the_0_8b_preset_is_its_config_and_transformers_count():
    """The preset reads as its config.json's text model does and counts what transformers
    builds on the meta device; by hand (the preset's comment): tied embeddings 254,279,680
    + 24 x (norms and MLP 11,012,096) + 18 Gated DeltaNet x 10,543,264 + 6 full attention
    x 7,340,544 + final norm 1,024."""
    from ftmem.sources import resolve_model

    preset = resolve_model("qwen3.5-0.8b")
    read = _arch(QWEN35_0_8B)
    fields = {"name", "source", "published_params", "published_params_source"}
    assert preset.model_dump(exclude=fields) == read.model_dump(exclude=fields)
    by_hand = 254_279_680 + 24 * 11_012_096 + 18 * 10_543_264 + 6 * 7_340_544 + 1_024
    model = _built(QWEN35_0_8B)
    assert count_params(preset) == sum(p.numel() for p in model.parameters()) == by_hand
    assert by_hand == 752_393_024
