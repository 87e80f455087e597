"""Attention with a float position-bias mask added to its scores (T5's relative
positions): sdpa takes the bias as a mask, the CPU falls back to its math path when that
mask needs a gradient, eager attention takes the scores in the bias's dtype."""

from __future__ import annotations

from ftmem.arch import Architecture, Param, layout
from ftmem.dtypes import FP32
from ftmem.ops.context import LayerContext
from ftmem.ops.dropout import Dropout
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig


@register("biased_attention")
class BiasedAttention:
    """The attention core (self or cross) between the q/k/v projections and o."""

    @staticmethod
    def parameters(arch: Architecture) -> tuple[Param, ...]:
        """Each stack's relative position bias table (kept by its first block)."""
        if not arch.encoder_decoder:
            return ()
        return tuple(p for p in layout(arch).outer if p.kind == "position")

    @staticmethod
    def saved(
        ctx: LayerContext,
        s_q: int,
        s_k: int,
        kv_tokens: int,
        needs: frozenset[str],
        mask_layer: bool,
        mask_grad: bool,
    ) -> list[Saved]:
        """The attention core with T5's position bias as a float mask.

        ``s_q`` queries per sequence (``ctx.tokens`` in all) attend to ``s_k`` keys
        (``kv_tokens`` in all). ``mask_layer``: the mask is made in this layer (self-attention) rather than shared;
        ``mask_grad``: the bias trains, so the mask needs a gradient.
        """
        if not needs:
            return []
        arch, run, T = ctx.arch, ctx.run, ctx.tokens
        b, nh, inner, e = run.batch_size, arch.num_heads, arch.q_size, ctx.e
        scores = b * nh * s_q * s_k
        p = arch.dropout_rate
        out: list[Saved] = []
        math = BiasedAttention.math_path(arch, run, mask_grad)

        def keep(what: str, size: int, kind: Kind) -> None:
            out.append(Saved(what, size, kind, Side.ATTENTION))

        if run.attn == "eager" or math:
            # q·kᵀ keeps each operand for the other's gradient; + bias (+ causal mask); the
            # softmax keeps its output when q or k needs a gradient, dropout its mask; probs·v
            # keeps the probabilities for v's gradient and v for theirs. Eager: scores in the
            # dtype of the bias (the self-attention's is the parameters', fp32 under autocast;
            # the cross-attention's zeros are q's), probabilities cast back to 16 bits for
            # probs·v under autocast. The CPU's math path: fp32 copies of q, kᵀ and v for its
            # batched matmuls, fp32 probabilities.
            if math:
                qe = se = pe = FP32
                label = "math attention: fp32 "
                qk, v = Kind.ATTN_COPY, Kind.ATTN_COPY
            else:
                qe, se, pe = e, max(e, BiasedAttention.bias_bytes(ctx, mask_layer)), e
                label = ""
                qk, v = Kind.ATTN_QK, Kind.ATTN_V
            scores_grad = bool(needs & {"q", "k"})
            if "k" in needs:
                keep(f"{label}q", T * inner * qe, qk)
            if "q" in needs:
                keep(f"{label}k", kv_tokens * inner * qe, qk)
            if scores_grad:
                keep(f"{label}v", kv_tokens * inner * qe, v)
                keep(f"{label}softmax output (s²)", scores * se, Kind.ATTN_PROBS)
                if p:
                    out += Dropout.saved(ctx, "attention probabilities", scores, se, Side.ATTENTION)
            if "v" in needs and (p or se != pe):  # a tensor of its own: dropped or cast
                keep(f"{label}probabilities for v (s²)", scores * pe, Kind.ATTN_PROBS)
            elif "v" in needs and not scores_grad:  # the softmax output, kept for v only
                keep(f"{label}softmax output (s²)", scores * se, Kind.ATTN_PROBS)
            return out
        keep("q, k, v", (T + 2 * kv_tokens) * inner * e, Kind.ATTN_QKV)
        size = T * inner * e + b * nh * s_q * FP32
        keep("attention output + logsumexp", size, Kind.ATTN_OUTPUT)
        if mask_layer or BiasedAttention.bias_bytes(ctx, mask_layer) != e:
            # made (or, by autocast, cast) in every layer; the zero bias otherwise is shared
            keep("position-bias mask (s²)", nh * s_q * s_k * e, Kind.ATTN_MASK)
        return out

    @staticmethod
    def math_path(arch: Architecture, run: RunConfig, mask_grad: bool) -> bool:
        """sdpa on the CPU takes its math path when the mask needs a gradient or with
        dropout (its flash kernel supports neither); CUDA's memory-efficient kernel both."""
        return run.attn != "eager" and run.device == "cpu" and bool(mask_grad or arch.dropout_rate)

    @staticmethod
    def bias_bytes(ctx: LayerContext, self_attention: bool) -> int:
        """The position bias's dtype: the bias table's (the parameters') for self-attention;
        the cross-attention's zeros take q's (fp32 out of a 4-bit linear under autocast)."""
        if self_attention or ctx.quantized_outputs_in_input_dtype:
            return ctx.residual
        return ctx.e

    @staticmethod
    def o_input_is_kernel_output(ctx: LayerContext, mask_grad: bool) -> bool:
        """The fused kernels' output is o's input (one storage, kept by the kernel); eager
        attention and the CPU's math path copy it first."""
        run = ctx.run
        return run.attn != "eager" and not BiasedAttention.math_path(ctx.arch, run, mask_grad)

    @staticmethod
    def backward_workspace(
        arch: Architecture,
        run: RunConfig,
        e: int,
        q_tokens: int,
        s_q: int,
        s_k: int,
        mask_grad: bool,
    ) -> int:
        """The gradients of q, k, v and of the s² scores. The CPU's math path (fp32
        copies, cast back to the projections' dtype) and eager attention take two s²
        gradients; the fused kernels none, but a mask that needs a gradient gets one,
        expanded over the batch."""
        b, nh = run.batch_size, arch.num_heads
        scores = b * nh * s_q * s_k
        qkv = (q_tokens + 2 * b * s_k) * arch.q_size
        if BiasedAttention.math_path(arch, run, mask_grad):
            return qkv * FP32 + (qkv * e if e != FP32 else 0) + scores * FP32
        if run.attn == "eager":
            return qkv * e + 2 * scores * FP32
        return qkv * e + (scores * e if mask_grad else 0)
