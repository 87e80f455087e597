"""peft's RoAd on a linear: what its rotation of the outputs keeps.

What runs (huggingface/peft src/peft/tuners/road/layer.py Linear.forward and _apply_road,
the same at 0.21.2 and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, the MetaMathQA
release): the base output is cast to the adapter's dtype, then ``x * first_col +
rotate_half(x) * second_col``, where first_col = alpha·cos θ and second_col = alpha·sin θ
are built from the parameters (road_1 repeats each half-group value, road_4 takes two
angles and two scales). The multiplies keep the cast output and its rotated copy (T × out
each) and the out-wide vectors: road_2 cos θ, sin θ and both columns (4); road_1 also the
repeated θ and alpha (6); road_4 the two sliced scales instead (6). The two columns only
when the output needs a gradient for the input's sake (the linear's input needs one).

Measured alone (saved-tensor hooks on one RoAd Linear of a tiny bf16 Llama, fp32
parameters, group 16): exactly these, beside the parameters themselves.

Under autocast the same: the frozen output is 16-bit, and the rotation's ops (cos, sin,
neg, stack, mul, add) are in no CUDA autocast list, so they run on its cast to the adapter
dtype as without, and peft casts the result back to the frozen output's dtype
(tests/test_miss_road.py; accuracy cases under autocast, activations exact).
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side

# the out-wide vectors the multiplies keep, by variant (module docstring)
VECTORS = {"road_1": 6, "road_2": 4, "road_4": 6}


@register("road")
class RoAd:
    """The RoAd rotations on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """The cast output, its rotated copy and the column vectors of each RoAd linear
        (none reads the input: ``in_bytes`` unused, the shared signature)."""
        if not state.road:
            return [], False
        de = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter]
        n = VECTORS[ctx.run.road[0]] - (0 if in_grad else 2)
        out: list[Saved] = []
        for lin in (lin for lin in linears if lin.module in state.road):
            size = (2 * ctx.tokens + n) * lin.out_features * de
            what = f"{lin.label} RoAd output, rotated copy and {n} vectors"
            out.append(Saved(what, size, Kind.ROAD, side, (lin,)))
        return out, False
