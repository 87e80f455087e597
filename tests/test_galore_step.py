"""GaLore's optimizer step, one projected weight: measured on the CPU against
ftmem.optim.galore_step_moments.

galore_torch is not installed here, so the step is transcribed from its source
(jiaweizzhao/GaLore@2cc66f88, the same in v1.0): ``GaLoreProjector.project`` /
``project_back`` / ``get_orthogonal_matrix`` (galore_torch/galore_projector.py, "std"
projection) and ``AdamW8bit.step`` (galore_torch/adamw8bit.py). bitsandbytes' blockwise
8-bit update runs in place in its kernel and makes no tensor; an in-place ``add_``
stands in for it. The live tensor bytes are counted by ftmem's dispatch-mode tracker
(op outputs); the SVD's scratch inside the kernel by the profiler's allocator events.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from ftmem.measure.tracker import LiveBytesTracker
from ftmem.methods import TensorGroup
from ftmem.optim import (
    galore_step_moments,
    optimizer_step_temporary_bytes,
    optimizer_step_temporary_tensors,
)
from ftmem.run import RunConfig
from ftmem.transients import step_in_backward, step_in_backward_tensors

RANK, SCALE = 4, 0.25


def _orthogonal(grad: torch.Tensor, side: str) -> torch.Tensor:
    matrix = grad.data.float()  # a 16-bit gradient: an fp32 copy
    U, _s, Vh = torch.linalg.svd(matrix, full_matrices=False)  # S stays bound, as there
    factor = Vh[:RANK, :] if side == "right" else U[:, :RANK]
    return factor.to(grad.device).type(grad.dtype)


def _project(grad: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
    tall = grad.shape[0] >= grad.shape[1]
    if state.get("ortho") is None or state["step"] % 200 == 0:
        state["ortho"] = _orthogonal(grad, "right" if tall else "left")
    ortho = state["ortho"]
    return torch.matmul(grad, ortho.t()) if tall else torch.matmul(ortho.t(), grad)


def _project_back(low: torch.Tensor, ortho: torch.Tensor) -> torch.Tensor:
    if low.shape[0] >= low.shape[1]:
        full = torch.matmul(low, ortho)
    else:
        full = torch.matmul(ortho, low)
    return full * SCALE


def _adamw8bit_step(p: torch.nn.Parameter, state: dict[str, Any]) -> None:
    """AdamW8bit.step for one GaLore parameter, then the per-layer hook's zero_grad."""
    assert p.grad is not None
    grad = _project(p.grad, state)
    p.saved_data = p.data.clone()  # type: ignore[attr-defined]
    p.data = grad.clone().to(p.data.dtype).to(p.data.device)
    p.data.zero_()
    p.grad = grad
    p.data.add_(p.grad, alpha=-1e-3)  # bitsandbytes' in-place 8-bit update
    p.data = p.saved_data.add_(_project_back(p.data, state["ortho"]))  # type: ignore[attr-defined]
    state["step"] += 1
    p.grad = None


def _measured_step(p: torch.nn.Parameter, state: dict[str, Any]) -> int:
    """Peak live bytes of one step above what was live before it (weight, full
    gradient and, once made, the projector)."""
    tracker = LiveBytesTracker()
    with tracker:
        tracker.track(p, p.grad, state.get("ortho"))
        before = tracker.current
        tracker.reset_peak()
        _adamw8bit_step(p, state)
        return tracker.peak - before


