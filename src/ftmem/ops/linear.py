"""Linear layers: the inputs they keep for their weights' gradients, autocast's weight
copies, and what one holds while it runs. Adapters (ftmem.adapters) wrap this op: a
group of linears asks each adapter on it what it adds."""

from __future__ import annotations

from ftmem.adapters.boft import BOFT
from ftmem.adapters.bottleneck import Bottleneck
from ftmem.adapters.c3a import C3A
from ftmem.adapters.glora import GLoRA
from ftmem.adapters.hira import HiRA
from ftmem.adapters.hra import HRA
from ftmem.adapters.ia3 import IA3
from ftmem.adapters.llama_adapter import LlamaAdapter
from ftmem.adapters.lora import LoRA
from ftmem.adapters.lycoris import LoHa
from ftmem.adapters.miss import MiSS
from ftmem.adapters.oft import OFT
from ftmem.adapters.osf import OSF
from ftmem.adapters.peanut import Peanut
from ftmem.adapters.psoft import PSOFT
from ftmem.adapters.road import RoAd
from ftmem.adapters.shared_bank import banked_saved
from ftmem.adapters.shira import Shira
from ftmem.adapters.supertuning import Supertuning
from ftmem.adapters.vera import VeRA
from ftmem.arch import ATTENTION_ROLES, MLP_ROLES, Architecture, Linear, Param, layout
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.methods import (
    MethodPlan,
    TensorGroup,
    experts_are_linears,
    router_is_linear_in_4x,
)
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.profiles import fused_lora_applies, profile_of
from ftmem.run import QUANTIZED_BASE_METHODS, RunConfig
from ftmem.versions import (
    bnb_4bit_keeps_input,
    bnb_int8_keeps_column_copy,
    bnb_runs_quantised_linears,
)

# (a Gated DeltaNet layer's projections are its attention's: a checkpointed block's
# backward frees its MLP side before the layer's, whose projections' weight casts stay
# until their nodes run: transients.freed_before_attention)
_ATTENTION_ROLES = frozenset((*ATTENTION_ROLES, "linear_attention"))

# AutoGPTQ's qlinear_cuda_old.QuantLinear (AutoGPTQ/AutoGPTQ@62187bf843726bdd473e0685ec9098639fe340c0
# = v0.4.2, auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py): __init__'s
# kernel_switch_threshold=128; forward (l.196-272) runs its CUDA matvec for fewer rows, and
# for more dequantises in torch: bitwise_right_shift of the expanded int32 qweight (4 bytes
# a weight) cast .to(int8) (1 byte) while the int32 result still exists; `scales * (weight -
# zeros)` then holds the int8 weight, the int8 difference and the fp16 product (4 bytes);
# `torch.matmul(x.half(), weight)` keeps the fp16 weight for the input's gradient.
GPTQ_KERNEL_SWITCH_ROWS = 128
GPTQ_DEQUANT_BYTES = 4 + 1


def side_of(linears: list[Linear]) -> Side:
    """The attention side for q, k, v and o (and a Gated DeltaNet layer's projections);
    the MLP side for the MLP's linears (the linears reading one tensor are all on one
    side)."""
    return Side.ATTENTION if linears[0].roles[0] in _ATTENTION_ROLES else Side.MLP


def fused_lora_group(run: RunConfig, linears: list[Linear], state: BlockState) -> bool:
    """The linears reading one tensor run as one fused LoRA Function
    (profiles.Profile.fused_lora): q, k and v as three adapted linears, or o alone, or
    gate, up and down (ops/mlp.py); none with a bias or a weight of its own training.
    Unsloth patches a group only when each of its linears has lora_A, no bias and no
    lora_magnitude_vector (unslothai/unsloth unsloth/models/llama.py@015bdef0d94a
    FastLlamaModel.patch_peft_model)."""
    if not fused_lora_applies(run) or not linears:
        return False
    roles = sorted(r for lin in linears for r in lin.roles)
    whole = roles in (["k", "q", "v"], ["o"], ["down", "gate", "up"])
    return (
        whole
        and len(linears) == len(roles)
        and all(lin.module in state.adapted and not lin.bias for lin in linears)
        and not state.weights_trainable
        and not any(lin.module in state.trained | state.biased for lin in linears)
        and not (state.scaled or state.scaled_in or state.bottleneck)
    )


