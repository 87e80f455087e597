"""peft's LoHa and LoKr: what trains, what their delta weights hold, how they are read
and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the counts PEFT's MetaMathQA benchmark published for Llama-3.2-3B;
memory against measurement in tests/accuracy (cases ``method=loha``, ``method=lokr``), and
the ΔW builds and backward temporaries here against HadaWeight and make_kron run alone.
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
    {"method": "loha"},
    {"method": "loha", "loha_targets": "all-linear", "loha_rank": 4},
    {
        "method": "loha",
        "loha_targets": "attention",
        "loha_rank": 3,
        "loha_alpha": 12,
        "adapter_dtype": "bf16",
    },
    {"method": "lokr"},
    {"method": "lokr", "lokr_targets": "all-linear", "lokr_rank": 2, "lokr_factor": 4},
    {"method": "lokr", "lokr_targets": "attention", "lokr_rank": 1, "lokr_decompose_both": True},
    {"method": "lokr", "lokr_targets": "k,o", "lokr_factor": 3, "adapter_dtype": "bf16"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "falcon", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/loha--llama-3.2-3B-rank32.json: ``"num_trainable_params":
    18350080`` for r 32, alpha 64 on q_proj, v_proj. By hand: each pair is out × r plus
    r × in, two pairs per linear; q 3072 → 3072, v 3072 → 1024 (8 KV heads of 128), 28
    blocks: 28 · 2 · 32 · ((3072 + 3072) + (1024 + 3072)) = 18,350,080."""
    est = estimate("llama-3.2-3b", method="loha", loha_rank=32, loha_alpha=64)
    assert est.model.n_trainable_params == 28 * 2 * 32 * ((3072 + 3072) + (1024 + 3072))
    assert est.model.n_trainable_params == 18_350_080


def test_published_metamathqa_lokr_count() -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/lokr--llama-3.2-3B-rank32-factor4-lr0.003.json:
    ``"num_trainable_params": 2294656`` for r 32, alpha 64, decompose_factor 4 on q_proj,
    v_proj. By hand: 3072 splits as 4 × 768, 1024 as 4 × 256; w1 is whole (4 × 4, no
    decompose_both); w2 (768 × 768 for q, 256 × 768 for v) is a rank-32 pair since
    32 < 768 / 2: q 16 + 32·(768 + 768), v 16 + 32·(256 + 768), in 28 blocks."""
    est = estimate("llama-3.2-3b", method="lokr", lokr_rank=32, lokr_alpha=64, lokr_factor=4)
    q, v = 16 + 32 * (768 + 768), 16 + 32 * (256 + 768)
    assert est.model.n_trainable_params == 28 * (q + v) == 2_294_656


def test_factorization_is_peft_s() -> None:
    from peft.tuners.lokr.layer import factorization as peft_factorization

    from ftmem.methods import factorization

    dims = [*range(1, 300), 1024, 3072, 4096, 11008, 14336, 128256]
    for factor in (-1, 1, 2, 3, 4, 8, 16):
        assert [factorization(d, factor) for d in dims] == [
            peft_factorization(d, factor) for d in dims
        ]


def test_loha_keeps_delta_weight_where_lora_keeps_its_rank_r_output() -> None:
    """At real size both cast each adapted linear's input to fp32 and keep that copy
    (T × in × 4); LoRA adds lora_A's output (T × r × 4), LoHa instead its fp32 ΔW
    (out × in × 4) in every block above the first: the first block's input needs no
    gradient, so its mm keeps only the input, for ΔW's gradient."""
    T, L, r = 512, 28, 8
    q, v = 3072 * 3072, 1024 * 3072
    lora = estimate("llama-3.2-3b", method="lora", lora_r=r, seq_len=T).memory
    loha = estimate("llama-3.2-3b", method="loha", seq_len=T).memory
    expected = (L - 1) * (q + v) * 4 - L * 2 * T * r * 4
    assert loha.activations_bytes - lora.activations_bytes == expected


