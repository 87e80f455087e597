"""peft's TinyLoRA: what trains (one vector of u per group of adapted linears), its
buffers, what each adapted linear keeps and its own backward, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the counts PEFT's MetaMathQA benchmark published for Llama-3.2-3B; the
buffers against the model peft builds; what one adapted linear keeps and its backward
against one peft TinyLoRA Linear run alone (here), the whole step in tests/accuracy (cases
``method=tinylora``).
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
    {"method": "tinylora"},
    {"method": "tinylora", "tinylora_targets": "all-linear", "tinylora_rank": 3},
    {"method": "tinylora", "tinylora_weight_tying": 1.0, "tinylora_u": 8},
    # 14 linears, round(14 · 0.75) = 10 groups of 1 (the last one takes the rest)
    {"method": "tinylora", "tinylora_targets": "all-linear", "tinylora_weight_tying": 0.25},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "falcon", "mixtral"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


@pytest.mark.parametrize(
    ("name", "weight_tying", "expected"),
    [("default", 0.0, 3584), ("weight-tying", 1.0, 64)],
)
def test_published_metamathqa_count(name: str, weight_tying: float, expected: int) -> None:
    """huggingface/peft@5d602fdbff04 method_comparison/MetaMathQA/results/
    tinylora--llama-3.2-3B-default.json: ``"num_trainable_params": 3584``,
    ``num_total_params`` 3,212,753,408 (r 2, u 64, q_proj and v_proj: 28 · 2 = 56
    linears, one vector of 64 each); tinylora--llama-3.2-3B-weight-tying.json
    (weight_tying 1.0): one vector for all, 64."""
    est = estimate("llama-3.2-3b", method="tinylora", tinylora_weight_tying=weight_tying)
    assert est.model.n_trainable_params == expected
    assert est.model.n_params + est.model.n_trainable_params == 3_212_749_824 + expected


def test_buffers_are_the_ones_peft_registers() -> None:
    """tinylora_A, tinylora_B (fp32 on a bf16 base: peft's autocast) and tinylora_P
    (fp32) as the model peft builds holds them."""
    pytest.importorskip("peft")
    from ftmem.measure.build import build_model
    from ftmem.release_buffers import adapter_buffer_bytes

    arch = tiny("llama")
    run = RunConfig(precision="bf16", device="cpu", method="tinylora", tinylora_rank=3)
    plan = plan_method(arch, run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(arch, run).model
    got = sum(b.nbytes for n, b in model.named_buffers() if ".tinylora_" in n)
    assert adapter_buffer_bytes(plan, run, arch.num_layers) == got


AUTOCAST = ("bf16-mixed", "bf16-autocast")


def _one_linear(torch, mode: str, shape: tuple[int, int], T: int) -> tuple:
    """What one peft TinyLoRA Linear (r 8, u 16) keeps after its forward beside its
    output, and the bytes above that and its output gradient at the peak of its backward
    less v's gradient, on the CPU; its input needs a gradient."""
    from peft import TinyLoraConfig, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(*shape, bias=False))
    base = torch.float32 if mode in ("fp32", "bf16-mixed") else torch.bfloat16
    cfg = TinyLoraConfig(r=8, u=16, target_modules=["up"], init_weights="uniform")
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
@pytest.mark.parametrize("shape", [(96, 160), (160, 96), (64, 64)], ids=str)
def test_one_peft_linear(mode: str, shape: tuple[int, int]) -> None:
    """TinyLoRA.saved and backward_own against one peft TinyLoRA Linear: what it keeps
    exact (h and R, never its input; under autocast 16-bit h and R and the 16-bit casts
    of P, B and A); its backward within v's gradient (on a bf16 base the last matmul's
    casts, or the first's with the input gradient's cast back, lead). Under bf16-mixed
    the fp32 base weight's 16-bit copy (out × in × 2, a linear's saved tensor, not the
    adapter's) is kept too, and freed before the input's gradients are summed."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.tinylora import TinyLoRA
    from ftmem.ops.context import LayerContext
    from ftmem.ops.saved import Side

    run = RunConfig(
        precision={"fp32": "fp32", "bf16-mixed": "bf16-mixed"}.get(mode, "bf16"),
        autocast=True if mode == "bf16-autocast" else None,
        device="cpu",
        method="tinylora",
        tinylora_rank=8,
        tinylora_u=16,
        tinylora_targets="up",
    )
    arch = tiny("llama", hidden_size=shape[0], intermediate_size=shape[1])
    plan = plan_method(arch, run)
    (lin,) = plan.banked
    T, e = 600, 4 if mode in ("fp32", "bf16-mixed") else 2  # the input's
    kept, backward, grads = _one_linear(torch, mode, shape, T)
    items, keeps_input = TinyLoRA.saved(LayerContext(arch, run, plan, T), lin, Side.MLP, True, e)
    assert not keeps_input
    weight_copy = shape[0] * shape[1] * 2 if mode == "bf16-mixed" else 0
    assert kept == sum(item.nbytes for item in items) + weight_copy
    ce = 4 if mode == "fp32" else 2  # the base output's
    assert abs(backward - TinyLoRA.backward_own(plan, run, lin, T, ce)) <= grads + weight_copy


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "tinylora", "--tinylora-u", "0"], "--tinylora-u: Input should be greater"),
        (["--method", "lora", "--tinylora-rank", "4"], "--tinylora-rank only applies to tinylora"),
        (["--method", "tinylora", "--tinylora-targets", " , "], "--tinylora-targets is empty"),
        (["--method", "tinylora", "--tinylora-targets", "zz"], "TinyLoRA target 'zz' matches no"),
        (["--method", "tinylora", "--tinylora-weight-tying", "1.5"], "--tinylora-weight-tying"),
        (["--method", "tinylora", "--adapter-dtype", "bf16"], "--adapter-dtype only applies"),
        (["--method", "tinylora", "--framework", "torchtune"], "has no --method tinylora"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_resolved_run_reports_the_tinylora_settings() -> None:
    run = estimate("llama-3.2-3b", method="tinylora").run
    assert (run.tinylora_rank, run.tinylora_u, run.tinylora_weight_tying) == (2, 64, 0.0)
    assert (run.tinylora_targets, run.adapter_dtype) == ("q,v", "fp32")
    assert run.adapted_modules == ["self_attn.q_proj", "self_attn.v_proj"]


def test_live_peft_tinylora_model_is_read() -> None:
    """A peft TinyLoRA model handed to the live integration reads as --method tinylora
    with its rank, u, weight tying and the modules peft wrapped."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.TinyLoraConfig(r=3, u=8, weight_tying=0.5, target_modules=["q_proj", "o_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["tinylora_rank"], s["tinylora_targets"]) == (
        "tinylora",
        3,
        "o_proj,q_proj",
    )
    assert (s["tinylora_u"], s["tinylora_weight_tying"]) == (8, 0.5)


@pytest.mark.parametrize("precision", [["bf16-mixed"], ["fp16-mixed"], ["bf16", "--autocast"]])
def test_autocast_is_estimated(precision: list[str], capsys) -> None:
    """TinyLoRA under autocast was refused (not modelled); its 16-bit products and buffer
    casts, its output in the input's dtype and its backward are modelled now (accuracy
    cases method=tinylora)."""
    from ftmem.cli import main

    args = ["estimate", "llama-3.2-3b", "--method", "tinylora", "--precision", *precision]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0 and err == "" and "GiB" in out
