"""LFM2 (family lfm2): its parameters against transformers 5.25's Lfm2ForCausalLM built on
the meta device (every tensor in its layer: short-convolution and attention layers in
config order, the top one a conv layer), the MLP width Lfm2MLP derives, Lfm2Config's own
defaults, the config ftmem builds read back, and what is refused in one sentence (a
training step, serving)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from ftmem.arch import Architecture, count_params, layout, param_path
from ftmem.cli import app
from ftmem.errors import ConfigError
from ftmem.families.lfm2 import mlp_width
from ftmem.sources import architecture_from_config
from tests.conftest import TINY_LFM2 as TINY
from tests.conftest import TINY_LFM2_MOE as TINY_MOE


def _arch(cfg: dict[str, Any]) -> Architecture:
    return architecture_from_config(cfg, "tiny-lfm2", "test")


def _built(cfg: dict[str, Any]) -> Any:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip(f"transformers.models.{cfg['model_type']}")
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def _ftmem_tensors(arch: Architecture) -> dict[str, int]:
    lay = layout(arch)
    out = {p.name: p.numel for p in lay.outer}
    for i in range(arch.num_layers):
        out.update({param_path(arch, i, p.name): p.numel for p in lay.block if p.in_block(i)})
    return out


CASES = {
    "given layer_types, top conv": {},
    "conv biases, untied (tie_embedding)": {"conv_bias": True, "tie_embedding": False},
    "full_attn_idxs, kernel 4": {"layer_types": None, "full_attn_idxs": [1, 3], "conv_L_cache": 4},
    "every layer attends (the class default)": {"layer_types": None},
    "every layer a conv": {"layer_types": ["conv"] * 6},
    "multiplier 1.5": {"block_ffn_dim_multiplier": 1.5},
    "no adjustment, head_dim": {"block_auto_adjust_ff_dim": False, "head_dim": 8},
}


@pytest.mark.parametrize("changes", CASES.values(), ids=CASES.keys())
def test_every_tensor_is_transformers_one(changes):
    cfg = {k: v for k, v in {**TINY, **changes}.items() if v is not None}
    model = _built(cfg)
    arch = _arch(cfg)
    real = {name: p.numel() for name, p in model.named_parameters()}
    assert type(model).__name__ == "Lfm2ForCausalLM"
    assert _ftmem_tensors(arch) == real
    assert count_params(arch) == sum(real.values())


def test_the_mlp_width_is_lfm2mlps():
    """Lfm2MLP.__init__ (modeling_lfm2.py l.114-122), by hand: 200 -> int(400/3) = 133 ->
    ·1.0 -> up to a multiple of 32: 160; ·1.5: int(199.5) = 199 -> 224; not adjusted: 200;
    Lfm2Config's defaults (12288, multiple 256): 8192."""
    assert mlp_width({"block_multiple_of": 32}, 200) == 160
    assert mlp_width({"block_multiple_of": 32, "block_ffn_dim_multiplier": 1.5}, 200) == 224
    assert mlp_width({"block_auto_adjust_ff_dim": False}, 200) == 200
    assert mlp_width({}, 12288) == 8192
    model = _built(TINY)
    assert model.model.layers[0].feed_forward.w1.out_features == 160


def test_transformers_default_widths_count_exactly():
    """Lfm2Config's own defaults (hidden 2560, 32 layers, every one attending, vocab 65,536,
    tied), on the meta device."""
    model = _built({"model_type": "lfm2"})
    arch = _arch({"model_type": "lfm2"})
    real = {name: p.numel() for name, p in model.named_parameters()}
    assert _ftmem_tensors(arch) == real
    assert count_params(arch) == sum(real.values())


def test_the_config_ftmem_builds_is_the_model_read():
    transformers = pytest.importorskip("transformers")
    from ftmem import families

    for changes in ({}, {"conv_bias": True, "tie_embedding": False}):
        arch = _arch({**TINY, **changes})
        kw = families.get("lfm2").config.build(arch)
        config = transformers.AutoConfig.for_model("lfm2", **kw)
        model = _built(config.to_dict())
        assert count_params(arch) == sum(p.numel() for p in model.parameters())
        assert _arch(config.to_dict()) == arch


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"layer_types": ["conv"] * 5}, "layer_types must be a list of the 6"),
        ({"layer_types": ["conv"] * 5 + ["sliding_attention"]}, "conv and full_attention"),
        ({"layer_types": None, "full_attn_idxs": "all"}, "full_attn_idxs must be"),
        ({"block_ffn_dim_multiplier": None}, "block_ffn_dim_multiplier must be"),
    ],
)
def test_configs_ftmem_would_misstate_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        _arch({**TINY, **changes})


