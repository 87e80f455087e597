"""peft's HRA on a linear: a chain of r Householder reflections (in × in), rebuilt in every
forward and multiplied into the frozen weight.

What runs (huggingface/peft src/peft/tuners/hra/layer.py ``HRALinear.forward`` and
``get_delta_weight`` without Gram-Schmidt, the same in 0.21.2 and at
5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40), x in the base dtype, hra_u (in × r) in the
adapter dtype:

- ``new_weight = torch.eye(in)`` in torch's default dtype (fp32) before the chain, a local
  until it is rebound after the chain.
- the chain: hra_u over its column norms (kept, in × r), then r times ``weight = weight -
  2 * weight @ u_i @ u_iᵀ``, parsed as ``((2 * weight) @ u_i) @ u_iᵀ``: each step's
  ``2 * weight`` (in × in) is kept by its matmul (u_i needs a gradient), with the in × 1
  product; the step's product, the difference and the weight it replaces are in × in
  transients.
- ``torch.mm(new_weight.to(delta.dtype), delta)`` keeps that identity (in × in, the
  adapter dtype); ``delta`` stays a local until the forward returns.
- the frozen weight cast to the adapter dtype (out × in; no copy when it is already) is
  kept by ``torch.mm(W, new_weight)``; ``F.linear(x.to(adapter dtype), W')`` keeps the
  cast input (the input itself, shared, when no cast is needed) and, when the input needs
  a gradient, W' (out × in); the output is cast back to x's dtype.

Measured alone (one peft HRALinear, several shapes, bf16 and fp32 bases, the input with
and without a gradient; tests/test_hra.py): exactly these, and the backward's moments
(HRA.backward_moment). Not modelled (refused): Gram-Schmidt (apply_GS), 16-bit hra_u
under autocast, Conv2d, GPT-2's Conv1D (peft wraps only nn.Linear and nn.Conv2d).

Under autocast (fp32 hra_u; ``mm`` and ``matmul`` in both devices' lower-precision lists)
the chain runs in fp32 between 16-bit matmuls: each step keeps the 16-bit cast of its 2·W
(and of u_i, u_iᵀ and their in × 1 product, the first step's u_i but), ``torch.mm(I,
delta)`` the identity's 16-bit cast; its 16-bit product makes W' 16-bit, so peft casts
the frozen weight and x to 16-bit, which F.linear keeps with W' (when x needs a
gradient); peft returns the output in x's dtype. Measured alone (tests/test_hra.py).
"""

from __future__ import annotations

from ftmem.adapters.boft import x_bytes
from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig


def _made_late(plan: MethodPlan, lin: Linear, T: int, e: int, in_grad: bool) -> int:
    """What an HRA linear keeps after its chain: the weight's cast, the input's cast (none
    when already in the adapter dtype) and W' (when the input needs a gradient)."""
    ab, wb = BYTES_PER_ELEMENT[plan.dtypes.adapter], BYTES_PER_ELEMENT[plan.dtypes.base]
    w = lin.in_features * lin.out_features * ab
    return (w if wb != ab else 0) + (T * lin.in_features * ab if e != ab else 0) + in_grad * w


def _autocast_kept(
    plan: MethodPlan, r: int, lin: Linear, T: int, xb: int, in_grad: bool
) -> tuple[int, int]:
    """What an HRA linear keeps under autocast: its chain (the steps' casts of 2·W, u_i,
    u_iᵀ and their product, the norms, the identity's cast) and what F.linear keeps (the
    weight's and x's 16-bit casts where needed, W')."""
    e, n, o = BYTES_PER_ELEMENT[plan.dtypes.compute], lin.in_features, lin.out_features
    chain = r * n * n * e + (3 * r - 1) * n * e + r * FP32 + n * n * e
    w = o * n * e
    late = (w if plan.dtypes.residual_bytes != e else 0) + (T * n * e if xb != e else 0)
    return chain, late + (w if in_grad else 0)


