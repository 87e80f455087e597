"""peft's OFT on a linear: its input rotated block by block by orthogonal blocks rebuilt
from their skew-symmetric parts in every forward.

What runs (huggingface/peft src/peft/tuners/oft/layer.py ``Linear.forward`` and
``OFTRotationModule.forward``, the same in memory at 0.21.2 and at
5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, the MetaMathQA release), x in the base dtype:

- ``_cast_input_dtype``: x cast to the adapter dtype (fp32 with peft's fp32 adapters), a
  copy per adapted linear, which the rotation's bmm keeps (x itself, shared, without a cast).
- ``_cayley_batch``: the skew-symmetric blocks Q (blocks × side × side), then with the
  Cayley-Neumann series (default, 5 terms) R = I + 2Q + 2Q² + … built in place, whose
  bmm's keep Q and its powers (max(2, terms − 2) matrices); with the exact solve the
  solve's LU, pivots and result (R itself).
- ``einsum("...rk,rkc->...rc")``: one bmm over the blocks keeping x (cast) and R (when x
  needs a gradient); its output is permuted back and copied by ``reshape``, then cast to
  x's dtype for the frozen linear, which keeps nothing.

Under autocast (``cast``: fp32 adapters, 16-bit compute) the rotation's matmuls run in the
16-bit dtype: ``bmm`` is in CUDA's and the CPU's lower-precision lists, ``einsum`` in CUDA's
(the CPU's decomposes it into a bmm, which casts the same operands); ``linalg.solve`` is in
neither CUDA list (the CPU's fp32 list), so the exact solve runs on its fp32 inputs alike
(torch 2.13.0 aten/src/ATen/autocast_mode.cpp, registrations checked in tests/test_oft.py).
So each series bmm keeps two fresh 16-bit casts (Q is no leaf: autocast caches no cast of
it), the einsum keeps 16-bit casts of x and R, and its 16-bit output is copied back to
the adapter dtype (``x_rotated.to(required_dtype)``) before the frozen linear.

Not modelled: ``coft``'s projection (no-grad, block-sized), the Conv2d and Embedding
layers.
"""

from __future__ import annotations

from itertools import pairwise

from ftmem.adapters.boft import x_bytes
from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan, oft_blocks
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

INDEX_BYTES = 8  # the int64 rows and cols buffers


def autocast_cast(plan: MethodPlan) -> int:
    """The 16-bit element size autocast casts the rotation's matmul operands to, or 0 where
    they run in the adapter dtype (no autocast, or 16-bit adapters)."""
    dt = plan.dtypes
    e = BYTES_PER_ELEMENT[dt.compute]
    return e if dt.autocast and BYTES_PER_ELEMENT[dt.adapter] != e else 0


def cayley_kept(run: RunConfig, lin: Linear, ab: int, cast: int = 0) -> int:
    """Bytes the Cayley parametrisation keeps (cayley_bytes) for one OFT linear."""
    blocks, side = oft_blocks(lin, run)
    terms, share = run.oft[4], run.oft[3]
    return cayley_bytes(terms, 1 if share else blocks, side, ab, cast)


def cayley_bytes(terms: int, made: int, side: int, ab: int, cast: int = 0) -> int:
    """Bytes the Cayley parametrisation of ``made`` side × side blocks keeps: Q and its
    powers for the Neumann series' matmuls (``terms``), or with 0 terms the exact solve's
    LU, pivots (int32) and result. peft's OFT and PSOFT build it alike (tuners/oft/layer.py
    ``_cayley_batch``, tuners/psoft/layer.py ``OrthLayer.get_matrix``). Under autocast
    (``cast``: the 16-bit element size) each of the series' max(2, terms − 2) bmm's keeps
    its own casts of both operands; the solve runs in fp32 (the module docstring)."""
    square = made * side * side * ab
    if terms == 0:
        return 3 * square + made * side * 4
    if terms <= 2:
        return 0
    if cast:
        return 2 * max(2, terms - 2) * made * side * side * cast
    return max(2, terms - 2) * square


def rotation_kept(run: RunConfig, lin: Linear, ab: int, cast: int = 0) -> int:
    """R as the einsum keeps it: its own tensor, but under the exact solve without
    block_share (then it is the solve's result, counted there); under autocast its
    16-bit cast."""
    blocks, side = oft_blocks(lin, run)
    _, _, _, share, terms = run.oft
    if cast:
        return blocks * side * side * cast
    return 0 if terms == 0 and not share else blocks * side * side * ab


