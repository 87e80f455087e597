"""Each family's config map both ways, against transformers' own config classes; and
what issue 17's families refuse rather than mis-read."""

from __future__ import annotations

import json

import pytest

from ftmem.arch import Architecture, count_params
from ftmem.errors import ConfigError
from ftmem.sources import resolve_model
from tests.family_configs import transformers_count

from .conftest import TINY, tiny

# fields that name where an Architecture came from, not its shape
PROVENANCE = {"name", "source", "published_params", "published_params_source"}


@pytest.mark.parametrize("family", sorted(TINY))
def test_config_written_by_transformers_reads_back(family, tmp_path):
    """transformers writes the family's config.json its own way (rope_parameters,
    layer_types, defaults spelled out); read back it is the same Architecture."""
    pytest.importorskip("transformers")
    from ftmem.measure.build import hf_config

    arch = tiny(family)
    hf_config(arch).to_json_file(tmp_path / "config.json")
    assert _shape(resolve_model(str(tmp_path))) == _shape(arch)


def _shape(arch: Architecture) -> dict:
    """The fields, with those left to a default spelled out (head_dim, kv heads, rotary)."""
    fields = arch.model_dump(exclude=PROVENANCE)
    fields.update(head_dim=arch.head_size, num_kv_heads=arch.kv_heads, rotary_dim=arch.rotary_size)
    return fields


# google/gemma-3-4b-it's text_config gives only what differs from Gemma3TextConfig
GEMMA3_4B = {
    "model_type": "gemma3",
    "text_config": {
        "model_type": "gemma3_text",
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 1152,
        "vision_use_head": False,
    },
}


def test_gemma3_text_config_takes_transformers_defaults(tmp_path):
    """The heads, head_dim and vocabulary come from Gemma3TextConfig's defaults, as
    transformers fills them; the count is the gemma3-4b preset's (derived there)."""
    (tmp_path / "config.json").write_text(json.dumps(GEMMA3_4B))
    arch = resolve_model(str(tmp_path))
    assert (arch.family, arch.num_heads, arch.kv_heads, arch.head_size) == ("gemma3", 8, 4, 256)
    assert (arch.vocab_size, arch.norms_per_block, arch.qk_norm) == (262_208, 4, True)
    text = arch.model_copy(update={"vision": None})  # (the tower: tests/test_vision.py)
    assert count_params(text) == count_params(resolve_model("gemma3-4b"))


def test_gemma3_text_defaults_match_transformers():
    transformers = pytest.importorskip("transformers")
    from ftmem.families.gemma3 import TEXT_DEFAULTS

    defaults = transformers.Gemma3TextConfig()
    for key, value in TEXT_DEFAULTS.items():
        assert getattr(defaults, key) == value, key


def test_multimodal_tie_defaults_match_transformers():
    """A multimodal config.json that does not say ties (or not) as its class's default."""
    transformers = pytest.importorskip("transformers")
    from ftmem.families._config import MULTIMODAL_TIE_DEFAULT

    for model_type, tie in MULTIMODAL_TIE_DEFAULT.items():
        assert transformers.AutoConfig.for_model(model_type).tie_word_embeddings == tie, model_type


QWEN3_MOE = {
    "model_type": "qwen3_moe",
    "vocab_size": 1000,
    "hidden_size": 64,
    "intermediate_size": 256,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_experts": 8,
    "num_experts_per_tok": 2,
}


