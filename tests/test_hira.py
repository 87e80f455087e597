"""peft's HiRA: what trains, what it keeps at real size, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B;
memory (saved tensors, ΔW's build in forward, the backward) against measurement in
tests/accuracy (cases ``method=hira``) and one peft HiRA linear measured alone here.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from tests.conftest import tiny
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "hira"},
    {"method": "hira", "hira_targets": "all-linear", "hira_rank": 4},
    {"method": "hira", "hira_targets": "k,o", "adapter_dtype": "bf16"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/hira--llama-3.2-3B-rank32-lr4.5e-3.json: ``"num_trainable_params":
    9175040`` for r 32 on q_proj, v_proj. By hand: hira_A (32 × 3072) and hira_B (out ×
    32) per linear, q's out 3072 and v's 1024, in 28 blocks: 28 · 32 · (3072 + 3072 +
    3072 + 1024) = 9,175,040."""
    est = estimate("llama-3.2-3b", method="hira")
    assert est.model.n_trainable_params == 28 * 32 * (3 * 3072 + 1024) == 9_175_040


def test_hira_keeps_its_delta_weight_where_lora_keeps_its_rank_r_output() -> None:
    """Llama-3.2-3B, q and v, bf16 base, fp32 adapters, T = 512: both keep each adapted
    linear's input cast to fp32 (T × 3072 × 4); LoRA adds lora_A's output (T × r × 4),
    HiRA, above the first block (whose input needs no gradient), ΔW in fp32 (q: 3072 ×
    3072, v: 1024 × 3072, × 4 bytes)."""
    T, L, r = 512, 28, 8
    hira = estimate("llama-3.2-3b", method="hira", seq_len=T).memory
    lora = estimate("llama-3.2-3b", method="lora", lora_r=r, seq_len=T).memory
    expected = (L - 1) * (3072 + 1024) * 3072 * 4 - L * 2 * T * r * 4
    assert hira.activations_bytes - lora.activations_bytes == expected


