"""The output gate of Qwen3.5's and Qwen3-Next's full-attention layers, as transformers
5.25 runs it (models/qwen3_5/modeling_qwen3_5.py Qwen3_5Attention.forward, l.855-897):
q_proj writes 2·head_dim per head, ``torch.chunk`` splits each head into the query and a
gate, and the attention's output, made contiguous, is multiplied by sigmoid(gate) before
o_proj (activations._attention adds ``saved``; o_proj keeps the gated product, not the
kernel's output; norm.QKNorm keeps ``query_norm_input``).

What it keeps (tests/test_output_gate.py measures the real layer with saved-tensor hooks on
the CPU, fp32 and bf16): the sigmoid's output (T·heads·head_dim·e: for the gate's gradient,
and the product's for the attention output's) and the contiguous attention output (for the
gate's gradient). The gate also changes what the query's norm keeps: its input is a view of
q_proj's output, so in fp32, where ``x.float()`` copies nothing, the norm keeps the whole
q_proj output, query and gate (T·2·heads·head_dim·4); in 16 bits its fp32 copy of the
query alone."""

from __future__ import annotations

from ftmem.dtypes import FP32
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side


@register("output_gate")
class OutputGate:
    """sigmoid(gate) ⊙ attention output, between the kernel and o_proj."""

    @staticmethod
    def saved(
        tokens: int, heads: int, head_dim: int, e: int, gate_grad: bool, out_grad: bool
    ) -> list[Saved]:
        """``gate_grad``: the gate (q_proj's output) needs a gradient; ``out_grad``: the
        attention output does (anything in q, k, v or below trains)."""
        width = tokens * heads * head_dim * e
        items = []
        if gate_grad or out_grad:  # SigmoidBackward's result, the product's other operand
            items.append(("sigmoid(gate)", width))
        if gate_grad:  # the product's operand for sigmoid(gate)'s gradient
            items.append(("attention output (contiguous)", width))
        return [
            Saved(f"output gate: {what}", size, Kind.ATTN_OUTPUT, Side.ATTENTION)
            for what, size in items
        ]

    @staticmethod
    def query_norm_input(tokens: int, heads: int, head_dim: int, e: int) -> int:
        """What the query's RMSNorm keeps as its fp32 input: the whole q_proj output where
        it is fp32 (the norm reads a view of it), else the query's fp32 copy."""
        if e == FP32:
            return tokens * 2 * heads * head_dim * FP32
        return tokens * heads * head_dim * FP32
