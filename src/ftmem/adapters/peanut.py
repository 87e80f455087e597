"""peft's Peanut (PEANuT) on a linear: ΔW rebuilt whole (in × out) from the frozen weight in
every forward, ``B(relu(Wᵀ Aᵀ))·scaling``, and the input it multiplies.

What runs (huggingface/peft src/peft/tuners/peanut/layer.py ``Linear.forward`` and
``_compute_delta_weight``, the same at 0.21.2 and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40,
the MetaMathQA release), x in the base dtype (under autocast: ``_own``), peanut_A (r × out),
peanut_B (out × r) and ``depth`` encoder and decoder r × r linears in the adapter dtype,
act_fn relu (the only one modelled):

- ``Wt = W.transpose(0, 1).to(A dtype)``: in × out, a copy on a 16-bit base (a view on an
  fp32 one); the mm with Aᵀ keeps it for A's gradient.
- ``relu(Wt @ Aᵀ)``: in × r, kept (relu keeps its output, B's linear its input). Per depth
  step the encoder's and decoder's relu outputs and the residual sum (in × r each) are
  kept too: (1 + 3·depth) · in × r in all.
- ``B(...)`` (in × out) times the scalar scaling: a second in × out; the first is freed
  when the build returns. The scaled ΔW is what the matmul keeps when x needs a gradient.
- ``x_cast = _cast_input_dtype(x, ΔW dtype)``: a copy when x's dtype differs, kept for
  ΔW's gradient (lycoris._delta_saved: the same F.linear-like keep as HiRA's).
- ``result + matmul(x_cast, ΔW).to(result dtype)``: the base output, the product in the
  adapter dtype, its cast back (16-bit base only) and the sum, T × out each.

Backward, at the matmul's node: the output's gradient cast to the adapter dtype (16-bit
base), the cast input's gradient (T × in) and ΔW's (in × out); after it (ΔW and the cast
freed) ΔW's gradient and its scaled copy. Measured alone (one peft Peanut Linear, 96 ×
160 and 160 × 96, r 8, depth 0 and 1, 64 to 1,024 tokens, fp32 and bf16 bases, the input
with and without a gradient; tests/test_peanut.py): kept, forward peak and the backward's
adapter moment exactly these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ftmem.adapters.lycoris import _delta_saved, delta_bytes
from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side

if TYPE_CHECKING:
    from ftmem.methods import MethodPlan
    from ftmem.ops.context import BlockState, LayerContext
    from ftmem.run import RunConfig

InBytes = Callable[[Linear], int]  # a linear's input element size (LinearOp.input_bytes)


def _own(plan: MethodPlan, lin: Linear, r: int, depth: int) -> int:
    """What the build keeps beside the matmul's keep: the W cast (in × out, when W's dtype
    is not the adapter's) and the relu outputs and residual sums ((1 + 3·depth) · in × r).
    Under autocast (matmul and linear: lower precision on CUDA's list as on the CPU's;
    relu and add on neither) the mm keeps autocast's 16-bit cast of Wᵀ whatever W's dtype,
    and B's and the depth linears' F.linear keep autocast's cached 16-bit casts of their
    weights (out × r, r × r each; A's is of a view, not cached, and not kept: Wᵀ needs no
    gradient). Measured: Llama q,v under bf16-mixed, activations -6.3 % without them."""
    de = delta_bytes(plan)
    dt = plan.dtypes
    cast = lin.in_features * lin.out_features * de if dt.base != dt.adapter or dt.autocast else 0
    weights = (lin.out_features * r + 2 * depth * r * r) * de if dt.autocast else 0
    return cast + weights + (1 + 3 * depth) * lin.in_features * r * de


@register("peanut")
class Peanut:
    """The Peanut adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """What each Peanut linear keeps: its build's W cast and relu outputs (_own), the
        matmul's input cast and, when the input needs a gradient, ΔW (_delta_saved).
        Returns the items and whether one keeps the shared input itself (no cast)."""
        out: list[Saved] = []
        reads_input = False
        r, _, depth = ctx.run.peanut
        for lin in (lin for lin in linears if lin.module in state.peanut):
            items, reads = _delta_saved(ctx, lin, side, in_grad, in_bytes, "Peanut")
            out += [x._replace(kind=Kind.PEANUT) for x in items]
            size = _own(ctx.plan, lin, r, depth)
            out.append(
                Saved(f"{lin.label} Peanut W cast, relu outputs", size, Kind.PEANUT, side, (lin,))
            )
            reads_input = reads_input or reads
        return out, reads_input

    @staticmethod
    def forward_build(
        plan: MethodPlan, run: RunConfig, T: int, in_bytes: InBytes, e: int, kept: bool
    ) -> int:
        """The largest Peanut forward, whole or beyond the block's kept tensors when it
        keeps them (``kept``: the build's own, ΔW and the input cast are counted there):
        the build (own, B's output and ΔW beside the base output; under autocast over a
        16-bit W also ``W.transpose(0, 1).to(A dtype)``, a local alive through the build,
        whose 16-bit cast the mm keeps: measured, Llama all-linear at 8 tokens, bf16
        --autocast, forward -4.2 % without it) or the sum (own, ΔW, the input cast, the
        base output, the product, its cast back and the sum)."""
        de, (r, _, depth) = delta_bytes(plan), run.peanut
        dt = plan.dtypes
        wt = BYTES_PER_ELEMENT[dt.adapter] if dt.autocast and dt.base != dt.adapter else 0
        held = [0]
        for lin in plan.peanut:
            w, own = lin.in_features * lin.out_features * de, _own(plan, lin, r, depth)
            own_build = own + lin.in_features * lin.out_features * wt
            cast = T * lin.in_features * de if in_bytes(lin) != de else 0
            t = T * lin.out_features
            back = t * e if e != de else 0
            less = own + w + cast if kept else 0
            held += [
                own_build + 2 * w + t * e - less,
                own + w + cast + t * (2 * e + de) + back - less,
            ]
        return max(held)

    @staticmethod
    def backward_moment(plan: MethodPlan, T: int, in_bytes: InBytes, e: int) -> int:
        """The largest Peanut backward beyond the block's kept tensors (its input needing a
        gradient): at the matmul's node the output's gradient cast to the adapter dtype
        (when x's differs), the input cast's gradient and ΔW's; after it, ΔW and the cast
        freed, ΔW's gradient and its scaled copy."""
        de = delta_bytes(plan)
        held = [0]
        for lin in plan.peanut:
            w = lin.in_features * lin.out_features * de
            cast = T * lin.in_features * de if in_bytes(lin) != de else 0
            grad = T * lin.out_features * de if e != de else 0
            held += [grad + T * lin.in_features * de + w, 2 * w - w - cast]
        return max(held)
