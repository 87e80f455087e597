"""peft's WaveFT: what trains, what one adapted linear keeps and holds while it builds ΔW
and in its backward, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B;
memory against measurement in tests/accuracy (cases ``method=waveft``), and the kept
tensors and WAVE_BUILD / WAVE_BACKWARD here against one peft WaveFT Linear run alone.
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
    {"method": "waveft"},
    {"method": "waveft", "waveft_targets": "all-linear", "waveft_frequencies": 50},
    {"method": "waveft", "waveft_targets": "k,o", "adapter_dtype": "bf16"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "falcon", "mixtral"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    if "waveft_frequencies" not in settings:  # (peft's 2592 exceeds the tiny k/v weights)
        settings = {**settings, "waveft_frequencies": 300}
    assert_counts_match_peft(family, settings)


def test_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/waveft--llama-3.2-3B-n_frequency-5000.json
    ``"num_trainable_params": 280000`` (n_frequency 5000 on q_proj, v_proj): one
    coefficient vector of n per adapted linear, 28 · 2 · 5000; its ``num_total_params``
    3,213,029,824 is the base's 3,212,749,824 plus these (the indices are no parameters)."""
    est = estimate("llama-3.2-3b", method="waveft", waveft_frequencies=5000)
    assert est.model.n_trainable_params == 28 * 2 * 5000 == 280_000
    assert est.model.n_params + 280_000 == 3_213_029_824


def _one_linear(
    torch, base, shape: tuple[int, int, int], T: int, in_grad: bool, autocast: bool = False
):
    """One peft WaveFT Linear on the CPU (under its bf16 autocast with ``autocast``): the
    build's peak and what the forward kept (both less the base output, the result and,
    under autocast, an fp32 base's kept bf16 weight cast), and the backward's peak above
    what it kept and the output gradient, less the coefficients' gradient."""
    from peft import WaveFTConfig, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    in_f, out_f, n = shape
    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(in_f, out_f, bias=False))
    config = WaveFTConfig(n_frequency=n, target_modules=["up"])
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
        base_out = T * out_f * 2 if autocast else out  # (the base's output during the build)
        base_cast = in_f * out_f * 2 if autocast and base == torch.float32 and in_grad else 0
        build = tracker.peak - start - base_out - base_cast
        kept = tracker.current - start - out - base_cast
        tracker.peak = before = tracker.current
        y.backward(torch.ones_like(y))
        grad = n * 4
        return build, kept, tracker.peak - before - grad


@pytest.mark.parametrize("base", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(96, 160, 300), (512, 64, 1000), (256, 512, 5000)], ids=str)
@pytest.mark.parametrize("in_grad", [True, False])
def test_kept_build_and_backward_match_one_peft_linear(
    base: str, shape: tuple[int, int, int], in_grad: bool
) -> None:
    """What LoHa.saved lists for a WaveFT linear (ΔW when the input needs a gradient, the
    fp32 input cast on a bf16 base, waveft.kept's stacked quarters, filter, indices and
    mask) is what it keeps, exactly; the build's peak is WAVE_BUILD ΔW-sized tensors and
    the backward's WAVE_BACKWARD, the nodes having freed ΔW, the cast and the quarters, up
    to the build's index tensors (37 bytes a coefficient) and the few-token gradients of
    the output's path (the fp32 output gradient or its cast, the input's gradient)."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.waveft import FILTER_ELEMENTS, WAVE_BACKWARD, WAVE_BUILD

    in_f, out_f, n = shape
    dtype = torch.float32 if base == "fp32" else torch.bfloat16
    T, w = 37, in_f * out_f * 4
    cast = T * in_f * 4 if base == "bf16" else 0
    build, kept, backward = _one_linear(torch, dtype, shape, T, in_grad)
    own = w + FILTER_ELEMENTS * 4 + n * 17
    assert kept == own + (w if in_grad else 0) + cast
    assert 0 <= build - WAVE_BUILD * w <= n * 37 + FILTER_ELEMENTS * 4
    freed = own - n * 17 + (w if in_grad else 0) + cast
    assert 0 <= backward - (WAVE_BACKWARD * w - freed) <= T * (in_f + out_f) * 4


@pytest.mark.parametrize("base", ["fp32", "bf16"])
@pytest.mark.parametrize("in_grad", [True, False])
def test_under_autocast_the_conv_keeps_16_bit_quarters(base: str, in_grad: bool) -> None:
    """Under autocast conv_transpose2d (lower precision on CUDA and on the CPU) casts the
    fp32 quarters and filter to bf16 and keeps the casts; ΔW is bf16, so the input is
    kept as it is on a bf16 base and as one bf16 cast on an fp32 one, and F.linear casts
    nothing more: what LoHa.saved and waveft.kept list, exactly. The build peaks at the
    conv (fp32 zero matrix and quarters, the quarters' cast, the output: 12 bytes an
    element, waveft.build_held), the backward at the four fp32 quarter gradients less the
    freed 16-bit ΔW and quarters (waveft.backward_held), up to the build's index tensors
    and the few-token gradients."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.waveft import FILTER_ELEMENTS, WAVE_BACKWARD

    in_f, out_f, n = shape = (256, 512, 1000)
    dtype = torch.float32 if base == "fp32" else torch.bfloat16
    T, el = 37, in_f * out_f
    cast = T * in_f * 2 if base == "fp32" else 0
    build, kept, backward = _one_linear(torch, dtype, shape, T, in_grad, autocast=True)
    own = (el + FILTER_ELEMENTS) * 2 + n * 17
    assert kept == own + (2 * el if in_grad else 0) + cast
    assert 0 <= build - (2 * 4 + 2 * 2) * el <= n * 37 + 128  # (the filter's two copies)
    if in_grad:
        expected = WAVE_BACKWARD * 4 * el - 2 * 2 * el - cast
        assert 0 <= backward - expected <= T * (in_f + 2 * out_f) * 4  # (and ones_like(y))


