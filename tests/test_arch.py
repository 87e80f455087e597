"""Parameter counts: hand derivations, and the real transformers model on the meta device."""

import pytest

from ftmem.arch import Architecture, count_params, layout
from ftmem.presets import get_model

from .conftest import TINY, TINY_SEQ2SEQ, tiny


def test_mistral_7b_by_hand():
    h, L, V, f, kv = 4096, 32, 32000, 14336, 8 * 128
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * f + 2 * h
    total = V * h + L * per_layer + h + V * h
    assert total == 7_241_732_096
    assert count_params(get_model("mistral-7b")) == total


def test_mistral_7b_later_releases_by_hand():
    # v0.2 and v0.3 keep v0.1's shapes and drop its 4096-token window (config.json
    # "sliding_window": null); v0.3 grows the vocabulary to 32,768 (embedding and head).
    h, L, f, kv = 4096, 32, 14336, 8 * 128
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * f + 2 * h
    for name, V in (("mistral-7b-v0.2", 32000), ("mistral-7b-v0.3", 32768)):
        arch = get_model(name)
        assert count_params(arch) == V * h + L * per_layer + h + V * h
        assert arch.sliding_window is None and get_model("mistral-7b").sliding_window == 4096
    assert count_params(get_model("mistral-7b-v0.3")) == 7_248_023_552


def test_mixtral_moe_by_hand():
    h, L, V, f, kv, E = 4096, 32, 32000, 14336, 1024, 8
    per_layer = 2 * h * h + 2 * h * kv + E * 3 * h * f + h * E + 2 * h
    assert count_params(get_model("mixtral-8x7b")) == 2 * V * h + L * per_layer + h


def test_gpt2_by_hand():
    h, L, V, P = 768, 12, 50257, 1024
    per_layer = (h * 3 * h + 3 * h) + (h * h + h) + (h * 4 * h + 4 * h) + (4 * h * h + h) + 4 * h
    assert count_params(get_model("gpt2")) == V * h + P * h + L * per_layer + 2 * h == 124_439_808


def test_gqa_shrinks_k_and_v_only():
    mha = tiny("llama")
    gqa = tiny("llama", num_kv_heads=1)
    diff = count_params(mha) - count_params(gqa)
    # k and v lose 3 of 4 heads' columns (head_dim 24) in each of 2 layers
    assert diff == 2 * 2 * 96 * (96 - 24)


def test_inconsistent_heads_are_rejected():
    with pytest.raises(ValueError, match="must divide num_heads"):
        tiny("llama", num_kv_heads=3)
    with pytest.raises(ValueError, match="must divide hidden_size"):
        tiny("llama", num_heads=5, num_kv_heads=5)


@pytest.mark.parametrize("family", sorted(TINY))
def test_layout_matches_transformers(family):
    """Every tensor name and shape of every block equals the real model's (DeepSeek's
    first blocks are dense, its others have experts)."""
    torch = pytest.importorskip("torch")
    from ftmem.measure.build import hf_config, model_class

    arch = tiny(family)
    with torch.device("meta"):
        model = model_class(arch).from_config(hf_config(arch, "eager"))
    real = {n: tuple(p.shape) for n, p in model.named_parameters()}
    lay = layout(arch)
    block_prefix = next(n for n in real if ".0." in n).split(".0.")[0]
    ours = {
        f"{block_prefix}.{i}.{p.name}": p.shape
        for i in range(arch.num_layers)
        for p in lay.block
        if p.in_block(i)
    }
    ours |= {p.name: p.shape for p in lay.outer}
    assert ours == real
    assert count_params(arch) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant", sorted(TINY_SEQ2SEQ))
def test_t5_layout_matches_transformers(variant):
    """Every T5 tensor (both stacks, every block) has the name and shape ftmem gives it;
    the shared embedding and a tied head are one tensor."""
    torch = pytest.importorskip("torch")
    from ftmem.arch import param_path
    from ftmem.measure.build import hf_config, model_from_config

    arch = tiny(variant)
    with torch.device("meta"):
        model = model_from_config(arch, hf_config(arch, "eager"))
    real = {n: tuple(p.shape) for n, p in model.named_parameters()}
    lay = layout(arch)
    ours = {p.name: p.shape for p in lay.outer}
    for i in range(arch.num_layers):
        ours |= {param_path(arch, i, p.name): p.shape for p in lay.block}
    assert ours == real
    assert count_params(arch) == sum(p.numel() for p in model.parameters())


