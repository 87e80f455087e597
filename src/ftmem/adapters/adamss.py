"""peft's AdaMSS on a linear: a frozen rank-R projection from the SVD of the weight (a
buffer), the output rows clustered into K subspaces, each with trained factors A_i and
B_i; what its forward keeps and makes, and its own backward.

What runs (huggingface/peft src/peft/tuners/adamss/layer.py ``Linear.forward``, peft
0.21.2)::

    x = x.to(self.dtype)                       # the base weight's dtype
    newx = cat(x, ones) if bias else x         # (T × in+1): newB has the bias column
    result = base_layer(x)
    h = F.linear(newx, newB.to(self.dtype))    # (T × R)
    chunks = [F.linear(F.linear(h, A_i.to(self.dtype)), B_i.to(self.dtype))]
    delta = cat(chunks)                        # (T × out), rows in cluster order
    delta = zeros(T, out).scatter(-1, index.to(device).expand(T, out), delta)
    return (result + delta).to(previous_dtype)

Everything runs in the base weight's dtype e; peft's autocast keeps A_i, B_i and newB in
fp32 on a 16-bit base (the adapter dtype ae), so each is cast per call. Autograd keeps h
(for A's gradients), each subspace's T × rank output (for B's), the scatter's int64 index
(``scatter_index`` is a plain dict tensor on the CPU, copied to the device every
forward: out × 8 bytes), and where ae ≠ e the casts the matmuls need for their input's
gradient: every B_i's, and A_i's and newB's where the input needs a gradient. newB is a
buffer: the first matmul keeps nothing of its input, so an AdaMSS linear never keeps x.
Measured on one peft AdaMSS Linear (fp32, bf16, with and without bias): tests/test_adamss.py.

Buffers per adapted linear (layer.py ``update_layer``, a BufferDict): adamss_newB (R ×
in, in + 1 with a bias) in the adapter dtype. ``seg_result``, ``scatter_index`` and the
KMeans labels stay on the CPU.

Not modelled (refused where a setting asks for them): ASA (``use_asa``, the importance
EMAs ``update_and_allocate`` keeps per factor), ``use_dynamic_rank`` (ranks read off the
weight's singular values), autocast and 16-bit adapters.
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan, adamss_shape
from ftmem.ops.context import LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

INDEX = 8  # int64 scatter_index


def buffer_bytes(plan: MethodPlan, run: RunConfig, layers: int) -> int:
    """adamss_newB (R × in, + 1 column with a bias) in the adapter dtype per adapted
    linear, in each block holding it (``layers``: the model's)."""
    if run.method != "adamss":
        return 0
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    total = 0
    for lin in plan.banked:
        blocks = lin.count(layers)
        R = adamss_shape(run, lin)[0]
        total += blocks * R * (lin.in_features + lin.bias) * ae
    return total


def _kept(run: RunConfig, lin: Linear, T: int, e: int, ae: int, in_grad: bool) -> dict[str, int]:
    """What one adapted linear keeps, by name: bytes (``e``: the base weight's element
    size, which the adapter computes in; ``ae``: its factors' and newB's)."""
    R, k, rank = adamss_shape(run, lin)
    out = lin.out_features
    kept = {
        "h (T × R)": T * R * e,
        "subspace outputs (T × K·rank)": T * k * rank * e,
        "scatter index (int64)": out * INDEX,
    }
    if ae != e:
        kept["B casts"] = out * rank * e
        kept["A casts"] = k * rank * R * e if in_grad else 0
        kept["newB cast"] = R * (lin.in_features + lin.bias) * e if in_grad else 0
    return {name: size for name, size in kept.items() if size}


def _sizes(plan: MethodPlan) -> tuple[int, int]:
    """(e, ae): the compute dtype's element size (the base weights', autocast being
    refused) and the adapter dtype's."""
    dt = plan.dtypes
    return BYTES_PER_ELEMENT[dt.compute], BYTES_PER_ELEMENT[dt.adapter]


@register("adamss")
class AdaMSS:
    """The AdaMSS adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext, lin: Linear, side: Side, in_grad: bool, in_bytes: int
    ) -> tuple[list[Saved], bool]:
        """One adapted linear's kept tensors (_kept); it never keeps the shared input."""
        e, ae = _sizes(ctx.plan)
        kept = _kept(ctx.run, lin, ctx.tokens, e, ae, in_grad)
        items = [
            Saved(f"{lin.label} AdaMSS {name}", size, Kind.BANK, side, (lin,))
            for name, size in kept.items()
        ]
        return items, False

    @staticmethod
    def linear_forward(plan: MethodPlan, run: RunConfig, lin: Linear, T: int) -> int:
        """One adapted linear's forward at its largest, beyond what it keeps and the base
        layer's output: at the scatter, the subspace chunks (held by peft's list), their
        concatenation, the zeros and the scattered copy (four T × out), and with a bias
        the input with its ones column and the ones (T × in + 1, T × 1). Measured on one
        peft AdaMSS Linear: exact."""
        e = _sizes(plan)[0]
        bias = T * (lin.in_features + 1) * e + T * e if lin.bias else 0
        return 4 * T * lin.out_features * e + bias

    @staticmethod
    def nograd_forward(plan: MethodPlan, run: RunConfig, lin: Linear, T: int) -> int:
        """linear_forward without a graph (a checkpointed block's first forward), with the
        base output: h and the subspace outputs are locals then, live at the scatter all
        the same."""
        e = _sizes(plan)[0]
        R, k, rank = adamss_shape(run, lin)
        own = T * lin.out_features * e + T * (R + k * rank) * e
        return AdaMSS.linear_forward(plan, run, lin, T) + own

    @staticmethod
    def backward_own(plan: MethodPlan, run: RunConfig, lin: Linear, T: int, e: int) -> int:
        """An adapted linear's own backward at its largest, beyond what it kept and the
        output gradient it is handed, its input needing a gradient. Autograd runs B_K,
        A_K, B_K-1, A_K-1, ... (the latest made first); each B_i frees its subspace
        output. Two moments:

        - h's gradient, whose K contributions (T × R each, one per A_i) autograd sums out
          of place: at the second, the first, the second and their sum (3 · T × R) beside
          the scatter's gathered gradient (T × out), which lives until B_1's backward (so
          not at K = 2's second: there the larger of the two moments), two subspace
          outputs freed; at K = 1 the one contribution beside the gathered gradient;
        - the input's: the base layer's gradient, the adapter's (T × in + 1 with a bias:
          the cat's backward hands a view of it) and their sum, everything the linear kept
          freed by then.

        The int64 index is taken as kept to the end: on the CPU, where ftmem measures,
        ``scatter_index.to(device)`` is the layer's own tensor (out × 8 bytes beside a
        T-wide moment). Measured (one peft AdaMSS Linear on the CPU, within the factors'
        gradients and, on a bf16 base, their casts): tests/test_adamss.py."""
        ce, ae = _sizes(plan)
        R, k, rank = adamss_shape(run, lin)
        out, in_ = lin.out_features, lin.in_features
        gathered, h, sub = T * out * ce, T * R * ce, T * rank * ce
        first = gathered + h - sub
        at_a = {1: first, 2: max(first, 3 * h - 2 * sub)}.get(k, gathered + 3 * h - 2 * sub)
        kept = _kept(run, lin, T, ce, ae, True)
        freed = sum(kept.values()) - kept["scatter index (int64)"]
        at_input = 2 * T * in_ * e + T * (in_ + lin.bias) * ce - freed
        return max(at_a, at_input)
