"""peft's HRA: what trains, what its reflection chain keeps, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models (PEFT's MetaMathQA benchmark has no HRA result); memory (saved tensors, the chain's
forward, the backward) against measurement in tests/accuracy (cases ``method=hra``) and one
peft HRALinear measured alone here, over shapes, base dtypes and inputs with and without
a gradient.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "hra"},
    {"method": "hra", "hra_targets": "all-linear", "hra_rank": 4},
    {"method": "hra", "hra_targets": "k,o", "hra_rank": 3, "adapter_dtype": "bf16"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_llama_3_2_3b_count_by_hand() -> None:
    """hra_u is in × r per adapted linear: q and v both read the 3072-wide hidden state,
    r 8, 28 blocks: 28 · 2 · 3072 · 8 = 1,376,256."""
    est = estimate("llama-3.2-3b", method="hra")
    assert est.model.n_trainable_params == 28 * 2 * 3072 * 8 == 1_376_256


def test_hra_keeps_r_dense_reflections_per_linear() -> None:
    """Llama-3.2-3B, q and v, r 8, bf16 base, fp32 hra_u, T = 512: per adapted linear the
    chain's eight 2·W_i and the identity (3072² × 4 each), the normalised u and the chain's
    in × 1 products (2 · 3072 · 8 + 8, × 4), the weight cast to fp32 (out × 3072 × 4), the
    input cast (T × 3072 × 4) and, above the first block, W' (out × 3072 × 4); against
    LoRA r 8's input casts and lora_A outputs."""
    T, L, r, n = 512, 28, 8, 3072
    hra = estimate("llama-3.2-3b", method="hra", seq_len=T).memory
    lora = estimate("llama-3.2-3b", method="lora", lora_r=r, seq_len=T).memory
    chain = ((r + 1) * n * n + 2 * n * r + r) * 4
    per_block = 2 * (chain + T * n * 4) + (3072 + 1024) * n * 4
    expected_hra = L * per_block + (L - 1) * (3072 + 1024) * n * 4
    expected_lora = L * 2 * (T * n * 4 + T * r * 4)
    assert hra.activations_bytes - lora.activations_bytes == expected_hra - expected_lora


