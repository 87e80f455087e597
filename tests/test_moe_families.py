"""The MoE families of stop 49 (GLM-4.7-Flash, ...): their config.json read as
transformers 5.25 builds the model (parameter counts on the meta device), and what
they refuse rather than mis-read."""

from __future__ import annotations

import pytest

from ftmem.arch import count_params
from ftmem.errors import ConfigError
from ftmem.sources import resolve_model
from tests.family_configs import read_config, transformers_count

# zai-org/GLM-4.7-Flash's config.json fields (presets/models/glm-4.7-flash.yaml says where from)
GLM47_FLASH = {
    "model_type": "glm4_moe_lite",
    "vocab_size": 154880,
    "hidden_size": 2048,
    "intermediate_size": 10240,
    "moe_intermediate_size": 1536,
    "num_hidden_layers": 47,
    "num_attention_heads": 20,
    "num_key_value_heads": 20,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "attention_bias": False,
    "max_position_embeddings": 202752,
    "rope_theta": 1000000.0,
    "partial_rotary_factor": 1.0,
    "q_lora_rank": 768,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 192,
    "qk_rope_head_dim": 64,
    "v_head_dim": 256,
    "n_routed_experts": 64,
    "n_shared_experts": 1,
    "num_experts_per_tok": 4,
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.8,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "tie_word_embeddings": False,
}


def test_glm47_flash_counts_as_transformers_builds_it(tmp_path):
    """GLM-4.7-Flash: DeepSeek-V3's latent attention and experts (one shared, the first
    block dense): 29,943,390,976 on the meta device (the card's "30B"; derived by hand in
    the preset), and the preset the same."""
    arch = read_config(tmp_path, GLM47_FLASH)
    assert (arch.head_dim, arch.rotary_dim, arch.v_head_dim) == (256, 64, 256)
    assert (arch.dense_layers, arch.shared_experts_size, arch.router_renormalises) == (
        1,
        1536,
        True,
    )
    assert count_params(arch) == transformers_count(GLM47_FLASH) == 29_943_390_976
    assert count_params(resolve_model("glm-4.7-flash")) == count_params(arch)


def test_glm4_moe_lite_dense_blocks_are_mlp_layer_types(tmp_path):
    """Glm4MoeLiteDecoderLayer builds its MLP from mlp_layer_types and reads no
    first_k_dense_replace: two dense blocks listed are two blocks counted, whatever
    first_k_dense_replace says; without the list, the class's one dense block."""
    small = {**GLM47_FLASH, "num_hidden_layers": 4, "hidden_size": 256, "vocab_size": 1000}
    listed = {**small, "mlp_layer_types": ["dense", "dense", "sparse", "sparse"]}
    arch = read_config(tmp_path, listed)
    assert arch.dense_layers == 2
    assert count_params(arch) == transformers_count(listed)
    bare = {**small, "first_k_dense_replace": 3}
    arch = read_config(tmp_path, bare)
    assert arch.dense_layers == 1
    assert count_params(arch) == transformers_count(bare)


def test_glm4_moe_lite_takes_its_config_class_defaults(tmp_path):
    """A config.json that leaves the latent attention's and the experts' keys out gets
    Glm4MoeLiteConfig's defaults, as transformers builds it."""
    transformers = pytest.importorskip("transformers")
    from ftmem.families.glm4_moe_lite import DEFAULTS

    bare = {k: v for k, v in GLM47_FLASH.items() if k not in DEFAULTS}
    bare.update(num_hidden_layers=3, hidden_size=256, vocab_size=1000)
    config = transformers.AutoConfig.for_model(**bare)
    for key, value in DEFAULTS.items():
        if key != "first_k_dense_replace":  # (read by nothing: mlp_layer_types's default)
            assert getattr(config, key) == value, key
    assert config.mlp_layer_types == ["dense", "sparse", "sparse"]
    assert count_params(read_config(tmp_path, bare)) == transformers_count(bare)


def test_glm4_moe_lite_refuses_dense_blocks_after_sparse_ones(tmp_path):
    """ftmem models a stack whose dense blocks come first."""
    cfg = {**GLM47_FLASH, "num_hidden_layers": 3, "mlp_layer_types": ["sparse", "dense", "sparse"]}
    with pytest.raises(ConfigError, match="dense block after a sparse one"):
        read_config(tmp_path, cfg)