def _build_and_backward(tracked: list, build, x) -> tuple[int, int, int]:
    """Bytes above the tracked tensors while ``build()`` makes ΔW (its peak, what stays),
    and the peak of the backward of ``linear(x, ΔW)`` above what the forward left."""
    import torch

    from ftmem.measure.tracker import LiveBytesTracker

    with LiveBytesTracker() as tracker:
        tracker.track(*tracked)
        start = tracker.current
        delta = build()
        forward_peak, forward_kept = tracker.peak - start, tracker.current - start
        y = torch.nn.functional.linear(x, delta)
        del delta
        tracker.peak = before = tracker.current
        y.sum().backward()
        return forward_peak, forward_kept, tracker.peak - before


def test_hadamard_temporaries_match_the_autograd_function() -> None:
    """HadaWeight and F.linear run alone on the CPU (ftmem's live-storage tracker, fp32,
    the input needing a gradient as in every block above the first): the forward peaks
    at three out × in beyond its inputs (LoHa.forward_build with nothing kept); the
    backward, beyond what the forward kept (ΔW among it), at four more: the five of
    HadaWeight.backward less ΔW, freed by the mm's node before it (LoHa.backward_moment
    with no input cast)."""
    torch = pytest.importorskip("torch")
    from peft.tuners.loha.layer import HadaWeight

    from ftmem.adapters.lycoris import LoHa

    out_f, in_f, r, T = 192, 128, 4, 6
    arch = tiny("llama", hidden_size=128, intermediate_size=192)
    run = RunConfig(precision="fp32", method="loha", loha_targets="up", loha_rank=r)
    plan = plan_method(arch, run)
    w = out_f * in_f * 4
    factors = [
        torch.randn(shape, requires_grad=True)
        for shape in ((out_f, r), (r, in_f), (out_f, r), (r, in_f))
    ]
    x, scale = torch.randn(T, in_f, requires_grad=True), torch.tensor(2.0)
    forward_peak, _, backward_peak = _build_and_backward(
        [*factors, x, scale], lambda: HadaWeight.apply(*factors, scale), x
    )

    def in_bytes(lin: object) -> int:
        return 4

    assert LoHa.forward_build(plan, run, T, in_bytes, kept=False) == forward_peak == 3 * w
    assert LoHa.backward_moment(plan, run, T, in_bytes) == 4 * w
    # (beyond: the factors' small gradients and x's)
    assert 4 * w <= backward_peak < 4 * w + w // 8


def test_kronecker_temporaries_match_make_kron() -> None:
    """make_kron and F.linear alone (fp32, the input needing a gradient): the forward
    peaks at two out × in (kron's result and its scaled copy) and keeps ΔW and the built
    w2 (b × d); the backward, beyond that, at two more: the three of the ΔW gradient
    handed on, its scaled copy and one broadcast product, less ΔW."""
    torch = pytest.importorskip("torch")
    from peft.tuners.lokr.layer import make_kron

    from ftmem.adapters.lycoris import LoHa

    arch = tiny("llama", hidden_size=192, intermediate_size=256)
    run = RunConfig(precision="fp32", method="lokr", lokr_targets="up", lokr_rank=4)
    plan = plan_method(arch, run)
    (a, b), (c, d) = factorization_of(256), factorization_of(192)
    w, built = 256 * 192 * 4, b * d * 4
    w1 = torch.randn(a, c, requires_grad=True)
    w2a, w2b = torch.randn(b, 4, requires_grad=True), torch.randn(4, d, requires_grad=True)
    x = torch.randn(6, 192, requires_grad=True)
    forward_peak, forward_kept, backward_peak = _build_and_backward(
        [w1, w2a, w2b, x], lambda: make_kron(w1, w2a @ w2b, 2.0), x
    )

    def in_bytes(lin: object) -> int:
        return 4

    assert (
        LoHa.forward_build(plan, run, 6, in_bytes, kept=False) + built
        == forward_peak
        == 2 * w + built
    )
    assert forward_kept == w + built
    assert LoHa.backward_moment(plan, run, 6, in_bytes) == 2 * w
    assert 2 * w <= backward_peak < 2 * w + w // 8


