"""peft's Lily: what trains (A per stride_A layers, one set of Bs per target, a router
per linear), what each adapted linear keeps and its own backward, how it is read and
refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the counts PEFT's MetaMathQA benchmark published for Llama-3.2-3B; what
one adapted linear keeps and its backward against one peft Lily Linear run alone (here),
the whole step in tests/accuracy (cases ``method=lily``).
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from tests.conftest import tiny
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "lily", "lily_rank": 4},
    {"method": "lily", "lily_targets": "all-linear", "lily_rank": 3, "lily_stride_a": 2},
    {"method": "lily", "lily_num_b": 3, "lily_stride_a": 3, "lily_targets": "k,o"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "falcon", "mixtral"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


@pytest.mark.parametrize(
    ("targets", "r", "expected", "total"),
    [("gate,up,down", 140, 9_485_280, 3_222_235_104), ("q,v", 896, 18_450_432, 3_231_200_256)],
)
def test_published_metamathqa_counts(targets: str, r: int, expected: int, total: int) -> None:
    """huggingface/peft@5d602fdbff04 method_comparison/MetaMathQA/results/
    lily--llama-3.2-3B-rank140-mlp-a2-b2-s8.0.json (``num_trainable_params`` 9,485,280)
    and lily--llama-3.2-3B-rank896-a2-b2-s2.0.json (18,450,432): stride_A 14 (two As per
    target over 28 layers), num_B 2 (one set of Bs per target), a router per linear. By
    hand for q,v at r 896: 2 · 896 · 3072 · 2 (A) + 2 · 896 · (3072 + 1024) (B) + 56 · 2 ·
    896 (routers)."""
    est = estimate(
        "llama-3.2-3b", method="lily", lily_rank=r, lily_stride_a=14, lily_targets=targets
    )
    by_hand = 2 * 896 * 3072 * 2 + 2 * 896 * (3072 + 1024) + 56 * 2 * 896
    assert est.model.n_trainable_params == expected
    assert targets != "q,v" or by_hand == expected
    assert est.model.n_params + est.model.n_trainable_params == total


AUTOCAST = ("bf16-mixed", "bf16-autocast")


def _one_linear(torch, mode: str, shape: tuple[int, int], T: int) -> tuple:
    """What one peft Lily Linear (r 8, 3 Bs) keeps after its forward beside its output,
    and the bytes above that and its output gradient at the peak of its backward less the
    trained tensors' gradients, on the CPU; its input needs a gradient."""
    from peft import LilyConfig, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(*shape, bias=False))
    base = torch.float32 if mode in ("fp32", "bf16-mixed") else torch.bfloat16
    cfg = LilyConfig(r=8, num_B=3, target_modules=["up"], init_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model.to(base), cfg, autocast_adapter_dtype=True)
    x = torch.randn(T, shape[0], dtype=base, requires_grad=True) * 1  # (not a leaf)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode in AUTOCAST):
            y = model(x)
        kept = tracker.current - start - y.nbytes
        g = torch.ones_like(y)  # (held by the caller)
        tracker.peak = before = tracker.current
        y.backward(g)
        grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
        return kept, tracker.peak - before - grads, grads


