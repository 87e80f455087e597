"""peft's adaption prompt (LLaMA-Adapter): what its gated prompt attention keeps for backward.

Read at peft 0.21.2, src/peft/tuners/adaption_prompt/layer.py (AdaptedAttention.forward for
Llama and Mistral, AdaptedAttentionGPT.forward for GPT-2) and utils.py
(llama_compute_query_states, gpt2_compute_query_states). Unlike LitGPT's
(adapters.llama_adapter), nothing is cached: every forward runs the prompt parameter
``adaption_prompt`` (1, n, h) through the frozen k_proj and v_proj (GPT-2: c_attn), repeats
the result over the batch (``.repeat(bsz, 1, 1, 1)``, then ``repeat_interleave`` over the
query groups), recomputes the query states (q_proj and the rotary again), and attends with
plain matmuls::

    scores = q @ kᵀ / √d                          (b, heads, s, n)
    scores = gate * softmax(scores, fp32).to(dt)
    out    = o_proj((scores @ v) → (b, s, heads·d)) + attention output   (GPT-2: no o_proj)

Measured on the CPU with tiny Llama, Mistral and GPT-2 models (torch 2.13, transformers
5.25): per gated block the saved tensors are exactly those of :meth:`AdaptionPrompt.saved`,
none of the prompt's k/v projections keeps anything new (frozen weights; their inputs are
the parameter), and q_proj's recomputation reads the input norm's output the attention
already keeps (tests/test_adaption_prompt.py)."""

from __future__ import annotations

from ftmem.dtypes import FP32
from ftmem.ops.context import LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side


@register("adaption_prompt")
class AdaptionPrompt:
    """The gated prompt attention of one peft AdaptedAttention."""

    @staticmethod
    def saved(ctx: LayerContext, q_grad: bool) -> list[Saved]:
        """With b·s tokens, H heads of d, n prompt tokens and e the compute dtype's bytes:

        - the first matmul's query, b·H·s·d·e (bmm keeps its copy of the rotated q; GPT-2 at
          b = 1: a view of c_attn's whole output, b·s·3h·e, as the reshape needs no copy);
        - its keys, b·H·n·d·e, only where q needs a gradient (the block's input does: every
          gated block but the lowest);
        - the fp32 softmax's output, b·H·s·n·4 (``_softmax`` keeps its result);
        - its cast to the compute dtype, b·H·s·n·e, kept by the gate's multiply (none in
          fp32: the cast is the softmax's own tensor);
        - the gated scores and the values, b·H·s·n·e and b·H·n·d·e, kept by the second
          matmul. The values and keys are repeated b times (``.repeat``): nothing shares
          their storage."""
        arch, run = ctx.arch, ctx.run
        b = run.batch_size
        s = ctx.tokens // b
        H, d, n, e = arch.num_heads, arch.head_size, run.adaption_prompt[0], ctx.e
        query = ctx.tokens * H * d * e
        if b == 1 and arch.traits.model_types[0] == "gpt2":
            query = ctx.tokens * (arch.q_size + 2 * arch.kv_size) * e
        probs = b * H * s * n  # elements of the scores over the prompt
        prompt = b * H * n * d  # elements of the repeated keys (values)
        kept = [
            ("query", query),
            ("softmax (fp32)", probs * FP32),
            ("softmax cast", probs * e if e != FP32 else 0),
            ("gated scores, values", (probs + prompt) * e),
            ("keys", prompt * e if q_grad else 0),
        ]
        return [
            Saved(f"adaption prompt: {what}", size, Kind.LLAMA_ADAPTER, Side.ATTENTION)
            for what, size in kept
            if size
        ]
