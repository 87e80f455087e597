"""Gemma 4's text model (model_type gemma4_text, src/ftmem/families/gemma4.py): counts
against transformers 5.25 on the meta device, the config read as Gemma4TextConfig reads
it, and each mechanism the family does not model refused in one sentence (the CLI: exit
2, nothing on stdout, one line on stderr)."""

from __future__ import annotations

import json

import pytest

from ftmem.arch import count_params
from ftmem.cli import main
from ftmem.errors import ConfigError
from ftmem.families import get
from ftmem.sources import resolve_model
from tests.conftest import tiny

# Gemma 4 31B's text_config (google/gemma-4-31B config.json, as public copies give it:
# hidden 5376, 60 layers, 32 heads, 16 kv heads of 256, intermediate 21504, vocab 262144,
# window 1024, soft-cap 30, tied), with the three mechanisms the family refuses switched
# off: attention_k_eq_v false, global_head_dim = head_dim, no per-layer inputs.
DENSE = {
    "model_type": "gemma4_text",
    "hidden_size": 5376,
    "num_hidden_layers": 60,
    "intermediate_size": 21504,
    "num_attention_heads": 32,
    "num_key_value_heads": 16,
    "head_dim": 256,
    "global_head_dim": 256,
    "vocab_size": 262144,
    "max_position_embeddings": 262144,
    "sliding_window": 1024,
    "final_logit_softcapping": 30.0,
    "hidden_size_per_layer_input": 0,
    "num_kv_shared_layers": 0,
    "attention_k_eq_v": False,
    "enable_moe_block": False,
    "tie_word_embeddings": True,
}


def _arch(tmp_path, cfg: dict):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return resolve_model(str(tmp_path))


