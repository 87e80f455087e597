"""peft's IA³: learned vectors rescaling a linear's output (attention) or input (feed-forward)."""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side


@register("ia3")
class IA3:
    """The IA³ vectors on a group of linears."""

    @staticmethod
    def saved(
        ctx: LayerContext, linears: list[Linear], state: BlockState, side: Side
    ) -> list[Saved]:
        """peft's IA³ (0.21): ``base(x) * l`` keeps the base output (compute dtype) for the
        vector's gradient; a feed-forward linear scales its input instead, cast to the
        vector's dtype first (``x.to(l.dtype) * l``), and keeps that cast. Each forward also
        keeps the vector times one (``scaling = 1; scaling *= l``)."""
        T, e = ctx.tokens, ctx.e
        ae = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter]
        out: list[Saved] = []
        for lin in linears:
            if lin.module in state.scaled_in:
                size = T * lin.in_features * ae + lin.in_features * ae
                what = f"{lin.label} IA³: input cast to {ctx.plan.dtypes.adapter}"
                out.append(Saved(what, size, Kind.IA3, side, (lin,)))
            elif lin.module in state.scaled:
                size = T * lin.out_features * e + lin.out_features * ae
                out.append(Saved(f"{lin.label} IA³: base output", size, Kind.IA3, side, (lin,)))
        return out

    @staticmethod
    def backward_workspace(plan: MethodPlan, e: int, T: int) -> int:
        """IA³'s feed-forward scaling in backward (measured): the down projection's input
        gradient cast to the vector's dtype (the uncast one freed), and both products of the
        scaling's backward (for the vector's sum and for the input) before the sum."""
        ff = [lin.in_features for lin, feedforward in plan.scaled if feedforward]
        if not ff:
            return 0
        ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        width = max(ff)
        return 3 * T * width * ae

    @staticmethod
    def graphless_forward(plan: MethodPlan, lin: Linear, feedforward: bool, T: int, x: int) -> int:
        """One IA³ linear's forward at its largest where its block keeps nothing on the
        device (offloaded), beyond its input (``x`` bytes an element, held by the caller).
        peft 0.21.2 tuners/ia3/layer.py ``Linear.forward`` l.111-120: a feed-forward linear
        casts x to the vector's dtype (a copy unless x is in it; held to the return), takes
        x·l and casts that back to x's dtype before the base layer runs, the product freed
        once cast; an attention linear scales the base output, ``(result * l).to(dtype)``:
        the output, the product and its cast. Traced: Falcon IA³ bf16 with activations
        offloaded, the forward's largest at dense_4h_to_h (-26 % without)."""
        ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        if not feedforward:
            return T * lin.out_features * (2 * x + ae if ae != x else x + ae)
        n = T * lin.in_features
        cast, back = n * ae * (x != ae), n * x * (x != ae)
        # then the base layer's output beside its input (the cast back, or the product)
        return max(cast + n * ae + back, cast + n * x + T * lin.out_features * x)
