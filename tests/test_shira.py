"""peft's SHiRA: what trains, its indices beside the weights, what one adapted linear keeps
and holds in its backward, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B;
memory against measurement in tests/accuracy (cases ``method=shira``), and Shira.saved and
Shira.backward_own here against one peft SHiRA Linear run alone.
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
    {"method": "shira"},
    {"method": "shira", "shira_targets": "all-linear", "shira_rank": 4},
    {"method": "shira", "shira_targets": "attention", "shira_rank": 3, "adapter_dtype": "bf16"},
    {"method": "shira", "shira_targets": "k,o", "shira_rank": 5},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "falcon", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/shira--llama-3.2-3B-lr_0.0003-random_seed_42.json:
    ``"num_trainable_params": 9175040`` for r 32 (target_modules null: peft's LoRA mapping,
    q_proj and v_proj). By hand: r·(in + out) per adapted linear; q 3072 → 3072, v 3072 →
    1024, 28 blocks: 28 · 32 · ((3072 + 3072) + (3072 + 1024)) = 9,175,040. Its
    ``file_size`` 110,115,520 holds the fp32 values and the int32 indices (2 × n):
    9,175,040 · (4 + 8) = 110,100,480 bytes, the rest safetensors' header."""
    est = estimate("llama-3.2-3b", method="shira")
    n = 28 * 32 * ((3072 + 3072) + (3072 + 1024))
    assert est.model.n_trainable_params == n == 9_175_040
    assert est.model.n_params + n == 3_221_924_864  # its num_total_params
    assert n * (4 + 8) <= 110_115_520


