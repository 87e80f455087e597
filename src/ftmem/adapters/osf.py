"""peft's OSF (orthogonal subspace fine-tuning) on a linear: the weight's SVD split at wrap
time, the low singular directions trained beside their frozen copies, run as two rank-2t
linears on the input every forward.

What runs (huggingface/peft src/peft/tuners/osf/layer.py ``Linear.forward``,
``OSFLayer.update_layer`` and ``_attach_hooks``, utils.py ``decompose_weight_matrix``, the
same at 0.21.2 and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40), m = min(out, in), k the
frozen ("high") rank, t = m − k the trained one, x in the base dtype (no autocast: refused),
U_low (out × t), S_low (t), V_low (t × in) trained and their frozen copies as buffers, all in
the adapter dtype (peft's fp32 on a 16-bit base):

- ``A = cat([U_low * S_low, -(U_low_init * S_low_init)], 1)``: out × 2t, kept by the second
  linear; its two halves (out × t each) live while the cat runs.
- ``B = cat([V_low, V_low_init], 0)``: 2t × in, kept by the first linear when x needs a
  gradient.
- ``x_cast`` (a copy when x's dtype differs, kept), ``h = F.linear(x_cast, B)`` (T × 2t,
  kept), ``F.linear(h, A)`` (T × out), cast back and added to the base output.

Backward, first at the second linear's node: the output gradient's cast (16-bit base), A's
gradient and h's (A and h still kept); then the first linear's: B's gradient and the input
cast's. The gradient hooks project U_low's and V_low's gradients (out × t and t × in
temporaries, below those moments at real size). Measured alone (one peft OSF Linear, out
above, below and equal to in, 8 to 512 tokens, fp32 and bf16 bases, the input with and
without a gradient; tests/test_osf.py): kept, forward peak and the two node moments exactly
these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side

if TYPE_CHECKING:
    from collections.abc import Callable

    from ftmem.methods import MethodPlan
    from ftmem.ops.context import BlockState, LayerContext
    from ftmem.precision import Dtypes
    from ftmem.run import RunConfig


def trained_rank(lin: Linear, rank: int | None) -> int:
    """t, the trained rank: ``--osf-rank`` (below min(out, in): methods.osf_linears), or
    peft's default min(out, in) − min(out, in) // 2 (peft 0.21.2 tuners/osf/model.py
    ``_resolve_rank``: effective_rank None keeps half the smaller side frozen)."""
    m = min(lin.in_features, lin.out_features)
    return m - m // 2 if rank is None else rank


def shapes(lin: Linear, rank: int | None) -> dict[str, tuple[int, ...]]:
    """The trained U_low, S_low, V_low of one linear (peft 0.21.2 tuners/osf/layer.py
    update_layer)."""
    t = trained_rank(lin, rank)
    return {"U_low": (lin.out_features, t), "S_low": (t,), "V_low": (t, lin.in_features)}


def gradient_storage(lin: Linear, rank: int | None, name: str, dtypes: Dtypes) -> int:
    """Elements of the storage V_low's gradient holds where peft's adapter-dtype cast ran
    (a 16-bit base, fp32 adapters), 0 elsewhere (its own size).

    The cast replaces U_low and V_low with new Parameters (peft 0.21.2
    tuners/tuners_utils.py ``cast_adapter_dtype``, the ``submodule[adapter_name] =
    ....to(torch.float32)`` branch), so the projection hooks update_layer registered on
    the old ones never run. V_low's gradient is then the slice CatBackward hands it of B's
    (2t × in) gradient: rows 0..t, contiguous at offset 0, so AccumulateGrad keeps that
    view as ``.grad`` (torch/csrc/autograd/functions/accumulate_grad.h: a gradient obeying
    the parameter's layout is stolen, not copied), and with it the whole 2t × in storage,
    V_low_init's half included. Where the hooks run (no cast) the projection returns a new
    t × in tensor. Measured: tests/test_osf.py."""
    if name != "V_low" or dtypes.adapter == dtypes.base:
        return 0
    return 2 * trained_rank(lin, rank) * lin.in_features


def buffer_bytes(plan: MethodPlan, run: RunConfig, layers: int) -> int:
    """Per linear the frozen copies U_low_init, S_low_init, V_low_init and the high factor
    on the longer side (U_high, out × k, where out > in; V_high, k × in, where out < in;
    neither on a square weight), in the adapter dtype (measured: peft's adapter-dtype cast
    takes the BufferDicts too), and the SVD's storage its trained factors keep
    (:func:`kept_svd_storage`), in each block holding it."""
    if run.method != "osf":
        return 0
    de = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    total = 0
    for lin in plan.osf:
        t = trained_rank(lin, run.osf_rank)
        k = min(lin.in_features, lin.out_features) - t
        high = (
            k * max(lin.in_features, lin.out_features) if lin.in_features != lin.out_features else 0
        )
        kept = kept_svd_storage(lin, k, plan.dtypes, run.device)
        blocks = lin.count(layers)
        total += blocks * (t * (lin.in_features + lin.out_features + 1) + high + kept) * de
    return total


def kept_svd_storage(lin: Linear, k: int, dtypes: Dtypes, device: str) -> int:
    """Elements of the SVD's outputs that S_low and V_low keep beyond their own on an fp32
    base (k the frozen rank).

    peft builds them as ``S[k:].contiguous().detach().to(device, dtype=orig_dtype)`` and
    ``Vt[k:, :]...`` (peft 0.21.2 tuners/osf/utils.py decompose_weight_matrix): where the
    slice is already contiguous and the dtype is the weight's, every call returns the view,
    so the Parameter keeps the whole output. S (min(out, in)) is always contiguous: its k
    high values stay. Vh is F-contiguous from LAPACK (the CPU) but C-contiguous from
    cuSOLVER (pytorch aten/src/ATen/native/BatchLinearAlgebra.cpp TORCH_META_FUNC
    (_linalg_svd): Vh's strides f-contig = !use_cusolver, at 2d3a1eca8837), so on CUDA
    V_low keeps Vh's k high rows too; where out < in those rows are V_high's own buffer,
    the same storage, already counted. A 16-bit base copies in ``.to(orig_dtype)``: none."""
    if dtypes.base != "fp32":
        return 0
    rows = k * lin.in_features if device == "cuda" and lin.out_features >= lin.in_features else 0
    return k + rows


def _sizes(
    plan: MethodPlan, run: RunConfig, lin: Linear, T: int, in_bytes: int
) -> tuple[int, int, int, int]:
    """A's, B's, h's and the input cast's bytes (the cast 0 where x is in the adapter dtype)."""
    de = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    t2 = 2 * trained_rank(lin, run.osf_rank)
    cast = T * lin.in_features * de if in_bytes != de else 0
    return lin.out_features * t2 * de, t2 * lin.in_features * de, T * t2 * de, cast


@register("osf")
class OSF:
    """The OSF adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """What each OSF linear keeps: A and h (the second linear), the input cast and, when
        the input needs a gradient, B (the first). Returns the items and whether one keeps
        the shared input itself (no cast)."""
        out: list[Saved] = []
        mine = [lin for lin in linears if lin.module in state.osf]
        reads_input = False
        for lin in mine:
            a, b, h, cast = _sizes(ctx.plan, ctx.run, lin, ctx.tokens, in_bytes)
            size = a + h + cast + (b if in_grad else 0)
            out.append(Saved(f"{lin.label} OSF A, h, B, input cast", size, Kind.OSF, side, (lin,)))
            reads_input = reads_input or not cast
        return out, reads_input

    @staticmethod
    def forward_build(
        plan: MethodPlan,
        run: RunConfig,
        T: int,
        in_bytes: Callable[[Linear], int],
        e: int,
        kept: bool,
    ) -> int:
        """The largest OSF forward, whole or beyond the block's kept tensors when it keeps
        them (``kept``: A, B, h and the cast are counted there): A's cat (its two halves
        and A beside the base output) or the output's sum (A, B, the cast, h, the base
        output, the product, its cast back and the sum).

        A's cat runs before this linear's kept tensors exist and before those of the OSF
        linears after it in the block (plan.osf is in forward order): beyond the whole
        block's kept tensors it is less their A, h and cast (B is kept only where the
        input needs a gradient: not subtracted)."""
        de = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        sizes = [_sizes(plan, run, lin, T, in_bytes(lin)) for lin in plan.osf]
        later = 0  # the A, h and cast of this linear and those after it, when kept
        held = [0]
        for lin, (a, b, h, cast) in reversed(list(zip(plan.osf, sizes, strict=True))):
            later += a + h + cast if kept else 0
            t = T * lin.out_features
            back = t * e if e != de else 0
            less = a + b + h + cast if kept else 0
            held += [t * e + 2 * a - later, a + b + h + cast + t * (2 * e + de) + back - less]
        return max(held)

    @staticmethod
    def backward_moment(
        plan: MethodPlan, run: RunConfig, T: int, in_bytes: Callable[[Linear], int], e: int
    ) -> int:
        """The largest OSF backward beyond the block's kept tensors (its input needing a
        gradient): the second linear's node (the output gradient's cast, A's and h's
        gradients) or the first's (B's and the input cast's gradients, A's and h's
        gradients in place of A and h)."""
        de = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        held = [0]
        for lin in plan.osf:
            a, b, h, _ = _sizes(plan, run, lin, T, in_bytes(lin))
            grad = T * lin.out_features * de if e != de else 0
            held += [grad + a + h, b + T * lin.in_features * de]
        return max(held)

    @staticmethod
    def offloaded_backward(
        plan: MethodPlan, run: RunConfig, lin: Linear, T: int, x: int, e: int
    ) -> int:
        """One OSF linear's backward with activations offloaded (``x``: its input's
        element size): each node holds what it unpacked beside what backward_moment
        counts. The second linear's node: A and h back beside their gradients and the
        output gradient's cast; the first's: B and the input cast (or the input itself)
        back beside their gradients, with A's and h's made. Traced on one peft OSF linear
        offloaded (bf16, 96 × 96, 8 tokens): the mm nodes' 119,808 B exactly; the factors'
        MulBackward0 after them holds 10,944 B more, beside their gradients as they are
        made, which the step counts beside this moment (offloaded_own_gradients)."""
        de = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        a, b, h, cast = _sizes(plan, run, lin, T, x)
        grad = T * lin.out_features * de if e != de else 0
        first = a + h + 2 * b + T * lin.in_features * de + (cast or T * lin.in_features * x)
        return max(grad + 2 * (a + h), first)
