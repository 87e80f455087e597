"""peft's DeFT: what trains, what its projector and re-injection keep, how it is read and
refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against PEFT's MetaMathQA results for Llama-3.2-3B; memory against measurement
in tests/accuracy (cases ``method=deft``) and one peft DeftLinear measured alone here, over
base dtypes, relu and qr, PaRa or not, and inputs with and without a gradient.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "deft"},
    {"method": "deft", "lora_targets": "all-linear", "lora_r": 4, "deft_qr": True},
    {"method": "deft", "lora_targets": "k,o", "lora_r": 3, "deft_para": True},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


@pytest.mark.parametrize(
    ("para", "expected"),
    [
        # deft--llama-3.2-3B-rank32.json: deft_P (out × 32) and deft_R (32 × in) on q and v
        (False, 28 * 32 * ((3072 + 3072) + (1024 + 3072))),
        # deft--llama-3.2-3B-rank32-para.json: deft_P only
        (True, 28 * 32 * (3072 + 1024)),
    ],
)
def test_llama_3_2_3b_counts_are_the_published_ones(para: bool, expected: int) -> None:
    """num_trainable_params of PEFT's results (huggingface/peft@5d602fdbff04
    method_comparison/MetaMathQA/results/deft--llama-3.2-3B-rank32{,-para}.json):
    9,175,040 and 3,670,016."""
    est = estimate("llama-3.2-3b", method="deft", lora_r=32, deft_para=para or None)
    assert est.model.n_trainable_params == expected
    assert expected in (9_175_040, 3_670_016)


@pytest.mark.parametrize("bf16", [True, False])
@pytest.mark.parametrize(("para", "qr"), [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("x_grad", [True, False])
def test_one_deft_linear_matches_its_measurement(
    bf16: bool, para: bool, qr: bool, x_grad: bool
) -> None:
    """One peft DeftLinear run alone on ftmem's live-storage tracker (fp32 adapters). Kept:
    the output and deft.saved's items (the fp32 base output, the input's fp32 cast unless
    the input is fp32 or PaRa reads none, the rank-r products, the projector pieces).
    Forward peak: those plus deft.forward_transient."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from ftmem.adapters import deft
    from ftmem.arch import Linear
    from ftmem.measure.tracker import LiveBytesTracker
    from ftmem.ops.saved import Side
    from ftmem.run import RunConfig

    n, o, T, r = 64, 48, 32, 4
    dtype, e = (torch.bfloat16, 2) if bf16 else (torch.float32, 4)
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    cfg = peft.DeftConfig(
        r=r, alpha=8, target_modules=["lin"], para=para, decomposition_method="qr" if qr else "relu"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base.to(dtype), cfg, autocast_adapter_dtype=True)
    x = torch.randn(2, T // 2, n, dtype=dtype, requires_grad=x_grad)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        y = model(x)
        forward_peak, kept = tracker.peak - start, tracker.current - start
        del y
    run = RunConfig(method="deft", lora_r=r, deft_para=para or None, deft_qr=qr or None)
    lin = Linear("lin", ("q",), n, o, bias=False)
    items, _ = deft.saved(run, lin, Side.ATTENTION, T, n, e, x_grad)
    own = sum(item.nbytes for item in items)
    assert kept == T * o * e + own
    assert forward_peak == own + deft.forward_transient(run, lin, T, e, x_grad)


def test_bad_input_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--method", "lora", "--deft-para"], "--deft-para only applies to deft"),
        (["--method", "deft", "--lora-dropout", "0.1"], "--lora-dropout with --method deft"),
        (["--method", "deft", "--adapter-dtype", "bf16"], "deft with 16-bit adapters"),
        (["--method", "deft", "--framework", "litgpt"], "has no --method deft"),
        (
            ["--method", "deft", "--precision", "bf16-mixed", "--strategy", "fsdp", "--gpus", "2"],
            "FSDP's mixed precision (--precision bf16-mixed) gathers DeFT's adapters in 16-bit",
        ),
    ]
    for args, expected in cases:
        assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)
    err = one_sentence(["estimate", "gpt2", "--method", "deft"], capsys)
    assert "DeFT on gpt2's transformers Conv1D layers is not modelled" in err


@pytest.mark.parametrize("strategy", ["zero2", "colossalai-zero2"])
def test_engines_that_cast_the_adapters_say_so(
    strategy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """DeepSpeed's and ColossalAI's 16-bit modes cast DeFT's adapters to 16-bit: the
    sentence names the engine, where it told a user who gave fp32 adapters to give them."""
    args = ["llama2-7b", "--method", "deft", "--adapter-dtype", "fp32", "--precision", "bf16"]
    err = one_sentence(["estimate", *args, "--strategy", strategy, "--gpus", "2"], capsys)
    assert f"--strategy {strategy} casts the whole model, DeFT's adapters too, to 16-bit" in err
    assert "use --adapter-dtype fp32" not in err


def test_live_peft_deft_model_is_read() -> None:
    """A peft DeFT model handed to the live integration reads as --method deft with its
    rank, PaRa, decomposition and the modules peft wrapped; deft_dropout is refused."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    config = peft.DeftConfig(
        r=4, target_modules=["q_proj", "o_proj"], para=True, decomposition_method="qr"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    s = read_run(model, args, given={"seq_len": 16}).settings
    got = (s["method"], s["lora_r"], s["lora_targets"], s["deft_para"], s["deft_qr"])
    assert got == ("deft", 4, "o_proj,q_proj", True, True)
    model.peft_config["default"].deft_dropout = 0.1
    with pytest.raises(InvalidInputError, match="deft_dropout"):
        read_run(model, args, given={"seq_len": 16})
