"""torchao's low-bit AdamW (ao-adamw-8bit, -4bit, -fp8) measured on the CPU.

The states are the optimizer's own tensors after a step (the quantised subclasses
flattened to their codes, scales and code books). The step compiles one function per
parameter (torchao/optim/adam.py:142), which the accuracy suite's tracker cannot follow
(torch.compile refuses a dispatch mode), so its peak is read from the profiler's record
of the CPU allocator: every allocation inductor's code makes is there.

torchao is not a dependency of ftmem: these run where it is installed (0.18.0 measured).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao.optim")

from ftmem.measure.build import build_model, build_optimizer  # noqa: E402
from ftmem.measure.step import optimizer_state_tensors  # noqa: E402
from ftmem.methods import plan_method  # noqa: E402
from ftmem.optim import optimizer_state_bytes, optimizer_step_temporary_bytes  # noqa: E402
from ftmem.run import RunConfig  # noqa: E402
from tests.conftest import tiny  # noqa: E402

OPTIMIZERS = ("ao-adamw-8bit", "ao-adamw-4bit", "ao-adamw-fp8")


def _run(optimizer: str, **changes) -> RunConfig:
    return RunConfig(optimizer=optimizer, device="cpu", batch_size=2, seq_len=16, **changes)


def _model_and_optimizer(run: RunConfig):
    arch = tiny("llama")
    model = build_model(arch, run, device="cpu", seed=0).model
    return arch, model, build_optimizer(model, run, arch)


def _backward(model) -> None:
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()


def _bytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


@pytest.mark.accuracy
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("block", [None, 256])
def test_states_are_measured_to_the_byte(optimizer, block, monkeypatch):
    """Tiny Llama (bf16): the 96×96 attention and 96×160 MLP weights are quantised (at
    least 4096 values, a whole number of blocks), the norms keep bf16 states, and the
    300×96 embedding and head are quantised by 4-bit's 128-value blocks only (28,800 is
    not a multiple of 256). The step runs eagerly here (torch.compile made the identity,
    for time): it creates the states before it calls the compiled function."""
    if block and optimizer != "ao-adamw-4bit":
        pytest.skip("256 is the 8-bit and FP8 classes' own block")
    run = _run(optimizer, optimizer_block_size=block)
    arch, model, opt = _model_and_optimizer(run)
    _backward(model)
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
    opt.step()
    got = _bytes(optimizer_state_tensors(opt))
    assert optimizer_state_bytes(plan_method(arch, run).groups, run) == got


def _profiled_peak(fn) -> int:
    """The largest sum of live CPU allocations ``fn`` made, from the profiler's memory
    records (allocations positive, frees negative, in time order)."""
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for r in sorted(records, key=lambda e: e.start_ns()):
        live += r.nbytes()
        peak = max(peak, live)
    return peak


@pytest.mark.accuracy
@pytest.mark.slow
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_compiled_step_peak_is_measured_to_the_byte(optimizer):
    """The second step (the states exist; the compiled functions are cached) holds
    what the largest quantised tensor's compiled step materialises, one parameter at a
    time: 8-bit 8n + 8n/B, 4-bit 26n + 8n/B, FP8 8n/B (ftmem.torchao_optim)."""
    run = _run(optimizer)
    arch, model, opt = _model_and_optimizer(run)
    _backward(model)
    opt.step()  # creates the states and compiles
    opt.zero_grad(set_to_none=False)
    _backward(model)
    peak = _profiled_peak(opt.step)
    assert optimizer_step_temporary_bytes(plan_method(arch, run).groups, run) == peak
