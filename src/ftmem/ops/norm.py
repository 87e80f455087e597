"""Norms: the residual stream's RMSNorm / LayerNorm, the per-head q/k norms, T5's norm."""

from __future__ import annotations

from ftmem.arch import Architecture, Linear, Param, layout, qk_norm_params
from ftmem.dtypes import FP32, layer_norm_stats_bytes
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.output_gate import OutputGate
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.profiles import profile_of


@register("norm")
class Norm:
    """RMSNorm (transformers writes it out in fp32) or LayerNorm (one fused kernel)."""

    @staticmethod
    def parameters(arch: Architecture) -> tuple[Param, ...]:
        """The block's norms and the final norm (a decoder-only model's)."""
        return () if arch.encoder_decoder else _norms(arch)

    @staticmethod
    def saved(
        ctx: LayerContext,
        label: str,
        x_grad: bool,
        w_grad: bool,
        side: Side = Side.ATTENTION,
        input_kept: bool = False,
        of_sublayer: bool = False,
    ) -> list[Saved]:
        """RMSNorm (fp32 math) or LayerNorm. ``input_kept``: another norm saved the same
        input already (a parallel block's second norm: GPT-NeoX, Falcon-40B), so the
        storage it would keep is not new. ``of_sublayer``: it normalises a sublayer's
        output (Gemma 2's and GLM-4's post-norms, OLMo 2's), which is in the projections'
        dtype rather than the residual stream's."""
        T, h = ctx.tokens, ctx.arch.hidden_size
        out: list[Saved] = []
        if ctx.arch.traits.norms_without_parameters:
            # OLMo 1: an fp32 copy of the input (the input itself when fp32), fp32 stats
            if not x_grad:
                return out
            kept = () if input_kept and ctx.residual == FP32 else (T * h * FP32,)
            parts = (*kept, T * FP32, T * FP32)
            what = f"{label}: fp32 input, mean, rstd"
            return [Saved(what, sum(parts), Kind.NORM_INPUT, side, parts=parts)]
        if ctx.arch.norm == "layernorm":
            # native_layer_norm saves its input and per-token mean and rstd (fp32 on CUDA)
            if x_grad or w_grad:
                stats = layer_norm_stats_bytes(ctx.run.device, ctx.residual)
                # three tensors: the input and native_layer_norm's two (T, 1) outputs
                kept = () if input_kept else (T * h * ctx.residual,)
                parts = (*kept, T * stats, T * stats)
                what = "mean, rstd" if input_kept else "input, mean, rstd"
                if ctx.arch.traits.layer_norm_plus_one:
                    # Nemotron's w + 1, in the weight's (the residual stream's) dtype
                    parts, what = (*parts, h * ctx.residual), f"{what}, w + 1"
                item = Saved(f"{label}: {what}", sum(parts), Kind.NORM_INPUT, side, parts=parts)
                out.append(item)
            return out
        if profile_of(ctx.run).kernel_rms_norm:
            # one Triton kernel: save_for_backward(X, W, r), X in its own dtype, r the fp32
            # rstd per row (unslothai/unsloth unsloth/kernels/rms_layernorm.py@015bdef0d94a
            # Fast_RMS_Layernorm.forward), whatever needs the gradient
            if not (x_grad or w_grad):
                return []
            in_bytes = ctx.projection_out_bytes if of_sublayer else ctx.residual
            parts = (*(() if input_kept else (T * h * in_bytes,)), T * FP32)
            what = f"{label}: input + fp32 rstd (kernel)"
            return [Saved(what, sum(parts), Kind.NORM_INPUT, side, parts=parts)]
        gemma = ctx.arch.traits.norm_scale_in_fp32
        if ctx.compiled and side is not Side.OUTER and not gemma:
            return Norm._compiled_rms(ctx, label, x_grad, w_grad, side)
        if x_grad:
            # x.float() and rsqrt(mean(x²)+eps): the fp32 input and the fp32 rstd (x.float()
            # of an fp32 input is that input: kept once by two norms reading it)
            shared = input_kept and ctx.residual == FP32
            copies = 2 if ctx.arch.traits.norm_centres_twice else 0 if shared else 1
            # separate tensors: the rstd (T·4) asks the small pool where the input asks the
            # large one, so one request of the sum would take a block neither fits
            parts = (*(T * h * FP32,) * copies, *_statistics(ctx.arch, T))
            what = "fp32 input + rstd"
            if ctx.arch.traits.norm_scale_plus_one:  # Gemma's fp32 (1 + w), made per call
                parts, what = (*parts, h * FP32), "fp32 input + rstd + (1 + w)"
            parts += weight_cast(ctx, h)
            item = Saved(f"{label}: {what}", sum(parts), Kind.NORM_INPUT, side, parts=parts)
            out.append(item)
        if w_grad:
            # Llama: weight * normed.to(dtype) saves the cast; Gemma: normed * (1 + w) in fp32;
            # LitGPT's own RMSNorm: (x_normed * weight.float()).to(dtype), in fp32 for all
            in_bytes = ctx.projection_out_bytes if of_sublayer else ctx.residual
            fp32 = gemma or profile_of(ctx.run).rms_norm_scales_in_fp32
            fp32 = fp32 or ctx.arch.traits.norm_weight_cast_fp32  # (Helium's)
            normed_bytes = FP32 if fp32 else in_bytes
            out.append(Saved(f"{label}: normalised", T * h * normed_bytes, Kind.NORM_OUTPUT, side))
        return out

    @staticmethod
    def _compiled_rms(
        ctx: LayerContext, label: str, x_grad: bool, w_grad: bool, side: Side
    ) -> list[Saved]:
        """An RMSNorm inside a compiled layer (torchtune's per-layer compile).

        torchtune's RMSNorm is x.float(), x_fp32 * rsqrt(mean(x_fp32²) + eps), .type_as(x),
        * scale (pytorch/torchtune torchtune/modules/rms_norm.py@1814feb17a90 forward).
        Inductor's min-cut partitioner recomputes pointwise ops in backward but keeps a
        reduction whose output is 4x smaller than its input (BAN_IF_REDUCTION) and saves a
        graph input as it is (pytorch/pytorch torch/_functorch/partitioners.py@00c07b93c9e8
        min_cut_rematerialization_partition, should_ban_recomputation): the norm keeps its
        input in its own dtype and the fp32 rstd; the fp32 copy and the normalised tensor
        are rebuilt from them. (Its output, the next matmul's input, is materialized in
        backward anyway: the linear op's item keeps it.) Where only the weight trains, the
        normalised tensor alone (smaller than input + rstd) is what is kept."""
        T, h = ctx.tokens, ctx.arch.hidden_size
        if x_grad:
            # (the graph's input and the rstd buffer Inductor's kernel writes: two tensors)
            parts = (T * h * ctx.residual, T * FP32)
            what = f"{label}: input + rstd (compiled)"
            return [Saved(what, sum(parts), Kind.NORM_INPUT, side, parts=parts)]
        if w_grad:
            return [Saved(f"{label}: normalised", T * h * ctx.residual, Kind.NORM_OUTPUT, side)]
        return []

    @staticmethod
    def backward_workspace(arch: Architecture, e: int, T: int, in_place: bool = False) -> int:
        """Transient of one norm's backward.

        RMSNorm in transformers is written out in fp32 (x.float(), pow, mean, rsqrt, mul),
        so autograd's backward of it holds about four fp32 T·h tensors at once plus the
        incoming gradient; LayerNorm's fused kernel needs only its output gradient.
        ``in_place``: a kernel RMSNorm (profiles.Profile.kernel_rms_norm) writes its input
        gradient over the incoming one (Fast_RMS_Layernorm.backward ``dX = dY``), nothing
        beyond it (Gemma's variant makes ``torch.empty_like(dY)``).
        """
        h = arch.hidden_size
        if in_place and arch.norm == "rmsnorm":
            return T * h * e if arch.traits.norm_scale_in_fp32 else 0
        if arch.norm == "layernorm":
            return T * h * e
        return 4 * T * h * FP32 + T * h * e

    @staticmethod
    def recompute_reuses_input(
        arch: Architecture, plan: MethodPlan, items: list[Saved], T: int, compiled: bool = False
    ) -> int:
        """What a checkpointed block's recompute does not rebuild of its first norm: the
        block's input, kept by checkpointing, is what the norm saves when it is a
        LayerNorm, or an RMSNorm on an fp32 residual stream (``x.float()`` is then no
        copy), or any RMSNorm of a compiled layer (``compiled``: the graph saves its input
        as it is, _compiled_rms). Measured: full finetuning bf16-mixed with checkpointing,
        1,024 tokens, +4 % when counted twice. (Every other op's recompute rebuilds what it
        saves.)"""
        r = plan.dtypes.residual_bytes
        # (a block's first item is its first op's: the input norm's, when that keeps anything)
        saves_input = bool(items) and items[0].kind is Kind.NORM_INPUT
        if arch.traits.norm_centres_twice:  # it keeps centred copies, not its input
            return 0
        # (OLMo 1's keeps an fp32 copy of a 16-bit input)
        copies = arch.traits.norms_without_parameters and r != FP32
        if saves_input and not copies and (arch.norm == "layernorm" or r == FP32 or compiled):
            return T * arch.hidden_size * r
        return 0