def test_qwen3_moe_counts_as_transformers_builds_it():
    """Every layer sparse: the experts are moe_intermediate_size wide (the dense
    intermediate_size is unused); checked against transformers on the meta device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ftmem.sources import architecture_from_config

    config = transformers.Qwen3MoeConfig(
        **{k: v for k, v in QWEN3_MOE.items() if k != "model_type"}
    )
    with torch.device("meta"):
        real = sum(p.numel() for p in transformers.Qwen3MoeForCausalLM(config).parameters())
    arch = architecture_from_config(QWEN3_MOE, "x", "x")
    assert (arch.intermediate_size, arch.num_experts) == (32, 8)
    assert count_params(arch) == real


# allenai/OLMoE-1B-7B-0924's config.json (huggingface.co, commit c1b31da0c8e8)
OLMOE_0924 = {
    "architectures": ["OlmoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "clip_qkv": None,
    "eos_token_id": 50279,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 1024,
    "max_position_embeddings": 4096,
    "model_type": "olmoe",
    "norm_topk_prob": False,
    "num_attention_heads": 16,
    "num_experts": 64,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 16,
    "num_key_value_heads": 16,
    "output_router_logits": False,
    "pad_token_id": 1,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "router_aux_loss_coef": 0.01,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0",
    "use_cache": True,
    "vocab_size": 50304,
}


def test_olmoe_counts_as_transformers_builds_it(tmp_path):
    """The published config.json read as the preset reads it, counted as transformers
    5.24 builds OlmoeForCausalLM on the meta device; by hand: 2 × 50,304 × 2,048
    (embedding, untied head) + 16 × (4 × 2,048² attention + 2 × 2,048 q/k norms +
    2 × 2,048 norms + 64 × 2,048 router + 64 × 3 × 1,024 × 2,048 experts) + 2,048 =
    6,919,161,856: the "6.92B params" of the Hub's GGUF page (6.9B on the model card)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    (tmp_path / "config.json").write_text(json.dumps(OLMOE_0924))
    arch = resolve_model(str(tmp_path))
    assert (arch.qk_norm, arch.router_renormalises) == (True, False)
    assert (arch.num_experts, arch.experts_per_token, arch.head_size) == (64, 8, 128)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    with torch.device("meta"):
        real = sum(p.numel() for p in transformers.OlmoeForCausalLM(config).parameters())
    h, V, L, F, E = 2048, 50304, 16, 1024, 64
    by_hand = 2 * V * h + L * (4 * h * h + 2 * h + 2 * h + E * h + E * 3 * F * h) + h
    assert count_params(arch) == real == by_hand == 6_919_161_856
    assert round(by_hand / 1e9, 2) == 6.92
    # the preset (both releases) is that config.json, field by field
    assert _shape(resolve_model("allenai/OLMoE-1B-7B-0125")) == _shape(arch)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"clip_qkv": -1.0}, "qkv_clip"),
        ({"clip_qkv": "8"}, "clip_qkv"),
        ({"head_dim": 64}, "q/k norms are hidden_size wide"),
    ],
)
def test_what_olmoe_refuses(tmp_path, changes, message):
    (tmp_path / "config.json").write_text(json.dumps({**OLMOE_0924, **changes}))
    with pytest.raises(ConfigError, match=message):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "qwen3_moe", "mlp_only_layers": [0]}, "dense layers"),
        ({"model_type": "qwen3_moe", "decoder_sparse_step": 2}, "dense layers"),
        ({"model_type": "phi", "partial_rotary_factor": 1.5}, "fraction of the head"),
        ({"model_type": "gpt_neox", "rotary_pct": 0.001}, "at least one"),
    ],
)
def test_what_the_new_families_refuse(tmp_path, changes, message):
    """Layouts ftmem does not model are refused in one sentence, never mis-counted."""
    (tmp_path / "config.json").write_text(json.dumps({**QWEN3_MOE, **changes}))
    with pytest.raises(ConfigError, match=message):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize(
    ("model_type", "key", "norm_params"),
    [
        # CohereLayerNorm((heads, head_dim)) and ((kv_heads, head_dim)): no bias
        ("cohere", "use_qk_norm", (4 + 2) * 16),
        # StableLmLayerNormPerHead: one bias-free LayerNorm(head_dim) per head
        ("stablelm", "qk_layernorm", (4 + 2) * 16),
        # one nn.LayerNorm(head_dim) with its bias for the queries, one for the keys
        ("phi", "qk_layernorm", 2 * 2 * 16),
        # GLM-4.5's use_qk_norm: Qwen3's RMSNorm(head_dim) for the queries and the keys
        ("glm4_moe", "use_qk_norm", 2 * 16),
    ],
)
def test_switched_q_k_norms_are_read_and_counted(tmp_path, model_type, key, norm_params):
    """Command R+'s use_qk_norm and StableLM-2-12B's / Phi's qk_layernorm are read, not
    refused: each layer's q/k norms count what transformers allocates on the meta device,
    and the derivation in the parametrization (64 wide, 4 heads of 16, 2 KV heads)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = {**{k: v for k, v in QWEN3_MOE.items() if "expert" not in k}, "model_type": model_type}
    cfg.pop("head_dim")  # (StableLM and Phi derive it: 64 / 4 heads)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, key: True}))
    arch = resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**cfg, key: False}))
    without = resolve_model(str(tmp_path))
    assert (arch.qk_norm, without.qk_norm) == (True, False)
    assert count_params(arch) - count_params(without) == norm_params * cfg["num_hidden_layers"]
    config = transformers.AutoConfig.for_model(**{**cfg, key: True})
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert count_params(arch) == sum(p.numel() for p in model.parameters())


def test_config_dropout_is_read_and_the_rest_said(tmp_path):
    """StarCoder2's published configs train with dropout 0.1 in three places: the residual
    and embedding dropouts are read (their masks modelled, tests/accuracy), the attention
    dropout is said in a note; none at 0."""
    from ftmem.measure.build import hf_config
    from ftmem.sources import source_notes

    pytest.importorskip("transformers")
    cfg = hf_config(tiny("starcoder2")).to_dict()
    cfg.update(residual_dropout=0.1, embedding_dropout=0.1, attention_dropout=0.1)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    arch = resolve_model(str(tmp_path))
    assert (arch.residual_dropout, arch.embedding_dropout) == (0.1, 0.1)
    (note,) = [n for n in source_notes(str(tmp_path)) if "dropout" in n]
    assert "(attention_dropout 0.1)" in note
    cfg.update(attention_dropout=0.0)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert not [n for n in source_notes(str(tmp_path)) if "dropout" in n]


def test_a_dropout_the_family_lacks_is_refused():
    with pytest.raises(ValueError, match="has no such dropout"):
        tiny("llama", residual_dropout=0.1)


def test_readme_names_every_family():
    """The README's list of model types is the families' (a new family is listed)."""
    from pathlib import Path

    from ftmem import families

    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    listed = readme.split("Families (`model_type`):", 1)[1].split(";", 1)[0]
    assert {t.strip(" .") for t in listed.split(",")} == set(families.by_model_type())


def test_no_dropout_trains_without_the_configs_dropout(tmp_path):
    """--no-dropout estimates the run as the architecture without its dropout (and the
    measured step builds it so: measure.build applies the same as_trained)."""
    from ftmem.api import estimate
    from ftmem.arch import as_trained

    drop = tiny("gpt2", residual_dropout=0.1, embedding_dropout=0.1)
    plain = tiny("gpt2")
    kw = dict(method="full", precision="bf16", batch_size=2, seq_len=64, device="cpu")
    off = estimate(drop, **kw, model_dropout=False).memory
    assert off.activations_bytes == estimate(plain, **kw).memory.activations_bytes
    on = estimate(drop, **kw).memory
    # five masks (embeddings, then attention's and the MLP's output in each of 2 blocks),
    # each T·h in bf16 on the CPU (the scaled mask in the input's dtype)
    assert on.activations_bytes - off.activations_bytes == 5 * 2 * 64 * 96 * 2
    assert as_trained(drop, False).model_dump(
        exclude={"residual_dropout", "embedding_dropout"}
    ) == (drop.model_dump(exclude={"residual_dropout", "embedding_dropout"}))


def test_a_router_that_renormalises_keeps_the_quotient_and_the_sum():
    """norm_topk_prob (Qwen3-MoE, OLMoE): ``router_top_value /= router_top_value.sum()``
    keeps the sum (T fp32) and the quotient (T·k fp32) for backward. Measured on
    transformers' OlmoeTopKRouter with saved_tensors_hooks, against the estimate's
    activations with and without it (every block alike)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.olmoe.modeling_olmoe import OlmoeTopKRouter

    from ftmem.estimate import estimate_step
    from ftmem.run import RunConfig

    arch = tiny("olmoe")
    tokens = 3 * 50

    def saved_bytes(renormalise: bool) -> int:
        config = transformers.OlmoeConfig(
            hidden_size=arch.hidden_size,
            num_experts=arch.num_experts,
            num_experts_per_tok=arch.experts_per_token,
            norm_topk_prob=renormalise,
        )
        router = OlmoeTopKRouter(config).to(torch.bfloat16)
        x = torch.randn(tokens, arch.hidden_size, dtype=torch.bfloat16, requires_grad=True)
        kept: dict[int, int] = {}

        def pack(t):
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            router(x)
        kept.pop(x.untyped_storage().data_ptr(), None)
        kept.pop(router.weight.untyped_storage().data_ptr(), None)
        return sum(kept.values())

    run = RunConfig(method="full", precision="bf16", batch_size=3, seq_len=50)
    estimated = [
        estimate_step(
            arch.model_copy(update={"router_renormalises": r}), run
        ).memory.activations_bytes
        for r in (False, True)
    ]
    measured = saved_bytes(True) - saved_bytes(False)
    assert measured == tokens * arch.experts_per_token * 4 + tokens * 4
    assert estimated[1] - estimated[0] == arch.num_layers * measured


