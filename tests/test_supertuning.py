"""peft's Super-Tuning: what trains, its index buffers beside the weights, what one adapted
linear keeps and holds in its forward and backward, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and by hand at real size; memory against measurement in tests/accuracy (cases
``method=supertuning``), and Supertuning.saved, build and backward_own here against one
peft Super-Tuning Linear run alone (peft 0.21.2, torch 2.13 CPU).
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
    {"method": "supertuning"},
    {"method": "supertuning", "supertuning_targets": "all-linear", "supertuning_sparsity": 0.9},
    {
        "method": "supertuning",
        "supertuning_targets": "attention",
        "supertuning_sparsity": 0.7,
        "adapter_dtype": "bf16",
    },
    {"method": "supertuning", "supertuning_targets": "k,o", "supertuning_sparsity": 0.0},
    {"method": "supertuning", "supertuning_targets": "all-linear", "supertuning_r": 4},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "falcon", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_llama_3_2_3b_by_hand() -> None:
    """Sparsity 0.99 on q_proj (3072 × 3072) and v_proj (1024 × 3072) of 28 blocks, each
    count ``int(numel · (1 − 0.99))`` in floats as peft's _num_trainable takes it
    (1 − 0.99 = 0.010000000000000009): 94,371 and 31,457. The values are fp32 (4 B, their
    gradient as much, AdamW 8 B), the int32 indices 4 B an entry beside the weights."""
    est = estimate("llama-3.2-3b", method="supertuning")
    q, v = int(3072 * 3072 * (1 - 0.99)), int(1024 * 3072 * (1 - 0.99))
    assert (q, v) == (94_371, 31_457)
    n = 28 * (q + v)
    assert est.model.n_trainable_params == n == 3_523_184
    assert est.memory.gradients_bytes == 4 * n
    lora = estimate("llama-3.2-3b", method="lora", lora_r=8)  # the same base weights
    lora_adapters = 28 * 8 * ((3072 + 3072) + (3072 + 1024)) * 4  # fp32 A and B
    assert est.memory.weights_bytes - lora.memory.weights_bytes == 8 * n - lora_adapters


def test_supra_llama_3_2_3b_by_hand() -> None:
    """Supra r 8 adds LoRA A (8 × in) and B (out × 8) per adapted linear, fp32:
    28 · 8 · ((3072 + 3072) + (3072 + 1024)) = 2,293,760 beside the 3,523,184 values."""
    est = estimate("llama-3.2-3b", method="supertuning", supertuning_r=8)
    n = 28 * (int(3072 * 3072 * (1 - 0.99)) + int(1024 * 3072 * (1 - 0.99)))
    lora = 28 * 8 * ((3072 + 3072) + (3072 + 1024))
    assert est.model.n_trainable_params == n + lora == 5_816_944
    assert est.memory.gradients_bytes == 4 * (n + lora)


def test_counts_round_down_as_peft_does() -> None:
    """0.9 of a 160 × 96 weight: 15,360 · 0.09999999999999998 = 1,535.99…, so 1,535."""
    from peft import SupertuningConfig
    from peft.tuners.supertuning.layer import SupertuningLayer

    from ftmem.methods import supertuning_values

    SupertuningConfig(sparsity=0.9)  # (the setting peft accepts)
    lin = plan_method(
        tiny("llama", hidden_size=96, intermediate_size=160),
        RunConfig(method="supertuning", supertuning_targets="up", supertuning_sparsity=0.9),
    ).supertuning[0]
    want = SupertuningLayer._num_trainable(None, 160 * 96, 0.9)  # type: ignore[arg-type]
    assert supertuning_values(lin, 0.9) == want == 1_535


def test_index_buffers_match_peft_s() -> None:
    """The int32 supertuning_indices each adapted linear registers, counted beside the
    weights."""
    pytest.importorskip("torch")
    from ftmem.adapters.supertuning import buffer_bytes
    from ftmem.measure.build import build_model

    arch = tiny("llama")
    run = RunConfig(
        precision="bf16",
        device="cpu",
        method="supertuning",
        supertuning_targets="all-linear",
        supertuning_sparsity=0.8,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(arch, run).model
    held = [
        (b.dtype, b.numel() * b.element_size())
        for name, b in model.named_buffers()
        if "supertuning_indices" in name
    ]
    assert len(held) == arch.num_layers * 7
    assert {dtype for dtype, _ in held} == {__import__("torch").int32}
    plan = plan_method(arch, run)
    assert buffer_bytes(plan, run, arch.num_layers) == sum(size for _, size in held)


def _one_linear(
    torch,
    base,
    shape: tuple[int, int],
    sparsity: float,
    T: int,
    in_grad: bool,
    bf16_values: bool,
    r: int | None = None,
):
    """One peft Super-Tuning Linear on the CPU (ftmem's live-storage tracker): what its
    forward keeps (its growth less its output), the forward's peak beyond what it keeps
    and its output, and the peak of its backward above what it kept and its output
    gradient (the values' gradient included). With ``in_grad`` False the forward runs a
    second time without a graph, for the graph-less rebuild."""
    from peft import SupertuningConfig, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    in_f, out_f = shape
    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(in_f, out_f, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = SupertuningConfig(sparsity=sparsity, target_modules=["up"], r=r)
        model = get_peft_model(model.to(base), config, autocast_adapter_dtype=True)
        if bf16_values:
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
        x = torch.randn(T, in_f, dtype=base, requires_grad=in_grad)
        x = x * 1 if in_grad else x  # (not a leaf, as in a model)
        with LiveBytesTracker() as tracker:
            tracker.track(x, *model.parameters(), *model.buffers())
            start = tracker.peak = tracker.current
            with torch.no_grad():
                y = model(x)
            out = y.numel() * y.element_size()
            graphless = tracker.peak - start - out
            del y
            start = tracker.peak = tracker.current
            y = model(x)
            kept = tracker.current - start - out
            forward = tracker.peak - tracker.current
            g = torch.ones_like(y)
            tracker.peak = before = tracker.current
            y.backward(g)
            return kept, forward, graphless, tracker.peak - before


@pytest.mark.parametrize("mode", ["fp32", "bf16", "bf16-bf16"])
@pytest.mark.parametrize("shape", [(96, 160), (512, 64), (256, 512)], ids=str)
@pytest.mark.parametrize("sparsity", [0.9, 0.5])
@pytest.mark.parametrize("in_grad", [True, False])
@pytest.mark.parametrize("r", [None, 4, 24])
def test_kept_build_and_backward_match_one_peft_linear(
    mode: str, shape: tuple[int, int], sparsity: float, in_grad: bool, r: int | None
) -> None:
    """Supertuning.saved (scatter_add's int64 index; W' when the input needs a gradient;
    Supra's lora_A output and input cast; the input itself is the caller's),
    Supertuning.build (kept and graph-less) and Supertuning.backward_own against one peft
    Super-Tuning (Supra with ``r``) Linear: all exact."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.supertuning import Supertuning
    from ftmem.methods import supertuning_values

    in_f, out_f = shape
    run = RunConfig(
        precision="fp32" if mode == "fp32" else "bf16",
        method="supertuning",
        supertuning_targets="up",
        supertuning_sparsity=sparsity,
        supertuning_r=r,
        adapter_dtype="bf16" if mode == "bf16-bf16" else "auto",
    )
    arch = tiny("llama", hidden_size=in_f, intermediate_size=out_f)
    plan = plan_method(arch, run)
    (lin,) = plan.supertuning
    base = torch.float32 if mode == "fp32" else torch.bfloat16
    T = 37
    kept, forward, graphless, backward = _one_linear(
        torch, base, shape, sparsity, T, in_grad, mode == "bf16-bf16", r
    )
    n, we = supertuning_values(lin, sparsity), (4 if mode == "fp32" else 2)
    ae = 2 if mode == "bf16-bf16" else 4
    # derived by hand: the int64 index (8 B an entry), W' (out × in, base dtype); Supra's
    # lora_A output (T × r) and, where the dtypes differ, the input's cast
    supra = T * r * ae + (T * in_f * ae if ae != we else 0) if r else 0
    assert kept == n * 8 + (in_f * out_f * we if in_grad else 0) + supra
    if in_grad:
        assert forward == Supertuning.build(run, plan, T, True)
    elif not r:  # (a graph keeps the index even where x needs no gradient: W' alone is freed)
        assert forward + n * 8 == graphless
    assert graphless == Supertuning.build(run, plan, T, False)
    # (a checkpointed block's first forward: the same, with the linear's output)
    assert Supertuning.nograd_forward(run, plan, lin, T) == graphless + T * out_f * we
    assert backward == Supertuning.backward_own(plan, run, lin, T, in_grad)


def test_supertuning_keeps_each_rebuilt_weight() -> None:
    """At real size (bf16 base, fp32 values): per block q's and v's W' (bf16), their int64
    indices (8 B an entry) and the shared input (T × 3072, bf16), where SHiRA r 32 keeps
    the same W' and input but its sparse deltas (n · 20 B: int64 2 × n and fp32 values)."""
    T, L = 512, 28
    shira = estimate("llama-3.2-3b", method="shira", seq_len=T).memory
    st = estimate("llama-3.2-3b", method="supertuning", seq_len=T).memory
    n_shira = 32 * ((3072 + 3072) + (3072 + 1024))
    n_st = int(3072 * 3072 * (1 - 0.99)) + int(1024 * 3072 * (1 - 0.99))
    assert shira.activations_bytes - st.activations_bytes == L * (n_shira * 20 - n_st * 8)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--method", "supertuning", "--supertuning-sparsity", "1"],
            "--supertuning-sparsity: Input should be less than 1",
        ),
        (
            ["--method", "supertuning", "--supertuning-sparsity", "-0.1"],
            "--supertuning-sparsity: Input should be greater than or equal to 0",
        ),
        (
            ["--method", "lora", "--supertuning-sparsity", "0.5"],
            "--supertuning-sparsity only applies to supertuning",
        ),
        (["--method", "supertuning", "--supertuning-targets", " , "], "is empty"),
        (
            ["--method", "supertuning", "--supertuning-targets", "zz"],
            "Super-Tuning target 'zz' matches no linear",
        ),
        (
            ["--method", "supertuning", "--supertuning-sparsity", "0.9999999999"],
            "--supertuning-sparsity 0.9999999999 leaves",
        ),
        (
            ["--method", "supertuning", "--supertuning-r", "0"],
            "--supertuning-r: Input should be greater than 0",
        ),
        (["--method", "lora", "--supertuning-r", "8"], "--supertuning-r only applies to"),
        (["--method", "supertuning", "--autocast"], "Super-Tuning under autocast"),
        (["--method", "supertuning", "--precision", "bf16-mixed"], "Super-Tuning under autocast"),
        (
            ["--method", "supertuning", "--strategy", "zero2", "--gpus", "2"],
            "Super-Tuning with 16-bit adapters is not modelled",
        ),
        (["--method", "supertuning", "--framework", "litgpt"], "--framework litgpt has no"),
        (["--method", "supertuning", "--quant", "nf4"], "--quant only applies to"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_models_not_modelled_are_refused(capsys) -> None:
    for model, expected in (
        ("gpt2", "peft's Super-Tuning does not wrap gpt2's transformers Conv1D layers"),
        ("flan-t5-base", "does not model method supertuning"),
    ):
        with pytest.raises(SystemExit):
            main(["estimate", model, "--method", "supertuning"])
        assert expected in capsys.readouterr().err


def test_live_peft_model_is_read() -> None:
    """A peft Super-Tuning model handed to ftmem's callback: its method, sparsity, wrapped
    modules and the values' dtype; a Supra one's r; Supra with dropout is refused in one
    sentence."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.errors import InvalidInputError
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    config = peft.SupertuningConfig(sparsity=0.95, target_modules=["q_proj", "o_proj"])
    model = peft.get_peft_model(tiny_llama(), config)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["supertuning_sparsity"], s["supertuning_targets"]) == (
        "supertuning",
        0.95,
        "o_proj,q_proj",
    )
    assert s["adapter_dtype"] == "fp32"
    supra = peft.SupertuningConfig(target_modules=["q_proj"], r=4)
    s = read_run(peft.get_peft_model(tiny_llama(), supra), args, given={"seq_len": 16}).settings
    assert (s["supertuning_r"], s["supertuning_sparsity"]) == (4, 0.99)
    dropped = peft.SupertuningConfig(target_modules=["q_proj"], r=4, lora_dropout=0.1)
    model = peft.get_peft_model(tiny_llama(), dropped)
    with pytest.raises(InvalidInputError, match=r"lora_dropout=0\.1 is not modelled"):
        read_run(model, args, given={"seq_len": 16})
