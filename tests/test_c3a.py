"""peft's C3A: what trains, what one adapted linear keeps and holds in its forward and
backward, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B;
memory against measurement in tests/accuracy (cases ``method=c3a``), and C3A.saved,
C3A.forward_transient and C3A.backward_own here against one peft C3A Linear run alone.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.cli import main
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from tests.conftest import tiny
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "c3a", "c3a_block_size": 8},
    {"method": "c3a", "c3a_targets": "all-linear", "c3a_block_size": 4},
    {"method": "c3a", "c3a_targets": "k,o", "c3a_block_size": 8},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "falcon", "mixtral"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/c3a--llama-3.2-3B-default.json ``"num_trainable_params": 5505024``
    (block_size 64 on q_proj, v_proj): a kernel of out/b × in/b × b = out · in / b per
    adapted linear; 28 · (3072 · 3072 + 1024 · 3072) / 64 = 5,505,024. Its
    ``num_total_params`` 3,218,254,848 is the base's 3,212,749,824 plus these."""
    est = estimate("llama-3.2-3b", method="c3a", c3a_block_size=64)
    n = 28 * (3072 * 3072 + 1024 * 3072) // 64
    assert est.model.n_trainable_params == n == 5_505_024
    assert est.model.n_params + n == 3_218_254_848


def _one_linear(
    torch, base, shape: tuple[int, int, int], T: int, in_grad: bool, autocast: bool = False
):
    """One peft C3A Linear on the CPU (under its bf16 autocast with ``autocast``): what the
    forward kept and its peak beyond that and the output, and the backward's peak above
    what it kept and the output gradient, less the kernel's gradient."""
    from peft import C3AConfig, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    in_f, out_f, b = shape
    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(in_f, out_f, bias=False))
    config = C3AConfig(block_size=b, target_modules=["up"], init_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model.to(base), config, autocast_adapter_dtype=True)
    x = torch.randn(T, in_f, dtype=base, requires_grad=in_grad)
    x = x * 1 if in_grad else x  # (not a leaf, as in a model)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters())
        start = tracker.current
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = model(x)
        out = y.numel() * y.element_size()
        kept = tracker.current - start - out
        forward = tracker.peak - start - out - kept
        g = torch.ones_like(y)
        tracker.peak = before = tracker.current
        y.backward(g)
        return kept, forward, tracker.peak - before - in_f * out_f // b * 4


@pytest.mark.parametrize("base", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(96, 160, 16), (512, 64, 32), (256, 512, 64)], ids=str)
@pytest.mark.parametrize("T", [37, 200])
@pytest.mark.parametrize("in_grad", [True, False])
def test_kept_forward_and_backward_match_one_peft_linear(
    base: str, shape: tuple[int, int, int], T: int, in_grad: bool
) -> None:
    """The fp32 input copy (none on an fp32 base: the input itself), the forward's complex
    FFT outputs and the backward's, exactly, whether the input needs a gradient or not."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.c3a import C3A

    in_f, out_f, b = shape
    run = RunConfig(precision=base, method="c3a", c3a_targets="up", c3a_block_size=b, device="cpu")
    plan = plan_method(tiny("llama", hidden_size=in_f, intermediate_size=out_f), run)
    (lin,) = plan.circulant
    dtype = torch.float32 if base == "fp32" else torch.bfloat16
    kept, forward, backward = _one_linear(torch, dtype, shape, T, in_grad)
    assert kept == (T * in_f * 4 if base == "bf16" else 0)
    assert forward == C3A.forward_transient(plan, run, T)
    assert backward == C3A.backward_own(run, lin, T) - in_f * out_f // b * 4


@pytest.mark.parametrize("mode", ["bf16-mixed", "bf16-autocast"])
@pytest.mark.parametrize("shape", [(96, 160, 16), (512, 64, 32)], ids=str)
@pytest.mark.parametrize("in_grad", [True, False])
def test_under_autocast_one_peft_linear(mode: str, shape: tuple[int, int, int], in_grad: bool):
    """Under the CPU's bf16 autocast: on a bf16 base exactly as without it; on an fp32
    base (bf16-mixed) the input itself kept (beside the base layer's own 16-bit weight
    cast, counted by the linear), the same FFT transients (the output, returned fp32, is
    what the tracker's forward less: T × out × 2 more than the base's bf16 output during
    the forward), and the backward holding the output gradient's bf16 cast beside the
    base branch when the input needs a gradient."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.c3a import C3A

    in_f, out_f, b = shape
    T, mixed = 200, mode == "bf16-mixed"
    precision = {"precision": "bf16-mixed"} if mixed else {"precision": "bf16", "autocast": True}
    run = RunConfig(**precision, method="c3a", c3a_targets="up", c3a_block_size=b, device="cpu")
    plan = plan_method(tiny("llama", hidden_size=in_f, intermediate_size=out_f), run)
    (lin,) = plan.circulant
    dtype = torch.float32 if mixed else torch.bfloat16
    kept, forward, backward = _one_linear(torch, dtype, shape, T, in_grad, autocast=True)
    base_cast = in_f * out_f * 2 if mixed and in_grad else 0
    assert kept == (0 if mixed else T * in_f * 4) + base_cast
    assert forward + (T * out_f * 2 if mixed else 0) == C3A.forward_transient(plan, run, T)
    want = C3A.backward_own(run, lin, T, plan, in_grad) - in_f * out_f // b * 4
    assert backward == want


def test_c3a_keeps_an_fp32_input_per_linear() -> None:
    """At real size (bf16 base, 512 tokens, q,v): one fp32 copy of the input per adapted
    linear, as LoRA's cast, without lora_A's T × r output."""
    T, L = 512, 28
    lora = estimate("llama-3.2-3b", method="lora", lora_r=8, seq_len=T).memory
    c3a = estimate("llama-3.2-3b", method="c3a", c3a_block_size=64, seq_len=T).memory
    assert lora.activations_bytes - c3a.activations_bytes == L * 2 * T * 8 * 4


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "c3a", "--c3a-block-size", "0"], "greater than 0"),
        (["--method", "vera", "--c3a-block-size", "8"], "only applies to c3a"),
        (["--method", "c3a", "--framework", "unsloth"], "--framework unsloth has no"),
        (["--method", "c3a", "--c3a-targets", ","], "--c3a-targets is empty"),
        (["--method", "c3a", "--c3a-block-size", "96"], "--c3a-block-size 96 does not divide"),
        (["--method", "c3a", "--adapter-dtype", "bf16"], "--adapter-dtype only applies to"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_models_not_modelled_are_refused(capsys) -> None:
    for model, expected in (
        ("gpt2", "peft's C3A does not wrap gpt2's transformers Conv1D layers"),
        ("flan-t5-base", "does not model method c3a"),
    ):
        with pytest.raises(SystemExit):
            main(["estimate", model, "--method", "c3a"])
        assert expected in capsys.readouterr().err


def test_live_peft_model_is_read() -> None:
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.C3AConfig(block_size=4, target_modules=["q_proj", "v_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["c3a_block_size"], s["c3a_targets"]) == ("c3a", 4, "q_proj,v_proj")
