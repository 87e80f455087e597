"""peft's LoHa: what trains, what its Hadamard product holds, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B;
memory against measurement in tests/accuracy (cases ``method=loha``), and the ΔW build
and backward temporaries here against the HadaWeight autograd function run alone.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.cli import main
from ftmem.errors import InvalidInputError
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from tests.conftest import tiny

SETTINGS = [
    {},
    {"loha_targets": "all-linear", "loha_rank": 4},
    {"loha_targets": "attention", "loha_rank": 3, "loha_alpha": 12, "adapter_dtype": "bf16"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "falcon", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    pytest.importorskip("peft")
    from ftmem.measure.build import build_model

    arch = tiny(family)
    run = RunConfig(precision="bf16", device="cpu", method="loha", **settings)
    plan = plan_method(arch, run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(arch, run).model
    trainable, total = model.get_nb_trainable_parameters()
    assert (plan.n_trainable, plan.n_params) == (trainable, total)


def test_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/loha--llama-3.2-3B-rank32.json: ``"num_trainable_params":
    18350080`` for r 32, alpha 64 on q_proj, v_proj. By hand: each pair is out × r plus
    r × in, two pairs per linear; q 3072 → 3072, v 3072 → 1024 (8 KV heads of 128), 28
    blocks: 28 · 2 · 32 · ((3072 + 3072) + (1024 + 3072)) = 18,350,080."""
    est = estimate("llama-3.2-3b", method="loha", loha_rank=32, loha_alpha=64)
    assert est.model.n_trainable_params == 28 * 2 * 32 * ((3072 + 3072) + (1024 + 3072))
    assert est.model.n_trainable_params == 18_350_080


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


def test_hadamard_temporaries_match_the_autograd_function() -> None:
    """HadaWeight and F.linear run alone on the CPU (ftmem's live-storage tracker, fp32,
    the input needing a gradient as in every block above the first): the forward peaks
    at three out × in beyond its inputs (LoHa.forward_build with nothing kept); the
    backward, beyond what the forward kept (ΔW among it), at four more: the five of
    HadaWeight.backward less ΔW, freed by the mm's node before it (LoHa.backward_moment
    with no input cast)."""
    torch = pytest.importorskip("torch")
    from peft.tuners.loha.layer import HadaWeight

    from ftmem.adapters.loha import LoHa
    from ftmem.measure.tracker import LiveBytesTracker

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
    with LiveBytesTracker() as tracker:
        tracker.track(factors, x, scale)
        start = tracker.current
        delta = HadaWeight.apply(*factors, scale)
        forward_peak = tracker.peak - start
        y = torch.nn.functional.linear(x, delta)
        del delta
        tracker.peak = before = tracker.current
        y.sum().backward()
        backward_peak = tracker.peak - before

    def in_bytes(lin: object) -> int:
        return 4

    assert LoHa.forward_build(plan, T, in_bytes, kept=False) == forward_peak == 3 * w
    assert LoHa.backward_moment(plan, T, in_bytes) == 4 * w
    # (beyond: the factors' small gradients and x's)
    assert 4 * w <= backward_peak < 4 * w + w // 8


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
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "llama2-7b", *args])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert out == ""
    assert err.startswith("Error: ") and expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_models_peft_cannot_wrap_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="does not wrap gpt2's transformers Conv1D"):
        estimate("gpt2", method="loha")
    with pytest.raises(InvalidInputError, match="does not model method loha"):
        estimate("flan-t5-base", method="loha")


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
