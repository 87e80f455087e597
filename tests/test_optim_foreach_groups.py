"""Optimizer states and step temporaries per tensor where the trainable tensors differ in
dtype (peft's modules_to_save copies in bf16 beside fp32 adapters), measured against
torch's AdamW on the CPU: what the allocator replay requests (gpu.trace.plan_tensors)
and the step's peak (optim.optimizer_step_temporary_bytes)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from ftmem.dtypes import StorageFormat
from ftmem.estimate import _tensors
from ftmem.measure.tracker import LiveBytesTracker
from ftmem.methods import TensorGroup
from ftmem.optim import (
    optimizer_step_temporary_bytes,
    optimizer_step_temporary_tensors,
    state_bytes_per_tensor,
)
from ftmem.run import RunConfig
from ftmem.step import step_parts

from .conftest import tiny

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _parameters(groups: list[TensorGroup]) -> list[torch.nn.Parameter]:
    """One zero parameter per trainable tensor, in the groups' order, with a gradient."""
    params = [
        torch.nn.Parameter(torch.zeros(g.shape, dtype=TORCH_DTYPES[g.fmt]))
        for g in groups
        if g.trainable
        for _ in range(g.count)
    ]
    for p in params:
        p.grad = torch.ones_like(p)
    return params


def _measured_step_temporaries(groups: list[TensorGroup]) -> int:
    """The foreach AdamW step's peak above what it holds before (parameters, gradients,
    states), the states made by a first step."""
    params = _parameters(groups)
    opt = torch.optim.AdamW(params, foreach=True)
    opt.step()
    tracker = LiveBytesTracker()
    with tracker:
        states = [s for st in opt.state.values() for s in st.values()]
        tracker.track(params, [p.grad for p in params], states)
        before = tracker.current
        opt.step()
    return tracker.peak - before


def _group(name: str, shape: tuple[int, ...], fmt: StorageFormat, count: int = 1) -> TensorGroup:
    return TensorGroup(name, shape, count, fmt, trainable=True)


@pytest.mark.parametrize(
    "groups",
    [
        # bf16 embedding copies and fp32 adapters: S1 + S2, not max(S1, S2)
        [_group("emb", (300, 64), "bf16", 2), _group("lora", (8, 64), "fp32", 6)],
        # three dtype groups: the adjacent pairs in first-appearance order (bf16 + fp32,
        # fp32 + fp16), never the two large ones together
        [
            _group("a", (1000, 100), "bf16"),
            _group("b", (100, 100), "fp32"),
            _group("c", (1000, 100), "fp16"),
        ],
        # one dtype: the group's square roots alone
        [_group("w", (256, 64), "fp32", 3)],
    ],
)
def test_foreach_adamw_step_peak_is_the_largest_adjacent_pair_of_dtype_groups(groups):
    run = RunConfig(device="cpu", optimizer_impl="foreach")
    measured = _measured_step_temporaries(groups)
    assert optimizer_step_temporary_bytes(groups, run) == measured
    assert sum(optimizer_step_temporary_tensors(groups, run)) == measured


def test_torch_2_0_foreach_adamw_temporaries_one_per_tensor():
    """torch v2.0.0 _multi_tensor_adamw (pytorch/pytorch@c263bd43 torch/optim/adamw.py):
    the bf16 group's square roots and denominators (S1 each, the larger group), then the
    fp32 group's square roots beside them: 2·S1 + S2, each tensor a state's size."""
    emb, lora = _group("emb", (300, 64), "bf16", 2), _group("lora", (8, 64), "fp32", 6)
    run = RunConfig(device="cpu", optimizer_impl="foreach", torch_version="2.0.1")
    sqrt_bf16 = [300 * 64 * 2] * 2
    sqrt_fp32 = [8 * 64 * 4] * 6
    expected = (*sqrt_bf16, *sqrt_bf16, *sqrt_fp32)
    assert optimizer_step_temporary_tensors([emb, lora], run) == expected
    assert optimizer_step_temporary_bytes([emb, lora], run) == sum(expected)


def test_other_optimizers_name_no_temporaries_per_tensor():
    groups = [_group("w", (64, 64), "fp32")]
    for run in (
        RunConfig(optimizer_impl="fused"),
        RunConfig(device="cpu", optimizer_impl="for-loop"),
        RunConfig(optimizer="adamw-8bit"),
    ):
        assert optimizer_step_temporary_tensors(groups, run) == ()


def test_replayed_states_have_each_parameter_s_dtype():
    """Adam's moments are ``torch.zeros_like(p)``: the bf16 embedding and head copies'
    are half the size of fp32 ones of the same shape. The replay requests each state as
    torch makes it (the states' sum split by each tensor's state bytes, not by its
    element count), measured here by making the states on the CPU."""
    arch = tiny("llama")
    run = RunConfig(
        method="lora",
        precision="bf16",
        adapter_dtype="fp32",
        lora_modules_to_save="embed,head",
        optimizer_impl="foreach",
    )
    parts = step_parts(arch, run)
    trainable = [g for g in parts.plan.groups if g.trainable]
    assert {g.fmt for g in trainable} == {"bf16", "fp32"}
    params = _parameters(trainable)
    opt = torch.optim.AdamW(params, foreach=True)
    opt.step()
    measured = Counter(
        s.untyped_storage().nbytes()
        for st in opt.state.values()
        for key, s in st.items()
        if key != "step"  # a CPU scalar on a CUDA run (not capturable, not fused)
    )
    replayed = _tensors(parts, parts.sizes, run=run).states
    assert Counter(replayed) == measured
    assert len(state_bytes_per_tensor(parts.plan.groups, run)) == len(params)
