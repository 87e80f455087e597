"""peft's UniLoRA: what trains (theta_d once for the whole model), its index and scale
buffers, what each adapted linear keeps and its own backward, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B; the
buffers against the model peft builds; what one adapted linear keeps and its backward
against one peft UniLoRA Linear run alone (here), the whole step in tests/accuracy (cases
``method=unilora``).
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
    {"method": "unilora"},
    {"method": "unilora", "unilora_targets": "all-linear", "unilora_rank": 3},
    {"method": "unilora", "unilora_theta_length": 40, "unilora_targets": "k,o"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "falcon", "mixtral"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04 method_comparison/MetaMathQA/results/
    unilora--llama-3.2-3B-default.json: ``"num_trainable_params": 256``,
    ``num_total_params`` 3,212,750,080 (r 32, theta_d_length 256, q_proj and v_proj):
    theta_d alone trains, once for the model."""
    est = estimate("llama-3.2-3b", method="unilora", unilora_rank=32)
    assert est.model.n_trainable_params == 256
    assert est.model.n_params + est.model.n_trainable_params == 3_212_750_080


def test_buffers_are_the_ones_peft_registers() -> None:
    """unilora_indices_A/B (int64) and unilora_scales_A/B (fp32 on a bf16 base: peft's
    autocast) as the model peft builds holds them."""
    pytest.importorskip("peft")
    from ftmem.measure.build import build_model
    from ftmem.release_buffers import adapter_buffer_bytes

    arch = tiny("llama")
    run = RunConfig(precision="bf16", device="cpu", method="unilora", unilora_rank=3)
    plan = plan_method(arch, run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(arch, run).model
    got = sum(b.nbytes for n, b in model.named_buffers() if ".unilora_" in n)
    assert adapter_buffer_bytes(plan, run, arch.num_layers) == got


AUTOCAST = ("bf16-mixed", "bf16-autocast")


def _one_linear(torch, mode: str, shape: tuple[int, int], T: int) -> tuple:
    """What one peft UniLoRA Linear (r 8, theta_d 32) keeps after its forward beside its
    output, and the bytes above that and its output gradient at the peak of its backward
    less theta_d's gradient, on the CPU; its input needs a gradient."""
    from peft import UniLoraConfig, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(*shape, bias=False))
    base = torch.float32 if mode in ("fp32", "bf16-mixed") else torch.bfloat16
    cfg = UniLoraConfig(r=8, theta_d_length=32, target_modules=["up"])
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
    """UniLoRA.saved and backward_own against one peft UniLoRA Linear: what it keeps
    exact (the input's cast where the dtypes differ, A, h, B; under autocast 16-bit casts
    of the input, A and B and a 16-bit h); its backward within theta_d's gradient. Under
    bf16-mixed the fp32 base weight's 16-bit copy (out × in × 2, a linear's saved tensor,
    not the adapter's) is kept too, and freed before the input's gradients are summed."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.unilora import UniLoRA
    from ftmem.ops.context import LayerContext
    from ftmem.ops.saved import Side

    run = RunConfig(
        precision={"fp32": "fp32", "bf16-mixed": "bf16-mixed"}.get(mode, "bf16"),
        autocast=True if mode == "bf16-autocast" else None,
        device="cpu",
        method="unilora",
        unilora_rank=8,
        unilora_theta_length=32,
        unilora_targets="up",
    )
    arch = tiny("llama", hidden_size=shape[0], intermediate_size=shape[1])
    plan = plan_method(arch, run)
    (lin,) = plan.banked
    T, e = 600, 4 if mode in ("fp32", "bf16-mixed") else 2  # the input's
    kept, backward, grads = _one_linear(torch, mode, shape, T)
    items, keeps_input = UniLoRA.saved(LayerContext(arch, run, plan, T), lin, Side.MLP, True, e)
    assert keeps_input == (mode == "fp32")  # (fp32: the input is theta_d's dtype, no cast)
    weight_copy = shape[0] * shape[1] * 2 if mode == "bf16-mixed" else 0
    assert kept == sum(item.nbytes for item in items) + weight_copy
    ce = 4 if mode == "fp32" else 2  # the base output's
    assert abs(backward - UniLoRA.backward_own(plan, run, lin, T, ce)) <= grads + weight_copy


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "unilora", "--unilora-rank", "0"], "--unilora-rank: Input should be greater"),
        (["--method", "lora", "--unilora-theta-length", "4"], "only applies to unilora"),
        (["--method", "unilora", "--unilora-targets", " , "], "--unilora-targets is empty"),
        (["--method", "unilora", "--unilora-targets", "zz"], "UniLoRA target 'zz' matches no"),
        (["--method", "unilora", "--adapter-dtype", "bf16"], "--adapter-dtype only applies"),
        (["--method", "unilora", "--framework", "torchtune"], "has no --method unilora"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_resolved_run_reports_the_unilora_settings() -> None:
    run = estimate("llama-3.2-3b", method="unilora").run
    assert (run.unilora_rank, run.unilora_theta_length, run.unilora_targets) == (4, 256, "q,v")
    assert run.adapter_dtype == "fp32"
    assert run.adapted_modules == ["self_attn.q_proj", "self_attn.v_proj"]


def test_live_peft_unilora_model_is_read() -> None:
    """A peft UniLoRA model handed to the live integration reads as --method unilora
    with its rank, theta_d length and the modules peft wrapped."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.UniLoraConfig(r=3, theta_d_length=24, target_modules=["q_proj", "o_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["unilora_rank"], s["unilora_targets"]) == ("unilora", 3, "o_proj,q_proj")
    assert s["unilora_theta_length"] == 24


@pytest.mark.parametrize("precision", [["bf16-mixed"], ["fp16-mixed"], ["bf16", "--autocast"]])
def test_autocast_is_estimated(precision: list[str], capsys) -> None:
    """UniLoRA under autocast was refused (not modelled); its 16-bit casts of the input, A
    and B, its output in the input's dtype and its backward are modelled now (accuracy
    cases method=unilora)."""
    from ftmem.cli import main

    args = ["estimate", "llama-3.2-3b", "--method", "unilora", "--precision", *precision]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0 and err == "" and "GiB" in out
