"""plan, max, compare and the pictures: checked by the estimator itself."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ftmem import estimate
from ftmem.cli import app
from ftmem.plan import LEVERS, all_levers_at_once, make_plan
from ftmem.presets import get_model
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