def all_adapters_fused(arch: Architecture, run: RunConfig, plan: MethodPlan) -> bool:
    """Every adapted block linear runs inside a fused LoRA Function (fused_lora_group):
    nothing of peft's layer (its promoted sum, its casts) runs in the block."""
    if not fused_lora_applies(run) or not plan.adapted:
        return False
    adapted = frozenset(lin.module for lin in plan.adapted)
    state = BlockState(True, False, adapted)
    groups: dict[str, list[Linear]] = {}
    for lin in layout(arch).linears:
        key = "qkv" if set(lin.roles) & {"q", "k", "v"} else "o" if "o" in lin.roles else "mlp"
        groups.setdefault(key, []).append(lin)
    return all(
        fused_lora_group(run, group, state)
        for group in groups.values()
        if any(lin.module in adapted for lin in group)
    )


@register("linear")
class LinearOp:
    """One group of linears reading one tensor (q/k/v, gate/up, o, down), with the
    adapters on them."""

    @staticmethod
    def parameters(arch: Architecture) -> tuple[Param, ...]:
        """The block's linear weights and biases (the LM head is the loss op's)."""
        return tuple(p for p in layout(arch).block if p.kind in ("linear", "linear_bias"))

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        in_grad: bool,
        label: str,
        in_features: int,
        in_bytes: int,
        input_kept_elsewhere: bool = False,
    ) -> list[Saved]:
        """Saved inputs (and autocast weight copies) of linears that read one tensor.

        ``in_bytes`` is the element size of the incoming tensor: the residual dtype for norm
        outputs (fp32 under autocast with fp32 weights), the compute dtype otherwise. When
        autocast must cast it, every linear call casts, and keeps, a copy of its own.
        ``input_kept_elsewhere``: another op keeps this very tensor (the attention kernel its
        output, o's input; the norm output q/k/v read too), so the linears' keeping it
        adds nothing.
        """
        if not linears:
            return []
        group, side = tuple(linears), side_of(linears)
        if fused_lora_group(ctx.run, linears, state):
            # Unsloth's LoRA_QKV / LoRA_W keep their input X only (A and B are the
            # parameters themselves): unslothai/unsloth unsloth/kernels/fast_lora.py
            # @015bdef0d94a save_for_backward(X, QA, QB, KA, KB, VA, VB), (A, B, X)
            if input_kept_elsewhere:
                return []
            size = ctx.tokens * in_features * in_bytes
            what = f"{label}: input (fused LoRA Function)"
            return [Saved(what, size, Kind.LINEAR_INPUT, side, group)]
        input_bytes = LinearOp.base_input_bytes(ctx, linears, state, in_grad, in_features, in_bytes)
        held = LinearOp.ctx_held_input_bytes(ctx, linears, in_grad, in_features, in_bytes)
        if ctx.plan.dtypes.autocast and in_bytes != ctx.e:
            input_kept_elsewhere = False  # each call keeps its own cast copy
        out: list[Saved] = []
        if input_bytes and not input_kept_elsewhere:
            out.append(Saved(f"{label}: input", input_bytes, Kind.LINEAR_INPUT, side, group, held))
        elif held:  # the tensor another op keeps: no bytes of its own, held past backward
            out.append(Saved(f"{label}: input (shared)", 0, Kind.LINEAR_INPUT, side, group, held))
        out += LinearOp.int8_column_copies(ctx, linears, in_grad, side, label)
        items, shared_input = LinearOp.lora_saved(
            ctx, linears, state, side, in_grad, in_features, in_bytes
        )
        out += items
        items, reads = LinearOp.peft_other_saved(ctx, linears, state, side, in_grad, in_bytes)
        out += items
        shared_input = shared_input or reads
        if shared_input and not input_bytes and not input_kept_elsewhere:
            size = ctx.tokens * in_features * in_bytes
            out.append(Saved(f"{label}: input (for lora_A)", size, Kind.LINEAR_INPUT, side, group))
        if state.scaled or state.scaled_in:
            out += IA3.saved(ctx, linears, state, side)
        if state.bottleneck:
            out += Bottleneck.saved(ctx, linears, state, in_grad, side)
        if state.v2_scaled:
            out += LlamaAdapter.scale_saved(ctx, linears, state, side)
        # an OFT or BOFT linear's frozen matmul reads the rotated input, which needs a
        # gradient; HRA's F.linear takes W' (its weight's cast is HRA.saved's); a SHiRA
        # linear never calls its base (Shira.saved keeps the rebuilt W's cast), nor does a
        # Super-Tuning one (Supertuning.saved keeps its W')
        rotated = state.block_rotated | state.rotated
        skipped = state.householder | state.shira | state.supertuning
        copied = [
            lin
            for lin in linears
            if (in_grad or lin.module in rotated) and lin.module not in skipped
        ]
        if ctx.plan.dtypes.casts_weights and copied:
            out += LinearOp.weight_copies(ctx, copied, side)
        if in_grad and LinearOp.gptq_dequantises(ctx.run, ctx.tokens):
            out += LinearOp.dequantised_weights(linears, side)
        return out

    @staticmethod
    def peft_other_saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """What peft's LoHa, LoKr, FourierFT, WaveFT, BOFT, OFT, MiSS, RoAd, HiRA, PSOFT, HRA,
        SHiRA, C3A and VeRA adapters of
        linears reading one tensor keep, and whether one of them keeps that tensor itself
        (VeRA never does: its products keep h and y, not the input)."""
        out: list[Saved] = []
        reads = False
        for present, op in (
            (state.hadamard or state.kronecker or state.spectral or state.wavelet, LoHa),
            (state.rotated, BOFT),
            (state.block_rotated, OFT),
            (state.miss, MiSS),
            (state.road, RoAd),
            (state.hira, HiRA),
            (state.psoft, PSOFT),
            (state.householder, HRA),
            (state.shira, Shira),
            (state.supertuning, Supertuning),
            (state.circulant, C3A),
            (state.glora, GLoRA),
            (state.peanut, Peanut),
            (state.osf, OSF),
        ):
            if present:
                items, op_reads = op.saved(ctx, linears, state, side, in_grad, in_bytes)
                out += items
                reads = reads or op_reads
        if state.vectored:
            out += VeRA.saved(ctx, linears, state, side, in_grad)
        if state.banked:
            items, op_reads = banked_saved(ctx, linears, state, side, in_grad, in_bytes)
            out += items
            reads = reads or op_reads
        return out, reads

    @staticmethod
    def lora_saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_features: int,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """What the LoRA adapters of linears reading one tensor keep, and whether a lora_A
        reads that tensor itself. LitGPT (profiles.LITGPT): its fused qkv drops its input
        out once for every adapted slice (litgpt@00af8b0d litgpt/lora.py
        LoRAQKVLinear.forward: F.linear(self.lora_dropout(x), self.lora_A)) and keeps its
        zero-padded lora_B output (LoRA.zero_pad_source); its gated MLP is two LoRALinear
        (litgpt/lora.py LLaMAMLP: fc_1 and fc_2, each with its own dropout and lora_A)
        where a family's checkpoint fuses gate_up (Phi-3)."""
        profile = profile_of(ctx.run)
        one_dropout = profile.one_qkv_lora_dropout and all(
            set(lin.roles) & {"q", "k", "v"} for lin in linears
        )
        out: list[Saved] = []
        dropped = shared_input = False
        for lin in linears if state.adapted else ():
            if lin.module not in state.adapted:
                continue
            split = profile.splits_gate_up and set(lin.roles) == {"gate", "up"}
            for half in ("fc_1 half of ", "fc_2 half of ") if split else ("",):
                items, reads_input = LoRA.saved(
                    ctx, lin, side, in_grad, in_features, in_bytes, one_dropout and dropped
                )
                dropped = True
                out += [item.relabelled(half) for item in items] if half else items
                shared_input = shared_input or reads_input
        out += LoRA.zero_pad_source(ctx, linears, state, side)
        return out, shared_input

    @staticmethod
    def gptq_dequantises(run: RunConfig, T: int) -> bool:
        """An int4 base's matmul dequantises each weight in torch and keeps it (AutoGPTQ's
        qlinear_cuda_old for GPTQ_KERNEL_SWITCH_ROWS or more rows a call)."""
        return (
            run.quant_format == "int4"
            and run.gptq_kernel == "cuda-old"
            and T >= GPTQ_KERNEL_SWITCH_ROWS
        )

    @staticmethod
    def dequantised_weights(linears: list[Linear], side: Side) -> list[Saved]:
        """The fp16 weight each quantised matmul keeps for its input's gradient."""
        return [
            Saved(
                f"{lin.label} dequantised fp16 weight (AutoGPTQ torch path)",
                lin.in_features * lin.out_features * lin.copies * 2,
                Kind.WEIGHT_COPY,
                side,
                (lin,),
            )
            for lin in linears
            if lin.is_module and lin.quantizable
        ]

    @staticmethod
    def base_input_bytes(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        in_grad: bool,
        in_features: int,
        in_bytes: int,
    ) -> int:
        """What the base matmuls keep of their input to form their weight gradients (0 when
        none trains)."""
        dt = ctx.plan.dtypes
        e = ctx.e
        quant_keeps = in_grad and LinearOp.quantised_keeps_input(ctx.run, dt.quantized, linears)
        if state.weights_trainable:
            training = linears
        else:
            training = [lin for lin in linears if lin.module in state.trained]
        if not (training or quant_keeps):
            return 0
        ac_casts = dt.autocast and in_bytes != e
        copies = len(training or linears) if ac_casts else 1
        return copies * ctx.tokens * in_features * (e if dt.autocast else in_bytes)

    @staticmethod
    def ctx_held_input_bytes(
        ctx: LayerContext, linears: list[Linear], in_grad: bool, in_features: int, in_bytes: int
    ) -> int:
        """What bitsandbytes' MatMul4Bit before 0.43.2 keeps of its input as a ctx
        attribute (``ctx.tensors = (A, B)``, bitsandbytes@0.42.0
        bitsandbytes/autograd/_functions.py MatMul4Bit.forward), not a saved tensor: the
        node's backward does not free it, so it lives as long as the graph does (a
        training loop that holds the last loss holds it into the next forward)."""
        if not (in_grad and ctx.plan.dtypes.quantized in ("nf4", "fp4")):
            return 0
        if not LinearOp.quantised_keeps_input(ctx.run, ctx.plan.dtypes.quantized, linears):
            return 0
        dt = ctx.plan.dtypes
        copies = len(linears) if dt.autocast and in_bytes != ctx.e else 1
        return copies * ctx.tokens * in_features * (ctx.e if dt.autocast else in_bytes)

    @staticmethod
    def quantised_keeps_input(run: RunConfig, fmt: str | None, linears: list[Linear]) -> bool:
        """Whether a quantised matmul keeps its input when that input needs a gradient:
        bitsandbytes' int8 always (measured on its CPU path, MatMul8bitFp; MatMul8bitLt
        keeps `A` too), its 4-bit MatMul4Bit before 0.43.2 (``ctx.tensors = (A, B)``:
        ftmem.versions). A ctx attribute, not a saved tensor: reentrant checkpointing drops
        it with the block (forward without grad), non-reentrant would not."""
        if fmt == "int8":
            return True
        quantised = any(lin.quantizable and lin.is_module for lin in linears)
        return fmt in ("nf4", "fp4") and quantised and bnb_4bit_keeps_input(run)

    @staticmethod
    def int8_column_copies(
        ctx: LayerContext, linears: list[Linear], in_grad: bool, side: Side, label: str
    ) -> list[Saved]:
        """bitsandbytes < 0.45 (ftmem.versions): each int8 matmul whose input needs a
        gradient also keeps the column-wise int8 quantisation of that input (CAt, one byte
        per element) and its fp32 per-column statistics (SCAt), for a weight gradient the
        frozen weight never takes (@0.44.1 MatMul8bitLt.forward: ``F.double_quant(A)``,
        ``ctx.tensors = (CAt, subA, A)``; subA, the outlier columns, depends on the data)."""
        if not (in_grad and ctx.plan.dtypes.quantized == "int8"):
            return []
        if not bnb_int8_keeps_column_copy(ctx.run):
            return []
        quantised = [lin for lin in linears if lin.quantizable and lin.is_module]
        if not quantised:
            return []
        k = quantised[0].in_features
        size = len(quantised) * (ctx.tokens * k + FP32 * k)
        return [
            Saved(f"{label}: int8 column-wise input", size, Kind.LINEAR_INPUT, side, tuple(linears))
        ]

    @staticmethod
    def weight_copies(ctx: LayerContext, linears: list[Linear], side: Side) -> list[Saved]:
        """Autocast keeps a 16-bit copy of each weight a matmul whose input needs a gradient
        uses; bitsandbytes' quantised matmuls dequantise inside and keep none."""
        quantized = (
            ctx.plan.dtypes.quantized is not None and ctx.run.method in QUANTIZED_BASE_METHODS
        )
        return [
            Saved(
                f"{lin.label} 16-bit weight copy",
                lin.in_features * lin.out_features * lin.copies * 2,
                Kind.WEIGHT_COPY,
                side,
                (lin,),
            )
            for lin in linears
            if not (quantized and lin.is_module and lin.quantizable)
        ]

    @staticmethod
    def input_bytes(plan: MethodPlan, lin: Linear, e: int) -> int:
        """Element size of a block linear's input: the residual dtype for a norm's output,
        the compute dtype for the attention output and the activation (fp32 from a 4-bit
        MLP under autocast)."""
        if "o" in lin.roles:
            return e
        if "down" in lin.roles:
            return FP32 if plan.dtypes.four_bit_outputs_fp32 else e
        return plan.dtypes.residual_bytes

    @staticmethod
    def held_inputs(
        arch: Architecture,
        run: RunConfig,
        plan: MethodPlan,
        lin: Linear,
        e: int,
        T: int,
        beside_saved: bool,
    ) -> int:
        """What the block's forward holds while one of its linears runs: its input (a norm's
        output for q/k/v, gate and up; the activation for down; the attention output for o)
        and, in the MLP, the residual stream. ``beside_saved``: the block's saved tensors
        are counted too (a recompute), so what they already hold (the attention output,
        the input lora_A keeps, the tensor the MLP's norm keeps) is not counted again."""
        dt = plan.dtypes
        in_bytes = LinearOp.input_bytes(plan, lin, e)
        # lora_A keeps the input itself when peft need not cast it (nor drop it out)
        adapter_keeps_it = not dt.autocast and in_bytes == BYTES_PER_ELEMENT[dt.adapter]
        a_frozen = run.lora_fa and not profile_of(run).lora_fa_a_regains_grad
        adapter_keeps_it = adapter_keeps_it and not run.dropout and not a_frozen
        adapter_keeps_it = adapter_keeps_it and run.method != "delora"  # (its scaled copy)
        adapter_keeps_it = adapter_keeps_it and not run.deft_para  # (PaRa: no deft_R reads it)
        own = ("o" in lin.roles or adapter_keeps_it) and beside_saved
        held = 0 if own else T * lin.in_features * in_bytes
        # the residual stream, unless the MLP's norm keeps that very tensor (a LayerNorm's
        # input; an RMSNorm's fp32 input when the stream is fp32 already)
        r = dt.residual_bytes
        norm_keeps_it = arch.norm == "layernorm" or r == FP32
        if set(lin.roles) & set(MLP_ROLES) and not (beside_saved and norm_keeps_it):
            held += T * arch.hidden_size * r
        return held

    @staticmethod
    def forward_transient(plan: MethodPlan, lin: Linear, e: int, T: int) -> int:
        """An adapted linear's base layer, before its adapter runs: its output, and for a
        4-bit linear under autocast its input cast to 16 bits and its 16-bit answer before
        the cast back to fp32 (measured: Llama QLoRA on all linears, bf16-mixed)."""
        if plan.dtypes.four_bit_outputs_fp32 and plan.dtypes.quantized:
            return T * lin.out_features * FP32 + T * (lin.in_features + lin.out_features) * e
        return T * lin.out_features * e

    @staticmethod
    def dequant_moment(arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int) -> int:
        """The largest 4-bit block linear's call where each call dequantises its weight
        and casts the copy (profiles.Profile.dequant_copy_bytes; LitGPT under Lightning's
        bitsandbytes plugin: fp16 then bf16, bitsandbytes@0.42.0 autograd/_functions.py
        MatMul4Bit.forward ``F.dequantize_4bit(B, state).to(A.dtype)``, and backward for
        grad_A; transformers + peft on CUDA, bnb_dequant_bytes; AutoGPTQ's torch path,
        GPTQ_DEQUANT_BYTES): the copies beside the call's output and the incoming tensor
        (its input in forward, the output's gradient in backward). 0 where not modelled."""
        per_element = profile_of(run).dequant_copy_bytes or bnb_dequant_bytes(run, plan)
        formats: tuple[str, ...] = ("nf4", "fp4")
        if LinearOp.gptq_dequantises(run, T):  # AutoGPTQ's torch path: int32, then int8
            per_element, formats = GPTQ_DEQUANT_BYTES, ("int4",)
        quantized_base = run.method in QUANTIZED_BASE_METHODS
        if not per_element or not quantized_base or plan.dtypes.quantized not in formats:
            return 0
        return max(
            (  # (the layout's linears: LitGPT's fused qkv and split fc_1/fc_2 differ)
                n_in * n_out * per_element + int(T * share) * (n_in + n_out) * e
                for n_in, n_out, share in quantised_weights(arch, run)
            ),
            default=0,
        )

    @staticmethod
    def dequant_buffer(arch: Architecture, run: RunConfig, plan: MethodPlan) -> list[Saved]:
        """The one buffer every 4-bit matmul of the forward dequantises into
        (profiles.Profile.dequant_buffer), grown to the largest 4-bit weight and kept:
        that weight in the compute dtype, and its fp32 absmax per 64-value block
        (unslothai/unsloth unsloth/kernels/utils.py@015bdef0d94a fast_dequantize
        use_global_buffer: WEIGHT_BUFFERS, ABSMAX_BUFFERS, resize_ to the largest seen)."""
        if not profile_of(run).dequant_buffer or plan.dtypes.quantized not in ("nf4", "fp4"):
            return []
        quantized = quantised_weights(arch, run)
        if run.method not in QUANTIZED_BASE_METHODS or not quantized:
            return []
        numel = max(n_in * n_out for n_in, n_out, _ in quantized)
        e = BYTES_PER_ELEMENT[plan.dtypes.compute]
        size = numel * e + numel // 64 * FP32
        return [Saved("4-bit dequantisation buffer (kept)", size)]

    @staticmethod
    def autocast_cache(arch: Architecture, plan: MethodPlan) -> int:
        """Autocast casts each trainable fp32 weight a matmul reads to 16 bits once per
        forward and caches the copy until the forward's autocast region ends. Without
        checkpointing autograd saves those copies anyway (they are activations); with it
        only the cache keeps them: every block's, through the whole forward and the loss
        (measured on Llama and Mistral, bf16-mixed with checkpointing: forward -10 % without
        them). The cache takes only leaves, not views (torch's cached_cast): a family whose
        linears multiply by their weight's transpose (Family.linear_weight_transposed,
        Falcon) caches its adapters' weights (peft's nn.Linear) and none of its own
        (measured: x @ w.T twice under CPU autocast casts w twice, F.linear once; the tiny
        Falcon's checkpointed full finetuning, bf16-mixed, holds no block weight's copy at
        its forward's peak)."""
        return sum(g.total_numel * 2 for g in LinearOp._cached_groups(arch, plan))

    @staticmethod
    def autocast_cache_after(arch: Architecture, plan: MethodPlan, first: tuple[str, ...]) -> int:
        """What autocast_cache holds of one block's weight copies, less those of the
        modules named in ``first`` (the ones a block has run by a moment): the copies its
        forward casts after that moment."""
        return sum(
            g.numel * g.per_block * 2
            for g in LinearOp._cached_groups(arch, plan)
            if not g.name.startswith(tuple(f"{name}." for name in first))
        )

    @staticmethod
    def _cached_groups(arch: Architecture, plan: MethodPlan) -> list[TensorGroup]:
        """autocast_cache's weights (none without autocast)."""
        if not plan.dtypes.autocast:
            return []
        views = arch.traits.linear_weight_transposed
        return [
            g
            for g in plan.groups
            if g.trainable
            and g.in_block
            and g.fmt == "fp32"
            and len(g.shape) == 2
            and (g.adapter or not views)
        ]