def test_qwen3_moe_renormalises_only_where_its_config_says():
    """Qwen3MoeConfig's norm_topk_prob defaults to false; the published configs say true."""
    transformers = pytest.importorskip("transformers")
    from ftmem.sources import architecture_from_config

    assert transformers.Qwen3MoeConfig().norm_topk_prob is False
    assert not architecture_from_config(QWEN3_MOE, "x", "x").router_renormalises
    said = architecture_from_config({**QWEN3_MOE, "norm_topk_prob": True}, "x", "x")
    assert said.router_renormalises
    with pytest.raises(ValueError, match="always divides"):
        Architecture.model_validate({**tiny("mixtral").model_dump(), "router_renormalises": False})


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "olmoe"])
def test_routing_weights_dtype_is_the_router_s(family):
    """The routed outputs are multiplied by the routing weights as transformers' router
    returns them: fp32 from Mixtral's, cast back to the router's dtype by Qwen3-MoE's and
    OLMoE's (``router_top_value.to(router_logits.dtype)``); the product (and its gradient
    in backward) takes the wider of that and the experts' dtype."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from ftmem.measure.build import hf_config
    from ftmem.ops.moe import MoE

    arch = tiny(family)
    model = AutoModelForCausalLM.from_config(hf_config(arch)).to(torch.bfloat16)
    router = model.model.layers[0].mlp.gate
    _, weights, _ = router(torch.randn(5, arch.hidden_size, dtype=torch.bfloat16))
    bf16 = 2
    assert MoE.product_bytes(arch, bf16) == max(bf16, weights.element_size())


# zai-org/GLM-4.5-Air's config.json (as ms-swift printed it: presets/models/glm-4.5-air.yaml)
GLM45_AIR = {
    "model_type": "glm4_moe",
    "attention_bias": True,
    "first_k_dense_replace": 1,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 10944,
    "max_position_embeddings": 131072,
    "moe_intermediate_size": 1408,
    "n_group": 1,
    "n_routed_experts": 128,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 96,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 46,
    "num_key_value_heads": 8,
    "num_nextn_predict_layers": 1,
    "partial_rotary_factor": 0.5,
    "rope_theta": 1000000,
    "routed_scaling_factor": 1.0,
    "tie_word_embeddings": False,
    "topk_group": 1,
    "use_qk_norm": False,
    "vocab_size": 151552,
}


def test_glm45_air_counts_as_transformers_builds_it(tmp_path):
    """GLM-4.5-Air: DeepSeek's experts (the first block dense, one shared expert) under a
    biased GQA attention with half-head rotary; 106,852,245,504 (the model card's "106B
    total"; derived by hand in the preset) on the meta device, and the preset the same."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps(GLM45_AIR))
    arch = resolve_model(str(tmp_path))
    assert (arch.rotary_size, arch.dense_layers, arch.shared_experts_size) == (64, 1, 1408)
    assert (arch.attention_qkv_bias, arch.attention_out_bias, arch.qk_norm) == (True, False, False)
    config = transformers.AutoConfig.for_model(**GLM45_AIR)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert count_params(arch) == sum(p.numel() for p in model.parameters()) == 106_852_245_504
    assert count_params(resolve_model("glm-4.5-air")) == count_params(arch)


