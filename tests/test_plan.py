"""plan, max, compare and the pictures: checked by the estimator itself."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ftmem import estimate
from ftmem.cli import app
from ftmem.plan import LEVERS, all_levers_at_once, make_plan
from ftmem.presets import get_gpu, get_model
from ftmem.search import largest_fitting

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "140", "NO_COLOR": "1"})


def _plan(model: str, gpu: str, **settings):
    arch = get_model(model)
    return make_plan(lambda s: estimate(arch, gpu=gpu, **s), settings)


# --- plan ------------------------------------------------------------------------------


def test_plan_13b_on_4090_first_row_is_the_least_invasive_that_fits():
    plan = _plan("llama2-13b", "rtx4090", method="full", batch_size=4)
    assert plan.baseline.fits is False
    assert plan.fitting, "some way to fit 13B on 24 GB exists"
    assert all(c.estimate.fits for c in plan.fitting)
    penalties = [c.penalty for c in plan.fitting]
    assert penalties == sorted(penalties)
    # nothing cheaper than the first row fits: every combination with a lower penalty
    # was evaluated and does not fit
    from ftmem.plan import _apply, _combinations

    first = plan.fitting[0].penalty
    arch = get_model("llama2-13b")
    base = dict(method="full", batch_size=4)
    for combo in _combinations(base, LEVERS):
        if combo and sum(c.penalty for c in combo) < first:
            est = estimate(arch, gpu="rtx4090", **_apply(base, combo))
            assert not est.fits, [c.what for c in combo]


def test_plan_rows_are_distinct_ways_not_supersets():
    plan = _plan("llama2-13b", "rtx4090", method="full", batch_size=4)
    sets = [{(c.lever, c.updates) for c in cand.changes} for cand in plan.fitting]
    for i, a in enumerate(sets):
        for b in sets[i + 1 :]:
            assert not a <= b


def test_plan_that_fits_as_given_says_so_first():
    plan = _plan("llama2-7b", "h100-80gb", method="lora")
    assert plan.fitting[0].changes == ()


def test_plan_for_a_model_that_cannot_fit_says_so():
    res = run("plan", "llama2-70b", "--gpu-memory", "2GiB", "--seq-len", "4096")
    assert res.exit_code == 1
    assert "Nothing in the plan fits" in res.output
    assert "with every lever at once it still needs" in res.output


def test_when_every_lever_at_once_does_not_fit_nothing_else_is_estimated():
    """All levers at once need at most what any candidate needs (the test below), so
    when they do not fit the search stops there: the baseline and that one estimate."""
    arch = get_model("llama2-70b")
    calls = []

    def estimate_with(s):
        calls.append(s)
        return estimate(arch, gpu_memory="2GiB", **s)

    plan = make_plan(estimate_with, dict(method="full", seq_len=4096))
    assert plan.fitting == () and plan.evaluated == 2 and len(calls) == 2
    assert calls[1] == all_levers_at_once(dict(method="full", seq_len=4096))


def test_all_levers_at_once_is_at_most_every_candidate():
    arch = get_model("llama2-13b")
    settings = dict(method="full", batch_size=4, seq_len=2048)
    strongest = estimate(arch, gpu="rtx4090", **all_levers_at_once(settings)).memory.total_bytes
    plan = make_plan(lambda s: estimate(arch, gpu="rtx4090", **s), settings)
    assert all(strongest <= c.estimate.memory.total_bytes for c in plan.fitting)


def test_plan_cli_table_and_json():
    res = run("plan", "llama2-13b", "--gpu", "rtx4090", "--batch-size", "4")
    assert res.exit_code == 0, res.output
    assert "least invasive first" in res.output
    assert "What each change costs" in res.output
    res = run("plan", "llama2-13b", "--gpu", "rtx4090", "--format", "json", "--rows", "3")
    data = json.loads(res.output)
    assert 1 <= len(data["fitting"]) <= 3
    for cand in data["fitting"]:
        assert cand["total_bytes"] <= data["baseline"]["gpu"]["memory_bytes"]


def test_plan_needs_a_gpu():
    res = run("plan", "llama2-13b")
    assert res.exit_code == 2
    assert "needs a GPU" in res.output


# --- plan: preference objectives --------------------------------------------------------

# Llama-2-7B's parameters, by hand: embedding and untied head 32,000 × 4,096 each; per
# layer q, k, v, o 4 × 4,096², gate, up, down 3 × 4,096 × 11,008 and two 4,096 norms;
# the final norm: 2 × 131,072,000 + 32 × 202,383,360 + 4,096
LLAMA2_7B_PARAMS = 6_738_415_616
# DPO's frozen reference copy under full finetuning: the policy's bf16 weights again
# (TRL's DPOTrainer loads it with the model's init kwargs, trl/trainer/dpo_trainer.py
# @f2cd57710ae3 __init__)
REFERENCE_COPY = LLAMA2_7B_PARAMS * 2  # 13,476,831,232 bytes
DPO_FULL = dict(method="full", objective="dpo", batch_size=1, seq_len=512)


def _levers_offered(settings) -> set[str]:
    from ftmem.plan import _combinations

    return {c.lever for combo in _combinations(settings, LEVERS) for c in combo}


def test_dpo_that_fits_once_the_reference_is_precomputed_says_that_first():
    """The copy lives through the whole step, so precomputing frees at least the copy:
    on a GPU half a copy short, the precomputed reference fits and, changing nothing
    else (penalty 0), it is the first row."""
    arch = get_model("llama2-7b")
    given = estimate(arch, gpu_memory="80GiB", **DPO_FULL).memory
    capacity = given.total_bytes - REFERENCE_COPY // 2
    plan = make_plan(lambda s: estimate(arch, gpu_memory=capacity, **s), dict(DPO_FULL))
    assert plan.baseline.fits is False
    first = plan.fitting[0]
    assert [(c.lever, c.updates, c.penalty) for c in first.changes] == [
        ("reference", (("precompute_ref", True),), 0)
    ]
    assert "--precompute-ref" in first.changes[0].what
    assert "precompute_ref_log_probs" in first.changes[0].what
    freed = first.estimate.memory
    assert given.weights_bytes == 2 * REFERENCE_COPY  # the policy and its copy, bf16
    assert freed.weights_bytes == given.weights_bytes - REFERENCE_COPY
    # (allocated: the 80 GiB run's cache is trimmed to fit the GPU, gpu.device._within_device)
    assert freed.peak_allocated_bytes <= given.peak_allocated_bytes - REFERENCE_COPY
    assert any("reference: precomputed" in n for n in first.estimate.notes)


def test_dpo_full_on_24gb_proposes_lora_and_says_the_reference_copy_goes():
    """On 24 GB the policy alone (13.5 GB) with 8-bit Adam (2 bytes a parameter) is
    already 27 GB: no full-rank way with the copy's weights. LoRA's row names the copy
    going away, and its weights are the base's once: bf16 base plus the fp32 adapters
    (peft's autocast_adapter_dtype), r 16 on q, k, v, o (16 × 8,192 each) and gate, up,
    down (16 × 15,104 each): 32 × 1,249,280 = 39,976,960 adapter parameters."""
    arch = get_model("llama2-7b")
    plan = make_plan(lambda s: estimate(arch, gpu="rtx4090", **s), dict(DPO_FULL))
    assert plan.baseline.fits is False
    lora = [
        cand
        for cand in plan.fitting
        if any(c.lever == "method" and dict(c.updates)["method"] == "lora" for c in cand.changes)
    ]
    assert lora, [[c.what for c in cand.changes] for cand in plan.fitting]
    change = next(c for c in lora[0].changes if c.lever == "method")
    assert "no frozen reference copy" in change.what
    assert lora[0].estimate.memory.weights_bytes == REFERENCE_COPY + 39_976_960 * 4
    assert any("reference: the adapter disabled" in n for n in lora[0].estimate.notes)
    # the same lever without a reference to lose says nothing about one
    sft = [c.what for c in LEVERS[[lv.name for lv in LEVERS].index("method")].options(
        dict(method="full"))]  # fmt: skip
    assert not any("reference" in what for what in sft)


def test_dpo_plan_first_row_is_the_least_invasive_that_fits():
    """The search estimates a combination with the reference precomputed first and skips
    the one without where that does not fit: check against every cheaper combination."""
    from ftmem.plan import _apply, _combinations

    arch = get_model("llama2-7b")
    plan = make_plan(lambda s: estimate(arch, gpu="rtx4090", **s), dict(DPO_FULL))
    first = plan.fitting[0].penalty
    for combo in _combinations(dict(DPO_FULL), LEVERS):
        if combo and sum(c.penalty for c in combo) < first:
            est = estimate(arch, gpu="rtx4090", **_apply(dict(DPO_FULL), combo))
            assert not est.fits, [c.what for c in combo]


def test_precomputing_the_reference_never_adds_to_the_allocated_peak():
    """What the search relies on to skip a combination (Lever.only_lowers): with the
    reference precomputed, every combination asks for at most what it does without, with
    the same CUDA context. (Not the total, nor the allocated figure in whole blocks: the
    allocator cache and the block rounding can grow by what the caching allocator keeps
    or leaves unsplit of another sequence of blocks, which the search allows for.)"""
    from ftmem.plan import _apply, _combinations

    arch = get_model("llama2-7b")
    settings = dict(method="lora", objective="dpo", batch_size=2, seq_len=1024)
    pairs = 0
    for combo in _combinations(settings, LEVERS):
        if any(c.lever == "reference" for c in combo):
            continue
        without = _apply(settings, combo)
        a = estimate(arch, gpu="rtx4090", **without).memory
        b = estimate(arch, gpu="rtx4090", **without, precompute_ref=True).memory
        asked = [x.peak_allocated_bytes - x.at_peak.block_rounding for x in (a, b)]
        assert asked[1] <= asked[0], [c.what for c in combo]
        assert b.beyond_allocated.cuda_context == a.beyond_allocated.cuda_context
        pairs += 1
    assert pairs >= 100


@pytest.mark.parametrize(
    "settings",
    [
        dict(objective="sft"),
        dict(objective="simpo"),
        dict(objective="orpo"),
        dict(objective="dpo", precompute_ref=True),
        dict(objective="ipo", precompute_ref=True),
        # LLaMA-Factory's CustomDPOTrainer sets precompute_ref_log_probs = False;
        # torchtune's DPO recipes run the reference in every step
        dict(objective="dpo", framework="llama-factory"),
        dict(objective="dpo", framework="torchtune"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("method", ["full", "lora"])
def test_precompute_is_offered_only_where_a_reference_runs(settings, method):
    run = dict(method=method, batch_size=2, **settings)
    assert "reference" not in _levers_offered(run)
    assert "precompute_ref" not in all_levers_at_once(run) or run.get("precompute_ref")


@pytest.mark.parametrize("objective", ["dpo", "ipo"])
@pytest.mark.parametrize("framework", ["hf", "axolotl", "unsloth"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_precompute_is_offered_where_a_reference_runs(objective, framework, method):
    run = dict(method=method, objective=objective, framework=framework, batch_size=2)
    assert "reference" in _levers_offered(run)
    assert all_levers_at_once(run)["precompute_ref"] is True


def _objective_or_skip(objective: str) -> None:
    from typing import get_args

    from ftmem.run import Objective

    if objective not in get_args(Objective):
        pytest.skip(f"--objective {objective} is not modelled in this tree")


def test_kto_is_offered_the_precomputed_reference():
    """TRL's KTOTrainer has precompute_ref_log_probs too (a reference, like DPO's)."""
    _objective_or_skip("kto")
    assert "reference" in _levers_offered(dict(method="full", objective="kto", batch_size=4))


def test_grpo_is_never_offered_a_precomputed_reference():
    """GRPO's reference (beta > 0) scores completions generated during training: nothing
    to compute before it (TRL's GRPOConfig has no precompute_ref_log_probs)."""
    _objective_or_skip("grpo")
    for beta in (0.0, 0.04):
        settings = dict(method="full", objective="grpo", kl_beta=beta, batch_size=8)
        assert "reference" not in _levers_offered(settings)
        assert "precompute_ref" not in all_levers_at_once(settings)


@pytest.mark.parametrize(
    "objective", ["sft", "dpo", "ipo", "simpo", "orpo", "kto", "apo-zero-unpaired", "grpo"]
)
def test_every_lever_at_once_is_a_run_the_estimator_takes(objective):
    """The guard against searching a run that cannot fit needs every lever at once to be
    estimated, not refused: each lever's strongest option the run's settings accept (KTO
    under TRL refuses a micro-batch of one, a preference objective the fused loss)."""
    _objective_or_skip(objective)
    arch = get_model("llama2-7b")
    settings = dict(method="full", objective=objective, batch_size=8, seq_len=1024)
    calls = []

    def estimate_with(s):
        calls.append(s)
        return estimate(arch, gpu_memory="1GiB", **s)  # nothing fits: the guard decides

    plan = make_plan(estimate_with, settings)
    assert plan.fitting == ()
    strongest = calls[-1]  # the last estimate the guard made, the one that decided
    assert strongest != settings and "grad_ckpt" in strongest
    estimate(arch, gpu="rtx4090", **strongest)  # raises where refused
    if objective != "grpo":  # RunConfig's checks hold the objectives' rules: no search
        assert len(calls) == 2 and strongest == all_levers_at_once(settings)


def test_dpo_every_lever_at_once_is_a_run_the_estimator_takes():
    """Every lever at once must be a run the estimator takes (else the "nothing fits"
    guard is off and the search runs to its cap): a preference objective is modelled
    with the standard loss or TRL's tiles, so the fused loss is not offered; TRL runs it
    data parallel, so more GPUs (ZeRO-3, the reference sharded) and ZeRO-Offload are."""
    settings = dict(method="full", objective="dpo", seq_len=4096)
    offered = _levers_offered(settings)
    assert "loss" not in offered and {"gpus", "offload"} <= offered
    strongest = all_levers_at_once(settings)
    assert strongest["precompute_ref"] is True
    est = estimate(get_model("llama2-70b"), gpu_memory="8GiB", **strongest)
    assert est.parallel is not None and est.parallel.strategy == "zero3"


def test_the_reference_lever_does_not_double_the_estimates(monkeypatch):
    """A binary lever doubles the combinations, and estimating each would double a plan's
    estimates (179 → 355 here before the search paired them). The search estimates the
    combination with the reference precomputed first and skips the one without where
    even its allocated peak is short: a budget of a quarter more estimates."""
    import sys

    plan_module = sys.modules["ftmem.plan"]  # (ftmem.plan the attribute is api.plan)
    arch = get_model("llama2-13b")
    settings = dict(method="lora", objective="dpo", batch_size=4, seq_len=2048)

    def count(levers):
        calls = []

        def estimate_with(s):
            est = estimate(arch, gpu="rtx4090", **s)  # one the layout rules refuse: not counted
            calls.append(s)
            return est

        monkeypatch.setattr(plan_module, "LEVERS", levers)
        plan = make_plan(estimate_with, dict(settings))
        assert calls[1] == all_levers_at_once(settings)  # the guard's, not counted
        assert plan.evaluated == len(calls) - 1
        assert len({tuple(sorted(s.items())) for s in calls[2:]}) == len(calls) - 2  # once
        return plan

    with_lever = count(LEVERS)
    without = count(tuple(lv for lv in LEVERS if lv.name != "reference"))
    assert with_lever.searched == 2 * without.searched  # one more binary lever
    assert with_lever.evaluated <= without.evaluated * 5 // 4


def test_plan_cli_for_a_dpo_run_names_the_reference_lever():
    # (at 512 tokens the run fits, its allocator cache trimmed: gpu.device._within_device)
    res = run("plan", "llama2-7b", "--gpu", "a100-80gb", "--objective", "dpo", "--seq-len", "1024")
    assert res.exit_code == 0, res.output
    assert "precompute the reference log-probabilities" in res.output
    assert "reference: none on the result" in res.output


# --- max ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "key", "settings"),
    [
        ("batch-size", "batch_size", {"method": "qlora", "seq_len": 2048}),
        ("seq-len", "seq_len", {"method": "lora"}),
        ("lora-r", "lora_r", {"method": "lora", "lora_targets": "all-linear", "seq_len": 1024}),
    ],
)
def test_max_is_exact_n_fits_and_n_plus_1_does_not(flag, key, settings):
    args = ["max", "llama2-7b", "--gpu", "rtx4090", "--for", flag, "--format", "json"]
    for k, v in settings.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    res = run(*args)
    assert res.exit_code == 0, res.output
    n = json.loads(res.output)["largest"]
    assert n >= 1
    assert estimate("llama2-7b", gpu="rtx4090", **settings, **{key: n}).fits
    assert not estimate("llama2-7b", gpu="rtx4090", **settings, **{key: n + 1}).fits


