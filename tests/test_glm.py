"""GLM (model_type ``glm``, transformers' GlmForCausalLM: THUDM/glm-4-9b-hf): the preset
counts what transformers allocates for GlmConfig's defaults (its "glm-4-9b-chat style
configuration", transformers 5.24 models/glm/configuration_glm.py lines 55-76), and a
hand derivation of the count."""

from __future__ import annotations

import pytest

from ftmem.arch import count_params
from ftmem.presets import get_model
from tests.conftest import assert_transformers_count

# configuration_glm.py (transformers 5.24) lines 55-73 and 76, spelled out
GLM_4_9B = {
    "model_type": "glm",
    "vocab_size": 151552,
    "hidden_size": 4096,
    "intermediate_size": 13696,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1.5625e-07,
    "tie_word_embeddings": False,
    "attention_bias": True,
    "partial_rotary_factor": 0.5,
}


def test_count_is_transformers_count():
    """GlmForCausalLM built on the meta device from the config counts what ftmem counts,
    and the preset says what the config says."""
    arch = assert_transformers_count(GLM_4_9B, "glm-4-9b")
    assert arch.rotary_size == 64  # half of each 128-wide head
    assert arch.norms_per_block == 2  # input_layernorm, post_attention_layernorm only


def test_defaults_are_glm_config_defaults():
    """The spelled-out values are GlmConfig's own defaults (a no-argument config)."""
    transformers = pytest.importorskip("transformers")
    defaults = transformers.GlmConfig()
    for key, value in GLM_4_9B.items():
        if key == "partial_rotary_factor":
            assert defaults.rope_parameters[key] == value
        elif key != "model_type":
            assert getattr(defaults, key) == value, key


def test_glm_4_9b_by_hand():
    """Two RMSNorms a block (GLM-4 has four), q/k/v biases, a fused gate_up of 2 x 13,696."""
    V, h, L, f, kv = 151552, 4096, 40, 13696, 2 * 128
    attention = 2 * h * h + 2 * h * kv + h + 2 * kv  # q, o; k, v; q and k/v biases
    block = attention + 3 * h * f + 2 * h
    assert count_params(get_model("glm-4-9b")) == 2 * V * h + h + L * block == 9_399_951_360