def bnb_dequant_bytes(run: RunConfig, plan: MethodPlan) -> int:
    """Bytes per weight element of bitsandbytes' own 4-bit matmul on CUDA, for a framework
    that runs its Linear4bit as it is (transformers + peft): ``F.dequantize_4bit(B,
    quant_state)`` writes the weight in ``quant_state.dtype``, then ``.to(A.dtype)``, A
    being the input Linear4bit cast to its compute dtype (bitsandbytes@2e03d3440f5b, 0.43.3,
    autograd/_functions.py l.509 forward, l.540 backward; nn/modules.py l.472-477). The
    quantised dtype is taken as the compute dtype (a model loaded in that dtype), so the
    cast copies nothing. 0.50's forward dequantises into A's dtype past M = 1536 rows (or
    where its per-GPU heuristic prefers it) and its backward as 0.43.3 does
    (@37d2a9387f71, 0.50.1, autograd/_functions.py l.384, backends/cuda/ops.py l.904-916,
    l.941). CUDA only: the CPU backend dequantises through int32 codes and fp32 values
    (backends/default/ops.py _dequantize_4bit_compute), not modelled."""
    if run.device != "cuda" or not bnb_runs_quantised_linears(run):
        return 0
    return BYTES_PER_ELEMENT[plan.dtypes.four_bit_compute]


def quantised_weights(arch: Architecture, run: RunConfig) -> list[tuple[int, int, float]]:
    """Each quantised block weight's (in, out) and the share of the tokens its matmul
    reads: the nn.Linears of the blocks and, under transformers 4 (methods.
    experts_are_linears), each expert's own projections (a fused gate_up is two) and
    the router, one expert's matmul at a time in the experts' loop."""
    out: list[tuple[int, int, float]] = []
    looped = experts_are_linears(arch, run)
    for lin in layout(arch).linears:
        router = looped and lin.roles == ("router",) and router_is_linear_in_4x(arch)
        if (lin.is_module and lin.quantizable) or router:
            out.append((lin.in_features, lin.out_features, 1.0))
        elif looped and lin.copies > 1:
            per_expert = lin.out_features // len(lin.roles)
            out.append((lin.in_features, per_expert, lin.tokens_fraction))
    return out
