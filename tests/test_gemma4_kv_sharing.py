"""Gemma 4's key/value sharing (num_kv_shared_layers, use_double_wide_mlp; transformers
5.25 configuration_gemma4.py kv_sharing_modes l.222-247, modeling_gemma4.py
Gemma4TextMLP l.1051-1062 and Gemma4TextAttention l.1161-1185): the reusing layers' own
parameters as transformers builds them on the meta device, the layers' types by index,
the config ftmem measure builds, and the estimates refused in one sentence."""

from __future__ import annotations

import json

import pytest

from ftmem.arch import Architecture, count_params, layout, param_path
from ftmem.cli import main
from ftmem.errors import ConfigError
from ftmem.families import get
from ftmem.sources import resolve_model
from tests.conftest import tiny

# a small E2B-like stack: the types interleaved, the top three layers reusing (two
# sliding, one full), global layers of their own head size, per-layer inputs whose table
# keeps Gemma4TextConfig's 262,144 rows (vocab_size_per_layer_input's default)
SHARED = {
    "model_type": "gemma4_text",
    "hidden_size": 64,
    "num_hidden_layers": 8,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "global_head_dim": 32,
    "vocab_size": 300,
    "sliding_window": 16,
    "hidden_size_per_layer_input": 8,
    "layer_types": [
        "sliding_attention",
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "full_attention",
    ],
    "num_kv_shared_layers": 3,
    "use_double_wide_mlp": True,
    "tie_word_embeddings": True,
}

VARIANTS = [
    {},
    {"attention_k_eq_v": True, "num_global_key_value_heads": 1},
    {"use_double_wide_mlp": False, "global_head_dim": 16},  # one attention shape
    {"num_kv_shared_layers": 4},  # a full layer stores, the one below it reuses nothing
    {"vocab_size_per_layer_input": 300, "num_kv_shared_layers": 1},
]


def _arch(tmp_path, cfg: dict) -> Architecture:
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return resolve_model(str(tmp_path))


def _laid_out(arch: Architecture) -> dict[str, tuple[int, ...]]:
    lay = layout(arch)
    blocks = {
        param_path(arch, i, p.name): p.shape
        for i in range(arch.num_layers)
        for p in lay.block
        if p.in_block(i)
    }
    return blocks


@pytest.mark.parametrize("change", VARIANTS)
def test_counts_and_shapes_as_transformers_builds_them(tmp_path, change):
    """Every block parameter's name and shape, and the total, equal Gemma4ForCausalLM's
    on the meta device: the reusing layers without k_proj, v_proj and k_norm, their MLP
    twice as wide with use_double_wide_mlp, each layer's attention of its own type."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = {**SHARED, **change}
    arch = _arch(tmp_path, cfg)
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    real = {n: tuple(p.shape) for n, p in model.named_parameters()}
    in_blocks = {n: s for n, s in real.items() if ".layers." in n}
    assert _laid_out(arch) == in_blocks
    assert count_params(arch) == sum(p.numel() for p in model.parameters())
    reusing = config.kv_sharing_modes.count("reuse")
    assert arch.kv_shared_layers == reusing == cfg["num_kv_shared_layers"]
    sliding = [i for i, t in enumerate(config.layer_types) if t == "sliding_attention"]
    assert sorted(arch.type_blocks(full=False).indices) == sliding


def test_reusing_layers_by_hand(tmp_path):
    """By hand, the default variant against the same stack without sharing: each of the
    three reusing layers drops k_proj and v_proj (64 · 32 each on the sliding layers 5
    and 6, 64 · 64 each on the full layer 7) and k_norm (16, 16, 32): 2 · 4,112 + 8,224
    = 16,448; each MLP gains 3 · 64 · 128 = 24,576: +57,280 parameters."""
    shared = count_params(_arch(tmp_path, SHARED))
    plain = count_params(_arch(tmp_path, {**SHARED, "num_kv_shared_layers": 0}))
    dropped = 2 * (2 * 64 * 32 + 16) + (2 * 64 * 64 + 32)
    assert shared - plain == 3 * 3 * 64 * 128 - dropped == 57_280


def test_measure_builds_the_same_model(tmp_path):
    """The config ftmem measure builds from the Architecture (Family.config.build) gives
    the same layer types, sharing modes and parameters as the config.json read."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    arch = _arch(tmp_path, SHARED)
    kw = get("gemma4").config.build(arch)
    built = transformers.CONFIG_MAPPING["gemma4_text"](**kw, vocab_size=arch.vocab_size)
    given = transformers.AutoConfig.for_model(**SHARED)
    assert built.layer_types == given.layer_types
    assert built.kv_sharing_modes == given.kv_sharing_modes
    with torch.device("meta"):
        a = transformers.AutoModelForCausalLM.from_config(built)
        b = transformers.AutoModelForCausalLM.from_config(given)
    shapes = [{n: tuple(p.shape) for n, p in m.named_parameters()} for m in (a, b)]
    assert shapes[0] == shapes[1]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"num_kv_shared_layers": 8}, "must leave below the reusing layers"),
        # layers 0-4 below the five reusing ones: no full layer stores
        (
            {
                "num_kv_shared_layers": 4,
                "layer_types": ["sliding_attention"] * 7 + ["full_attention"],
            },
            "one layer of each type",
        ),
    ],
)
def test_sharing_transformers_refuses_is_refused(tmp_path, change, words):
    with pytest.raises(ConfigError, match=words):
        _arch(tmp_path, {**SHARED, **change})


