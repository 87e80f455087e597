"""peft's PVeRA (probabilistic VeRA): what trains, the shared projections it keeps as
buffers, what its sampling keeps, what each adapted linear's backward holds, how it is
read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the counts PEFT's MetaMathQA benchmark published for Llama-3.2-3B; the
projections against the buffers peft registers; what one adapted linear keeps and its
backward against one peft PVeRA Linear run alone (here), the whole step in tests/accuracy
(cases ``method=pvera``).
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from tests.conftest import tiny
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "pvera"},
    {"method": "pvera", "pvera_targets": "all-linear", "pvera_rank": 4},
    {"method": "pvera", "pvera_targets": "k,o", "pvera_rank": 5, "adapter_dtype": "bf16"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "falcon", "mixtral"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


@pytest.mark.parametrize(
    ("rank", "trainable", "total"), [(256, 143_360, 3_212_893_184), (64, 121_856, 3_212_871_680)]
)
def test_published_metamathqa_counts(rank: int, trainable: int, total: int) -> None:
    """huggingface/peft@5d602fdbff04 method_comparison/MetaMathQA/results/
    pvera--llama-3.2-3B-default.json (r 256) and pvera--llama-3.2-3B-rank64.json (r 64),
    q_proj and v_proj: ``num_trainable_params`` and ``num_total_params``. By hand: λ_d
    (2r: the code's mean and log-variance) and λ_b (out) per adapted linear; q 3072 →
    3072, v 3072 → 1024, 28 blocks. The total is the base's 3,212,749,824 plus these: the
    projections are buffers."""
    est = estimate("llama-3.2-3b", method="pvera", pvera_rank=rank)
    assert est.model.n_trainable_params == 28 * ((2 * rank + 3072) + (2 * rank + 1024))
    assert est.model.n_trainable_params == trainable
    assert est.model.n_params + est.model.n_trainable_params == total


def test_projections_are_one_pair_beside_the_weights() -> None:
    """pvera_A (2r × widest input) and pvera_B (widest output × r), fp32, once for the
    model: the r 256 result file's ``file_size`` 10,025,160 holds them (save_projection)
    with the fp32 vectors: (512 + 256) · 3072 · 4 + 143,360 · 4 = 10,010,624 bytes, the
    rest safetensors' header."""
    pvera = estimate("llama-3.2-3b", method="pvera", precision="bf16").memory
    base = estimate("llama-3.2-3b", method="lora", precision="bf16", lora_r=1).memory
    lora_ab = 28 * ((3072 + 3072) + (3072 + 1024)) * 4
    projections, vectors = (512 + 256) * 3072 * 4, 143_360 * 4
    assert pvera.weights_bytes - (base.weights_bytes - lora_ab) == projections + vectors
    assert projections + vectors == 10_010_624 < 10_025_160


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
            method="pvera",
            pvera_targets="all-linear",
            pvera_rank=6,
            adapter_dtype=adapter_dtype,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(arch, run).model
        buffers = [(n, b) for n, b in model.named_buffers(remove_duplicate=False) if ".pvera_" in n]
        seen = {b.untyped_storage()._cdata: b.untyped_storage().nbytes() for _, b in buffers}
        assert {b.dtype for _, b in buffers} == {
            torch.float32 if adapter_dtype == "auto" else torch.bfloat16
        }
        assert projection_bytes(arch, run, plan_method(arch, run).dtypes) == sum(seen.values())


def _one_linear(torch, mode: str, shape: tuple[int, int, int], T: int) -> tuple[int, int]:
    """What one peft PVeRA Linear (training: it samples) keeps after its forward beside
    its output, and the bytes above that and its output gradient at the peak of its
    backward less the vectors' gradients, on the CPU (ftmem's live-storage tracker)."""
    from peft import PveraConfig, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    in_f, out_f, r = shape
    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(in_f, out_f, bias=False))
    base = torch.float32 if mode in ("fp32", "bf16-mixed") else torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(
            model.to(base), PveraConfig(r=r, target_modules=["up"]), autocast_adapter_dtype=True
        )
    if mode in ("bf16-bf16", "bf16-bf16-autocast"):
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16)
        for d in (model.base_model.pvera_A, model.base_model.pvera_B):
            d["default"] = d["default"].to(torch.bfloat16)
    x = torch.randn(T, in_f, dtype=base, requires_grad=True) * 1  # (not a leaf)
    on = mode in ("bf16-mixed", "bf16-autocast", "bf16-bf16-autocast")
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
            y = model(x)
        kept = tracker.current - start - y.numel() * y.element_size()
        g = torch.ones_like(y)
        tracker.peak = before = tracker.current
        y.backward(g)
        grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
        return kept, tracker.peak - before - grads


