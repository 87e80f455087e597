"""peft's adapters built from a bank every layer shares (RandLoRA's frozen random bases,
VB-LoRA's trained vector bank): which one a linear carries, for the ops and the step's
moments. The mechanisms are in adapters.randlora and adapters.vblora."""

from __future__ import annotations

from ftmem.adapters.adamss import AdaMSS
from ftmem.adapters.lily import Lily
from ftmem.adapters.randlora import RandLoRA
from ftmem.adapters.tinylora import TinyLoRA
from ftmem.adapters.unilora import UniLoRA
from ftmem.adapters.vblora import VBLoRA
from ftmem.adapters.vera import VeRA
from ftmem.arch import Linear
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.saved import Saved, Side
from ftmem.run import RunConfig

# modelled under autocast (the rest is refused: run.NO_AUTOCAST)
AUTOCAST_OUTPUT_IN_INPUT_DTYPE = ("randlora", "vblora", "tinylora", "unilora")


def output_bytes(ctx: LayerContext, state: BlockState, lin: Linear, base: int) -> int:
    """Element size of an adapted linear's output (``base``: the base layer's): under
    autocast peft's RandLoRA, VB-LoRA, TinyLoRA and UniLoRA return it in their input's
    dtype (``result.to(previous_dtype)``, peft 0.21.2 tuners/randlora, vblora, tinylora
    and unilora layer.py ``Linear.forward``), the residual stream's for
    gate and up reading a norm's output (fp32 over fp32 weights: measured, bf16-mixed, the
    activation and product keep fp32 T × ffn tensors); VeRA's the same way."""
    banked = lin.module in state.banked and ctx.run.method in AUTOCAST_OUTPUT_IN_INPUT_DTYPE
    if banked and ctx.plan.dtypes.autocast:
        return ctx.residual
    return VeRA.output_bytes(ctx, state, lin, base)


def banked_saved(
    ctx: LayerContext,
    linears: list[Linear],
    state: BlockState,
    side: Side,
    in_grad: bool,
    in_bytes: int,
) -> tuple[list[Saved], bool]:
    """What the RandLoRA, VB-LoRA, TinyLoRA, AdaMSS, UniLoRA or Lily adapters of linears reading
    one tensor keep, and whether one of them keeps that tensor itself."""
    savers = {
        "randlora": RandLoRA.saved,
        "tinylora": TinyLoRA.saved,
        "adamss": AdaMSS.saved,
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
    if run.method == "adamss":
        return AdaMSS.backward_own(plan, run, lin, T, e)
    if run.method == "unilora":
        return UniLoRA.backward_own(plan, run, lin, T, e)
    if run.method == "lily":
        return Lily.backward_own(plan, run, lin, T, e)
    return VBLoRA.backward_own(plan, run, lin, T, e)