@pytest.mark.parametrize("mode", ["fp32", "bf16", *AUTOCAST])
@pytest.mark.parametrize("shape", [(96, 160), (160, 96), (64, 64), (16, 512)], ids=str)
def test_one_peft_linear(mode: str, shape: tuple[int, int]) -> None:
    """Lily.saved and backward_own against one peft Lily Linear: what it keeps exact (the
    input's cast where the dtypes differ, hidden, the softmax, the mixing weights, the
    combined B; under CPU autocast all 16-bit, with the 16-bit copies of the input, A, the
    router weight and the Bs); its backward within the trained tensors' gradients. Under
    bf16-mixed the fp32 base weight's 16-bit copy (out × in × 2, the frozen linear's saved
    tensor, not the adapter's) is kept too, and freed before the input's gradients are
    summed. (16, 512) at 8 tokens: the einsum's moment is the largest."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.lily import Lily
    from ftmem.ops.context import LayerContext
    from ftmem.ops.saved import Side

    run = RunConfig(
        precision={"fp32": "fp32", "bf16-mixed": "bf16-mixed"}.get(mode, "bf16"),
        autocast=True if mode.endswith("-autocast") else None,
        device="cpu",
        method="lily",
        lily_rank=8,
        lily_num_b=3,
        lily_targets="up",
    )
    arch = tiny("llama", hidden_size=shape[0], intermediate_size=shape[1])
    plan = plan_method(arch, run)
    (lin,) = plan.banked
    T = 8 if shape == (16, 512) else 600
    e = 4 if mode in ("fp32", "bf16-mixed") else 2  # the input's
    kept, backward, grads = _one_linear(torch, mode, shape, T)
    items, keeps_input = Lily.saved(LayerContext(arch, run, plan, T), lin, Side.MLP, True, e)
    assert keeps_input == (mode == "fp32")
    weight_copy = shape[0] * shape[1] * 2 if mode == "bf16-mixed" else 0
    assert kept == sum(item.nbytes for item in items) + weight_copy
    ce = 4 if mode == "fp32" else 2  # the base output's
    assert abs(backward - Lily.backward_own(plan, run, lin, T, ce)) <= grads + weight_copy


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "lily", "--lily-rank", "0"], "--lily-rank: Input should be greater"),
        (["--method", "lora", "--lily-stride-a", "4"], "--lily-stride-a only applies to lily"),
        (["--method", "lily", "--lily-targets", " , "], "--lily-targets is empty"),
        (["--method", "lily", "--lily-targets", "zz"], "Lily target 'zz' matches no"),
        (["--method", "lily", "--lily-num-b", "1"], "--lily-num-b must be at least 2"),
        (["--method", "lily", "--adapter-dtype", "bf16"], "--adapter-dtype only applies"),
        (["--method", "lily", "--framework", "torchtune"], "has no --method lily"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_resolved_run_reports_the_lily_settings() -> None:
    run = estimate("llama-3.2-3b", method="lily").run
    assert (run.lily_rank, run.lily_stride_a, run.lily_num_b) == (32, 1, 2)
    assert (run.lily_targets, run.adapter_dtype) == ("q,v", "fp32")
    assert run.adapted_modules == ["self_attn.q_proj", "self_attn.v_proj"]


def test_live_peft_lily_model_is_read() -> None:
    """A peft Lily model handed to the live integration reads as --method lily with its
    rank, stride, Bs and the modules peft wrapped."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.LilyConfig(r=3, stride_A=2, num_B=3, target_modules=["q_proj", "o_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["lily_rank"], s["lily_targets"]) == ("lily", 3, "o_proj,q_proj")
    assert (s["lily_stride_a"], s["lily_num_b"]) == (2, 3)


@pytest.mark.parametrize("precision", [["bf16-mixed"], ["fp16-mixed"], ["bf16", "--autocast"]])
def test_autocast_is_estimated(precision: list[str], capsys) -> None:
    """Lily under autocast was refused (not modelled); its 16-bit casts of the input, A,
    the router and the Bs, CUDA's fp32 softmax and its backward are modelled now (accuracy
    cases method=lily)."""
    from ftmem.cli import main

    args = ["estimate", "llama-3.2-3b", "--method", "lily", "--precision", *precision]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0 and err == "" and "GiB" in out


def test_cuda_autocast_keeps_an_fp32_softmax() -> None:
    """CUDA's autocast runs softmax in fp32 (its fp32_set_opt_dtype list; the CPU's lists
    have no softmax): the router's softmax each adapted linear keeps is T × num_B × 4 there,
    × 2 on the CPU (measured in test_one_peft_linear); nothing else differs."""
    from ftmem.adapters.lily import Lily
    from ftmem.ops.context import LayerContext
    from ftmem.ops.saved import Side

    arch, T, kept = tiny("llama"), 512, {}
    for device in ("cuda", "cpu"):
        run = RunConfig(precision="bf16-mixed", method="lily", lily_num_b=3, device=device)
        plan = plan_method(arch, run)
        ctx = LayerContext(arch, run, plan, T)
        items, _ = Lily.saved(ctx, plan.banked[0], Side.ATTENTION, True, 4)
        kept[device] = {item.what: item.nbytes for item in items}
    assert {n: kept["cuda"][n] - kept["cpu"][n] for n in kept["cpu"]} == {
        n: T * 3 * 2 if "softmax" in n else 0 for n in kept["cpu"]
    }


def test_autocast_lists_lily_runs_under() -> None:
    """The lists modelled (torch 2.13's dispatcher): linear, matmul and bmm lower precision
    on both devices; einsum CUDA's only (the CPU's decomposes to a bmm, which casts the same
    operands); softmax CUDA's fp32 list only; mean, mul, add and reshape on neither."""
    torch = pytest.importorskip("torch")
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    want = {
        "linear": (True, True),
        "matmul": (True, True),
        "bmm": (True, True),
        "einsum": (True, False),
        "softmax.int": (True, False),
        "mean.dim": (False, False),
        "mul.Tensor": (False, False),
        "add.Tensor": (False, False),
        "reshape": (False, False),
    }
    for op, (cuda, cpu) in want.items():
        got = (has(f"aten::{op}", "AutocastCUDA"), has(f"aten::{op}", "AutocastCPU"))
        assert got == (cuda, cpu), op
