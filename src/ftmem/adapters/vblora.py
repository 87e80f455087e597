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
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

INDEX_BYTES = 8  # topk's int64 indices


def _kept(
    run: RunConfig, lin: Linear, T: int, ae: int, cast: bool, in_grad: bool
) -> dict[str, int]:
    """What one adapted linear keeps, by name: bytes."""
    r, _, length, k, _ = run.vblora
    in_, out = lin.in_features, lin.out_features
    subvectors = r * (in_ + out) // length  # one top-k choice each
    kept = {
        "input cast": T * in_ * ae if cast else 0,
        "A (r × in)": r * in_ * ae if in_grad else 0,
        "h (T × r)": T * r * ae,
        "B (out × r)": out * r * ae,
        "gathered bank vectors": k * r * (in_ + out) * ae,
        "top-k softmax and indices": subvectors * k * (ae + INDEX_BYTES),
    }
    return {name: size for name, size in kept.items() if size}


@register("vblora")
class VBLoRA:
    """The VB-LoRA adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext, lin: Linear, side: Side, in_grad: bool, in_bytes: int
    ) -> tuple[list[Saved], bool]:
        """One adapted linear's kept tensors (_kept), and whether it keeps the shared
        input itself (no cast: the input already has the bank's dtype)."""
        ae = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter]
        kept = _kept(ctx.run, lin, ctx.tokens, ae, in_bytes != ae, in_grad)
        items = [
            Saved(f"{lin.label} VB-LoRA {name}", size, Kind.BANK, side, (lin,))
            for name, size in kept.items()
        ]
        return items, in_bytes == ae

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
        c = ae != e
        waiting = T * out * e if c else 0
        at_out = (T * out * ae if c else 0) + waiting + T * r * ae
        at_a = T * in_ * ae + waiting
        kept = sum(_kept(run, lin, T, ae, c, True).values())
        return max(at_out, at_a, 3 * T * in_ * e - kept)
