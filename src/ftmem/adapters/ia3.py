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
