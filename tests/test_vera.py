"""peft's VeRA: what trains, the shared projections it keeps as buffers, what each adapted
linear's backward holds, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B;
the projections against the buffers peft registers; memory against measurement in
tests/accuracy (cases ``method=vera``), and VeRA.backward_own here against one peft VeRA
Linear run alone.
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
    {"method": "vera"},
    {"method": "vera", "vera_targets": "all-linear", "vera_rank": 4},
    {"method": "vera", "vera_targets": "attention", "vera_rank": 3, "adapter_dtype": "bf16"},
    {"method": "vera", "vera_targets": "k,o", "vera_rank": 5},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "falcon", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/vera--llama-3.2-3B-default.json: ``"num_trainable_params":
    129024`` for r 256 on q_proj and v_proj (its peft_config). By hand: λ_d (r) and λ_b
    (out) per adapted linear; q 3072 → 3072, v 3072 → 1024 (8 KV heads of 128), 28
    blocks: 28 · ((256 + 3072) + (256 + 1024)) = 129,024. ``num_total_params``
    3,212,878,848 is the base's 3,212,749,824 plus these: the projections are buffers."""
    est = estimate("llama-3.2-3b", method="vera")
    assert est.model.n_trainable_params == 28 * ((256 + 3072) + (256 + 1024)) == 129_024
    assert est.model.n_params + est.model.n_trainable_params == 3_212_878_848


def test_projections_are_one_pair_beside_the_weights() -> None:
    """vera_A (r × widest input) and vera_B (widest output × r) once for the model, fp32
    (peft's cast_adapter_dtype upcasts the BufferDict): the same result file's
    ``file_size`` 6,821,968 holds them (save_projection) with the fp32 vectors:
    2 · 256 · 3072 · 4 + 129,024 · 4 = 6,807,552 bytes, the rest safetensors' header."""
    vera = estimate("llama-3.2-3b", method="vera", precision="bf16").memory
    base = estimate("llama-3.2-3b", method="lora", precision="bf16", lora_r=1).memory
    lora_ab = 28 * ((3072 + 3072) + (3072 + 1024)) * 4
    projections, vectors = 2 * 256 * 3072 * 4, 129_024 * 4
    assert vera.weights_bytes - (base.weights_bytes - lora_ab) == projections + vectors
    assert projections + vectors == 6_807_552 < 6_821_968


def test_projections_match_peft_s_buffers() -> None:
    """On a tiny model, all linears: the buffer bytes peft registers (each layer holds the
    shared BufferDict: counted once), in the adapter dtype."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.vera import projection_bytes
    from ftmem.measure.build import build_model

    arch = tiny("llama")
    for adapter_dtype in ("auto", "bf16"):
        run = RunConfig(
            precision="bf16",
            device="cpu",
            method="vera",
            vera_targets="all-linear",
            vera_rank=6,
            adapter_dtype=adapter_dtype,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(arch, run).model
        seen = {
            b.untyped_storage()._cdata: b.untyped_storage().nbytes()
            for name, b in model.named_buffers(remove_duplicate=False)
            if ".vera_" in name
        }
        dtypes = {b.dtype for name, b in model.named_buffers() if ".vera_" in name}
        assert dtypes == {torch.float32 if adapter_dtype == "auto" else torch.bfloat16}
        assert projection_bytes(arch, run, plan_method(arch, run).dtypes) == sum(seen.values())


def _own_backward(torch, mode: str, shape: tuple[int, int, int], T: int) -> int:
    """Bytes above what one peft VeRA Linear's forward kept (and its output gradient)
    at the peak of its backward, on the CPU (ftmem's live-storage tracker)."""
    from peft import VeraConfig, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    in_f, out_f, r = shape
    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(in_f, out_f, bias=False))
    base = torch.float32 if mode in ("fp32", "bf16-mixed") else torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(
            model.to(base), VeraConfig(r=r, target_modules=["up"]), autocast_adapter_dtype=True
        )
    if mode == "bf16-bf16":
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16)
        for d in (model.base_model.vera_A, model.base_model.vera_B):
            d["default"] = d["default"].to(torch.bfloat16)
    x = torch.randn(T, in_f, dtype=base, requires_grad=True)
    x = x * 1  # (not a leaf, as in a model: autocast caches casts of leaves only)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16-mixed")
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        with autocast:
            y = model(x)
        g = torch.ones_like(y)
        tracker.peak = before = tracker.current
        y.backward(g)
        grads = sum(
            p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None
        )
        return tracker.peak - before - grads