def test_flan_t5_base_by_hand():
    """d_model 768, 12 heads x 64, d_ff 2048 (gated), 12 + 12 blocks, vocab 32128."""
    h, f, V, L, heads, buckets = 768, 2048, 32128, 12, 12, 32
    attention = 4 * h * h
    encoder_block = attention + 3 * h * f + 2 * h
    decoder_block = 2 * attention + 3 * h * f + 3 * h
    total = 2 * V * h + L * (encoder_block + decoder_block) + 2 * buckets * heads + 2 * h
    assert total == 247_577_856
    assert count_params(get_model("flan-t5-base")) == total


def test_architecture_rejects_unknown_fields():
    with pytest.raises(ValueError, match="extra"):
        Architecture(
            name="x",
            family="llama",
            vocab_size=1,
            hidden_size=8,
            num_layers=1,
            num_heads=1,
            intermediate_size=8,
            colour="blue",
        )


def test_qwen3_8b_by_hand():
    """Qwen3-8B: Qwen2's block without q/k/v biases, plus a head-wide RMSNorm weight on
    the queries and one on the keys in every layer (32 heads, 8 KV heads of 128)."""
    h, L, V, f, hd = 4096, 36, 151936, 12288, 128
    q, kv = 32 * hd, 8 * hd
    attention = h * q + 2 * h * kv + q * h
    per_layer = attention + 3 * h * f + 2 * h + 2 * hd
    total = 2 * V * h + L * per_layer + h  # untied head
    assert per_layer - (attention + 3 * h * f + 2 * h) == 256  # the q and k norms
    assert total == 8_190_735_360  # KerasHub's qwen3_8b_en (see the preset)
    assert count_params(get_model("qwen3-8b")) == total


def test_qwen3_0_6b_head_dim_apart_from_hidden_over_heads():
    """Qwen3-0.6B (Qwen/Qwen3-0.6B config.json): 16 heads of 128 on a 1,024-wide model,
    so q_proj is 1,024 → 2,048 and o_proj back; tied embeddings. KerasHub's
    qwen3_0.6b_en lists 596,049,920 parameters."""
    h, L, V, f, hd = 1024, 28, 151936, 3072, 128
    q, kv = 16 * hd, 8 * hd
    per_layer = 2 * h * q + 2 * h * kv + 3 * h * f + 2 * h + 2 * hd
    assert V * h + L * per_layer + h == 596_049_920
    arch = tiny("qwen3", vocab_size=V, hidden_size=h, num_layers=L, num_heads=16,
                num_kv_heads=8, head_dim=hd, intermediate_size=f)  # fmt: skip
    assert count_params(arch) == 596_049_920
    norms = [p for p in layout(arch).block if p.name.endswith(("q_norm.weight", "k_norm.weight"))]
    assert [(p.name, p.shape) for p in norms] == [
        ("self_attn.q_norm.weight", (hd,)),
        ("self_attn.k_norm.weight", (hd,)),
    ]


def test_qk_norm_needs_rms_norms():
    with pytest.raises(ValueError, match="qk_norm"):
        tiny("gpt2", qk_norm=True)


def test_olmo2_7b_by_hand():
    """OLMo-2-1124-7B: no input norms, a post-norm after attention and after the MLP, and
    q/k RMSNorms across the whole projection (4,096 wide each, not one head's 128)."""
    h, L, V, f = 4096, 32, 100352, 11008
    per_layer = 4 * h * h + 2 * h + 3 * h * f + 2 * h
    assert count_params(get_model("olmo2-1124-7b")) == 2 * V * h + L * per_layer + h


def test_phi2_by_hand():
    """Phi-2: biased q/k/v/dense and fc1/fc2, one LayerNorm per block, untied head with a
    bias of its own (vocab-sized)."""
    h, L, V, f = 2560, 32, 51200, 10240
    per_layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * h
    assert count_params(get_model("phi-2")) == V * h + (V * h + V) + L * per_layer + 2 * h


def test_command_r_by_hand():
    """Command R v01: bias-free norms (one per block and the final), tied embedding."""
    h, L, V, f = 8192, 40, 256000, 22528
    per_layer = 4 * h * h + 3 * h * f + h
    assert count_params(get_model("command-r-v01")) == V * h + L * per_layer + h
