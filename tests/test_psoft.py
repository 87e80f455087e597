"""peft's PSOFT: what trains, its frozen buffers, what it keeps, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B;
memory (saved tensors, the forward's fp32 products, the backward) against measurement in
tests/accuracy (cases ``method=psoft``) and one peft PSOFT linear measured alone here.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "psoft", "psoft_rank": 8},
    {"method": "psoft", "psoft_targets": "all-linear", "psoft_rank": 4},
    {"method": "psoft", "psoft_targets": "k,o", "psoft_rank": 6, "psoft_neumann_terms": 5},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/psoft--llama-3.2-3B-default.json (and -fast.json):
    ``"num_trainable_params": 1856512`` for r 256 on q_proj, v_proj. By hand: R's upper
    triangle 256 · 255 / 2 = 32,640 and two 256-wide scales per linear, two linears, 28
    blocks: 28 · 2 · (32,640 + 512) = 1,856,512."""
    est = estimate("llama-3.2-3b", method="psoft", psoft_rank=256)
    assert est.model.n_trainable_params == 28 * 2 * (32_640 + 512) == 1_856_512


def test_frozen_factors_sit_beside_the_weights() -> None:
    """A (r × in) and B (out × r), fp32 whatever the base dtype (the SVD runs on
    W.to(float32)), and the int64 rows and cols of R's upper triangle: Llama-3.2-3B, r 256,
    q (3072 → 3072) and v (3072 → 1024), against the same run's LoRA-free frozen model
    (full finetuning's weights)."""
    psoft = estimate("llama-3.2-3b", method="psoft", psoft_rank=256, precision="bf16")
    full = estimate("llama-3.2-3b", method="full", precision="bf16")
    r, L = 256, 28
    buffers = L * (r * (3072 + 3072 + 3072 + 1024) * 4 + 2 * r * (r - 1) * 8)
    params = L * 2 * (r * (r - 1) // 2 + 2 * r) * 4
    assert psoft.memory.weights_bytes - full.memory.weights_bytes == buffers + params


def test_psoft_keeps_neither_its_input_nor_a_cast() -> None:
    """Llama-3.2-3B, q and v, r 256, bf16 base, T = 512: where LoRA keeps each adapted
    linear's fp32 input cast (T × 3072 × 4) and lora_A's output (T × r_lora × 4), PSOFT
    keeps x·Aᵀ (T × 256 × 4) and its rotation's r × r matrices: the exact solve's LU,
    pivots and result, the b-scaled R and, above the first block, the a-scaled R."""
    T, L, r, r_lora = 512, 28, 256, 8
    psoft = estimate("llama-3.2-3b", method="psoft", psoft_rank=r, seq_len=T).memory
    lora = estimate("llama-3.2-3b", method="lora", lora_r=r_lora, seq_len=T).memory
    square = r * r * 4
    per_linear = T * r * 4 + 3 * square + r * 4 + square
    expected = L * 2 * per_linear + (L - 1) * 2 * square - L * 2 * T * (3072 + r_lora) * 4
    assert psoft.activations_bytes - lora.activations_bytes == expected


@pytest.mark.parametrize("terms", [0, 5])
def test_one_psoft_linear_matches_its_measurement(terms: int) -> None:
    """One peft PSOFT linear (in 512, out 256, r 32, bf16 base, T = 128) run alone on
    ftmem's live-storage tracker: it keeps xa (T·r·4) and the rotation's r × r matrices
    (adapters.psoft.rotation_bytes); its forward peaks at the sum with the bf16 base
    output, x's fp32 cast, xr and three T × out fp32 products (PSOFT.forward_build); its
    backward at x's fp32 gradient, its bf16 cast, the base branch's and xa's gradient
    (PSOFT.backward_moment), plus r-sized temporaries of the rotation's own backward
    (under 4·r²·4 bytes; not modelled)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from ftmem.adapters.psoft import rotation_bytes
    from ftmem.measure.tracker import LiveBytesTracker
    from ftmem.run import RunConfig

    n, o, T, r = 512, 256, 128, 32
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    config = peft.PsoftConfig(r=r, target_modules=["lin"], use_cayley_neumann=terms > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base.to(torch.bfloat16), config)
    x = torch.randn(2, T // 2, n, dtype=torch.bfloat16, requires_grad=True)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        y = model(x)
        forward_peak, kept = tracker.peak - start, tracker.current - start - T * o * 2
        tracker.peak = before = tracker.current
        y.sum().backward()
        backward_peak = tracker.peak - before
    run = RunConfig(method="psoft", psoft_rank=r, psoft_neumann_terms=terms)
    assert kept == T * r * 4 + rotation_bytes(run, in_grad=True)
    assert forward_peak - kept == T * o * (2 + 3 * 4) + T * n * 4 + T * r * 4
    modelled = T * n * (4 + 2) + T * r * 4
    assert modelled < backward_peak < modelled + 4 * r * r * 4


@pytest.mark.parametrize("mode", ["bf16-mixed", "bf16-autocast"])
@pytest.mark.parametrize("terms", [0, 2])
def test_one_psoft_linear_under_autocast_keeps_16_bit_casts(mode: str, terms: int) -> None:
    """The same linear under the CPU's bf16 autocast (fp32 base: bf16-mixed; bf16 base:
    --autocast): the exact solve (or R = I + 2Q) stays fp32, but its three matmuls run in
    bf16 and keep their casts: xa (T × r) is bf16, the a-scaled R is kept as its bf16 cast,
    and Aᵀ's and Bᵀ's bf16 casts are kept (PSOFT.saved), besides an fp32 base's own
    16-bit weight cast (the base layer's)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from ftmem.adapters.psoft import rotation_bytes
    from ftmem.measure.tracker import LiveBytesTracker
    from ftmem.run import RunConfig

    n, o, T, r = 512, 256, 128, 32
    mixed = mode == "bf16-mixed"
    dtype = torch.float32 if mixed else torch.bfloat16
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    config = peft.PsoftConfig(
        r=r,
        target_modules=["lin"],
        use_cayley_neumann=terms > 0,
        **({"num_cayley_neumann_terms": terms} if terms else {}),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base.to(dtype), config)
    x = torch.randn(2, T // 2, n, dtype=dtype, requires_grad=True)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        out = y.numel() * y.element_size()  # (bf16: peft casts back to the base's dtype)
        kept = tracker.current - start - out - (n * o * 2 if mixed else 0)
    run = RunConfig(method="psoft", psoft_rank=r, psoft_neumann_terms=terms)
    assert kept == T * r * 2 + rotation_bytes(run, True, 2) + r * (n + o) * 2


def test_bad_input_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--method", "psoft", "--psoft-rank", "0"], "--psoft-rank: Input should be"),
        (["--method", "lora", "--psoft-rank", "4"], "--psoft-rank only applies to psoft"),
        (["--method", "psoft", "--psoft-targets", " , "], "--psoft-targets is empty"),
        (["--method", "psoft", "--psoft-neumann-terms", "1"], "leaves every rotation"),
        (["--method", "psoft", "--psoft-rank", "5000"], "exceeds self_attn.q_proj's smaller"),
        (["--method", "psoft", "--adapter-dtype", "bf16"], "PSOFT with 16-bit parameters"),
        (
            ["--method", "psoft", "--psoft-neumann-terms", "5", "--precision", "bf16-mixed"],
            "PSOFT's Cayley-Neumann series above 2 terms under autocast is not modelled",
        ),
        (["--method", "psoft", "--framework", "unsloth"], "has no --method psoft"),
    ]
    for args, expected in cases:
        assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)
    err = one_sentence(["estimate", "gpt2", "--method", "psoft"], capsys)
    assert "peft's PSOFT does not wrap gpt2's transformers Conv1D layers" in err


def test_live_peft_psoft_model_is_read() -> None:
    """A peft PSOFT model handed to the live integration reads as --method psoft with its
    rank, series and wrapped modules; R without its scales is refused."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    config = peft.PsoftConfig(r=4, target_modules=["v_proj"], use_cayley_neumann=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["psoft_rank"], s["psoft_targets"]) == ("psoft", 4, "v_proj")
    assert s["psoft_neumann_terms"] == 5
    model.peft_config["default"].psoft_mag_a = False
    with pytest.raises(InvalidInputError, match="psoft_mag_a False is not modelled"):
        read_run(model, args, given={"seq_len": 16})
