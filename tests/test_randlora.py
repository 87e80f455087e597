"""peft's RandLoRA: what trains (the scalings per linear), the shared random bases it
keeps as buffers, the scaled base each forward builds and keeps, each adapted linear's
own backward, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B; the
bases against the buffers peft registers; what one adapted linear keeps and its backward
against one peft RandLoRA Linear run alone (here), the whole step in tests/accuracy
(cases ``method=randlora``).
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
    {"method": "randlora"},
    {"method": "randlora", "randlora_targets": "all-linear", "randlora_rank": 7},
    {"method": "randlora", "randlora_targets": "k,o", "randlora_rank": 16},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "falcon", "mixtral"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04 method_comparison/MetaMathQA/results/
    randlora--llama-3.2-3B-default.json: ``"num_trainable_params": 9289728``,
    ``num_total_params`` 3,222,039,552 for r 32 on q_proj and v_proj. By hand: n =
    ceil(min(in, out) / r) bases, λ (r × n) and γ (n × min(in, out)) per linear; q 3072 →
    3072 (96 bases), v 3072 → 1024 (32 bases), 28 blocks."""
    est = estimate("llama-3.2-3b", method="randlora")
    q, v = 32 * 96 + 96 * 3072, 32 * 32 + 32 * 1024
    assert est.model.n_trainable_params == 28 * (q + v) == 9_289_728
    assert est.model.n_params + est.model.n_trainable_params == 3_222_039_552


def test_bases_match_peft_s_buffers() -> None:
    """On a tiny model, all linears: the buffer bytes peft registers (each layer holds the
    shared BufferDict: counted once), fp32."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.randlora import basis_bytes
    from ftmem.measure.build import build_model

    arch = tiny("llama")
    run = RunConfig(
        precision="bf16",
        device="cpu",
        method="randlora",
        randlora_targets="all-linear",
        randlora_rank=7,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(arch, run).model
    buffers = [b for n, b in model.named_buffers(remove_duplicate=False) if ".randlora_" in n]
    seen = {b.untyped_storage()._cdata: b.untyped_storage().nbytes() for b in buffers}
    assert {b.dtype for b in buffers} == {torch.float32}
    assert basis_bytes(arch, run, plan_method(arch, run).dtypes) == sum(seen.values())


AUTOCAST = ("bf16-mixed", "bf16-autocast")


def _one_linear(torch, mode: str, shape: tuple[int, int], T: int, x_grad: bool) -> tuple:
    """What one peft RandLoRA Linear (r 8) keeps after its forward beside its output, and
    the bytes above that and its output gradient at the peak of its backward less the
    scalings' gradients, on the CPU."""
    from peft import RandLoraConfig, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(*shape, bias=False))
    base = torch.float32 if mode in ("fp32", "bf16-mixed") else torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(
            model.to(base),
            RandLoraConfig(r=8, target_modules=["up"]),
            autocast_adapter_dtype=True,
        )
    x = torch.randn(T, shape[0], dtype=base, requires_grad=x_grad) * 1  # (not a leaf)
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


