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

Under autocast (stop 47): the clone and the sparse sum run as above (add_ and
sparse_coo_tensor are in no autocast list on either device), and F.linear, lower
precision on CUDA and on the CPU, casts W' (no leaf: not cached) and the input to the
16-bit compute dtype where they differ from it and keeps the casts: a bf16 base (HF
Trainer's ``bf16=True`` on a bf16 model) runs exactly as without autocast; an fp32 base
(bf16-mixed) keeps W's 16-bit cast and one 16-bit input cast per linear, and its backward
casts W's 16-bit gradient up to fp32 before the sum's node (``kept_weight_bytes``). The
result stays in autocast's dtype (peft casts nothing back). The CPU measures CUDA's graph.

Not modelled: a quantised base (peft's other branch, with a
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
        lin.count(arch.num_layers) * 2 * shira_values(lin, r) * 4
        for lin in shira_linears(arch, run)
    )


def kept_weight_bytes(plan: MethodPlan) -> int:
    """Element size of the W' F.linear keeps: the compute dtype under autocast (its cast
    of W', or W' itself on a 16-bit base), else the base weight's."""
    dt = plan.dtypes
    return BYTES_PER_ELEMENT[dt.compute if dt.autocast else dt.base]


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
        """Per SHiRA linear: its sparse delta and, when the input needs a gradient, W'
        (kept_weight_bytes); every one keeps the shared input itself (returned True when
        one is present), or under autocast its own 16-bit cast of it where the input's
        dtype differs."""
        we = kept_weight_bytes(ctx.plan)
        cast = ctx.plan.dtypes.autocast and in_bytes != we
        out: list[Saved] = []
        reads = False
        for lin in (lin for lin in linears if lin.module in state.shira):
            own = (lin,)
            size = sparse_bytes(ctx.plan, ctx.run, lin)
            out.append(Saved(f"{lin.label} SHiRA sparse delta", size, Kind.SHIRA, side, own))
            if in_grad:
                size = lin.in_features * lin.out_features * we
                out.append(Saved(f"{lin.label} SHiRA rebuilt weight", size, Kind.SHIRA, side, own))
            if cast:
                size, what = ctx.tokens * lin.in_features * we, f"input cast to {we * 8}-bit"
                out.append(Saved(f"{lin.label} SHiRA {what}", size, Kind.SHIRA, side, own))
            reads = reads or not cast
        return out, reads

    @staticmethod
    def build(run: RunConfig, plan: MethodPlan, kept: bool) -> int:
        """The largest rebuild in a forward: W' and the sparse delta, beyond what the block
        keeps of them (``kept``: the top block's, its input needing a gradient; not a
        checkpointed or frozen block). Measured alone: exactly these two. Under autocast
        over an fp32 base, W' (fp32) beside its 16-bit cast, which is what is kept; in a
        graph-less forward the sparse delta is gone by the cast."""
        we, wk = BYTES_PER_ELEMENT[plan.dtypes.base], kept_weight_bytes(plan)
        held = []
        for lin in plan.shira:
            w, sparse = lin.in_features * lin.out_features, sparse_bytes(plan, run, lin)
            cast = w * wk if wk != we else 0
            made = w * we + (sparse + cast if kept else max(sparse, cast))
            held.append(made - (w * wk + sparse if kept else 0))
        return max(held, default=0)

    @staticmethod
    def backward_own(plan: MethodPlan, run: RunConfig, lin: Linear, T: int, in_grad: bool) -> int:
        """One SHiRA linear's backward at its largest, beyond what its forward kept and the
        output gradient it is handed. Three moments (four under autocast over an fp32
        base):

        - the mm's node: W's gradient (out × in, kept_weight_bytes) and x's (T × in)
          beside W';
        - under autocast over an fp32 base, W' and the input's 16-bit cast freed, that
          16-bit gradient beside its fp32 cast (autocast's cast node), x's gradient cast
          back to the input's dtype;
        - W' (and an input cast) freed, the gradient's cast to the values' dtype (when it
          differs);
        - the uncast gradient freed, sparse_mask's indices and values (sparse_bytes).

        Measured (one peft SHiRA Linear on the CPU, g held by the caller):
        tests/test_shira.py."""
        dt = plan.dtypes
        we, ae, e = (BYTES_PER_ELEMENT[d] for d in (dt.base, dt.adapter, dt.compute))
        w, wk = lin.in_features * lin.out_features, kept_weight_bytes(plan)
        kept_w = w * wk if in_grad else 0
        gx = T * lin.in_features * e if in_grad else 0
        cast = w * ae if ae != we else 0
        at_mm = w * wk + gx
        # the input's dtype (LinearOp.input_bytes: a norm's output, else the compute's)
        xe = e if set(lin.roles) & {"o", "down"} else dt.residual_bytes
        x_cast = T * lin.in_features * wk if dt.autocast and xe != wk else 0
        gx = gx * xe // e if x_cast else gx  # then x's gradient, cast back to its dtype
        at_up = w * (wk + we) + gx - kept_w - x_cast if wk != we else 0
        at_cast = w * we + gx + cast - kept_w - x_cast
        at_mask = (cast or w * we) + gx + sparse_bytes(plan, run, lin) - kept_w - x_cast
        return max(at_mm, at_up, at_cast, at_mask)