@pytest.mark.parametrize("shape", [(48, 16), (16, 48)], ids=["tall", "wide"])
def test_8bit_step_moments_measured(shape: tuple[int, int]) -> None:
    """Step 0 renews the projector (the SVD's moment); step 1 does not (the update's:
    the projected gradient and its clone, the weight's clone, project_back's two
    full-size tensors, the full gradient freed). The projector made in step 0 is an
    optimizer state ftmem counts from the start, so it comes on top of the moment."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(shape, dtype=torch.bfloat16))
    state: dict[str, Any] = {"step": 0}
    group = TensorGroup("w", shape, 1, "bf16", True, galore_rank=RANK)
    update, svd = galore_step_moments(
        group, RunConfig(method="galore", optimizer="adamw-8bit", device="cpu")
    )
    out_f, in_f = shape
    k = min(shape)
    projector = 2 * RANK * k  # bf16, r × min side

    p.grad = torch.randn(shape, dtype=torch.bfloat16)
    assert _measured_step(p, state) == svd + projector
    # by hand: fp32 copy, U, S, Vh
    assert svd == 4 * out_f * in_f + 4 * (out_f * k + k + k * in_f)

    p.grad = torch.randn(shape, dtype=torch.bfloat16)
    assert _measured_step(p, state) == update
    low = RANK * max(shape)
    assert update == 2 * (2 * low) + 2 * out_f * in_f  # two projected, one full, bf16


def test_svd_solver_copy_of_its_input() -> None:
    """torch.linalg.svd copies its input to column-major order before the solver runs
    and keeps the copy beside U, S and Vh (the CPU's LAPACK path here; CUDA's
    svd_cusolver passes cloneBatchedColumnMajor(A) to gesvdj through the caching
    allocator). The dispatch-mode tracker does not see it; the profiler's allocator
    events do. ftmem counts the copy on CUDA only (the CPU figure is the tracker's)."""
    m, n = 96, 40
    k = min(m, n)
    A = torch.randn(m, n)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.linalg.svd(A, full_matrices=False)
    events: list[tuple[int, int]] = []

    def walk(node: Any) -> None:
        if type(node.extra_fields).__name__.endswith("Allocation"):
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    sizes_live: list[list[int]] = []
    alive: list[int] = []
    for _, size in sorted(events):
        if size > 0:
            alive.append(size)
        else:
            alive.remove(-size)
        sizes_live.append(sorted(alive))
    outputs = [4 * m * k, 4 * k, 4 * k * n]  # U, S, Vh
    copy = 4 * m * n
    assert any(all(s in live_now for s in (*outputs, copy)) for live_now in sizes_live)

    group = TensorGroup("w", (m, n), 1, "fp32", True, galore_rank=RANK)
    cpu = galore_step_moments(group, RunConfig(method="galore", device="cpu"))[1]
    cuda = galore_step_moments(group, RunConfig(method="galore", device="cuda"))[1]
    assert cuda - cpu == copy
    assert cpu == sum(outputs)  # an fp32 gradient is decomposed as it is


def test_layerwise_7b_step_by_hand() -> None:
    """Llama-2-7B's largest projected weight (11008 × 4096, bf16, rank 1024) stepped in
    backward on CUDA: its gradient beside the SVD's fp32 copy, the solver's copy, U
    (11008 × 4096), S and Vh (4096 × 4096); the update's moment is smaller."""
    out_f, in_f, r = 11008, 4096, 1024
    group = TensorGroup("mlp.up_proj.weight", (out_f, in_f), 32, "bf16", True, galore_rank=r)
    run = RunConfig(method="galore", optimizer="adamw-8bit", galore_rank=r)
    update, svd = galore_step_moments(group, run)
    assert svd == 4 * out_f * in_f * 2 + 4 * (out_f * in_f + in_f + in_f * in_f)
    assert update == 2 * 2 * r * out_f + 2 * out_f * in_f < svd
    assert optimizer_step_temporary_bytes([group.counted(1)], run) == svd
    # the allocator replay gets the moment as the requests the step makes, in order
    run = RunConfig(method="galore", optimizer="adamw-8bit", optimizer_in_backward=True)
    attention = TensorGroup(
        "self_attn.q_proj.weight", (in_f, in_f), 32, "bf16", True, galore_rank=r
    )
    groups = [attention, group]
    tensors = step_in_backward_tensors(groups, run)
    grad, fp32, U, Vh, S = (
        2 * out_f * in_f,
        4 * out_f * in_f,
        4 * out_f * in_f,
        4 * in_f**2,
        4 * in_f,
    )
    assert tensors == (grad, fp32, U, Vh, S, 4 * out_f * in_f)
    assert sum(tensors) == step_in_backward(groups, run)


def test_step_after_backward_requests_the_svd_tensors() -> None:
    """GaLoreAdamW after backward, Llama-2-7B's shapes: at the largest weight's SVD the
    loop still holds the embedding's Adam update and denominator (the largest plain
    tensor stepped before it); the replay gets those and the SVD's requests one by one,
    adding up to the step's temporaries."""
    V, H, F, r = 32000, 4096, 11008, 128
    up = TensorGroup("mlp.up_proj.weight", (F, H), 32, "bf16", True, galore_rank=r)
    embedding = TensorGroup("embed_tokens.weight", (V, H), 1, "bf16", True, in_block=False)
    run = RunConfig(method="galore")
    tensors = optimizer_step_temporary_tensors([embedding, up], run)
    k = H
    assert tensors == (2 * V * H, 2 * V * H, 4 * F * H, 4 * F * k, 4 * k * H, 4 * k, 4 * F * H)
    assert sum(tensors) == optimizer_step_temporary_bytes([embedding, up], run)
