"""peft's VeRA on a linear: the shared frozen projections, and what each adapted linear's
two rank-r matmuls and two vector scalings keep.

What runs (huggingface/peft src/peft/tuners/vera/layer.py ``Linear.forward``, the same at
0.21.2 and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, the MetaMathQA release)::

    x = self._cast_input_dtype(x, lambda_d.dtype)
    result = result + lambda_b * F.linear(lambda_d * F.linear(dropout(x), sliced_A), sliced_B)
    result = result.to(orig_dtype)

``sliced_A`` (r × in) and ``sliced_B`` (out × r) are views of the model's one pair of
buffers (no gradient). So neither matmul keeps its input (their weights need no
gradient): the first keeps only sliced_A, for x's gradient, when x needs one; the second
sliced_B. The vector products keep the other operand for the vectors' gradients: h =
x·sliced_Aᵀ (T × r) and y = (λ_d·h)·sliced_Bᵀ (T × out). Under autocast each F.linear
casts its buffer slice to the 16-bit compute dtype, and the cast is what its mm keeps
(autocast caches casts of leaves that require grad only), h and y are 16-bit, and the
fp32 vectors promote the products.

PVeRA (peft tuners/pvera) runs the same with a sampled code between the two matmuls: A
has 2r rows, λ_d is 2r wide (the code's mean and log-variance), and the sample keeps std
and eps (``sampled_code``). Under autocast PVeRA's code is fp32 (``code_bytes``), and its
output is cast once, to the input's dtype (VeRA's first to the base output's): no cast of
the output gradient where the input is fp32 (bf16-mixed).

The projections' dtype (model.py ``_init_vera_A_vera_B`` makes them fp32; each layer's
``update_layer`` moves them to the base layer's dtype, ``cast_adapter_dtype`` upcasts
the BufferDict's 16-bit tensors to fp32 again, tuners_utils.py): the adapter dtype.
"""

from __future__ import annotations

from ftmem.arch import Architecture, Linear
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.methods import MethodPlan, vera_code_width, vera_linears, vera_projection_shapes
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.precision import Dtypes
from ftmem.run import RunConfig


