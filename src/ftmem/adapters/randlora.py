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
    run: RunConfig, lin: Linear, T: int, ae: int, cast: bool, in_grad: bool
) -> dict[str, int]:
    """What one adapted linear keeps, by name: bytes."""
    r, in_, out = run.randlora[0], lin.in_features, lin.out_features
    width = r * randlora_bases(lin, r)
    kept = {
        "input cast": T * in_ * ae if cast and in_ <= out else 0,
        f"h (T × {width})": T * width * ae if in_ > out else 0,
        "scaled base (r·n × min(in, out))": width * min(in_, out) * ae if in_grad else 0,
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
        kept = _kept(ctx.run, lin, ctx.tokens, ae, in_bytes != ae, in_grad)
        items = [
            Saved(f"{lin.label} RandLoRA {name}", size, Kind.BANK, side, (lin,))
            for name, size in kept.items()
        ]
        return items, in_bytes == ae and lin.in_features <= lin.out_features

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