def _one_sentence_refusal(res: Any) -> None:
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert "Traceback" not in res.stderr
    said = " ".join(res.stderr.split())
    assert "LFM2's layers (short-convolution and attention)" in said
    assert len(said.rstrip(".").split(". ")) == 1, said


@pytest.mark.parametrize(
    "args",
    [
        ["serve"],
        ["estimate"],
        ["estimate", "--method", "lora", "--lora-targets", "q_proj,v_proj"],
        ["estimate", "--gpus", "2"],
        ["estimate", "--gpus", "2", "--tp", "2"],
    ],
    ids=["serve", "full", "lora", "ddp", "tp"],
)
@pytest.mark.parametrize("conv", [True, False], ids=["conv layers", "every layer attends"])
def test_steps_and_serving_are_refused_in_one_sentence(tmp_path, args, conv):
    """Not measured: refused whatever the layer order (a stack whose every layer attends,
    Lfm2Config's default order, too)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY if conv else {**TINY, "layer_types": None}))
    _one_sentence_refusal(CliRunner().invoke(app, [args[0], str(path), *args[1:]]))


MOE_CASES = {
    "2 dense layers (the default)": {},
    "no dense layer": {"num_dense_layers": 0},
    "3 dense layers, conv biases, untied": {
        "num_dense_layers": 3,
        "conv_bias": True,
        "tie_embedding": False,
    },
    "top-k not renormalised, no expert bias": {"norm_topk_prob": False, "use_expert_bias": False},
}


@pytest.mark.parametrize("changes", MOE_CASES.values(), ids=MOE_CASES.keys())
def test_every_moe_tensor_is_transformers_one(changes):
    cfg = {**TINY_MOE, **changes}
    model = _built(cfg)
    arch = _arch(cfg)
    real = {name: p.numel() for name, p in model.named_parameters()}
    assert type(model).__name__ == "Lfm2MoeForCausalLM"
    assert _ftmem_tensors(arch) == real
    assert count_params(arch) == sum(real.values())
    assert arch.dense_layers == changes.get("num_dense_layers", 2)
    assert arch.router_renormalises == changes.get("norm_topk_prob", True)


def test_moe_defaults_count_exactly():
    """Lfm2MoeConfig's own widths (hidden 2048, 32 layers, 32 experts of 1792, 4 a token,
    2 dense layers of 7168), with a layer order given (its class has none)."""
    cfg = {"model_type": "lfm2_moe", "layer_types": ["conv", "full_attention"] * 16}
    model = _built(cfg)
    real = {name: p.numel() for name, p in model.named_parameters()}
    assert _ftmem_tensors(_arch(cfg)) == real


def test_the_moe_config_ftmem_builds_is_the_model_read():
    transformers = pytest.importorskip("transformers")
    from ftmem import families

    arch = _arch(TINY_MOE)
    kw = families.get("lfm2_moe").config.build(arch)
    config = transformers.AutoConfig.for_model("lfm2_moe", **kw)
    assert count_params(arch) == sum(p.numel() for p in _built(config.to_dict()).parameters())
    assert _arch(config.to_dict()) == arch


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"layer_types": None}, "lacks 'layer_types'"),
        ({"num_dense_layers": 6}, "leaves no block with experts"),
    ],
)
def test_moe_configs_ftmem_would_misstate_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        _arch({**TINY_MOE, **changes})


def test_moe_steps_and_serving_are_refused_in_one_sentence(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_MOE))
    for args in (["estimate", str(path)], ["serve", str(path)]):
        _one_sentence_refusal(CliRunner().invoke(app, args))


# LFM2-1.2B's config.json (presets/models/lfm2-1.2b.yaml cites the public copies): both widths
# as it writes them (block_ff_dim wins, Lfm2Config.__post_init__)
LFM2_1_2B: dict[str, Any] = {
    "model_type": "lfm2",
    "vocab_size": 65536,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "block_ff_dim": 12288,
    "block_auto_adjust_ff_dim": True,
    "block_ffn_dim_multiplier": 1.0,
    "block_multiple_of": 256,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "full_attn_idxs": [2, 5, 8, 10, 12, 14],
    "conv_L_cache": 3,
    "conv_bias": False,
    "max_position_embeddings": 128000,
    "tie_embedding": True,
}
# LFM2-350M's (presets/models/lfm2-350m.yaml)
LFM2_350M: dict[str, Any] = {
    **{k: v for k, v in LFM2_1_2B.items() if k not in ("intermediate_size", "block_ff_dim")},
    "hidden_size": 1024,
    "block_ff_dim": 6656,
    "num_attention_heads": 16,
}


# LFM2-8B-A1B's (presets/models/lfm2-8b-a1b.yaml)
LFM2_8B_A1B: dict[str, Any] = {
    "model_type": "lfm2_moe",
    "vocab_size": 65536,
    "hidden_size": 2048,
    "intermediate_size": 7168,
    "moe_intermediate_size": 1792,
    "num_hidden_layers": 24,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 128000,
    "conv_bias": False,
    "conv_L_cache": 3,
    "num_dense_layers": 2,
    "num_experts": 32,
    "num_experts_per_tok": 4,
    "norm_topk_prob": True,
    "use_expert_bias": True,
    "layer_types": ["full_attention" if i in (2, 6, 10, 14, 18, 21) else "conv" for i in range(24)],
}


@pytest.mark.parametrize(
    ("preset", "cfg", "by_hand"),
    [
        # tied embeddings + norms + 2 dense MLPs + 22 sparse blocks + conv + attention + final
        (
            "lfm2-8b-a1b",
            LFM2_8B_A1B,
            134_217_728
            + 98_304
            + 2 * 44_040_192
            + 22 * 352_387_072
            + 18 * 16_783_360
            + 6 * 10_485_888
            + 2_048,
        ),
        # tied embeddings + 16 x (norms and MLP) + 10 conv + 6 attention mixers + final norm
        (
            "lfm2-1.2b",
            LFM2_1_2B,
            134_217_728 + 16 * 50_335_744 + 10 * 16_783_360 + 6 * 10_485_888 + 2_048,
        ),
        (
            "lfm2-350m",
            LFM2_350M,
            67_108_864 + 16 * 14_157_824 + 10 * 4_197_376 + 6 * 3_145_856 + 1_024,
        ),
    ],
)
def test_the_presets_are_their_config_and_transformers_count(preset, cfg, by_hand):
    """Each preset reads as its config.json does and counts what transformers builds on the
    meta device, and what the preset's comment derives by hand."""
    from ftmem.sources import resolve_model

    arch = resolve_model(preset)
    read = _arch(cfg)
    fields = {"name", "source", "published_params", "published_params_source"}
    assert arch.model_dump(exclude=fields) == read.model_dump(exclude=fields)
    model = _built(cfg)
    assert count_params(arch) == sum(p.numel() for p in model.parameters()) == by_hand
    in_the_preset_comment = {
        "lfm2-1.2b": 1_170_340_608,
        "lfm2-350m": 354_483_968,
        "lfm2-8b-a1b": 8_339_929_856,
    }
    assert by_hand == in_the_preset_comment[preset]