def test_one_hira_linear_matches_its_measurement() -> None:
    """One peft HiRA linear (in 512, out 256, r 8, bf16 base, fp32 adapters, T = 128) run
    alone on ftmem's live-storage tracker: it keeps the fp32 input cast and ΔW (T·in·4 +
    out·in·4); its forward peaks with B A, ΔW, the cast, the bf16 base output, the fp32
    adapter output and the fp32 sum alive (HiRA.forward_build); its backward at the mm's
    node with the output's gradient in fp32 and its bf16 cast for the base branch, the
    cast input's gradient and ΔW's (HiRA.backward_moment)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from ftmem.measure.tracker import LiveBytesTracker

    n, o, T = 512, 256, 128
    w, cast = n * o * 4, T * n * 4
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(
            base.to(torch.bfloat16),
            peft.HiraConfig(r=8, target_modules=["lin"]),
            autocast_adapter_dtype=True,
        )
    x = torch.randn(2, T // 2, n, dtype=torch.bfloat16, requires_grad=True)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        y = model(x)
        forward_peak, kept = tracker.peak - start, tracker.current - start - T * o * 2
        tracker.peak = before = tracker.current
        y.sum().backward()  # (sum's gradient is an expanded scalar: no T × out tensor)
        backward_peak = tracker.peak - before
    assert kept == cast + w
    assert forward_peak == 2 * w + cast + T * o * 2 + 2 * T * o * 4
    # beyond the kept and y (and the 4-byte fp32 gradient of the sum)
    assert backward_peak == T * o * (4 + 2) + cast + w + 4


@pytest.mark.parametrize("mode", ["bf16-mixed", "bf16-autocast"])
@pytest.mark.parametrize("grad", [True, False])
def test_one_hira_linear_under_autocast(mode: str, grad: bool) -> None:
    """The same linear under the CPU's bf16 autocast (an fp32 base: bf16-mixed; a bf16
    base: --autocast): it keeps ΔW's bf16 cast, the input's bf16 cast (made from peft's
    fp32 cast on a bf16 base) and the mm's casts of A.T and B.T (HiRA.saved), besides an
    fp32 base's own 16-bit weight cast (the base layer's); its forward peaks as
    hira._autocast_forward says (graph-less too: checkpointing's), its backward as
    hira._autocast_backward, exactly."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from ftmem.adapters.hira import _autocast_backward, _autocast_forward
    from ftmem.measure.tracker import LiveBytesTracker

    n, o, T, r = 512, 256, 128, 8
    el, mixed = n * o, mode == "bf16-mixed"
    precision = {"precision": "bf16-mixed"} if mixed else {"precision": "bf16", "autocast": True}
    run = RunConfig(**precision, method="hira", hira_targets="up", hira_rank=r)
    plan = plan_method(tiny("llama", hidden_size=n, intermediate_size=o), run)
    (lin,) = plan.hira
    dtype = torch.float32 if mixed else torch.bfloat16
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = peft.HiraConfig(r=r, target_modules=["lin"])
        model = peft.get_peft_model(base.to(dtype), config, autocast_adapter_dtype=True)
    x = torch.randn(2, T // 2, n, dtype=dtype, requires_grad=grad)
    in_bytes = 4 if mixed else 2
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        forward_peak = tracker.peak - start
        if not grad:
            assert forward_peak == _autocast_forward(plan, lin, T, lambda _: in_bytes, False)
            return
        base_cast = el * 2 if mixed else 0
        kept = tracker.current - start - T * o * 2 - base_cast
        tracker.peak = before = tracker.current
        y.sum().backward()
        backward_peak = tracker.peak - before
    assert kept == 2 * el + T * n * 2 + r * (n + o) * 2
    assert forward_peak == base_cast + kept + _autocast_forward(
        plan, lin, T, lambda _: in_bytes, True
    )
    assert backward_peak == _autocast_backward(plan, lin, T) + 4  # (the sum's gradient)


def test_bad_input_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--method", "hira", "--hira-rank", "0"], "--hira-rank: Input should be"),
        (["--method", "lora", "--hira-rank", "4"], "--hira-rank only applies to hira"),
        (["--method", "hira", "--hira-targets", " , "], "--hira-targets is empty"),
        (["--method", "hira", "--hira-targets", "zz"], "HiRA target 'zz' matches no linear"),
        (["--method", "hira", "--quant", "nf4"], "--quant only applies to qlora"),
        (["--method", "hira", "--framework", "torchtune"], "has no --method hira"),
    ]
    for args, expected in cases:
        assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)
    err = one_sentence(["estimate", "gpt2", "--method", "hira"], capsys)
    assert "HiRA on gpt2's transformers Conv1D layers is not modelled" in err


def test_resolved_run_reports_the_hira_settings() -> None:
    run = estimate("llama-3.2-3b", method="hira").run
    assert (run.hira_rank, run.hira_targets, run.adapter_dtype) == (32, "q,v", "fp32")
    assert run.adapted_modules == ["self_attn.q_proj", "self_attn.v_proj"]


def test_live_peft_hira_model_is_read() -> None:
    """A peft HiRA model handed to the live integration reads as --method hira with its
    rank and the modules peft wrapped; a bitsandbytes base under it is refused."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    config = peft.HiraConfig(r=4, target_modules=["k_proj", "v_proj"])
    model = peft.get_peft_model(tiny_llama(), config)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["hira_rank"], s["hira_targets"]) == ("hira", 4, "k_proj,v_proj")
    assert s["adapter_dtype"] == "fp32"
    layer = model.base_model.model.model.layers[0].self_attn.k_proj
    fake = type("Linear4bit", (), {"__module__": "bitsandbytes.nn.modules"})()
    layer.get_base_layer = lambda: fake
    with pytest.raises(InvalidInputError, match="HiRA on a bitsandbytes-quantised base"):
        read_run(model, args, given={"seq_len": 16})
