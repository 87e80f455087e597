"""peft's LoRA on a linear (and its family: rsLoRA, QLoRA's 4-bit base, ReLoRA, LongLoRA,
which keep what LoRA keeps): its dropout and input casts, lora_A's output, autocast's
copies of its weights, its forward at the sum, its casts' gradients, ReLoRA's merge; and
what LitGPT's LoRA on its fused qkv keeps besides (its zero-padded lora_B output)."""

from __future__ import annotations

from ftmem.adapters import deft, delora, gralora, mica
from ftmem.adapters.adalora import AdaLoRA
from ftmem.adapters.dora import DoRA
from ftmem.arch import Architecture, Linear
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.dropout import Dropout
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.profiles import profile_of
from ftmem.run import RunConfig
from ftmem.versions import peft_gptq_adds_in_place


@register("lora")
class LoRA:
    """A peft LoRA adapter (DoRA's items join it from ftmem.adapters.dora)."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        lin: Linear,
        side: Side,
        in_grad: bool,
        in_features: int,
        in_bytes: int,
        shares_dropout: bool = False,
    ) -> tuple[list[Saved], bool]:
        """What one peft LoRA (or DoRA) adapter keeps, and whether its lora_A reads the
        linear's input itself (nothing cast or dropped in between). ``shares_dropout``:
        its lora_A reads a dropout another adapter of the same input made and keeps."""
        T, e = ctx.tokens, ctx.e
        dt = ctx.plan.dtypes
        ae = BYTES_PER_ELEMENT[dt.adapter]
        r = ctx.run.r
        own = (lin,)
        out: list[Saved] = []
        # without autocast peft casts the input to the adapter dtype: one copy per adapter
        peft_casts = not dt.autocast and ae != in_bytes
        reads_input = False
        if ctx.run.method == "delora":
            return delora.saved(ctx, lin, side, in_features, in_grad), False
        if ctx.run.method == "deft":
            return deft.saved(ctx.run, lin, side, T, in_features, in_bytes, in_grad, dt.autocast)
        if ctx.run.lora_fa and not profile_of(ctx.run).lora_fa_a_regains_grad:
            # LoRA-FA: lora_A's weight is frozen, so its matmul keeps A, not its input
            # (measured on a peft Linear: the fp32 input cast is not saved); a dropout's
            # mask still, when the input needs a gradient
            if ctx.run.dropout > 0 and in_grad and not shares_dropout:
                mask = Dropout.mask_bytes(ctx.run.device, ae)
                size = T * in_features * mask
                out.append(Saved(f"{lin.label} lora dropout mask", size, Kind.LORA, side, own))
        elif ctx.run.dropout > 0 and shares_dropout:
            pass  # the dropped input and its mask are counted once, with the first adapter
        elif ctx.run.dropout > 0:
            # peft casts the input to the adapter dtype before the dropout. lora_A keeps
            # the dropped copy (autocast: its 16-bit cast of it); the mask is kept only
            # when the input needs a gradient. CUDA's fused dropout keeps a bool mask,
            # the CPU path a scaled mask in the adapter dtype (measured under autocast:
            # fp32, activations -3.8 % when taken as 16-bit)
            dropped = e if dt.autocast else ae
            size = T * in_features * dropped
            out.append(Saved(f"{lin.label} lora dropout output", size, Kind.LORA, side, own))
            if in_grad:
                mask = Dropout.mask_bytes(ctx.run.device, ae)
                size = T * in_features * mask
                out.append(Saved(f"{lin.label} lora dropout mask", size, Kind.LORA, side, own))
        elif peft_casts:
            what = f"{lin.label} lora_A input cast to {dt.adapter}"
            out.append(Saved(what, T * in_features * ae, Kind.LORA, side, own))
        elif dt.autocast:
            # peft casts the input to the adapter dtype, autocast casts it back for the
            # matmul: each adapter keeps a 16-bit copy of its own, even of a 16-bit input
            what = f"{lin.label} lora_A input autocast to {dt.compute}"
            out.append(Saved(what, T * in_features * e, Kind.LORA, side, own))
        else:
            reads_input = True
        a_out = e if dt.autocast else ae
        if mica.keeps_a_output(ctx.run):  # (MiCA's frozen lora_B does not)
            width = gralora.a_output_width(ctx.run)  # (GraLoRA's k · r)
            what = f"{lin.label} lora_A output (r={r})"
            out.append(Saved(what, T * width * a_out, Kind.LORA, side, own))
        if ctx.run.method == "dora":
            out += DoRA.saved(ctx, lin, side, T, peft_casts, in_grad)
        elif ctx.run.method == "adalora":
            out += AdaLoRA.saved(ctx, lin, side, T, in_grad)
        if dt.autocast:
            copies = r * lin.out_features + (r * in_features if in_grad else 0)
            what = f"{lin.label} lora 16-bit weight copies"
            out.append(Saved(what, 2 * copies, Kind.LORA, side, own))
        return out, reads_input

    @staticmethod
    def zero_pad_source(
        ctx: LayerContext, linears: list[Linear], state: BlockState, side: Side
    ) -> list[Saved]:
        """LitGPT's LoRA on its fused qkv when the run enables some of q, k and v but not
        all three: ``zero_pad`` scatters lora_B's output (the enabled slices, T x their
        summed widths) into a zero tensor of the full qkv width with ``index_copy_``
        (litgpt@00af8b0d litgpt/lora.py LoRAQKVLinear.zero_pad; lit-gpt@8641822b
        lit_gpt/lora.py zero_pad, out of place on a reshaped copy). index_copy's backward
        formula reads its source (pytorch/pytorch tools/autograd/derivatives.yaml
        index_copy: ``grad.index_select(dim, index).expand_as(source)``), so autograd
        keeps lora_B's output from the qkv forward to its backward. With all three
        enabled zero_pad returns its input and nothing is kept."""
        if not profile_of(ctx.run).qkv_lora_zero_pad_keeps_source:
            return []
        enabled = enabled_qkv_roles(ctx.run.targets, linears, state)
        if not enabled or enabled == {"q", "k", "v"}:
            return []
        width = sum(ctx.arch.q_size if role == "q" else ctx.arch.kv_size for role in enabled)
        dt = ctx.plan.dtypes
        out_bytes = ctx.e if dt.autocast else BYTES_PER_ELEMENT[dt.adapter]  # conv1d's output
        group = tuple(lin for lin in linears if lin.module in state.adapted)
        what = f"qkv lora_B output, {'/'.join(sorted(enabled))} (zero_pad's index_copy_ source)"
        return [Saved(what, ctx.tokens * width * out_bytes, Kind.LORA, side, group)]

    @staticmethod
    def forward_transient(
        run: RunConfig, plan: MethodPlan, lin: Linear, e: int, T: int, no_sum: bool = False
    ) -> int:
        """One peft-adapted linear's forward at its sum: the base output, the adapter's
        scaled output and the sum (in the adapter dtype when peft cast the input, since
        the sum promotes; 16-bit under autocast). DoRA's: ``DoRA.forward_transient``.
        ``no_sum``: up to the sum only."""
        if run.method == "dora":
            return DoRA.forward_transient(run, plan, lin, e, T, no_sum)
        base_e, lora_e = output_bytes(plan, e)
        if no_sum:
            return T * lin.out_features * base_e
        if run.method == "adalora":
            return AdaLoRA.forward_transient(plan, lin, base_e, lora_e, T)
        if run.method == "delora":
            return delora.forward_transient(lin, T, base_e, lora_e)
        if run.method == "deft":
            return deft.forward_transient(run, lin, T, e, True)
        if peft_gptq_adds_in_place(run) and lin.quantizable and lin.is_module:
            return T * lin.out_features * LoRA.in_place_sum_bytes(plan, base_e, lora_e)
        sum_e = max(base_e, lora_e)
        return T * lin.out_features * (base_e + lora_e + sum_e)

    @staticmethod
    def in_place_sum_bytes(plan: MethodPlan, base_e: int, lora_e: int) -> int:
        """Bytes per output element at the largest moment of peft < 0.16's LoRA on a GPTQ
        QuantLinear (ftmem.versions.PEFT_GPTQ_SUM_OUT_OF_PLACE). Without autocast: the base
        output, lora_B's output and its cast to the base dtype, then the cast and its
        scaled copy (the same tensor when the dtypes agree: the base output and two
        adapter outputs). Under autocast: the base output, lora_B's and the scaled one.
        The sum is made in place; 0.5.0's clone of the base output is briefly a second
        base output, below either moment."""
        if plan.dtypes.autocast:
            return base_e + 2 * lora_e
        return 2 * base_e + max(lora_e, base_e)

    @staticmethod
    def merge(plan: MethodPlan, run: RunConfig) -> int:
        """ReLoRA's merge (peft ``merge_adapter``): per adapted linear, B·A and the scaled
        product (out × in, adapter dtype) before it is added into the base weight in place."""
        if run.method != "relora" or not plan.adapted:
            return 0
        ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
        return max(2 * lin.in_features * lin.out_features * lin.copies * ae for lin in plan.adapted)

    @staticmethod
    def cast_gradient(arch: Architecture, plan: MethodPlan, T: int) -> int:
        """Adapters whose input peft casts to their own dtype (fp32 adapters on a 16-bit
        base, no autocast) add that cast's gradient (T·h) to their linear's backward."""
        dt = plan.dtypes
        if plan.adapted and not dt.autocast and dt.adapter != dt.compute:
            return T * arch.hidden_size * BYTES_PER_ELEMENT[dt.adapter]
        return 0

    @staticmethod
    def down_cast_gradient(plan: MethodPlan, T: int) -> int:
        """An adapter on the down projection: peft casts its input (T·f; 16-bit also under
        autocast, unless a 4-bit MLP made it fp32) to the adapter dtype, and that cast's
        gradient (T·f) joins the down projection's backward (measured with
        checkpointing: Llama LoRA and QLoRA on all linears under bf16-mixed, -6 % without)."""
        dt = plan.dtypes
        if dt.adapter == dt.compute:
            return 0
        widths = [lin.in_features for lin in plan.adapted if "down" in lin.roles]
        return T * max(widths) * BYTES_PER_ELEMENT[dt.adapter] if widths else 0


def output_bytes(plan: MethodPlan, e: int) -> tuple[int, int]:
    """Element sizes of an adapted linear's base output (fp32 from a 4-bit linear
    under autocast) and of its adapter's output (16-bit under autocast)."""
    dt = plan.dtypes
    base_e = FP32 if dt.four_bit_outputs_fp32 and dt.quantized else e
    lora_e = e if dt.autocast else BYTES_PER_ELEMENT[dt.adapter]
    return base_e, lora_e


def enabled_qkv_roles(targets: str, linears: list[Linear], state: BlockState) -> set[str]:
    """The q/k/v slices LitGPT's fused qkv adapts (its lora_query, lora_key, lora_value):
    the roles of the adapted linears in the group; of a fused projection, those the run's
    targets name (every one for ``attention``, ``all-linear`` or the module's own name)."""
    spec = {item.strip() for item in targets.lower().split(",")}
    named = spec & {"q", "k", "v"}
    enabled: set[str] = set()
    for lin in linears:
        roles = {role for role in lin.roles if role in ("q", "k", "v")}
        if lin.module not in state.adapted or not roles:
            continue
        whole = len(roles) == 1 or spec & {"attention", "all-linear", lin.module, lin.leaf}
        enabled |= roles if whole else roles & named
    return enabled