def test_indices_match_peft_s() -> None:
    """The int32 indices peft keeps on each adapted layer (a plain dict, not a buffer),
    counted beside the weights."""
    pytest.importorskip("torch")
    from ftmem.adapters.shira import index_bytes
    from ftmem.measure.build import build_model

    arch = tiny("llama")
    run = RunConfig(
        precision="bf16", device="cpu", method="shira", shira_targets="all-linear", shira_rank=3
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(arch, run).model
    held = [
        t.numel() * t.element_size()
        for m in model.modules()
        for t in getattr(m, "shira_indices", {}).values()
    ]
    assert len(held) == arch.num_layers * 7
    assert index_bytes(arch, run) == sum(held)


def _one_linear(
    torch,
    base,
    shape: tuple[int, int, int],
    T: int,
    in_grad: bool,
    bf16_values: bool,
    autocast: bool = False,
):
    """What one peft SHiRA Linear keeps (its forward's growth less its output) and the
    peak of its backward above what it kept and its output gradient, less the values'
    gradient, on the CPU (ftmem's live-storage tracker), under its bf16 autocast with
    ``autocast``."""
    from peft import ShiraConfig, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    in_f, out_f, r = shape
    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(in_f, out_f, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(
            model.to(base), ShiraConfig(r=r, target_modules=["up"]), autocast_adapter_dtype=True
        )
        if bf16_values:
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
        x = torch.randn(T, in_f, dtype=base, requires_grad=in_grad)
        x = x * 1 if in_grad else x  # (not a leaf, as in a model)
        indices = model.base_model.model.up.shira_indices.values()
        with LiveBytesTracker() as tracker:
            tracker.track(x, *model.parameters(), *indices)
            start = tracker.current
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = model(x)
            kept = tracker.current - start - y.numel() * y.element_size()
            g = torch.ones_like(y)
            tracker.peak = before = tracker.current
            y.backward(g)
            grads = sum(
                p.grad.numel() * p.grad.element_size()
                for p in model.parameters()
                if p.grad is not None
            )
            return kept, tracker.peak - before - grads


@pytest.mark.parametrize("mode", ["fp32", "bf16", "bf16-bf16", "bf16-mixed", "bf16-autocast"])
@pytest.mark.parametrize("shape", [(96, 160, 4), (512, 64, 8), (256, 512, 16)], ids=str)
@pytest.mark.parametrize("in_grad", [True, False])
def test_kept_and_backward_match_one_peft_linear(
    mode: str, shape: tuple[int, int, int], in_grad: bool
) -> None:
    """Shira.saved (the sparse delta, W' when the input needs a gradient; the input itself
    is the caller's) and Shira.backward_own against one peft SHiRA Linear: exact, up to
    the values' gradient made by the last moment (4 · n bytes). Under autocast
    (bf16-mixed: an fp32 base; bf16-autocast: HF Trainer's bf16=True on a bf16 base)
    W' is kept as its bf16 cast, and an fp32 input as its own bf16 cast."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.shira import Shira, sparse_bytes

    in_f, out_f, r = shape
    precision = {"fp32": "fp32", "bf16-mixed": "bf16-mixed"}.get(mode, "bf16")
    run = RunConfig(
        precision=precision,
        **({"autocast": True} if mode == "bf16-autocast" else {}),
        method="shira",
        shira_targets="up",
        shira_rank=r,
        adapter_dtype="bf16" if mode == "bf16-bf16" else "auto",
    )
    arch = tiny("llama", hidden_size=in_f, intermediate_size=out_f)
    plan = plan_method(arch, run)
    (lin,) = plan.shira
    base = torch.float32 if mode in ("fp32", "bf16-mixed") else torch.bfloat16
    T, autocast = 37, mode in ("bf16-mixed", "bf16-autocast")
    kept, backward = _one_linear(torch, base, shape, T, in_grad, mode == "bf16-bf16", autocast)
    we = 4 if mode == "fp32" else 2
    cast = T * in_f * 2 if mode == "bf16-mixed" else 0
    assert kept == sparse_bytes(plan, run, lin) + (in_f * out_f * we if in_grad else 0) + cast
    want = Shira.backward_own(plan, run, lin, T, in_grad)
    assert abs(backward - want) <= 4 * r * (in_f + out_f)


def test_shira_keeps_each_rebuilt_weight() -> None:
    """At real size (bf16 base, fp32 values): per block q's and v's W' (bf16), their
    sparse deltas (n · 20 bytes) and the shared input (T × 3072, bf16) where LoRA r 32
    keeps the input's fp32 cast per linear and lora_A's fp32 output (T × 32)."""
    T, L = 512, 28
    lora = estimate("llama-3.2-3b", method="lora", lora_r=32, seq_len=T).memory
    shira = estimate("llama-3.2-3b", method="shira", seq_len=T).memory
    n = 32 * ((3072 + 3072) + (3072 + 1024))
    # block 0's input needs no gradient: its F.linear keeps no W'
    shira_kept = L * (n * 20 + T * 3072 * 2) + (L - 1) * 2 * (3072 * 3072 + 3072 * 1024)
    lora_kept = L * 2 * T * 4 * (3072 + 32)
    assert shira.activations_bytes - lora.activations_bytes == shira_kept - lora_kept


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--method", "shira", "--shira-rank", "0"],
            "--shira-rank: Input should be greater than 0",
        ),
        (["--method", "lora", "--shira-rank", "4"], "--shira-rank only applies to shira"),
        (["--method", "shira", "--shira-targets", " , "], "--shira-targets is empty"),
        (["--method", "shira", "--shira-targets", "zz"], "SHiRA target 'zz' matches no linear"),
        (["--method", "shira", "--shira-rank", "3000"], "--shira-rank 3000 gives"),
        (["--method", "shira", "--framework", "litgpt"], "--framework litgpt has no"),
        (["--method", "shira", "--quant", "nf4"], "--quant only applies to"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_models_not_modelled_are_refused(capsys) -> None:
    for model, expected in (
        ("gpt2", "peft's SHiRA does not wrap gpt2's transformers Conv1D layers"),
        ("flan-t5-base", "does not model method shira"),
    ):
        with pytest.raises(SystemExit):
            main(["estimate", model, "--method", "shira"])
        assert expected in capsys.readouterr().err


def test_live_peft_model_is_read() -> None:
    """A peft SHiRA model handed to ftmem's callback: its method, r, wrapped modules and
    the values' dtype."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.ShiraConfig(r=2, target_modules=["q_proj", "o_proj"])
    model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["shira_rank"], s["shira_targets"]) == ("shira", 2, "o_proj,q_proj")
    assert s["adapter_dtype"] == "fp32"
