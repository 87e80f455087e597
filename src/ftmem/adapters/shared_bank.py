"""peft's adapters built from a bank every layer shares (RandLoRA's frozen random bases,
VB-LoRA's trained vector bank): which one a linear carries, for the ops and the step's
moments. The mechanisms are in adapters.randlora and adapters.vblora."""

from __future__ import annotations

from ftmem.adapters.lily import Lily
from ftmem.adapters.randlora import RandLoRA
from ftmem.adapters.tinylora import TinyLoRA
from ftmem.adapters.unilora import UniLoRA
from ftmem.adapters.vblora import VBLoRA
from ftmem.arch import Linear
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.saved import Saved, Side
from ftmem.run import RunConfig


def banked_saved(
    ctx: LayerContext,
    linears: list[Linear],
    state: BlockState,
    side: Side,
    in_grad: bool,
    in_bytes: int,
) -> tuple[list[Saved], bool]:
    """What the RandLoRA, VB-LoRA, TinyLoRA, UniLoRA or Lily adapters of linears reading
    one tensor keep, and whether one of them keeps that tensor itself."""
    savers = {
        "randlora": RandLoRA.saved,
        "tinylora": TinyLoRA.saved,
        "unilora": UniLoRA.saved,
        "lily": Lily.saved,
    }
    saved = savers.get(ctx.run.method, VBLoRA.saved)
    out: list[Saved] = []
    reads = False
    for lin in linears:
        if lin.module in state.banked:
            items, keeps_input = saved(ctx, lin, side, in_grad, in_bytes)
            out += items
            reads = reads or keeps_input
    return out, reads


def banked_backward(plan: MethodPlan, run: RunConfig, lin: Linear, T: int, e: int) -> int:
    """One adapted linear's own backward at its largest (the input needing a gradient:
    every block but a frozen-input first one, whose moments are smaller)."""
    if run.method == "randlora":
        return RandLoRA.backward_own(plan, run, lin, T, e, True)
    if run.method == "tinylora":
        return TinyLoRA.backward_own(plan, run, lin, T, e)
    if run.method == "unilora":
        return UniLoRA.backward_own(plan, run, lin, T, e)
    if run.method == "lily":
        return Lily.backward_own(plan, run, lin, T, e)
    return VBLoRA.backward_own(plan, run, lin, T, e)
