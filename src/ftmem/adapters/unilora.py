"""peft's UniLoRA on a linear: A and B gathered from the one trained vector theta_d in
every forward, what that and the two rank-r matmuls keep, and the adapted linear's own
backward.

What runs (huggingface/peft src/peft/tuners/unilora/layer.py ``Linear.forward`` and
``_get_lora_matrices``, peft 0.21.2)::

    A = theta_d[indices_A] * scales_A             # r × in; indices, scales: buffers
    B = theta_d[indices_B] * scales_B             # out × r
    x = x.to(theta_d.dtype)
    result = result + F.linear(F.linear(dropout(x), A), B)

The gather keeps only its int64 indices and the product only the scales (buffers, no new
memory), so per adapted linear autograd keeps LoRA's input cast (where the dtypes differ;
else the input itself) and r-wide h, B (h needs a gradient) and A where the input needs
one. Measured on one peft UniLoRA Linear: tests/test_unilora.py.

Buffers per adapted linear (layer.py ``reset_unilora_parameters``, ``update_scaling``;
model.py ``_assign_unilora_indices_and_scales``): int64 indices and scales of A (r × in)
and B (out × r), the scales in the adapter dtype (peft's autocast_adapter_dtype casts them
to fp32 on a 16-bit base).
"""

from __future__ import annotations

from ftmem.adapters.vblora import autocast_backward_moments
from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

INDEX_BYTES = 8  # the gathers' int64 indices


def buffer_bytes(plan: MethodPlan, run: RunConfig, layers: int) -> int:
    """unilora_indices_A/B (int64) and unilora_scales_A/B (adapter dtype) per adapted
    linear, in each block holding it (``layers``: the model's)."""
    if run.method != "unilora":
        return 0
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    r = run.unilora[0]
    total = 0
    for lin in plan.banked:
        blocks = lin.count(layers)
        total += blocks * r * (lin.in_features + lin.out_features) * (INDEX_BYTES + ae)
    return total


def _kept(
    run: RunConfig, lin: Linear, T: int, ae: int, cast: bool, in_grad: bool, ac: int = 0
) -> dict[str, int]:
    """What one adapted linear keeps, by name: bytes. ``ac``: autocast's element size (0
    without; theta_d is peft's fp32 then: --adapter-dtype is refused): both F.linear cast
    the input, A and B (non-leaves: never in autocast's cache) to 16 bits and keep the
    casts and a 16-bit h; the gather and the scales' product are on no autocast list (the
    fp32 A and B are transients). Measured, tests/test_unilora.py."""
    r, in_, out = run.unilora[0], lin.in_features, lin.out_features
    me = ac or ae  # the matmuls' operands
    kept = {
        "input cast": T * in_ * me if cast or ac else 0,
        "A (r × in)": r * in_ * me if in_grad else 0,
        "h (T × r)": T * r * me,
        "B (out × r)": out * r * me,
    }
    return {name: size for name, size in kept.items() if size}


def _autocast_bytes(plan: MethodPlan) -> int:
    """``_kept``'s ``ac``: the compute dtype's element size under autocast, else 0."""
    return BYTES_PER_ELEMENT[plan.dtypes.compute] if plan.dtypes.autocast else 0


@register("unilora")
class UniLoRA:
    """The UniLoRA adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext, lin: Linear, side: Side, in_grad: bool, in_bytes: int
    ) -> tuple[list[Saved], bool]:
        """One adapted linear's kept tensors (_kept), and whether it keeps the shared
        input itself (no cast: the input already has theta_d's dtype)."""
        ae, ac = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter], _autocast_bytes(ctx.plan)
        kept = _kept(ctx.run, lin, ctx.tokens, ae, in_bytes != ae, in_grad, ac)
        items = [
            Saved(f"{lin.label} UniLoRA {name}", size, Kind.BANK, side, (lin,))
            for name, size in kept.items()
        ]
        return items, in_bytes == ae and not ac

    @staticmethod
    def backward_own(plan: MethodPlan, run: RunConfig, lin: Linear, T: int, e: int) -> int:
        """An adapted linear's own backward at its largest, beyond what it kept and the
        output gradient it is handed (``e``: the base's element size), its input needing a
        gradient. Three moments:

        - the second matmul's: where the adapter and the base differ in dtype (``c``), the
          gradient cast to the adapter's (T × out) and the base layer's cast gradient
          waiting (T × out, base dtype), beside h's gradient and B's (out × r);
        - the first matmul's: the input's gradient in the adapter dtype (T × in) and A's
          (r × in) beside the waiting one (h's gradient and h itself cancel);
        - the input's: the base layer's and the adapter's gradients and their sum (3 · T
          × in in the input's dtype), everything the linear kept freed by then.

        Measured (one peft UniLoRA Linear on the CPU; theta_d's gradient aside):
        tests/test_unilora.py."""
        ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        r, in_, out = run.unilora[0], lin.in_features, lin.out_features
        if plan.dtypes.autocast:
            return _autocast_backward(plan, run, lin, T)
        c = ae != e
        waiting = T * out * e if c else 0
        at_out = (T * out * ae if c else 0) + waiting + T * r * ae + out * r * ae
        at_a = T * in_ * ae + waiting + r * in_ * ae
        kept = sum(_kept(run, lin, T, ae, c, True).values())
        return max(at_out, at_a, 3 * T * in_ * e - kept)


def _autocast_backward(plan: MethodPlan, run: RunConfig, lin: Linear, T: int) -> int:
    """UniLoRA.backward_own under autocast (VB-LoRA's moments: adapters.vblora): 16-bit
    products, the output gradient cast to 16 bits where the input is wider (bf16-mixed:
    waiting for the base layer); the second matmul's and the first's products; the
    input's gradient cast back through peft's fp32 cast (16 and 32 bits at once) with
    A's and B's gradients cast back to fp32 pending; the sum of the input's two
    gradients. Measured on one peft UniLoRA Linear (bf16-mixed, bf16 + autocast, three
    shapes): within theta_d's gradient, tests/test_unilora.py."""
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    kept = sum(_kept(run, lin, T, ae, True, True, BYTES_PER_ELEMENT[plan.dtypes.compute]).values())
    return autocast_backward_moments(plan, lin, T, run.unilora[0], kept)
