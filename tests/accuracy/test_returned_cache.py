"""GPTBigCode's checkpointed blocks before transformers 4.53 return their key/value
cache (ftmem.returned_cache): each a view of the block's c_attn output, held by the
model's output until the step drops it after the loss.

The installed transformers turns the cache off under checkpointing, so the test keeps
what transformers 4.48.1 kept by hand: during the model's forward (not the backward's
recompute) each c_attn output goes into a list the model's output owns, dropped with it
(HF Trainer's compute_loss returns the loss alone). The forward then holds one c_attn
output per block more at the loss, T·(q + 2·kv)·e each: derived here, measured, and
estimated for a transformers_version before 4.53. The SantaCoder fms row at b8 (flash,
2048 tokens, 24 blocks) read -12.1 % before this was modelled: 24 × 72 MiB = 1.69 GiB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ftmem.estimate import estimate_step
from tests.accuracy.cases import PEAK_TOLERANCE, Case
from tests.transformers4_sites import run_probe

SETTINGS = {"method": "full", "precision": "bf16", "grad_ckpt": True, "loss": "shifted"}
CASE = Case("gpt_bigcode", SETTINGS)
OLD = "4.52.4"  # the last release that returns the cache (versions.py)


def _run(**changes):
    return Case("gpt_bigcode", {**SETTINGS, **changes}).run()


def _hold_c_attn_outputs(model: torch.nn.Module) -> None:
    """transformers 4.48.1's presents: the model's output owns every c_attn output its
    forward made (its blocks' ``key_value`` views keep the whole output)."""
    held: list[torch.Tensor] = []
    in_forward = [False]

    def start(module, args, kwargs):
        in_forward[0] = True
        held.clear()

    def keep(module, args, output):
        if in_forward[0]:  # (the reentrant recompute runs in backward: not returned)
            held.append(output)

    def end(module, args, kwargs, output):
        in_forward[0] = False
        output.returned_cache = list(held)  # freed when the step drops the output
        held.clear()
        return output

    for name, module in model.named_modules():
        if name.endswith("attn.c_attn"):
            module.register_forward_hook(keep)
    model.register_forward_pre_hook(start, with_kwargs=True)
    model.register_forward_hook(end, with_kwargs=True)


def _measure(monkeypatch: pytest.MonkeyPatch, returned: bool) -> dict:
    import ftmem.measure.step as step_module
    from ftmem.measure import measure

    real_build = step_module.build_model

    def build(*args, **kwargs):
        built = real_build(*args, **kwargs)
        if returned:
            _hold_c_attn_outputs(built.model)
        return built

    monkeypatch.setattr(step_module, "build_model", build)
    return measure(CASE.arch(), CASE.run()).phase_peaks


@pytest.mark.accuracy
def test_returned_cache_holds_every_c_attn_output_at_the_loss(monkeypatch):
    arch, run = CASE.arch(), CASE.run()
    plain = _measure(monkeypatch, returned=False)
    held = _measure(monkeypatch, returned=True)
    tokens = run.batch_size * run.seq_len
    derived = arch.num_layers * tokens * (arch.q_size + 2 * arch.kv_size) * 2  # bf16
    assert held["forward"] - plain["forward"] == derived
    assert held["backward"] == plain["backward"]  # dropped before backward

    old = estimate_step(arch, _run(transformers_version=OLD))
    new = estimate_step(arch, _run(transformers_version="4.53.0"))
    assert old.memory.phases.forward - new.memory.phases.forward == derived
    assert old.memory.phases.backward == new.memory.phases.backward
    err = (old.memory.phases.forward - held["forward"]) / held["forward"]
    assert abs(err) <= PEAK_TOLERANCE, f"forward {err:+.1%}"


def test_no_cache_without_checkpointing_or_from_4_53():
    """The flash kernel saves the views anyway without checkpointing; 4.53 turns the
    cache off under checkpointing; other families never returned it this way."""
    from ftmem import returned_cache

    arch = CASE.arch()
    assert returned_cache.per_block(arch, _run(transformers_version=OLD), 2)
    for changed in (
        _run(transformers_version=OLD, grad_ckpt=False),
        _run(transformers_version="4.53.0"),
        _run(),  # the current release
    ):
        assert returned_cache.per_block(arch, changed, 2) == 0
    llama = Case("llama", SETTINGS).arch()
    assert not returned_cache.per_block(llama, _run(transformers_version=OLD), 2)


def test_measured_on_the_real_release():
    """The real transformers 4.48.1 (opt-in: its unpacked wheel named by
    FTMEM_TRANSFORMERS4_SITES, ``4.48.1=path``, as tests/test_transformers4_sdpa.py; CI has
    no network): the forward with use_cache on holds the derived bytes more than with it
    off, the estimate for 4.48.1 adds the same, and its forward is within the suite's
    peak tolerance of the measured one."""
    arch, run = CASE.arch(), _run(transformers_version="4.48.1")
    names = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size")
    shape = {name: getattr(arch, name) for name in (*names, "max_position_embeddings")}
    shape |= {"batch_size": run.batch_size, "seq_len": run.seq_len}
    probe = Path(__file__).parents[1] / "bigcode_cache_probe.py"
    got = run_probe("4.48.1", probe, json.dumps(shape), timeout=600)
    with_cache, without = got["phases"]["True"], got["phases"]["False"]
    tokens = run.batch_size * run.seq_len
    derived = arch.num_layers * tokens * (arch.q_size + 2 * arch.kv_size) * 2
    assert with_cache["forward"] - without["forward"] == derived
    forward = estimate_step(arch, run).memory.phases.forward
    err = (forward - with_cache["forward"]) / with_cache["forward"]
    assert abs(err) <= PEAK_TOLERANCE, f"forward {err:+.1%}"
