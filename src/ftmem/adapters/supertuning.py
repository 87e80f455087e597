"""peft's Super-Tuning on a linear: its trained entries scatter-added onto the frozen
weight into a new weight in every forward, what that keeps, and its backward.

What runs (huggingface/peft src/peft/tuners/supertuning/layer.py at 0.21.2, ``Linear.forward``,
Super mode: ``r`` None)::

    dense_plus_sparse = weight.reshape(-1)                       # a view
    indices = self.supertuning_indices[name].to(torch.int64)     # n × 8 bytes, new
    values = self.supertuning_values[name].to(weight.dtype)      # a cast where dtypes differ
    dense_plus_sparse = dense_plus_sparse.scatter_add(0, indices, values)   # W', out × in
    result = F.linear(x, dense_plus_sparse.reshape_as(weight), bias)

n = ``int(out · in · (1 − sparsity))`` entries, chosen by ``torch.topk`` of |W| once, at
``update_layer`` (methods.supertuning_values). The base layer is never called. Beside
the weights: the int32 indices, one buffer of n per linear (a BufferDict, registered;
peft's dtype cast skips integer buffers), and the values parameter (n, the adapter dtype:
fp32 under peft's autocast_adapter_dtype).

What autograd keeps: scatter_add's node only its int64 index (the gradient of its source
is ``grad.gather(0, index)``; the frozen weight needs none), F.linear the input x (W'
needs a gradient) and, when x needs one, W' (out × in, the base dtype). Unlike SHiRA
(adapters.shira) there is no clone and no sparse COO tensor: n · 8 bytes a linear where
SHiRA keeps n · (16 + adapter bytes).

Backward (measured alone: one peft Super-Tuning Linear on the CPU, tests/test_supertuning.py):
the mm makes W's gradient (out × in, base dtype) and x's beside W'; then W' freed, the
gather's n values (base dtype) beside W's gradient; then that freed, their cast to the
values' dtype where it differs, which becomes the values' gradient.

Not modelled (refused): the Supra hybrid (``r`` set: fp32 LoRA A and B and the input's
fp32 cast per linear), autocast, DeepSpeed's and FSDP's 16-bit casts, and Conv1D models.
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan, supertuning_values
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

INDEX_BYTES = 8  # int64: the forward's ``.to(torch.int64)``, which scatter_add keeps
BUFFER_INDEX_BYTES = 4  # int32: peft's supertuning_indices buffer


def buffer_bytes(plan: MethodPlan, run: RunConfig, layers: int) -> int:
    """peft's int32 supertuning_indices (n per adapted linear), in each block holding it
    (``layers``: the model's)."""
    sparsity = run.supertuning[0]
    return sum(
        (layers if lin.blocks is None else lin.blocks[1] - lin.blocks[0])
        * supertuning_values(lin, sparsity)
        * BUFFER_INDEX_BYTES
        for lin in plan.supertuning
    )


def _entries(run: RunConfig, lin: Linear) -> int:
    return supertuning_values(lin, run.supertuning[0])


@register("supertuning")
class Supertuning:
    """The Super-Tuning adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """Per Super-Tuning linear: scatter_add's int64 index and, when the input needs a
        gradient, W' (base dtype); every one keeps the shared input itself (returned
        True when one is present)."""
        we = BYTES_PER_ELEMENT[ctx.plan.dtypes.base]
        out: list[Saved] = []
        for lin in (lin for lin in linears if lin.module in state.supertuning):
            own = (lin,)
            size = _entries(ctx.run, lin) * INDEX_BYTES
            out.append(
                Saved(f"{lin.label} Super-Tuning int64 index", size, Kind.SUPERTUNING, side, own)
            )
            if in_grad:
                size = lin.in_features * lin.out_features * we
                out.append(
                    Saved(
                        f"{lin.label} Super-Tuning rebuilt weight",
                        size,
                        Kind.SUPERTUNING,
                        side,
                        own,
                    )
                )
        return out, bool(out)

    @staticmethod
    def build(run: RunConfig, plan: MethodPlan, kept: bool) -> int:
        """The largest rebuild in a forward, beyond what the block keeps of it (``kept``:
        the top block's, its input needing a gradient; not a checkpointed or frozen
        block). At scatter_add: the int64 index, the values' cast to the base dtype
        (where it differs) and W'. Measured alone: exactly these."""
        dt = plan.dtypes
        we, ae = BYTES_PER_ELEMENT[dt.base], BYTES_PER_ELEMENT[dt.adapter]
        held = []
        for lin in plan.supertuning:
            n, w = _entries(run, lin), lin.in_features * lin.out_features
            cast = n * we if ae != we else 0
            made = n * INDEX_BYTES + cast + w * we
            held.append(made - (n * INDEX_BYTES + w * we if kept else 0))
        return max(held, default=0)

    @staticmethod
    def backward_own(plan: MethodPlan, run: RunConfig, lin: Linear, T: int, in_grad: bool) -> int:
        """One Super-Tuning linear's backward at its largest, beyond what its forward kept
        and the output gradient it is handed, the values' gradient included. Three
        moments:

        - the mm's node: W's gradient (out × in, base dtype) and x's (T × in) beside W';
        - W' freed, scatter_add's: the gather of n values (base dtype) beside W's
          gradient;
        - W's gradient freed, the gathered values cast to the values' dtype (where it
          differs), the values' gradient.

        Measured (one peft Super-Tuning Linear on the CPU, g held by the caller): exact,
        tests/test_supertuning.py."""
        dt = plan.dtypes
        we, ae, e = (BYTES_PER_ELEMENT[d] for d in (dt.base, dt.adapter, dt.compute))
        n, w = _entries(run, lin), lin.in_features * lin.out_features
        kept_w = w * we if in_grad else 0
        gx = T * lin.in_features * e if in_grad else 0
        at_mm = w * we + gx
        at_gather = w * we + gx + n * we - kept_w
        at_cast = gx + n * (we + ae) - kept_w if ae != we else 0
        return max(at_mm, at_gather, at_cast)