@register("qk_norm")
class QKNorm:
    """The per-head query and key norms (``arch.qk_norm``): Qwen3's RMSNorms, OLMo 2's
    across the projection, Cohere's fp32 LayerNorms, StableLM's and Phi's nn.LayerNorms."""

    @staticmethod
    def parameters(arch: Architecture) -> tuple[Param, ...]:
        return tuple(qk_norm_params(arch))

    @staticmethod
    def saved(
        ctx: LayerContext, state: BlockState, qkv: list[Linear], all_grad: bool, w_grad: bool
    ) -> list[Saved]:
        """The per-head query and key norms (``arch.qk_norm``), on T·heads rows of
        head_dim, each the family's own norm on the projection's output.

        RMSNorm (and Cohere's LayerNorm, written out the same way): x.float(), the
        statistics, mul. Where that output needs a gradient the norm keeps its fp32 copy
        (the output itself when it is fp32 already; Cohere's keeps the centred fp32 input
        twice, as its residual norm: Family.norm_centres_twice) and the fp32 rstd per row;
        where the norm's weight trains, the normalised tensor (fp32 where the norm scales
        in fp32). LayerNorm (StableLM's per-head modules, Phi's one module; arch.norm
        "layernorm"): native_layer_norm keeps its input and each row's mean and rstd
        whichever of input and weight needs the gradient (torch derivatives.yaml,
        native_layer_norm). Its input is the projection's output as a transposed view (one
        storage for all of StableLM's per-head splits), or under CUDA's autocast the fp32
        copy it casts (_layer_norm_bytes).
        ``all_grad``: every projection's output needs a gradient (something below or a
        weight of the block trains), else only the adapted / trained ones do."""
        arch = ctx.arch
        if not arch.qk_norm:
            return []
        # the projections' output dtype (fp32 from 4-bit linears under autocast); OLMo 2
        # scales in fp32 and keeps the fp32 normalised tensor for the weight
        oe = ctx.projection_out_bytes
        if arch.traits.qk_norm_after_rotary:  # the rotated q and k's dtype (Hunyuan)
            oe = max(oe, FP32 if arch.traits.rotary_tables_fp32 else ctx.residual)
        normed_bytes = FP32 if arch.traits.norm_scale_in_fp32 else oe
        copies = 2 if arch.traits.norm_centres_twice else 1
        own = state.output_grad
        out: list[Saved] = []
        # (a reusing layer has no k or v norm: modeling_gemma4.py l.1168-1175)
        roles = (
            (("q", arch.num_heads),)
            if ctx.reusing
            else (("q", arch.num_heads), ("k", arch.kv_heads))
        )
        for role, heads in roles:
            if arch.traits.qk_norm_per_head:
                rows, width = ctx.tokens * heads, arch.head_size
            else:
                rows, width = ctx.tokens, heads * arch.head_size
            # (it belongs to its projection: a tensor of the TP-split heads)
            of = tuple(lin for lin in qkv if role in lin.roles)
            x_grad = all_grad or any(lin.module in own for lin in of)
            if arch.norm == "layernorm":
                if x_grad or w_grad:
                    parts = QKNorm._layer_norm_parts(ctx, oe, rows, width)
                    what = f"{role} norm: input, mean, rstd"
                    out.append(
                        Saved(what, sum(parts), Kind.NORM_INPUT, Side.ATTENTION, of, 0, parts)
                    )
                continue
            if x_grad:
                # separate tensors, as the residual norm's: the fp32 copy (Cohere's two
                # centred copies) and the rstd, one fp32 value a row
                parts = (*(rows * width * FP32,) * copies, *_statistics(arch, rows))
                if role == "q" and arch.traits.attention_output_gate:
                    # (its input a view of q_proj's output, query and gate: ops.output_gate)
                    fp32_input = OutputGate.query_norm_input(ctx.tokens, heads, width, oe)
                    parts = (fp32_input, *parts[1:])
                what = f"{role} norm: fp32 input + rstd"
                if arch.traits.norm_scale_plus_one:  # Gemma 3's fp32 (1 + w), per call
                    parts, what = (*parts, width * FP32), f"{what} + (1 + w)"
                per_head = arch.traits.qk_norm_weights == "per_head"
                parts += weight_cast(ctx, heads * width if per_head else width)
                out.append(Saved(what, sum(parts), Kind.NORM_INPUT, Side.ATTENTION, of, 0, parts))
            if w_grad:
                what, size = f"{role} norm: normalised", rows * width * normed_bytes
                out.append(Saved(what, size, Kind.NORM_OUTPUT, Side.ATTENTION, of))
        return out + QKNorm.value_norm_saved(ctx, qkv, all_grad, own)

    @staticmethod
    def value_norm_saved(
        ctx: LayerContext, qkv: list[Linear], all_grad: bool, own: frozenset[str]
    ) -> list[Saved]:
        """The values' weightless RMSNorm (Family.values_normed: Gemma 4's v_norm, one
        per head): where v needs a gradient, ``x.float()`` and the statistics of
        Gemma4RMSNorm._norm, kept by its pow and multiply (transformers 5.25
        modeling_gemma4.py l.205-214); no weight, so nothing for a weight's gradient. The
        kernel keeps its output in the v projection's place (Attention.v_kept).

        A layer whose values are its keys (Architecture.full_values_are_keys: Gemma 4's
        global layers with attention_k_eq_v, modeling_gemma4.py l.1217, ``value_states =
        ... else key_states``) normalises the k projection's output twice: its gradient
        decides, and where that output is fp32 already ``x.float()`` returns it, the
        tensor the k norm keeps (measured on the tiny gemma4, full fp32: 38,400 B = 150
        tokens × 64 × 4 B over without this)."""
        arch = ctx.arch
        if not arch.traits.values_normed or ctx.reusing:
            return []
        of = tuple(lin for lin in qkv if "v" in lin.roles)
        keys = arch.full_values_are_keys and not of
        if keys:
            of = tuple(lin for lin in qkv if "k" in lin.roles)
        if not (all_grad or any(lin.module in own for lin in of)):
            return []
        rows = ctx.tokens * arch.kv_heads
        fp32_input = rows * arch.head_size * FP32
        if keys and ctx.projection_out_bytes == FP32:
            fp32_input = 0  # (the k norm's)
        parts = (fp32_input, *_statistics(arch, rows))
        return [
            Saved("v norm: fp32 input + rstd", sum(parts), Kind.NORM_INPUT, Side.ATTENTION, of, 0,
                  parts)
        ]  # fmt: skip

    @staticmethod
    def _layer_norm_parts(ctx: LayerContext, oe: int, rows: int, width: int) -> tuple[int, ...]:
        """The tensors a q/k LayerNorm keeps, in the order they are made: per call its
        input and native_layer_norm's mean and rstd (one value a row each). Phi's one
        module is one call over every head's rows; StableLM's per-head modules
        (qk_norm_weights "modules") one call a head on its ``torch.split`` view, all
        views of one projection output (one input storage) unless autocast casts each
        to its own fp32 copy (measured on the CPU: tests/test_norm_requests.py)."""
        e, stats = QKNorm._layer_norm_bytes(ctx, oe)
        calls = rows // ctx.tokens if ctx.arch.traits.qk_norm_weights == "modules" else 1
        n = rows // calls
        if e != oe:  # each call's own fp32 copy of its input
            return tuple(b for _ in range(calls) for b in (n * width * e, n * stats, n * stats))
        return (rows * width * e, *(n * stats,) * (2 * calls))

    @staticmethod
    def _layer_norm_bytes(ctx: LayerContext, oe: int) -> tuple[int, int]:
        """(input, mean and rstd) bytes per element a q/k LayerNorm keeps, its input the
        projection's output (``oe`` bytes). CUDA's autocast casts layer_norm's arguments to
        fp32 (aten/src/ATen/autocast_mode.cpp: ``KERNEL_CUDA(layer_norm, fp32)``), so
        the fp32 copy is kept, with fp32 statistics; the CPU's autocast leaves layer_norm
        alone, and its kernel takes the 16-bit input with the fp32 weights as they are,
        with statistics in the weights' dtype (dtypes.layer_norm_stats_bytes; measured,
        torch 2.13: a bf16 input kept, fp32 mean and rstd)."""
        if ctx.plan.dtypes.autocast and ctx.run.device == "cuda":
            return FP32, FP32
        # (the norm's weights are in the residual stream's dtype: fp32 under autocast)
        return oe, max(layer_norm_stats_bytes(ctx.run.device, oe), ctx.residual)

    @staticmethod
    def offloaded_backward(arch: Architecture, T: int) -> int:
        """The query norm's backward (``arch.qk_norm``) with activations offloaded: its fp32
        input back, the fp32 gradients of its product, of its mean (expanded) and pow's three,
        all T·q (the k norm's are narrower), beside the fp32 residual gradient arriving
        (measured on tiny Qwen3, full bf16: -5.9 % without, the block's largest moment).
        Cohere's is written out the same way; a LayerNorm's (StableLM's per head, Phi's) is
        one fused kernel, no larger a moment than the residual norm's (measured on tiny
        StableLM, full bf16 offloaded: -0.1 %, and +12.2 % with the written-out moment)."""
        if not arch.qk_norm or arch.norm == "layernorm":
            return 0
        return 6 * T * arch.q_size * FP32 + T * arch.hidden_size * FP32