MODES = ["fp32", "bf16", "bf16-bf16", "bf16-mixed", "bf16-autocast", "bf16-bf16-autocast"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(96, 160, 16), (96, 96, 256), (512, 64, 16)], ids=str)
def test_one_peft_linear(mode: str, shape: tuple[int, int, int]) -> None:
    """VeRA.saved and VeRA.backward_own for PVeRA against one peft PVeRA Linear (the three
    shapes put the peak at λ_b, λ_d and the input): what it keeps exact (h T × 2r, y
    T × out in the products' dtype, std and eps T × r each in the code's; under autocast
    the 16-bit casts of sliced_B (out × r) and sliced_A (2r × in) unless the projections
    are 16-bit already, and bf16-mixed's copy of the fp32 base weight); its backward
    exact up to the vectors' gradients made by then (4 · out bytes for λ_b, 8 · r for
    λ_d), but bf16-mixed's input moment, where the base weight's copy (out × in × 2) is
    freed already (counted among the linear's saved tensors, not the adapter's)."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.vera import VeRA, casts_slices, code_bytes, product_bytes, sampled_code

    in_f, out_f, r = shape
    run = RunConfig(
        precision={"fp32": "fp32", "bf16-mixed": "bf16-mixed"}.get(mode, "bf16"),
        autocast=True if mode.endswith("-autocast") else None,
        device="cpu",
        method="pvera",
        pvera_targets="up",
        pvera_rank=r,
        adapter_dtype="bf16" if mode.startswith("bf16-bf16") else "auto",
    )
    plan = plan_method(tiny("llama", hidden_size=in_f, intermediate_size=out_f), run)
    (lin,) = plan.vectored
    T = 600
    kept, backward = _one_linear(torch, mode, shape, T)
    pe, ce = product_bytes(plan), code_bytes(plan, run)
    casts = (out_f * r + 2 * r * in_f) * 2 if casts_slices(plan) else 0
    casts += out_f * in_f * 2 if mode == "bf16-mixed" else 0
    assert kept == T * (2 * r + out_f) * pe + sampled_code(run, T, ce) + casts
    assert sampled_code(run, T, ce) == 2 * T * r * (2 if mode.startswith("bf16-bf16") else 4)
    slack = 4 * (out_f + 2 * r) + (out_f * in_f * 2 if mode == "bf16-mixed" else 0)
    assert abs(backward - VeRA.backward_own(plan, run, lin, T)) <= slack


def test_cuda_autocast_keeps_an_fp32_code() -> None:
    """CUDA's autocast runs exp in fp32 (the CPU's does not): with 16-bit vectors under
    autocast std and eps are fp32 there, 2 · T · r · 4 bytes per adapted linear, and
    16-bit on the CPU (measured in test_one_peft_linear)."""
    from ftmem.adapters.vera import code_bytes

    arch = tiny("llama")
    for device, want in (("cuda", 4), ("cpu", 2)):
        run = RunConfig(
            precision="bf16", autocast=True, adapter_dtype="bf16", method="pvera", device=device
        )
        assert code_bytes(plan_method(arch, run), run) == want


def test_pvera_keeps_more_than_vera_by_its_code() -> None:
    """At real size (bf16 base, fp32 vectors): beside VeRA's h (T × r) and y, PVeRA keeps
    a 2r-wide h and std and eps (T × r each), 3r more per adapted linear: q and v in each
    of 28 blocks."""
    T, L, r = 512, 28, 256
    vera = estimate("llama-3.2-3b", method="vera", seq_len=T).memory
    pvera = estimate("llama-3.2-3b", method="pvera", seq_len=T).memory
    assert pvera.activations_bytes - vera.activations_bytes == L * 2 * T * 3 * r * 4


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--method", "pvera", "--pvera-rank", "0"],
            "--pvera-rank: Input should be greater than 0",
        ),
        (["--method", "vera", "--pvera-rank", "4"], "--pvera-rank only applies to pvera"),
        (["--method", "pvera", "--vera-rank", "4"], "--vera-rank only applies to vera"),
        (["--method", "pvera", "--pvera-targets", " , "], "--pvera-targets is empty"),
        (["--method", "pvera", "--pvera-targets", "zz"], "PVeRA target 'zz' matches no linear"),
        (
            ["--method", "pvera", "--framework", "litgpt"],
            "--framework litgpt has no --method pvera",
        ),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_seq2seq_is_refused(capsys) -> None:
    assert "does not model method pvera" in one_sentence(
        ["estimate", "flan-t5-base", "--method", "pvera"], capsys
    )


def test_resolved_run_reports_the_pvera_settings() -> None:
    run = estimate("llama-3.2-3b", method="pvera", pvera_rank=64).run
    assert (run.pvera_rank, run.pvera_targets, run.adapter_dtype) == (64, "q,v", "fp32")
    assert run.adapted_modules == ["self_attn.q_proj", "self_attn.v_proj"]


def test_live_peft_pvera_model_is_read() -> None:
    """A peft PVeRA model handed to the live integration reads as --method pvera with its
    rank and the modules peft wrapped."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.PveraConfig(r=4, target_modules=["q_proj", "o_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["pvera_rank"], s["pvera_targets"]) == ("pvera", 4, "o_proj,q_proj")
    assert s["adapter_dtype"] == "fp32"


@pytest.mark.parametrize("precision", [["bf16-mixed"], ["fp16-mixed"], ["bf16", "--autocast"]])
def test_autocast_is_estimated(precision: list[str], capsys) -> None:
    """PVeRA under autocast was refused (not modelled); its casts, its fp32 code and its
    output in the input's dtype are modelled now (tests/accuracy cases method=pvera)."""
    from ftmem.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "llama-3.2-3b", "--method", "pvera", "--precision", *precision])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0 and err == "" and "GiB" in out
