"""peft's HiRA on a linear: ΔW = W0 ⊙ (B A), built whole (out × in) in every forward, and
the input cast it multiplies.

What runs (huggingface/peft src/peft/tuners/hira/layer.py ``Linear.forward``, the same at
0.21.2 and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, the MetaMathQA release), x in the
base dtype (without autocast), hira_A (r × in) and hira_B (out × r) in
the adapter dtype:

- ``_prod_AB = torch.mm(hira_A.T, hira_B.T)``: in × out, the adapter dtype; its node keeps
  only the parameters. The local name holds it until the forward returns.
- ``x = _cast_input_dtype(x, hira_A.dtype)``: a copy per adapted linear when x's dtype
  differs (the input itself, shared, when not).
- ``W * _prod_AB.T``: out × in in the promoted dtype (the adapter's: fp32 over a 16-bit
  weight); the multiply keeps W (the frozen parameter, no new tensor) for the product's
  gradient, not the product (W needs none).
- ``F.linear(x, ΔW)``: keeps the cast input (ΔW needs a gradient) and ΔW when the input
  needs one, exactly LoHa's F.linear (lycoris._delta_saved); its output in the adapter
  dtype is added to the base output (promoting the sum) and cast back to x's dtype.

The backward, at the mm's node: the output's gradient cast to the adapter dtype (and back
to x's for the base output's branch when the dtypes differ), the input cast's gradient
(T × in) and ΔW's (out × in), ΔW and the cast still kept; then ΔW's gradient times W, the
product's gradient (out × in), beside ΔW's. Measured alone (one peft HiRA Linear, 512 ×
256, r 8, 128 tokens, tests/test_hira.py): exactly these.

Under autocast (stop 47; the same op lists on CUDA and the CPU for mm, mul and linear): B A
is 16-bit (the mm keeps its casts of the views A.T and B.T), ΔW the promoted dtype of W
and B A, peft's input cast goes to fp32 and F.linear casts it and ΔW to 16-bit and keeps
those casts; the output stays 16-bit. Its moments are _autocast_forward and
_autocast_backward.

Not modelled (refused): a 4-bit or 8-bit base (peft tuners/hira/bnb.py dequantises the
weight for the product: ``--quant`` is LoRA's), hira_dropout, Conv layers and GPT-2's
Conv1D.
"""

from __future__ import annotations

from collections.abc import Callable

from ftmem.adapters.lycoris import _delta_saved, _sizes, delta_bytes
from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side

InBytes = Callable[[Linear], int]  # a linear's input element size (LinearOp.input_bytes)


def input_built_in(plan: MethodPlan) -> int:
    """Under autocast, the dtype peft casts the input to before F.linear casts it again:
    hira_A's (the adapter dtype; lycoris._delta_saved's ``built_in``); 0 otherwise."""
    return BYTES_PER_ELEMENT[plan.dtypes.adapter] if plan.dtypes.autocast else 0


