"""LitGPT's LLaMA-Adapter (litgpt/adapter.py) and Adapter v2 (litgpt/adapter_v2.py): what the
gated adaption prompt's attention and v2's per-linear bias and scale keep for backward.

Read at Lightning-AI/litgpt@0f021f3a (the commit that added the resource tables' adapter
rows, lit_gpt/adapter.py CausalSelfAttention.scaled_dot_product_attention, adapter_v2.py
AdapterV2Linear.forward) and @26857050 (litgpt/, unchanged in what is kept).

The prompt's keys and values are cached on the module in every forward, at both commits
(lit_gpt/adapter.py@0f021f3a l.127-144, litgpt/adapter.py@26857050 l.87-104: a plain
attribute ``adapter_kv_cache``, set where it is None and never reset; v2's attention
inherits it), and the finetuning scripts' first forward is a sanity ``validate()`` under
``@torch.no_grad()`` (finetune/adapter.py@0f021f3a l.159, litgpt/finetune/adapter.py@26857050
l.270-274; adapter_v2.py the same): the cached tensors carry no graph, so no gradient ever
reaches ``adapter_wte`` (issue Lightning-AI/litgpt#1287; fix PR #2327 open). It still has
requires_grad, so LitGPT counts it among the trainable parameters, but its ``.grad``
stays None and torch's AdamW makes it no state (methods.llama_adapter_groups); the cache
itself lives on the GPU from that first forward on (:func:`prompt_kv_cache_bytes`)."""

from __future__ import annotations

from ftmem.arch import Architecture, Linear
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.precision import Dtypes
from ftmem.run import LLAMA_ADAPTER_METHODS, RunConfig

# the memory-efficient kernel pads the float mask's key dim to a multiple of 16
# (aten/src/ATen/native/transformers/attention.cpp preprocess_mask) and its logsumexp's
# query dim to a multiple of 32 (mem_eff_attention kernel_forward.h kAlignLSE)
MASK_ALIGN = 16
LSE_ALIGN = 32


def _ceil(n: int, k: int) -> int:
    return -(-n // k) * k


def prompt_kv_cache_bytes(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
    """Every gated block's cached prompt keys and values (``adapter_kv_cache``), held on
    the GPU from the first forward to the end of the run: the fused qkv linear on the
    n-token prompt, split per query group; with more than one group each of ak and av
    goes through ``repeat_interleave(q_per_kv)``, a copy even at q_per_kv = 1, of
    n · heads · head_dim elements; with one (multi-query) both are views of the linear's
    whole output, n · (heads + 2) · head_dim (measured on the CPU, storages:
    tests/test_llama_adapter.py). In the linear's output dtype, the compute dtype.
    Llama 2 7B (30 gated blocks, bf16): 30 · 2 · 10 · 4096 · 2 = 4,915,200 bytes."""
    if run.method not in LLAMA_ADAPTER_METHODS:
        return 0
    n, start = run.adaption_prompt
    gated = max(arch.num_layers - start, 0)
    if arch.kv_heads == 1:
        per_block = n * (arch.num_heads + 2) * arch.head_size
    else:
        per_block = 2 * n * arch.num_heads * arch.head_size
    return gated * per_block * BYTES_PER_ELEMENT[dtypes.compute]


@register("llama_adapter")
class LlamaAdapter:
    """The gated adaption prompt of one block, and v2's scaled linears."""

    @staticmethod
    def gate_saved(ctx: LayerContext, q_grad: bool) -> list[Saved]:
        """``y + gating_factor * ay`` with ``ay = sdpa(q, ak, av, amask)`` over the n prompt
        keys. The gate's multiply keeps ``ay`` (b, s, heads, head_dim) for the gate's
        gradient. Where q needs a gradient the kernel also keeps its inputs and output:
        q and ``ay`` are already kept, ak and av are the module's cached tensors (LitGPT
        caches them in every forward, detached as validation runs first: issue #1287;
        counted beside the weights, :func:`prompt_kv_cache_bytes`), so only its logsumexp and the float mask (the boolean ``amask`` converted; a mask
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
