"""Multi-head latent attention (DeepSeek-V2/V3), as transformers 5.24 runs it
(models/deepseek_v3/modeling_deepseek_v3.py DeepseekV3Attention.forward, expand_kv).

The block's input norm feeds q_a_proj (or one q_proj) and kv_a_proj_with_mqa; each
latent goes through its own RMSNorm (written out in fp32, as the block's) into q_b_proj
and kv_b_proj. The rotary turns only the last qk_rope dims of q and the one shared
rotary key, on views, keeping nothing but the shared cos and sin; ``torch.cat`` builds
the query anew, ``expand_kv`` writes the keys into a new tensor (``copy_`` keeps nothing)
and the values are a view of kv_b_proj's output, whose whole storage the kernel then
keeps."""

from __future__ import annotations

from ftmem.arch import Architecture, Linear
from ftmem.dtypes import FP32
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.linear import LinearOp
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side


def latent_groups(
    arch: Architecture, linears: tuple[Linear, ...]
) -> tuple[list[Linear], list[Linear], list[Linear]]:
    """The attention's linears by what they read: the block's norm output (q_a or q,
    then kv_a), the query latent (q_b), the key/value latent (kv_b)."""
    names = arch.traits.names.attention
    q_b = [lin for lin in linears if lin.module == names.get("q_b")]
    kv_b = [lin for lin in linears if lin.module == names.get("kv_b")]
    first = [lin for lin in linears if lin not in q_b and lin not in kv_b]
    return first, q_b, kv_b


@register("latent_attention")
class LatentAttention:
    """Between the block's input norm and o_proj: the latents' projections and norms,
    the rotary on the rope part and the attention kernel."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        state: BlockState,
        linears: tuple[Linear, ...],
        in_grad: bool,
        attn_grad: bool,
        wn: bool,
    ) -> list[Saved]:
        """``in_grad``: the input norm's output needs a gradient; ``attn_grad``: anything
        in the attention needs one (its weights, adapters, or something below); ``wn``:
        the norms' weights train."""
        arch, run = ctx.arch, ctx.run
        T, e, r = ctx.tokens, ctx.e, ctx.residual
        b, s, nh = run.batch_size, ctx.tokens // run.batch_size, arch.num_heads
        first, q_b, kv_b = latent_groups(arch, linears)
        h = arch.hidden_size
        out = LinearOp.saved(ctx, first, state, in_grad, "q_a/kv_a projections", h, r)
        if not attn_grad:
            return out
        grads = state.output_grad
        for lin, upper, label in (
            (first[0], q_b, "q_a_layernorm"),
            (first[-1], kv_b, "kv_a_layernorm"),
        ):
            if not upper:  # no query latent (q_proj): nothing between it and the rotary
                continue
            width = upper[0].in_features
            # the latent's gradient flows on where its projection or anything below trains
            latent_grad = in_grad or state.weight_trains(lin) or lin.module in grads
            out += _latent_norm(ctx, label, width, lin.out_features, latent_grad, wn)
            below = latent_grad or wn
            out += LinearOp.saved(ctx, upper, state, below, upper[0].leaf, width, r)
        qk, v = arch.head_size, arch.v_size // nh
        nope = qk - arch.rotary_size
        scores = b * nh * s * s
        kv_b_output = T * nh * (nope + v) * e
        # which side needs a gradient: the unfused paths' q·kᵀ keeps each operand only for
        # the other's gradient (the lowest trained block of IA³ on k, v: kᵀ not kept)
        q_grad, kv_grad = (
            in_grad or wn or any(state.weight_trains(lin) or lin.module in grads for lin in side)
            for side in (
                [lin for lin in linears if lin.roles == ("q",)],
                [lin for lin in linears if lin.roles != ("q",)],
            )
        )
        if LatentAttention.math_path(ctx) or run.attn == "eager":
            # the math path upcasts q, k and v to fp32 (and scales q and k: new tensors) for
            # its batched matmuls and keeps the fp32 softmax; eager keeps them in the compute
            # dtype. v, a strided view, is copied for the batched matmul (measured)
            math = LatentAttention.math_path(ctx)
            qe = FP32 if math else e
            label = "math attention: fp32 " if math else ""
            items = [
                (f"{label}q (for k's gradient)", T * nh * qk * qe if kv_grad else 0, Kind.ATTN_QK),
                (f"{label}kᵀ (for q's gradient)", T * nh * qk * qe if q_grad else 0, Kind.ATTN_QK),
                (f"{label}softmax output (fp32, s²)", scores * FP32, Kind.ATTN_PROBS),
                (f"{label}v (a contiguous copy)", T * nh * v * qe, Kind.ATTN_V),
            ]
            if not math and e != FP32:  # eager's probabilities, cast back for probs·v
                items.append(("attention probabilities cast (s²)", scores * e, Kind.ATTN_PROBS))
        else:
            # the fused kernel keeps its inputs as given: v a view (its last dim contiguous)
            items = [
                ("query (torch.cat of the rotary and plain parts)", T * nh * qk * e, Kind.ATTN_QK),
                ("keys (expand_kv's new tensor)", T * nh * qk * e, Kind.ATTN_QK),
                ("kv_b_proj output (the values are a view)", kv_b_output, Kind.ATTN_V),
                (
                    "attention output + logsumexp",
                    T * nh * v * e + b * nh * s * FP32,
                    Kind.ATTN_OUTPUT,
                ),
            ]
        return out + [Saved(what, size, kind, Side.ATTENTION) for what, size, kind in items]

    @staticmethod
    def math_path(ctx: LayerContext) -> bool:
        """sdpa on the CPU takes its math path when the value heads are narrower than the
        query/key heads: its flash kernel needs one head size for all three (pytorch
        aten/src/ATen/native/transformers/sdp_utils_cpp.cpp check_head_dim_size_cpp).
        CUDA's memory-efficient kernel takes them (FlashAttention-2 does not)."""
        arch, run = ctx.arch, ctx.run
        return run.device == "cpu" and run.attn != "eager" and arch.v_size != arch.q_size

    @staticmethod
    def o_reads_kernel_output(ctx: LayerContext) -> bool:
        """o_proj reads the fused kernel's output storage; eager attention and the math
        path copy it first (their output's transpose made contiguous)."""
        return ctx.run.attn != "eager" and not LatentAttention.math_path(ctx)


def _latent_norm(
    ctx: LayerContext, label: str, width: int, projected: int, x_grad: bool, w_grad: bool
) -> list[Saved]:
    """A latent's RMSNorm (DeepseekV3RMSNorm: x.float(), the rstd, weight * normed cast
    back): the fp32 input and the fp32 rstd when its input needs a gradient, the
    normalised cast (in the projection's output dtype) when its weight trains. An fp32
    latent is not copied: the norm keeps the projection's whole output (``projected``
    wide: kv_a's holds the rotary key beside the latent)."""
    T = ctx.tokens
    out = []
    if x_grad:
        kept = projected if ctx.projection_out_bytes == FP32 else width
        # two tensors, as the residual RMSNorm's (ops.norm.Norm.saved)
        parts = (T * kept * FP32, T * FP32)
        what = f"{label}: fp32 input + rstd"
        out.append(Saved(what, sum(parts), Kind.NORM_INPUT, Side.ATTENTION, parts=parts))
    if w_grad:
        size = T * width * ctx.projection_out_bytes
        out.append(Saved(f"{label}: normalised", size, Kind.NORM_OUTPUT, Side.ATTENTION))
    return out