@register("t5_norm")
class T5Norm:
    """T5's RMS norm: it keeps its input itself beside the fp32 copy it squares."""

    @staticmethod
    def parameters(arch: Architecture) -> tuple[Param, ...]:
        """Every sub-layer's norm and each stack's final norm (an encoder-decoder's)."""
        return _norms(arch) if arch.encoder_decoder else ()

    @staticmethod
    def saved(ctx: LayerContext, label: str, x_grad: bool, w_grad: bool, side: Side) -> list[Saved]:
        """T5LayerNorm: pow() of an fp32 copy of x, x · rsqrt (keeps x and the fp32 rstd),
        cast to the weight's dtype and scaled (keeps the normalised input for the weight)."""
        T, h, r = ctx.tokens, ctx.arch.hidden_size, ctx.residual
        out: list[Saved] = []
        if x_grad:
            # three tensors (pow's fp32 copy, mul's input and rstd), two for an fp32 input
            parts = (T * h * FP32, *((T * h * r,) if r != FP32 else ()), T * FP32)
            what = f"{label}: fp32 input, input, rstd"
            out.append(Saved(what, sum(parts), Kind.NORM_INPUT, side, parts=parts))
        if w_grad:
            out.append(Saved(f"{label}: normalised", T * h * r, Kind.NORM_OUTPUT, side))
        return out

    @staticmethod
    def backward_workspace(arch: Architecture, e: int, T: int) -> int:
        """T5's norm's backward holds two fp32 T·h gradients and one in the compute dtype
        (it keeps its input in that dtype, not upcast)."""
        h = arch.hidden_size
        return 2 * T * h * FP32 + T * h * e


