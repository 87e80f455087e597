"""peft's LoRA on the LM head (``--lora-targets ...,lm_head``) on transformers' standard
loss path: what the adapter keeps, its forward at the logits' sum and its backward.

The head is a plain peft ``lora.Linear`` (peft 0.21.2 tuners/lora/layer.py
Linear.forward :1088-1113): ``result = result + lora_B(lora_A(dropout(x))) * scaling``
then ``result.to(torch_result_dtype)``; its items are the block adapters' own
(ftmem.adapters.lora.LoRA) with in = h and out = V."""

from __future__ import annotations

from ftmem.adapters.lora import LoRA, output_bytes
from ftmem.arch import HEAD, Architecture, Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig


def head_linear(arch: Architecture) -> Linear:
    """The LM head as the linear the adapter wraps (h → V; never 4-bit: bitsandbytes
    leaves the head in the base dtype)."""
    return Linear(HEAD, (), arch.hidden_size, arch.vocab_size, False, quantizable=False)


@register("head_lora")
class HeadLoRA:
    """LoRA's A and B beside the LM head."""

    @staticmethod
    def saved(ctx: LayerContext, head_input_kept: bool) -> list[Saved]:
        """What the head's adapter keeps: its dropout (output and mask) or its input's
        cast, lora_A's output (T × r) and autocast's weight copies, as a block adapter
        (LoRA.saved); where lora_A reads the head's input itself, that input (T × h, the
        final norm's output), unless the head already keeps it (a trained head)."""
        lin = head_linear(ctx.arch)
        items, reads_input = LoRA.saved(
            ctx, lin, Side.OUTER, True, lin.in_features, ctx.e, shares_dropout=False
        )
        if reads_input and not head_input_kept:
            size = ctx.tokens * lin.in_features * ctx.e
            items.insert(0, Saved("lm_head lora_A input", size, Kind.LORA, Side.OUTER, (lin,)))
        return items

    @staticmethod
    def forward_transient(arch: Architecture, run: RunConfig, plan: MethodPlan, T: int) -> int:
        """At the sum: the base logits, lora_B's output scaled and the sum, each T × V
        (LoRA.forward_transient); the cast back to the logits' dtype after it holds the
        sum and its cast, no more than that."""
        e = BYTES_PER_ELEMENT[plan.dtypes.compute]
        return LoRA.forward_transient(run, plan, head_linear(arch), e, T)

    @staticmethod
    def backward(arch: Architecture, plan: MethodPlan, T: int) -> int:
        """The head's backward, the loss's saved tensors freed: the logits' gradient
        (T × V in their dtype), MulBackward's scaled copy for lora_B (T × V in the
        adapter output's dtype) and, where the sum was promoted (peft cast the input to
        an fp32 adapter without autocast), ToCopyBackward's cast of the gradient to it."""
        e = BYTES_PER_ELEMENT[plan.dtypes.compute]
        base_e, lora_e = output_bytes(plan, e)
        V = arch.vocab_size
        promoted = max(base_e, lora_e) if lora_e != base_e else 0
        return T * V * (e + lora_e + promoted)
