"""peft's BEFT: what trains, what its biased linear keeps and holds, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against PEFT's MetaMathQA result for Llama-3.2-3B; memory against measurement
in tests/accuracy (cases ``method=beft``) and one peft BEFT Linear measured alone here,
over shapes, base and bias dtypes and inputs with and without a gradient.
"""

from __future__ import annotations

import dataclasses
import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "beft"},
    {"method": "beft", "beft_targets": "all-linear"},
    {"method": "beft", "beft_targets": "k,o", "adapter_dtype": "bf16"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_llama_3_2_3b_count_is_the_published_one() -> None:
    """beft_bias is 1 × out per adapted linear: v_proj's output is 8 KV heads × 128 = 1024
    wide, 28 blocks: 28 · 1024 = 28,672, the num_trainable_params of PEFT's
    beft--llama-3.2-3B-target-v_proj result (huggingface/peft@5d602fdbff04
    method_comparison/MetaMathQA/results/beft--llama-3.2-3B-target-v_proj.json)."""
    est = estimate("llama-3.2-3b", method="beft")
    assert est.model.n_trainable_params == 28 * 1024 == 28_672


def test_beft_keeps_nothing_of_its_own() -> None:
    """The add and the cast save no tensor: BEFT's activations are those of the frozen
    model whose every block passes a gradient (LoRA r 1's, less its input casts and
    rank-1 lora_A outputs); Llama-3.2-3B, bf16, 512 tokens."""
    T, L, n, r = 512, 28, 3072, 1
    beft = estimate("llama-3.2-3b", method="beft", seq_len=T).memory
    lora = estimate("llama-3.2-3b", method="lora", lora_r=r, seq_len=T).memory
    lora_own = L * 2 * (T * n * 4 + T * r * 4)  # q and v: the fp32 input cast, A's output
    assert beft.activations_bytes == lora.activations_bytes - lora_own


@pytest.mark.parametrize(("n", "o", "T"), [(64, 48, 32), (32, 96, 16)])
@pytest.mark.parametrize(
    "dtypes", [("bf16", "fp32"), ("bf16", "bf16"), ("fp32", "fp32"), ("bf16-mixed", "fp32")]
)
@pytest.mark.parametrize("x_grad", [True, False])
def test_one_beft_linear_matches_its_measurement(
    n: int, o: int, T: int, dtypes: tuple[str, str], x_grad: bool
) -> None:
    """One peft BEFT Linear run alone on ftmem's live-storage tracker. Kept: the output
    only. Forward peak: BEFT.forward_transient (the base output, the sum, its cast back
    when promoted). Backward peak: BEFT.backward_moment (the gradient's fp32 copy when
    promoted, its cast back for an input that needs a gradient, the bias gradient) plus
    the sum's scalar gradients (2 · e); without an input gradient the cast is not made;
    with one, x's own gradient (a leaf here) and the bias gradient can be the larger."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from ftmem.adapters.beft import BEFT
    from ftmem.arch import Linear
    from ftmem.measure.tracker import LiveBytesTracker
    from ftmem.methods import plan_method
    from ftmem.run import RunConfig
    from tests.test_peft_methods import tiny

    base_dtype, bias_dtype = dtypes
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}
    e = 4 if base_dtype == "fp32" else 2
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    # bf16-mixed: an fp32 base and input under autocast (linear lower precision on CUDA's
    # list as on the CPU's, the add on neither): the base output is bf16, as a bf16 base's
    mixed = base_dtype == "bf16-mixed"
    weights = "fp32" if mixed else base_dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(
            base.to(torch_dtype[weights]), peft.BeftConfig(target_modules=["lin"])
        )
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch_dtype[bias_dtype])
    x = torch.randn(2, T // 2, n, dtype=torch_dtype[weights], requires_grad=x_grad)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            y = model(x)
        forward_peak, kept = tracker.peak - start, tracker.current - start
        tracker.peak = before = tracker.current
        y.sum().backward()
        backward_peak = tracker.peak - before - 2 * e  # (the sum's scalar gradients)
    run = RunConfig(precision=base_dtype, adapter_dtype=bias_dtype, method="beft")
    plan = plan_method(tiny("llama"), run)
    lin = Linear("lin", ("v",), n, o, bias=False)
    plan = dataclasses.replace(plan, beft=(lin,))
    # under autocast the frozen weight's 16-bit cast too, for x's gradient (a base linear's item)
    assert kept == T * o * e + (n * o * 2 if mixed and x_grad else 0)
    if mixed:
        # the base linear's 16-bit casts: its weight's (kept for x's gradient, else freed
        # after its mm) and x's, at its own moment (casts and output); x is a leaf here,
        # whose cast autocast caches to the exit (in a model it is not a leaf)
        w_cast, x_cast = n * o * 2, T * n * 2
        sum_moment = BEFT.forward_transient(plan, lin, T, e) + (w_cast if x_grad else 0)
        forward_peak -= x_cast if x_grad else 0
        assert forward_peak == max(sum_moment, x_cast + w_cast + T * o * e)
    else:
        assert forward_peak == BEFT.forward_transient(plan, lin, T, e)
    cast = 0 if x_grad else T * o * e * (e == 2 and bias_dtype != base_dtype)
    leaf = T * n * e if x_grad else 0  # x's own gradient, held by the leaf here
    bias_grad = o * (2 if bias_dtype == "bf16" else 4)
    assert backward_peak == max(BEFT.backward_moment(plan, T, e) - cast, leaf + bias_grad)


def test_bad_input_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--method", "lora", "--beft-targets", "v"], "--beft-targets only applies to beft"),
        (["--method", "beft", "--beft-targets", " , "], "--beft-targets is empty"),
        (["--method", "beft", "--beft-targets", "zz"], "BEFT target 'zz' matches no linear"),
        (["--method", "beft", "--framework", "litgpt"], "has no --method beft"),
    ]
    for args, expected in cases:
        assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)
    err = one_sentence(["estimate", "gpt2", "--method", "beft"], capsys)
    assert "peft's BEFT does not wrap gpt2's transformers Conv1D layers" in err


def test_live_peft_beft_model_is_read() -> None:
    """A peft BEFT model handed to the live integration reads as --method beft with the
    modules peft wrapped."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    config = peft.BeftConfig(target_modules=["v_proj", "o_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["beft_targets"]) == ("beft", "o_proj,v_proj")
