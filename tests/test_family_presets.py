"""The presets of issue 17's families (Granite, StarCoder2, OLMo 2, Phi-3, StableLM-2,
Gemma 3, DeepSeek-V2, GLM-4-0414, Cohere): each published config.json, as read where the
preset's comment says, counts what transformers allocates for it on the meta device, and
the preset says what the config says. The configs keep the values that shape tensors or
that the family reads; the dropouts they ship are left out (presets train without
dropout), as are token ids."""

from __future__ import annotations

import pytest

from ftmem.arch import count_params
from ftmem.presets import get_model
from tests.conftest import assert_transformers_count

GRANITE = dict(
    model_type="granite",
    vocab_size=49155,
    num_hidden_layers=40,
    num_attention_heads=32,
    num_key_value_heads=8,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
    tie_word_embeddings=True,
    embedding_multiplier=12.0,
    residual_multiplier=0.22,
    rms_norm_eps=1e-05,
)
STARCODER2 = dict(
    model_type="starcoder2",
    vocab_size=49152,
    hidden_act="gelu_pytorch_tanh",
    norm_type="layer_norm",
    norm_epsilon=1e-05,
    mlp_type="default",
    use_bias=True,
    max_position_embeddings=16384,
    sliding_window=4096,
)
OLMO2 = dict(
    model_type="olmo2",
    vocab_size=100352,
    hidden_size=5120,
    hidden_act="silu",
    attention_bias=False,
    max_position_embeddings=4096,
    rms_norm_eps=1e-06,
    rope_theta=500000,
    tie_word_embeddings=False,
)
COHERE = dict(
    model_type="cohere",
    vocab_size=256000,
    hidden_act="silu",
    attention_bias=False,
    layer_norm_eps=1e-05,
    logit_scale=0.0625,
    use_qk_norm=False,
)

CONFIGS = {
    # ibm-granite/granite-3.0-2b-instruct (blame, main)
    "granite-3.0-2b": dict(
        GRANITE,
        hidden_size=2048,
        intermediate_size=8192,
        attention_multiplier=0.015625,
        logits_scaling=8.0,
        max_position_embeddings=4096,
        rope_theta=10000,
    ),
    # ibm-granite/granite-3.1-8b-instruct (blame, commit 96fedcdf)
    "granite-3.1-8b": dict(
        GRANITE,
        hidden_size=4096,
        intermediate_size=12800,
        attention_multiplier=0.0078125,
        logits_scaling=16.0,
        max_position_embeddings=131072,
        rope_theta=10000000.0,
    ),
    # bigcode/starcoder2-3b (refs/pr/3): no tie_word_embeddings key, so tied
    "starcoder2-3b": dict(
        STARCODER2,
        hidden_size=3072,
        intermediate_size=12288,
        num_hidden_layers=30,
        num_attention_heads=24,
        num_key_value_heads=2,
        rope_theta=999999.4420358813,
    ),
    # bigcode/starcoder2-15b, as OpenVINO/starcoder2-15b-int8-ov copies it
    "starcoder2-15b": dict(
        STARCODER2,
        hidden_size=6144,
        intermediate_size=24576,
        num_hidden_layers=40,
        num_attention_heads=48,
        num_key_value_heads=4,
        rope_theta=100000,
        tie_word_embeddings=False,
    ),
    # allenai/OLMo-2-1124-13B (main)
    "olmo2-1124-13b": dict(
        OLMO2,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
    ),
    # allenai/OLMo-2-0325-32B (blame, main)
    "olmo2-0325-32b": dict(
        OLMO2,
        intermediate_size=27648,
        num_hidden_layers=64,
        num_attention_heads=40,
        num_key_value_heads=8,
    ),
    # microsoft/Phi-3-medium-4k-instruct (blame, commit 3da3d153)
    "phi3-medium": dict(
        model_type="phi3",
        vocab_size=32064,
        hidden_size=5120,
        intermediate_size=17920,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=10,
        hidden_act="silu",
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        rms_norm_eps=1e-05,
        rope_scaling=None,
        rope_theta=10000.0,
        sliding_window=2047,
        tie_word_embeddings=False,
    ),
    # stabilityai/stablelm-2-1_6b-chat (blame, main); Xenova/stablelm-2-1_6b's copy of the base
    "stablelm-2-1_6b": dict(
        model_type="stablelm",
        vocab_size=100352,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=32,
        hidden_act="silu",
        layer_norm_eps=1e-05,
        max_position_embeddings=4096,
        partial_rotary_factor=0.25,
        rope_theta=10000,
        tie_word_embeddings=False,
        use_qkv_bias=True,
    ),
    # google/gemma-3-270m, as its finetunes' configs copy it
    "gemma3-270m": dict(
        model_type="gemma3_text",
        vocab_size=262144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        hidden_activation="gelu_pytorch_tanh",
        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3,
        max_position_embeddings=32768,
        query_pre_attn_scalar=256,
        rms_norm_eps=1e-06,
        rope_local_base_freq=10000.0,
        rope_theta=1000000.0,
        sliding_window=512,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
    ),
    # deepseek-ai/DeepSeek-V3's inference/configs/config_236B.json; DeepSeek-V2.5-1210's config.json
    "deepseek-v2": dict(
        model_type="deepseek_v2",
        vocab_size=102400,
        hidden_size=5120,
        intermediate_size=12288,
        moe_intermediate_size=1536,
        num_hidden_layers=60,
        num_attention_heads=128,
        num_key_value_heads=128,
        n_routed_experts=160,
        n_shared_experts=2,
        num_experts_per_tok=6,
        first_k_dense_replace=1,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        n_group=8,
        topk_group=3,
        topk_method="group_limited_greedy",
        max_position_embeddings=163840,
        tie_word_embeddings=False,
    ),
    # Glm4Config's defaults (transformers 5.25) with the glm4 finetune's max_position_embeddings
    "glm4-9b-0414": dict(
        model_type="glm4",
        vocab_size=151552,
        hidden_size=4096,
        intermediate_size=13696,
        num_hidden_layers=40,
        num_attention_heads=32,
        num_key_value_heads=2,
        head_dim=128,
        hidden_act="silu",
        attention_bias=True,
        partial_rotary_factor=0.5,
        max_position_embeddings=32768,
        rms_norm_eps=1e-05,
        tie_word_embeddings=False,
    ),
    # mlc-llm's model_preset.py "aya-23" (CohereForAI/aya-23-8B)
    "aya-23-8b": dict(
        COHERE,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=10000,
    ),
    # CohereForAI/c4ai-command-r-plus, as FriendliAI's, alpindale's and AMD's copies give it
    "command-r-plus": dict(
        COHERE,
        hidden_size=12288,
        intermediate_size=33792,
        num_hidden_layers=64,
        num_attention_heads=96,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=75000000.0,
        logit_scale=0.8333333333333334,
        use_qk_norm=True,
    ),
    # CohereForAI/c4ai-command-r-plus-08-2024, as unsloth's 4-bit re-upload copies it
    "command-r-plus-08-2024": dict(
        COHERE,
        hidden_size=12288,
        intermediate_size=33792,
        num_hidden_layers=64,
        num_attention_heads=96,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=8000000,
        logit_scale=0.8333333333333334,
        use_qk_norm=True,
    ),
    # stabilityai/stablelm-2-12b (blob 74dd3f5: transformers' own implementation)
    "stablelm-2-12b": dict(
        model_type="stablelm",
        vocab_size=100352,
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=32,
        num_key_value_heads=8,
        hidden_act="silu",
        layer_norm_eps=1e-05,
        max_position_embeddings=4096,
        partial_rotary_factor=0.25,
        rope_theta=10000,
        tie_word_embeddings=False,
        use_qkv_bias=False,
        use_parallel_residual=True,
        qk_layernorm=True,
    ),
    # CohereForAI/c4ai-command-r-08-2024, as unsloth's re-upload copies it
    "command-r-08-2024": dict(
        COHERE,
        hidden_size=8192,
        intermediate_size=24576,
        num_hidden_layers=40,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=4000000,
    ),
}


