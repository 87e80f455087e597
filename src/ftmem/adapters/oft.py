"""peft's OFT on a linear: its input rotated block by block by orthogonal blocks rebuilt
from their skew-symmetric parts in every forward.

What runs (huggingface/peft src/peft/tuners/oft/layer.py ``Linear.forward`` and
``OFTRotationModule.forward``, the same in memory at 0.21.2 and at
5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, the MetaMathQA release), x in the base dtype (no
autocast: RunConfig refuses it):

- ``_cast_input_dtype``: x cast to the adapter dtype (fp32 with peft's fp32 adapters), a
  copy per adapted linear, which the rotation's bmm keeps (x itself, shared, without a cast).
- ``_cayley_batch``: the skew-symmetric blocks Q (blocks × side × side), then with the
  Cayley-Neumann series (default, 5 terms) R = I + 2Q + 2Q² + … built in place, whose
  bmm's keep Q and its powers (max(2, terms − 2) matrices); with the exact solve the
  solve's LU, pivots and result (R itself).
- ``einsum("...rk,rkc->...rc")``: one bmm over the blocks keeping x (cast) and R (when x
  needs a gradient); its output is permuted back and copied by ``reshape``, then cast to
  x's dtype for the frozen linear, which keeps nothing.

Not modelled: ``coft``'s projection (no-grad, block-sized), the Conv2d and Embedding
layers.
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan, oft_blocks
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

INDEX_BYTES = 8  # the int64 rows and cols buffers


def cayley_kept(run: RunConfig, lin: Linear, ab: int) -> int:
    """Bytes the Cayley parametrisation keeps (cayley_bytes) for one OFT linear."""
    blocks, side = oft_blocks(lin, run)
    terms, share = run.oft[4], run.oft[3]
    return cayley_bytes(terms, 1 if share else blocks, side, ab)


def cayley_bytes(terms: int, made: int, side: int, ab: int) -> int:
    """Bytes the Cayley parametrisation of ``made`` side × side blocks keeps: Q and its
    powers for the Neumann series' matmuls (``terms``), or with 0 terms the exact solve's
    LU, pivots (int32) and result. peft's OFT and PSOFT build it alike (tuners/oft/layer.py
    ``_cayley_batch``, tuners/psoft/layer.py ``OrthLayer.get_matrix``)."""
    square = made * side * side * ab
    if terms == 0:
        return 3 * square + made * side * 4
    return max(2, terms - 2) * square if terms > 2 else 0


def rotation_kept(run: RunConfig, lin: Linear, ab: int) -> int:
    """R as the einsum keeps it: its own tensor, but under the exact solve without
    block_share (then it is the solve's result, counted there)."""
    blocks, side = oft_blocks(lin, run)
    _, _, _, share, terms = run.oft
    return 0 if terms == 0 and not share else blocks * side * side * ab


def buffer_bytes(plan: MethodPlan, run: RunConfig, layers: int) -> int:
    """The int64 rows and cols index buffers (side·(side − 1)/2 each) per adapted linear,
    in each block holding it."""
    total = 0
    for lin in plan.block_rotated:
        side = oft_blocks(lin, run)[1]
        blocks = layers if lin.blocks is None else lin.blocks[1] - lin.blocks[0]
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
        ab = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter]
        out: list[Saved] = []
        reads_input = False
        for lin in linears:
            if lin.module not in state.block_rotated:
                continue
            items = [("Cayley blocks", cayley_kept(ctx.run, lin, ab))]
            if in_bytes != ab:
                items.append((f"input cast to {ab * 8}-bit", ctx.tokens * lin.in_features * ab))
            reads_input = reads_input or in_bytes == ab
            if in_grad:
                items.append(("rotation blocks", rotation_kept(ctx.run, lin, ab)))
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
        held = [0]
        for lin in plan.block_rotated:
            n, o = lin.in_features, lin.out_features
            blocks, side = oft_blocks(lin, run)
            held.append(2 * T * n * ab + blocks * side * side * ab + T * o * xb)
        return max(held)
