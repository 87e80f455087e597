"""Bottleneck adapters (Houlsby, Pfeiffer) on a linear's output."""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side


@register("bottleneck")
class Bottleneck:
    """A bottleneck adapter on each of a group's linears that has one."""

    @staticmethod
    def saved(
        ctx: LayerContext, linears: list[Linear], state: BlockState, in_grad: bool, side: Side
    ) -> list[Saved]:
        """A bottleneck adapter on a linear's output y: ``y + up(act(down(y)))`` (ftmem's
        reference implementation in ``ftmem.measure.build``, as AdapterHub places them).

        ``down`` keeps its input: y cast to the adapter dtype (or, under autocast, to 16 bits);
        the activation keeps its input (SiLU, Houlsby) or output (ReLU, Pfeiffer); ``up`` keeps
        the activation's output. Under autocast both Linears keep 16-bit weight copies, the
        down one only when y needs a gradient (something below trains).
        """
        T, e = ctx.tokens, ctx.e
        dt = ctx.plan.dtypes
        width, placement = ctx.run.bottleneck
        ae = e if dt.autocast else BYTES_PER_ELEMENT[dt.adapter]
        out: list[Saved] = []
        for lin in linears:
            if lin.module not in state.bottleneck:
                continue
            h = lin.out_features
            acts = 2 if placement == "houlsby" else 1  # SiLU keeps its input, ReLU its output
            size = T * h * ae + acts * T * width * ae
            if dt.autocast:
                size += 2 * h * width * (2 if in_grad else 1)
            what = f"{lin.label} adapter: input, activation"
            out.append(Saved(what, size, Kind.BOTTLENECK, side, (lin,)))
        return out
