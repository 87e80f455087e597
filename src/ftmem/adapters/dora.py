"""peft's DoRA on a linear: the rescale by magnitude / ‖W + BA‖ (beside LoRA's items),
and the weight it rebuilds in every forward to take that norm."""

from __future__ import annotations

from collections.abc import Iterable

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.methods import MethodPlan
from ftmem.ops.context import LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.precision import Dtypes
from ftmem.run import RunConfig


@register("dora")
class DoRA:
    """DoRA's own part of an adapted linear (its LoRA part is ``LoRA``'s)."""

    @staticmethod
    def saved(
        ctx: LayerContext, lin: Linear, side: Side, T: int, peft_casts: bool, in_grad: bool
    ) -> list[Saved]:
        """What peft's DoRA keeps per adapted linear of a block (DoRA.sizes)."""
        sizes = DoRA.sizes(
            ctx.plan.dtypes,
            ctx.run,
            ctx.e,
            T,
            (lin.in_features, lin.out_features),
            lin.bias,
            peft_casts,
            in_grad,
            ctx.arch.traits.conv1d,
        )
        return [Saved(f"{lin.label} {what}", size, Kind.DORA, side, (lin,)) for what, size in sizes]

    @staticmethod
    def sizes(
        dt: Dtypes,
        run: RunConfig,
        e: int,
        T: int,
        features: tuple[int, int],
        bias: bool,
        peft_casts: bool,
        in_grad: bool,
        conv1d: bool = False,
    ) -> list[tuple[str, int]]:
        """What peft's DoRA keeps for one adapted linear of ``features`` (in, out) over T
        rows (peft 0.21, measured), named without the linear.

        It rescales the base and the LoRA outputs by magnitude / ‖W + BA‖: both outputs
        are kept (a third output-sized cast when peft casts the input), with the fp32
        norm and the scale per output (and the scale − 1 when the input needs a gradient). With a bias under autocast the base output minus the fp32
        bias is kept in fp32. (GPT-2's Conv1D path transposes the weight to take the
        norm, but the norm is detached: that graph is unreachable from the loss and freed
        at once; an earlier measurement's saved-tensor hook had kept it alive.)
        """
        in_f, out_f = features
        ae = BYTES_PER_ELEMENT[dt.adapter]
        outputs = (3 if peft_casts else 2) * T * out_f * e
        weight_copy = 0
        if run.dropout > 0:
            # with dropout peft's DoRA computes the base output again from the dropped
            # input, in the adapter dtype (autocast: 16-bit): both outputs are in it, and
            # the matmul keeps the (dequantised) weight cast to it when the input needs a
            # gradient (measured: Llama DoRA bf16 and bf16-mixed, activations -10 % and
            # -2 % without)
            if dt.autocast:
                weight_copy = in_f * out_f * e
                if conv1d:
                    # GPT-2's Conv1D path also keeps a second 16-bit copy of the dropped
                    # input for that matmul, in every block (measured, bf16-mixed: -6.8 %)
                    outputs += T * in_f * e
            else:
                outputs = 2 * T * out_f * ae
                if dt.quantized or BYTES_PER_ELEMENT[dt.base] != ae:
                    weight_copy = in_f * out_f * ae
            weight_copy *= in_grad
        # the norm (kept by magnitude / norm) and the scale (kept by scale · lora); the
        # scale − 1 too when the base output needs a gradient (its input does)
        scales = 3 if in_grad else 2
        sizes = [("DoRA base/LoRA outputs and rescale", outputs + scales * out_f * FP32)]
        if weight_copy:
            sizes.append(("DoRA weight in the adapter dtype", weight_copy))
        if bias and dt.autocast and not run.dropout:  # (dropout: no bias to remove)
            sizes.append(("DoRA fp32 base output (bias removed)", T * out_f * (FP32 - e)))
        return sizes

    @staticmethod
    def rebuild(plan: MethodPlan, run: RunConfig, linears: Iterable[Linear]) -> int:
        """The largest of DoRA's weight rebuilds (identity, LoRA weight, its transpose and
        the sum) among these adapted linears; 0 for other methods."""
        if run.method != "dora":
            return 0
        ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        return max(
            ((lin.in_features**2 + 3 * lin.in_features * lin.out_features) * ae for lin in linears),
            default=0,
        )

    @staticmethod
    def forward_rebuild(plan: MethodPlan, run: RunConfig) -> int:
        """DoRA (peft) forms, in every forward, W + scale·(B·A) through an in×in identity
        to take its column norm: the identity, the LoRA weight, its transpose and the
        sum, for the largest adapted linear; other methods allocate nothing comparable."""
        return DoRA.rebuild(plan, run, plan.adapted)

    @staticmethod
    def forward_transient(
        run: RunConfig, plan: MethodPlan, lin: Linear, e: int, T: int, no_sum: bool = False
    ) -> int:
        """A DoRA-adapted linear's forward at its sum: the base and LoRA outputs, its two
        rescaled outputs (fp32, like its magnitude) and its weight rebuild: the identity,
        the LoRA weight and the base weight cast to the adapter dtype, or under autocast
        the LoRA weight's cast alone (measured on Phi-3's qkv, peft 0.21). ``no_sum``: up
        to the sum only."""
        dt = plan.dtypes
        ae = BYTES_PER_ELEMENT[dt.adapter]
        base_e = FP32 if dt.four_bit_outputs_fp32 and dt.quantized else e
        lora_e = e if dt.autocast else ae
        out, inp = lin.out_features, lin.in_features
        # the LoRA output, then its rescaled copy and the base output's (fp32: the
        # magnitude is), then their sum
        rescaled = 2 if no_sum else 3
        outputs = T * out * (base_e + lora_e + rescaled * ae)
        if run.dropout:
            # with dropout DoRA runs the base matmul again, on the dropped input
            outputs += T * out * lora_e
        cast = inp * out * ae if BYTES_PER_ELEMENT[dt.base] != ae else 0
        if dt.autocast:
            # only the LoRA weight's cast to the input's dtype outlives the norm (measured
            # on Phi-3's qkv, bf16-mixed: forward -11 % without)
            return outputs + inp * out * ae + cast
        return outputs + (inp * inp + inp * out) * ae + cast