def test_max_when_nothing_fits():
    res = run("max", "llama2-70b", "--gpu", "t4", "--for", "batch-size")
    assert res.exit_code == 1
    assert "Nothing fits" in res.output


def test_max_rank_needs_an_adapter_method():
    res = run("max", "llama2-7b", "--gpu", "rtx4090", "--for", "lora-r")
    assert res.exit_code == 2
    assert "--method lora" in res.output


def test_largest_fitting_on_a_known_step_function():
    """The search itself, on a function whose answer is known: fits while n ≤ 777."""

    class Fake:
        def __init__(self, n):
            self.fits = n <= 777
            self.notes = []

    result = largest_fitting(Fake, 1, 10**6)
    assert result.value == 777
    assert result.evaluations < 40
    assert largest_fitting(Fake, 1, 500).value == 500  # the bound fits
    assert largest_fitting(Fake, 800, 900).value is None


# --- compare -----------------------------------------------------------------------------


def test_compare_matrix_matches_single_estimates():
    res = run("compare", "llama2-13b", "--gpus", "a100-80gb,rtx4090", "--methods", "full,qlora",
              "--format", "json")  # fmt: skip
    assert res.exit_code == 0, res.output
    cells = {(c["method"], c["gpu"]): c for c in json.loads(res.output)}
    assert len(cells) == 4
    for (method, gpu), cell in cells.items():
        est = estimate("llama2-13b", method=method, gpu=gpu)
        assert cell["total_bytes"] == est.memory.total_bytes
        assert cell["fits"] == est.fits
    table = run("compare", "llama2-13b", "--gpus", "a100-80gb,rtx4090", "--methods", "full,qlora")
    assert "fits" in table.output and "rtx4090" in table.output


