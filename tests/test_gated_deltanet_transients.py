"""The Gated DeltaNet layer's forward transient and backward workspace (ops.gated_deltanet
GatedDeltaNet.forward_transient, .backward_workspace), measured on the real transformers
5.25 module on the CPU: Qwen3_5GatedDeltaNet and Qwen3NextGatedDeltaNet with their torch
fallbacks (causal_conv1d_fn, torch_chunk_gated_delta_rule, Qwen3_5RMSNormGated).

The truth is ftmem's live-storage tracker (ftmem.measure.tracker.LiveBytesTracker: every
storage an ATen op returns, from its allocation to its free), run around one forward and
one backward of the layer with its input and parameters registered first. The formulas
are replays of the layer's allocations and frees in order; the tests compare their
peaks, what they hold at their ends, and their whole allocation/free sequences with the
tracker's.
"""

from __future__ import annotations

import gc
import os

import pytest

from ftmem.dtypes import FP32
from ftmem.ops import gated_deltanet
from ftmem.ops.gated_deltanet import CHUNK, DeltaNetShape, GatedDeltaNet
from tests.test_gated_deltanet import SEQS, SHAPES, _module

torch = pytest.importorskip("torch")
pytest.importorskip("transformers.models.qwen3_5")

B = 2
# (grad mode, the layer's weights train, its input needs a gradient): no_grad (a
# checkpointed layer's first forward), LoRA-like (frozen, input needing a gradient), full
# finetuning, and the lowest trained layer (weights train, the input needs none)
MODES = {
    "no-grad": (False, False, False),
    "frozen": (True, False, True),
    "trained": (True, True, True),
    "trained-input-without-grad": (True, True, False),
}
# Past one chunk, where the chunks' mechanisms are, Qwen3-Next's fused projections and
# an input without gradient (both differ from the rest only before the delta rule, which
# one chunk exercises) run under FTMEM_SLOW only (CI time)
GRID = [
    (seq, name, mode)
    for seq in SEQS
    for name in sorted(SHAPES)
    for mode in sorted(MODES)
    if os.environ.get("FTMEM_SLOW")
    or seq <= CHUNK
    or not (SHAPES[name].fused or mode == "trained-input-without-grad")
]


class Run:
    """One forward (and in grad mode one backward) of the real layer under the tracker:
    each phase's peak above its start, what is held at the forward's end above its
    start, and each phase's events (frees written as their storages' bytes). The
    output's gradient is made before the backward's start and held throughout."""

    def __init__(self, shape: DeltaNetShape, precision: str, seq: int, mode: str) -> None:
        from ftmem.measure.tracker import LiveBytesTracker

        graph, weights_train, x_grad = MODES[mode]
        autocast = precision == "bf16-autocast"
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        module = _module(shape, dtype, weights_train)
        x = torch.randn(B, seq, shape.hidden, dtype=dtype, requires_grad=x_grad)
        if autocast and x_grad:
            # a block's input is no leaf: autocast caches no cast of it (a view: its
            # backward allocates nothing)
            with torch.enable_grad():
                x = x.view(x.shape)
        events: list[tuple[str, int]] = []
        region = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
        with LiveBytesTracker(events) as tracker, torch.set_grad_enabled(graph):
            tracker.track(x, *module.parameters())
            with region:  # (the forward's end is measured inside it: its cache held)
                start, skip = tracker.current, len(events)
                tracker.reset_peak()
                y = module(x)
                gc.collect()
                self.forward_peak, self.end = tracker.peak - start, tracker.current - start
                self.forward_events = _sized(events, skip)
            if graph:
                grad = torch.ones_like(y)
                start, skip = tracker.current, len(events)
                tracker.reset_peak()
                y.backward(grad)
                gc.collect()
                self.backward_peak = tracker.peak - start
                self.backward_events = _sized(events, skip)
                self.backward_net = tracker.current - start
                del grad
        del y


def _sized(events: list[tuple[str, int]], skip: int) -> list[tuple[str, int]]:
    """The tracker's events from ``skip`` on, each free written as its storage's bytes."""
    sizes = [value for op, value in events if op == "alloc"]
    return [(op, value if op == "alloc" else sizes[value]) for op, value in events[skip:]]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(("seq", "shape_name", "mode"), GRID)
def test_the_replays_are_the_modules_run(shape_name, precision, mode, seq):
    shape = SHAPES[shape_name]
    graph, weights_train, x_grad = MODES[mode]
    e = 2 if precision == "bf16" else FP32
    T = B * seq
    run = Run(shape, precision, seq, mode)

    # forward: the peak above what the layer holds at its end, which is its output and,
    # in grad mode, what autograd keeps (saved, out_proj's input where its weight trains)
    transient = GatedDeltaNet.forward_transient(shape, B, seq, e, graph, weights_train)
    assert transient == run.forward_peak - run.end
    saved = 0
    if graph:
        saved = sum(x.nbytes for x in GatedDeltaNet.saved(shape, B, seq, e, weights_train))
        saved += T * shape.value_dim * e if weights_train else 0
    assert run.end == T * shape.hidden * e + saved
    assert gated_deltanet._forward(shape, B, seq, e, graph, weights_train).log == run.forward_events
    if not graph:
        return

    # backward: what the forward saved freed where autograd releases it, the parameters'
    # and the input's gradients made where their nodes make them
    workspace = GatedDeltaNet.backward_workspace(shape, B, seq, e, weights_train, x_grad)
    assert workspace == run.backward_peak
    replay = gated_deltanet._backward(shape, B, seq, e, weights_train, x_grad)
    assert replay.log == run.backward_events
    made = T * shape.hidden * e if x_grad else 0
    made += sum(GatedDeltaNet.layer_parameters(shape).values()) * e if weights_train else 0
    assert replay.live == made - saved  # (every saved tensor freed, the gradients kept)