@pytest.mark.parametrize("mode", ["fp32", "bf16", "bf16-bf16", "bf16-mixed"])
@pytest.mark.parametrize("shape", [(96, 160, 16), (96, 96, 256), (512, 64, 16)], ids=str)
def test_backward_own_matches_one_peft_linear(mode: str, shape: tuple[int, int, int]) -> None:
    """VeRA.backward_own against one peft VeRA Linear at its λ_b, λ_d and input moments
    (the three shapes): exact up to the vectors' gradients made by then (4 · out bytes
    for λ_b, 4 · r for λ_d); under autocast at the input's moment within 2 % (the
    buffer slices' casts are freed earlier than counted: −1.9 %)."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.vera import VeRA

    in_f, out_f, r = shape
    precision = {"bf16-bf16": "bf16", "fp32": "fp32", "bf16": "bf16"}.get(mode, mode)
    run = RunConfig(
        precision=precision,
        method="vera",
        vera_targets="up",
        vera_rank=r,
        adapter_dtype="bf16" if mode == "bf16-bf16" else "auto",
    )
    arch = tiny("llama", hidden_size=in_f, intermediate_size=out_f)
    plan = plan_method(arch, run)
    (lin,) = plan.vectored
    T = 600
    got = _own_backward(torch, mode, shape, T)
    want = VeRA.backward_own(plan, run, lin, T)
    slack = 4 * (out_f + r)  # the vectors' gradients, made by then or not
    if mode == "bf16-mixed" and in_f > out_f:
        slack += got // 50  # autocast's casts of the buffer slices at the input's moment
    assert abs(got - want) <= slack


def test_vera_keeps_two_products_per_linear() -> None:
    """At real size (bf16 base, fp32 vectors, no autocast): h (T × 256) and y (T × out)
    in fp32 for q and v in each of 28 blocks, where LoRA r 8 keeps the input's fp32 cast
    (T × 3072) and lora_A's output (T × 8) per linear."""
    T, L = 512, 28
    lora = estimate("llama-3.2-3b", method="lora", lora_r=8, seq_len=T).memory
    vera = estimate("llama-3.2-3b", method="vera", seq_len=T).memory
    vera_kept = L * T * 4 * ((256 + 3072) + (256 + 1024))
    lora_kept = L * T * 4 * 2 * (3072 + 8)
    assert vera.activations_bytes - lora.activations_bytes == vera_kept - lora_kept


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "vera", "--vera-rank", "0"], "--vera-rank: Input should be greater than 0"),
        (["--method", "lora", "--vera-rank", "4"], "--vera-rank only applies to vera"),
        (["--method", "vera", "--vera-targets", " , "], "--vera-targets is empty"),
        (["--method", "vera", "--vera-targets", "zz"], "VeRA target 'zz' matches no linear"),
        (
            ["--method", "vera", "--framework", "litgpt"],
            "--framework litgpt has no --method vera (LitGPT",
        ),
        (["--method", "vera", "--lora-r", "8"], "--lora-r only applies to lora"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_models_not_modelled_are_refused(capsys) -> None:
    for model, expected in (
        ("gpt2", "VeRA on gpt2's transformers Conv1D layers is not modelled"),
        ("flan-t5-base", "does not model method vera"),
    ):
        with pytest.raises(SystemExit):
            main(["estimate", model, "--method", "vera"])
        assert expected in capsys.readouterr().err


def test_resolved_run_reports_the_vera_settings() -> None:
    run = estimate("llama-3.2-3b", method="vera").run
    assert (run.vera_rank, run.vera_targets, run.adapter_dtype) == (256, "q,v", "fp32")
    assert run.adapted_modules == ["self_attn.q_proj", "self_attn.v_proj"]


def test_live_peft_vera_model_is_read() -> None:
    """A peft VeRA model handed to the live integration reads as --method vera with its
    rank and the modules peft wrapped."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.VeraConfig(r=4, target_modules=["q_proj", "o_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["vera_rank"], s["vera_targets"]) == ("vera", 4, "o_proj,q_proj")
    assert s["adapter_dtype"] == "fp32"


# ---- FourierFT (the same file: peft's other vector-sized adapter; its ΔW as LoHa's) ----

FOURIER_SETTINGS = [
    {"method": "fourierft"},
    {"method": "fourierft", "fourierft_targets": "all-linear", "fourierft_frequencies": 50},
    {"method": "fourierft", "fourierft_targets": "k,o", "adapter_dtype": "bf16"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "falcon", "mixtral"])
@pytest.mark.parametrize("settings", FOURIER_SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_fourierft_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_published_metamathqa_fourierft_counts() -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/fourierft--llama-3.2-3B-default.json ``"num_trainable_params":
    56000`` (n_frequency 1000 on q_proj, v_proj) and fourierft--llama-3.2-3B-n_frequency-
    5000.json 280000: one spectrum of n per adapted linear, 28 · 2 · n."""
    for n, published in ((1000, 56_000), (5000, 280_000)):
        est = estimate("llama-3.2-3b", method="fourierft", fourierft_frequencies=n)
        assert est.model.n_trainable_params == 28 * 2 * n == published


def _fourier_alone(torch, n: int, shape: tuple[int, int]) -> tuple[int, int, int]:
    """One peft FourierFT Linear on the CPU (fp32, an input that needs a gradient, 2
    tokens): the forward's peak, what it kept and the backward's peak above that."""
    from peft import FourierFTConfig, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    in_f, out_f = shape
    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(in_f, out_f, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model, FourierFTConfig(n_frequency=n, target_modules=["up"]))
    x = torch.randn(2, in_f, requires_grad=True) * 1
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters())
        start = tracker.current
        y = model(x)
        forward_peak, kept = tracker.peak - start, tracker.current - start
        tracker.peak = before = tracker.current
        y.backward(torch.ones_like(y))
        return forward_peak, kept, tracker.peak - before


