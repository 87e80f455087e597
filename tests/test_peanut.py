"""peft's Peanut: what trains, what it keeps at real size, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the counts PEFT's MetaMathQA benchmark published for Llama-3.2-3B;
memory (saved tensors, ΔW's build in forward, the backward) against measurement in
tests/accuracy (cases ``method=peanut``) and one peft Peanut linear measured alone here.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "peanut"},
    {"method": "peanut", "peanut_targets": "all-linear", "peanut_rank": 4, "peanut_depth": 2},
    {"method": "peanut", "peanut_targets": "k,o", "adapter_dtype": "bf16"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


@pytest.mark.parametrize(
    ("r", "published"),
    [(1, 229_376), (32, 7_340_032)],
)
def test_published_metamathqa_counts(r: int, published: int) -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/peanut--llama-3.2-3B-rank1-relu-depth0-s32.0.json and
    ...-rank32-relu-depth0-s2.0.json: ``"num_trainable_params"`` 229376 and 7340032, q_proj
    and v_proj, depth 0. By hand: peanut_A (r × out) and peanut_B (out × r) per linear, q's
    out 3072 and v's 1024, in 28 blocks: 28 · 2r · (3072 + 1024)."""
    est = estimate("llama-3.2-3b", method="peanut", peanut_rank=r)
    assert est.model.n_trainable_params == 28 * 2 * r * (3072 + 1024) == published


def test_peanut_keeps_its_delta_weight_and_weight_cast() -> None:
    """Llama-3.2-3B, q and v, bf16 base, fp32 adapters, r 32, T = 512: beside what LoRA r 8
    keeps (each input cast to fp32, T × 3072 × 4, and lora_A's output, T × r × 4), Peanut
    keeps the fp32 cast of Wᵀ (in × out × 4) and relu's output (in × 32 × 4) in every block
    and, above the first block (whose input needs no gradient), ΔW (in × out × 4)."""
    T, L, r = 512, 28, 32
    peanut = estimate("llama-3.2-3b", method="peanut", seq_len=T).memory
    lora = estimate("llama-3.2-3b", method="lora", lora_r=8, seq_len=T).memory
    w = (3072 + 1024) * 3072 * 4
    expected = (2 * L - 1) * w + L * 2 * 3072 * r * 4 - L * 2 * T * 8 * 4
    assert peanut.activations_bytes - lora.activations_bytes == expected