def test_glm4_moe_takes_its_config_class_defaults(tmp_path):
    """A config.json that leaves the experts' keys and the rotary's share out gets
    Glm4MoeConfig's defaults (half-head rotary from its __post_init__), as transformers
    builds it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ftmem.families.glm4_moe import DEFAULTS

    bare = {
        k: v for k, v in GLM45_AIR.items() if k not in DEFAULTS and k != "partial_rotary_factor"
    }
    bare.update(num_hidden_layers=2, hidden_size=256, num_attention_heads=8, head_dim=64)
    (tmp_path / "config.json").write_text(json.dumps(bare))
    arch = resolve_model(str(tmp_path))
    config = transformers.AutoConfig.for_model(**bare)
    for key, value in DEFAULTS.items():
        assert getattr(config, key) == value, key
    assert arch.rotary_size == 32  # int(64 x 0.5)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert count_params(arch) == sum(p.numel() for p in model.parameters())


# dots.llm1.inst's config.json fields (presets/models/dots.llm1.inst.yaml says where from)
DOTS_LLM1 = {
    "model_type": "dots1",
    "hidden_size": 4096,
    "num_hidden_layers": 62,
    "intermediate_size": 10944,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 152064,
    "first_k_dense_replace": 1,
    "moe_intermediate_size": 1408,
    "n_routed_experts": 128,
    "n_shared_experts": 2,
    "num_experts_per_tok": 6,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "max_position_embeddings": 32768,
    "rope_theta": 10000000,
    "attention_bias": False,
    "tie_word_embeddings": False,
}


def test_dots_llm1_counts_as_transformers_builds_it(tmp_path):
    """dots.llm1: Qwen3's attention over DeepSeek's experts (two shared, the first block
    dense): 142,774,373,888 on the meta device (the card's "142B total"; derived by hand
    in the preset), the preset the same; Dots1Config's window slides on no layer of 62."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps(DOTS_LLM1))
    arch = resolve_model(str(tmp_path))
    assert (arch.qk_norm, arch.sliding_window, arch.router_renormalises) == (True, None, True)
    assert (arch.shared_experts_size, arch.dense_layers) == (2816, 1)
    config = transformers.AutoConfig.for_model(**DOTS_LLM1)
    assert set(config.layer_types) == {"full_attention"}
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert count_params(arch) == sum(p.numel() for p in model.parameters()) == 142_774_373_888
    assert count_params(resolve_model("dots.llm1.inst")) == count_params(arch)


