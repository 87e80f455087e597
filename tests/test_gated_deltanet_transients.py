"""The Gated DeltaNet layer's forward transient (ops.gated_deltanet
GatedDeltaNet.forward_transient), measured on the real transformers 5.25 module on the
CPU: Qwen3_5GatedDeltaNet and Qwen3NextGatedDeltaNet with their torch fallbacks
(causal_conv1d_fn, torch_chunk_gated_delta_rule, Qwen3_5RMSNormGated).

The truth is ftmem's live-storage tracker (ftmem.measure.tracker.LiveBytesTracker: every
storage an ATen op returns, from its allocation to its free), run around one forward of
the layer with its input and parameters registered first. The formula is a replay of the
layer's allocations and frees in order; the tests compare its peak, what it holds at its
end, and its whole allocation/free sequence with the tracker's.
"""

from __future__ import annotations

import gc

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


def _measure_forward(shape: DeltaNetShape, precision: str, seq: int, mode: str):
    """The tracker's (peak above the start, bytes held at the end above the start,
    events) over one forward of the real layer."""
    from ftmem.measure.tracker import LiveBytesTracker

    graph, weights_train, x_grad = MODES[mode]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    module = _module(shape, dtype, weights_train)
    x = torch.randn(B, seq, shape.hidden, dtype=dtype, requires_grad=x_grad)
    events: list[tuple[str, int]] = []
    with LiveBytesTracker(events) as tracker, torch.set_grad_enabled(graph):
        tracker.track(x, *module.parameters())
        start, skip = tracker.current, len(events)
        tracker.reset_peak()
        y = module(x)
        gc.collect()
        peak, end = tracker.peak - start, tracker.current - start
        sized = _sized(events, skip)
    del y
    return peak, end, sized


def _sized(events: list[tuple[str, int]], skip: int) -> list[tuple[str, int]]:
    """The tracker's events from ``skip`` on, each free written as its storage's bytes."""
    sizes = [value for op, value in events if op == "alloc"]
    return [(op, value if op == "alloc" else sizes[value]) for op, value in events[skip:]]


@pytest.mark.parametrize("shape_name", sorted(SHAPES))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("seq", SEQS)
def test_the_forward_transient_is_the_modules(shape_name, precision, mode, seq):
    shape = SHAPES[shape_name]
    graph, weights_train, _ = MODES[mode]
    e = 2 if precision == "bf16" else FP32
    peak, end, events = _measure_forward(shape, precision, seq, mode)

    assert GatedDeltaNet.forward_transient(shape, B, seq, e, graph, weights_train) == peak - end
    # what the docstring says the layer holds at its end: its output, and in grad mode
    # what autograd keeps (saved, out_proj's input where its weight trains)
    held = B * seq * shape.hidden * e
    if graph:
        held += sum(x.nbytes for x in GatedDeltaNet.saved(shape, B, seq, e, weights_train))
        held += B * seq * shape.value_dim * e if weights_train else 0
    assert end == held
    # and the replay is the module's run, allocation by allocation, free by free
    assert gated_deltanet._forward(shape, B, seq, e, graph, weights_train).log == events


def test_the_no_grad_peak_is_the_decayed_querys_product():
    """Derived by hand for the grouped layer in bf16, s 100 (P = 128, n = 2, h_v 4 of
    d_k 16 / d_v 8, b 2): at ``query = query * cum_decay.exp()`` live are the
    projections' z, b, a (T·(h_v·d_v + 2·h_v)·2), silu's output (T·D·2), beta
    (T·h_v·2), g (T·h_v·4), the padded q, k, v (rows·(2·d_k + d_v)·4), beta and
    decay padded (2·b·h_v·P·4), v·beta and k·beta (rows·(d_v + d_k)·4), the mask and
    its triu (C²·1 each... the ones freed: one), the cumulative decay (b·h_v·P·4), three
    C-wide tensors (pairwise decay, UT system, intra-chunk attention: 3·rows·C·4), the
    decayed k·beta (rows·d_k·4), the two solves (rows·(d_v + d_k)·4), S_0
    (b·h_v·d_k·d_v·4), the output buffer (rows·d_v·4), the exp (b·h_v·P·4) and the new
    product (rows·d_k·4); the output (T·h·2) is what remains at the end."""
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


def _measure_backward(shape: DeltaNetShape, precision: str, seq: int, mode: str):
    """The tracker's (peak above the backward's start, events) over the backward of
    one forward of the real layer in ``mode`` (MODES, grad mode); the output's gradient
    is made before the start and held throughout."""
    from ftmem.measure.tracker import LiveBytesTracker

    _, weights_train, x_grad = MODES[mode]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    module = _module(shape, dtype, weights_train)
    x = torch.randn(B, seq, shape.hidden, dtype=dtype, requires_grad=x_grad)
    events: list[tuple[str, int]] = []
    with LiveBytesTracker(events) as tracker:
        tracker.track(x, *module.parameters())
        y = module(x)
        grad = torch.ones_like(y)
        gc.collect()
        start, skip = tracker.current, len(events)
        tracker.reset_peak()
        y.backward(grad)
        gc.collect()
        peak = tracker.peak - start
        sized = _sized(events, skip)
    del y, grad
    return peak, sized


@pytest.mark.parametrize("shape_name", sorted(SHAPES))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["frozen", "trained"])
@pytest.mark.parametrize("seq", SEQS)
def test_the_backward_workspace_is_the_modules(shape_name, precision, mode, seq):
    """The replay's peak and its whole allocation/free sequence are the tracker's
    (what the forward saved freed where autograd releases it, the parameters' and the
    input's gradients allocated where the nodes make them)."""
    _check_backward(SHAPES[shape_name], precision, seq, mode)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("shape_name", ["grouped", "next-equal"])
def test_the_lowest_trained_layer_makes_no_input_gradient(shape_name, precision):
    """Weights training, the input needing no gradient: the projections' backward makes
    their weights' gradients only."""
    _check_backward(SHAPES[shape_name], precision, 2 * CHUNK + 1, "trained-input-without-grad")


def _check_backward(shape: DeltaNetShape, precision: str, seq: int, mode: str) -> None:
    _, weights_train, x_grad = MODES[mode]
    e = 2 if precision == "bf16" else FP32
    peak, events = _measure_backward(shape, precision, seq, mode)

    workspace = GatedDeltaNet.backward_workspace(shape, B, seq, e, weights_train, x_grad)
    assert workspace == peak
    replay = gated_deltanet._backward(shape, B, seq, e, weights_train, x_grad)
    assert replay.log == events
    # at its end the backward holds the input's and the parameters' gradients, and
    # nothing the forward saved: the replay frees exactly the saved set
    T = B * seq
    saved = sum(x.nbytes for x in GatedDeltaNet.saved(shape, B, seq, e, weights_train))
    saved += T * shape.value_dim * e if weights_train else 0  # out_proj's input
    made = T * shape.hidden * e if x_grad else 0
    made += sum(GatedDeltaNet.layer_parameters(shape).values()) * e if weights_train else 0
    assert replay.live == made - saved


def test_the_backward_of_the_measured_example_in_the_notes():
    """calibration/notes/peft.md (stop 49) measured the grouped layer's backward in bf16
    at s 100 (a length the grid above leaves out): 726,848 B above its start, the same
    in fp32 (every tensor of the delta rule is fp32)."""
    shape = SHAPES["grouped"]
    assert GatedDeltaNet.backward_workspace(shape, 2, 100, 2) == 726_848
    assert GatedDeltaNet.backward_workspace(shape, 2, 100, FP32) == 726_848
