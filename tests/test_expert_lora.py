"""LoRA on the routed experts of transformers-5 MoE models (3-D parameters), through
peft's target_parameters (peft 0.21.2 tuners/lora/layer.py ParamWrapper).

1. What trains: ftmem's trainable count equals peft's own ``get_nb_trainable_parameters``
   on each tiny MoE family, for the experts named directly (target_parameters), for the
   roles gate/up/down that peft rewrites into them (its _convert_peft_config_moe, gate_up
   at twice the rank) and for targets that name a layer (OpenAI's gpt-oss recipe).
2. At real size, a count derived by hand here from the published shapes.
3. What peft refuses on the experts, ftmem refuses with one sentence.
Memory is checked against measurement in tests/accuracy (docs/accuracy.md).
"""

from __future__ import annotations

import warnings

import pytest

from ftmem.errors import InvalidInputError
from ftmem.methods import plan_method
from ftmem.presets import get_model
from ftmem.run import RunConfig
from tests.conftest import tiny

MOE = ("mixtral", "qwen3_moe", "gpt_oss", "deepseek_v3", "olmoe")

# what a user of peft writes for each ftmem target (transformers-4 names for the roles:
# peft converts them; Mixtral's experts were w1/w3/w2)
V4_NAMES = {"mixtral": ["w1", "w3", "w2"], "qwen3_moe": ["gate_proj", "up_proj", "down_proj"]}
V4_NAMES["deepseek_v3"] = V4_NAMES["olmoe"] = V4_NAMES["qwen3_moe"]


def _peft_trainable(family: str, r: int, **lora: object) -> int:
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftmem.measure.build import hf_config

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        config = hf_config(tiny(family), "eager")
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, **lora))  # type: ignore[arg-type]
    return peft_model.get_nb_trainable_parameters()[0]


def _ftmem_trainable(family: str, targets: str, r: int) -> int:
    run = RunConfig(method="lora", lora_targets=targets, lora_r=r)
    return plan_method(tiny(family), run).n_trainable


@pytest.mark.parametrize("family", MOE)
def test_experts_count_as_peft_target_parameters(family: str) -> None:
    got = _peft_trainable(family, 4, target_parameters=["gate_up_proj", "down_proj"])
    assert _ftmem_trainable(family, "experts", 4) == got
    got = _peft_trainable(
        family, 4, target_modules=["o_proj"], target_parameters=["experts.down_proj"]
    )
    assert _ftmem_trainable(family, "o,down_proj", 4) == got


@pytest.mark.parametrize("family", sorted(V4_NAMES))
def test_gate_up_down_count_as_peft_converts_them(family: str) -> None:
    # peft rewrites the transformers-4 names into target_parameters, gate_up at rank 2r,
    # and DeepSeek's dense and shared MLPs lose their adapters
    got = _peft_trainable(family, 4, target_modules=V4_NAMES[family])
    assert _ftmem_trainable(family, "gate,up,down", 4) == got


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "gpt_oss", "olmoe"])
def test_all_linear_counts_as_peft_reads_it(family: str) -> None:
    # peft 0.21.2 resolves all-linear on Mixtral, Qwen3-MoE and OLMoE to the attention, the
    # router (gate.weight) and the experts (gate_up at 2r); on gpt-oss to the attention
    got = _peft_trainable(family, 4, target_modules="all-linear")
    assert _ftmem_trainable(family, "all-linear", 4) == got


def test_targets_naming_a_layer_count_as_peft() -> None:
    params = ["1.mlp.experts.gate_up_proj", "1.mlp.experts.down_proj"]
    got = _peft_trainable("gpt_oss", 8, target_modules="all-linear", target_parameters=params)
    assert _ftmem_trainable("gpt_oss", "all-linear," + ",".join(params), 8) == got


def test_gpt_oss_20b_recipe_count_by_hand() -> None:
    """OpenAI's cookbook (articles/gpt-oss/fine-tune-transfomers.ipynb): r=8 on all-linear
    (q, k, v, o: the router is no nn.Linear) and on the experts of layers 7, 15 and 23.
    gpt-oss-20b (config.json): h 2880, 64 query heads and 8 key/value heads of 64, 32
    experts of 2880, 24 layers. LoRA adds r·(in + out) per linear, and per expert
    parameter r·E·(in + out) (lora_A: rank·E × in, lora_B: out × rank·E)."""
    r, h, q, kv, f, E = 8, 2880, 64 * 64, 8 * 64, 2880, 32
    attention = r * ((h + q) + 2 * (h + kv) + (q + h))  # 165,888 per layer
    experts = r * E * ((h + 2 * f) + (f + h))  # gate_up + down: 3,686,400 per layer
    by_hand = 24 * attention + 3 * experts
    assert by_hand == 15_040_512
    layers = ",".join(
        f"{i}.mlp.experts.{p}" for i in (7, 15, 23) for p in ("gate_up_proj", "down_proj")
    )
    run = RunConfig(method="lora", lora_targets="all-linear," + layers, lora_r=8)
    assert plan_method(get_model("gpt-oss-20b"), run).n_trainable == by_hand


