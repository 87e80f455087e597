"""The presets of widely finetuned models added without a preset before (TinyLlama, Yi,
Mistral-Nemo, Mistral-Small-3, Codestral, Mixtral-8x22B, SmolLM2, Falcon3, the DeepSeek-R1
distills, Qwen2.5-Coder): each count derived by hand from the config the preset cites, and
equal to what transformers allocates for that config on the meta device. Where a model
shares a preset's shapes it is an alias of it, and the test says which numbers make it so."""

from __future__ import annotations

import pytest

from ftmem.arch import count_params
from ftmem.presets import get_model
from tests.conftest import assert_transformers_count


def _dense(V, h, L, heads, kv, f, *, head_dim=None, tied, qkv_bias=False):
    """A Llama/Mistral/Qwen2 decoder: embedding, per layer q/k/v/o (GQA, optional q/k/v
    biases), a gated MLP (3 matrices) and two RMSNorms, a final norm, an untied head."""
    d = head_dim or h // heads
    attn = h * heads * d + 2 * h * kv * d + heads * d * h
    bias = heads * d + 2 * kv * d if qkv_bias else 0
    per_layer = attn + bias + 3 * h * f + 2 * h
    return V * h + L * per_layer + h + (0 if tied else V * h)


HAND = {
    "tinyllama-1.1b": _dense(32000, 2048, 22, 32, 4, 5632, tied=False),
    "yi-34b": _dense(64000, 7168, 60, 56, 8, 20480, tied=False),
    # head_dim 128 where hidden / heads is 160: q is 5120 x 4096, o 4096 x 5120
    "mistral-nemo-12b": _dense(131072, 5120, 40, 32, 8, 14336, head_dim=128, tied=False),
    "mistral-small-24b-2501": _dense(131072, 5120, 40, 32, 8, 32768, head_dim=128, tied=False),
    "codestral-22b": _dense(32768, 6144, 56, 48, 8, 16384, tied=False),
    "smollm2-135m": _dense(49152, 576, 30, 9, 3, 1536, tied=True),
    "smollm2-360m": _dense(49152, 960, 32, 15, 5, 2560, tied=True),
    "smollm2-1.7b": _dense(49152, 2048, 24, 32, 32, 8192, tied=True),
    "falcon3-7b": _dense(131072, 3072, 28, 12, 4, 23040, head_dim=256, tied=False),
    "falcon3-10b": _dense(131072, 3072, 40, 12, 4, 23040, head_dim=256, tied=False),
    "deepseek-r1-distill-qwen-1.5b": _dense(
        151936, 1536, 28, 12, 2, 8960, tied=False, qkv_bias=True
    ),
}


def _mixtral_8x22b() -> int:
    """Eight gated experts of 3 x 6144 x 16384 and a 6144 x 8 router per layer."""
    h, L, V, f, kv, E = 6144, 56, 32768, 16384, 8 * 128, 8
    per_layer = 2 * h * h + 2 * h * kv + E * 3 * h * f + h * E + 2 * h
    return 2 * V * h + L * per_layer + h


HAND["mixtral-8x22b"] = _mixtral_8x22b()


@pytest.mark.parametrize("preset", sorted(HAND))
def test_count_by_hand(preset):
    assert count_params(get_model(preset)) == HAND[preset]


def test_hand_counts_written_out():
    """The totals the presets' comments quote (a slip in _dense would move all of them)."""
    assert HAND["tinyllama-1.1b"] == 1_100_048_384
    assert HAND["yi-34b"] == 34_388_917_248
    assert HAND["mistral-nemo-12b"] == 12_247_782_400
    assert HAND["mixtral-8x22b"] == 140_630_071_296
    assert HAND["codestral-22b"] == 22_247_282_688
    assert HAND["smollm2-135m"] == 134_515_008
    assert HAND["falcon3-7b"] == 7_455_550_464
    assert HAND["deepseek-r1-distill-qwen-1.5b"] == 1_777_088_000


LLAMA = dict(model_type="llama", hidden_act="silu", attention_bias=False, mlp_bias=False)
FALCON3 = dict(
    LLAMA, vocab_size=131072, hidden_size=3072, intermediate_size=23040,
    num_attention_heads=12, num_key_value_heads=4, head_dim=256,
    max_position_embeddings=32768, rope_theta=1000042, tie_word_embeddings=False,
)  # fmt: skip
SMOLLM2 = dict(LLAMA, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True)