def test_autocast_lists_lokr_s_ops() -> None:
    """The ops a LoKr linear runs under autocast, per device, as torch 2.13's dispatcher
    registers them (aten/src/ATen/autocast_mode.cpp): mm (w2_a @ w2_b) and linear in
    both lower-precision lists, kron, mul and the casts in none, so the CPU measurement
    runs CUDA's dtypes."""
    torch = pytest.importorskip("torch")
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    ops = ("mm", "matmul", "linear", "kron", "mul.Tensor", "mul.Scalar", "_to_copy")
    lists = {
        op: {k for k in ("AutocastCUDA", "AutocastCPU") if has(f"aten::{op}", k)} for op in ops
    }
    both = {"AutocastCUDA", "AutocastCPU"}
    assert lists == {
        **{op: both for op in ("mm", "matmul", "linear")},
        **{op: set() for op in ("kron", "mul.Tensor", "mul.Scalar", "_to_copy")},
    }


@pytest.mark.parametrize("x_dtype", ["float32", "bfloat16"])
def test_kronecker_under_autocast_matches_make_kron(x_dtype: str) -> None:
    """make_kron and F.linear under (CPU) autocast, as peft's LoKr Linear runs them: the
    built w2 = w2_a @ w2_b is a 16-bit matmul output, kron (in no autocast list on CUDA
    or the CPU: tests/test_oft.py) promotes it with the fp32 w1, so ΔW is fp32; peft
    casts the input to it, and F.linear's autocast casts both back to 16-bit and keeps
    those. The build peaks at two fp32 out × in (kron's result and its scaled copy) and
    keeps the 16-bit w2, the pair's cached 16-bit casts, ΔW's and the input's 16-bit
    casts (LoKr.kept, LoHa.saved); the backward at the 16-bit ΔW gradient and two fp32
    out × in beyond what the forward kept (LoKr.backward_held)."""
    torch = pytest.importorskip("torch")
    from peft.tuners.lokr.layer import make_kron

    from ftmem.adapters.lycoris import LoKr
    from ftmem.measure.tracker import LiveBytesTracker

    arch = tiny("llama", hidden_size=192, intermediate_size=256)
    run = RunConfig(precision="bf16-mixed", method="lokr", lokr_targets="up", lokr_rank=4)
    plan = plan_method(arch, run)
    (lin,) = plan.kronecker
    (a, b), (c, d) = factorization_of(256), factorization_of(192)
    n, T, xe = 256 * 192, 6, 4 if x_dtype == "float32" else 2
    w1 = torch.randn(a, c, requires_grad=True)
    w2a, w2b = torch.randn(b, 4, requires_grad=True), torch.randn(4, d, requires_grad=True)
    x = torch.randn(T, 192, dtype=getattr(torch, x_dtype), requires_grad=True)
    with LiveBytesTracker() as tracker:
        tracker.track(w1, w2a, w2b, x)
        start = tracker.current
        with torch.autocast("cpu", dtype=torch.bfloat16):
            delta = make_kron(w1, w2a @ w2b, 2.0)
            build_peak = tracker.peak - start
            y = torch.nn.functional.linear(x.to(delta.dtype), delta)
            assert delta.dtype == torch.float32
            del delta
        kept = tracker.current - start
        tracker.peak = tracker.current
        y.float().sum().backward()
        backward_peak = tracker.peak - kept - start
    assert LoKr.built_in(plan, lin, run) == 4
    pair = b * d * 2 + 4 * (b + d) * 2  # the built w2 and the pair's casts, 16-bit
    assert build_peak == max(LoKr.build_held(plan, run, lin, T, xe)) + pair == 8 * n + pair
    assert kept == pair + 2 * n + T * 192 * 2 + T * 256 * 2  # ΔW's, x's casts; y
    held = LoKr.backward_held(plan, run, lin, T, xe)
    assert held == 10 * n
    # (beyond: the factors' small gradients, the input's gradient and its fp32 cast)
    assert held <= backward_peak < held + n // 8