def test_dots1_needs_its_expert_counts(tmp_path):
    """Dots1Config has no default for the shared experts' count: a config.json without it
    is refused in one sentence (transformers could not build the model either)."""
    cfg = {k: v for k, v in DOTS_LLM1.items() if k != "n_shared_experts"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="n_shared_experts"):
        resolve_model(str(tmp_path))


# Qwen1.5-MoE-A2.7B-Chat's config.json fields (presets/models/qwen1.5-moe-a2.7b.yaml says where from)
QWEN15_MOE = {
    "model_type": "qwen2_moe",
    "decoder_sparse_step": 1,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "max_position_embeddings": 32768,
    "max_window_layers": 21,
    "moe_intermediate_size": 1408,
    "num_attention_heads": 16,
    "num_experts": 60,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 24,
    "num_key_value_heads": 16,
    "shared_expert_intermediate_size": 5632,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "vocab_size": 151936,
}


def test_qwen15_moe_counts_as_transformers_builds_it(tmp_path):
    """Qwen1.5-MoE-A2.7B: Qwen2's biased attention, 60 routed experts and a shared expert
    with its one-output sigmoid gate in every layer: 14,315,784,192 on the meta device (the
    card's "14.3B"; derived by hand in the preset), the preset the same; no window."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps(QWEN15_MOE))
    arch = resolve_model(str(tmp_path))
    assert (arch.attention_qkv_bias, arch.attention_out_bias, arch.sliding_window) == (
        True,
        False,
        None,
    )
    assert (arch.shared_experts_size, arch.dense_layers, arch.router_renormalises) == (
        5632,
        0,
        False,
    )
    config = transformers.AutoConfig.for_model(**QWEN15_MOE)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert count_params(arch) == sum(p.numel() for p in model.parameters()) == 14_315_784_192
    assert count_params(resolve_model("qwen1.5-moe-a2.7b")) == count_params(arch)


def test_qwen2_moe_takes_its_config_class_defaults(tmp_path):
    """A config.json without the experts' keys or qkv_bias gets Qwen2MoeConfig's defaults
    (60 experts of 1408, top-4, a 5632-wide shared expert, q/k/v biases), as transformers
    builds it; qkv_bias false drops the three biases."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ftmem.families.qwen2_moe import DEFAULTS

    bare = {k: v for k, v in QWEN15_MOE.items() if k not in DEFAULTS}
    bare.update(num_hidden_layers=2, hidden_size=256, num_attention_heads=4, num_key_value_heads=4)
    for qkv_bias in (None, False):
        cfg = bare if qkv_bias is None else {**bare, "qkv_bias": qkv_bias}
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        arch = resolve_model(str(tmp_path))
        assert arch.attention_qkv_bias is (qkv_bias is None)
        config = transformers.AutoConfig.for_model(**cfg)
        for key, value in DEFAULTS.items():
            assert getattr(config, key) == value, key
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
        assert count_params(arch) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "change",
    [{"use_sliding_window": True}, {"mlp_only_layers": [0]}, {"decoder_sparse_step": 2}],
)
def test_qwen2_moe_refuses_what_it_does_not_model(tmp_path, change):
    """Qwen2MoeConfig's alternating window and dense layers are refused in one sentence."""
    (tmp_path / "config.json").write_text(json.dumps({**QWEN15_MOE, **change}))
    with pytest.raises(ConfigError, match=next(iter(change))):
        resolve_model(str(tmp_path))


