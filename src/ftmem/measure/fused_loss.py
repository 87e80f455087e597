"""A CPU reference of Liger-Kernel's fused linear cross-entropy, for measurement.

Liger (``LigerFusedLinearCrossEntropyFunction``) never materialises the full logits:
the tokens are cut into chunks of ``next_pow2(ceil(BT / ceil(V / H)))`` rows; each
chunk's logits (chunk × V, input dtype) are turned into their gradient in place by a
Triton kernel, which gives this chunk's rows of the input gradient and adds to the
weight gradient. Forward keeps the two gradients for backward, which only scales
them. The Triton kernel computes the softmax in registers; here it runs a few rows at
a time in fp32, so that its temporaries stay negligible, as on the GPU.
"""

from __future__ import annotations

import math

import torch

from ftmem.measure.build import hf_model
from ftmem.ops.loss import CHUNKS  # torchtune's num_output_chunks, as the estimate takes it

IGNORE_INDEX = -100
_ROWS_AT_ONCE = 4  # fp32 softmax of this many rows at a time (Triton: in registers)


def liger_chunk_rows(tokens: int, hidden: int, vocab: int) -> int:
    """Rows per chunk, as Liger picks them."""
    inc_factor = math.ceil(vocab / hidden)
    return 1 << max(0, math.ceil(math.log2(math.ceil(tokens / inc_factor))))


class FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor):
        bt, h = x.shape
        v = weight.shape[0]
        rows = liger_chunk_rows(bt, h, v)
        n = int((target != IGNORE_INDEX).sum())
        grad_input = torch.zeros_like(x)
        grad_weight = torch.zeros_like(weight) if weight.requires_grad else None
        loss = torch.zeros(bt, dtype=torch.float32, device=x.device)
        for start in range(0, bt, rows):
            xc = x[start : start + rows]
            tc = target[start : start + rows]
            logits = xc @ weight.t()
            for r in range(0, logits.shape[0], _ROWS_AT_ONCE):
                block = logits[r : r + _ROWS_AT_ONCE]
                t = tc[r : r + _ROWS_AT_ONCE]
                f = block.float()
                lse = torch.logsumexp(f, dim=-1)
                keep = t != IGNORE_INDEX
                picked = f.gather(1, t.clamp(min=0).unsqueeze(1)).squeeze(1)
                loss[start + r : start + r + len(t)] = torch.where(keep, lse - picked, 0.0)
                grad = torch.softmax(f, dim=-1)
                grad[torch.arange(len(t)), t.clamp(min=0)] -= 1.0
                grad *= keep.unsqueeze(1) / max(n, 1)
                block.copy_(grad)  # in place, as the kernel does
                del f, grad
            grad_input[start : start + rows] = logits @ weight
            if grad_weight is not None:
                grad_weight.addmm_(logits.t(), xc)
            del logits
        ctx.save_for_backward(grad_input, grad_weight)
        return loss.sum() / max(n, 1)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_input, grad_weight = ctx.saved_tensors
        if not torch.equal(grad_output, torch.ones_like(grad_output)):
            grad_input = grad_input * grad_output
            grad_weight = grad_weight * grad_output if grad_weight is not None else None
        return grad_input, grad_weight, None


def fused_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The causal-LM loss of ``model`` on ``ids`` with the fused head + cross-entropy
    (what Liger patches into ``*ForCausalLM.forward`` in training)."""
    base = hf_model(model)
    body = getattr(base, base.base_model_prefix)  # model.model / model.transformer
    hidden = body(input_ids=ids).last_hidden_state
    head = base.get_output_embeddings()
    x = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    target = ids[:, 1:].reshape(-1)
    return FusedLinearCrossEntropy.apply(x, head.weight, target)


def chunked_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """torchtune's chunked output + CEWithChunkedOutputLoss: the LM head applied to 8
    chunks of the sequence, each chunk's logits upcast to fp32 only inside its own
    cross-entropy."""
    base = hf_model(model)
    body = getattr(base, base.base_model_prefix)
    hidden = body(input_ids=ids).last_hidden_state
    head = base.get_output_embeddings()
    logits = [head(chunk) for chunk in hidden.chunk(CHUNKS, dim=1)]
    labels = torch.nn.functional.pad(ids[:, 1:], (0, 1), value=IGNORE_INDEX)
    total = torch.zeros((), dtype=torch.float32, device=ids.device)
    for chunk, target in zip(logits, labels.chunk(CHUNKS, dim=1), strict=True):
        total = total + torch.nn.functional.cross_entropy(
            chunk.float().reshape(-1, chunk.shape[-1]),
            target.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
    return total / (labels != IGNORE_INDEX).sum()