def test_fourier_build_and_backward_match_peft() -> None:
    """FOURIER_BUILD and FOURIER_BACKWARD against one peft FourierFT Linear (fp32): the
    build peaks at 20 bytes per out × in element, the backward at 16 less the ΔW the mm's
    node frees (12 above what the forward kept), up to the few-token tensors and the
    spectrum's gradient."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.lycoris import FOURIER_BACKWARD, FOURIER_BUILD

    in_f, out_f, n = 256, 512, 50
    w = in_f * out_f
    forward_peak, kept, backward_peak = _fourier_alone(torch, n, (in_f, out_f))
    small = 2 * (in_f + out_f) * 4 * 2 + n * 4 * 4  # x, y and their gradients; the spectrum's
    assert 0 <= forward_peak - FOURIER_BUILD * w <= small
    assert 0 <= kept - 4 * w <= small
    assert 0 <= backward_peak - (FOURIER_BACKWARD - 4) * w <= small


def _fourier_autocast(torch, base, shape: tuple[int, int, int], T: int, in_grad: bool):
    """One peft FourierFT Linear (fp32 spectrum) under the CPU's bf16 autocast: what the
    forward kept beyond the result, less the base layer's own bf16 weight cast (an fp32
    base's), and the backward's peak above what was kept."""
    from peft import FourierFTConfig, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    in_f, out_f, n = shape
    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(in_f, out_f, bias=False))
    config = FourierFTConfig(n_frequency=n, target_modules=["up"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model.to(base), config, autocast_adapter_dtype=True)
    x = torch.randn(T, in_f, dtype=base, requires_grad=in_grad)
    x = x * 1 if in_grad else x  # (not a leaf, as in a model)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters())
        start = tracker.current
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        out = y.numel() * y.element_size()  # (the base's bf16 output during the build)
        base_cast = in_f * out_f * 2 if base == torch.float32 and in_grad else 0
        build = tracker.peak - start - T * out_f * 2 - base_cast
        kept = tracker.current - start - out - base_cast
        tracker.peak = before = tracker.current
        y.backward(torch.ones_like(y))
        return build, kept, tracker.peak - before


@pytest.mark.parametrize("base", ["fp32", "bf16"])
@pytest.mark.parametrize("in_grad", [True, False])
def test_fourier_under_autocast_keeps_the_16_bit_casts(base: str, in_grad: bool) -> None:
    """Under autocast F.linear casts FourierFT's fp32 ΔW (no leaf: not cached) and the
    input peft first cast to fp32 to bf16, and keeps those casts: ΔW's (out × in × 2)
    when the input needs a gradient and the input's (T × in × 2) always, a new tensor
    even on a bf16 base (LoHa.saved with lycoris.fourier_built_in); index_put's views of
    the indices besides (16 · n). The build still peaks at FOURIER_BUILD bytes per
    element (ifft2 runs on the fp32 spectrum), the backward at FOURIER_BACKWARD less the
    freed 16-bit ΔW, up to the few-token tensors."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.lycoris import FOURIER_BACKWARD, FOURIER_BUILD

    in_f, out_f, n, T = 256, 512, 50, 37
    el = in_f * out_f
    dtype = torch.float32 if base == "fp32" else torch.bfloat16
    build, kept, backward = _fourier_autocast(torch, dtype, (in_f, out_f, n), T, in_grad)
    assert kept == (2 * el if in_grad else 0) + T * in_f * 2 + 16 * n
    small = T * (in_f + out_f) * 4 * 2 + n * 4 * 4
    assert 0 <= build - FOURIER_BUILD * el <= small
    if in_grad:
        assert 0 <= backward - (FOURIER_BACKWARD - 2) * el <= small