def test_compare_unknown_gpu_suggests():
    res = run("compare", "llama2-13b", "--gpus", "rtx4091")
    assert res.exit_code == 2
    assert "Did you mean" in res.output


# --- pictures ----------------------------------------------------------------------------


def test_plan_plot_has_bars_limit_and_labels(tmp_path):
    pytest.importorskip("matplotlib")
    from ftmem.present.plot import plan_figure, save

    plan = _plan("llama2-13b", "rtx4090", method="full", batch_size=4)
    fig = plan_figure(plan)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "memory per GPU at the peak (GiB)"
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == "as given" and len(ticks) == len(plan.fitting) + 1
    # the top of each stack is the candidate's total
    tops = {}
    for patch in ax.patches:
        x = round(patch.get_x(), 3)
        tops[x] = max(tops.get(x, 0), patch.get_y() + patch.get_height())
    totals = [plan.baseline.memory.total_bytes] + [
        c.estimate.memory.total_bytes for c in plan.fitting
    ]
    assert sorted(round(t, 3) for t in tops.values()) == sorted(round(t / 2**30, 3) for t in totals)
    limit = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert limit and limit[0].get_ydata()[0] == pytest.approx(
        plan.baseline.gpu["memory_bytes"] / 2**30
    )
    for suffix in ("png", "svg"):
        path = tmp_path / f"plan.{suffix}"
        save(fig, str(path))
        assert path.stat().st_size > 5_000


