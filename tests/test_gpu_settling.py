"""The allocator replay of a fixed-length run reaches the caching allocator's steady
state (gpu.trace.replay_run(settle=True)): its step is repeated until one leaves the
pools as the step before did, after which every later step repeats it block for block.

Checked on published runs (calibration/), each step captured as the estimate replays
it: the settled figure is that of a replay SETTLING_STEPS long, and it is reached
early."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

import ftmem
from ftmem.gpu.best_fit import BestFit
from ftmem.gpu.device import kept_per_thread
from ftmem.gpu.trace import SETTLING_STEPS, replay_run

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT / "calibration"
estimate_module = importlib.import_module("ftmem.estimate")


def _entry(run_id: str) -> dict[str, Any]:
    for path in sorted((CALIBRATION / "settings").glob("*.yaml")):
        for entry in yaml.safe_load(path.read_text(encoding="utf-8")) or []:
            if entry["id"] == run_id:
                return entry
    raise KeyError(run_id)


def _replay_of(run_id: str, monkeypatch: pytest.MonkeyPatch) -> tuple[tuple[Any, ...], dict]:
    """The run's step and the replay's arguments, as the estimate hands them over."""
    captured: dict[str, Any] = {}
    real = estimate_module.device_figures

    def spy(allocated, sizes, tensors, rt, **kw):
        captured.update(sizes=sizes, tensors=tensors, rt=rt, kw=kw)
        return real(allocated, sizes, tensors, rt, **kw)

    monkeypatch.setattr(estimate_module, "device_figures", spy)
    entry = _entry(run_id)
    config = CALIBRATION / "configs" / entry["model"] / "config.json"
    ftmem.estimate(str(config), gpu=entry.get("gpu"), **entry["settings"])
    kw = captured["kw"]
    assert not kw.get("steps")  # a fixed-length run
    args = (kept_per_thread(captured["rt"]), kw.get("comm_stream", False), kw["outside"])
    return ((captured["sizes"], captured["tensors"]), *args), {
        "grad_stream": kw.get("grad_stream", False)
    }


def _replayed(step_and_args: tuple[Any, ...], options: dict, steps: int, settle=False):
    step, kept, comm_stream, outside = step_and_args
    return replay_run((step,) * steps, kept, comm_stream, outside, settle=settle, **options)


@pytest.mark.parametrize(
    "run_id",
    [
        "qwen1-7b-loraemb-seq8192",  # one stream, 4.64 GiB logit-sized requests
        "aai-llama2-7b-lora-fsdp2-bs1-ctx2048",  # FSDP2's streams
        "litgpt-hub-tinyllama-full",  # its allocated peak moves after step 2
    ],
)
def test_the_settled_replay_is_a_long_run_s(run_id, monkeypatch):
    step, options = _replay_of(run_id, monkeypatch)
    settled = _replayed(step, options, 1, settle=True)
    long = _replayed(step, options, SETTLING_STEPS)
    assert settled.peak_reserved == long.peak_reserved
    assert settled.peak_allocated == long.peak_allocated


def test_qwen1_7b_lora_emb_8192_does_not_grow_with_the_steps_replayed(monkeypatch):
    """Qwen-1 7B LoRA (emb), 8192 tokens: the replay's reserved figure is the same for
    every number of steps from the second on (each step being eight micro-batches'
    likeness, the figure does not depend on how many are laid out). With the optimizer
    states split by element count (4.6 % too large for the bf16 copies of wte and
    lm_head, 1.28 GiB instead of V·h·2 = 1.16 GiB) they did not pair up in the head's
    R·V·2 segments and took the cached R·V·4 blocks, and the next step cudaMalloced
    two more 4.64 GiB segments."""
    step, options = _replay_of("qwen1-7b-loraemb-seq8192", monkeypatch)
    figures = {_replayed(step, options, n).peak_reserved for n in (2, 3, 5)}
    assert len(figures) == 1
    V, h = 151_936, 4096
    states = step[0][1].states
    assert sorted(states)[-4:] == [V * h * 2] * 4  # m and v of the two bf16 copies


def test_layouts_tell_apart_what_decides_later_requests():
    """Two allocators with the same live bytes but different free blocks differ in
    layout; the same requests give the same layout."""
    a, b = BestFit(), BestFit()
    for target in (a, b):
        target.free(target.malloc(30 * 2**20))
    assert a.layout() == b.layout()
    a.malloc(12 * 2**20)
    b.malloc(12 * 2**20 + 4096)
    assert a.layout() != b.layout()
