"""peft's BEFT on a linear: a trained bias vector added to the frozen linear's output.

What runs (huggingface/peft src/peft/tuners/beft/layer.py ``Linear.forward``, the same in
0.21.2 and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40), beft_bias (1 × out) in the
adapter dtype; the base output in the compute dtype (16-bit under autocast: linear is
lower precision on CUDA's list as on the CPU's; the add and the cast are on neither):

- ``result = self.base_layer(x)``: the base output (T × out, compute dtype);
- ``result = (result + beft_bias).to(orig_dtype)``: the sum is a new tensor in the
  promoted dtype (fp32 when a 16-bit output meets an fp32 or other-16-bit bias), cast
  back to the output's dtype when promoted; the base output stays referenced by
  ``result`` until the cast returns.

Nothing is saved for backward: the add keeps no tensor (its bias gradient is a sum over
tokens of the output gradient), the cast none; the frozen weight keeps its input only if
that weight trains. The block's later ops keep the cast output as they would the base
output (the same size). In backward, a promoted sum's ``ToCopyBackward0`` turns the output
gradient into fp32 (T × out × 4), the add's backward sums it into the bias gradient
(1 × out) and, where the input needs a gradient, casts it back (T × out × e).

Measured alone (one peft BEFT Linear, bf16 and fp32 bases, fp32 and bf16 biases, the input
with and without a gradient, and an fp32 base under autocast; tests/test_beft.py): exactly
these. Not modelled (refused): GPT-2's Conv1D (peft wraps only nn.Linear).
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Saved, Side


def promoted(plan: MethodPlan) -> bool:
    """Whether ``result + beft_bias`` promotes a 16-bit output to fp32 (torch's type
    promotion: bf16 with fp32, or bf16 with fp16, gives fp32; equal dtypes stay)."""
    compute, adapter = plan.dtypes.compute, plan.dtypes.adapter
    return BYTES_PER_ELEMENT[compute] == 2 and adapter != compute


@register("beft")
class BEFT:
    """The BEFT biases on a group of linears."""

    @staticmethod
    def saved(
        ctx: LayerContext, linears: list[Linear], state: BlockState, side: Side
    ) -> list[Saved]:
        """Nothing: the add and the cast keep no tensor (see the module's docstring)."""
        return []

    @staticmethod
    def forward_transient(plan: MethodPlan, lin: Linear, T: int, e: int) -> int:
        """A BEFT linear's forward at its cast, whole: the base output, the sum (fp32 when
        promoted) and, when promoted, the cast (T × out each)."""
        if not promoted(plan):
            return 2 * T * lin.out_features * e
        return T * lin.out_features * (e + 4 + e)

    @staticmethod
    def forward_build(plan: MethodPlan, T: int, e: int, kept: bool) -> int:
        """The largest BEFT forward beyond the block's kept tensors when it keeps them
        (``kept``: the output, T × out × e, is what the block's next op keeps of it), else
        whole."""
        held = [0]
        for lin in plan.beft:
            own = T * lin.out_features * e if kept else 0
            held.append(BEFT.forward_transient(plan, lin, T, e) - own)
        return max(held)

    @staticmethod
    def backward_moment(plan: MethodPlan, T: int, e: int) -> int:
        """The largest BEFT backward beyond the output gradient that reaches it: the fp32
        copy of that gradient when promoted and the gradient cast back for the base
        layer's input (T × out × e; counted always: only the first block's input has no
        gradient), the bias gradient (out × the adapter's bytes)."""
        ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        moments = [0]
        for lin in plan.beft:
            o = lin.out_features
            copy = T * o * (4 + e) if promoted(plan) else 0
            moments.append(copy + o * ae)
        return max(moments)