def _one_linear(n: int, o: int, T: int, depth: int, bf16: bool, x_grad: bool) -> tuple:
    """One peft Peanut linear (r 8) run alone on ftmem's live-storage tracker, with a real
    output gradient: (kept beyond y, forward peak, backward peak beyond kept, y and dy)."""
    import peft
    import torch

    from ftmem.measure.tracker import LiveBytesTracker

    dtype = torch.bfloat16 if bf16 else torch.float32
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    cfg = peft.PeanutConfig(r=8, depth=depth, scaling=2.0, target_modules=["lin"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base.to(dtype), cfg, autocast_adapter_dtype=True)
    x = torch.randn(2, T // 2, n, dtype=dtype, requires_grad=x_grad)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        y = model(x)
        forward_peak = tracker.peak - start
        kept = tracker.current - start - y.numel() * y.element_size()
        dy = torch.randn_like(y)
        tracker.peak = before = tracker.current
        y.backward(dy)
        return kept, forward_peak, tracker.peak - before


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("depth", [0, 1])
@pytest.mark.parametrize(("n", "o", "T"), [(96, 160, 64), (160, 96, 64), (96, 160, 1024)])
def test_one_peanut_linear_matches_its_measurement(
    n: int, o: int, T: int, depth: int, bf16: bool
) -> None:
    """Kept: Wᵀ's fp32 cast (bf16 base), (1 + 3·depth) relu outputs and sums (in × r), ΔW
    and the input's fp32 cast (bf16 base). Forward: the larger of the build (B's output
    and ΔW, in × out each, beside the base output) and the sum (base output, product, its
    cast back, sum: T × out each). Backward: at the matmul's node the output gradient's
    fp32 cast (bf16 base), the input cast's gradient and ΔW's (Peanut.backward_moment).
    The fp32 case at 1,024 tokens peaks later, where the leaf x's two gradients (base and
    Peanut) are summed: in a model that is the block's input-gradient sum, not Peanut's."""
    pytest.importorskip("peft")
    e, r, de = (2 if bf16 else 4), 8, 4
    w, t = n * o * de, T * o
    cast = T * n * de if bf16 else 0
    own = (w if bf16 else 0) + (1 + 3 * depth) * n * r * de
    kept, forward_peak, backward_peak = _one_linear(n, o, T, depth, bf16, True)
    assert kept == own + w + cast
    back = t * e if bf16 else 0
    assert forward_peak == max(own + 2 * w + t * e, own + w + cast + t * (2 * e + de) + back)
    moment = (t * de if bf16 else 0) + T * n * de + w
    if bf16 or T < 1024:
        assert backward_peak == moment
    else:
        # x's two gradients and their sum (3 · T × in) with ΔW freed (depth 0: exactly
        # that less relu's output, plus A's and B's gradients)
        assert moment < backward_peak <= 3 * T * n * de - w + 2 * r * (o + r * depth) * de
        if depth == 0:
            assert backward_peak == 3 * T * n * de - w - n * r * de + 2 * r * o * de


def test_one_peanut_linear_without_an_input_gradient() -> None:
    """The first block's q and v: the matmul keeps no ΔW (x needs no gradient), but ΔW
    lives until the forward returns; the backward holds ΔW's gradient and its scaled copy."""
    pytest.importorskip("peft")
    n, o, T, r = 96, 160, 64, 8
    w = n * o * 4
    kept, forward_peak, backward_peak = _one_linear(n, o, T, 0, False, False)
    assert kept == n * r * 4
    assert forward_peak == n * r * 4 + w + 3 * T * o * 4
    assert backward_peak == 2 * w


def test_bad_input_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--method", "peanut", "--peanut-rank", "0"], "--peanut-rank: Input should be"),
        (["--method", "peanut", "--peanut-depth", "-1"], "--peanut-depth: Input should be"),
        (["--method", "lora", "--peanut-rank", "4"], "--peanut-rank only applies to peanut"),
        (["--method", "peanut", "--peanut-targets", " , "], "--peanut-targets is empty"),
        (["--method", "peanut", "--peanut-targets", "zz"], "Peanut target 'zz' matches no"),
        (["--method", "peanut", "--quant", "nf4"], "--quant only applies to qlora"),
        (["--method", "peanut", "--framework", "torchtune"], "has no --method peanut"),
    ]
    for args, expected in cases:
        assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)
    err = one_sentence(["estimate", "gpt2", "--method", "peanut"], capsys)
    assert "peft's Peanut does not wrap gpt2's transformers Conv1D layers" in err


def test_resolved_run_reports_the_peanut_settings() -> None:
    run = estimate("llama-3.2-3b", method="peanut").run
    assert (run.peanut_rank, run.peanut_targets, run.peanut_depth) == (32, "q,v", 0)
    assert run.adapter_dtype == "fp32"
    assert run.adapted_modules == ["self_attn.q_proj", "self_attn.v_proj"]


def test_live_peft_peanut_model_is_read() -> None:
    """A peft Peanut model handed to the live integration reads as --method peanut with its
    rank, depth and the modules peft wrapped; another act_fn is refused."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    config = peft.PeanutConfig(r=4, depth=1, target_modules=["k_proj", "v_proj"])
    model = peft.get_peft_model(tiny_llama(), config)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["peanut_rank"], s["peanut_depth"]) == ("peanut", 4, 1)
    assert (s["peanut_targets"], s["adapter_dtype"]) == ("k_proj,v_proj", "fp32")
    model.peft_config["default"].act_fn = "gelu"
    with pytest.raises(InvalidInputError, match="act_fn 'gelu' is not modelled"):
        read_run(model, args, given={"seq_len": 16})
