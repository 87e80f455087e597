"""peft's RandLoRA on a linear: the shared frozen random bases (buffers), the scaled base
built in every forward, what the two matmuls keep, and the adapted linear's own backward.

What runs (huggingface/peft src/peft/tuners/randlora/layer.py ``get_scaled_bases``,
``UniqueBaseGrad`` and ``Linear.forward``, the same at 0.21.2 and at 5d602fdbff04, the
MetaMathQA release)::

    update = UniqueBaseGrad.apply(A[:, :n, :low], λ, γ)   # λ[:, :, None] · A · γ: r × n × low
    update_B, update_A = B[:high, :n, :].flatten(1), update.flatten(end_dim=1)
    # in <= out: F.linear(x, update_A) then update_B; else update_B.T then update_A.T
    result = result + F.linear(F.linear(dropout(x.to(dtype)), first), second) * scaling

with n = ceil(low / r) bases, low = min(in, out), high = max(in, out). ``update`` (r·n ×
low, about low², in the adapter dtype) is built whole per adapted linear per forward; the
Function keeps only its inputs (A is a view of the shared buffer). The matmul with the
trained factor keeps its other operand (x's cast where the input is the narrower side,
else the r·n-wide h = x · Bᵀ) and, where its input needs a gradient, ``update`` itself.
Measured on one peft RandLoRA Linear: tests/test_randlora.py.
"""

from __future__ import annotations

from ftmem.arch import Architecture, Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan, banked_linears, randlora_bases
from ftmem.ops.context import LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.precision import Dtypes
from ftmem.run import RunConfig


