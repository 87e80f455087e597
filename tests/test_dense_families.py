"""The dense families of stop 49 (arcee, ...): each config.json read as its transformers
config class reads it (the defaults it fills), counted as transformers builds the model
on the meta device, and what is not modelled refused in one sentence."""

from __future__ import annotations

import pytest

from ftmem.arch import count_params
from ftmem.errors import InvalidInputError
from ftmem.estimate import estimate_step
from ftmem.run import RunConfig
from tests.family_configs import read_config, transformers_count

from .test_cli_contracts import one_sentence, run_main

# what every config below gives: two layers, 4 heads of 16 over 2 KV heads
BASE = {
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


# -- arcee ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},  # ArceeConfig's defaults: relu2, untied, no biases
        {"hidden_act": "relu2", "tie_word_embeddings": True, "mlp_bias": True},
        {"attention_bias": True, "head_dim": 32},
    ],
)
def test_arcee_counts_as_transformers_builds_it(tmp_path, changes):
    cfg = {"model_type": "arcee", **BASE, **changes}
    arch = read_config(tmp_path, cfg)
    assert (arch.family, arch.mlp, arch.activation) == ("arcee", "plain", "relu2")
    assert count_params(arch) == transformers_count(cfg)


def test_arcee_plain_mlp_by_hand(tmp_path):
    """Per layer: q, k, v, o (64·64 + 2·64·32 + 64·64), up and down (2·64·160), two
    norms (2·64); the embedding and the untied head 2·320·64, the final norm 64."""
    arch = read_config(tmp_path, {"model_type": "arcee", **BASE})
    layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 2 * 64 * 160 + 2 * 64
    assert count_params(arch) == 2 * layer + 2 * 320 * 64 + 64


def test_relu2_is_refused_on_a_gated_mlp(tmp_path):
    with pytest.raises(ValueError, match="plain MLPs only"):
        read_config(tmp_path, {"model_type": "llama", **BASE, "hidden_act": "relu2"})


def test_relu2_under_cuda_autocast_is_refused(tmp_path, capsys):
    """On CUDA autocast runs the square (pow) in fp32, not measured: one sentence, exit
    2; pure bf16 on CUDA and autocast on the CPU (measured) are estimated."""
    arch = read_config(tmp_path, {"model_type": "arcee", **BASE})
    for precision, device in (("bf16", "cuda"), ("bf16-mixed", "cpu")):
        estimate_step(arch, RunConfig(method="lora", precision=precision, device=device))
    with pytest.raises(InvalidInputError, match="ReLU² under autocast on CUDA"):
        estimate_step(arch, RunConfig(method="lora", precision="bf16-mixed", device="cuda"))
    code, out, err = run_main(
        capsys, "estimate", str(tmp_path), "--method", "lora", "--precision", "bf16-mixed"
    )
    assert (code, out) == (2, "")
    assert "ReLU²" in one_sentence(err)


# -- nemotron ---------------------------------------------------------------------------

WHOLE_HEAD_ROTARY = {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 1.0}


