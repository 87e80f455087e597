"""peft's MiSS and RoAd: what trains, what MiSS bat's rebuild holds, how they are read and
refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the counts PEFT's MetaMathQA benchmark published for Llama-3.2-3B;
memory against measurement in tests/accuracy (cases ``method=miss``, ``method=road``), and
bat's weight rebuild and its backward here against one MissLinear run alone.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from tests.conftest import tiny
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "miss"},
    {"method": "miss", "miss_rank": 8, "miss_init": "bat", "miss_targets": "attention"},
    {"method": "miss", "miss_rank": 16, "miss_init": "mini", "miss_mini_r": 8},
    {"method": "miss", "miss_rank": 7, "miss_targets": "all-linear", "adapter_dtype": "bf16"},
    {"method": "road", "road_group_size": 8},
    {
        "method": "road",
        "road_variant": "road_2",
        "road_group_size": 4,
        "road_targets": "all-linear",
    },
    {"method": "road", "road_variant": "road_4", "road_group_size": 8, "road_targets": "k,o"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


# huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/MetaMathQA/
# results/<name>.json "num_trainable_params"; experiments/<method>/<name>/adapter_config.json
# for the settings (target_modules null: q_proj, v_proj for Llama). Llama-3.2-3B: q 3072 →
# 3072, v 3072 → 1024 (8 KV heads of 128), 28 blocks.
PUBLISHED = [
    # r 64 × out per linear
    ("miss--llama-3.2-3B-default", {}, 28 * 64 * (3072 + 1024), 7_340_032),
    # out/r × r × r: the same count
    ("miss--llama-3.2-3B-bat", {"miss_init": "bat"}, 28 * 64 * (3072 + 1024), 7_340_032),
    # r × mini_r, 64 × 64 per linear
    (
        "miss--llama-3.2-3B-mini",
        {"miss_init": "mini", "miss_mini_r": 64},
        28 * 2 * 64 * 64,
        229_376,
    ),
]


@pytest.mark.parametrize(("name", "settings", "by_hand", "published"), PUBLISHED)
def test_published_metamathqa_miss_counts(
    name: str, settings: dict, by_hand: int, published: int
) -> None:
    est = estimate("llama-3.2-3b", method="miss", **settings)
    assert est.model.n_trainable_params == by_hand == published


def test_published_metamathqa_road_count() -> None:
    """road--llama-3.2-3B-lr_0.001.json: ``"num_trainable_params": 229376`` for road_2,
    group 64: theta and alpha of out each per linear, 28 · 2 · (3072 + 1024)."""
    est = estimate("llama-3.2-3b", method="road", road_variant="road_2")
    assert est.model.n_trainable_params == 28 * 2 * (3072 + 1024) == 229_376


def test_bat_rebuild_matches_miss_linear() -> None:
    """One MissLinear (bat) run alone on the CPU (ftmem's live-storage tracker, a bf16
    weight, the fp32 block, the input needing a gradient as in every block above the
    first): its forward peaks at the weight's clone (½ out × in of fp32) beside four fp32
    out × in (the cast copy, the bmm's contiguous blocks, the broadcast block and the
    product), MiSS.build_bytes; its backward, beyond what the forward kept, at the weight
    gradient and the bmm's block gradient less the rebuilt weight freed before them, plus
    the block's own gradient (MiSS.bat_backward)."""
    torch = pytest.importorskip("torch")
    from peft import MissConfig
    from peft.tuners.miss.layer import MissLinear

    from ftmem.adapters.miss import MiSS
    from ftmem.measure.tracker import LiveBytesTracker

    out_f, in_f, r, T = 192, 128, 32, 4
    arch = tiny("llama", hidden_size=128, intermediate_size=192)
    run = RunConfig(
        precision="bf16", method="miss", miss_init="bat", miss_rank=r, miss_targets="up"
    )
    plan = plan_method(arch, run)
    base = torch.nn.Linear(in_f, out_f, bias=False).to(torch.bfloat16).requires_grad_(False)
    lin = MissLinear(base, "default", MissConfig(r=r, init_weights="bat"), r=r)
    block = lin.miss_block["default"]
    block.data = block.data.float()
    x = torch.randn(T, in_f, dtype=torch.bfloat16, requires_grad=True)
    with LiveBytesTracker() as tracker:
        tracker.track(x, base.weight, block)
        start = tracker.current
        y = lin(x)
        forward_peak = tracker.peak - start
        tracker.peak = before = tracker.current
        y.sum().backward()
        backward_peak = tracker.peak - before
    w = out_f * in_f * 4

    def in_bytes(lin: object) -> int:
        return 2

    assert MiSS.build_bytes(plan, plan.miss[0]) == forward_peak == w // 2 + 4 * w
    assert MiSS.bat_build(run, plan, T, in_bytes, kept=False) == forward_peak
    expected = MiSS.bat_backward(run, plan, T, in_bytes)
    assert expected == w + r * out_f * 4 - T * in_f * 4
    # (beyond: x's gradient and its fp32 copy, T × in)
    assert expected <= backward_peak <= expected + 3 * T * in_f * 4


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "miss", "--miss-rank", "0"], "--miss-rank: Input should be greater than 0"),
        (["--method", "lora", "--miss-rank", "4"], "--miss-rank only applies to miss"),
        (["--method", "road", "--miss-init", "bat"], "--miss-init only applies to miss"),
        (["--method", "miss", "--miss-init", "big"], "--miss-init"),
        (["--method", "miss", "--miss-targets", " , "], "--miss-targets is empty"),
        (["--method", "miss", "--miss-rank", "5000"], "exceeds self_attn.q_proj's 4096 inputs"),
        (["--method", "miss", "--miss-init", "bat", "--miss-rank", "48"], "in r × r blocks"),
        (["--method", "miss", "--miss-init", "mini", "--miss-mini-r", "3"], "does not divide"),
        (
            ["--method", "miss", "--miss-init", "bat", "--precision", "bf16-mixed"],
            "MiSS bat under autocast is not modelled",
        ),
        (["--method", "road", "--road-group-size", "3"], "--road-group-size 3 is odd"),
        (["--method", "road", "--road-group-size", "96"], "does not divide self_attn.q_proj"),
        (["--method", "road", "--road-variant", "road_3"], "--road-variant"),
        (["--method", "road", "--road-targets", "zz"], "RoAd target 'zz' matches no linear"),
        (["--method", "lora", "--road-group-size", "8"], "--road-group-size only applies to road"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_road_under_autocast_is_estimated_as_its_ops_run() -> None:
    """RoAd under autocast was refused (RunConfig's NO_AUTOCAST). Its ops after the frozen
    linear (``_apply_road``: cos, sin, repeat_interleave, neg, stack, mul, add) are in no
    CUDA autocast list (the CPU's ``stack`` promotes, a no-op on its fp32 halves), torch
    2.13's registrations: they run in fp32 on the frozen output's fp32 cast as without
    autocast, and peft casts the result back to the frozen output's (16-bit) dtype. So
    on a bf16 model it keeps what it keeps without (measured: accuracy cases
    ``method=road`` under autocast, activations exact)."""
    torch = pytest.importorskip("torch")
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    ops = (
        "cos",
        "sin",
        "neg",
        "stack",
        "mul.Tensor",
        "add.Tensor",
        "repeat_interleave.self_Tensor",
    )
    lists = {
        op: {k for k in ("AutocastCUDA", "AutocastCPU") if has(f"aten::{op}", k)} for op in ops
    }
    assert lists == {op: ({"AutocastCPU"} if op == "stack" else set()) for op in ops}
    plain = estimate("llama-3.2-3b", method="road").memory
    cast = estimate("llama-3.2-3b", method="road", autocast=True).memory
    assert cast.activations_bytes == plain.activations_bytes
    assert estimate("llama-3.2-3b", method="road", precision="fp16-mixed").memory.activations_bytes


def test_miss_under_autocast_keeps_16_bit_casts() -> None:
    """MiSS (default) under autocast was refused. Its ``@ miss`` matmul keeps the summed
    input's and the block's 16-bit casts instead of the fp32 summed input (the block
    itself is a parameter): Llama-3.2-3B, q and v, r 64, T = 512, bf16 + autocast against
    bf16: per adapted linear T · r · (4 − 2) less, r · out · 2 more above the first block."""
    T, L, r = 512, 28, 64
    plain = estimate("llama-3.2-3b", method="miss", miss_rank=r, seq_len=T).memory
    cast = estimate("llama-3.2-3b", method="miss", miss_rank=r, seq_len=T, autocast=True).memory
    less = L * 2 * T * r * 2 - (L - 1) * r * (3072 + 1024) * 2
    assert plain.activations_bytes - cast.activations_bytes == less


def test_bat_with_16_bit_blocks_on_the_cpu_is_refused() -> None:
    """peft's get_delta_weight rebuilds a 16-bit block's weight in fp32 on the CPU only."""
    with pytest.raises(ValueError, match="MiSS bat with 16-bit blocks on --device cpu"):
        RunConfig(method="miss", miss_init="bat", adapter_dtype="bf16", device="cpu")
    RunConfig(method="miss", miss_init="bat", adapter_dtype="bf16", device="cuda")


def test_models_peft_cannot_wrap_are_refused() -> None:
    # peft 0.21.2 tuners/miss/model.py and tuners/road/layer.py dispatch nn.Linear only
    for method in ("miss", "road"):
        with pytest.raises(InvalidInputError, match="does not wrap gpt2's transformers Conv1D"):
            estimate("gpt2", method=method)
        with pytest.raises(InvalidInputError, match=f"does not model method {method}"):
            estimate("flan-t5-base", method=method)


def test_resolved_run_reports_the_settings() -> None:
    run = estimate("llama-3.2-3b", method="miss").run
    assert (run.miss_rank, run.miss_init, run.miss_mini_r, run.miss_targets) == (
        64,
        "default",
        1,
        "q,v",
    )
    assert run.adapted_modules == ["self_attn.q_proj", "self_attn.v_proj"]
    run = estimate("llama-3.2-3b", method="road", road_targets="o").run
    assert (run.road_variant, run.road_group_size, run.road_targets) == ("road_1", 64, "o")
    assert run.adapter_dtype == "fp32"
    assert run.adapted_modules == ["self_attn.o_proj"]


def test_bat_keeps_two_weights_where_default_keeps_an_r_wide_input() -> None:
    """At real size (Llama-3.2-3B, 512 tokens, bf16, fp32 blocks): the default keeps
    each adapted linear's summed input (T × r × 4); bat instead the bmm's fp32 blocks of
    the weight and the input cast to fp32 in every block, and the rebuilt fp32 weight in
    every block above the first (the first block's input needs no gradient)."""
    T, L, r = 512, 28, 64
    q, v = 3072 * 3072, 1024 * 3072
    default = estimate("llama-3.2-3b", method="miss", seq_len=T).memory
    bat = estimate("llama-3.2-3b", method="miss", miss_init="bat", seq_len=T).memory
    expected = (2 * L - 1) * (q + v) * 4 + L * 2 * T * 3072 * 4 - L * 2 * T * r * 4
    assert bat.activations_bytes - default.activations_bytes == expected


def test_live_peft_miss_model_is_read() -> None:
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.MissConfig(r=8, init_weights="bat", target_modules=["q_proj", "o_proj"])
    model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["miss_rank"], s["miss_init"]) == ("miss", 8, "bat")
    assert s["miss_targets"] == "o_proj,q_proj"
    assert s["adapter_dtype"] == "fp32"


def test_live_peft_road_model_is_read() -> None:
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.RoadConfig(variant="road_4", group_size=8, target_modules=["v_proj"])
    model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["road_variant"], s["road_group_size"]) == ("road", "road_4", 8)
    assert s["road_targets"] == "v_proj"
