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

Under autocast (fp32 adapters, 16-bit compute) lily_A, the router, the einsum and the
matmul are on CUDA's lower-precision list (the CPU's has linear and matmul, and its einsum
decomposes to a bmm, which casts the same operands): everything above is 16-bit, the
input's 16-bit cast is kept (whatever the input's dtype), and so are the 16-bit copies of
A and the router weight (leaves: autocast's cache, one per forward, so a shared A once per
stride_A layers) and of the Bs (a reshaped view of lily_B: not cached, a copy per layer).
softmax is on CUDA's fp32 list, not the CPU's (vblora.softmax_bytes). The output keeps the
base output's dtype (``.to(torch_result_dtype)``): 16-bit.
"""

from __future__ import annotations

from ftmem.adapters.vblora import autocast_bytes, softmax_bytes
from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig


def _kept(
    run: RunConfig,
    lin: Linear,
    T: int,
    ae: int,
    cast: bool,
    ac: int = 0,
    layers: int = 1,
    in_grad: bool = True,
) -> dict[str, int]:
    """What one adapted linear keeps, by name: bytes (without autocast the same whether
    the input needs a gradient or not: A trains). ``ac``: the compute dtype's element size
    under autocast (vblora.autocast_bytes), 0 otherwise. A's 16-bit copy is saved only
    where the input needs a gradient (else the cache frees it at the autocast exit: the
    first block's); a shared A's single cached copy is kept by the other layers of its
    group and spread evenly over the ``layers`` the target is in (LayerContext has no
    layer index: exact in total where stride_A divides them)."""
    r, stride, num_b, _ = run.lily
    in_, out, me = lin.in_features, lin.out_features, ac or ae
    if stride == 1:
        a_copy = r * in_ * ac if in_grad else 0
    else:
        a_copy = r * in_ * ac * -(-layers // stride) // layers
    kept = {
        "input cast": T * in_ * me if cast or ac else 0,
        "hidden (T × r)": T * r * me,
        "router softmax (T × num_B)": T * num_b * softmax_bytes(run, me),
        "mixing weights": num_b * me,
        "combined B (r × out)": r * out * me,
        "A 16-bit copy (autocast's cache)": a_copy,
        "router 16-bit copy (autocast's cache)": num_b * r * ac,
        "Bs 16-bit copy": num_b * r * out * ac,
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
        ae, ac = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter], autocast_bytes(ctx.plan)
        layers = lin.count(ctx.arch.num_layers)
        kept = _kept(ctx.run, lin, ctx.tokens, ae, in_bytes != ae, ac, layers, in_grad)
        items = [
            Saved(f"{lin.label} Lily {name}", size, Kind.BANK, side, (lin,))
            for name, size in kept.items()
        ]
        return items, in_bytes == ae and not ac

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
        if autocast_bytes(plan):
            return _autocast_backward(plan, run, lin, T)
        c = ae != e
        at_out = T * out * ae + max(T * out * ae if c else 0, T * r * ae + r * out * ae)
        at_a = T * in_ * ae + T * r * ae
        kept = sum(_kept(run, lin, T, ae, c).values())
        return max(at_out, at_a, 3 * T * in_ * e - kept)


def _autocast_backward(plan: MethodPlan, run: RunConfig, lin: Linear, T: int) -> int:
    """Lily.backward_own under autocast (16-bit products, the 16-bit output gradient).
    Moments beyond what the linear kept: the matmul's (the scaled gradient T × out, hidden's
    T × r and combined_B's r × out gradients), the einsum's (the Bs' 16-bit gradient beside
    hidden's and combined_B's; then its fp32 cast, the Bs' copy and combined_B freed), A's (the input cast's and A's 16-bit
    gradients beside hidden's, the rest kept freed), the input cast's gradient back through
    peft's fp32 cast (16 and 32 bits at once) and the sum of the input's two gradients in its
    dtype (3 · T × in). Measured on one peft Lily Linear under CPU autocast (bf16-mixed,
    bf16 + autocast): within the trained tensors' gradients, tests/test_lily.py."""
    dt = plan.dtypes
    e, ae, xe = BYTES_PER_ELEMENT[dt.compute], BYTES_PER_ELEMENT[dt.adapter], dt.residual_bytes
    r, _, num_b, _ = run.lily
    in_, out = lin.in_features, lin.out_features
    kept = sum(_kept(run, lin, T, ae, True, e).values())
    return max(
        T * out * e + T * r * e + r * out * e,
        T * r * e + r * out * e + num_b * r * out * e,
        T * r * e + num_b * r * out * (e + ae) - num_b * r * out * e - r * out * e,
        T * in_ * e + T * r * e + r * in_ * e - (kept - T * in_ * e - r * in_ * e),
        T * in_ * (e + ae) - kept,
        3 * T * in_ * xe - kept,
    )
