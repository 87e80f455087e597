"""peft's MiSS on a linear: what its forward keeps, by init_weights variant.

What runs (huggingface/peft src/peft/tuners/miss/layer.py MissLinear.forward, the same in
memory at 0.21.2 and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, the MetaMathQA release):

- default (init_weights True or False) and mini: ``base(x) + sum(x.to(block's dtype)
  .reshape(…, in/r, r), dim=-2) @ miss``; the mm keeps the summed r-wide input (the block
  needs a gradient) and, when that input needs one, the block: the parameter itself, or
  mini's ``miss.repeat(1, out/mini_r)``, an r × out copy.
- bat: the base weight, cloned, is rebuilt every forward as ``W + (W_blocks @ miss + miss)``
  (``get_delta_weight``) and multiplied by the input cast to the block's dtype; the bmm
  keeps its contiguous fp32 copy of the weight's blocks (out × in), ``F.linear`` keeps the
  cast input and, when the input needs a gradient, the rebuilt weight (out × in).

Measured alone (saved-tensor hooks on one MissLinear of a tiny bf16 Llama, fp32 block):
exactly these tensors. Under autocast (default and mini; bat is refused: not measured) the
``@ miss`` matmul (in both devices' lower-precision lists; ``sum`` is in CUDA's
fp32_set_opt_dtype list, a no-op on the fp32 cast) keeps the summed input's 16-bit cast and
the block's (autocast's cached cast of the parameter, a fresh cast of mini's repeat); peft
returns the output in x's dtype (``result.to(previous_dtype)``). A 16-bit
block under bat is modelled as the same ops in its dtype (derived, not measured: on the CPU
``get_delta_weight`` computes a 16-bit block's rebuild in fp32, ``cast_to_fp32``, so the
CPU cannot check it; RunConfig refuses that pair on --device cpu).
"""

from __future__ import annotations

from collections.abc import Callable

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

InBytes = Callable[[Linear], int]  # a linear's input element size (LinearOp.input_bytes)


@register("miss")
class MiSS:
    """The MiSS blocks on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """What each MiSS linear keeps; and whether one (bat without a cast) keeps the
        shared input itself."""
        if not state.miss:
            return [], False
        r, init, _, _ = ctx.run.miss
        de = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter]
        out: list[Saved] = []
        reads = False
        for lin in (lin for lin in linears if lin.module in state.miss):
            own, T = (lin,), ctx.tokens
            w = lin.in_features * lin.out_features * de
            if init != "bat" and ctx.plan.dtypes.autocast:
                # the matmul keeps 16-bit casts: of the summed input, and of the block (a
                # cached cast of the parameter; a fresh one of mini's repeat)
                e = ctx.e
                what = f"{lin.label} MiSS summed input, cast to {e * 8}-bit"
                out.append(Saved(what, T * r * e, Kind.MISS, side, own))
                if in_grad:
                    what = f"{lin.label} MiSS block cast to {e * 8}-bit"
                    out.append(Saved(what, r * lin.out_features * e, Kind.MISS, side, own))
                continue
            if init != "bat":
                out.append(
                    Saved(f"{lin.label} MiSS summed input", T * r * de, Kind.MISS, side, own)
                )
                if init == "mini" and in_grad:
                    size = r * lin.out_features * de
                    out.append(
                        Saved(f"{lin.label} MiSS repeated block", size, Kind.MISS, side, own)
                    )
                continue
            out.append(Saved(f"{lin.label} MiSS weight blocks (bat)", w, Kind.MISS, side, own))
            if in_grad:
                out.append(Saved(f"{lin.label} MiSS rebuilt weight", w, Kind.MISS, side, own))
            if in_bytes != de:
                size = T * lin.in_features * de
                out.append(Saved(f"{lin.label} MiSS input cast", size, Kind.MISS, side, own))
            reads = reads or in_bytes == de
        return out, reads

    @staticmethod
    def bat_build(run: RunConfig, plan: MethodPlan, T: int, in_bytes: InBytes, kept: bool) -> int:
        """The largest bat rebuild in a forward: the base weight's clone (its dtype), its
        copy in the block's dtype (none when they match), the bmm's contiguous blocks, the
        block broadcast to every blocks' pair and the bmm's product, out × in each. Beyond
        what the block's kept tensors count of that linear (its blocks, rebuilt weight and
        input cast) when it keeps them (``kept``: not a checkpointed or frozen block).
        Measured alone (MissLinear, 512 × 256, r 32): 4.5 out × in of fp32 on a bf16
        weight, 4 on an fp32 one."""
        if run.miss[1] != "bat":
            return 0
        de = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        held = []
        for lin in plan.miss:
            n = lin.in_features * lin.out_features
            cast = T * lin.in_features * de if in_bytes(lin) != de else 0
            held.append(MiSS.build_bytes(plan, lin) - (2 * n * de + cast if kept else 0))
        return max(held, default=0)

    @staticmethod
    def build_bytes(plan: MethodPlan, lin: Linear) -> int:
        """One bat rebuild's peak (bat_build, nothing kept)."""
        de, we = BYTES_PER_ELEMENT[plan.dtypes.adapter], BYTES_PER_ELEMENT[plan.dtypes.base]
        n = lin.in_features * lin.out_features
        return n * we + (n * de if we != de else 0) + 3 * n * de

    @staticmethod
    def bat_backward(run: RunConfig, plan: MethodPlan, T: int, in_bytes: InBytes) -> int:
        """The largest bat backward beyond the block's kept tensors (the input needing a
        gradient): F.linear's weight gradient (out × in) once its node has freed the
        rebuilt weight and the input cast, then the bmm's gradient for the broadcast block
        (out × in) and the block's own gradient (r × out) summed from it. Measured alone
        (MissLinear, 512 × 256, r 32, 4 tokens): 1.12 out × in of fp32."""
        if run.miss[1] != "bat":
            return 0
        de, r = BYTES_PER_ELEMENT[plan.dtypes.adapter], run.miss[0]
        held = [
            lin.in_features * lin.out_features * de
            + r * lin.out_features * de
            - (T * lin.in_features * de if in_bytes(lin) != de else 0)
            for lin in plan.miss
        ]
        return max(held, default=0)
