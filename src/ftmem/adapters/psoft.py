"""peft's PSOFT on a linear: an r × r orthogonal R, rebuilt from its skew-symmetric part in
every forward, between frozen SVD factors A (r × in) and B (out × r): ΔW = B (R − I) A.

What runs (huggingface/peft src/peft/tuners/psoft/layer.py ``Linear.forward`` and
``OrthLayer``, the same in memory at 0.21.2 and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40,
the MetaMathQA release, and in July 2026, when its result files were made), x in the base
dtype (without autocast), R's parameters fp32 (RunConfig refuses 16-bit):

- ``x_cast = x.to(A.dtype)``: A and B are fp32 buffers (the SVD runs on ``W.to(float32)``),
  so a 16-bit x is copied (T × in fp32); ``xa = x_cast @ A.T`` keeps nothing of x_cast (A
  needs no gradient): PSOFT never keeps its linear's input.
- ``R = OrthLayer.get_matrix()``: Q from the upper triangle, then the exact Cayley solve
  (peft's default) or the Cayley-Neumann series, as OFT builds its blocks
  (oft.cayley_bytes: the solve's LU, pivots and result, or Q and its powers); then
  ``vector_b[:, None] * R`` keeps R (its own tensor under the series; the solve's result
  otherwise) and ``* vector_a[None, :]`` the b-scaled copy (r × r each).
- ``xr = xa @ R.t()``: keeps xa (T × r, for R's gradient) and R (when x needs a gradient);
  ``(xr - xa) @ B.t()`` keeps nothing (B is frozen), nor does ``* scaling``; the fp32
  product is added to the base output (promoting the sum) and cast back to x's dtype.

The locals x_cast, xa, xr and ``delta_y`` live until the forward returns.
Measured alone (one peft PSOFT Linear, 512 × 256, r 32, 128 tokens, tests/test_psoft.py).

Under autocast (stop 47): the exact solve stays fp32 on both devices (linalg_solve: the
CPU's fp32 list, no CUDA autocast kernel; Q and the identity are fp32), and so do the
scalings (mul); the three matmuls (x·Aᵀ, xa·Rᵀ, (xr − xa)·Bᵀ; lower precision on both) run
in 16 bits and keep their casts: xa is 16-bit, R is kept as its 16-bit cast, and Aᵀ's
(for x's gradient) and Bᵀ's casts are kept (views of buffers: autocast caches neither).
The output is the base's dtype (autocast's). The forward and backward moments above are
not re-derived for it (the accuracy cases under autocast match within 0.1 %).

Not modelled (refused): 16-bit R (peft keeps A and B fp32; not measured), the
Cayley-Neumann series above 2 terms under autocast (its Q powers are 16-bit matmuls
there), GPT-2's Conv1D (peft wraps only nn.Linear), ``psoft_orth``, ``psoft_mag_a`` or ``psoft_mag_b``
off (a live model's are refused), ``psoft_dropout`` (noted).
"""

from __future__ import annotations

from ftmem.adapters.oft import INDEX_BYTES, cayley_bytes
from ftmem.arch import Linear
from ftmem.dtypes import FP32
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig


def buffer_bytes(plan: MethodPlan, run: RunConfig, layers: int) -> int:
    """The frozen fp32 A (r × in) and B (out × r) and OrthLayer's int64 rows and cols
    (r·(r − 1)/2 each) per adapted linear, in each block holding it (``layers``: the
    model's)."""
    r = run.psoft[0]
    total = 0
    for lin in plan.psoft:
        blocks = lin.count(layers)
        ab = r * (lin.in_features + lin.out_features) * FP32
        total += blocks * (ab + r * (r - 1) * INDEX_BYTES)
    return total


def rotation_bytes(run: RunConfig, in_grad: bool, e16: int = 0) -> int:
    """The r × r matrices one PSOFT linear keeps: the Cayley build's (oft.cayley_bytes), R
    (under the series: the solve's result is counted there), its b-scaled copy and, when
    x needs a gradient, the a-scaled R the matmul keeps: under autocast (``e16``, the
    compute dtype's size) the matmul's 16-bit cast of it instead."""
    r, _, terms = run.psoft
    square = r * r * FP32
    kept_r = r * r * (e16 or FP32) if in_grad else 0
    return cayley_bytes(terms, 1, r, FP32) + square * ((terms > 0) + 1) + kept_r


@register("psoft")
class PSOFT:
    """The PSOFT adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """What each PSOFT linear keeps: xa (T × r, fp32) and its rotation's matrices; never
        the shared input (``in_bytes`` unused, the shared signature)."""
        out: list[Saved] = []
        e16 = ctx.e if ctx.plan.dtypes.autocast else 0
        for lin in (lin for lin in linears if lin.module in state.psoft):
            own = (lin,)
            r = ctx.run.psoft[0]
            size = ctx.tokens * r * (e16 or FP32)
            out.append(Saved(f"{lin.label} PSOFT x·Aᵀ", size, Kind.PSOFT, side, own))
            size = rotation_bytes(ctx.run, in_grad, e16)
            out.append(Saved(f"{lin.label} PSOFT rotation (r × r)", size, Kind.PSOFT, side, own))
            if e16:  # the matmuls' casts of the frozen Aᵀ (for x's gradient) and Bᵀ
                size = r * (lin.in_features * in_grad + lin.out_features) * e16
                what = f"{lin.label} PSOFT A and B cast to {e16 * 8}-bit"
                out.append(Saved(what, size, Kind.PSOFT, side, own))
        return out, False

    @staticmethod
    def forward_build(plan: MethodPlan, run: RunConfig, T: int, e: int, kept: bool) -> int:
        """The largest PSOFT forward beyond the block's kept tensors, at the sum: the base
        output (x's dtype, ``e``), x's fp32 cast (none on an fp32 x), xr, ``delta_y``, its
        scaled copy and the promoted sum (T × out fp32 each); xa too when the block keeps
        nothing (``kept`` False)."""
        return max((PSOFT.linear_build(run, lin, T, e, kept) for lin in plan.psoft), default=0)

    @staticmethod
    def linear_build(run: RunConfig, lin: Linear, T: int, e: int, kept: bool) -> int:
        """forward_build at one linear."""
        n, o, r = lin.in_features, lin.out_features, run.psoft[0]
        cast = T * n * FP32 if e != FP32 else 0
        return T * o * (e + 3 * FP32) + cast + T * r * FP32 * (1 if kept else 2)

    @staticmethod
    def backward_moment(plan: MethodPlan, run: RunConfig, T: int, e: int) -> int:
        """The largest PSOFT backward beyond the block's kept tensors: at the scale's mul the
        output's gradient cast to fp32 and back for the base branch (on a 16-bit x) and
        the scaled gradient (T × out fp32); at x_cast the fp32 input gradient, its cast
        back (on a 16-bit x) and xa's gradient."""
        r = run.psoft[0]
        held = [0]
        for lin in plan.psoft:
            n, o = lin.in_features, lin.out_features
            cast = e != FP32
            held.append(T * o * FP32 + (T * o * (FP32 + e) if cast else 0))
            held.append(T * n * FP32 + T * r * FP32 + (T * n * e if cast else 0))
        return max(held)