@pytest.mark.parametrize(
    ("changes", "rotary"),
    [
        ({}, 8),  # NemotronConfig's defaults: relu2, half of each 16-wide head turned
        ({"partial_rotary_factor": 0.25, "head_dim": 32}, 8),
        ({"rope_parameters": WHOLE_HEAD_ROTARY}, None),
        ({"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}, 8),
    ],
)
def test_nemotron_counts_as_transformers_builds_it(tmp_path, changes, rotary):
    cfg = {"model_type": "nemotron", **BASE, **changes}
    arch = read_config(tmp_path, cfg)
    assert (arch.mlp, arch.activation, arch.norm) == ("plain", "relu2", "layernorm")
    assert arch.rotary_dim == rotary
    assert count_params(arch) == transformers_count(cfg)


def test_nemotron_layer_norms_by_hand(tmp_path):
    """Arcee's count but LayerNorms with biases: 2 · 64 more per layer, 64 at the top."""
    nemotron = read_config(tmp_path, {"model_type": "nemotron", **BASE})
    arcee = read_config(tmp_path, {"model_type": "arcee", **BASE})
    assert count_params(nemotron) - count_params(arcee) == 2 * 2 * 64 + 64


T, H = 100, 96


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-mixed"])
@pytest.mark.parametrize(("x_grad", "w_grad"), [(True, False), (True, True), (False, True)])
def test_layer_norm_1p_keeps_what_the_estimate_counts(precision, x_grad, w_grad):
    """NemotronLayerNorm1P (the real module, CPU): native_layer_norm keeps the input, the
    rows' mean and rstd (in the input's dtype on the CPU) and the new w + 1 (h in the
    weight's dtype), whichever needs the gradient; the CPU's autocast leaves it fp32."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.nemotron.modeling_nemotron import NemotronLayerNorm1P

    from ftmem.methods import plan_method
    from ftmem.ops.context import LayerContext
    from ftmem.ops.norm import Norm
    from tests.conftest import tiny
    from tests.saved_storages import saved_storages

    autocast = precision == "bf16-mixed"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    norm = NemotronLayerNorm1P(H).to(dtype).requires_grad_(w_grad)
    x = torch.randn(2, T // 2, H, dtype=dtype, requires_grad=x_grad)

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return norm(x)

    measured = saved_storages(forward, list(norm.parameters()))
    r = 2 if precision == "bf16" else 4
    assert measured == sorted([T * H * r, T * r, T * r, H * r])  # the derivation

    arch = tiny("nemotron")
    run = RunConfig(method="full", precision=precision, batch_size=2, seq_len=T // 2, device="cpu")
    items = Norm.saved(LayerContext(arch, run, plan_method(arch, run), T), "norm", x_grad, w_grad)
    assert sorted(p for item in items for p in (item.parts or (item.nbytes,))) == measured


def test_nemotron_under_cuda_autocast_is_refused(tmp_path):
    """Whatever its activation: LayerNorm1P casts to 16-bit under CUDA's autocast only."""
    arch = read_config(tmp_path, {"model_type": "nemotron", **BASE, "hidden_act": "gelu"})
    estimate_step(arch, RunConfig(method="lora", precision="bf16", device="cuda"))
    with pytest.raises(InvalidInputError, match="LayerNorm1P under autocast on CUDA"):
        estimate_step(arch, RunConfig(method="lora", precision="bf16-mixed", device="cuda"))


# -- olmo -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},  # OlmoConfig's defaults: silu, no biases, no clamp, untied
        {"attention_bias": True, "clip_qkv": 8.0, "tie_word_embeddings": True},
    ],
)
def test_olmo_counts_as_transformers_builds_it(tmp_path, changes):
    cfg = {"model_type": "olmo", **BASE, **changes}
    arch = read_config(tmp_path, cfg)
    assert (arch.family, arch.norm, arch.qkv_clip) == ("olmo", "layernorm", changes.get("clip_qkv"))
    assert arch.max_position_embeddings == 2048
    assert count_params(arch) == transformers_count(cfg)


