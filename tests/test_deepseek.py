"""DeepSeek-V2/V3 (multi-head latent attention, shared and routed experts, dense first
blocks): exact parameter counts of the published configs against transformers on the
meta device, the presets against those configs, the published totals, and what is refused."""

from __future__ import annotations

import pytest

from ftmem.arch import count_params
from ftmem.errors import InvalidInputError
from ftmem.presets import get_model
from ftmem.run import RunConfig
from ftmem.serve import kv_bytes_per_token
from tests.conftest import assert_transformers_count

# the published config.json values that shape the tensors (source: each preset's URL)
LATENT = dict(kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
# DeepSeek-V2-Lite's shape, which Moonlight-16B-A3B shares
SIXTEEN_B = dict(
    hidden_size=2048,
    moe_intermediate_size=1408,
    num_hidden_layers=27,
    num_attention_heads=16,
    num_key_value_heads=16,
    n_routed_experts=64,
    n_shared_experts=2,
    num_experts_per_tok=6,
    first_k_dense_replace=1,
    q_lora_rank=None,
    **LATENT,
)
CONFIGS = {
    "deepseek-v3": dict(
        model_type="deepseek_v3",
        vocab_size=129280,
        hidden_size=7168,
        intermediate_size=18432,
        moe_intermediate_size=2048,
        num_hidden_layers=61,
        num_attention_heads=128,
        num_key_value_heads=128,
        n_routed_experts=256,
        n_shared_experts=1,
        num_experts_per_tok=8,
        first_k_dense_replace=3,
        q_lora_rank=1536,
        n_group=8,
        topk_group=4,
        max_position_embeddings=163840,
        **LATENT,
    ),
    "deepseek-v2-lite": dict(
        model_type="deepseek_v2",
        vocab_size=102400,
        intermediate_size=10944,
        topk_method="greedy",
        max_position_embeddings=163840,
        **SIXTEEN_B,
    ),
    "moonlight-16b-a3b": dict(
        model_type="deepseek_v3",
        vocab_size=163840,
        intermediate_size=11264,
        n_group=1,
        topk_group=1,
        max_position_embeddings=8192,
        **SIXTEEN_B,
    ),
}
# the totals their authors publish, rounded as published: DeepSeek-V3 technical report
# (arXiv 2412.19437) "671B total parameters"; the DeepSeek-V2-Lite model card "15.7B";
# the Moonlight-16B-A3B model card "16B" (to the digits given)
PUBLISHED = {
    "deepseek-v3": (671, 1e9),
    "deepseek-v2-lite": (157, 1e8),
    "moonlight-16b-a3b": (16, 1e9),
}


@pytest.mark.parametrize("preset", sorted(CONFIGS))
def test_count_is_transformers_count(preset):
    """The count is what transformers 5.24 allocates for the published config (built on
    the meta device), and the preset says what the config says."""
    assert_transformers_count(CONFIGS[preset], preset)


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_count_rounds_to_the_published_total(preset):
    digits, unit = PUBLISHED[preset]
    assert round(count_params(get_model(preset)) / unit) == digits


def test_latent_cache_per_token():
    """vLLM and transformers cache the latent (512) and the shared rotary key (64) per
    layer: 61 x 576 x 2 B = 70,272 B per token in bf16, not 61 x 2 x 128 x 192 x 2 B."""
    assert kv_bytes_per_token(get_model("deepseek-v3"), "bf16") == 61 * 576 * 2


def test_lora_on_all_linear_is_refused():
    """peft 0.21 turns all-linear on a transformers-5 MoE model into LoRA on the router and
    the 3-D experts and leaves the dense and shared MLPs bare: refused, not mis-estimated
    (gate/up/down on the experts: tests/test_expert_lora.py)."""
    from ftmem.methods import plan_method

    arch = get_model("deepseek-v2-lite")
    with pytest.raises(InvalidInputError, match="--lora-targets attention"):
        plan_method(arch, RunConfig(method="lora", lora_targets="all-linear"))
    plan = plan_method(arch, RunConfig(method="lora", lora_targets="attention"))
    assert {lin.leaf for lin in plan.adapted} == {
        "q_proj",
        "kv_a_proj_with_mqa",
        "kv_b_proj",
        "o_proj",
    }


def test_dense_blocks_are_counted_once_each():
    """Full finetuning trains every tensor once: the dense MLP in 3 blocks, experts in 58."""
    from ftmem.methods import plan_method

    arch = get_model("deepseek-v3")
    plan = plan_method(arch, RunConfig(method="full"))
    assert sum(g.total_numel for g in plan.groups if g.trainable) == count_params(arch)
    counts = {g.name: g.count for g in plan.groups}
    assert counts["mlp.gate_proj.weight"] == 3
    assert counts["mlp.experts.gate_up_proj"] == 58
    assert counts["self_attn.kv_b_proj.weight"] == 61


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"tp": 2}, "latent attention is not split"),
        ({"cp": 2}, "latent attention is not split"),
        ({"pp": 2}, "first 3 blocks are dense"),
        ({"strategy": "colossalai-zero1", "ep": 2}, "shared experts and dense blocks"),
    ],
)
def test_model_parallel_layouts_not_modelled_are_refused(kw, words):
    """Latent attention's TP split, a dense-then-MoE stack over pipeline stages and expert
    parallelism with shared experts are refused in one sentence, not mis-laid out."""
    from ftmem import estimate

    with pytest.raises(InvalidInputError, match=words):
        estimate("deepseek-v3", method="full", precision="bf16", gpus=8, **kw)
