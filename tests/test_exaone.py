"""EXAONE 3.0 / 3.5 (model_type "exaone"): transformers 5.24 builds LlamaForCausalLM for
it (models/auto/modeling_auto.py lines 176, 829) from an ExaoneConfig whose config.json
keys are GPT-2's (configuration_exaone.py attribute_map, lines 83-87). Parameter counts
of configs written with those keys, against transformers on the meta device; the module
names LoRA targets, against the model transformers builds."""

from __future__ import annotations

from typing import Any

import pytest

from ftmem.arch import count_params
from ftmem.families import by_model_type
from ftmem.presets import get_model
from ftmem.sources import architecture_from_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# a small config.json as EXAONE 3.5's are written (num_layers, layer_norm_epsilon,
# activation_function, rope_theta/rope_scaling, tie_word_embeddings), at tiny widths
SMALL: dict[str, Any] = dict(
    model_type="exaone",
    vocab_size=320,
    hidden_size=96,
    intermediate_size=160,
    num_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=24,
    activation_function="silu",
    layer_norm_epsilon=1e-5,
    rope_theta=1000000.0,
    rope_scaling={
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    max_position_embeddings=32768,
    tie_word_embeddings=False,
    eos_token_id=1,
)


def _model(cfg: dict[str, Any]) -> Any:
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def _numel(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"tie_word_embeddings": True},  # the tied head
        {"num_key_value_heads": 4, "head_dim": 32},  # MHA, a head wider than hidden / heads
        {"attention_bias": True, "mlp_bias": True},
    ],
    ids=["untied", "tied", "mha-wide-head", "biases"],
)
def test_parameter_count_equals_transformers(changes: dict[str, Any]):
    cfg = {**SMALL, **changes}
    arch = architecture_from_config(cfg, "exaone-small", "test")
    model = _model(cfg)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert count_params(arch) == _numel(model)


def test_exaone_keys_are_read_as_llamas():
    arch = architecture_from_config(SMALL, "exaone-small", "test")
    assert arch.family == "exaone"
    assert arch.num_layers == 3  # from num_layers
    assert arch.head_size == 24
    assert not arch.tie_embeddings
    gelu = architecture_from_config({**SMALL, "activation_function": "gelu_new"}, "e", "test")
    assert gelu.activation == "gelu_tanh"  # from activation_function


def test_measure_builds_the_same_model():
    """The kwargs ``ftmem measure`` gives ExaoneConfig build the model the config.json does."""
    arch = architecture_from_config(SMALL, "exaone-small", "test")
    kwargs = by_model_type()["exaone"].config.build(arch)
    built = _model({"model_type": "exaone", "vocab_size": arch.vocab_size, **kwargs})
    assert _numel(built) == _numel(_model(SMALL))
    assert len(built.model.layers) == 3


def test_module_names_are_llamas():
    """The checkpoints' transformer.h.N.attn.attention.q_proj are renamed on load
    (conversion_mapping.py lines 1315-1326): the model's modules are Llama's names."""
    names = by_model_type()["exaone"].names
    modules = dict(_model(SMALL).named_modules())
    block = f"{names.blocks}.0"
    for part in (*names.attention.values(), *names.mlp.values(), *names.norms[2]):
        assert f"{block}.{part}" in modules
    assert names.embedding in modules and names.final_norm in modules


# --- the shipped presets (presets/models/exaone-*.yaml) --------------------------------

EXAONE_PRESETS = (
    "exaone-3.0-7.8b",
    "exaone-3.5-2.4b",
    "exaone-3.5-7.8b",
    "exaone-3.5-32b",
    "exaone-4.0-1.2b",
    "exaone-4.0-32b",
)


def _built_from_preset(preset_id: str) -> tuple[Any, Any]:
    """The preset and the model transformers builds (on meta) from the kwargs ``ftmem
    measure`` gives its family's config class."""
    arch = get_model(preset_id)
    family = by_model_type()[arch.family]
    cfg = {"model_type": arch.family, "vocab_size": arch.vocab_size, **family.config.build(arch)}
    cfg["tie_word_embeddings"] = arch.tie_embeddings
    return arch, _model(cfg)


@pytest.mark.parametrize("preset_id", EXAONE_PRESETS)
def test_preset_count_equals_transformers(preset_id: str):
    arch, model = _built_from_preset(preset_id)
    assert count_params(arch) == _numel(model)


def test_the_hybrid_preset_slides_three_layers_in_four():
    """EXAONE-4.0-32B: Exaone4Config's layer_types from sliding_window_pattern 4 (every
    4th layer global, configuration_exaone4.py __post_init__) are the preset's 48 of 64."""
    arch, model = _built_from_preset("exaone-4.0-32b")
    types = model.config.layer_types
    assert types.count("sliding_attention") == arch.sliding_layers == 48
    assert model.config.sliding_window == arch.sliding_window == 4096


@pytest.mark.parametrize(
    ("preset_id", "card_billions"),
    [
        # "Number of Parameters (without embeddings)" on the model cards
        # (huggingface.co/LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct, .../EXAONE-3.5-7.8B-Instruct)
        ("exaone-3.5-2.4b", "2.14"),
        ("exaone-3.5-7.8b", "6.98"),
    ],
)
def test_the_model_cards_count_without_embeddings(preset_id: str, card_billions: str):
    arch = get_model(preset_id)
    embeddings = arch.vocab_size * arch.hidden_size * (1 if arch.tie_embeddings else 2)
    assert f"{(count_params(arch) - embeddings) / 1e9:.2f}" == card_billions