def _statistics(arch: Architecture, rows: int) -> tuple[int, ...]:
    """What an RMSNorm keeps of its statistics, fp32 per row: rsqrt's result, or with
    ``torch.pow(mean_squared, -0.5)`` (Family.norm_rstd_by_pow, Gemma 4) the mean square
    pow reads in backward beside its result, one tensor each."""
    return (rows * FP32,) * (2 if arch.traits.norm_rstd_by_pow else 1)


def weight_cast(ctx: LayerContext, n: int) -> tuple[int, ...]:
    """CohereLayerNorm's ``self.weight.to(torch.float32) * hidden_states`` (transformers
    5.25.0 models/cohere/modeling_cohere.py; the family's norm_centres_twice): the
    product keeps the fp32 copy of the ``n`` 16-bit weights for its input's gradient, a
    tensor made per call (measured on the CPU: tests/test_norm_requests.py); Helium's
    RMSNorm the same (Family.norm_weight_cast_fp32). fp32 weights (the residual stream's
    dtype) are not copied; other norms keep none."""
    traits = ctx.arch.traits
    if (traits.norm_centres_twice or traits.norm_weight_cast_fp32) and ctx.residual != FP32:
        return (n * FP32,)
    return ()


# what a norm keeps, for rules that select a norm's items (offload, checkpointed freeing)
NORM_KINDS = frozenset({Kind.NORM_INPUT, Kind.NORM_OUTPUT})


def _norms(arch: Architecture) -> tuple[Param, ...]:
    """The model's norm parameters (``arch.layout`` lists them), the q/k norms aside."""
    lay, qk = layout(arch), {p.name for p in qk_norm_params(arch)}
    return tuple(p for p in (*lay.block, *lay.outer) if p.kind == "norm" and p.name not in qk)