@register("hira")
class HiRA:
    """The HiRA adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """What F.linear keeps of each HiRA linear: its input cast and, when the input
        needs a gradient, ΔW (lycoris._delta_saved). Returns the items and whether one
        keeps the shared input itself (no cast)."""
        out: list[Saved] = []
        reads_input = False
        built = input_built_in(ctx.plan)
        for lin in (lin for lin in linears if lin.module in state.hira):
            items, reads = _delta_saved(ctx, lin, side, in_grad, in_bytes, "HiRA", built)
            out += [x._replace(kind=Kind.HIRA) for x in items]
            if ctx.plan.dtypes.autocast:  # the mm's 16-bit casts of the views A.T and B.T
                size = ctx.run.hira[0] * (lin.in_features + lin.out_features) * ctx.e
                what = f"{lin.label} HiRA A and B cast to {ctx.e * 8}-bit"
                out.append(Saved(what, size, Kind.HIRA, side, (lin,)))
            reads_input = reads_input or reads
        return out, reads_input

    @staticmethod
    def forward_build(plan: MethodPlan, T: int, in_bytes: InBytes, e: int, kept: bool) -> int:
        """The largest HiRA forward beyond the block's kept tensors (when it keeps them,
        ``kept``: ΔW and the input cast are then counted there): the product B A, ΔW, the
        input cast and the base output (x's dtype, ``e``) with, when ΔW is kept, the
        adapter's output and the promoted sum (T × out each, the adapter dtype); when it is
        not, the larger of that moment without ΔW (freed after F.linear) and F.linear's
        with ΔW and its output."""
        if plan.dtypes.autocast:
            return max(
                (_autocast_forward(plan, lin, T, in_bytes, kept) for lin in plan.hira), default=0
            )
        de = delta_bytes(plan)
        held = [0]
        for lin, (w, cast) in zip(plan.hira, _sizes(plan.hira, de, T, in_bytes), strict=True):
            out, base = T * lin.out_features * de, T * lin.out_features * e
            if kept:
                held.append(w + base + 2 * out)
            else:
                held += [2 * w + cast + base + out, w + cast + base + 2 * out]
        return max(held)

    @staticmethod
    def backward_moment(plan: MethodPlan, T: int, in_bytes: InBytes, e: int) -> int:
        """The largest HiRA backward beyond the block's kept tensors: at the mm's node the
        output's gradient in the adapter dtype and its cast back for the base branch (when
        x's dtype differs), the input cast's gradient and ΔW's; after it (ΔW and the cast
        freed) ΔW's gradient and the product's."""
        if plan.dtypes.autocast:
            return max((_autocast_backward(plan, lin, T) for lin in plan.hira), default=0)
        de = delta_bytes(plan)
        held = [0]
        for lin, (w, cast) in zip(plan.hira, _sizes(plan.hira, de, T, in_bytes), strict=True):
            grads = T * lin.out_features * (de + e) if in_bytes(lin) != de else 0
            held += [grads + T * lin.in_features * de + w, 2 * w - w - cast]
        return max(held)


def _autocast_forward(plan: MethodPlan, lin: Linear, T: int, in_bytes: InBytes, kept: bool) -> int:
    """One HiRA linear's forward under autocast beyond the block's kept tensors of it
    (ΔW's and the input's 16-bit casts, A's and B's, when ``kept``): the 16-bit B A (a
    local until the forward returns), peft's cast of the input to the adapter dtype (the
    rebound ``x``, alive as long), the base output and the adapter's (T × out, 16-bit),
    with W ⊙ B A in the promoted dtype (an fp32 W's) beside them at F.linear, or the sum
    after it (measured: one peft HiRA Linear under CPU autocast, tests/test_hira.py).
    Left out: A's and B's 16-bit casts, r · (in + out) · 2, when not kept."""
    dt = plan.dtypes
    e, we, ae = (BYTES_PER_ELEMENT[d] for d in (dt.compute, dt.base, dt.adapter))
    el, n, o = lin.in_features * lin.out_features, lin.in_features, lin.out_features
    x_mid = T * n * ae if in_bytes(lin) != ae else 0
    own = 0 if kept else el * e + T * n * e  # ΔW's and the input's 16-bit casts
    at_linear = el * e + (el * we if we != e else 0) + x_mid + 2 * T * o * e + own
    at_sum = el * e + x_mid + 3 * T * o * e
    return max(at_linear, at_sum)


def _autocast_backward(plan: MethodPlan, lin: Linear, T: int) -> int:
    """One HiRA linear's backward under autocast beyond the block's kept tensors: at the
    mm's node ΔW's and the input cast's 16-bit gradients; over an fp32 base, ΔW's gradient
    cast to fp32, the product's gradient (W times it, fp32) and its 16-bit cast (B A's
    dtype), the node having freed ΔW's 16-bit cast (measured: one peft HiRA Linear under
    CPU autocast, tests/test_hira.py)."""
    dt = plan.dtypes
    e, we = BYTES_PER_ELEMENT[dt.compute], BYTES_PER_ELEMENT[dt.base]
    el = lin.in_features * lin.out_features
    at_mm = el * e + T * lin.in_features * e
    at_mul = 2 * el * we if we != e else 0
    return max(at_mm, at_mul)