@pytest.mark.parametrize(
    "precision", [{"precision": "bf16-mixed"}, {"precision": "bf16", "autocast": True}]
)
def test_fourierft_under_autocast_is_estimated(precision: dict) -> None:
    """Refused until stop 47 (NO_AUTOCAST); now modelled (tests/accuracy cases
    method=fourierft under bf16-mixed and bf16 with --autocast)."""
    est = estimate("llama-3.2-3b", method="fourierft", **precision)
    assert est.memory.activations_bytes > 0


def test_fourier_indices_beside_the_weights() -> None:
    """peft keeps each adapted linear's 2 × n int64 indices on the device (not a buffer):
    16 · n bytes each, 28 · 2 of them on Llama-3.2-3B's q,v."""
    from ftmem.adapters.lycoris import fourier_index_bytes
    from ftmem.presets import get_model

    run = RunConfig(method="fourierft")
    assert fourier_index_bytes(get_model("llama-3.2-3b"), run) == 28 * 2 * 2 * 1000 * 8


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "fourierft", "--fourierft-frequencies", "0"], "greater than 0"),
        (["--method", "vera", "--fourierft-frequencies", "9"], "only applies to fourierft"),
        (
            ["--method", "fourierft", "--framework", "torchtune"],
            "--framework torchtune has no --method fourierft",
        ),
        (["--method", "fourierft", "--fourierft-targets", ","], "--fourierft-targets is empty"),
    ],
)
def test_fourierft_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_live_peft_fourierft_model_is_read() -> None:
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.FourierFTConfig(n_frequency=30, target_modules=["v_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["fourierft_frequencies"], s["fourierft_targets"]) == (
        "fourierft",
        30,
        "v_proj",
    )