# The configs as the presets' comments cite them (the values that shape tensors).
CONFIGS = {
    "tinyllama-1.1b": dict(
        LLAMA, vocab_size=32000, hidden_size=2048, intermediate_size=5632,
        num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
        max_position_embeddings=2048, tie_word_embeddings=False,
    ),
    "yi-34b": dict(
        LLAMA, vocab_size=64000, hidden_size=7168, intermediate_size=20480,
        num_hidden_layers=60, num_attention_heads=56, num_key_value_heads=8,
        max_position_embeddings=4096, rope_theta=5000000.0, tie_word_embeddings=False,
    ),
    "mistral-nemo-12b": dict(
        model_type="mistral", vocab_size=131072, hidden_size=5120, intermediate_size=14336,
        num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        hidden_act="silu", max_position_embeddings=128000, rope_theta=1000000.0,
        sliding_window=None, tie_word_embeddings=False,
    ),
    "mixtral-8x22b": dict(
        model_type="mixtral", vocab_size=32768, hidden_size=6144, intermediate_size=16384,
        num_hidden_layers=56, num_attention_heads=48, num_key_value_heads=8,
        num_local_experts=8, num_experts_per_tok=2, hidden_act="silu",
        max_position_embeddings=65536, rope_theta=1000000.0, sliding_window=None,
        tie_word_embeddings=False,
    ),
    "mistral-small-24b-2501": dict(
        model_type="mistral", vocab_size=131072, hidden_size=5120, intermediate_size=32768,
        num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        hidden_act="silu", max_position_embeddings=32768, rope_theta=100000000.0,
        sliding_window=None, tie_word_embeddings=False,
    ),
    "codestral-22b": dict(
        model_type="mistral", vocab_size=32768, hidden_size=6144, intermediate_size=16384,
        num_hidden_layers=56, num_attention_heads=48, num_key_value_heads=8,
        hidden_act="silu", max_position_embeddings=32768, rope_theta=1000000.0,
        sliding_window=None, tie_word_embeddings=False,
    ),
    "smollm2-135m": dict(
        SMOLLM2, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000,
    ),
    "smollm2-360m": dict(
        SMOLLM2, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
        num_attention_heads=15, num_key_value_heads=5, head_dim=64, rope_theta=100000,
    ),
    "smollm2-1.7b": dict(
        SMOLLM2, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
        num_attention_heads=32, num_key_value_heads=32, head_dim=64, rope_theta=130000,
    ),
    "falcon3-7b": dict(FALCON3, num_hidden_layers=28),
    "falcon3-10b": dict(FALCON3, num_hidden_layers=40),
    "deepseek-r1-distill-qwen-1.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        hidden_act="silu", max_position_embeddings=131072, max_window_layers=21,
        rope_theta=10000, sliding_window=None, use_sliding_window=False,
        tie_word_embeddings=False,
    ),
}  # fmt: skip


@pytest.mark.parametrize("preset", sorted(CONFIGS))
def test_count_is_transformers_count(preset):
    """The cited config read as the preset counts what transformers allocates for it
    (built on the meta device), and the preset says what the config says."""
    assert_transformers_count(CONFIGS[preset], preset)


def test_every_new_preset_is_checked():
    assert set(CONFIGS) == set(HAND)


# Models whose config has a preset's shapes: an alias of that preset (the comment in
# each preset cites the config).
ALIASES = {
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": "llama3.1-8b",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": "llama3.3-70b",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": "qwen2.5-7b",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": "qwen2.5-14b",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": "qwen2.5-32b",
    "Qwen/Qwen2.5-Coder-7B-Instruct": "qwen2.5-7b",
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": "tinyllama-1.1b",
    "mistralai/Mistral-Nemo-Instruct-2407": "mistral-nemo-12b",
    "tiiuae/Falcon3-7B-Instruct": "falcon3-7b",
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": "smollm2-1.7b",
    "mistralai/Mistral-Small-Instruct-2409": "codestral-22b",
    "mistralai/Mistral-Small-24B-Base-2501": "mistral-small-24b-2501",
}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_alias_names_its_preset(alias):
    assert get_model(alias) == get_model(ALIASES[alias])


def test_distill_shapes_are_their_bases():
    """The distills' configs against the aliased presets: R1-Distill-Llama-8B is 32 x 4096
    with 8 KV heads, intermediate 14336, vocab 128256, untied (LitGPT); R1-Distill-Qwen-7B
    28 x 3584, 4 KV heads, intermediate 18944, vocab 152064, untied. Qwen2.5-Coder-7B's
    model card: "Number of Parameters: 7.61B"."""
    llama = get_model("deepseek-ai/DeepSeek-R1-Distill-Llama-8B")
    assert count_params(llama) == _dense(128256, 4096, 32, 32, 8, 14336, tied=False)
    qwen = get_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")
    assert count_params(qwen) == _dense(152064, 3584, 28, 28, 4, 18944, tied=False, qkv_bias=True)
    assert count_params(get_model("Qwen/Qwen2.5-Coder-7B")) // 10**7 == 761  # cut, not rounded


def test_r1_distill_1_5b_unties_what_qwen2_5_1_5b_ties():
    """Same blocks as Qwen2.5-1.5B; its own LM head adds vocab x hidden = 151,936 x 1,536."""
    distill = get_model("deepseek-r1-distill-qwen-1.5b")
    base = get_model("qwen2.5-1.5b")
    assert base.tie_embeddings and not distill.tie_embeddings
    assert count_params(distill) - count_params(base) == 151936 * 1536


def test_mistral_small_3_is_3_1s_language_model():
    """Mistral-Small-24B-2501's config is the text config of Mistral-Small-3.1-24B: the
    count that preset's comment gives for its language model with its own LM head."""
    text_only = get_model("mistral-small-24b-2501")
    assert count_params(text_only) == 23_572_403_200
    with_vision = get_model("mistral-small-3.1-24b")
    assert with_vision.vision is not None and text_only.vision is None


def test_yi_34b_is_the_calibration_sets_count():
    """The calibration set's Yi-34B rows give params_b 34.39 (Answer.AI FSDP+QLoRA)."""
    assert round(count_params(get_model("yi-34b")) / 1e7) == 3439


@pytest.mark.parametrize(
    ("repo_id", "preset"),
    [
        ("unsloth/DeepSeek-R1-Distill-Llama-8B-bnb-4bit", "llama3.1-8b"),
        ("unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit", "deepseek-r1-distill-qwen-1.5b"),
        ("unsloth/Mistral-Nemo-Instruct-2407-bnb-4bit", "mistral-nemo-12b"),
        ("unsloth/SmolLM2-360M-Instruct", "smollm2-360m"),
    ],
)
def test_reuploads_find_the_new_presets(repo_id, preset):
    """An offline user's re-upload names reach the new presets through their Hub aliases."""
    from ftmem.hub_names import reupload_of

    found = reupload_of(repo_id)
    assert found is not None and found.preset_id == preset
