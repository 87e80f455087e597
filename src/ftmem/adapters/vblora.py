"""peft's VB-LoRA on a linear: A and B mixed from the shared vector bank in every forward,
what that and the two rank-r matmuls keep, and the adapted linear's own backward.

What runs (huggingface/peft src/peft/tuners/vblora/layer.py ``Linear.forward`` and
``_get_low_rank_matrix``, the same at 0.21.2 and at 5d602fdbff04, the MetaMathQA
release)::

    top_k_logits, indices = logits.topk(topk, dim=-1)
    topk_weights = F.softmax(top_k_logits, dim=-1)
    A = (topk_weights.unsqueeze(-1) * bank[indices]).sum(-2)      # r × in
    B = (... the same for logits_B ...).transpose(1, 2).reshape(-1, r)   # out × r (a copy)
    x = x.to(bank.dtype)
    result = result + F.linear(F.linear(dropout(x), A), B)

So per adapted linear autograd keeps, beside LoRA's input cast and r-wide output h: B
(h needs a gradient), A where the input needs one, and for each factor the gathered bank
vectors (topk × the factor's elements; the product keeps them for the weights'
gradient), the softmax output and the int64 top-k indices (topk per sub-vector; topk and
the gather share one tensor). Measured on one peft VB-LoRA Linear: tests/test_vblora.py.
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.methods import MethodPlan
from ftmem.ops.context import LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

INDEX_BYTES = 8  # topk's int64 indices


def _kept(
    run: RunConfig, lin: Linear, T: int, ae: int, cast: bool, in_grad: bool, ac: int = 0
) -> dict[str, int]:
    """What one adapted linear keeps, by name: bytes. ``ac``: under autocast with the
    bank in another dtype than the compute one, that dtype's element size (0 otherwise):
    both F.linear then cast the input, A and B (non-leaves, never in autocast's cache) to
    16 bits and keep the casts and a 16-bit h; the fp32 A and B are transients (measured,
    tests/test_vblora.py)."""
    r, _, length, k, _ = run.vblora
    in_, out = lin.in_features, lin.out_features
    subvectors = r * (in_ + out) // length  # one top-k choice each
    me = ac or ae  # the matmuls' operands
    kept = {
        "input cast": T * in_ * me if cast or ac else 0,
        "A (r × in)": r * in_ * me if in_grad else 0,
        "h (T × r)": T * r * me,
        "B (out × r)": out * r * me,
        "gathered bank vectors": k * r * (in_ + out) * ae,
        "top-k softmax and indices": subvectors * k * (softmax_bytes(run, ae) + INDEX_BYTES),
    }
    return {name: size for name, size in kept.items() if size}


def softmax_bytes(run: RunConfig, ae: int) -> int:
    """The top-k softmax's element size: the logits' (the adapter dtype), but fp32 under
    CUDA's autocast, whose fp32_set_opt_dtype list has softmax (pytorch/pytorch@008ec6b1
    aten/src/ATen/autocast_mode.h AT_FORALL_FP32_SET_OPT_DTYPE ``_(softmax, int)``); the
    CPU's lists have no softmax (its output stays 16-bit with 16-bit logits: measured)."""
    return FP32 if run.uses_autocast and run.device == "cuda" else ae


def autocast_bytes(plan: MethodPlan) -> int:
    """``_kept``'s ``ac``: the compute dtype's element size under autocast with a bank in
    another dtype (peft's fp32 one on a 16-bit base), else 0."""
    dt = plan.dtypes
    return BYTES_PER_ELEMENT[dt.compute] if dt.autocast and dt.adapter != dt.compute else 0


@register("vblora")
class VBLoRA:
    """The VB-LoRA adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext, lin: Linear, side: Side, in_grad: bool, in_bytes: int
    ) -> tuple[list[Saved], bool]:
        """One adapted linear's kept tensors (_kept), and whether it keeps the shared
        input itself (no cast: the input already has the bank's dtype)."""
        ae, ac = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter], autocast_bytes(ctx.plan)
        kept = _kept(ctx.run, lin, ctx.tokens, ae, in_bytes != ae, in_grad, ac)
        items = [
            Saved(f"{lin.label} VB-LoRA {name}", size, Kind.BANK, side, (lin,))
            for name, size in kept.items()
        ]
        return items, in_bytes == ae and not ac

    @staticmethod
    def backward_own(plan: MethodPlan, run: RunConfig, lin: Linear, T: int, e: int) -> int:
        """An adapted linear's own backward at its largest, beyond what it kept and the
        output gradient it is handed (``e``: the base's element size). Three moments:

        - the second matmul's: where the adapter and the base differ in dtype (``c``), the
          gradient cast to the adapter's (T × out) and, when the input needs a gradient,
          the base layer's cast gradient waiting (T × out, base dtype), beside h's gradient;
        - the first matmul's: the input's gradient in the adapter dtype (T × in) beside
          the waiting one (h's gradient and h itself cancel);
        - the input's: the base layer's and the adapter's gradients and their sum (3 · T
          × in in the input's dtype), everything the linear kept freed by then.

        Measured (one peft VB-LoRA Linear on the CPU; the bank's and logits' gradients
        aside): tests/test_vblora.py."""
        ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        r, in_, out = run.vblora[0], lin.in_features, lin.out_features
        if autocast_bytes(plan):
            return _autocast_backward(plan, run, lin, T)
        c = ae != e
        waiting = T * out * e if c else 0
        at_out = (T * out * ae if c else 0) + waiting + T * r * ae
        at_a = T * in_ * ae + waiting
        kept = sum(_kept(run, lin, T, ae, c, True).values())
        return max(at_out, at_a, 3 * T * in_ * e - kept)


def _autocast_backward(plan: MethodPlan, run: RunConfig, lin: Linear, T: int) -> int:
    """VBLoRA.backward_own under autocast with a bank in another dtype than the compute
    one: 16-bit products, the output gradient cast to 16 bits where the input is wider
    (bf16-mixed: ``gc``, waiting for the base layer). Moments: the second matmul's (h's
    and B's 16-bit gradients), the first's (the input's and A's), the input's casts back
    through peft's fp32 cast (16 and 32 bits at once) with A's and B's gradients cast
    back to fp32 pending, and the sum of the input's two gradients. Measured on one peft
    VB-LoRA Linear (bf16-mixed, bf16 + autocast, three shapes): within the trained
    tensors' gradients (made by the moment or not), tests/test_vblora.py."""
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    kept = sum(_kept(run, lin, T, ae, True, True, BYTES_PER_ELEMENT[plan.dtypes.compute]).values())
    return autocast_backward_moments(plan, lin, T, run.vblora[0], kept)


def autocast_backward_moments(plan: MethodPlan, lin: Linear, T: int, r: int, kept: int) -> int:
    """The autocast backward's moments of a rank-``r`` pair of gathered factors (VB-LoRA's,
    UniLoRA's: _autocast_backward's), ``kept``: what its forward kept."""
    dt = plan.dtypes
    e, ae, xe = BYTES_PER_ELEMENT[dt.compute], BYTES_PER_ELEMENT[dt.adapter], dt.residual_bytes
    in_, out = lin.in_features, lin.out_features
    waiting = T * out * e if xe != e else 0
    return max(
        waiting + T * r * e + out * r * e,
        waiting + T * in_ * e + r * in_ * e,
        waiting + T * in_ * (e + ae) + r * (in_ + out) * ae - kept,
        3 * T * in_ * xe - kept,
    )