def projection_bytes(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
    """vera_A and vera_B, registered buffers (persistent under save_projection, peft's
    default; resident either way), once for the model, in the adapter dtype; PVeRA's
    pvera_A and pvera_B so too, A with 2r rows."""
    if run.method not in ("vera", "pvera"):
        return 0
    ae = BYTES_PER_ELEMENT[dtypes.adapter]
    shapes = vera_projection_shapes(vera_linears(arch, run), run.vera[0], vera_code_width(run))
    return sum(rows * cols * ae for rows, cols in shapes)


def sampled_code(run: RunConfig, T: int, pe: int) -> int:
    """What PVeRA's sampling keeps per adapted linear (0 for VeRA): std = exp(logvar / 2)
    (exp keeps its output) and eps (the product eps · std keeps it for std's gradient),
    T × r each, in the products' dtype. peft 0.21.2 tuners/pvera/layer.py
    ``_reparametrize`` (training: ``mu + eps * std``); mu and logvar are halves of λ_d · h,
    whose product keeps h (T × 2r); z = mu + eps · std feeds sliced_B, which keeps nothing
    more (its weight is a buffer)."""
    return 2 * T * run.vera[0] * pe if run.method == "pvera" else 0


def product_bytes(plan: MethodPlan) -> int:
    """Element size of h and y: the compute dtype under autocast (F.linear's output),
    else the adapter dtype (peft casts x to λ_d's dtype; the buffers share it)."""
    dt = plan.dtypes
    return BYTES_PER_ELEMENT[dt.compute if dt.autocast else dt.adapter]


def code_bytes(plan: MethodPlan, run: RunConfig) -> int:
    """Element size of PVeRA's code (mean, log-variance, std, eps). λ_d · h promotes the
    adapter dtype with h's: under autocast fp32 vectors make an fp32 code (measured on
    the CPU, bf16-mixed: exp and eps · std keep fp32 T × r tensors). 16-bit vectors in
    the compute dtype keep a 16-bit log-variance, but CUDA's autocast runs exp in fp32
    (pytorch/pytorch@008ec6b1 aten/src/ATen/autocast_mode.h AT_FORALL_FP32 ``_(exp)``,
    registered for CUDA in autocast_mode.cpp; the CPU's fp32 list has no exp), so std,
    eps (randn_like std) and eps · std are fp32 there; 16-bit on the CPU (measured)."""
    dt = plan.dtypes
    if not dt.autocast:
        return BYTES_PER_ELEMENT[dt.adapter]
    cpu_same = run.device == "cpu" and dt.adapter == dt.compute
    return BYTES_PER_ELEMENT[dt.adapter] if cpu_same else FP32


def casts_slices(plan: MethodPlan) -> bool:
    """Whether autocast casts the buffer slices for the matmuls (kept by them): not where
    the projections are in the compute dtype already (measured: bf16 adapters under bf16
    autocast keep the slices' views, no copy)."""
    dt = plan.dtypes
    return dt.autocast and dt.adapter != dt.compute


@register("vera")
class VeRA:
    """The VeRA adapters on a group of linears reading one tensor."""

    @staticmethod
    def output_bytes(ctx: LayerContext, state: BlockState, lin: Linear, base: int) -> int:
        """Element size of an adapted linear's output: under autocast peft returns it in
        its input's dtype (``result.to(previous_dtype)``), the residual stream's for a
        feed-forward linear reading a norm's output (fp32 over fp32 weights: measured,
        VeRA on gate and up of a tiny Llama, bf16-mixed; FourierFT's forward ends the
        same way, and WaveFT's and C3A's, tests/accuracy cases method=fourierft,
        method=waveft and method=c3a); ``base`` otherwise."""
        returns_input_dtype = lin.module in (
            state.vectored | state.spectral | state.wavelet | state.circulant
        )
        if returns_input_dtype and ctx.plan.dtypes.autocast:
            return ctx.residual
        return base

    @staticmethod
    def saved(
        ctx: LayerContext, linears: list[Linear], state: BlockState, side: Side, in_grad: bool
    ) -> list[Saved]:
        """Per adapted linear: h (T × r) and y (T × out), kept by the λ_d and λ_b
        products whether or not the input needs a gradient; under autocast the 16-bit
        casts of sliced_B (the second mm's input needs a gradient: λ_d trains) and of
        sliced_A (2r × in for PVeRA) when the input needs one, unless the projections
        are in the compute dtype already (casts_slices). PVeRA's h is 2r wide and its
        sampling keeps std and eps (sampled_code, in code_bytes' dtype)."""
        T, r = ctx.tokens, ctx.run.vera[0]
        w = vera_code_width(ctx.run)
        pe = product_bytes(ctx.plan)
        out: list[Saved] = []
        for lin in linears:
            if lin.module not in state.vectored:
                continue
            own = (lin,)
            out.append(Saved(f"{lin.label} VeRA h (T × {w})", T * w * pe, Kind.VERA, side, own))
            if w != r:
                what = f"{lin.label} PVeRA std and eps (T × r each)"
                code = sampled_code(ctx.run, T, code_bytes(ctx.plan, ctx.run))
                out.append(Saved(what, code, Kind.VERA, side, own))
            size = T * lin.out_features * pe
            out.append(Saved(f"{lin.label} VeRA y (T × out)", size, Kind.VERA, side, own))
            if casts_slices(ctx.plan):
                e = ctx.e
                what = f"{lin.label} VeRA sliced_B cast to {e * 8}-bit"
                out.append(Saved(what, lin.out_features * r * e, Kind.VERA, side, own))
                if in_grad:
                    what = f"{lin.label} VeRA sliced_A cast to {e * 8}-bit"
                    out.append(Saved(what, w * lin.in_features * e, Kind.VERA, side, own))
        return out

    @staticmethod
    def backward_own(plan: MethodPlan, run: RunConfig, lin: Linear, T: int) -> int:
        """An adapted linear's own backward at its largest, beyond what its forward kept
        (VeRA.saved) and the output gradient g it is handed. Three moments:

        - λ_b's product node makes both of its products (G·y and G·λ_b, T × out, in the
          adapter dtype) before the engine sums the first to λ_b's shape; where the
          adapter and the base output differ in dtype (``c``), G (the gradient of peft's
          promoted sum) and its cast for the base layer beside them;
        - λ_d's node: its incoming gradient and its two products (T × r each; PVeRA's
          T × 2r, its std and eps freed by then), the base layer's cast gradient still
          waiting, y freed (and autocast's sliced_B cast);
        - the input's gradient: the first matmul's (T × in, adapter dtype) beside its
          cast back to the input's dtype, or the base layer's and their sum beside it
          (autograd sums the two out of place), h freed too.

        Measured (one peft VeRA or PVeRA Linear on the CPU, g held by the caller; the
        engine frees a cast g after its first node, which this leaves in):
        tests/test_vera.py, tests/test_pvera.py."""
        dt = plan.dtypes
        ae, e = BYTES_PER_ELEMENT[dt.adapter], BYTES_PER_ELEMENT[dt.compute]
        pe, r, out, in_ = product_bytes(plan), run.vera[0], lin.out_features, lin.in_features
        c, w, code = ae != e, vera_code_width(run), sampled_code(run, T, code_bytes(plan, run))
        waiting = T * out * e if c else 0  # the base layer's gradient, cast
        b_cast = out * r * e if casts_slices(plan) else 0
        xe = dt.residual_bytes if dt.autocast else e  # the input's
        # G, the promoted sum's gradient: a cast of g (VeRA's result.to(orig_dtype) first;
        # PVeRA casts to the input's dtype only, none where that is the sum's)
        g_cast = ae if c and (run.method == "vera" or xe != ae) else 0
        at_b = T * out * (2 * ae + (g_cast + e if c else 0))
        at_d = 3 * T * w * ae + waiting - T * out * pe - b_cast - code
        at_x = max(T * in_ * (ae + xe) + waiting, 3 * T * in_ * xe)
        at_x -= T * (out + w) * pe + code + b_cast + (w * in_ * e if b_cast else 0)
        return max(at_b, at_d, at_x)

    @staticmethod
    def nograd_forward(plan: MethodPlan, run: RunConfig, lin: Linear, T: int, in_bytes: int) -> int:
        """One VeRA or PVeRA linear's forward without a graph (a checkpointed block's first
        forward) at its largest, beyond its input (held by the caller): peft's cast of x to
        λ_d's dtype (held to the return), the base output, then each temporary freed once
        read (peft 0.21.2 tuners/vera/layer.py ``Linear.forward`` l.284-285, tuners/pvera/
        layer.py l.315-317 and ``_reparametrize`` l.163-170):

        - h = x·sliced_Aᵀ (T × w; under autocast beside its 16-bit casts of x and sliced_A),
          then λ_d·h beside it;
        - PVeRA: mu and logvar are views of λ_d·h (locals to the return); ``0.5 * logvar``,
          std = its exp, eps, eps·std and z (T × r each) with std, eps and eps·std alive;
        - y = code·sliced_Bᵀ (T × out) beside its input (VeRA's λ_d·h, PVeRA's z), then
          λ_b·y beside y, then the sum beside λ_b·y.

        Each product in the adapter dtype, h and y in the compute dtype under autocast;
        there, with a wide input, the base layer's call is the largest (its 16-bit casts of
        x and of its weight beside its output).
        Measured with a tracker, the top block's largest moment of a checkpointed forward:
        tests/test_vera_nograd.py."""
        dt = plan.dtypes
        ae, e, ac = BYTES_PER_ELEMENT[dt.adapter], BYTES_PER_ELEMENT[dt.compute], dt.autocast
        r, w, out, in_ = run.vera[0], vera_code_width(run), lin.out_features, lin.in_features
        he = e if ac else ae  # F.linear's output
        held = T * in_ * ae * (in_bytes != ae) + T * out * e  # x's cast, the base output
        keep = T * w * ae if w != r else 0  # PVeRA's mu and logvar, to the return
        code = T * r * ae if w != r else T * w * ae  # sliced_B's input: z, or λ_d·h
        first = T * w * he + ((T * in_ + w * in_) * e if ac else 0)  # sliced_A: w × in
        product = T * w * (he + ae)
        sample = keep + 4 * T * r * ae if w != r else 0  # std, eps, eps·std, z
        second = keep + code + T * out * he + ((T * r + out * r) * e if ac else 0)
        scaled = keep + T * out * (he + ae)  # y and λ_b·y
        summed = keep + T * out * (ae + max(ae, e))  # λ_b·y and the sum
        # before the adapter: the base layer's call, under autocast with its casts of x and
        # of its weight (a frozen one: not cached)
        base = T * out * e + ((T * in_ + out * in_) * e if ac else 0)
        return max(base, held + max(first, product, sample, second, scaled, summed))
