"""peft's LoHa on a linear: the delta weight it builds whole in every forward, the input
cast it multiplies, and what the Hadamard product's backward holds.

What runs (huggingface/peft src/peft/tuners/loha/layer.py, the same at 0.21.2 and at
5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, the MetaMathQA release): ``LoHaLayer.forward``
adds ``Linear._get_delta_activations`` to the base output; that builds
``ΔW = HadaWeight.apply(w1a, w1b, w2a, w2b, scale)`` (out × in), casts the input to
ΔW's dtype (``_cast_input_dtype``) and returns ``F.linear(input, ΔW)``. HadaWeight saves
only its four factors (parameters) and the 0-dim scale; ``F.linear``'s mm keeps the cast
input (ΔW needs a gradient) and ΔW (when the input needs one).
"""

from __future__ import annotations

from collections.abc import Callable

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side


def delta_bytes(plan: MethodPlan) -> int:
    """Element size of ΔW and of the input it multiplies: the adapter dtype, or under
    autocast the 16-bit compute dtype (HadaWeight's matmuls run under it; the 0-dim fp32
    scale does not promote)."""
    dt = plan.dtypes
    return BYTES_PER_ELEMENT[dt.compute if dt.autocast else dt.adapter]


@register("loha")
class LoHa:
    """The LoHa adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_features: int,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """What each adapted linear keeps: its input cast to ΔW's dtype (one copy per
        adapter; the input itself, shared, when no cast is needed) and ΔW when the input
        needs a gradient. Returns the items and whether an adapter keeps the shared input."""
        T, de = ctx.tokens, delta_bytes(ctx.plan)
        out: list[Saved] = []
        reads_input = False
        for lin in linears:
            if lin.module not in state.hadamard:
                continue
            own = (lin,)
            if in_bytes != de:
                what = f"{lin.label} LoHa input cast to {de * 8}-bit"
                out.append(Saved(what, T * in_features * de, Kind.LOHA, side, own))
            else:
                reads_input = True
            if in_grad:
                size = lin.in_features * lin.out_features * de
                out.append(Saved(f"{lin.label} LoHa ΔW (out × in)", size, Kind.LOHA, side, own))
        return out, reads_input

    @staticmethod
    def forward_build(
        plan: MethodPlan, T: int, in_bytes: Callable[[Linear], int], kept: bool
    ) -> int:
        """HadaWeight.forward's ``((w1a @ w1b) * (w2a @ w2b)) * scale`` at its largest:
        both products and their Hadamard product alive at once (three out × in), beyond
        what the block's kept tensors count of that linear (its ΔW and its input cast,
        both made after) when it keeps them (``kept``: not a checkpointed or frozen
        block). ``in_bytes``: a linear's input element size (LinearOp.input_bytes)."""
        de = delta_bytes(plan)
        return max(
            (3 * w - (w + cast if kept else 0) for w, cast in LoHa._sizes(plan, T, in_bytes, de)),
            default=0,
        )

    @staticmethod
    def backward_moment(plan: MethodPlan, T: int, in_bytes: Callable[[Linear], int]) -> int:
        """HadaWeight.backward at its largest (the mm's node has freed ΔW and the input
        cast it kept): the ΔW gradient it was handed (still held by the call's
        arguments) and ``grad_out * scale``, in ΔW's dtype, then the other pair's
        product, ``temp``, and the second ``temp``, made before the first is released:
        three out × in in the adapter dtype (backward runs outside autocast, the fp32
        factors promote). Measured alone (tiny HadaWeight on the CPU): 5 out × in."""
        ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        de = delta_bytes(plan)
        return max(
            (
                2 * w + 3 * (w // de) * ae - w - cast
                for w, cast in LoHa._sizes(plan, T, in_bytes, de)
            ),
            default=0,
        )

    @staticmethod
    def _sizes(
        plan: MethodPlan, T: int, in_bytes: Callable[[Linear], int], de: int
    ) -> list[tuple[int, int]]:
        """Each adapted linear's ΔW bytes and its input cast's (0 without a cast)."""
        return [
            (
                lin.in_features * lin.out_features * de,
                T * lin.in_features * de if in_bytes(lin) != de else 0,
            )
            for lin in plan.hadamard
        ]
