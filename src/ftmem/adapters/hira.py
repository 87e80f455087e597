"""peft's HiRA on a linear: ΔW = W0 ⊙ (B A), built whole (out × in) in every forward, and
the input cast it multiplies.

What runs (huggingface/peft src/peft/tuners/hira/layer.py ``Linear.forward``, the same at
0.21.2 and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, the MetaMathQA release), x in the
base dtype (no autocast: RunConfig refuses it), hira_A (r × in) and hira_B (out × r) in
the adapter dtype:

- ``_prod_AB = torch.mm(hira_A.T, hira_B.T)``: in × out, the adapter dtype; its node keeps
  only the parameters. The local name holds it until the forward returns.
- ``x = _cast_input_dtype(x, hira_A.dtype)``: a copy per adapted linear when x's dtype
  differs (the input itself, shared, when not).
- ``W * _prod_AB.T``: out × in in the promoted dtype (the adapter's: fp32 over a 16-bit
  weight); the multiply keeps W (the frozen parameter, no new tensor) for the product's
  gradient, not the product (W needs none).
- ``F.linear(x, ΔW)``: keeps the cast input (ΔW needs a gradient) and ΔW when the input
  needs one, exactly LoHa's F.linear (lycoris._delta_saved); its output in the adapter
  dtype is added to the base output (promoting the sum) and cast back to x's dtype.

The backward, at the mm's node: the output's gradient cast to the adapter dtype (and back
to x's for the base output's branch when the dtypes differ), the input cast's gradient
(T × in) and ΔW's (out × in), ΔW and the cast still kept; then ΔW's gradient times W, the
product's gradient (out × in), beside ΔW's. Measured alone (one peft HiRA Linear, 512 ×
256, r 8, 128 tokens, tests/test_hira.py): exactly these.

Not modelled (refused): a 4-bit or 8-bit base (peft tuners/hira/bnb.py dequantises the
weight for the product: ``--quant`` is LoRA's), hira_dropout, Conv layers and GPT-2's
Conv1D, autocast.
"""

from __future__ import annotations

from collections.abc import Callable

from ftmem.adapters.lycoris import _delta_saved, _sizes, delta_bytes
from ftmem.arch import Linear
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side

InBytes = Callable[[Linear], int]  # a linear's input element size (LinearOp.input_bytes)


@register("hira")
class HiRA:
    """The HiRA adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """What F.linear keeps of each HiRA linear: its input cast and, when the input
        needs a gradient, ΔW (lycoris._delta_saved). Returns the items and whether one
        keeps the shared input itself (no cast)."""
        out: list[Saved] = []
        reads_input = False
        for lin in (lin for lin in linears if lin.module in state.hira):
            items, reads = _delta_saved(ctx, lin, side, in_grad, in_bytes, "HiRA")
            out += [x._replace(kind=Kind.HIRA) for x in items]
            reads_input = reads_input or reads
        return out, reads_input

    @staticmethod
    def forward_build(plan: MethodPlan, T: int, in_bytes: InBytes, e: int, kept: bool) -> int:
        """The largest HiRA forward beyond the block's kept tensors (when it keeps them,
        ``kept``: ΔW and the input cast are then counted there): the product B A, ΔW, the
        input cast and the base output (x's dtype, ``e``) with, when ΔW is kept, the
        adapter's output and the promoted sum (T × out each, the adapter dtype); when it is
        not, the larger of that moment without ΔW (freed after F.linear) and F.linear's
        with ΔW and its output."""
        de = delta_bytes(plan)
        held = [0]
        for lin, (w, cast) in zip(plan.hira, _sizes(plan.hira, de, T, in_bytes), strict=True):
            out, base = T * lin.out_features * de, T * lin.out_features * e
            if kept:
                held.append(w + base + 2 * out)
            else:
                held += [2 * w + cast + base + out, w + cast + base + 2 * out]
        return max(held)

    @staticmethod
    def backward_moment(plan: MethodPlan, T: int, in_bytes: InBytes, e: int) -> int:
        """The largest HiRA backward beyond the block's kept tensors: at the mm's node the
        output's gradient in the adapter dtype and its cast back for the base branch (when
        x's dtype differs), the input cast's gradient and ΔW's; after it (ΔW and the cast
        freed) ΔW's gradient and the product's."""
        de = delta_bytes(plan)
        held = [0]
        for lin, (w, cast) in zip(plan.hira, _sizes(plan.hira, de, T, in_bytes), strict=True):
            grads = T * lin.out_features * (de + e) if in_bytes(lin) != de else 0
            held += [grads + T * lin.in_features * de + w, 2 * w - w - cast]
        return max(held)
