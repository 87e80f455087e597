"""peft's C3A on a linear: the fp32 input its block circular convolution keeps, and the
complex FFT outputs its forward and backward hold.

What runs (huggingface/peft src/peft/tuners/c3a/layer.py ``C3ALinear.forward`` and
utils.py ``BlockCircularConvolution``, the same at 0.21.2 and at
5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, the MetaMathQA release)::

    result = self.base_layer(x)
    x = x.to(torch.float32)
    x = BlockCircularConvolution.apply(x, kernel.to(torch.float32)) / x.size(-1)
    result += x.to(result.dtype)

with the kernel m × n × b (m = out/b, n = in/b) and the Function::

    forward:  save_for_backward(x, w)                       # x: (T, n, b) fp32
              y = fft(einsum("...nb,mnb->...mb", ifft(x), fft(w))).real
    backward: gfft = fft(grad_output)
              x_grad = fft(einsum("...mb,mnb->...nb", gfft, ifft(w))).real
              w_grad = fft(einsum("...mb,...nb->mnb", gfft, ifft(x))).real

Kept: the fp32 input (a cast per adapted linear on a 16-bit base, as LoRA's; the shared
input itself on an fp32 one), whether or not x needs a gradient (the Function saves it),
and the kernel (a parameter: fp32, peft creates it so and upcasts it again after moving
it to the base's dtype). The output is in the base dtype (the in-place sum), so nothing
else changes downstream.

Transients (measured alone: one peft C3A Linear on the CPU, tests/test_c3a.py, exact):
complex64 (8-byte) FFT outputs, T × in or T × out. The forward holds ifft(x), fft(w) and
the einsum's output, then that output beside its fft; the backward the output gradient's
fp32 copy (``/ x.size(-1)``'s) and its fft, x's complex gradient, ifft(x) and the kernel's
einsum. The Function computes x's gradient whether it is needed or not.

A 16-bit kernel only where an engine casts the whole model (engine_cast; C3A takes no
--adapter-dtype, peft's comment: only fp32 is widely supported for FFT): the Function then
also saves the kernel's fp32 copy (measured, tests/test_engine_cast.py).

Under autocast (stop 47) the same: fft and ifft run on the fp32 input and kernel on both
devices (no CUDA autocast kernel; the CPU's fp32 list), and the einsums' operands are
complex, which autocast never casts (only floating-point tensors are eligible); the
output returns in the input's dtype (adapters.vera.VeRA.output_bytes) and, from an fp32
stream, the backward holds its gradient's 16-bit cast (backward_own).

Not modelled: Conv1D (peft takes
nn.Linear only: refused), block_size_pattern (one block size for every linear); cuFFT's
plan cache and work area on CUDA.
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

COMPLEX = 8  # complex64, torch.fft's output for fp32 input
FP32 = 4


def _kernel(lin: Linear, run: RunConfig) -> int:
    """The kernel's elements, m · n · b = out · in / b."""
    return lin.in_features * lin.out_features // run.c3a[0]


@register("c3a")
class C3A:
    """The C3A adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """Per C3A linear: its fp32 copy of the input (T × in), or, when the input is fp32
        already, the shared input itself (returned True); and the kernel's fp32 copy where
        an engine cast the kernel to 16-bit (engine_cast: ``kernel.to(torch.float32)`` is
        what the Function saves)."""
        out: list[Saved] = []
        reads = False
        cast_kernel = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter] != FP32
        for lin in (lin for lin in linears if lin.module in state.circulant):
            if cast_kernel:
                what = f"{lin.label} C3A kernel cast to fp32"
                out.append(Saved(what, _kernel(lin, ctx.run) * FP32, Kind.C3A, side, (lin,)))
            if in_bytes == FP32:
                reads = True
                continue
            size = ctx.tokens * lin.in_features * FP32
            what = f"{lin.label} C3A input cast to fp32"
            out.append(Saved(what, size, Kind.C3A, side, (lin,)))
        return out, reads

    @staticmethod
    def forward_transient(plan: MethodPlan, run: RunConfig, T: int) -> int:
        """The largest forward beyond what the linear keeps: ifft(x), fft(w) and the
        einsum's output (T × out), then that output and its fft."""
        return max((C3A.linear_forward(run, lin, T) for lin in plan.circulant), default=0)

    @staticmethod
    def linear_forward(run: RunConfig, lin: Linear, T: int) -> int:
        """forward_transient at one linear."""
        return max(
            COMPLEX * (T * lin.in_features + _kernel(lin, run) + T * lin.out_features),
            2 * COMPLEX * T * lin.out_features,
        )

    @staticmethod
    def nograd_forward(run: RunConfig, lin: Linear, T: int, in_bytes: int, e: int) -> int:
        """One C3A linear's forward without a graph (a checkpointed block's first forward)
        at its largest, beyond its input (held by the caller): the base output, the fp32
        copy of x (``x.to(torch.float32)``, a copy unless x is fp32; freed only when ``x``
        is rebound to the convolution's output) and the FFTs' complex outputs
        (forward_transient's moments, one linear). Measured with a tracker, the top block's
        largest moment of a checkpointed forward: tests/test_vera_nograd.py."""
        held = T * lin.out_features * e + T * lin.in_features * FP32 * (in_bytes != FP32)
        return held + C3A.linear_forward(run, lin, T)

    @staticmethod
    def backward_own(
        run: RunConfig, lin: Linear, T: int, plan: MethodPlan | None = None, in_grad: bool = True
    ) -> int:
        """One C3A linear's backward at its largest, beyond what its forward kept and the
        output gradient it is handed: the gradient divided by in (fp32, T × out) and its
        fft, x's complex gradient (T × in), ifft(x) and the kernel's einsum (m × n × b).
        Under autocast, where peft returns the output in an fp32 input's dtype (``plan``),
        the handed gradient's 16-bit cast (T × out), which the base layer's branch of the
        in-place sum still holds when the input needs a gradient (measured: one peft C3A
        Linear under CPU autocast, tests/test_c3a.py)."""
        cast_back = 0
        if plan is not None and plan.dtypes.autocast and in_grad:
            e = BYTES_PER_ELEMENT[plan.dtypes.compute]
            # the input's dtype (LinearOp.input_bytes: a norm's output, else the compute's)
            xe = e if set(lin.roles) & {"o", "down"} else plan.dtypes.residual_bytes
            cast_back = T * lin.out_features * e if xe != e else 0
        return (
            T * lin.out_features * (FP32 + COMPLEX)
            + 2 * COMPLEX * T * lin.in_features
            + COMPLEX * _kernel(lin, run)
            + cast_back
        )