@pytest.mark.parametrize(
    "command",
    [
        ["serve"],
        ["estimate", "--method", "freeze"],
        ["estimate", "--gpus", "2", "--strategy", "zero3"],
        ["estimate", "--method", "dora"],
        ["estimate", "--method", "lora", "--lora-targets", "q,o"],
        ["estimate", "--attn", "eager"],
        ["estimate", "--precision", "fp16"],
    ],
)
def test_unmeasured_runs_are_refused_in_one_line(tmp_path, capsys, command):
    """What key/value sharing was not measured with: exit 2, one line, no stdout."""
    cfg = {**SHARED, "hidden_size_per_layer_input": 0, "global_head_dim": 16}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as exit_info:
        main([command[0], str(tmp_path), *command[1:]])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and "key/value sharing" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("settings", "held"),
    [
        # measured (families/gemma4.py): after L3's backward, L2's, L1's
        ({"method": "full", "precision": "fp32"}, (76_800, 153_600, 76_800, 0)),
        ({"method": "lora", "precision": "bf16"}, (19_200, 57_600, 38_400, 0)),
        # derived: k_proj adapted, the sliding storing layer's key needs one too
        (
            {"method": "lora", "lora_targets": "q,k,v", "precision": "bf16"},
            (38_400, 76_800, 38_400, 0),
        ),
    ],
)
def test_reused_gradients_held_as_measured(settings, held):
    """The reused keys' and values' gradients each block's backward holds (bottom to
    top), as a tracker between the layers' backward hooks measured them on the stack of
    tests/accuracy/cases.py GEMMA4_KV_SHARED: the full type's from L3's backward to L1's,
    the sliding type's from L2's to L0's; under LoRA on q and v the sliding storing
    layer L0's key needs no gradient (its input is the frozen embeddings' output, its
    k_proj frozen): 150 tokens × 64 × 2 B for its value alone."""
    from ftmem.methods import plan_method
    from ftmem.step import _reused_kv_gradients
    from tests.accuracy.cases import GEMMA4_KV_SHARED, Case

    case = Case("gemma4", settings, GEMMA4_KV_SHARED)
    arch, run = case.arch(), case.run()
    assert _reused_kv_gradients(arch, run, plan_method(arch, run), ()) == held


@pytest.mark.parametrize(
    ("family", "fields", "words"),
    [
        ("llama", {"kv_shared_layers": 1}, "shares no keys"),
        (
            "gemma4",
            {"sliding_window": 16, "sliding_layers": 1, "sliding_indices": [1]},
            "below the top",
        ),
        ("gemma4", {"kv_shared_layers": 2}, "must leave below"),
    ],
)
def test_architecture_fields_are_checked(family, fields, words):
    """The fields as a preset or the Python API gives them (the tiny models: 2 layers)."""
    with pytest.raises(ValueError, match=words):
        tiny(family, **fields)


def test_e2b_like_shape_counts_as_transformers_builds_it(tmp_path):
    """A stack of E2B's kind at full size (values chosen here, not a published
    config.json: 35 layers, every fifth global with a head of 512, one key/value head,
    per-layer inputs of 256, the top 20 reusing with a double-wide MLP): the count equals
    Gemma4ForCausalLM's on the meta device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    types = ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(35)]
    cfg = {
        **SHARED,
        "hidden_size": 1536,
        "num_hidden_layers": 35,
        "intermediate_size": 6144,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "global_head_dim": 512,
        "vocab_size": 262144,
        "sliding_window": 512,
        "hidden_size_per_layer_input": 256,
        "num_kv_shared_layers": 20,
        "layer_types": types,
    }
    arch = _arch(tmp_path, cfg)
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    real = sum(p.numel() for p in model.parameters())
    assert count_params(arch) == real == 4_628_569_344
