"""gpt-oss (attention sinks, biased GQA attention, biased router and experts stored
(experts, in, out), clamped SwiGLU): exact parameter counts of the published configs
against transformers on the meta device, the presets against those configs, the published
totals, and what is refused."""

from __future__ import annotations

import pytest

from ftmem.arch import count_params, layout
from ftmem.errors import InvalidInputError
from ftmem.presets import get_model
from ftmem.run import RunConfig
from ftmem.sources import architecture_from_config
from tests.conftest import assert_transformers_count

# the config.json values that shape the tensors, from https://huggingface.co/openai/gpt-oss-20b
# and https://huggingface.co/openai/gpt-oss-120b (config.json): they differ only in the
# number of layers and of experts
TWENTY_B = dict(
    model_type="gpt_oss",
    vocab_size=201088,
    hidden_size=2880,
    intermediate_size=2880,
    head_dim=64,
    num_attention_heads=64,
    num_key_value_heads=8,
    num_hidden_layers=24,
    num_local_experts=32,
    num_experts_per_tok=4,
    experts_per_token=4,
    attention_bias=True,
    sliding_window=128,
    max_position_embeddings=131072,
    tie_word_embeddings=False,
    hidden_act="silu",
    rms_norm_eps=1e-05,
    swiglu_limit=7.0,
    rope_theta=150000,
    rope_scaling={
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "rope_type": "yarn",
        "truncate": False,
    },
    quantization_config={
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
        "quant_method": "mxfp4",
    },
)


def _layer_types(n: int) -> list[str]:
    return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]


CONFIGS = {
    "gpt-oss-20b": {**TWENTY_B, "layer_types": _layer_types(24)},
    "gpt-oss-120b": {
        **TWENTY_B,
        "num_hidden_layers": 36,
        "num_local_experts": 128,
        "layer_types": _layer_types(36),
    },
}
# the totals OpenAI publishes (gpt-oss model card, arXiv 2508.10925, Table 1: "20.91B" and
# "116.83B" total parameters), to the digits given
PUBLISHED = {"gpt-oss-20b": (2091, 1e7), "gpt-oss-120b": (11683, 1e7)}


def _by_hand(layers: int, experts: int) -> int:
    """The count from the tensors modeling_gpt_oss.py allocates (transformers 5.24):
    per block q/k/v/o with biases (64 heads x 64 = 4096 wide, 8 KV heads x 64 = 512),
    64 sinks, the router (E x 2880 + E), gate_up_proj E x 2880 x 5760 + its bias E x 5760,
    down_proj E x 2880 x 2880 + its bias E x 2880, two RMSNorms; the embedding and the
    untied head (201,088 x 2880 each) and the final norm."""
    h, q, kv, f, v = 2880, 4096, 512, 2880, 201088
    attention = (h * q + q) + 2 * (h * kv + kv) + (q * h + h) + 64
    mlp = (experts * h + experts) + experts * (h * 2 * f + 2 * f) + experts * (f * h + h)
    return layers * (attention + mlp + 2 * h) + 2 * v * h + h


@pytest.mark.parametrize("preset", sorted(CONFIGS))
def test_count_is_transformers_count(preset):
    """The count is what transformers 5.24 allocates for the published config (built on
    the meta device), the hand count above, and the preset says what the config says."""
    cfg = CONFIGS[preset]
    arch = assert_transformers_count(cfg, preset)
    assert count_params(arch) == _by_hand(cfg["num_hidden_layers"], cfg["num_local_experts"])