@pytest.mark.parametrize(("n", "o", "T", "r"), [(256, 128, 64, 4), (128, 256, 64, 2)])
@pytest.mark.parametrize("bf16", [True, False])
@pytest.mark.parametrize("x_grad", [True, False])
def test_one_hra_linear_matches_its_measurement(
    n: int, o: int, T: int, r: int, bf16: bool, x_grad: bool
) -> None:
    """One peft HRALinear run alone on ftmem's live-storage tracker (fp32 hra_u). Kept:
    the chain and identity, (r + 1) in × in, the small u pieces, the weight's and the
    input's fp32 casts (bf16 base) and W' (x needing a gradient). Forward peak: the largest
    of HRA.forward_moments (the chain's last step, the product with W, the output's cast
    back). Backward peak beyond
    the kept and the output: HRA.backward_moment's three moments (adapters/hra.py), plus
    x's own gradient, which a leaf holds here (a model hands it on)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from ftmem.measure.tracker import LiveBytesTracker

    dtype = torch.bfloat16 if bf16 else torch.float32
    e = 2 if bf16 else 4
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(
            base.to(dtype), peft.HRAConfig(r=r, target_modules=["lin"]), autocast_adapter_dtype=True
        )
    x = torch.randn(2, T // 2, n, dtype=dtype, requires_grad=x_grad)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        y = model(x)
        forward_peak, kept = tracker.peak - start, tracker.current - start - T * o * e
        tracker.peak = before = tracker.current
        y.sum().backward()  # (sum's gradient: an expanded scalar, 4 or 8 bytes)
        backward_peak = tracker.peak - before - (4 if bf16 else 8)
    sq, w = n * n * 4, n * o * 4
    cast_x = T * n * 4 if bf16 else 0
    late = (w if bf16 else 0) + cast_x + (w if x_grad else 0)
    small = (2 * n * r + r) * 4
    assert kept == (r + 1) * sq + small + late
    kept_chain, cast_w = r * sq + small + sq, (w if bf16 else 0)
    out = T * o * 4 + (T * o * 2 if bf16 else 0)
    moments = (
        kept_chain + 3 * sq,  # the chain's last step, beside the fp32 identity
        kept_chain + 2 * sq + cast_w + w,  # torch.mm(W, new_weight)
        kept_chain + sq + cast_w + w + cast_x + out,  # the output's cast back
    )
    assert forward_peak == max(moments)
    leaf = T * n * e if x_grad else 0
    at_linear = (T * o * 4 if bf16 else 0) + (T * n * 4 if x_grad else 0) + w
    freed = cast_x + (w if x_grad else 0)
    assert backward_peak == max(at_linear, w + sq - freed + leaf, 2 * sq - late + leaf)


@pytest.mark.parametrize(("n", "o", "T", "r"), [(256, 128, 64, 4), (128, 256, 64, 2)])
@pytest.mark.parametrize("bf16", [True, False])
@pytest.mark.parametrize("x_grad", [True, False])
def test_one_hra_linear_under_autocast_matches_its_measurement(
    n: int, o: int, T: int, r: int, bf16: bool, x_grad: bool
) -> None:
    """One peft HRALinear under CPU bf16 autocast (fp32 hra_u; a bf16 base is HF Trainer's
    bf16=True on a bf16 model, an fp32 one bf16-mixed). Kept: each step's 16-bit cast of
    2·W (in² · 2; the chain itself stays fp32), the steps' 16-bit u_i, u_iᵀ and in × 1
    products (the first step's 2·I needs no gradient: its u_i cast is not kept) and the
    fp32 norms, the identity's 16-bit cast; then, delta·I being 16-bit, the weight's and
    x's 16-bit casts where they are not 16-bit already and W' (x needing a gradient).
    Forward: the chain's last step (the fp32 identity, the old and new weight, the 16-bit
    outer product, the fp32 normalised u), ``torch.mm(I, delta)`` (the identity, delta and
    their 16-bit casts and product) or the end (delta, the casts, W', the output and its
    cast back); backward: at F.linear's node, or in the chain (W's fp32 gradient, its
    negation and the 16-bit cast of that, beside x's gradient, F.linear's kept, the
    weight's and the identity's casts freed) (adapters/hra.py's autocast moments)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from ftmem.measure.tracker import LiveBytesTracker

    dtype, xb = (torch.bfloat16, 2) if bf16 else (torch.float32, 4)
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(
            base.to(dtype), peft.HRAConfig(r=r, target_modules=["lin"]), autocast_adapter_dtype=True
        )
    x = torch.randn(2, T // 2, n, dtype=dtype, requires_grad=x_grad)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        forward_peak, kept = tracker.peak - start, tracker.current - start - T * o * xb
        tracker.peak = before = tracker.current
        y.sum().backward()  # (sum's gradient: an expanded scalar, 4 or 8 bytes)
        backward_peak = tracker.peak - before - (4 if bf16 else 8)
    sq, w = n * n * 2, n * o * 2  # 16-bit in × in and out × in
    cast_w, cast_x = (0, 0) if bf16 else (w, T * n * 2)
    chain = r * sq + (3 * r - 1) * n * 2 + r * 4 + sq
    late = cast_w + cast_x + (w if x_grad else 0)
    assert kept == chain + late
    end = n * n * 4 + cast_w + w + cast_x + T * o * 2 + (T * o * 4 if not bf16 else 0)
    moments = (
        chain - sq + 3 * n * n * 4 + sq + n * r * 4,
        chain + 2 * n * n * 4 + 2 * sq,
        chain + end,
    )
    assert forward_peak == max(moments)
    grad_x = T * n * xb if x_grad else 0
    at_linear = (T * o * 2 if not bf16 else 0) + w + (T * n * 2 if x_grad else 0)
    in_chain = n * n * 4 * 2 + sq + grad_x - late - sq
    assert backward_peak == max(at_linear, in_chain)


def test_bad_input_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--method", "hra", "--hra-rank", "0"], "--hra-rank: Input should be"),
        (["--method", "lora", "--hra-rank", "4"], "--hra-rank only applies to hra"),
        (["--method", "hra", "--hra-targets", " , "], "--hra-targets is empty"),
        (["--method", "hra", "--hra-targets", "zz"], "HRA target 'zz' matches no linear"),
        (
            ["--method", "hra", "--precision", "bf16-mixed", "--adapter-dtype", "bf16"],
            "HRA with 16-bit hra_u under autocast is not modelled",
        ),
        (["--method", "hra", "--framework", "litgpt"], "has no --method hra"),
    ]
    for args, expected in cases:
        assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)
    err = one_sentence(["estimate", "gpt2", "--method", "hra"], capsys)
    assert "peft's HRA does not wrap gpt2's transformers Conv1D layers" in err


def test_live_peft_hra_model_is_read() -> None:
    """A peft HRA model handed to the live integration reads as --method hra with its rank
    and the modules peft wrapped; Gram-Schmidt is refused."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    config = peft.HRAConfig(r=4, target_modules=["q_proj", "o_proj"])
    model = peft.get_peft_model(tiny_llama(), config)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["hra_rank"], s["hra_targets"]) == ("hra", 4, "o_proj,q_proj")
    model.peft_config["default"].apply_GS = True
    with pytest.raises(InvalidInputError, match="HRA with apply_GS"):
        read_run(model, args, given={"seq_len": 16})
