"""LitGPT's LLaMA-Adapter (litgpt/adapter.py) and Adapter v2 (litgpt/adapter_v2.py): what the
gated adaption prompt's attention and v2's per-linear bias and scale keep for backward.

Read at Lightning-AI/litgpt@0f021f3a (the commit that added the resource tables' adapter
rows, lit_gpt/adapter.py CausalSelfAttention.scaled_dot_product_attention, adapter_v2.py
AdapterV2Linear.forward) and @26857050 (litgpt/, unchanged in what is kept)."""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import FP32
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side

# the memory-efficient kernel pads the float mask's key dim to a multiple of 16
# (aten/src/ATen/native/transformers/attention.cpp preprocess_mask) and its logsumexp's
# query dim to a multiple of 32 (mem_eff_attention kernel_forward.h kAlignLSE)
MASK_ALIGN = 16
LSE_ALIGN = 32


def _ceil(n: int, k: int) -> int:
    return -(-n // k) * k


@register("llama_adapter")
class LlamaAdapter:
    """The gated adaption prompt of one block, and v2's scaled linears."""

    @staticmethod
    def gate_saved(ctx: LayerContext, q_grad: bool) -> list[Saved]:
        """``y + gating_factor * ay`` with ``ay = sdpa(q, ak, av, amask)`` over the n prompt
        keys. The gate's multiply keeps ``ay`` (b, s, heads, head_dim) for the gate's
        gradient. Where q needs a gradient the kernel also keeps its inputs and output:
        q and ``ay`` are already kept, ak and av are the module's cached tensors (LitGPT
        caches them in every forward, detached when validation ran first: issue #1287),
        so only its logsumexp and the float mask (the boolean ``amask`` converted; a mask
        rules FlashAttention out, so the memory-efficient kernel runs) are new."""
        arch, run = ctx.arch, ctx.run
        b = run.batch_size
        s = ctx.tokens // b
        out = [
            Saved(
                "adaption prompt: attention output (gate)",
                ctx.tokens * arch.q_size * ctx.e,
                Kind.LLAMA_ADAPTER,
                Side.ATTENTION,
            )
        ]
        if q_grad:
            n = run.adaption_prompt[0]
            lse = b * arch.num_heads * _ceil(s, LSE_ALIGN) * FP32
            mask = s * _ceil(n, MASK_ALIGN) * ctx.e
            what = "adaption prompt: logsumexp, mask"
            out.append(Saved(what, lse + mask, Kind.LLAMA_ADAPTER, Side.ATTENTION))
        return out

    @staticmethod
    def scale_saved(
        ctx: LayerContext, linears: list[Linear], state: BlockState, side: Side
    ) -> list[Saved]:
        """AdapterV2Linear: ``adapter_scale * (linear(x) + adapter_bias)`` keeps the sum
        (b·s·out, compute dtype) for the scale's gradient; the bias's add keeps nothing."""
        return [
            Saved(
                f"{lin.label} adapter v2: pre-scale output",
                ctx.tokens * lin.out_features * ctx.e,
                Kind.LLAMA_ADAPTER,
                side,
                (lin,),
            )
            for lin in linears
            if lin.module in state.v2_scaled
        ]

    @staticmethod
    def head_saved(ctx: LayerContext) -> list[Saved]:
        """v2's LM head is an AdapterV2Linear too: each of LitGPT's 128-token head chunks
        keeps its pre-scale logits, b·s·vocab in all (litgpt adapter_v2.py GPT.lm_head)."""
        size = ctx.tokens * ctx.arch.vocab_size * ctx.e
        return [Saved("LM head adapter v2: pre-scale logits", size, Kind.LLAMA_ADAPTER)]