def test_qwen2_moe_refuses_quantised_weights():
    """bitsandbytes quantises Qwen2-MoE's one-output shared_expert_gate too (measured: a
    (64, 1) uint8 weight with its own state on the tiny model): refused, not mis-counted."""
    from ftmem.errors import InvalidInputError
    from ftmem.estimate import estimate_step
    from ftmem.run import RunConfig

    with pytest.raises(InvalidInputError, match="shared_expert_gate"):
        estimate_step(tiny("qwen2_moe"), RunConfig(method="qlora", precision="bf16"))


# MiniMax-M2's config.json fields (presets/models/minimax-m2.yaml says where from)
MINIMAX_M2 = {
    "model_type": "minimax_m2",
    "vocab_size": 200064,
    "hidden_size": 3072,
    "intermediate_size": 1536,
    "num_hidden_layers": 62,
    "num_attention_heads": 48,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 196608,
    "num_local_experts": 256,
    "num_experts_per_tok": 8,
    "scoring_func": "sigmoid",
    "use_routing_bias": True,
    "use_mtp": True,
    "num_mtp_modules": 3,
    "use_qk_norm": True,
    "rotary_dim": 64,
    "rope_theta": 5000000,
    "tie_word_embeddings": False,
}


def test_minimax_m2_counts_as_transformers_builds_it(tmp_path):
    """MiniMax-M2: q/k norms across the projection, 256 routed experts, no shared or dense
    MLP: 228,689,748,992 on the meta device (the card's "230B total" counts the MTP
    modules transformers does not build; derived by hand in the preset), the preset the
    same; the legacy rotary_dim 64 of 128 is what transformers turns."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps(MINIMAX_M2))
    arch = resolve_model(str(tmp_path))
    assert (arch.rotary_size, arch.head_size, arch.qk_norm, arch.sliding_window) == (
        64,
        128,
        True,
        None,
    )
    config = transformers.AutoConfig.for_model(**MINIMAX_M2)
    assert config.rope_parameters["partial_rotary_factor"] == 0.5
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert count_params(arch) == sum(p.numel() for p in model.parameters()) == 228_689_748_992
    assert count_params(resolve_model("minimax-m2")) == count_params(arch)


@pytest.mark.parametrize(
    ("change", "turned"),
    [
        ({"rotary_dim": None}, 128),  # MiniMaxM2Config: the whole head without either key
        ({"partial_rotary_factor": 0.25}, 32),  # an explicit factor over rotary_dim
        ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.25}}, 32),
        ({"head_dim": None}, 64),  # (MiniMaxM2Config's head_dim default: 128)
    ],
)
def test_minimax_m2_rotary_share_as_transformers_reads_it(tmp_path, change, turned):
    """The rotary's share and head_dim as MiniMaxM2Config resolves them (legacy rotary_dim,
    partial_rotary_factor at the top or in rope_parameters, its defaults)."""
    transformers = pytest.importorskip("transformers")
    cfg = {k: v for k, v in {**MINIMAX_M2, **change}.items() if v is not None}
    cfg.update(num_hidden_layers=1, num_local_experts=4, num_experts_per_tok=2)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    arch = resolve_model(str(tmp_path))
    config = transformers.AutoConfig.for_model(**cfg)
    factor = config.rope_parameters.get("partial_rotary_factor", 1.0)
    assert arch.rotary_size == int(config.head_dim * factor) == turned


def test_minimax_m2_refuses_router_jitter(tmp_path):
    """router_jitter_noise rescales the MLP input in place in training: refused."""
    (tmp_path / "config.json").write_text(json.dumps({**MINIMAX_M2, "router_jitter_noise": 0.1}))
    with pytest.raises(ConfigError, match="router_jitter_noise"):
        resolve_model(str(tmp_path))


# ERNIE-4.5-21B-A3B's config.json fields as a public test fixture copies them (search
# index file id 70957858900: "21.8B in all"; the same values in id 20156564511)
ERNIE_45_21B_A3B = {
    "model_type": "ernie4_5_moe",
    "hidden_size": 2560,
    "intermediate_size": 12288,
    "moe_intermediate_size": 1536,
    "num_hidden_layers": 28,
    "num_attention_heads": 20,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "moe_num_experts": 64,
    "moe_num_shared_experts": 2,
    "moe_k": 6,
    "moe_layer_start_index": 1,
    "moe_layer_end_index": 27,
    "moe_layer_interval": 1,
    "vocab_size": 103424,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}


def test_ernie_45_moe_counts_as_transformers_builds_it(tmp_path):
    """ERNIE 4.5 21B-A3B: the first block dense, 64 experts and two shared in the 27
    others, each router's frozen fp32 correction bias a parameter (1 × 64 per sparse
    block), tied embeddings: the count equals the meta model's (21,825,437,888, the
    fixture's "21.8B in all"), and the correction biases are stored in fp32 and never
    trained. By hand: embeddings 264,765,440 + final norm 2,560 + 28 × (attention
    15,728,640 + norms 5,120) + the dense MLP 94,371,840 + 27 × (experts 754,974,720 +
    shared 23,592,960 + router 163,840 + correction bias 64)."""
    from ftmem.arch import layout

    (tmp_path / "config.json").write_text(json.dumps(ERNIE_45_21B_A3B))
    arch = resolve_model(str(tmp_path))
    assert (arch.dense_layers, arch.dense_intermediate_size) == (1, 12288)
    assert (arch.num_experts, arch.experts_per_token, arch.shared_experts_size) == (64, 6, 3072)
    assert count_params(arch) == transformers_count(ERNIE_45_21B_A3B) == 21_825_437_888
    (stat,) = [p for p in layout(arch).block if p.kind == "statistic"]
    assert (stat.shape, stat.count(arch.num_layers)) == ((1, 64), 27)
    assert count_params(resolve_model("ernie-4.5-21b-a3b")) == count_params(arch)


def test_ernie_45_moe_takes_its_config_class_defaults(tmp_path):
    """Ernie4_5_MoeConfig's defaults where config.json leaves the MoE keys and the kv
    heads out (64 experts of 1536, top 6, two shared, sparse from block 1, 4 kv heads):
    counted as transformers builds them; a start past the stack's end is refused."""
    cfg = {
        "model_type": "ernie4_5_moe",
        "vocab_size": 300,
        "hidden_size": 96,
        "intermediate_size": 160,
        "num_hidden_layers": 3,
        "num_attention_heads": 8,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    arch = resolve_model(str(tmp_path))
    assert (arch.kv_heads, arch.dense_layers, arch.num_experts) == (4, 1, 64)
    assert count_params(arch) == transformers_count(cfg)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "moe_layer_start_index": 3}))
    with pytest.raises(ConfigError, match="moe_layer_start_index"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"moe_layer_interval": 2}, "interval"),
        ({"moe_layer_end_index": 20}, "moe_layer_start_index"),
        ({"use_bias": True}, "use_bias"),
        ({"output_router_logits": True}, "output_router_logits"),
    ],
)
def test_ernie_45_moe_refuses_what_is_not_modelled(changes, message, tmp_path):
    """Sparse patterns other than "every block from the start on", use_bias (it biases
    the LM head too) and the load-balancing loss over fp32 router logits: one sentence."""
    (tmp_path / "config.json").write_text(json.dumps({**ERNIE_45_21B_A3B, **changes}))
    with pytest.raises(ConfigError, match=message):
        resolve_model(str(tmp_path))