def test_a_preset_step_is_refused_in_one_sentence():
    from ftmem import estimate
    from ftmem.errors import FtmemError

    with pytest.raises(FtmemError, match="LFM2's layers") as exc:
        estimate("lfm2-1.2b", method="lora", lora_targets="q_proj,v_proj")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("trains", [True, False], ids=["weights train", "frozen"])
@pytest.mark.parametrize(("s", "kernel", "bias"), [(16, 3, False), (33, 4, True)])
def test_the_short_conv_keeps_what_torch_saves(dtype, trains, s, kernel, bias):
    """ops.short_conv.saved_bytes against what autograd's saved-tensor hooks see in one
    real Lfm2ShortConv (transformers 5.25's torch path, on the CPU): each distinct storage
    once, the weights left out, its input counted where in_proj's weight trains."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv

    from ftmem.ops.short_conv import saved_bytes

    b, h = 2, 64
    config = transformers.Lfm2Config(
        hidden_size=h,
        num_hidden_layers=1,
        layer_types=["conv"],
        conv_L_cache=kernel,
        conv_bias=bias,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=32,
    )
    torch_dtype = getattr(torch, dtype)
    module = Lfm2ShortConv(config, 0).to(torch_dtype).train()
    for p in module.parameters():
        p.requires_grad_(trains)
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    x = torch.randn(b, s, h, dtype=torch_dtype, requires_grad=True)
    kept: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    e = torch.finfo(torch_dtype).bits // 8
    assert sum(kept.values()) == sum(saved_bytes(b, s, h, kernel, e, trains, trains).values())
