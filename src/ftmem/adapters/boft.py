"""peft's BOFT on a linear (one butterfly factor): a dense in × in rotation of its input,
rebuilt from Cayley blocks in every forward, and a learned scale of its output.

What runs (huggingface/peft src/peft/tuners/boft/layer.py ``Linear.forward``, the same at
0.21.2 and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, the MetaMathQA release), with x
in the base dtype and boft_R, boft_s in fp32:

- ``cayley_batch``: ``linalg.solve(I + S, I - S, left=False)`` over the blocks, fp32;
  its node keeps the LU factors, the pivots and the result (3 · blocks · side² fp32 and
  blocks · side int32: measured, LinalgSolveExBackward0).
- ``torch.block_diag`` makes the in × in fp32 matrix, ``.to(x)`` its copy in x's dtype;
  ``boft_P.to(x)`` copies the permutation buffer (fp32, in × in; no copy when x is fp32
  and the buffer is on x's device), which both ``bmm``'s keep; ``butterfly @ eye`` keeps
  the in × in identity (x's dtype) and ``x @ R`` keeps x (shared) and R (when x needs a
  gradient).
- the frozen linear's output is kept by ``result * boft_scale`` (for boft_s's gradient),
  whose product promotes to fp32 and is cast back to x's dtype; ``boft_s * ones`` keeps
  the ones (out, x's dtype) and the product keeps the scale (out, fp32).

Under autocast x in the 16-bit compute dtype (a bf16 model) changes nothing (the solve and
``block_diag`` are in no CUDA autocast list, the matmuls' operands are 16-bit already:
measured alike). x in fp32 (fp32 weights, ``cast``): each ``bmm`` and matmul keeps fresh
16-bit casts instead: of the permutation twice, of the identity, of R and of x (so BOFT
keeps its own x, not the shared one); the chain's products are 16-bit, R is copied back to
fp32 (``.to(previous_dtype)``) and the frozen output is 16-bit (its weight's copy kept in
every block: the rotated input needs a gradient); peft returns the output in x's dtype.

peft leaves ``boft_P`` where get_peft_model made it (the CPU) unless the model is moved
after (HF Trainer's ``model.to(device)``): Profile.peft_buffers_on_host.
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.methods import MethodPlan, boft_blocks
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.profiles import profile_of
from ftmem.run import RunConfig


def permutation_copied(run: RunConfig, xb: int) -> bool:
    """``boft_P.to(x)`` makes a new tensor: x is 16-bit, or the buffer is on the host."""
    return xb != FP32 or profile_of(run).peft_buffers_on_host


def buffer_bytes(plan: MethodPlan, run: RunConfig, layers: int) -> int:
    """The fp32 in × in permutation buffers (boft_P) on the device, one per adapted linear
    in each of the blocks holding it (``layers``: the model's)."""
    if profile_of(run).peft_buffers_on_host:
        return 0
    return sum(lin.in_features**2 * FP32 * lin.count(layers) for lin in plan.rotated)


def autocast_cast(plan: MethodPlan, xb: int) -> int:
    """The 16-bit element size autocast casts BOFT's matmul operands to when x is in
    another dtype (fp32 weights), else 0."""
    dt = plan.dtypes
    e = BYTES_PER_ELEMENT[dt.compute]
    return e if dt.autocast and xb != e else 0


def _autocast_kept(
    ctx: LayerContext, lin: Linear, in_grad: bool, xb: int, e: int
) -> list[tuple[str, int]]:
    """BOFT.saved's items under autocast with x in fp32 (the module docstring)."""
    n, o = lin.in_features, lin.out_features
    blocks, size = boft_blocks(lin, ctx.run)
    items = [
        ("Cayley solve (LU, pivots, result)", 3 * blocks * size * size * FP32 + blocks * size * 4),
        (f"identity (in × in) cast to {e * 8}-bit", n * n * e),
        ("frozen output, for boft_s", ctx.tokens * o * e),
        ("boft_s ones and scale", o * xb + o * FP32),
        (f"permutation casts to {e * 8}-bit (two, in × in)", 2 * n * n * e),
        (f"input cast to {e * 8}-bit", ctx.tokens * n * e),
    ]
    if in_grad:
        items.append((f"rotation R (in × in) cast to {e * 8}-bit", n * n * e))
    return items


@register("boft")
class BOFT:
    """The BOFT adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """What each BOFT adapter keeps (the module docstring); the shared input x is
        always kept (R needs its gradient). Returns the items and True when any."""
        out: list[Saved] = []
        cast = autocast_cast(ctx.plan, in_bytes)
        for lin in linears:
            if lin.module not in state.rotated:
                continue
            if cast:
                items = _autocast_kept(ctx, lin, in_grad, in_bytes, cast)
                out += [
                    Saved(f"{lin.label} BOFT {w}", b, Kind.BOFT, side, (lin,)) for w, b in items
                ]
                continue
            n, o, own = lin.in_features, lin.out_features, (lin,)
            blocks, size = boft_blocks(lin, ctx.run)
            square = n * n * in_bytes
            items = [
                (
                    "Cayley solve (LU, pivots, result)",
                    3 * blocks * size * size * FP32 + blocks * size * 4,
                ),
                ("identity (in × in)", square),
                ("frozen output, for boft_s", ctx.tokens * o * in_bytes),
                ("boft_s ones and scale", o * in_bytes + o * FP32),
            ]
            if permutation_copied(ctx.run, in_bytes):
                items.append(("permutation copy (in × in)", square))
            if in_grad:
                items.append(("rotation R (in × in)", square))
            out += [Saved(f"{lin.label} BOFT {what}", b, Kind.BOFT, side, own) for what, b in items]
        return out, bool(out) and not cast

    @staticmethod
    def forward_build(plan: MethodPlan, run: RunConfig, T: int, xb: int, kept: bool) -> int:
        """The largest forward of a BOFT linear (locals live until it returns): the fp32
        block diagonal beside its cast copy; that copy and the two bmm products; at the
        output's scale the copy, the last product, x @ R, the fp32 product and its cast.
        Beyond the block's kept tensors when it keeps them (``kept``), less those made
        after (R, the frozen output, the scale); without a graph (checkpointing) the
        identity and the permutation copy are locals too, R until the end."""
        if plan.dtypes.autocast:
            return _autocast_forward(plan, run, T, kept)
        return max((_plain_forward(run, lin, T, xb, kept) for lin in plan.rotated), default=0)

    @staticmethod
    def backward_moment(plan: MethodPlan, T: int, xb: int) -> int:
        """The largest BOFT backward beyond the block's kept tensors: at the scale's mul
        the fp32 gradient, the fp32 products for both operands and the cast of one; at
        ``x @ R`` the gradient of x rotated, x's and R's (R still kept). Further down the
        matrix chain each new in × in gradient replaces a kept matrix freed before it."""
        held = [0]
        for lin in plan.rotated:
            sq, n, o = lin.in_features**2, lin.in_features, lin.out_features
            xb = x_bytes(plan, lin) if plan.dtypes.autocast else xb
            e = autocast_cast(plan, xb)
            if e:  # (the module docstring; the frozen matmul's node freed its kept first)
                freed = o * n * e + T * o * e + T * n * e
                held += [T * o * (3 * FP32 + e), T * n * xb + sq * xb - freed]
                continue
            held += [T * o * (3 * FP32 + xb), 2 * T * n * xb + sq * xb]
        return max(held)


def _plain_forward(run: RunConfig, lin: Linear, T: int, xb: int, kept: bool) -> int:
    """BOFT.forward_build's moments of one linear without autocast's casts."""
    sq, n, o = lin.in_features**2, lin.in_features, lin.out_features
    cast = xb != FP32
    perm = sq * xb if permutation_copied(run, xb) else 0
    early = -(sq * xb + T * o * xb + o * FP32) if kept else sq * xb + perm
    late = 0 if kept else perm + sq * xb
    return max(
        sq * FP32 + (sq * xb if cast else 0) + early,
        3 * sq * xb + early,
        2 * sq * xb + T * n * xb + T * o * FP32 + (T * o * xb if cast else 0) + late,
    )


def _autocast_forward(plan: MethodPlan, run: RunConfig, T: int, kept: bool) -> int:
    """BOFT.forward_build under autocast with x in fp32: at ``butterfly @ eye`` the fp32
    identity and block diagonal, the second bmm's product and the matmul's (the kept
    made after subtracted: R's, x's and the weight's casts, the frozen output, the
    scale); at the end the block diagonal, that product, R in x's dtype, x @ R and the
    fp32 scaled output. Without a graph the casts are freed after each matmul, the frozen
    output lives until the scale's product, and the caller's input beside (but o's).
    Measured on one peft BOFT linear alone (tests/test_boft.py)."""
    held = [0]
    for lin in plan.rotated:
        sq, n, o = lin.in_features**2, lin.in_features, lin.out_features
        xb = x_bytes(plan, lin)
        e = autocast_cast(plan, xb)
        if not e:  # x already 16-bit: the path without autocast (measured alike)
            held.append(_plain_forward(run, lin, T, xb, kept))
            continue
        caller = T * n * xb if not kept and "o" not in lin.roles else 0
        end = sq * (FP32 + e + xb) + T * n * e + T * o * FP32 + caller
        if kept:
            later = sq * e + T * n * e + T * o * e + o * FP32 + o * n * e
            held += [sq * (xb + FP32 + 2 * e) - later, end]
        else:
            held += [sq * (xb + FP32 + 3 * e) + caller, end + T * o * e]
    return max(held)


def element_bytes(plan: MethodPlan) -> int:
    """x's element size at a BOFT linear without autocast: the compute dtype."""
    return BYTES_PER_ELEMENT[plan.dtypes.compute]


def x_bytes(plan: MethodPlan, lin: Linear) -> int:
    """x's element size at an OFT or BOFT linear under autocast: the residual stream's for
    a norm's output (fp32 over fp32 weights), the compute dtype for o's input, and for
    down's the product's: the residual's when gate and up are rotated too (OFT, BOFT and
    HRA answer in their input's dtype), else the compute dtype."""
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    if "o" in lin.roles:
        return e
    if "down" in lin.roles:
        ups = {"gate", "up"}
        adapted = (*plan.rotated, *plan.block_rotated, *plan.householder)
        rotated = any(ups & set(u.roles) for u in adapted)
        return plan.dtypes.residual_bytes if rotated else e
    return plan.dtypes.residual_bytes
