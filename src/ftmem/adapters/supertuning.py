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

Supra (``r`` set: ``--supertuning-r``), the same forward then, per linear::

    x_dropped = dropout(x).to(lora_A.weight.dtype)    # the input's cast (adapter dtype)
    lora_out = lora_B(lora_A(x_dropped))              # T × r kept; T × out, adapter dtype
    result = result + ((alpha / r) * lora_out).to(result.dtype)

lora_A keeps the input's cast (the input itself where the dtypes agree) and lora_B its
T × r input. Every local of the forward lives until it returns (``lora_out``, the values'
cast; in a graph-less forward W', the int64 index and the input's cast too). Its backward
runs the LoRA branch first (the later nodes), then the sparse branch beside A's and B's
gradients and the LoRA branch's input gradient (supra_backward).

Not modelled (refused): Supra's dropout, autocast, DeepSpeed's and FSDP's 16-bit casts,
and Conv1D models.
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
        lin.count(layers) * supertuning_values(lin, sparsity) * BUFFER_INDEX_BYTES
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
        gradient, W' (base dtype); Supra's lora_A output (T × r) and the input's cast to
        the adapter dtype where it differs. Every one keeps the shared input itself
        (returned True when one is present)."""
        we = BYTES_PER_ELEMENT[ctx.plan.dtypes.base]
        ae = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter]
        r = ctx.run.supertuning_r
        out: list[Saved] = []
        for lin in (lin for lin in linears if lin.module in state.supertuning):
            items = [("int64 index", _entries(ctx.run, lin) * INDEX_BYTES)]
            if in_grad:
                items.append(("rebuilt weight", lin.in_features * lin.out_features * we))
            if r:
                items.append(("Supra lora_A output", ctx.tokens * r * ae))
            if r and in_bytes != ae:
                items.append(("Supra input cast", ctx.tokens * lin.in_features * ae))
            out += [
                Saved(f"{lin.label} Super-Tuning {what}", size, Kind.SUPERTUNING, side, (lin,))
                for what, size in items
            ]
        return out, bool(out)

    @staticmethod
    def build(run: RunConfig, plan: MethodPlan, T: int, kept: bool) -> int:
        """The largest rebuild in a forward, beyond what the block keeps of it and the
        linear's output (``kept``: the top block's, its input needing a gradient; not a
        checkpointed or frozen block). At scatter_add: the int64 index, the values' cast
        to the base dtype (where it differs) and W'; with Supra, its input cast and
        output-wide tensors after (supra_build), the values' cast and, graph-less, W' and
        the index still live (the forward's locals). Measured alone: exactly these."""
        return max(
            (Supertuning.linear_build(run, plan, lin, T, kept) for lin in plan.supertuning),
            default=0,
        )

    @staticmethod
    def linear_build(run: RunConfig, plan: MethodPlan, lin: Linear, T: int, kept: bool) -> int:
        """One linear's build (build)."""
        dt = plan.dtypes
        we, ae = BYTES_PER_ELEMENT[dt.base], BYTES_PER_ELEMENT[dt.adapter]
        n, w = _entries(run, lin), lin.in_features * lin.out_features
        made = n * INDEX_BYTES + w * we
        if run.supertuning_r:
            made += T * lin.in_features * ae if ae != we else 0  # (the input's cast)
        own = made if kept else 0  # what the block keeps of them
        if run.supertuning_r:
            made += Supertuning.supra_build(lin, T, we, ae)
        return made + (n * we if ae != we else 0) - own

    @staticmethod
    def nograd_forward(run: RunConfig, plan: MethodPlan, lin: Linear, T: int) -> int:
        """One linear's forward without a graph (a checkpointed block's first forward) at
        its largest, beyond its input (held by the caller): the graph-less build with the
        linear's output (T × out, base dtype)."""
        out = T * lin.out_features * BYTES_PER_ELEMENT[plan.dtypes.base]
        return Supertuning.linear_build(run, plan, lin, T, False) + out

    @staticmethod
    def supra_build(lin: Linear, T: int, we: int, ae: int) -> int:
        """Supra's output-wide tensors beyond the linear's output (T × out, base dtype):
        at the cast, the sparse result, lora_out, its scaled copy and their cast (where
        the dtypes differ), less the output not yet made; at the sum, the result,
        lora_out and the cast (else the scaled copy) beside the output."""
        out = T * lin.out_features
        cast = out * we if ae != we else 0
        return max(2 * out * ae + cast, out * we + out * ae + (cast or out * ae))

    @staticmethod
    def backward_own(plan: MethodPlan, run: RunConfig, lin: Linear, T: int, in_grad: bool) -> int:
        """One Super-Tuning linear's backward at its largest, beyond what its forward kept
        and the output gradient it is handed, the adapter's gradients included. Supra's
        LoRA branch first (supra_backward); then three moments, beside what that branch
        left:

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
        lora, left = Supertuning.supra_backward(run, lin, T, in_grad, we, ae, e)
        return max(lora, left + max(at_mm, at_gather, at_cast))

    @staticmethod
    def supra_backward(
        run: RunConfig, lin: Linear, T: int, in_grad: bool, we: int, ae: int, e: int
    ) -> tuple[int, int]:
        """Supra's LoRA branch, run first: its largest moment, and what it leaves for the
        sparse branch (A's and B's gradients and the input's, less the input cast and
        lora_A output it frees). Moments: the output gradient's cast to the adapter dtype
        (where it differs) beside the scaled gradient; B's mm (that gradient, B's and
        lora_A output's gradients); A's mm, lora_A's output freed (B's, A's and the cast
        input's gradients); the input's cast freed, its gradient cast back (where the
        dtypes differ).
        Measured (one peft Supra Linear on the CPU): exact, tests/test_supertuning.py."""
        r = run.supertuning_r
        if not r:
            return 0, 0
        i, o = lin.in_features, lin.out_features
        c = ae != we
        grads = (o * r + r * i) * ae  # B's and A's gradients
        gx_lora = T * i * ae if in_grad else 0
        moments = (
            (T * o * ae if c else 0) + T * o * ae,
            T * o * ae + o * r * ae + T * r * ae,
            grads + gx_lora,  # (lora_A output freed, its gradient in its place)
            grads + gx_lora + T * i * (e - ae) - T * r * ae if in_grad and c else 0,
        )
        left = grads + (T * i * e if in_grad else 0) - T * r * ae - (T * i * ae if c else 0)
        return max(moments), left