def test_dense_counts_as_transformers_builds_it(tmp_path):
    """By hand, per layer: q 5376·8192 + k, v 2 · 5376·4096 + o 8192·5376 = 132,120,576;
    MLP 3 · 5376·21504 = 346,816,512; four norms 4 · 5376 and q/k norms 2 · 256 (the v
    norm has no weight) = 22,016: 478,959,104 a layer, 28,737,546,240 for 60; the tied
    embedding 262,144 · 5376 = 1,409,286,144 and the final norm 5,376:
    30,146,837,760, as transformers builds Gemma4ForCausalLM on the meta device.
    Gemma4TextConfig's default pattern makes every sixth layer global: 50 slide."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    arch = _arch(tmp_path, DENSE)
    assert (arch.sliding_layers, arch.sliding_window) == (50, 1024)
    assert (arch.final_logit_softcapping, arch.qk_norm, arch.tie_embeddings) == (30.0, True, True)
    config = transformers.AutoConfig.for_model(**DENSE)
    assert config.layer_types.count("sliding_attention") == 50
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == "Gemma4ForCausalLM"
    real = sum(p.numel() for p in model.parameters())
    assert count_params(arch) == real == 30_146_837_760


def test_tiny_build_is_the_model_measured():
    """The config ftmem measure builds for an Architecture: its sliding layers, a global
    top layer, and the storing layers transformers marks (the last of each type)."""
    transformers = pytest.importorskip("transformers")
    arch = tiny("gemma4", sliding_window=16, sliding_layers=1)
    kw = get("gemma4").config.build(arch)
    config = transformers.CONFIG_MAPPING["gemma4_text"](**kw, vocab_size=arch.vocab_size)
    assert config.layer_types == ["sliding_attention", "full_attention"]
    assert config.kv_sharing_modes == ["store", "store"]
    assert config.hidden_size_per_layer_input == 0


def test_last_layer_global():
    """Gemma4TextConfig forces the last layer global: a preset sliding on every layer is
    not a Gemma 4 model."""
    with pytest.raises(ValueError, match="last layer attends globally"):
        tiny("gemma4", sliding_window=16, sliding_layers=2)


def test_given_last_sliding_layer_counts_as_global(tmp_path):
    """layer_types whose last entry slides: transformers makes it global (one fewer)."""
    cfg = {**DENSE, "num_hidden_layers": 2, "layer_types": ["sliding_attention"] * 2}
    assert _arch(tmp_path, cfg).sliding_layers == 1


REFUSED = [
    # null: Gemma4TextConfig's strict int field refuses it (a TypeError in transformers)
    ({"hidden_size_per_layer_input": None}, "hidden_size_per_layer_input must be an integer"),
    ({"hidden_size_per_layer_input": 0, "num_kv_shared_layers": 0}, None),
    ({"num_kv_shared_layers": 60}, "must leave below the reusing layers"),
    ({"enable_moe_block": True}, "enable_moe_block"),
    # as transformers writes config.json: the global layers' overrides, which it applies
    # over global_head_dim; overrides of a sliding layer's shape, or two global shapes
    ({"per_layer_config": {"59": {"head_dim": 256}}, "global_head_dim": 512}, None),
    ({"per_layer_config": {"0": {"head_dim": 512}}}, 'layer "0"'),
    ({"per_layer_config": {"59": {"sliding_window": 8}}}, 'layer "59"'),
    (
        {"per_layer_config": {"53": {"head_dim": 512}, "59": {"head_dim": 384}}},
        "more than one attention shape",
    ),
    ({"use_bidirectional_attention": "all"}, "bidirectional"),
    (
        {"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0}}},
        "rotary type",
    ),
]


@pytest.mark.parametrize(("change", "match"), REFUSED)
def test_unmodelled_mechanisms_are_refused(tmp_path, change, match):
    cfg = {**DENSE, **change}
    if match is None:
        assert _arch(tmp_path, cfg).num_layers == 60
        return
    with pytest.raises(ConfigError, match=match):
        _arch(tmp_path, cfg)


def test_config_class_defaults_are_read(tmp_path):
    """Gemma4TextConfig's defaults switch per-layer inputs on (256): a config.json that
    leaves them out has them (tests/test_gemma4_per_layer.py), not an estimate without
    them; its global_head_dim default (512) is read."""
    bare = {k: v for k, v in DENSE.items() if k != "hidden_size_per_layer_input"}
    assert _arch(tmp_path, bare).per_layer_input_size == 256
    bare = {k: v for k, v in DENSE.items() if k != "global_head_dim"}
    assert _arch(tmp_path, bare).full_head_dim == 512


# Gemma 4 31B's text_config itself: its 10 global layers 512 wide with 4 key/value heads
# whose values are their keys (no v_proj)
B31 = {**DENSE, "global_head_dim": 512, "num_global_key_value_heads": 4, "attention_k_eq_v": True}


def test_31b_counts_as_transformers_builds_it(tmp_path):
    """By hand, a global layer: q 5376·(32·512) = 88,080,384, k 5376·(4·512) = 11,010,048,
    no v, o (32·512)·5376 = 88,080,384; MLP 346,816,512; four norms 21,504 and q/k norms
    2 · 512: 534,009,856. 50 sliding layers as the dense count (478,959,104 each):
    23,947,955,200; 10 global ones 5,340,098,560; the tied embedding 1,409,286,144 and
    the final norm 5,376: 30,697,345,280, as transformers builds it on the meta device.
    Without attention_k_eq_v, num_global_key_value_heads is not read (16 kv heads and a
    v_proj 5376·8192 on each global layer: + 10 · (5376·6144 + 5376·8192) =
    770,703,360)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    for cfg, expected in (
        (B31, 30_697_345_280),
        ({**B31, "attention_k_eq_v": False}, 31_468_048_640),
    ):
        arch = _arch(tmp_path, cfg)
        config = transformers.AutoConfig.for_model(**cfg)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
        real = sum(p.numel() for p in model.parameters())
        assert count_params(arch) == real == expected
    assert 30_697_345_280 - 28_737_546_240 - 1_409_286_144 - 5_376 == 10 * (
        534_009_856 - 478_959_104
    )
    assert (arch.full_head_dim, arch.full_kv_heads, arch.full_values_are_keys) == (512, 16, False)