@pytest.mark.parametrize(
    ("family", "settings", "says"),
    [
        ("gpt_oss", {"lora_targets": "gate,up,down"}, "--lora-targets experts"),
        ("qwen3_moe", {"lora_targets": "gate,down"}, "target both or neither"),
        ("qwen3_moe", {"lora_targets": "experts", "lora_dropout": 0.05}, "--lora-dropout 0"),
        ("qwen3_moe", {"lora_targets": "experts", "method": "dora"}, "DoRA"),
        ("qwen3_moe", {"lora_targets": "experts", "method": "qlora"}, "not modelled"),
        ("llama", {"lora_targets": "experts"}, "no routed experts"),
        ("qwen3_moe", {"lora_targets": "7.mlp.experts.down_proj"}, "blocks 0 to 1"),
    ],
)
def test_refusals_say_why(family: str, settings: dict, says: str) -> None:
    run = RunConfig(**{"method": "lora", **settings})
    with pytest.raises(InvalidInputError, match=says):
        plan_method(tiny(family), run)


def test_model_parallel_layouts_are_refused() -> None:
    """How tensor, pipeline or expert parallel ranks rebuild a split expert stack has not
    been measured: data parallelism only."""
    from ftmem.estimate import estimate_step
    from ftmem.parallel import ParallelConfig

    run = RunConfig(method="lora", lora_targets="attention,experts", batch_size=1, seq_len=64)
    arch = get_model("mixtral-8x7b")
    with pytest.raises(InvalidInputError, match="data parallelism"):
        estimate_step(arch, run, par=ParallelConfig(gpus=8, strategy="colossalai-zero1", ep=8))
    estimate_step(arch, run, par=ParallelConfig(gpus=8, strategy="zero3"))


def _peft_wrapped(family: str, **lora: object) -> set[str]:
    """The parameters peft's ParamWrapper wraps in the model's blocks, each as
    ``<block>.<path in the block>.<parameter>`` (nested wrappers' base_layer dropped)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.layer import ParamWrapper
    from transformers import AutoModelForCausalLM

    from ftmem.measure.build import hf_config

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(hf_config(tiny(family), "eager"))
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, **lora))  # type: ignore[arg-type]
    out = set()
    for name, module in model.named_modules():
        if isinstance(module, ParamWrapper):
            path = name.split("layers.", 1)[1].replace(".base_layer", "")
            out.add(f"{path}.{module.parameter_name}")
    return out


def _estimated(family: str, targets: str) -> list[str]:
    from ftmem.estimate import estimate_step

    run = RunConfig(method="lora", lora_targets=targets, lora_r=4, batch_size=1, seq_len=16)
    return estimate_step(tiny(family), run).run.adapted_parameters or []


@pytest.mark.parametrize(
    ("family", "targets", "peft_config"),
    [
        # peft's own resolution of all-linear: the router's weight and both expert stacks
        ("olmoe", "all-linear", {"target_modules": "all-linear"}),
        ("qwen3_moe", "experts", {"target_parameters": ["gate_up_proj", "down_proj"]}),
        (
            "gpt_oss",
            "attention,1.mlp.experts.down_proj",
            {"target_modules": "all-linear", "target_parameters": ["1.mlp.experts.down_proj"]},
        ),
    ],
)
def test_json_lists_the_parameters_peft_wraps(family, targets, peft_config) -> None:
    """``adapted_parameters`` (--format json) names every parameter peft wraps, in every
    block it wraps it (a name without a block index is in every block with experts)."""
    blocks = tiny(family).num_layers
    listed = set()
    for path in _estimated(family, targets):
        first = path.split(".", 1)[0]
        listed |= {path} if first.isdigit() else {f"{i}.{path}" for i in range(blocks)}
    assert listed == _peft_wrapped(family, **peft_config)


def test_json_leaves_adapted_parameters_out_without_expert_lora() -> None:
    from ftmem.estimate import estimate_step

    est = estimate_step(tiny("olmoe"), RunConfig(method="lora", lora_targets="q,v"))
    assert "adapted_parameters" not in est.model_dump(mode="json")["run"]