def rotation_local(run: RunConfig, lin: Linear, ab: int) -> int:
    """R in the adapter dtype while the forward runs, beside its kept 16-bit cast (autocast):
    the series' R (or the solve's result, kept) and, with block_share, its repeat."""
    blocks, side = oft_blocks(lin, run)
    _, _, _, share, terms = run.oft
    made = 0 if terms == 0 else (1 if share else blocks) * side * side * ab
    return made + (blocks * side * side * ab if share else 0)


def buffer_bytes(plan: MethodPlan, run: RunConfig, layers: int) -> int:
    """The int64 rows and cols index buffers (side·(side − 1)/2 each) per adapted linear,
    in each block holding it."""
    total = 0
    for lin in plan.block_rotated:
        side = oft_blocks(lin, run)[1]
        blocks = lin.count(layers)
        total += blocks * 2 * side * (side - 1) // 2 * INDEX_BYTES
    return total


@register("oft")
class OFT:
    """The OFT adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """What each OFT adapter keeps (the module docstring). Returns the items and
        whether an adapter keeps the shared input (no cast)."""
        ab, cast = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter], autocast_cast(ctx.plan)
        xe = cast or ab  # the dtype the einsum reads x in
        out: list[Saved] = []
        reads_input = False
        for lin in linears:
            if lin.module not in state.block_rotated:
                continue
            items = [("Cayley blocks", cayley_kept(ctx.run, lin, ab, cast))]
            if cast or in_bytes != ab:  # autocast casts even peft's own cast again
                items.append((f"input cast to {xe * 8}-bit", ctx.tokens * lin.in_features * xe))
            else:
                reads_input = True
            if in_grad:
                items.append(("rotation blocks", rotation_kept(ctx.run, lin, ab, cast)))
            out += [
                Saved(f"{lin.label} OFT {what}", b, Kind.OFT, side, (lin,))
                for what, b in items
                if b
            ]
        return out, reads_input

    @staticmethod
    def forward_build(plan: MethodPlan, run: RunConfig, T: int, xb: int, kept: bool) -> int:
        """The largest OFT forward beyond what it keeps: the bmm's output beside its
        reshaped copy; then the copy, its cast to x's dtype and the frozen output. Without
        a graph (checkpointing: ``kept`` false) the input cast and the rotation blocks are
        held too, and beside a cast the caller's input (the norm's output, the MLP's
        product) is kept by nothing else. Measured on one peft OFT linear alone: 2·T·in·4 beyond the kept, fp32
        adapters, bf16 and fp32 bases."""
        ab = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        if autocast_cast(plan):
            return _autocast_forward(plan, run, T, kept)
        held = [0]
        for lin in plan.block_rotated:
            n, o = lin.in_features, lin.out_features
            cast = T * n * xb if xb != ab else 0
            blocks, side = oft_blocks(lin, run)
            unkept = 0 if kept else (T * n * ab if cast else 0) + blocks * side * side * ab
            # the caller's input, alive through the call: kept by nothing when the adapter
            # copies it to its dtype, but o's (the attention kernel keeps its output)
            unkept += cast if "o" not in lin.roles else 0
            held += [2 * T * n * ab + unkept, T * n * ab + cast + T * o * xb + unkept]
        return max(held)

    @staticmethod
    def backward_moment(plan: MethodPlan, run: RunConfig, T: int, xb: int) -> int:
        """The largest OFT backward beyond the kept tensors, at the rotation's bmm: the
        gradient of the rotated input in the adapter dtype, x's and R's gradients, beside
        the frozen output's gradient. Measured on one peft OFT linear alone (bf16 and fp32
        bases, in 256 and 512): exact."""
        ab = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        if autocast_cast(plan):
            return _autocast_backward(plan, run, T)
        held = [0]
        for lin in plan.block_rotated:
            n, o = lin.in_features, lin.out_features
            blocks, side = oft_blocks(lin, run)
            held.append(2 * T * n * ab + blocks * side * side * ab + T * o * xb)
        return max(held)


def _weight_cast(plan: MethodPlan, lin: Linear) -> int:
    """The frozen weight's 16-bit copy autocast keeps (counted with the block's kept)."""
    return lin.in_features * lin.out_features * 2 if plan.dtypes.casts_weights else 0


def _autocast_forward(plan: MethodPlan, run: RunConfig, T: int, kept: bool) -> int:
    """OFT.forward_build under autocast: at ``x_rotated.to(required_dtype)`` peft's cast of
    x to the adapter dtype, R in it (rotation_local), the einsum's 16-bit output, its
    reshaped copy and their adapter-dtype copy (the frozen weight's cast, kept, not made
    yet); at the frozen linear that copy, its cast back to x's dtype, autocast's 16-bit
    input cast and the output, then the output's cast to x's dtype. Without a graph the
    einsum's casts are freed after its bmm, and the caller's input is kept by nothing else
    (but o's). Measured on one peft OFT linear alone (tests/test_oft.py)."""
    ab, e = BYTES_PER_ELEMENT[plan.dtypes.adapter], autocast_cast(plan)
    held = [0]
    for lin in plan.block_rotated:
        n, o, xb = lin.in_features, lin.out_features, x_bytes(plan, lin)
        local = (T * n * ab if xb != ab else 0) + rotation_local(run, lin, ab)
        caller = T * n * xb if not kept and "o" not in lin.roles else 0
        before = 0 if not kept else _weight_cast(plan, lin)
        if not kept:  # the einsum's bmm with its fresh casts of x and R
            blocks, side = oft_blocks(lin, run)
            held.append(local + 2 * T * n * e + blocks * side * side * e + caller)
        held.append(local + 2 * T * n * e + T * n * ab - before + caller)
        back = (T * n * xb if xb != ab else 0) + (T * n * e if xb != e else 0)
        out = T * o * e + (T * o * xb if xb != e else 0)
        held.append(T * n * ab + max(back + T * o * e, out) + caller)
    return max(held)


def _autocast_backward(plan: MethodPlan, run: RunConfig, T: int) -> int:
    """OFT.backward_moment under autocast, beside the output's gradient: the rotated
    input's gradient as each cast of the forward hands it on (16-bit from the frozen
    matmul, x's dtype, the adapter dtype, 16-bit for the einsum; two at a time), then at
    peft's reshape the adapter-dtype gradient of x beside its copy and R's, the einsum's
    casts freed; the frozen weight's cast is freed after its matmul's node. Measured on
    one peft OFT linear alone (tests/test_oft.py)."""
    ab, e = BYTES_PER_ELEMENT[plan.dtypes.adapter], autocast_cast(plan)
    held = [0]
    for lin in plan.block_rotated:
        n, o, xb = lin.in_features, lin.out_features, x_bytes(plan, lin)
        blocks, side = oft_blocks(lin, run)
        square = blocks * side * side
        chain = [e] + ([xb] if xb != e else []) + ([ab] if xb != ab else []) + [e]
        pairs = max(a + b for a, b in pairwise(chain))
        freed = _weight_cast(plan, lin)
        held.append(T * n * pairs - freed + T * o * xb)
        at_reshape = 2 * T * n * ab + square * ab - T * n * e - square * e
        held.append(at_reshape - freed + T * o * xb)
    return max(held)


def offloaded_chain(plan: MethodPlan, run: RunConfig, lin: Linear, T: int) -> int:
    """One OFT linear's Cayley backward with activations offloaded: the Neumann series'
    bmm nodes each bring back their two operands beside their gradients and the sum's.
    Traced on one peft OFT linear (bf16 base, fp32 adapter; 3, 4, 5 and 7 terms; in 96
    and 160, 8 and 37 tokens): seven blocks-sized (blocks × side², the adapter dtype)
    tensors at the chain's largest node beside x's gradient in the adapter dtype
    (T·in); under autocast (fp32 base) nine in the 16-bit dtype. The exact solve (0
    terms) and a shared block are not traced: the same count is taken."""
    ab, cast = BYTES_PER_ELEMENT[plan.dtypes.adapter], autocast_cast(plan)
    blocks, side = oft_blocks(lin, run)
    made = 1 if run.oft[3] else blocks
    square = made * side * side
    return (9 * square * cast if cast else 7 * square * ab) + T * lin.in_features * ab