@pytest.mark.parametrize(
    "changes",
    [
        {"full_head_dim": 64, "full_kv_heads": 1, "full_values_are_keys": True},
        {"full_head_dim": 64, "full_kv_heads": 4},
        {"full_values_are_keys": True},
    ],
)
def test_tiny_global_shapes_build_the_model_measured(changes):
    """The config ftmem measure builds for global layers of their own shape: each
    layer's attention as the Architecture lays it out (Gemma4TextAttention reads
    per_layer_config; without attention_k_eq_v, num_global_key_value_heads is not read,
    so the overrides are written out)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    arch = tiny("gemma4", sliding_window=16, sliding_layers=1, **changes)
    kw = get("gemma4").config.build(arch)
    config = transformers.CONFIG_MAPPING["gemma4_text"](**kw, vocab_size=arch.vocab_size)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    real = {n: tuple(p.shape) for n, p in model.named_parameters()}
    attention = {n: s for n, s in real.items() if ".self_attn." in n}
    from ftmem.arch import layout, param_path

    lay = layout(arch)
    laid = {
        param_path(arch, i, p.name): p.shape
        for i in range(arch.num_layers)
        for p in lay.block
        if p.in_block(i) and ".self_attn." in f".{p.name}"
    }
    assert laid == attention
    assert count_params(arch) == sum(p.numel() for p in model.parameters())
    assert ("model.layers.1.self_attn.v_proj.weight" in real) != arch.full_values_are_keys


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"objective": "grpo", "method": "lora", "seq_len": 1024}, "GRPO"),
        ({"method": "prefix-tuning"}, "--method prefix-tuning"),
        ({"method": "adaption-prompt"}, "--method adaption-prompt"),
        ({"generate_batch_size": 2, "generate_len": 32}, "generation after the step"),
        ({"framework": "torchtune"}, "--framework torchtune"),
        ({"framework": "unsloth", "method": "lora"}, "--framework unsloth"),
        ({"method": "partial", "trainable_modules": "layers.1.mlp"}, "--method partial"),
        ({"method": "freeze", "trainable_layers": 2}, "all but the top 2 layers"),
        ({"method": "freeze"}, "all but the top 2 layers"),
    ],
)
def test_what_reads_one_attention_width_is_refused(settings, words):
    """Beside the blocks' walk, what takes one attention width for every layer (a
    generation's KV cache, prefixes, gated prompts) is refused with global layers of
    their own shape, as are serving and tensor or context parallelism; so is training
    layers picked below the top one (the model interleaves the types, ftmem keeps their
    counts)."""
    from ftmem.errors import InvalidInputError
    from ftmem.estimate import estimate_step
    from ftmem.run import RunConfig

    arch = tiny("gemma4", num_layers=3, sliding_window=16, sliding_layers=2, full_head_dim=64)
    with pytest.raises(InvalidInputError, match=words):
        estimate_step(arch, RunConfig(**{"batch_size": 1, "seq_len": 64, **settings}))


def test_serving_and_parallel_are_refused():
    from ftmem.errors import InvalidInputError
    from ftmem.estimate import estimate_step
    from ftmem.parallel import ParallelConfig
    from ftmem.run import RunConfig
    from ftmem.serve import ServeConfig, estimate_serving

    arch = tiny("gemma4", full_values_are_keys=True)
    with pytest.raises(InvalidInputError, match="ftmem serve"):
        estimate_serving(arch, ServeConfig())
    par = ParallelConfig(gpus=2, tp=2)
    with pytest.raises(InvalidInputError, match="tensor or context parallelism"):
        estimate_step(arch, RunConfig(batch_size=1, seq_len=64), par=par)


def test_other_families_have_one_attention_shape():
    with pytest.raises(ValueError, match="full-attention layers have their own shape"):
        tiny("gemma3", full_head_dim=64)


def test_cli_refuses_in_one_line(tmp_path, capsys):
    """The whole-model gemma4 config (image and audio encoders) and the MoE block: exit
    2, nothing on stdout, one line on stderr."""
    whole = {"model_type": "gemma4", "text_config": DENSE}
    moe = {**B31, "enable_moe_block": True}
    for cfg, words in ((whole, "image and audio encoders"), (moe, "enable_moe_block")):
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(SystemExit) as exit_info:
            main(["estimate", str(tmp_path)])
        out, err = capsys.readouterr()
        assert exit_info.value.code == 2
        assert out == ""
        assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"transformers_version": "4.57.0"}, "as of 5.25.0"),
        ({"grad_ckpt": True, "activation_offload": True}, "with offloaded activations"),
        ({"grad_ckpt": True, "framework": "torchtune"}, "torchtune's gradient checkpointing"),
        ({"grad_ckpt": True, "framework": "unsloth", "method": "lora"}, "unsloth's"),
    ],
)
def test_unmeasured_releases_and_checkpointing_are_refused(settings, words):
    """Gemma 4's code was read at transformers 5.25, and its stored keys and values
    measured under transformers' own non-reentrant checkpoint: an earlier release, a
    framework's own checkpointing and offloaded checkpointed activations are refused."""
    from ftmem.errors import InvalidInputError
    from ftmem.estimate import estimate_step
    from ftmem.run import RunConfig

    with pytest.raises(InvalidInputError, match=words):
        estimate_step(tiny("gemma4"), RunConfig(batch_size=1, seq_len=64, **settings))


def test_config_json_as_transformers_writes_it(tmp_path):
    """A config.json that transformers saved (to_json_string): the global layers'
    shape as per_layer_config under zero-padded indices ("05"), global_head_dim and
    num_global_key_value_heads written as null; read back to the same shape and count."""
    transformers = pytest.importorskip("transformers")
    for cfg, kv in ((B31, 4), ({**B31, "attention_k_eq_v": False}, 16)):
        saved = transformers.AutoConfig.for_model(**cfg).to_json_string()
        assert '"05"' in saved
        (tmp_path / "config.json").write_text(saved)
        arch = resolve_model(str(tmp_path))
        assert (arch.full_head_dim, arch.full_kv_heads) == (512, kv)
        assert arch.full_values_are_keys == cfg["attention_k_eq_v"]
        assert count_params(arch) == count_params(_arch(tmp_path, cfg))