@pytest.mark.parametrize("T", [600, 8])
@pytest.mark.parametrize("x_grad", [True, False])
@pytest.mark.parametrize("mode", ["fp32", "bf16", *AUTOCAST])
@pytest.mark.parametrize("shape", [(96, 160), (160, 96), (64, 64)], ids=str)
def test_one_peft_linear(mode: str, shape: tuple[int, int], x_grad: bool, T: int) -> None:
    """RandLoRA.saved and backward_own against one peft RandLoRA Linear, with and without
    the input's gradient, at 600 tokens (the output-side products are the peak) and at 8
    (the scaled base's backward is): what it keeps exact (the input's cast or h, and the
    scaled base where the input needs a gradient; under autocast the 16-bit casts of
    the input, the scaled base and the fixed base's slice); its backward within the
    scalings' gradients (made by the moment or not). Under bf16-mixed the fp32 base
    weight's 16-bit copy (out × in × 2, a linear's saved tensor, not the adapter's) is
    kept too, and freed before the input's gradients are summed."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.randlora import RandLoRA
    from ftmem.ops.context import LayerContext
    from ftmem.ops.saved import Side

    run = RunConfig(
        precision={"fp32": "fp32", "bf16-mixed": "bf16-mixed"}.get(mode, "bf16"),
        autocast=True if mode == "bf16-autocast" else None,
        device="cpu",
        method="randlora",
        randlora_rank=8,
        randlora_targets="up",
    )
    arch = tiny("llama", hidden_size=shape[0], intermediate_size=shape[1])
    plan = plan_method(arch, run)
    (lin,) = plan.banked
    e = 2 if mode in ("bf16", "bf16-autocast") else 4  # the input's
    kept, backward, grads = _one_linear(torch, mode, shape, T, x_grad)
    items, _ = RandLoRA.saved(LayerContext(arch, run, plan, T), lin, Side.MLP, x_grad, e)
    weight_copy = shape[0] * shape[1] * 2 if mode == "bf16-mixed" and x_grad else 0
    assert kept == sum(item.nbytes for item in items) + weight_copy
    ce = 4 if mode == "fp32" else 2  # the base output's
    want = RandLoRA.backward_own(plan, run, lin, T, ce, x_grad)
    assert abs(backward - want) <= grads + weight_copy


def test_scaled_base_kept_at_real_size() -> None:
    """Llama-3.2-3B, r 32 on q,v (bf16 base, fp32 scalings): above the first block each
    adapted linear keeps its scaled base, r·n × min(in, out) fp32 (q 3072 × 3072, v 1024
    × 1024); per token q keeps its fp32 input cast (in <= out) and v its h (32 · 32 wide),
    where LoRA r 1 keeps both inputs' casts and 1-wide outputs."""
    T = 512
    est = estimate("llama-3.2-3b", method="randlora", seq_len=T).memory
    # per token: q keeps its fp32 input cast (in <= out), v its h (T × 32·32 = 1024)
    per_token = 28 * 4 * (3072 + 1024)
    base = estimate("llama-3.2-3b", method="lora", lora_r=1, seq_len=T).memory
    lora_per_token = 28 * 4 * 2 * (3072 + 1)  # LoRA r1: q's and v's input casts and r-wide outs
    bases = 27 * 4 * (3072 * 3072 + 1024 * 1024)
    diff = est.activations_bytes - base.activations_bytes
    assert diff == bases + T * (per_token - lora_per_token)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "randlora", "--randlora-rank", "0"], "--randlora-rank: Input should be"),
        (["--method", "vera", "--randlora-rank", "4"], "--randlora-rank only applies to randlora"),
        (["--method", "randlora", "--randlora-targets", " , "], "--randlora-targets is empty"),
        (["--method", "randlora", "--randlora-targets", "zz"], "RandLoRA target 'zz' matches"),
        (["--method", "randlora", "--adapter-dtype", "bf16"], "RandLoRA with 16-bit scalings"),
        (["--method", "randlora", "--framework", "litgpt"], "has no --method randlora"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_resolved_run_reports_the_randlora_settings() -> None:
    run = estimate("llama-3.2-3b", method="randlora").run
    assert (run.randlora_rank, run.randlora_targets, run.adapter_dtype) == (32, "q,v", "fp32")
    assert run.adapted_modules == ["self_attn.q_proj", "self_attn.v_proj"]


def test_live_peft_randlora_model_is_read() -> None:
    """A peft RandLoRA model handed to the live integration reads as --method randlora
    with its rank and the modules peft wrapped."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.RandLoraConfig(r=4, target_modules=["q_proj", "o_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["randlora_rank"], s["randlora_targets"]) == (
        "randlora",
        4,
        "o_proj,q_proj",
    )


@pytest.mark.parametrize("precision", [["bf16-mixed"], ["fp16-mixed"], ["bf16", "--autocast"]])
def test_autocast_is_estimated(precision: list[str], capsys) -> None:
    """RandLoRA under autocast was refused (not modelled); its 16-bit casts, its output
    in the input's dtype and its backward are modelled now (accuracy cases
    method=randlora)."""
    from ftmem.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "llama-3.2-3b", "--method", "randlora", "--precision", *precision])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0 and err == "" and "GiB" in out