# a Hunyuan-A13B-sized stack (hidden 4096, 32 layers, GQA 32/8 of 128, 64 experts of
# 3,072, top-8 given per layer as the remote code's configs write it, a tied head): the
# count is transformers' on the meta device, not a published figure
HUNYUAN_MOE = {
    "model_type": "hunyuan_v1_moe",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "intermediate_size": 3072,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128167,
    "num_experts": 64,
    "moe_topk": [8] * 32,
    "moe_intermediate_size": [3072] * 32,
    "num_shared_expert": [1] * 32,
    "use_mixed_mlp_moe": True,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
}


def test_hunyuan_moe_counts_as_transformers_builds_it(tmp_path):
    """Hunyuan-V1-MoE: the routed experts and the one shared MLP both intermediate_size
    wide, the fp32 router, the q/k norms; a top-k list that does not vary is its value."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps(HUNYUAN_MOE))
    arch = resolve_model(str(tmp_path))
    assert (arch.num_experts, arch.experts_per_token, arch.shared_experts_size) == (64, 8, 3072)
    assert (arch.qk_norm, arch.sliding_window, arch.router_renormalises) == (True, None, True)
    cfg = {k: v for k, v in HUNYUAN_MOE.items() if k not in ("moe_intermediate_size",)}
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert count_params(arch) == sum(p.numel() for p in model.parameters())


def test_hunyuan_moe_router_stays_fp32_as_loaded():
    """wg is built with dtype=torch.float32 (not _keep_in_fp32_modules): transformers'
    from_config in bf16 leaves it fp32 beside bf16 experts (Family.router_fp32)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    kw = {k: HUNYUAN_MOE[k] for k in ("model_type", "num_experts", "moe_topk")}
    config = transformers.AutoConfig.for_model(
        **{**kw, "moe_topk": 2, "num_experts": 4},
        vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
    )  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    mlp = model.model.layers[0].mlp
    assert (mlp.gate.wg.weight.dtype, mlp.experts.gate_up_proj.dtype) == (
        torch.float32,
        torch.bfloat16,
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"moe_topk": [8] * 31 + [4]}, "moe_topk .* varies by layer"),
        ({"num_experts": [64] * 32}, "num_experts .* is a list"),
        ({"num_experts": 1, "moe_topk": 1}, "two or more routed experts"),
        ({"moe_intermediate_size": 1536}, "moe_intermediate_size differs"),
        ({"num_shared_expert": [2] * 32}, "exactly one shared MLP"),
        ({"head_dim": None}, "head_dim"),
    ],
)
def test_hunyuan_moe_refuses_what_transformers_does_not_build(changes, message, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**HUNYUAN_MOE, **changes}))
    with pytest.raises(ConfigError, match=message):
        resolve_model(str(tmp_path))


def test_hunyuan_moe_expert_lists_fail_in_transformers():
    """HunYuanMoEV1Config's num_experts is a strict int field (a list fails there, and
    HunYuanMoEV1Experts reads it as one count): why the list is refused, not read per
    layer."""
    transformers = pytest.importorskip("transformers")
    from huggingface_hub.errors import StrictDataclassFieldValidationError

    with pytest.raises(StrictDataclassFieldValidationError, match="num_experts"):
        transformers.AutoConfig.for_model(model_type="hunyuan_v1_moe", num_experts=[4, 4])


def test_hunyuan_moe_quantised_is_refused():
    """bitsandbytes quantises the fp32 router's nn.Linear too (measured: a Linear4bit):
    QLoRA is refused in one sentence, not estimated."""
    from ftmem.errors import InvalidInputError
    from ftmem.estimate import estimate_step
    from ftmem.run import RunConfig

    run = RunConfig(batch_size=1, seq_len=16, method="qlora", precision="bf16")
    with pytest.raises(InvalidInputError, match="fp32 router wg"):
        estimate_step(tiny("hunyuan_v1_moe"), run)