def test_block_tensors_are_named_and_shaped_as_transformers_builds_them():
    """The experts (E, in, out) and their `<proj>_bias` siblings, the router's bias, the
    sinks: every block tensor by its name and shape."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = {**CONFIGS["gpt-oss-20b"], "num_hidden_layers": 2, "layer_types": _layer_types(2)}
    arch = architecture_from_config(cfg, "gpt-oss-20b", "test")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(**cfg)
        )
    block = {n: tuple(p.shape) for n, p in model.model.layers[0].named_parameters()}
    assert block == {p.name: p.shape for p in layout(arch).block}


def test_hand_counts():
    """20,914,757,184 and 116,829,156,672: the exact totals behind 20.91B and 116.83B."""
    assert _by_hand(24, 32) == 20_914_757_184
    assert _by_hand(36, 128) == 116_829_156_672


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_count_rounds_to_the_published_total(preset):
    digits, unit = PUBLISHED[preset]
    assert round(count_params(get_model(preset)) / unit) == digits


def test_sdpa_is_refused_by_transformers():
    """transformers 5.24 has no sdpa path for gpt-oss (GptOssPreTrainedModel._supports_sdpa
    is False: the sinks join the eager softmax): asking for it raises, which is why every
    estimate runs its eager path."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(**CONFIGS["gpt-oss-20b"])
    config.num_hidden_layers = 1
    with (
        torch.device("meta"),
        pytest.raises(ValueError, match="scaled_dot_product_attention"),
    ):
        transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def test_eager_whatever_the_attention_asked_for():
    """sdpa and flash are estimated as the eager path (the estimate says so in a note)."""
    from ftmem import estimate

    eager = estimate("gpt-oss-20b", method="lora", precision="bf16", seq_len=1024, attn="eager")
    sdpa = estimate("gpt-oss-20b", method="lora", precision="bf16", seq_len=1024, attn="sdpa")
    assert eager.memory.activations_bytes == sdpa.memory.activations_bytes
    assert any("no sdpa path" in note for note in sdpa.notes)


def test_sinks_probabilities_are_kept():
    """The eager softmax over s + 1 logits (the sink) in the compute dtype and the row
    maxima's int64 indices, per head and layer: at s = 1024, b = 1, bf16, 64 heads, that is
    64 x 1024 x (1025 x 2 + 8) B per layer beside the rest."""
    from ftmem.arch import Architecture
    from ftmem.methods import plan_method
    from ftmem.ops.attention import Attention
    from ftmem.ops.context import LayerContext

    arch: Architecture = get_model("gpt-oss-20b")
    run = RunConfig(method="lora", precision="bf16", seq_len=1024, batch_size=1)
    ctx = LayerContext(arch, run, plan_method(arch, run), 1024)
    items = {x.what: x.nbytes for x in Attention.saved(ctx, frozenset("qkv"))}
    assert items["softmax output with the sink (s × (s + 1))"] == 64 * 1024 * 1025 * 2
    assert items["row maxima's indices"] == 64 * 1024 * 8


def test_gate_up_down_are_refused_all_linear_is_attention():
    """The experts are 3-D parameters, not nn.Linear, and peft has no conversion of
    gate/up/down targets for gpt-oss: they name nothing (--lora-targets experts is peft's
    target_parameters on them: tests/test_expert_lora.py); all-linear adapts q/k/v/o (the
    router is no nn.Linear either)."""
    from ftmem.methods import plan_method

    arch = get_model("gpt-oss-20b")
    with pytest.raises(InvalidInputError, match="--lora-targets experts"):
        plan_method(arch, RunConfig(method="lora", lora_targets="gate,up,down"))
    plan = plan_method(arch, RunConfig(method="lora", lora_targets="all-linear"))
    assert {lin.leaf for lin in plan.adapted} == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_qlora_leaves_router_and_expert_biases_in_the_base_dtype():
    """bitsandbytes quantises q/k/v/o (their biases cast to the compute dtype by the
    first forward); the router (no nn.Linear), the experts and their biases stay fp32
    under bf16-mixed."""
    from ftmem.methods import plan_method

    arch = get_model("gpt-oss-20b")
    plan = plan_method(arch, RunConfig(method="qlora", precision="bf16-mixed"))
    fmt = {g.name: g.fmt for g in plan.groups}
    assert fmt["self_attn.q_proj.weight"] == "nf4"
    assert fmt["self_attn.q_proj.bias"] == "bf16"
    assert fmt["mlp.router.bias"] == "fp32"
    assert fmt["mlp.experts.gate_up_proj_bias"] == "fp32"
    assert fmt["mlp.experts.gate_up_proj"] == "fp32"


@pytest.mark.parametrize("kw", [{"tp": 2}, {"cp": 2}, {"strategy": "colossalai-zero1", "ep": 2}])
def test_model_parallel_splits_not_modelled_are_refused(kw):
    """The sinks (per head) and the biased experts are not split over tensor, context or
    expert parallel ranks: refused in one sentence, not mis-laid out."""
    from ftmem import estimate

    with pytest.raises(InvalidInputError, match="attention sinks and biased experts"):
        estimate("gpt-oss-20b", method="full", precision="bf16", gpus=8, **kw)