def test_olmo_norms_have_no_parameters(tmp_path):
    """Per layer q, k, v, o and the gated MLP, nothing else: 64·64 + 2·64·32 + 64·64 +
    3·64·160; the embedding and the untied head 2·320·64."""
    arch = read_config(tmp_path, {"model_type": "olmo", **BASE})
    layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 160
    assert count_params(arch) == 2 * layer + 2 * 320 * 64


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-mixed"])
def test_olmo_layer_norm_keeps_what_the_estimate_counts(precision):
    """OlmoLayerNorm (the real module, CPU): native_layer_norm keeps the fp32 copy of a
    bf16 input (the fp32 input itself) and fp32 mean and rstd; nothing where the input
    needs no gradient (it has no parameters)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.olmo.modeling_olmo import OlmoLayerNorm

    from ftmem.methods import plan_method
    from ftmem.ops.context import LayerContext
    from ftmem.ops.norm import Norm
    from tests.conftest import tiny
    from tests.saved_storages import saved_storages

    norm = OlmoLayerNorm(H)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.randn(2, T // 2, H, dtype=dtype, requires_grad=True)

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            return norm(x)

    measured = saved_storages(forward, [])
    assert measured == sorted([T * H * 4, T * 4, T * 4])  # the derivation

    arch = tiny("olmo")
    run = RunConfig(method="full", precision=precision, batch_size=2, seq_len=T // 2, device="cpu")
    ctx = LayerContext(arch, run, plan_method(arch, run), T)
    items = Norm.saved(ctx, "norm", True, True)
    assert sorted(p for item in items for p in (item.parts or (item.nbytes,))) == measured
    assert Norm.saved(ctx, "norm", False, True) == []


# -- apertus ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},  # ApertusConfig's defaults: xielu, no biases, untied, 65,536 positions
        {"attention_bias": True, "head_dim": 32, "tie_word_embeddings": True},
    ],
)
def test_apertus_counts_as_transformers_builds_it(tmp_path, changes):
    cfg = {"model_type": "apertus", **BASE, **changes}
    arch = read_config(tmp_path, cfg)
    assert (arch.mlp, arch.activation, arch.qk_norm) == ("plain", "xielu", True)
    assert count_params(arch) == transformers_count(cfg)


def test_apertus_by_hand(tmp_path):
    """Per layer q, k, v, o, up and down (64·64 + 2·64·32 + 64·64 + 2·64·160), the q and
    k norms (2·16), the two norms (2·64) and xIELU's alpha_p and alpha_n (2); the
    embedding and the untied head 2·320·64, the final norm 64."""
    arch = read_config(tmp_path, {"model_type": "apertus", **BASE})
    assert arch.max_position_embeddings == 65536
    layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 2 * 64 * 160 + 2 * 16 + 2 * 64 + 2
    assert count_params(arch) == 2 * layer + 2 * 320 * 64 + 64


def test_xielu_is_apertus_only(tmp_path):
    with pytest.raises(ValueError, match="no xIELU module"):
        read_config(tmp_path, {"model_type": "arcee", **BASE, "hidden_act": "xielu"})


def test_apertus_under_cuda_autocast_is_refused_and_the_kernel_said(tmp_path):
    arch = read_config(tmp_path, {"model_type": "apertus", **BASE})
    est = estimate_step(arch, RunConfig(method="lora", precision="bf16", device="cuda"))
    assert any("nickjbrowning/XIELU" in note for note in est.notes)
    with pytest.raises(InvalidInputError, match="xIELU under autocast on CUDA"):
        estimate_step(arch, RunConfig(method="lora", precision="bf16-mixed", device="cuda"))


# -- cohere2 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "sliding"),
    [
        # Cohere2Config's defaults: window 4096, every fourth layer global, tied
        ({"num_hidden_layers": 4}, 3),
        ({"head_dim": 32}, 2),  # (given, it stands: 2 layers, both sliding)
        ({"sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"]}, 1),
        ({"sliding_window_pattern": 2, "attention_bias": True, "tie_word_embeddings": False}, 1),
    ],
)
def test_cohere2_counts_as_transformers_builds_it(tmp_path, changes, sliding):
    cfg = {"model_type": "cohere2", **BASE, **changes}
    arch = read_config(tmp_path, cfg)
    head_dim = cfg.get("head_dim", 16)
    assert (arch.head_size, arch.sliding_layers, arch.norms_per_block) == (head_dim, sliding, 1)
    assert arch.sliding_window == cfg.get("sliding_window", 4096)
    assert count_params(arch) == transformers_count(cfg)


def test_cohere2_without_sliding_layers_is_refused(tmp_path):
    """Its forward builds the sliding-window mask whatever the layer types."""
    from ftmem.errors import ConfigError

    with pytest.raises(ConfigError, match="without sliding layers"):
        read_config(tmp_path, {"model_type": "cohere2", **BASE, "sliding_window": None})


# -- vaultgemma -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},  # VaultGemmaConfig's defaults: head_dim 256, tied, soft-caps 30 and 50
        {"head_dim": 16, "sliding_window": 16, "final_logit_softcapping": None},
    ],
)
def test_vaultgemma_counts_as_transformers_builds_it(tmp_path, changes):
    cfg = {"model_type": "vaultgemma", **BASE, **changes}
    arch = read_config(tmp_path, cfg)
    assert (arch.norms_per_block, arch.head_size) == (2, cfg.get("head_dim", 256))
    assert count_params(arch) == transformers_count(cfg)


def test_vaultgemma_is_gemma2_without_its_post_norms(tmp_path):
    """Two norms of 64 fewer per layer than Gemma 2's four."""
    cfg = {**BASE, "head_dim": 16}
    vault = read_config(tmp_path, {"model_type": "vaultgemma", **cfg})
    gemma2 = read_config(tmp_path, {"model_type": "gemma2", **cfg})
    assert count_params(gemma2) - count_params(vault) == 2 * 2 * 64


# -- presets ----------------------------------------------------------------------------

# allenai/OLMo-1B-hf's architecture keys, as the preset's comment cites them
OLMO_1B = {
    "model_type": "olmo",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "vocab_size": 50304,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "clip_qkv": None,
    "hidden_act": "silu",
    "attention_bias": False,
}


def test_olmo_1b_preset_counts_as_transformers_builds_it():
    from ftmem.presets import get_model
    from tests.conftest import assert_transformers_count

    assert_transformers_count(OLMO_1B, "olmo-1b")
    # by hand: the tied embedding and 16 layers of attention and gated MLP, no norms
    assert count_params(get_model("olmo-1b")) == 50304 * 2048 + 16 * (4 * 2048**2 + 3 * 2048 * 8192)
    assert count_params(get_model("olmo-1b")) == 1_176_764_416
