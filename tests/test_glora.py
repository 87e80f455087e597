"""peft's GLoRA: what trains, what its rebuilt weight keeps, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against PEFT's MetaMathQA results for Llama-3.2-3B; memory against measurement
in tests/accuracy (cases ``method=glora``) and one peft GloraLinear measured alone here,
over base dtypes, the lora and vector paths, and inputs with and without a gradient.
"""

from __future__ import annotations

import dataclasses
import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "glora"},
    {"method": "glora", "glora_targets": "all-linear", "glora_rank": 4},
    {"method": "glora", "glora_targets": "k,o", "glora_vector": True, "adapter_dtype": "bf16"},
]


@pytest.mark.parametrize("family", ["llama", "phi3", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


@pytest.mark.parametrize(
    ("vector", "expected"),
    [
        # glora--llama-3.2-3B-default.json: Xd (out × 8) and Xu (8 × in) for A and B, q and v
        (False, 28 * 2 * 8 * ((3072 + 3072) + (1024 + 3072))),
        # glora--llama-3.2-3B-vector-paths.json: A and B as out × 1 vectors
        (True, 28 * 2 * (3072 + 1024)),
    ],
)
def test_llama_3_2_3b_counts_are_the_published_ones(vector: bool, expected: int) -> None:
    """num_trainable_params of PEFT's results (huggingface/peft@5d602fdbff04
    method_comparison/MetaMathQA/results/glora--llama-3.2-3B-{default,vector-paths}.json):
    4,587,520 and 229,376; C, D and E are zero buffers on Llama's bias-free linears."""
    est = estimate("llama-3.2-3b", method="glora", glora_vector=vector or None)
    assert est.model.n_trainable_params == expected
    assert expected in (4_587_520, 229_376)


@pytest.mark.parametrize("bf16", [True, False])
@pytest.mark.parametrize("vector", [False, True])
@pytest.mark.parametrize("x_grad", [True, False])
def test_one_glora_linear_matches_its_measurement(bf16: bool, vector: bool, x_grad: bool) -> None:
    """One peft GloraLinear run alone on ftmem's live-storage tracker (fp32 adapters). Kept:
    the output and, when x needs a gradient, weight_eff (the input is the caller's). Forward
    peak: GLoRA.forward_moment. Backward without an input gradient: GLoRA.backward_moment
    plus the small gradients made at that moment (the lora path's Xd and Xu on an fp32
    base; the vector path's two out-wide sums) and the sum's scalar gradients (2 · e)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from ftmem.adapters.glora import GLoRA
    from ftmem.arch import Linear
    from ftmem.measure.tracker import LiveBytesTracker
    from ftmem.methods import plan_method
    from ftmem.run import RunConfig
    from tests.test_peft_methods import tiny

    n, o, T, r = 64, 48, 32, 4
    dtype, e = (torch.bfloat16, 2) if bf16 else (torch.float32, 4)
    path = "vector" if vector else "lora"
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    cfg = peft.GloraConfig(r=r, target_modules=["lin"], config_A_B=path, config_C=path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base.to(dtype), cfg, autocast_adapter_dtype=True)
    x = torch.randn(2, T // 2, n, dtype=dtype, requires_grad=x_grad)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        y = model(x)
        forward_peak, kept = tracker.peak - start, tracker.current - start
        tracker.peak = before = tracker.current
        y.sum().backward()
        backward_peak = tracker.peak - before - 2 * e
    run = RunConfig(
        precision="bf16" if bf16 else "fp32",
        method="glora",
        glora_rank=r,
        glora_vector=vector or None,
    )
    lin = Linear("lin", ("q",), n, o, bias=False)
    plan = dataclasses.replace(plan_method(tiny("llama"), run), glora=(lin,))
    assert kept == T * o * e + (o * n * e if x_grad else 0)
    assert forward_peak == GLoRA.forward_moment(plan, run, lin, T, e, 0, 0)
    if not x_grad:
        small = 2 * o * e if vector else (0 if bf16 else r * (o + n) * 4)
        assert backward_peak == GLoRA.backward_moment(plan, run, e, False) + small


@pytest.mark.parametrize("vector", [False, True])
@pytest.mark.parametrize("x_grad", [True, False])
def test_one_glora_linear_under_autocast(vector: bool, x_grad: bool) -> None:
    """One peft GloraLinear over an fp32 base under CPU autocast to bf16 (linear and matmul
    are lower precision on CUDA's list as on the CPU's; mul and add on neither), on the
    live-storage tracker. Kept: the bf16 output, F.linear's bf16 casts of the input and
    (x needing a gradient) of weight_eff, the lora path's cached casts of Xd and Xu (A's
    and B's), and the frozen base weight's cast (x needing a gradient: a base linear's
    item). Forward peak: GLoRA.forward_moment with the two casts, beside those kept."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from ftmem.adapters.glora import GLoRA
    from ftmem.arch import Linear
    from ftmem.measure.tracker import LiveBytesTracker
    from ftmem.methods import plan_method
    from ftmem.run import RunConfig
    from tests.test_peft_methods import tiny

    n, o, T, r, e = 64, 48, 32, 4, 2
    path = "vector" if vector else "lora"
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    cfg = peft.GloraConfig(r=r, target_modules=["lin"], config_A_B=path, config_C=path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base, cfg, autocast_adapter_dtype=True)
    x = torch.randn(2, T // 2, n, requires_grad=x_grad)
    x_in = x * 1 if x_grad else x  # (not a leaf, as in a model: autocast caches leaves' casts)
    with LiveBytesTracker() as tracker:
        tracker.track(x, x_in, *model.parameters(), *model.buffers())
        start = tracker.current
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x_in)
        forward_peak, kept = tracker.peak - start, tracker.current - start
    run = RunConfig(
        precision="bf16-mixed", method="glora", glora_rank=r, glora_vector=vector or None
    )
    lin = Linear("lin", ("q",), n, o, bias=False)
    plan = dataclasses.replace(plan_method(tiny("llama"), run), glora=(lin,))
    x_cast, w_cast = T * n * e, o * n * e
    factors = 0 if vector else 2 * r * (o + n) * e
    others = factors + (w_cast if x_grad else 0)  # the base weight's cast
    assert y.dtype == torch.bfloat16
    assert kept == T * o * e + x_cast + (w_cast if x_grad else 0) + others
    casts, kept_casts = x_cast + w_cast, x_cast + (w_cast if x_grad else 0)
    moment = GLoRA.forward_moment(plan, run, lin, T, e, casts, kept_casts)
    assert forward_peak == moment + others


def test_bad_input_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (
            ["llama2-7b", "--method", "lora", "--glora-vector"],
            "--glora-vector only applies to glora",
        ),
        (["llama2-7b", "--method", "glora", "--glora-rank", "0"], "--glora-rank: Input should be"),
        (["llama2-7b", "--method", "glora", "--glora-targets", "zz"], "GLoRA target 'zz' matches"),
        (["llama2-7b", "--method", "glora", "--framework", "litgpt"], "has no --method glora"),
        (["qwen2.5-7b", "--method", "glora"], "GLoRA on linears with a bias (q_proj, v_proj"),
    ]
    for args, expected in cases:
        assert expected in one_sentence(["estimate", *args], capsys)
    err = one_sentence(["estimate", "gpt2", "--method", "glora"], capsys)
    assert "peft's GLoRA does not wrap gpt2's transformers Conv1D layers" in err


def test_live_peft_glora_model_is_read() -> None:
    """A peft GLoRA model handed to the live integration reads as --method glora with its
    rank, path and the modules peft wrapped; a path ftmem does not model is refused."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    config = peft.GloraConfig(r=4, target_modules=["q_proj", "o_proj"], config_A_B="vector")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    s = read_run(model, args, given={"seq_len": 16}).settings
    got = (s["method"], s["glora_rank"], s["glora_targets"], s["glora_vector"])
    assert got == ("glora", 4, "o_proj,q_proj", True)
    model.peft_config["default"].config_A_B = "constant"
    with pytest.raises(InvalidInputError, match="config_A_B 'constant'"):
        read_run(model, args, given={"seq_len": 16})
