"""peft's trainable tokens on an untied token embedding: its forward's and its backward's
moments outside the blocks.

What runs (huggingface/peft src/peft/tuners/trainable_tokens/layer.py, the same in 0.21.2
and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40; ``get_merged_weights`` :219-230,
``forward_adapters`` :232-276), W the frozen embedding weight (V × h), delta the trained
rows (n × h, the adapter dtype):

- ``index = torch.tensor(token_indices)`` (n int64), ``delta.to(W)`` (n × h in W's dtype:
  a new tensor only where the dtypes differ), ``W.index_copy(0, index, ...)``: a whole
  V × h copy of the weight, in its dtype, every forward;
- ``F.embedding(ids, W_copy)``: the output (T × h); the copy is freed when the wrapper
  returns. Saved for backward: the ids (the embedding's own, counted with it) and the index
  (IndexCopyBackward), nothing else.

Backward, last of the step (after every block's): the embedding's dense gradient of the
copy (V × h, W's dtype) beside the gradient of its output (T × h), then index_select's
rows of it (n × h) for delta, cast to delta's dtype. The embedding output needs a gradient,
so every block keeps what a block whose input needs one keeps (step._block_states).

A tied head is wrapped too (peft's tied_adapter, sharing delta): its
``F.linear(x, W_copy)`` keeps its own V × h copy and its input to the head's backward
(head_saved), which makes the dense V × h gradient of the copy beside the logits' gradient
(head_backward). Under autocast the lookup is on neither autocast list (the copy stays in
W's dtype); a tied head's F.linear casts (head_saved). Not modelled (refused): a fused loss
on a tied head, encoder-decoder and image-text models.
"""

from __future__ import annotations

from ftmem.arch import Architecture
from ftmem.dtypes import BYTES_PER_ELEMENT, INDEX_BYTES
from ftmem.methods import TRAINABLE_TOKENS_DELTA, MethodPlan
from ftmem.ops.saved import Saved
from ftmem.run import RunConfig


def _sizes(run: RunConfig, plan: MethodPlan) -> tuple[int, int, int]:
    """(n, the weight's bytes per element, whether delta's cast to it is a new tensor)."""
    n = len(run.trainable_tokens)
    we = BYTES_PER_ELEMENT[plan.dtypes.head]
    cast = plan.dtypes.adapter != plan.dtypes.head
    return n, we, int(cast)


def saved(arch: Architecture, run: RunConfig, plan: MethodPlan) -> list[Saved]:
    """IndexCopyBackward's saved tensors (measured: the index and the source it copied, n
    int64 and delta's cast, a new n × h tensor only where the dtypes differ)."""
    if run.method != "trainable-tokens":
        return []
    n, we, cast = _sizes(run, plan)
    size = n * INDEX_BYTES + cast * n * arch.hidden_size * we
    return [Saved("trainable tokens' index and cast rows", size)]


def head_saved(arch: Architecture, run: RunConfig, plan: MethodPlan, T: int) -> list[Saved]:
    """A tied head, which peft wraps too (tied_adapter): its F.linear(x, W_copy) keeps
    its own V × h copy and its input (T × h), and its IndexCopyBackward the index and the
    cast rows, until the head's backward (measured: MmBackward0, IndexCopyBackward0).
    Under autocast over an fp32 head (linear: lower precision on CUDA's list as on the
    CPU's) F.linear keeps its 16-bit casts of both instead (W_copy is no leaf: not
    cached), and the copy's cast is the one the head's ``LM head 16-bit weight copy`` item
    (Loss.saved, ``casts_head``) counts: the input's cast is what this adds (measured,
    Qwen2 under bf16-mixed: activations +10.8 % when taken as an fp32 copy and input,
    +4.3 % with the weight's cast twice). Over a 16-bit head nothing is cast."""
    if run.method != "trainable-tokens" or not arch.tie_embeddings:
        return []
    dt = plan.dtypes
    if dt.casts_head:
        copy = T * arch.hidden_size * BYTES_PER_ELEMENT[dt.compute]
        return [Saved("trainable tokens' head input cast", copy), *saved(arch, run, plan)]
    we = BYTES_PER_ELEMENT[dt.head]
    copy = (arch.vocab_size + T) * arch.hidden_size * we
    return [Saved("trainable tokens' head copy and input", copy), *saved(arch, run, plan)]


def head_backward(arch: Architecture, run: RunConfig, plan: MethodPlan, T: int) -> int:
    """A tied head's backward (MmBackward0, then IndexCopyBackward0): the logits' gradient
    (T × V, compute dtype), the copy's dense gradient (V × h), the input's gradient (T × h)
    and the n rows taken of it; 0 but for trainable tokens on a tied head."""
    if run.method != "trainable-tokens" or not arch.tie_embeddings:
        return 0
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    n, we, _ = _sizes(run, plan)
    V, h = arch.vocab_size, arch.hidden_size
    return T * V * e + V * h * we + T * h * e + n * h * we


def buffer_bytes(plan: MethodPlan, run: RunConfig) -> int:
    """``trainable_tokens_original`` (update_layer :158): the n original rows, a buffer
    beside the weights, in the adapter dtype (measured: peft's autocast_adapter_dtype casts
    it with delta, fp32 on a 16-bit base); 0 for the other methods."""
    if run.method != "trainable-tokens":
        return 0
    delta = next(g for g in plan.groups if g.name.endswith(TRAINABLE_TOKENS_DELTA))
    return delta.nbytes


def forward_moment(arch: Architecture, run: RunConfig, plan: MethodPlan, T: int) -> int:
    """At F.embedding, before the first block: the V × h copy and the output (T × h) it
    writes, beyond the saved index and cast (0 for the other methods)."""
    if run.method != "trainable-tokens":
        return 0
    we = BYTES_PER_ELEMENT[plan.dtypes.head]
    return arch.vocab_size * arch.hidden_size * we + T * arch.hidden_size * we


def backward_moment(arch: Architecture, run: RunConfig, plan: MethodPlan, T: int) -> int:
    """The embedding's backward, after the blocks': its output's gradient (T × h), the
    dense V × h gradient of the copy and the n rows index_select takes of it, in the
    weight's dtype (0 for the other methods)."""
    if run.method != "trainable-tokens":
        return 0
    n, we, _ = _sizes(run, plan)
    h = arch.hidden_size
    return T * h * we + arch.vocab_size * h * we + n * h * we
