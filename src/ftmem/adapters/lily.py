"""peft's Lily on a linear: a low-rank A (shared by neighbouring layers), num_B Bs
(shared by every layer of the target) mixed by the linear's router into one B per
forward, what that keeps and the adapted linear's own backward.

What runs (huggingface/peft src/peft/tuners/lily/layer.py ``Linear.forward``, peft
0.21.2)::

    x = x.to(A.dtype)
    hidden = lily_A(x)                                      # T × r
    p = softmax(router(hidden), -1).reshape(-1, num_B).mean(0)
    combined_B = einsum("e,eio->io", p, B)                  # r × out
    result = result + (matmul(hidden, combined_B) * scaling).to(result.dtype)

So per adapted linear autograd keeps LoRA's input cast (where the dtypes differ; else the
input itself, for A's gradient), hidden (T × r, for the router's and combined_B's
gradients), the softmax output (T × num_B), the mixing weights (num_B) and combined_B
(r × out). Measured on one peft Lily Linear: tests/test_lily.py.
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig


def _kept(run: RunConfig, lin: Linear, T: int, ae: int, cast: bool) -> dict[str, int]:
    """What one adapted linear keeps, by name: bytes (the same whether the input needs a
    gradient or not: A trains)."""
    r, _, num_b, _ = run.lily
    kept = {
        "input cast": T * lin.in_features * ae if cast else 0,
        "hidden (T × r)": T * r * ae,
        "router softmax (T × num_B)": T * num_b * ae,
        "mixing weights": num_b * ae,
        "combined B (r × out)": r * lin.out_features * ae,
    }
    return {name: size for name, size in kept.items() if size}


@register("lily")
class Lily:
    """The Lily adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext, lin: Linear, side: Side, in_grad: bool, in_bytes: int
    ) -> tuple[list[Saved], bool]:
        """One adapted linear's kept tensors (_kept), and whether it keeps the shared
        input itself (no cast: the input already has A's dtype)."""
        ae = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter]
        kept = _kept(ctx.run, lin, ctx.tokens, ae, in_bytes != ae)
        items = [
            Saved(f"{lin.label} Lily {name}", size, Kind.BANK, side, (lin,))
            for name, size in kept.items()
        ]
        return items, in_bytes == ae

    @staticmethod
    def backward_own(plan: MethodPlan, run: RunConfig, lin: Linear, T: int, e: int) -> int:
        """An adapted linear's own backward at its largest, beyond what it kept and the
        output gradient it is handed (``e``: the base's element size), its input needing a
        gradient. Three moments:

        - the product's: the output gradient cast to the adapter's dtype where it differs
          from the base's (``c``: T × out) and its copy times scaling (T × out), then the
          scaled one beside hidden's (T × r) and combined_B's (r × out) gradients;
        - A's: the input's gradient in the adapter dtype (T × in) beside hidden's (the cast
          back to the input's dtype replaces the kept cast, freed by then);
        - the input's: the base layer's and the adapter's gradients and their sum (3 · T
          × in in the input's dtype), everything the linear kept freed by then.

        Measured (one peft Lily Linear on the CPU; the trained tensors' gradients aside):
        tests/test_lily.py."""
        ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        r, in_, out = run.lily[0], lin.in_features, lin.out_features
        c = ae != e
        at_out = T * out * ae + max(T * out * ae if c else 0, T * r * ae + r * out * ae)
        at_a = T * in_ * ae + T * r * ae
        kept = sum(_kept(run, lin, T, ae, c).values())
        return max(at_out, at_a, 3 * T * in_ * e - kept)