@pytest.mark.parametrize("preset", sorted(CONFIGS))
def test_count_is_transformers_count(preset):
    """The count is what transformers 5.25 allocates for the published config (built on
    the meta device), and the preset says what the config says."""
    assert_transformers_count(CONFIGS[preset], preset)


def test_what_sets_the_sizes_apart():
    """The differences between sizes of one family that the configs above carry: the
    15B StarCoder2 unties its head where 3B ties it; OLMo 2 32B has 8 KV heads (its
    k_norm 1,024 wide) where 13B has 40; Command R 08-2024 has 8 KV heads where v01 has 64."""
    assert get_model("starcoder2-3b").tie_embeddings
    assert not get_model("starcoder2-15b").tie_embeddings
    assert (get_model("olmo2-1124-13b").kv_heads, get_model("olmo2-0325-32b").kv_heads) == (40, 8)
    assert (get_model("command-r-v01").kv_heads, get_model("command-r-08-2024").kv_heads) == (64, 8)


def test_deepseek_v2_rounds_to_the_published_total():
    """The DeepSeek-V2 paper (arXiv 2405.04434): "236B total parameters"."""
    assert round(count_params(get_model("deepseek-v2")) / 1e9) == 236


@pytest.mark.parametrize("preset", ["command-r-plus", "command-r-plus-08-2024"])
def test_command_r_plus_rounds_to_the_published_total(preset):
    """Command R+'s model cards: "104 billion parameters"; its per-head q/k norms (use_qk_norm)
    are counted, (96 + 8) x 128 per layer."""
    arch = get_model(preset)
    assert arch.qk_norm and round(count_params(arch) / 1e9) == 104
    without = arch.model_copy(update={"qk_norm": False})
    assert count_params(arch) - count_params(without) == 64 * (96 + 8) * 128


def test_stablelm_2_12b_rounds_to_the_published_total():
    """StableLM-2-12B's model card: "a 12.1 billion parameter decoder-only language model"
    (its table's exact 12,143,605,760 is 419,840 more than transformers allocates for the
    config: the difference is unexplained, see the preset). Its q/k LayerNorms are one
    bias-free module per head: (32 + 8) x 160 per layer."""
    arch = get_model("stablelm-2-12b")
    assert arch.qk_norm and round(count_params(arch) / 1e8) == 121
    without = arch.model_copy(update={"qk_norm": False})
    assert count_params(arch) - count_params(without) == 40 * (32 + 8) * 160