def test_max_plot_marks_the_crossing(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "sweep.svg"
    res = run("max", "llama2-7b", "--gpu", "rtx4090", "--method", "lora", "--for", "seq-len",
              "--plot", str(path))  # fmt: skip
    assert res.exit_code == 0, res.output
    text = path.read_text()
    assert "sequence length" in text and "largest that fits" in text
    from ftmem.present.plot import sweep_figure
    from ftmem.search import largest_fitting as search

    arch = get_model("llama2-7b")

    def at(n):
        return estimate(arch, gpu="rtx4090", method="lora", seq_len=n)

    result = search(at, 1, 2**21)
    fig = sweep_figure(at, "sequence length", result, 2**21)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "sequence length"
    marker = [line for line in ax.get_lines() if list(line.get_xdata()) == [result.value]]
    assert marker, "the last value that fits is marked"


def test_plot_refuses_other_formats(tmp_path):
    pytest.importorskip("matplotlib")
    res = run("plan", "llama2-13b", "--gpu", "rtx4090", "--plot", str(tmp_path / "x.jpg"))
    assert res.exit_code == 2
    assert ".png or .svg" in res.output


def test_a_search_stopped_early_still_gives_a_way_that_fits():
    """When the evaluation budget runs out before the first way that fits, the plan
    starts from every lever at once and drops each change the rest fits without: one
    row, which fits, and from which no single change can be dropped (checked here by
    estimating each smaller combination)."""
    from ftmem.errors import FtmemError
    from ftmem.plan import _apply

    arch = get_model("llama2-7b")

    def estimate_with(s):
        return estimate(arch, gpu="rtx4090", **s)

    settings = dict(method="full", seq_len=4096, batch_size=4)
    plan = make_plan(estimate_with, settings, max_evaluations=3)
    assert len(plan.fitting) == 1
    row = plan.fitting[0]
    assert row.estimate.fits
    assert plan.evaluated <= 3 + len(LEVERS) + 1
    for change in row.changes:
        fewer = tuple(c for c in row.changes if c is not change)
        try:
            smaller = estimate_with(_apply(settings, fewer))
        except (FtmemError, ValueError):
            continue  # a combination the run's settings refuse
        assert not smaller.fits, change.what


def test_no_fused_loss_lever_where_the_framework_fuses_the_loss_already():
    """Unsloth's forward takes the loss fused whatever --loss says (profiles.UNSLOTH
    fused_loss_chunk_bytes): Liger's loss would change nothing there."""
    from ftmem.plan import _loss

    assert _loss({"framework": "hf"})  # offered on HF's path
    assert _loss({"framework": "unsloth"}) == []


# --- screening: the searches skip the replay of runs that cannot fit --------------------


@pytest.mark.parametrize(
    ("model", "gpu", "settings"),
    [
        ("llama2-7b", "rtx4090", {"method": "full", "batch_size": 4, "seq_len": 2048}),
        ("llama2-13b", "a100-40gb", {"method": "lora", "batch_size": 16, "seq_len": 4096}),
        ("mistral-7b", "rtx3090", {"method": "qlora", "batch_size": 8, "gpus": 2}),
    ],
)
def test_a_screened_plan_is_the_plan_with_every_candidate_replayed(
    model, gpu, settings, monkeypatch
):
    """Screening changes what a search costs, never what it answers: the same rows, the
    same estimates for them, the same count of candidates evaluated."""
    import contextlib
    import sys

    screened = _plan(model, gpu, **settings)
    # ftmem.plan, the module (the package's attribute of that name is the function)
    monkeypatch.setattr(sys.modules["ftmem.plan"], "screening", contextlib.nullcontext)
    whole = _plan(model, gpu, **settings)
    assert [c.changes for c in screened.fitting] == [c.changes for c in whole.fitting]
    assert [c.estimate for c in screened.fitting] == [c.estimate for c in whole.fitting]
    assert screened.evaluated == whole.evaluated


def test_a_screened_estimate_that_cannot_fit_is_a_lower_bound_that_says_so():
    from ftmem.estimate import SCREENED_NOTE, screening

    settings = {"method": "full", "batch_size": 8, "seq_len": 2048}
    whole = estimate("llama2-7b", gpu="rtx4090", **settings)
    with screening():
        screened = estimate("llama2-7b", gpu="rtx4090", **settings)
        fitting = estimate("llama2-7b", gpu="h100", method="qlora")
    assert whole.fits is False and screened.fits is False
    assert SCREENED_NOTE in screened.notes and SCREENED_NOTE not in whole.notes
    m, w = screened.memory, whole.memory
    # the allocated peak is the step's either way; what the replay adds (the cache, the
    # block rounding) is left out
    assert m.peak_allocated_bytes == w.peak_allocated_bytes - w.at_peak.block_rounding
    assert m.at_peak.block_rounding == 0 < w.at_peak.block_rounding
    assert m.beyond_allocated.allocator_cache == 0 < w.beyond_allocated.allocator_cache
    assert m.total_bytes == (
        w.total_bytes - w.beyond_allocated.allocator_cache - w.at_peak.block_rounding
    )
    assert m.beyond_allocated.cuda_context == w.beyond_allocated.cuda_context
    # already beyond the card before the cache: no cache could make it fit
    card = get_gpu("rtx4090").memory_bytes
    assert m.peak_allocated_bytes + m.beyond_allocated.cuda_context > card
    # a run that fits is replayed whole, screening or not
    assert fitting == estimate("llama2-7b", gpu="h100", method="qlora")


def test_the_searches_show_whole_estimates_beyond_their_edge():
    from ftmem.api import largest
    from ftmem.estimate import SCREENED_NOTE

    found = largest("llama2-7b", "batch_size", gpu="rtx4090", method="lora", seq_len=512)
    assert found.fails_at is not None and SCREENED_NOTE not in found.fails_at.notes
    assert found.fails_at == estimate(
        "llama2-7b", gpu="rtx4090", method="lora", seq_len=512, batch_size=found.value + 1
    )
    nothing = largest("llama2-70b", "batch_size", gpu="rtx4090", method="full")
    assert nothing.value is None and SCREENED_NOTE not in nothing.fails_at.notes
    result = run(
        "estimate",
        "llama2-70b",
        "--method",
        "full",
        "--gpu",
        "rtx4090",
        "--fewest-gpus",
        "--gpus",
        "2",
        "--strategy",
        "ddp",
    )
    assert "Does not fit" in result.output and "not replayed" not in result.output


def test_a_run_whose_states_alone_overflow_is_offered_their_paged_twin_first():
    """torchtune's 8B full single-device recipe with a non-paged AdamW8bit on 24 GB: the
    paged twin (the same states, bitsandbytes' PagedAdamW8bit) leaves the hard
    requirement within the card and pages the rest to host RAM (ftmem.gpu.managed)."""
    settings = dict(method="full", optimizer="adamw-8bit", optimizer_in_backward=True,
                    grad_ckpt=True, batch_size=1, seq_len=2048)  # fmt: skip
    plan = _plan("llama-3.1-8b", "rtx4090", **settings)
    assert plan.baseline.fits is False
    first = plan.fitting[0]
    assert [(c.lever, dict(c.updates)) for c in first.changes] == [
        ("paging", {"optimizer": "paged-adamw-8bit"})
    ]
    m, b = first.estimate.memory, first.estimate.memory.beyond_allocated
    assert m.optimizer_states_bytes == plan.baseline.memory.optimizer_states_bytes
    assert b.paged_to_host > 0 and m.device_bytes <= get_gpu("rtx4090").memory_bytes


@pytest.mark.parametrize(
    ("settings", "twin"),
    [
        (dict(optimizer="adamw", precision="bf16-mixed", optimizer_impl="fused"), "paged-adamw"),
        (dict(optimizer="adamw-fp32"), "paged-adamw"),
        (dict(optimizer="adamw", precision="bf16"), None),  # bf16 states: no twin
        (dict(optimizer="adamw-8bit", method="lora"), None),  # adapters below 1e5 values
        (dict(optimizer="lion-32bit"), "paged-lion"),  # bitsandbytes' Lion: PagedLion's states
        (dict(optimizer="lion-8bit"), "paged-lion-8bit"),
        (dict(optimizer="lion"), None),  # lion-pytorch's: the parameters' dtype
    ],
)
def test_the_paging_lever_offers_only_a_twin_with_the_same_states(settings, twin):
    from ftmem.plan import _paging

    offered = [dict(c.updates)["optimizer"] for c in _paging(settings)]
    assert offered == ([twin] if twin else [])