@pytest.mark.parametrize(
    "precision", [{"precision": "bf16-mixed"}, {"precision": "fp16-mixed"}, {"autocast": True}]
)
def test_lokr_under_autocast_is_estimated(precision: dict) -> None:
    """LoKr under autocast was refused (RunConfig's NO_AUTOCAST); it is estimated. On a
    bf16 model (Llama-3.2-3B, q and v, peft's defaults) autocast turns what each LoKr
    keeps from the adapter dtype to 16-bit: the input's cast (fp32 → 16-bit, every
    block), ΔW (blocks above the first: the first's input needs no gradient) and the
    built w2, beside which the pair's cached 16-bit casts are kept."""
    from ftmem.methods import lokr_shapes
    from ftmem.presets import get_model

    est = estimate("llama-3.2-3b", method="lokr", **precision).memory
    assert est.activations_bytes > 0
    if precision != {"autocast": True}:
        return
    plain = estimate("llama-3.2-3b", method="lokr")
    run, L, T = plain.run, 28, 512
    plan = plan_method(get_model("llama-3.2-3b"), run)
    saved = 0
    for lin in plan.kronecker:
        n = lin.in_features * lin.out_features
        built = lokr_shapes(lin, run).built
        pair = sum(rows * cols * 2 - 8 * (rows + cols) * 2 for rows, cols in built)
        saved += L * T * lin.in_features * 2 + (L - 1) * n * 2 + L * pair
    assert plain.memory.activations_bytes - est.activations_bytes == saved


def factorization_of(dimension: int) -> tuple[int, int]:
    from ftmem.methods import factorization

    return factorization(dimension)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "loha", "--loha-rank", "0"], "--loha-rank: Input should be greater than 0"),
        (["--method", "lora", "--loha-rank", "4"], "--loha-rank only applies to loha"),
        (["--method", "ia3", "--loha-targets", "q"], "--loha-targets only applies to loha"),
        (["--method", "loha", "--lora-r", "8"], "--lora-r only applies to lora"),
        (["--method", "loha", "--loha-targets", " , "], "--loha-targets is empty"),
        (["--method", "loha", "--loha-targets", "zz"], "LoHa target 'zz' matches no linear"),
        (["--method", "loha", "--loha-alpha", "nan"], "--loha-alpha: Input should be a finite"),
        (["--method", "lokr", "--lokr-rank", "0"], "--lokr-rank: Input should be greater than 0"),
        (["--method", "lokr", "--lokr-factor", "0"], "--lokr-factor: Input should be greater"),
        (["--method", "loha", "--lokr-factor", "4"], "--lokr-factor only applies to lokr"),
        (["--method", "lora", "--lokr-decompose-both"], "only applies to lokr"),
        (["--method", "lokr", "--lokr-targets", ","], "--lokr-targets is empty"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_models_peft_cannot_wrap_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="does not wrap gpt2's transformers Conv1D"):
        estimate("gpt2", method="loha")
    with pytest.raises(InvalidInputError, match="does not model method loha"):
        estimate("flan-t5-base", method="loha")
    with pytest.raises(InvalidInputError, match="does not wrap gpt2's transformers Conv1D"):
        estimate("gpt2", method="lokr")


def test_resolved_run_reports_the_loha_settings() -> None:
    run = estimate("llama-3.2-3b", method="loha").run
    assert (run.loha_rank, run.loha_alpha, run.loha_targets) == (8, 8.0, "q,v")
    assert run.adapter_dtype == "fp32"
    assert run.adapted_modules == ["self_attn.q_proj", "self_attn.v_proj"]


def test_live_peft_loha_model_is_read() -> None:
    """A peft LoHa model handed to the live integration reads as --method loha with its
    rank, alpha and the modules peft wrapped."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.LoHaConfig(r=4, alpha=16, target_modules=["q_proj", "o_proj"])
    model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    live = read_run(model, args, given={"seq_len": 16})
    s = live.settings
    assert (s["method"], s["loha_rank"], s["loha_alpha"]) == ("loha", 4, 16.0)
    assert s["loha_targets"] == "o_proj,q_proj"
    assert s["adapter_dtype"] == "fp32"


def test_live_peft_lokr_model_is_read() -> None:
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.LoKrConfig(r=2, alpha=4, decompose_factor=4, target_modules=["v_proj"])
    model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["lokr_rank"], s["lokr_alpha"]) == ("lokr", 2, 4.0)
    assert (s["lokr_factor"], s["lokr_targets"]) == (4, "v_proj")
    assert "lokr_decompose_both" not in s