def test_glm4_moe_lite_refuses_a_partial_rotary_transformers_cannot_run(tmp_path):
    """partial_rotary_factor 0.5 narrows the cos/sin table (head_dim is qk_rope_head_dim
    there) below the rotated slice: transformers' forward fails, and ftmem refuses."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tiny = dict(
        model_type="glm4_moe_lite",
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=8,
        n_routed_experts=4,
        num_experts_per_tok=2,
        partial_rotary_factor=0.5,
    )
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**tiny))
    with pytest.raises(RuntimeError, match="size of tensor"):
        model(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"partial_rotary_factor 0\.5"):
        read_config(tmp_path, tiny)


# ibm-granite/granite-3.1-3b-a800m-instruct's config.json fields
# (presets/models/granite-3.1-3b-a800m.yaml says where from)
GRANITE31_3B_A800M = {
    "model_type": "granitemoe",
    "hidden_act": "silu",
    "hidden_size": 1536,
    "intermediate_size": 512,
    "max_position_embeddings": 131072,
    "num_attention_heads": 24,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 40,
    "rope_theta": 10000000.0,
    "tie_word_embeddings": True,
    "vocab_size": 49155,
}


def test_granite31_moe_counts_as_transformers_builds_it(tmp_path):
    """Granite-3.1-3B-A800M: 40 experts under a bare (E, h) router, embeddings tied:
    3,298,793,472 on the meta device (the card's "3.3B"; derived by hand in the preset),
    the preset the same."""
    arch = read_config(tmp_path, GRANITE31_3B_A800M)
    assert (arch.num_experts, arch.experts_per_token, arch.shared_experts_size) == (40, 8, 0)
    assert count_params(arch) == transformers_count(GRANITE31_3B_A800M) == 3_298_793_472
    assert count_params(resolve_model("granite-3.1-3b-a800m")) == count_params(arch)


@pytest.mark.parametrize("width", [0, 256])
def test_granitemoeshared_counts_its_shared_mlp(tmp_path, width):
    """GraniteMoE-Shared: a gated MLP (fused input_linear, output_linear) beside the
    experts, none where shared_intermediate_size is 0 (its config class's default)."""
    cfg = {
        **GRANITE31_3B_A800M,
        "model_type": "granitemoeshared",
        "num_hidden_layers": 2,
        "vocab_size": 1000,
    }
    if width:
        cfg["shared_intermediate_size"] = width
    arch = read_config(tmp_path, cfg)
    assert arch.shared_experts_size == width
    assert count_params(arch) == transformers_count(cfg)


@pytest.mark.parametrize("model_type", ["granitemoe", "granitemoeshared"])
def test_granite_moe_refuses_its_load_balancing_loss(tmp_path, model_type):
    """The load-balancing loss over GraniteMoE's fp32 router logits is not measured."""
    cfg = {**GRANITE31_3B_A800M, "model_type": model_type, "output_router_logits": True}
    with pytest.raises(ConfigError, match="output_router_logits"):
        read_config(tmp_path, cfg)


def test_granite_moe_router_keeps_an_fp32_top_k_softmax():
    """GraniteMoeTopKRouter on bf16 weights: the softmax over the top-k logits keeps its
    fp32 output (what Family.router_topk_softmax_fp32 counts), the routing weights come
    out in bf16; measured on the module's autograd graph."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.granitemoe.configuration_granitemoe import GraniteMoeConfig
    from transformers.models.granitemoe.modeling_granitemoe import GraniteMoeTopKRouter

    config = GraniteMoeConfig(hidden_size=16, num_local_experts=8, num_experts_per_tok=2)
    router = GraniteMoeTopKRouter(config).to(torch.bfloat16)
    torch.nn.init.normal_(router.weight)
    x = torch.randn(5, 16, dtype=torch.bfloat16, requires_grad=True)
    _, weights, _ = router(x)
    assert weights.dtype == torch.bfloat16
    kept = []
    node = weights.grad_fn
    while node is not None:
        kept += [
            getattr(node, name)
            for name in dir(node)
            if name.startswith("_saved_") and isinstance(getattr(node, name), torch.Tensor)
        ]
        node = node.next_functions[0][0] if node.next_functions else None
    softmax_out = [t for t in kept if t.shape == (5, 2) and t.is_floating_point()]
    assert [t.dtype for t in softmax_out] == [torch.float32]


def _live_saved_bytes(out, exclude: set[int]) -> int:
    """Bytes of the distinct storages the autograd graph behind ``out`` keeps (its nodes'
    saved tensors, a custom Function's too), but ``exclude``'s (parameters, the input)."""
    torch = pytest.importorskip("torch")
    seen: dict[int, int] = {}
    stack, visited = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        kept = []
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                kept += value if isinstance(value, tuple) else [value]
        if hasattr(node, "saved_tensors"):  # (a custom autograd Function's)
            kept += list(node.saved_tensors)
        for t in kept:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in exclude:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        stack += [fn for fn, _ in node.next_functions]
    return sum(seen.values())


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("jitter", [0.0, 0.01])
def test_phimoe_sparsemixer_keeps_what_the_router_model_counts(dtype, jitter):
    """PhimoeTopKRouter in training (the sparsemixer, T = 150 tokens, E = 8 experts): what
    its graph keeps is MoE.router_saved's count in the logits' dtype (two masks, two
    softmaxes, two picks, two multipliers), plus with input jitter the router's own
    (T, h) noise (the block's is the other half of MoE.jitter_saved's)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.phimoe.modeling_phimoe import PhimoeTopKRouter

    from ftmem.ops.moe import MoE
    from tests.conftest import tiny

    arch = tiny("phimoe")
    torch_dtype, e = {"fp32": (torch.float32, 4), "bf16": (torch.bfloat16, 2)}[dtype]
    T, h = 150, arch.hidden_size
    config = transformers.AutoConfig.for_model(
        "phimoe",
        hidden_size=h,
        num_local_experts=arch.num_experts,
        num_experts_per_tok=2,
        input_jitter_noise=jitter,
    )
    torch.manual_seed(0)
    router = PhimoeTopKRouter(config).to(torch_dtype).train()
    router.weight.requires_grad_(False)
    x = torch.randn(T, h, dtype=torch_dtype, requires_grad=True)
    hidden = x.clone()  # (a non-leaf input, as the norm's output; clone keeps nothing)
    _, weights, picks = router(hidden)
    assert weights.dtype == torch_dtype and tuple(picks.shape) == (T, 2)
    exclude = {t.untyped_storage().data_ptr() for t in (x, hidden, router.weight)}
    kept = _live_saved_bytes(weights, exclude)
    _, counted = MoE.router_saved(arch, T, e)
    assert kept == counted + (T * h * e if jitter else 0)


# Phi-3.5-MoE's shapes: the config.json fields a public script builds PhiMoEConfig from
# (code index file 7043489506: hidden 4096, intermediate 6400, 32 layers, 32 heads, 8 KV
# heads, 16 experts, top-2, input_jitter_noise 0.01) and mlx-community's trimmed copy
# (54525692000: vocabulary 32064); biases on as in a Phi-3.5-MoE test config (70217094165)
PHI35_MOE = {
    "model_type": "phimoe",
    "vocab_size": 32064,
    "hidden_size": 4096,
    "intermediate_size": 6400,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 16,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 131072,
    "input_jitter_noise": 0.01,
    "attention_bias": True,
    "lm_head_bias": True,
    "tie_word_embeddings": False,
}


def test_phi35_moe_counts_as_transformers_builds_it(tmp_path):
    """Phi-3.5-MoE: LayerNorms with biases, biased attention and LM head, 16 experts:
    41,873,153,344 on the meta device (the card's "41.9B")."""
    arch = read_config(tmp_path, PHI35_MOE)
    assert (arch.norm, arch.head_bias, arch.input_jitter, arch.attention_out_bias) == (
        "layernorm",
        True,
        True,
        True,
    )
    assert count_params(arch) == transformers_count(PHI35_MOE) == 41_873_153_344


def test_phimoe_defaults_have_no_head_bias_nor_jitter(tmp_path):
    """PhimoeConfig's defaults: no LM head bias, no input jitter, no attention biases."""
    cfg = {
        k: v
        for k, v in PHI35_MOE.items()
        if k not in ("input_jitter_noise", "attention_bias", "lm_head_bias")
    }
    cfg.update(num_hidden_layers=2, vocab_size=1000)
    arch = read_config(tmp_path, cfg)
    assert (arch.head_bias, arch.input_jitter, arch.attention_qkv_bias) == (False, False, False)
    assert count_params(arch) == transformers_count(cfg)


def test_phimoe_routes_two_experts_whatever_top_k_says(tmp_path):
    """sparsemixer takes top_k and never reads it: two experts a token; another
    num_experts_per_tok is refused rather than counted."""
    with pytest.raises(ConfigError, match="num_experts_per_tok 4"):
        read_config(tmp_path, {**PHI35_MOE, "num_experts_per_tok": 4})


def test_peft_all_linear_fails_on_phimoe_and_ftmem_refuses_it():
    """peft 0.21.2 wraps PhimoeTopKRouter (an nn.Linear) in a LoRA layer, whose forward
    then fails on the routing tuple; ftmem refuses all-linear for it in one sentence."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from ftmem.errors import InvalidInputError
    from ftmem.estimate import estimate_step
    from ftmem.run import RunConfig
    from tests.conftest import tiny

    arch = tiny("phimoe")
    from ftmem.measure.build import hf_config

    model = transformers.AutoModelForCausalLM.from_config(hf_config(arch))
    model = peft.get_peft_model(model, peft.LoraConfig(target_modules="all-linear"))
    with pytest.raises(AttributeError, match="tuple"):
        model(torch.zeros(1, 4, dtype=torch.long))
    run = RunConfig(batch_size=1, seq_len=16, method="lora", lora_targets="all-linear")
    with pytest.raises(InvalidInputError, match="LoRA on all-linear of tiny-phimoe"):
        estimate_step(arch, run)


# Cohere2-MoE's shapes as a public loader pins North's config.json (code index file
# 70142688610), with the config class's LayerNorm and softmax router (North's own
# rms_norm_eps and sigmoid router are refused below)
COHERE2_MOE = {
    "model_type": "cohere2_moe",
    "hidden_size": 2048,
    "head_dim": 128,
    "num_hidden_layers": 49,
    "intermediate_size": 768,
    "prefix_dense_intermediate_size": 3072,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 262144,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "num_shared_experts": 0,
    "first_k_dense_replace": 1,
    "sliding_window": 4096,
    "max_position_embeddings": 500000,
}


@pytest.mark.parametrize("changes", [{}, {"num_shared_experts": 1, "first_k_dense_replace": 3}])
def test_cohere2_moe_counts_and_slides_as_transformers_builds_it(tmp_path, changes):
    """The dense prefix (first_k_dense_replace, prefix_dense_intermediate_size), the
    shared experts and the sliding layers of Cohere2MoeConfig.__post_init__'s layer_types,
    read as transformers builds them (meta device)."""
    transformers = pytest.importorskip("transformers")
    cfg = {**COHERE2_MOE, "num_hidden_layers": 9, "vocab_size": 1000, **changes}
    arch = read_config(tmp_path, cfg)
    config = transformers.AutoConfig.for_model(**cfg)
    assert arch.dense_layers == config.mlp_layer_types.count("dense")
    assert arch.sliding_layers == config.layer_types.count("sliding_attention")
    assert (arch.norms_per_block, arch.parallel_attn_mlp) == (1, True)
    assert count_params(arch) == transformers_count(cfg)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"rms_norm_eps": 1e-5}, "rms_norm_eps"), ({"expert_selection_fn": "sigmoid"}, "sigmoid")],
)
def test_cohere2_moe_refuses_what_is_not_measured(tmp_path, changes, message):
    """North's RMSNorms and sigmoid router are not measured: refused in one sentence."""
    with pytest.raises(ConfigError, match=message):
        read_config(tmp_path, {**COHERE2_MOE, **changes})
