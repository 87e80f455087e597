"""peft's AdaMSS: what trains (per adapted linear and subspace, A_i and B_i), its buffer,
what each adapted linear keeps, makes in forward and its own backward, how it is read
and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models; the buffer against the model peft builds; what one adapted linear keeps, its
forward and its backward against one peft AdaMSS Linear run alone (here), the whole step
in tests/accuracy (cases ``method=adamss``). peft's AdaMSS clusters with scikit-learn's
KMeans: the tests that build it skip without scikit-learn.
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
    {"method": "adamss"},
    {"method": "adamss", "adamss_targets": "all-linear", "adamss_rank": 24},
]
RANK_2 = {"method": "adamss", "adamss_subspaces": 4, "adamss_subspace_rank": 2, "adamss_rank": 40}


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    """Qwen2's q, k and v carry a bias: peft's projection takes it as one more column."""
    pytest.importorskip("sklearn")
    assert_counts_match_peft(family, settings)


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_subspace_rank_above_1_counts_match_peft_where_every_cluster_holds_it(family: str) -> None:
    """Four subspaces of rank 2: each cluster KMeans makes on these tiny linears (96 rows
    and more) holds at least 2 rows, so every subspace has rank 2, as ftmem counts."""
    pytest.importorskip("sklearn")
    assert_counts_match_peft(family, RANK_2)


def test_subspace_rank_above_1_is_an_upper_bound() -> None:
    """Qwen2's v_proj has 48 rows: one of its four clusters holds a single row, where peft
    gives that subspace rank 1 (A 1 × 40, B 1 × 1: 41 values fewer in each of 2 blocks;
    measured). ftmem cannot know the clusters before KMeans runs: it counts rank 2 and
    says so in a note."""
    pytest.importorskip("peft")
    pytest.importorskip("sklearn")
    from ftmem.measure.build import build_model

    arch = tiny("qwen2")
    run = RunConfig(precision="bf16", device="cpu", **RANK_2)
    plan = plan_method(arch, run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(arch, run).model
    trainable, _ = model.get_nb_trainable_parameters()
    assert plan.n_trainable >= trainable
    assert any("upper bound" in note for note in plan.notes)


def test_llama_3_2_3b_by_hand() -> None:
    """q_proj (3072 → 3072) and v_proj (3072 → 1024) in each of 28 blocks: R = 100, five
    subspaces of rank 1: A 5 × 100 per linear, B one value per output row:
    28 · (500 + 3072 + 500 + 1024) = 142,688 (peft 0.21.2 tuners/adamss/layer.py
    update_layer)."""
    assert estimate("llama-3.2-3b", method="adamss").model.n_trainable_params == 142_688


def test_buffer_is_the_one_peft_registers() -> None:
    """adamss_newB (R × in, + 1 with a bias), fp32 on a bf16 base (peft's autocast), as
    the model peft builds holds it (Qwen2: q, k, v with a bias)."""
    pytest.importorskip("peft")
    pytest.importorskip("sklearn")
    from ftmem.measure.build import build_model
    from ftmem.release_buffers import adapter_buffer_bytes

    arch = tiny("qwen2")
    run = RunConfig(
        precision="bf16", device="cpu", method="adamss", adamss_targets="q,k,v,o", adamss_rank=20
    )
    plan = plan_method(arch, run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(arch, run).model
    got = sum(b.nbytes for n, b in model.named_buffers() if ".adamss_" in n)
    assert adapter_buffer_bytes(plan, run, arch.num_layers) == got


def _one_linear(torch, base, shape: tuple[int, int], bias: bool, T: int, settings: dict) -> tuple:
    """One peft AdaMSS Linear on the CPU, its input needing a gradient: what it keeps after
    its forward beside its output, its forward's largest moment beyond that and the
    output, and its backward's largest beyond what it kept and the output gradient, less
    the factors' gradients (and that gradient bytes)."""
    from peft import AdamssConfig, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(*shape, bias=bias))
    cfg = AdamssConfig(target_modules=["up"], **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model.to(base), cfg, autocast_adapter_dtype=True)
    x = torch.randn(T, shape[0], dtype=base, requires_grad=True) * 1  # (not a leaf)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.peak = tracker.current
        y = model(x)
        kept = tracker.current - start - y.nbytes
        forward = tracker.peak - start - y.nbytes - kept
        g = torch.ones_like(y)  # (held by the caller)
        tracker.peak = before = tracker.current
        y.backward(g)
        grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
        return kept, forward, tracker.peak - before - grads, grads


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize(
    ("shape", "settings"),
    [
        ((96, 160), {}),
        ((160, 96), {"r": 40, "num_subspaces": 4, "subspace_rank": 3}),
        ((64, 64), {"r": 16, "num_subspaces": 1}),
    ],
    ids=["defaults", "r40-k4-rank3", "k1"],
)
def test_one_peft_linear(precision: str, bias: bool, shape: tuple, settings: dict) -> None:
    """AdaMSS.saved, linear_forward and backward_own against one peft AdaMSS Linear: what
    it keeps and its forward exact (h, the subspace outputs, the int64 index; on a bf16
    base the bf16 casts of B_i, A_i and newB; with a bias the input with its ones
    column); its backward within the factors' gradients."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from ftmem.adapters.adamss import AdaMSS
    from ftmem.arch import Linear
    from ftmem.ops.context import LayerContext
    from ftmem.ops.saved import Side

    names = {"r": "adamss_rank", "num_subspaces": "adamss_subspaces"}
    names["subspace_rank"] = "adamss_subspace_rank"
    run = RunConfig(
        precision=precision,
        device="cpu",
        method="adamss",
        adamss_targets="up",
        **{names[k]: v for k, v in settings.items()},
    )
    arch = tiny("llama", hidden_size=shape[0], intermediate_size=shape[1])
    plan = plan_method(arch, run)
    (up,) = plan.banked
    lin = Linear(up.module, up.roles, shape[0], shape[1], bias)
    T, e = 600, 4 if precision == "fp32" else 2
    base = torch.float32 if precision == "fp32" else torch.bfloat16
    kept, forward, backward, grads = _one_linear(torch, base, shape, bias, T, settings)
    items, keeps_input = AdaMSS.saved(LayerContext(arch, run, plan, T), lin, Side.MLP, True, e)
    assert not keeps_input
    assert kept == sum(item.nbytes for item in items)
    assert forward == AdaMSS.linear_forward(plan, run, lin, T)
    assert abs(backward - AdaMSS.backward_own(plan, run, lin, T, e)) <= grads


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "adamss", "--adamss-rank", "0"], "--adamss-rank: Input should be greater"),
        (["--method", "lora", "--adamss-subspaces", "4"], "--adamss-subspaces only applies to"),
        (["--method", "adamss", "--adamss-targets", " , "], "--adamss-targets is empty"),
        (["--method", "adamss", "--adamss-targets", "zz"], "AdaMSS target 'zz' matches no"),
        (["--method", "adamss", "--adamss-subspace-rank", "101"], "do not fit"),
        (["--method", "adamss", "--adapter-dtype", "bf16"], "--adapter-dtype only applies"),
        (["--method", "adamss", "--precision", "bf16-mixed"], "AdaMSS under autocast"),
        (["--method", "adamss", "--framework", "torchtune"], "has no --method adamss"),
        (["--method", "adamss", "--strategy", "zero2"], "AdaMSS with 16-bit adapters"),
        (["--method", "lora", "--adamss-asa"], "--adamss-asa only applies to adamss"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_resolved_run_reports_the_adamss_settings() -> None:
    run = estimate("llama-3.2-3b", method="adamss").run
    assert (run.adamss_rank, run.adamss_subspaces, run.adamss_subspace_rank) == (100, 5, 1)
    assert (run.adamss_targets, run.adapter_dtype) == ("q,v", "fp32")
    assert run.adapted_modules == ["self_attn.q_proj", "self_attn.v_proj"]


def test_live_peft_adamss_model_is_read() -> None:
    """A peft AdaMSS model handed to the live integration reads as --method adamss with
    its r, subspaces, subspace rank, ASA and the modules peft wrapped; dynamic ranks are
    refused."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    pytest.importorskip("sklearn")
    from ftmem.errors import InvalidInputError
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.AdamssConfig(
        r=12, num_subspaces=3, subspace_rank=2, target_modules=["q_proj", "o_proj"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["adamss_rank"], s["adamss_subspaces"]) == ("adamss", 12, 3)
    assert (s["adamss_subspace_rank"], s["adamss_targets"]) == (2, "o_proj,q_proj")
    config = peft.AdamssConfig(r=12, target_modules=["q_proj"], use_asa=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    assert read_run(model, args, given={"seq_len": 16}).settings["adamss_asa"] is True
    config = peft.AdamssConfig(r=12, target_modules=["q_proj"], use_dynamic_rank=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    with pytest.raises(InvalidInputError, match="use_dynamic_rank is not modelled"):
        read_run(model, args, given={"seq_len": 16})


def test_asa_keeps_two_importance_tensors_per_factor() -> None:
    """ASA's exp_avg_ipt and exp_avg_unc, zeros_like every adamss_A and adamss_B (fp32 on
    a bf16 base), are optimizer-step state beside AdamW's two moments: four factor-sized
    tensors in all (peft 0.21.2 tuners/adamss/layer.py update_importance; measured in the
    accuracy cases method=adamss with adamss_asa)."""
    plain = estimate("llama-3.2-3b", method="adamss")
    asa = estimate("llama-3.2-3b", method="adamss", adamss_asa=True)
    trained = plain.model.n_trainable_params * 4  # (fp32)
    got = asa.memory.optimizer_states_bytes - plain.memory.optimizer_states_bytes
    assert got == 2 * trained
