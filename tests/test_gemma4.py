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
    ({"hidden_size_per_layer_input": 256}, "per-layer inputs"),
    # null: Gemma4TextConfig's strict int field refuses it (a TypeError in transformers)
    ({"hidden_size_per_layer_input": None}, "hidden_size_per_layer_input must be an integer"),
    ({"hidden_size_per_layer_input": 0, "num_kv_shared_layers": 0}, None),
    ({"num_kv_shared_layers": 20}, "key/value sharing"),
    ({"attention_k_eq_v": True}, "attention_k_eq_v"),
    ({"enable_moe_block": True}, "enable_moe_block"),
    ({"global_head_dim": 512}, "global_head_dim 512, head_dim 256"),
    # as transformers writes config.json: the global layers' overrides, which it applies
    # over global_head_dim
    ({"per_layer_config": {"59": {"head_dim": 512}}}, 'layer "59"'),
    ({"per_layer_config": {"59": {"head_dim": 256}}, "global_head_dim": 512}, None),
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


def test_config_class_defaults_are_refused(tmp_path):
    """Gemma4TextConfig's defaults switch per-layer inputs on (256) and make global heads
    512 wide: a config.json that leaves them out is refused, not estimated without them."""
    bare = {k: v for k, v in DENSE.items() if k != "hidden_size_per_layer_input"}
    with pytest.raises(ConfigError, match="hidden_size_per_layer_input 256"):
        _arch(tmp_path, bare)
    bare = {k: v for k, v in DENSE.items() if k != "global_head_dim"}
    with pytest.raises(ConfigError, match="global_head_dim 512"):
        _arch(tmp_path, bare)


def test_cli_refuses_in_one_line(tmp_path, capsys):
    """The whole-model gemma4 config (image and audio encoders) and the 31B's k = v
    global layers: exit 2, nothing on stdout, one line on stderr."""
    whole = {"model_type": "gemma4", "text_config": DENSE}
    k_eq_v = {**DENSE, "attention_k_eq_v": True}
    for cfg, words in ((whole, "image and audio encoders"), (k_eq_v, "attention_k_eq_v")):
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