def test_saved_items_at_real_size() -> None:
    """Llama-3.2-3B, n 5000 on q,v, bf16 base and fp32 coefficients, 512 tokens: per block
    q's and v's ΔW (fp32, above the first block), their input casts (T × 3072 fp32) and
    the stacked quarters (out × in fp32), against FourierFT's at the same n, which keeps
    the ΔW and casts alone."""
    T, L = 512, 28
    wave = estimate("llama-3.2-3b", method="waveft", waveft_frequencies=5000, seq_len=T)
    four = estimate("llama-3.2-3b", method="fourierft", fourierft_frequencies=5000, seq_len=T)
    quarters = L * ((3072 * 3072 + 3072 * 1024 + 2 * 16) * 4 + 2 * 5000 * 17)
    assert wave.memory.activations_bytes - four.memory.activations_bytes == quarters


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "waveft", "--waveft-frequencies", "0"], "greater than 0"),
        (["--method", "vera", "--waveft-frequencies", "9"], "only applies to waveft"),
        (["--method", "waveft", "--framework", "torchtune"], "--framework torchtune has no"),
        (["--method", "waveft", "--waveft-targets", ","], "--waveft-targets is empty"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_models_not_modelled_are_refused(capsys) -> None:
    for model, expected in (
        ("gpt2", "WaveFT on gpt2's transformers Conv1D layers is not modelled"),
        ("flan-t5-base", "does not model method waveft"),
    ):
        with pytest.raises(SystemExit):
            main(["estimate", model, "--method", "waveft"])
        assert expected in capsys.readouterr().err


def test_live_peft_model_is_read() -> None:
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.WaveFTConfig(n_frequency=30, target_modules=["v_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["waveft_frequencies"], s["waveft_targets"]) == ("waveft", 30, "v_proj")
    assert s["adapter_dtype"] == "fp32"


def test_live_other_wavelets_are_refused() -> None:
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.errors import InvalidInputError
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.WaveFTConfig(n_frequency=30, target_modules=["v_proj"], wavelet_family="db2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    with pytest.raises(InvalidInputError, match="wavelet_family db2"):
        read_run(model, args, given={"seq_len": 16})


def test_tiny_plan_adapts_the_default_targets() -> None:
    plan = plan_method(tiny("llama"), RunConfig(method="waveft", waveft_frequencies=10))
    assert {lin.module for lin in plan.wavelet} == {"self_attn.q_proj", "self_attn.v_proj"}


def test_more_coefficients_than_the_weight_are_refused() -> None:
    """peft's update_layer refuses n above out × in; so does the plan, in one sentence."""
    from ftmem.errors import InvalidInputError

    arch = tiny("llama")
    (v,) = [
        lin
        for lin in plan_method(arch, RunConfig(method="waveft", waveft_frequencies=10)).wavelet
        if "v_proj" in lin.module
    ]
    n = v.in_features * v.out_features + 1
    with pytest.raises(InvalidInputError, match=f"--waveft-frequencies {n} exceeds"):
        plan_method(arch, RunConfig(method="waveft", waveft_frequencies=n))
