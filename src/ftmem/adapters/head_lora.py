"""peft's LoRA on the LM head (``--lora-targets ...,lm_head``) on transformers' standard
loss path: what the adapter keeps, its forward at the logits' sum and its backward.

The head is a plain peft ``lora.Linear`` (peft 0.21.2 tuners/lora/layer.py
Linear.forward :1088-1113): ``result = result + lora_B(lora_A(dropout(x))) * scaling``
then ``result.to(torch_result_dtype)``; its items are the block adapters' own
(ftmem.adapters.lora.LoRA) with in = h and out = V."""

from __future__ import annotations

from ftmem.adapters.lora import LoRA, output_bytes
from ftmem.arch import HEAD, Architecture, Linear
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.methods import MethodPlan
from ftmem.ops.context import LayerContext
from ftmem.ops.dropout import Dropout
from ftmem.ops.loss import AdaptedPieces
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


def piece_rows(run: RunConfig, chunk: int) -> tuple[int, int, int]:
    """LitGPT's head pieces: how many, the rows of a full one and of the last (b × the
    positions ``x.split(chunk, dim=1)`` gives each)."""
    pieces = -(-run.positions // chunk)
    last = run.positions - (pieces - 1) * chunk
    return pieces, run.batch_size * chunk, run.batch_size * last


def _piece_saved_per_row(arch: Architecture, run: RunConfig, plan: MethodPlan) -> int:
    """Bytes per row that one piece's adapter keeps and frees in its own backward (its
    dropout's output and mask, lora_A's output; HeadLoRA.saved summed over the pieces):
    the input itself, where lora_A reads it, is the whole head input's storage and stays."""
    dt = plan.dtypes
    e, ae = BYTES_PER_ELEMENT[dt.compute], BYTES_PER_ELEMENT[dt.adapter]
    a_out = e if dt.autocast else ae
    if run.dropout <= 0:
        return run.r * a_out
    dropped = e if dt.autocast else ae
    return arch.hidden_size * (dropped + Dropout.mask_bytes(run.device, ae)) + run.r * a_out


def chunked_head_lora(
    arch: Architecture, run: RunConfig, plan: MethodPlan, chunk: int
) -> AdaptedPieces:
    """LitGPT's LoRALinear on its chunked LM head (``lora_head: true``): its moments, which
    ops.loss.held_logits_head weighs with the frozen head's (T·V logits in e bytes, beyond
    every saved activation and the held fp32 logits, the fp32 log-softmax not yet made in
    forward and freed in backward).

    litgpt@00af8b0d litgpt/lora.py GPT.forward calls ``self.lm_head(x_i)`` per piece and
    LoRALinear.forward makes ``pretrained = self.linear(x)``, then ``lora = (dropout(x) @
    A.T @ B.T) * scaling`` and ``pretrained + lora``: each piece holds its base output,
    lora_B's output and the scaled one (the sum replacing lora_B's) beside the earlier
    pieces' sums, the later pieces' saved tensors not yet made. The base matmul (the
    4-bit head's dequantisation) runs before the branch: its moment is the frozen head's.

    Backward runs the pieces from the last, each branch before its base (autograd's
    latest-created-first order): a piece's scaled gradient (c·V), MmBackward's gradients
    for B (V·r) and lora_A's output (c·r); from the second piece on, the earlier piece's B
    gradient waits in AccumulateGrad's buffer, with A's (r·h) and its input's gradient
    (c·h, SplitBackward's buffer), while its logits' gradient and saved tensors are freed.
    At the last piece's base backward (the dequant) the branch's B and A gradients
    exist, its saved tensors are freed and its input gradient replaces the dropout's
    output. Measured on the CPU against a re-implementation: tests/test_litgpt_head_lora.py."""
    V, h, r = arch.vocab_size, arch.hidden_size, run.r
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    T = run.batch_size * run.positions
    pieces, c, cl = piece_rows(run, chunk)
    saved_row = _piece_saved_per_row(arch, run, plan)
    log_softmax = T * V * FP32
    forward = T * V * e + 2 * cl * V * e - log_softmax  # at the last piece's sum
    branch = T * V * e + cl * V * e + r * V * e + cl * r * e - log_softmax
    if pieces > 1:  # the piece before the last one, and the last piece's backward
        forward = max(forward, T * V * e + (2 * c - cl) * V * e - cl * saved_row - log_softmax)
        second = (c - cl) * V * e + 2 * r * V * e + c * r * e + r * h * e + cl * h * e
        branch = max(branch, T * V * e + second - cl * saved_row - log_softmax)
    # the base's backward at the last piece: B's and A's gradients and the branch's input
    # gradient (SplitBackward's buffer), the piece's saved tensors freed
    base = r * V * e + r * h * e + cl * h * e - cl * saved_row
    return AdaptedPieces(forward, branch, base)