def basis_bytes(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
    """randlora_A (r × 1 × low) and randlora_B (high × n × r), registered buffers, once
    for the model, sized by the widest adapted linear's min and max dimensions
    (peft 0.21.2 tuners/randlora/model.py ``_find_dim``, ``_init_randlora_A_randlora_B``:
    one base A broadcast over the n bases), in the adapter dtype."""
    if run.method != "randlora":
        return 0
    linears = banked_linears(arch, run)
    if not linears:
        return 0
    r = run.randlora[0]
    out = max(lin.out_features for lin in linears)
    in_ = max(lin.in_features for lin in linears)
    low, high = min(out, in_), max(out, in_)
    n = -(-low // r)
    return (r * low + high * n * r) * BYTES_PER_ELEMENT[dtypes.adapter]


def _kept(
    run: RunConfig, lin: Linear, T: int, ae: int, cast: bool, in_grad: bool, ac: int = 0
) -> dict[str, int]:
    """What one adapted linear keeps, by name: bytes (``ac``: autocast's element size,
    0 without autocast: _autocast_kept)."""
    r, in_, out = run.randlora[0], lin.in_features, lin.out_features
    width = r * randlora_bases(lin, r)
    if ac:
        return _autocast_kept(lin, T, width, ac, in_grad)
    kept = {
        "input cast": T * in_ * ae if cast and in_ <= out else 0,
        f"h (T × {width})": T * width * ae if in_ > out else 0,
        "scaled base (r·n × min(in, out))": width * min(in_, out) * ae if in_grad else 0,
    }
    return {name: size for name, size in kept.items() if size}


def _autocast_kept(lin: Linear, T: int, width: int, e: int, in_grad: bool) -> dict[str, int]:
    """Under autocast both F.linear cast their operands to 16 bits (lower-precision ops
    on CUDA and the CPU): the input (peft's fp32 cast of it, cast back), the scaled base
    (a non-leaf: never cached) and the fixed base's slice (a buffer: never cached), each
    kept by its mm where the other operand needs a gradient: the scaled base's product
    always keeps its other operand (the input's 16-bit cast, or h where the input is the
    wider side), the fixed base's cast where its input needs a gradient (h always does
    where the scaled base comes first). The fp32 scaled base itself is a transient.
    Measured on one peft RandLoRA Linear (bf16-mixed and bf16 + autocast, three shapes,
    with and without the input's gradient): exact, tests/test_randlora.py."""
    in_, out = lin.in_features, lin.out_features
    first = in_ <= out  # the scaled base multiplies the input
    kept = {
        "input cast (autocast)": T * in_ * e if first else 0,
        f"h (T × {width})": 0 if first else T * width * e,
        "fixed base cast (autocast)": width * (out if first else in_) * e
        if first or in_grad
        else 0,
        "scaled base cast (autocast)": width * min(in_, out) * e if in_grad else 0,
    }
    return {name: size for name, size in kept.items() if size}


@register("randlora")
class RandLoRA:
    """The RandLoRA adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext, lin: Linear, side: Side, in_grad: bool, in_bytes: int
    ) -> tuple[list[Saved], bool]:
        """One adapted linear's kept tensors (_kept), and whether it keeps the shared
        input itself (the input is the narrower side and needs no cast)."""
        ae = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter]
        ac = ctx.e if ctx.plan.dtypes.autocast else 0
        kept = _kept(ctx.run, lin, ctx.tokens, ae, in_bytes != ae, in_grad, ac)
        items = [
            Saved(f"{lin.label} RandLoRA {name}", size, Kind.BANK, side, (lin,))
            for name, size in kept.items()
        ]
        keeps_input = not ac and in_bytes == ae and lin.in_features <= lin.out_features
        return items, keeps_input

    @staticmethod
    def backward_own(
        plan: MethodPlan, run: RunConfig, lin: Linear, T: int, e: int, in_grad: bool
    ) -> int:
        """An adapted linear's own backward at its largest, beyond what it kept and the
        output gradient it is handed (``e``: the base's element size). Moments:

        - the scaling's product (T × out, adapter dtype) beside the gradient's cast to the
          adapter dtype where they differ (``c``) and, when the input needs a gradient,
          the base layer's cast gradient waiting (T × out);
        - the matmul with the fixed base: that product beside h's gradient (T × r·n);
        - the matmul with the scaled base: h's gradient, the scaled base's gradient and,
          where it is the first matmul and the input needs one, the input's (T × in);
        - UniqueBaseGrad's backward: the scaled base's gradient and one einsum product of
          its size, what the linear kept freed, the input's gradient (cast to ``e``)
          waiting for the base layer's;
        - the input's: the base layer's and the adapter's gradients and their sum.

        Measured (one peft RandLoRA Linear on the CPU, the scalings' gradients aside):
        tests/test_randlora.py."""
        ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        r, in_, out = run.randlora[0], lin.in_features, lin.out_features
        width = r * randlora_bases(lin, r)
        if plan.dtypes.autocast:
            return _autocast_backward(plan, lin, T, width, in_grad)
        update, c = width * min(in_, out) * ae, ae != e
        waiting = T * out * e if c and in_grad else 0
        scaled = T * out * ae
        grad_h = T * width * ae if in_ <= out or in_grad else 0
        grad_x = T * in_ * ae if in_grad else 0
        kept = sum(_kept(run, lin, T, ae, c, in_grad).values())
        moments = [
            scaled * (2 if c else 1) + waiting,
            scaled + grad_h + waiting + (update if in_ > out else 0),
            grad_h + update + waiting + (grad_x if in_ <= out else 0),
            2 * update - kept + (T * in_ * e + waiting if in_grad else 0),
        ]
        if in_grad:
            moments.append(3 * T * in_ * e - kept)
        return max(moments)


def _autocast_backward(plan: MethodPlan, lin: Linear, T: int, width: int, in_grad: bool) -> int:
    """RandLoRA.backward_own under autocast: the products 16-bit (``e``), the output
    gradient cast to 16 bits where the input (so the output) is wider (``gc``, kept for the
    base layer while the input needs a gradient), the scaled base's 16-bit gradient cast
    back to fp32 for UniqueBaseGrad's einsums."""
    dt = plan.dtypes
    e, ae, xe = BYTES_PER_ELEMENT[dt.compute], BYTES_PER_ELEMENT[dt.adapter], dt.residual_bytes
    in_, out = lin.in_features, lin.out_features
    first = in_ <= out
    gc = T * out * e if xe != e else 0
    waiting = gc if in_grad else 0
    scaled = T * out * e
    grad_h = T * width * e if first or in_grad else 0
    grad_x = T * in_ * e if in_grad else 0
    base_grad = width * min(in_, out) * e
    update = width * min(in_, out) * ae
    fixed_cast = width * (out if first else in_) * e
    kept = sum(_autocast_kept(lin, T, width, e, in_grad).values())
    second_kept = T * width * e + (base_grad if in_grad else 0)  # h, the scaled base's cast
    moments = [
        gc + scaled,
        scaled + grad_h + waiting + (0 if first else base_grad),
        # the first mm's products, the second's saved operands freed
        grad_h + waiting + grad_x + (base_grad - fixed_cast if first else -T * width * e),
        # the scaled base's gradient cast back to fp32, the mm that made it done
        update + base_grad + waiting + (grad_x - kept if first else grad_h - second_kept),
        2 * update + waiting + (T * in_ * xe if in_grad else 0) - kept,
    ]
    if in_grad:  # the input's casts before UniqueBaseGrad (fp32 update pending), the sum
        moments.append(T * in_ * (e + ae) + waiting + update - kept)
        moments.append(3 * T * in_ * xe - kept)
    return max(moments)
