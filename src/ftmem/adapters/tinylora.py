"""peft's TinyLoRA on a linear: frozen SVD factors A and B of the weight, a trained vector
v (shared by a group of linears) mixed through fixed random projections into an r × r R,
what its forward keeps and the adapted linear's own backward.

What runs (huggingface/peft src/peft/tuners/tinylora/layer.py ``Linear.forward`` and
``_compute_R``, peft 0.21.2)::

    R = torch.einsum("i,ijk->jk", v, P)          # (r, r), P a buffer (u, r, r)
    x = dropout(x).to(A.dtype)                    # A, B: buffers
    result = result + F.linear(F.linear(F.linear(x, A), R), B)

A and B are buffers (no gradient), so the first matmul keeps nothing of its input (the
input's cast is transient: a TinyLoRA linear never keeps its input), and the last one
keeps nothing of its r-wide input. Autograd keeps h = x Aᵀ (T × r, the adapter dtype) for
R's gradient, and R itself where the input needs a gradient. Measured on one peft TinyLoRA
Linear: tests/test_tinylora.py.

Buffers per adapted linear (layer.py ``_init_svd``, ``_init_projection``): A (r × in) and
B (out × r) in the adapter dtype (peft's autocast_adapter_dtype casts them to fp32 on a
16-bit base), P (u × r × r) fp32, which an engine that casts the whole model casts with
them (engine_cast): P follows the adapter dtype, fp32 in every other run (TinyLoRA takes no
--adapter-dtype); r is capped at min(in, out).
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig


def _rank(run: RunConfig, lin: Linear) -> int:
    """The SVD rank peft keeps: r capped at the weight's smaller side (``_init_svd``)."""
    return min(run.tinylora[0], lin.in_features, lin.out_features)


def buffer_bytes(plan: MethodPlan, run: RunConfig, layers: int) -> int:
    """tinylora_A, tinylora_B and tinylora_P (adapter dtype) per adapted linear, in each
    block holding it (``layers``: the model's)."""
    if run.method != "tinylora":
        return 0
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    u = run.tinylora[1]
    total = 0
    for lin in plan.banked:
        blocks = lin.count(layers)
        r = _rank(run, lin)
        total += blocks * (r * (lin.in_features + lin.out_features) + u * r * r) * ae
    return total


def _kept(
    run: RunConfig, lin: Linear, T: int, ae: int, in_grad: bool, ac: int = 0
) -> dict[str, int]:
    """What one adapted linear keeps, by name: bytes. ``ac``: autocast's element size (0
    without): R's einsum and the three F.linear then run in 16 bits (einsum on CUDA's
    lower-precision list, its bmm on the CPU's; linear on both), so h and R are 16-bit
    and each buffer is cast per call (never cached: no gradient) and its cast kept where
    the other operand needs a gradient: P's (u × r × r, for v's gradient), B's (out × r,
    h always needs one) and A's (r × in, where the input needs one). Measured on one peft
    TinyLoRA Linear (bf16-mixed, bf16 + autocast, three shapes): exact."""
    r = _rank(run, lin)
    me = ac or ae
    kept = {"h (T × r)": T * r * me, "R (r × r)": r * r * me if in_grad else 0}
    if ac:
        kept["P cast (autocast)"] = run.tinylora[1] * r * r * ac
        kept["B cast (autocast)"] = lin.out_features * r * ac
        kept["A cast (autocast)"] = r * lin.in_features * ac if in_grad else 0
    return {name: size for name, size in kept.items() if size}


def _autocast_bytes(plan: MethodPlan) -> int:
    """``_kept``'s ``ac``: the compute dtype's element size under autocast (the adapter
    dtype is peft's fp32 then: --adapter-dtype is refused), else 0."""
    return BYTES_PER_ELEMENT[plan.dtypes.compute] if plan.dtypes.autocast else 0


@register("tinylora")
class TinyLoRA:
    """The TinyLoRA adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext, lin: Linear, side: Side, in_grad: bool, in_bytes: int
    ) -> tuple[list[Saved], bool]:
        """One adapted linear's kept tensors (_kept); it never keeps the shared input."""
        ae = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter]
        kept = _kept(ctx.run, lin, ctx.tokens, ae, in_grad, _autocast_bytes(ctx.plan))
        items = [
            Saved(f"{lin.label} TinyLoRA {name}", size, Kind.BANK, side, (lin,))
            for name, size in kept.items()
        ]
        return items, False

    @staticmethod
    def backward_own(plan: MethodPlan, run: RunConfig, lin: Linear, T: int, e: int) -> int:
        """An adapted linear's own backward at its largest, beyond what it kept and the
        output gradient it is handed (``e``: the base's element size), its input needing a
        gradient. Three moments:

        - the last matmul's: where the adapter and the base differ in dtype (``c``), the
          output gradient cast to the adapter's (T × out) and the base layer's cast
          gradient waiting (T × out, base dtype), beside h's gradient (T × r);
        - the first matmul's: the input's gradient in the adapter dtype (T × in), its cast
          back to the input's dtype (where ``c``) beside the waiting one, h freed;
        - the input's: the base layer's and the adapter's gradients and their sum (3 · T
          × in in the input's dtype), everything the linear kept freed by then.

        Measured (one peft TinyLoRA Linear on the CPU; v's gradient aside):
        tests/test_tinylora.py."""
        ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        r, in_, out = _rank(run, lin), lin.in_features, lin.out_features
        if plan.dtypes.autocast:
            return _autocast_backward(plan, run, lin, T)
        c = ae != e
        waiting = T * out * e if c else 0
        at_out = (T * out * ae if c else 0) + waiting + T * r * ae
        at_a = T * in_ * ae + (T * in_ * e if c else 0) + waiting - T * r * ae
        kept = sum(_kept(run, lin, T, ae, True).values())
        return max(at_out, at_a, 3 * T * in_ * e - kept)


def _autocast_backward(plan: MethodPlan, run: RunConfig, lin: Linear, T: int) -> int:
    """TinyLoRA.backward_own under autocast: 16-bit products; the output gradient cast to
    16 bits where the input is wider (bf16-mixed: waiting for the base layer); the
    input's gradient cast back through peft's fp32 cast (16 and 32 bits at once) before
    R's einsum's backward (P's cast still kept); the sum of the input's two gradients.
    Measured on one peft TinyLoRA Linear (bf16-mixed, bf16 + autocast, three shapes):
    within v's gradient, tests/test_tinylora.py."""
    dt = plan.dtypes
    e, ae, xe = BYTES_PER_ELEMENT[dt.compute], BYTES_PER_ELEMENT[dt.adapter], dt.residual_bytes
    r, in_, out = _rank(run, lin), lin.in_features, lin.out_features
    waiting = T * out * e if xe != e else 0
    kept = _kept(run, lin, T, ae, True, e)
    total = sum(kept.values())
    return max(
        waiting + T * in_ * e + T * r * e,
        waiting + T * in_ * (e + ae) - total + kept["P cast (autocast)"],
        3 * T * in_ * xe - total,
    )
