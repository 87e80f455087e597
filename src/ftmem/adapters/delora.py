"""peft's DeLoRA (Decoupled Low-rank Adaptation, Bini et al. 2025, arXiv:2503.18225; peft
tuners/delora): LoRA whose update is normalised, ΔW = B · diag(λ / r / (‖A_i‖ · ‖B^j‖)) · A,
scaled per input channel by the base weight's column norms.

peft 0.21.2 tuners/delora/layer.py (the same at huggingface/peft@5d602fdbff04, the
MetaMathQA release): update_layer (l.88-126) adds delora_A (r × in), delora_B (out × r) and
one trainable delora_lambda per adapted linear, and registers ``delora_w_norm``, the base
weight's column norms (in values, computed once; a persistent buffer, fp32 beside fp32
adapters: measured). DeloraLinear.forward (l.226-266) multiplies the input by w_norm (a new
tensor in the adapter dtype, even on an fp32 base: the mul promotes), runs A on it, scales
A's output by the norms of A's rows and B's columns (computed every forward from the
weights: r-vectors), runs B, and adds into a zeros_like of the base output. Measured on a
peft pair (tests/test_delora.py): autograd keeps the scaled input (T · in), A's output and
its scaled copy (T · r each), six r-vectors and one scalar per adapted linear.
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import LayerContext
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

# what autograd keeps of the normalisation per adapted linear: ‖A_i‖ and ‖B^j‖ (the norms
# and their clamps), their product and the scaling (r values each), and λ / r (one value);
# measured on peft 0.21.2
NORM_VECTORS = 6


def saved(
    ctx: LayerContext, lin: Linear, side: Side, in_features: int, in_grad: bool
) -> list[Saved]:
    """What one DeLoRA adapter keeps: the scaled input, A's output and its scaled copy in
    the adapter dtype, and the norms; under autocast ``autocast_saved``."""
    T, r, ae = ctx.tokens, ctx.run.r, BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter]
    if ctx.plan.dtypes.autocast:
        return autocast_saved(ctx, lin, side, in_features, in_grad)
    own = (lin,)
    return [
        Saved(f"{lin.label} delora input × w_norm", T * in_features * ae, Kind.LORA, side, own),
        Saved(
            f"{lin.label} delora_A output and its scaled copy", 2 * T * r * ae, Kind.LORA, side, own
        ),
        Saved(f"{lin.label} delora norms", (NORM_VECTORS * r + 1) * ae, Kind.LORA, side, own),
    ]


def autocast_saved(
    ctx: LayerContext, lin: Linear, side: Side, in_features: int, in_grad: bool
) -> list[Saved]:
    """Under autocast (linear and mm are lower precision on CUDA and on the CPU; mul, clamp
    and norm of fp32 tensors stay fp32 on both): A's F.linear keeps its 16-bit cast of the
    scaled input (fp32: w_norm promotes it) in place of that input, and the cast of A
    (cached: a leaf that requires grad) when the input needs a gradient; A's output is
    16-bit, kept by its product with the fp32 scaling, which promotes the copy to fp32; B's
    F.linear keeps its 16-bit cast of that copy and the cast of B. Measured on tiny Llama
    (tests/accuracy, _bdlora_mica's DeLoRA autocast cases)."""
    T, r, e = ctx.tokens, ctx.run.r, ctx.e
    ae = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter]
    own, kind = (lin,), Kind.LORA
    copies = r * lin.out_features + (r * in_features if in_grad else 0)
    return [
        Saved(f"{lin.label} delora input × w_norm, {e * 8}-bit cast", T * in_features * e, kind,
              side, own),
        Saved(f"{lin.label} delora_A output and its scaled copy's cast", 2 * T * r * e, kind,
              side, own),
        Saved(f"{lin.label} delora norms", (NORM_VECTORS * r + 1) * ae, kind, side, own),
        Saved(f"{lin.label} delora 16-bit weight copies", copies * e, kind, side, own),
    ]  # fmt: skip


def forward_transient(lin: Linear, T: int, base_e: int, lora_e: int) -> int:
    """At the forward's sum: the base output, ``add_out`` (zeros_like it), B's output ``h``
    (adapter dtype; a local, alive to the return) and the sum ``base_out + add_out``."""
    return T * lin.out_features * (3 * base_e + lora_e)


def buffer_bytes(plan: MethodPlan, run: RunConfig, layers: int) -> int:
    """delora_w_norm (in values, adapter dtype) per adapted linear, in each block holding it."""
    if run.method != "delora":
        return 0
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    total = 0
    for lin in plan.adapted:
        blocks = lin.count(layers)
        total += blocks * lin.in_features * ae
    return total