@pytest.mark.parametrize(("seq", "shape_name", "mode"), GRID)
def test_under_autocast_the_replays_are_the_modules_run(shape_name, mode, seq):
    """fp32 weights under a bf16 autocast (ftmem's bf16-mixed), the layer's input no
    leaf, as in a block; the backward outside the autocast region, as a training loop
    runs it (the cache of the trained weights' casts cleared before it)."""
    shape = SHAPES[shape_name]
    graph, weights_train, x_grad = MODES[mode]
    T, e = B * seq, 2
    run = Run(shape, "bf16-autocast", seq, mode)

    transient = GatedDeltaNet.forward_transient(
        shape, B, seq, e, graph, weights_train, autocast=True
    )
    assert transient == run.forward_peak - run.end
    replay = gated_deltanet._forward(shape, B, seq, e, graph, weights_train, autocast=True)
    assert replay.log == run.forward_events
    # what stays: the output; in grad mode what autograd keeps (saved, with the conv
    # weight's cast) and the linears' 16-bit weights (saved for the input's gradient,
    # or cached where they train) and, where the weights train, their 16-bit inputs
    params = GatedDeltaNet.layer_parameters(shape)
    linears = [name for name in params if "proj" in name]
    kept = 0
    if graph or weights_train:
        kept += sum(params[name] for name in linears) * e
    if graph:
        kept += sum(x.nbytes for x in GatedDeltaNet.saved(shape, B, seq, e, weights_train, True))
    if graph and weights_train:  # each input projection's input cast, out_proj's input
        kept += (len(linears) - 1) * T * shape.hidden * e + T * shape.value_dim * e
    assert run.end == T * shape.hidden * e + kept
    if not graph:
        return

    # backward: the casts' gradients made in 16 bits, then each cast's backward to fp32
    # (the parameters' gradients are fp32)
    workspace = GatedDeltaNet.backward_workspace(
        shape, B, seq, e, weights_train, x_grad, autocast=True
    )
    assert workspace == run.backward_peak
    replay = gated_deltanet._backward(shape, B, seq, e, weights_train, x_grad, autocast=True)
    assert replay.log == run.backward_events
    made = T * shape.hidden * FP32 if x_grad else 0  # (the block's input is fp32)
    made += sum(params.values()) * FP32 if weights_train else 0
    # every tensor the forward kept is freed, but the input projections' weight casts
    # of an input without gradient: only autocast's cache held them, and it is gone
    freed = kept
    if not x_grad:
        freed -= sum(params[name] for name in linears if name != "out_proj") * e
    assert run.backward_net == replay.live == made - freed


def test_the_no_grad_peak_is_the_decayed_querys_product():
    """Derived by hand for the grouped layer in bf16, s 100 (P = 128, n = 2, h_v 4 of
    d_k 16 / d_v 8, b 2): at ``query = query * cum_decay.exp()`` live are the
    projections' z, b, a (T·(h_v·d_v + 2·h_v)·2), silu's output (T·D·2), beta
    (T·h_v·2), g (T·h_v·4), the padded q, k, v (rows·(2·d_k + d_v)·4), beta and decay
    padded (2·b·h_v·P·4), v·beta and k·beta (rows·(d_v + d_k)·4), the mask (C² bool),
    the cumulative decay (b·h_v·P·4), three C-wide tensors (pairwise decay, UT system,
    intra-chunk attention: 3·rows·C·4), the decayed k·beta (rows·d_k·4), the two
    solves (rows·(d_v + d_k)·4), S_0 (b·h_v·d_k·d_v·4), the output buffer (rows·d_v·4),
    the exp (b·h_v·P·4) and the new product (rows·d_k·4); the output (T·h·2) is what
    remains at the end."""
    shape, b, s = SHAPES["grouped"], 2, 100
    T, hv, dk, dv, C, P = b * s, 4, 16, 8, 64, 128
    rows = b * hv * P
    moment = (
        T * (hv * dv + 2 * hv) * 2
        + T * shape.conv_dim * 2
        + T * hv * 2
        + T * hv * 4
        + rows * (2 * dk + dv) * 4
        + 2 * b * hv * P * 4
        + rows * (dv + dk) * 4
        + C * C
        + b * hv * P * 4
        + 3 * rows * C * 4
        + rows * dk * 4
        + rows * (dv + dk) * 4
        + b * hv * dk * dv * 4
        + rows * dv * 4
        + b * hv * P * 4
        + rows * dk * 4
    )
    assert moment == 1_394_496  # (calibration/notes/peft.md, stop 49: the measured peak)
    out = T * shape.hidden * 2
    assert GatedDeltaNet.forward_transient(shape, b, s, 2, graph=False) == moment - out


def test_the_backward_of_the_measured_example_in_the_notes():
    """calibration/notes/peft.md (stop 49) measured the grouped layer's backward in bf16
    at s 100 (a length the grid above leaves out): 726,848 B above its start, the same
    in fp32 (every tensor of the delta rule is fp32)."""
    shape = SHAPES["grouped"]
    assert GatedDeltaNet.backward_workspace(shape, 2, 100, 2) == 726_848
    assert GatedDeltaNet.backward_workspace(shape, 2, 100, FP32) == 726_848
