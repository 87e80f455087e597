"""torchtune's chunked cross-entropy backward, eager and compiled, measured on the CPU.

torchtune compiles ``CEWithChunkedOutputLoss.compute_cross_entropy`` alone
(torchtune/training/_compile.py@1814feb17a90 compile_loss): ``F.cross_entropy(logits.float(),
labels, ignore_index=-100, reduction="sum")`` called once per chunk of bf16 logits. The
function below is that method's body. What its backward allocates beyond what it started
with is read from PyTorch's memory profiler timeline (every allocation and free of the
backward, in order), and compared with ``Loss.chunked_backward``:

- eager: nll_loss's fp32 gradient, then log_softmax's fp32 gradient while the first is
  alive (2·c·V·4), the bf16 cast after the first is freed;
- compiled: inductor's joint-graph pass turns nll_loss_backward's scatter into a zero
  tensor into a pointwise ``where``, so one fused kernel writes the bf16 gradient (c·V·2)
  and nothing else.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import Action

from ftmem.ops.loss import CHUNKS, Loss
from ftmem.run import RunConfig

ROWS, VOCAB = 128, 2048  # one chunk: c rows of a V-wide vocabulary
SCALARS = 4096  # the loss's scalar gradient and the like


def compute_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")


def backward_peak(fn) -> int:
    """Peak bytes allocated during ``loss.backward()`` beyond what was live before it
    (the second call: the first compiles)."""
    torch.manual_seed(0)
    labels = torch.randint(0, VOCAB, (ROWS,))
    peak = 0
    for _ in range(2):
        logits = torch.randn(ROWS, VOCAB, dtype=torch.bfloat16, requires_grad=True)
        loss = fn(logits, labels)
        with profile(
            activities=[ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=True,
            with_stack=True,
        ) as prof:
            loss.backward()
        live = peak = 0
        for _, action, _, size in prof._memory_profile().timeline:
            if action == Action.CREATE:
                live += size
            elif action == Action.DESTROY:
                live -= size
            peak = max(peak, live)
    return peak


def run(compile: bool) -> RunConfig:
    return RunConfig(
        method="full", framework="torchtune", loss="chunked", compile=compile, seq_len=64
    )


def test_eager_chunk_backward_holds_two_fp32_gradients():
    measured = backward_peak(compute_cross_entropy)
    derived = 2 * ROWS * VOCAB * 4
    assert derived <= measured <= derived + SCALARS
    assert Loss.chunked_backward(run(False), VOCAB, 2, CHUNKS * ROWS) == derived


@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor's CPU backend needs g++")
def test_compiled_chunk_backward_holds_only_the_bf16_gradient():
    torch._dynamo.reset()
    measured = backward_peak(torch.compile(compute_cross_entropy))
    derived = ROWS * VOCAB * 2
    assert derived <= measured <= derived + SCALARS
    assert Loss.chunked_backward(run(True), VOCAB, 2, CHUNKS * ROWS) == derived