def _autocast_moments(plan: MethodPlan, r: int, lin: Linear, T: int, graph: bool) -> int:
    """An HRA linear's largest forward moment under autocast, whole (measured step by step
    on one HRALinear): the chain's last step (the fp32 identity, the weight it replaces,
    the new one, the 16-bit outer product, the normalised u); ``torch.mm(I, delta)`` (the
    identity, delta, their 16-bit casts and product); the end (delta, the weight's cast,
    W', x's cast, the 16-bit output and its cast to x's dtype)."""
    e, n, o, xb = (
        BYTES_PER_ELEMENT[plan.dtypes.compute],
        lin.in_features,
        lin.out_features,
        x_bytes(plan, lin),
    )
    chain, late = _autocast_kept(plan, r, lin, T, xb, True)
    ident = n * n * e
    steps = chain - ident if graph else 0
    w = o * n * e
    end = n * n * FP32 + late + (0 if late >= w else w) + T * o * e + (T * o * xb if xb != e else 0)
    return max(
        steps + 3 * n * n * FP32 + n * n * e + n * r * FP32,
        steps + ident + 2 * n * n * FP32 + 2 * n * n * e,
        steps + (ident if graph else 0) + end,
    )


@register("hra")
class HRA:
    """The HRA adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """What each HRA linear keeps (module docstring). Returns the items and whether
        one keeps the shared input itself (no cast)."""
        ab = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter]
        r = ctx.run.hra[0]
        out: list[Saved] = []
        if ctx.plan.dtypes.autocast:
            for lin in (lin for lin in linears if lin.module in state.householder):
                chain, late = _autocast_kept(ctx.plan, r, lin, ctx.tokens, in_bytes, in_grad)
                items = [("reflection chain and identity, 16-bit casts", chain)]
                items.append(("16-bit weight and input casts, W'", late))
                out += [Saved(f"{lin.label} HRA {w}", b, Kind.HRA, side, (lin,)) for w, b in items]
            return out, bool(out) and in_bytes == ctx.e
        for lin in (lin for lin in linears if lin.module in state.householder):
            n, own = lin.in_features, (lin,)
            chain = (r + 1) * n * n * ab + (2 * n * r + r) * ab
            late = _made_late(ctx.plan, lin, ctx.tokens, in_bytes, in_grad)
            items = [("reflection chain and identity (in × in)", chain)]
            items.append(("weight and input casts, W'", late))
            out += [Saved(f"{lin.label} HRA {what}", b, Kind.HRA, side, own) for what, b in items]
        return out, bool(out) and in_bytes == ab

    @staticmethod
    def forward_build(plan: MethodPlan, run: RunConfig, T: int, e: int, kept: bool) -> int:
        """The largest HRA forward (HRA.forward_moments), beyond the block's kept tensors
        when it keeps them (``kept``: less what they count of this linear), else whole."""
        held = [0]
        r = run.hra[0]
        for lin in plan.householder:
            if plan.dtypes.autocast:
                owned = sum(_autocast_kept(plan, r, lin, T, x_bytes(plan, lin), True))
                held.append(_autocast_moments(plan, r, lin, T, kept) - (owned if kept else 0))
                continue
            moments = HRA.forward_moments(plan, run, lin, T, e, kept)
            owned = HRA.kept_bytes(plan, run, lin, T, e, True) if kept else 0
            held.append(max(moments) - owned)
        return max(held)

    @staticmethod
    def forward_moments(
        plan: MethodPlan, run: RunConfig, lin: Linear, T: int, e: int, graph: bool
    ) -> tuple[int, int, int]:
        """An HRA linear's three largest forward moments, whole (measured step by step on
        one HRALinear): the chain's last step (the fp32 identity, the kept 2·W_i, the
        weight it replaces, its product and the difference); ``torch.mm(W, new_weight)``
        (the identity, ``delta``, its product with the identity, the weight's cast and
        the result); the output's cast back to x's dtype (``delta``, the weight's cast, W',
        the input's cast, the output and its cast). Without a graph (``graph`` False)
        nothing is kept: the chain and the identity are gone after their step."""
        ab, wb = BYTES_PER_ELEMENT[plan.dtypes.adapter], BYTES_PER_ELEMENT[plan.dtypes.base]
        n, o, r = lin.in_features, lin.out_features, run.hra[0]
        sq, w = n * n * ab, n * o * ab
        small = (2 * n * r + r) * ab if graph else 0
        chain = (r * sq if graph else 0) + small
        cast_w = w if wb != ab else 0
        cast_x = T * n * ab if e != ab else 0
        out = T * o * ab + (T * o * e if e != ab else 0)
        return (
            chain + n * n * FP32 + 3 * sq,
            chain + (sq if graph else 0) + 2 * sq + cast_w + w,
            chain + (sq if graph else 0) + sq + cast_w + w + cast_x + out,
        )

    @staticmethod
    def kept_bytes(
        plan: MethodPlan, run: RunConfig, lin: Linear, T: int, e: int, in_grad: bool
    ) -> int:
        """All one HRA linear keeps (HRA.saved's items)."""
        ab, n, r = BYTES_PER_ELEMENT[plan.dtypes.adapter], lin.in_features, run.hra[0]
        chain = (r + 1) * n * n * ab + (2 * n * r + r) * ab
        return chain + _made_late(plan, lin, T, e, in_grad)

    @staticmethod
    def backward_moment(plan: MethodPlan, T: int, e: int) -> int:
        """The largest HRA backward beyond the block's kept tensors (the input needing a
        gradient): at F.linear's node the output's gradient in the adapter dtype (on a
        16-bit x), the input's and W''s gradients; then W''s gradient with the
        chain product's (in × in), and that one with the identity product's, with the
        casts and W' freed by then (measured alone, HRA linears of several shapes)."""
        ab = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        held = [0]
        if plan.dtypes.autocast:
            return max((_autocast_backward(plan, lin, T) for lin in plan.householder), default=0)
        for lin in plan.householder:
            n, o = lin.in_features, lin.out_features
            w, sq = n * o * ab, n * n * ab
            late = _made_late(plan, lin, T, e, True)
            held.append((T * o * ab if e != ab else 0) + T * n * ab + w)
            held += [w + sq - (late - (w if BYTES_PER_ELEMENT[plan.dtypes.base] != ab else 0))]
            held.append(2 * sq - late)
        return max(held)


def offloaded_backward(plan: MethodPlan, run: RunConfig, lin: Linear, T: int) -> int:
    """One HRA linear's backward with activations offloaded: each node holds what it
    unpacked beside its gradients. Traced on one HRALinear offloaded (bf16 base, fp32
    adapter; in × out 96 × 96 at 8 tokens, 160 × 96 at 37):

    - F.linear's node: backward_moment's (the output gradient's cast, x's and W''s
      gradients) beside W' and x's cast brought back (exact: 82,944 and 184,448 B);
    - each chain step's MmBackward0: three in × in tensors (the running product's
      gradient, the operand brought back, the new gradient) beside x's gradient and the
      u's gradients (here bounded by x's gradient in both dtypes and two r × in: 121,344
      and 352,960 B against the 116,736 and 326,720 traced).

    Under autocast (not traced offloaded): backward_moment's beside the late items and
    two in × in operands, a bound (tiny Llama, bf16-mixed: +0.1 % and +1.0 %)."""
    dt = plan.dtypes
    e = BYTES_PER_ELEMENT[dt.compute]
    n, o, r = lin.in_features, lin.out_features, run.hra[0]
    if dt.autocast:
        late = _autocast_kept(plan, r, lin, T, x_bytes(plan, lin), True)[1]
        return _autocast_backward(plan, lin, T) + late + 2 * n * n * e
    ab = BYTES_PER_ELEMENT[dt.adapter]
    w, sq = n * o * ab, n * n * ab
    cast = T * n * ab if e != ab else 0
    at_linear = (T * o * ab if e != ab else 0) + T * n * ab + w + w + cast
    return max(at_linear, 3 * sq + T * n * (e + ab) + 2 * r * n * ab)


def _autocast_backward(plan: MethodPlan, lin: Linear, T: int) -> int:
    """HRA.backward_moment under autocast, the input needing a gradient: at F.linear's
    node the output's 16-bit gradient, W''s and x's; then in the chain, W's gradient in
    fp32, its negation and that one's 16-bit cast, with x's gradient (in x's dtype)
    waiting and F.linear's kept, the weight's cast and the identity's cast freed by then
    (measured alone, tests/test_hra.py)."""
    e, n, o, xb = (
        BYTES_PER_ELEMENT[plan.dtypes.compute],
        lin.in_features,
        lin.out_features,
        x_bytes(plan, lin),
    )
    w = o * n * e
    freed = w + (w if plan.dtypes.residual_bytes != e else 0) + (T * n * e if xb != e else 0)
    at_linear = (T * o * e if xb != e else 0) + w + T * n * e
    return max(at_linear, n * n * (2 * FP32 + e) + T * n * xb - freed - n * n * e)
