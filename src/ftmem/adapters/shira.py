"""peft's SHiRA on a linear: the weight rebuilt whole in every forward, what its mm and
sparse delta keep, and its backward.

What runs (huggingface/peft src/peft/tuners/shira/layer.py ``Linear.forward`` and
``get_delta_weight``, the same at 0.21.2 and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, the
MetaMathQA release)::

    new_weight = self.get_base_weight().clone()
    new_weight += torch.sparse_coo_tensor(shira_indices, shira_weight * scaling, (out, in))
    result = F.linear(x, new_weight, bias=self.base_layer.bias)

The base layer is never called: the clone W' (out × in, the base weight's dtype: the
in-place sum keeps it) replaces it. F.linear keeps the input x itself (W' needs a
gradient; no cast: x and W' share the base dtype) and, when x needs a gradient, W'.
``sparse_coo_tensor``'s node keeps its result: the indices as int64 (2 × n, converted from
peft's int32) and the scaled values (n, the adapter dtype): n·(16 + adapter bytes).

Backward (measured alone: one peft SHiRA Linear on the CPU, tests/test_shira.py): the mm
makes W's gradient (out × in, base dtype) and x's, then frees W'; the in-place sum casts
the gradient to the values' dtype (out × in, when it differs), and ``sparse_mask`` picks the
n values (int64 indices and values again) before the values' gradient.

Beside the weights: peft's indices, an int32 2 × n tensor per linear in a plain dict
(``shira_indices``), moved to the weights' device (index_bytes).

Not modelled: autocast (refused: RunConfig), a quantised base (peft's other branch, with a
zero out × in weight of its own; --quant is refused for this method). On CUDA, ``dense +=
sparse`` (aten add_out_dense_sparse_cuda) may coalesce the sparse tensor first: n values
and indices more, small beside W'.
"""

from __future__ import annotations

from ftmem.arch import Architecture, Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan, shira_linears, shira_values
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

INDEX_BYTES = 8  # int64, as sparse_coo_tensor keeps (and sparse_mask returns) indices


def index_bytes(arch: Architecture, run: RunConfig) -> int:
    """peft's int32 (2 × n) indices of every adapted linear, resident beside the weights."""
    r = run.shira[0]
    return sum(
        (arch.num_layers if lin.blocks is None else lin.blocks[1] - lin.blocks[0])
        * 2
        * shira_values(lin, r)
        * 4
        for lin in shira_linears(arch, run)
    )


def sparse_bytes(plan: MethodPlan, run: RunConfig, lin: Linear) -> int:
    """One sparse delta: int64 indices (2 × n) and the scaled values (adapter dtype)."""
    n = shira_values(lin, run.shira[0])
    return n * (2 * INDEX_BYTES + BYTES_PER_ELEMENT[plan.dtypes.adapter])


@register("shira")
class Shira:
    """The SHiRA adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """Per SHiRA linear: its sparse delta and, when the input needs a gradient, W';
        every one keeps the shared input itself (returned True when one is present)."""
        we = BYTES_PER_ELEMENT[ctx.plan.dtypes.base]
        out: list[Saved] = []
        reads = False
        for lin in (lin for lin in linears if lin.module in state.shira):
            own = (lin,)
            size = sparse_bytes(ctx.plan, ctx.run, lin)
            out.append(Saved(f"{lin.label} SHiRA sparse delta", size, Kind.SHIRA, side, own))
            if in_grad:
                size = lin.in_features * lin.out_features * we
                out.append(Saved(f"{lin.label} SHiRA rebuilt weight", size, Kind.SHIRA, side, own))
            reads = True
        return out, reads

    @staticmethod
    def build(run: RunConfig, plan: MethodPlan, kept: bool) -> int:
        """The largest rebuild in a forward: W' and the sparse delta, beyond what the block
        keeps of them (``kept``: the top block's, its input needing a gradient; not a
        checkpointed or frozen block). Measured alone: exactly these two."""
        we = BYTES_PER_ELEMENT[plan.dtypes.base]
        held = [
            0 if kept else lin.in_features * lin.out_features * we + sparse_bytes(plan, run, lin)
            for lin in plan.shira
        ]
        return max(held, default=0)

    @staticmethod
    def backward_own(plan: MethodPlan, run: RunConfig, lin: Linear, T: int, in_grad: bool) -> int:
        """One SHiRA linear's backward at its largest, beyond what its forward kept and the
        output gradient it is handed. Three moments:

        - the mm's node: W's gradient (out × in, base dtype) and x's (T × in) beside W';
        - W' freed, the gradient's cast to the values' dtype (when it differs);
        - the uncast gradient freed, sparse_mask's indices and values (sparse_bytes).

        Measured (one peft SHiRA Linear on the CPU, g held by the caller):
        tests/test_shira.py."""
        dt = plan.dtypes
        we, ae, e = (BYTES_PER_ELEMENT[d] for d in (dt.base, dt.adapter, dt.compute))
        w = lin.in_features * lin.out_features
        kept_w = w * we if in_grad else 0
        gx = T * lin.in_features * e if in_grad else 0
        cast = w * ae if ae != we else 0
        at_mm = w * we + gx
        at_cast = w * we + gx + cast - kept_w
        at_mask = (cast or w * we) + gx + sparse_bytes(plan, run, lin) - kept_w
        return max(at_mm, at_cast, at_mask)
