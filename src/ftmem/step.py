"""The components of one training step and their sizes in time.

Weights, gradients and optimizer states from the method's tensor groups, activations
per block and outside the blocks, and the transients of each moment (logits, loss,
norm and MLP backward workspaces, checkpoint recompute). The result feeds the
timeline (phases.py) as is for one GPU, or reshaped per rank by parallel.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ftmem.activations import (
    BlockState,
    Saved,
    block_saved,
    loss_rows,
    outer_saved,
    runs_eager,
)
from ftmem.arch import Architecture, layout
from ftmem.distill import Teacher, distill_sizes
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan, TensorGroup, plan_method
from ftmem.optim import optimizer_state_bytes, optimizer_step_temporary_bytes
from ftmem.phases import StepSizes
from ftmem.precision import Dtypes
from ftmem.run import RunConfig

FP32 = 4
CHUNKS = 8  # torchtune's num_output_chunks


def _block_states(arch: Architecture, run: RunConfig, plan: MethodPlan) -> list[BlockState]:
    """Per block (bottom to top): does its input need a gradient, do its weights train."""
    L = arch.num_layers
    adapted = frozenset(lin.module for lin in plan.adapted)
    first_trainable = L - plan.trainable_blocks
    # Trainable embeddings make every block's input need a gradient; with gradient
    # checkpointing transformers makes the embedding output require grad for PEFT too.
    inputs_grad = plan.outer_trainable or plan.embed_trainable or run.grad_ckpt
    if run.method in ("bitfit", "ia3", "prefix-tuning", "adapter"):
        # every block has trainable parameters (biases, IA³ vectors, its key/value prefix):
        # gradients flow from the top to block 0's, so every block's input but the first
        # needs a gradient
        biased = frozenset(plan.biased)
        scaled = frozenset(lin.module for lin, ff in plan.scaled if not ff)
        scaled_in = frozenset(lin.module for lin, ff in plan.scaled if ff)
        bottleneck = frozenset(lin.module for lin in plan.bottlenecked)

        def state(x_grad: bool) -> BlockState:
            return BlockState(
                x_grad,
                False,
                frozenset(),
                biased,
                plan.norm_bias_trainable,
                scaled,
                scaled_in,
                bottleneck=bottleneck,
            )

        # one object per distinct state: step_parts derives each once
        return [state(inputs_grad)] + [state(True)] * (L - 1)
    if run.method == "partial":
        return _partial_states(arch, plan, inputs_grad)
    if run.method in ("prompt-tuning", "p-tuning"):
        # the trainable prompt is part of the blocks' input
        return [BlockState(True, False, frozenset())] * L
    weights = run.method in ("full", "freeze", "galore")
    norms = run.method == "longlora"  # LongLoRA also trains every norm
    frozen = BlockState(inputs_grad, False, frozenset())
    lowest = BlockState(inputs_grad, weights, adapted, norms_trained=norms)
    above = BlockState(True, weights, adapted, norms_trained=norms)
    trainable = L - first_trainable
    return [frozen] * first_trainable + ([lowest] + [above] * (trainable - 1) if trainable else [])


def _partial_states(arch: Architecture, plan: MethodPlan, inputs_grad: bool) -> list[BlockState]:
    """partial: each block's own trainable tensors; a block's input needs a gradient once
    anything below it (or the embedding) trains."""
    lay = layout(arch)
    states = []
    below = inputs_grad
    for names in plan.trained_by_block:
        params = [p for p in lay.block if p.name in names]
        trained = frozenset(p.module for p in params if p.kind in ("linear", "router", "expert"))
        biased = frozenset(p.module for p in params if p.kind == "linear_bias")
        norms = any(p.kind == "norm" for p in params)
        states.append(
            BlockState(below, False, frozenset(), biased, trained=trained, norms_trained=norms)
        )
        below = below or bool(names)
    return states


def _sum(items: list[Saved]) -> int:
    return sum(s.nbytes for s in items)


@dataclass(frozen=True, slots=True)
class StepParts:
    """Everything one training step is made of, before the timeline picks the peak.

    ``sizes`` is the single-GPU step; the parallel planner (parallel.py) reshapes it
    per rank (sharding, pipeline stages) and runs the same timeline.
    """

    plan: MethodPlan
    sizes: StepSizes
    activations: int  # all kept for backward (the component size)
    per_block_full: tuple[int, ...]  # each block's saved bytes without checkpointing
    typical_block: tuple[Saved, ...]
    outer_items: tuple[Saved, ...]
    offloaded: int = 0  # activation offload: saved bytes held in host RAM instead


def step_parts(arch: Architecture, run: RunConfig, teacher: Teacher | None = None) -> StepParts:
    """The components of one step and their sizes in time (no peak yet); with a
    ``teacher``, the distillation step (ftmem.distill)."""
    plan = plan_method(arch, run)
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    T = run.batch_size * run.positions
    V, h = arch.vocab_size, arch.hidden_size

    weights = sum(g.nbytes for g in plan.groups)
    grad_groups = [g for g in plan.groups if g.trainable]
    grads = sum(g.total_numel * g.element_bytes for g in grad_groups)
    states = optimizer_state_bytes(plan.groups, run)
    opt_temp = optimizer_step_temporary_bytes(plan.groups, run)

    # Activations per block, computed once per distinct block state.
    block_states = _block_states(arch, run, plan)
    cache: dict[BlockState, list[Saved]] = {}
    per_block: list[int] = []
    previous, previous_sum = None, 0
    for st in block_states:
        if st is not previous:  # consecutive blocks usually share one state object
            if st not in cache:
                cache[st] = block_saved(arch, run, plan, st, T)
            previous, previous_sum = st, _sum(cache[st])
        per_block.append(previous_sum)
    outer_below, outer_above = outer_saved(arch, run, plan, T)
    outer_items = outer_below + outer_above
    outer = _sum(outer_items)
    if run.grad_ckpt:
        # each checkpointed block keeps only its input; backward recomputes one block
        per_block_kept = [T * h * plan.dtypes.residual_bytes if b else 0 for b in per_block]
        recompute = max(per_block)
    else:
        per_block_kept = per_block
        recompute = 0
    activations = sum(per_block_kept) + outer

    # Gradient bytes of one trainable block (they appear block by block in backward).
    grads_block = 0
    if plan.trainable_blocks:
        grads_block = (
            sum(g.total_numel * g.element_bytes for g in grad_groups if g.in_block)
            // plan.trainable_blocks
        )
    grads_outer = grads - grads_block * plan.trainable_blocks
    grads_embedding = sum(
        g.total_numel * g.element_bytes
        for g in grad_groups
        if not g.in_block and _is_token_embedding(g.name, arch.tie_embeddings)
    )

    offloaded = back = 0
    if run.activation_offload:
        # every saved tensor leaves the GPU in forward; backward brings back one node's
        # at a time (the largest item of a block, and the loss's fp32 log-softmax)
        offloaded = activations
        back = _offload_moment(arch, run, plan, cache[block_states[-1]], e, T)
        per_block_kept = [0] * len(per_block_kept)
        outer_below, outer_above = [], []
        activations = 0
    if run.optimizer_in_backward:  # each gradient is freed by its own step
        grads = grads_outer = grads_block = grads_embedding = 0
    sizes = StepSizes(
        weights=weights,
        states=states,
        grads=grads,
        grads_outer=grads_outer,
        grads_embedding=grads_embedding,
        tied_embedding_backward=_tied_embedding_backward(arch, grad_groups),
        merge_transient=_merge_transient(plan, run),
        in_backward=run.optimizer_in_backward,
        step_block=_step_in_backward([g for g in grad_groups if g.in_block], run),
        step_outer=_step_in_backward([g for g in grad_groups if not g.in_block], run),
        grads_per_block=grads_block,
        trainable_blocks=plan.trainable_blocks,
        acts_per_block=tuple(per_block_kept),
        acts_below=_sum(outer_below),
        acts_above=_sum(outer_above),
        logits_forward=_logits_forward(arch, run, e, T) + _prefix_cache(arch, run, plan.dtypes),
        forward_block_transient=max(
            _forward_block_transient(plan, run),
            _frozen_forward_transient(arch, run, e, plan.dtypes.residual_bytes, T)
            if not per_block[-1] or run.activation_offload
            else 0,
        ),
        # the log-softmax's and the logits' fp32 gradients (a fused loss kept its own; a
        # chunked one has one chunk's at a time)
        loss_backward={"fused": 0, "chunked": 2 * T * V * FP32 // CHUNKS}.get(
            run.loss, 2 * T * V * FP32
        )
        + (T * V * FP32 if offloaded and run.loss != "fused" else 0),
        # offloaded: one op's saved tensors back beside its workspace, and the block's
        # own gradients (the peak moves to the end of backward, measured)
        block_workspace=back + grads_block
        if offloaded
        else _block_backward_workspace(arch, run, plan, e, T),
        # the final norm's backward, its fp32 input still saved
        head_workspace=_norm_backward_workspace(arch, e, T) + T * h * FP32,
        recompute=recompute,
        optimizer_temporaries=opt_temp,
        grads_persist=run.grad_accum > 1,
    )
    if teacher is not None:
        kd = distill_sizes(teacher, arch, run)
        outer_items.append(Saved("distillation: student and teacher fp32 distributions", kd.kept))
        activations += kd.kept
        sizes = dataclasses.replace(
            sizes,
            weights=sizes.weights + kd.weights,
            acts_above=sizes.acts_above + kd.kept,
            logits_forward=sizes.logits_forward + kd.loss_forward,
            loss_backward=sizes.loss_backward + kd.loss_backward,
            teacher_forward=kd.teacher_forward,
        )
    return StepParts(
        plan=plan,
        sizes=sizes,
        activations=activations,
        per_block_full=tuple(per_block),
        typical_block=tuple(cache[block_states[-1]]),
        outer_items=tuple(outer_items),
        offloaded=offloaded,
    )


def _prefix_cache(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
    """Prefix tuning keeps every layer's keys and values (prefix + own) in a cache until
    the forward returns. They are what the attention kernel saves, except where sdpa
    repeats GQA heads (it needs a mask here) or autocast casts them to 16 bits from the
    fp32 of the prefix: then the cache's tensors are extra until the forward ends."""
    P = run.prefix_len
    if not P:
        return 0
    repeats = arch.kv_heads not in (1, arch.num_heads) and run.attn != "flash"
    upcast = dtypes.autocast and dtypes.base == "fp32"
    if not (repeats or upcast):
        return 0
    nbytes = BYTES_PER_ELEMENT[dtypes.base if upcast else dtypes.compute]
    return arch.num_layers * 2 * run.batch_size * (run.seq_len + P) * arch.kv_size * nbytes


def _logits_forward(arch: Architecture, run: RunConfig, e: int, T: int) -> int:
    """At the loss in forward: the logits and their fp32 copy; with Liger's fused loss,
    one chunk of logits, the shifted hidden states' copy and the per-row losses."""
    V, h = arch.vocab_size, arch.hidden_size
    if run.loss == "fused":
        rows = loss_rows(run)
        chunk = liger_chunk_rows(rows, h, V)
        return min(chunk, rows) * V * e + rows * h * e + rows * FP32
    upcast = T * V * FP32 if e != FP32 else 0
    if run.loss == "chunked":  # torchtune: one chunk upcast at a time
        upcast //= CHUNKS
    return T * V * e + upcast


def liger_chunk_rows(tokens: int, hidden: int, vocab: int) -> int:
    """Rows per chunk of Liger's fused linear cross-entropy: the next power of two of
    tokens / ceil(vocab / hidden), so that a chunk's logits are about the size of the
    hidden states."""
    inc = -(-vocab // hidden)
    return 1 << max(0, (-(-tokens // inc) - 1).bit_length())


def _merge_transient(plan: MethodPlan, run: RunConfig) -> int:
    """ReLoRA's merge (peft ``merge_adapter``): per adapted linear, B·A and the scaled
    product (out × in, adapter dtype) before it is added into the base weight in place."""
    if run.method != "relora" or not plan.adapted:
        return 0
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    return max(2 * lin.in_features * lin.out_features * lin.copies * ae for lin in plan.adapted)


def _step_in_backward(grad_groups: list[TensorGroup], run: RunConfig) -> int:
    """Optimizer in backward: the largest single gradient together with its own step's
    temporaries (one optimizer per parameter)."""
    if not run.optimizer_in_backward:
        return 0
    return max(
        (
            g.numel * g.element_bytes
            + optimizer_step_temporary_bytes([dataclasses.replace(g, count=1)], run)
            for g in grad_groups
        ),
        default=0,
    )


def _tied_embedding_backward(arch: Architecture, grad_groups: list[TensorGroup]) -> int:
    """A trained tied embedding: at the end of backward the embedding path's gradient
    and its sum with the LM head path's are both new (vocab × hidden) tensors."""
    if not arch.tie_embeddings:
        return 0
    return sum(
        2 * g.total_numel * g.element_bytes
        for g in grad_groups
        if not g.in_block
        and g.name.endswith(("embed_tokens.weight", "wte.weight", "word_embeddings.weight"))
    )


def _is_token_embedding(name: str, tied: bool) -> bool:
    """A parameter whose gradient appears only after the first block's backward: the
    token embedding (unless tied: then it is the LM head too, whose gradient comes first),
    learned position embeddings and prompt encoders."""
    base = name.split(".modules_to_save")[0]
    if base.startswith("prompt_encoder.") or base.endswith("wpe.weight"):
        # peft's prompt encoders run first in forward, so their gradients come last
        return True
    return not tied and base.endswith(
        ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")
    )


def _forward_block_transient(plan: MethodPlan, run: RunConfig) -> int:
    """DoRA (peft) forms, in every forward, W + scale·(B·A) through an in×in identity
    to take its column norm: the identity, the LoRA weight, its transpose and the sum,
    for the largest adapted linear; other methods allocate nothing comparable."""
    if run.method != "dora" or not plan.adapted:
        return 0
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    return max(
        (lin.in_features**2 + 3 * lin.in_features * lin.out_features) * ae for lin in plan.adapted
    )


def _offload_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> int:
    """With activations offloaded, a block's backward holds one op's saved tensors, back
    on the GPU, beside that op's own workspace: the larger of the norm's (its fp32
    input back), the MLP's (the largest MLP item back) and attention's (its saved
    inputs and output back, with eager attention's score gradients)."""
    h = arch.hidden_size
    items = {x.what: x.nbytes for x in block}
    # the norm's fp32 input back, and the fp32 residual gradient arriving (measured)
    norm = _norm_backward_workspace(arch, e, T) + 2 * T * h * FP32
    mlp_items = [n for w, n in items.items() if w.startswith(("gate", "up", "down", "MLP"))]
    # the MLP brings back two T·f tensors at once (the gated product's inputs); GPT-2's
    # written-out tanh-GELU three of its four (measured)
    f = arch.intermediate_size * (arch.experts_per_token if arch.is_moe else 1)
    at_once = 3 if arch.family == "gpt2" else 2
    back = min(max(mlp_items, default=0), at_once * T * f * e)
    mlp = _mlp_backward_workspace(arch, plan, e, T) + back
    attn = sum(n for w, n in items.items() if w.startswith(("rotary", "v", "attention", "softmax")))
    if runs_eager(arch, run):
        attn += 2 * run.batch_size * arch.num_heads * run.positions**2 * FP32
    return max(norm, mlp, attn)


def _frozen_forward_transient(
    arch: Architecture, run: RunConfig, e: int, residual: int, T: int
) -> int:
    """A block that keeps nothing for backward still builds its MLP intermediates in
    forward: gate, activation, up and their product (GPT-2's written-out tanh-GELU: four
    T·f terms too; a plain MLP: its output and activation). Beside them live the
    embedding output and the block's input (held by the model's forward), the residual
    and the norm output."""
    f = arch.intermediate_size * (arch.experts_per_token if arch.is_moe else 1)
    terms = 4 if arch.mlp == "gated" or arch.family == "gpt2" else 2
    mlp = terms * T * f * e
    attn = 0
    if runs_eager(arch, run):  # the fp32 scores and their softmax
        s = run.positions
        attn = 2 * run.batch_size * arch.num_heads * s * (s + run.prefix_len) * FP32
    return max(mlp, attn) + 4 * T * arch.hidden_size * residual


def _norm_backward_workspace(arch: Architecture, e: int, T: int) -> int:
    """Transient of one norm's backward.

    RMSNorm in transformers is written out in fp32 (x.float(), pow, mean, rsqrt, mul),
    so autograd's backward of it holds about four fp32 T·h tensors at once plus the
    incoming gradient; LayerNorm's fused kernel needs only its output gradient.
    """
    h = arch.hidden_size
    if arch.norm == "layernorm":
        return T * h * e
    return 4 * T * h * FP32 + T * h * e


def _block_backward_workspace(
    arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int
) -> int:
    """Transient gradients inside one block's backward (the largest of its ops).

    The MLP: the gradient of its intermediate and of gate/up outputs (T·f each) plus
    the fp32 residual gradient (T·h); eager attention: the s² score gradients; a norm's
    backward. Adapters that cast their input to another dtype add the gradient of that
    cast copy (T·h in the adapter dtype).

    With checkpointing, the block's recomputed activations are at their fullest when
    its backward starts with the MLP; by the time its norms' backward runs they are
    mostly freed, so only the MLP part is added to the recompute.
    """
    attn = 0
    if runs_eager(arch, run):
        s = run.positions
        attn = 2 * run.batch_size * arch.num_heads * s * (s + run.prefix_len) * FP32
    cast_grad = 0
    dt = plan.dtypes
    if plan.adapted and not dt.autocast and dt.adapter != dt.compute:
        cast_grad = T * arch.hidden_size * BYTES_PER_ELEMENT[dt.adapter]
    mlp = _mlp_backward_workspace(arch, plan, e, T)
    if run.grad_ckpt:
        return mlp + cast_grad
    return max(mlp, attn, _norm_backward_workspace(arch, e, T)) + cast_grad


def _mlp_backward_workspace(arch: Architecture, plan: MethodPlan, e: int, T: int) -> int:
    """The MLP's backward: the gradients of its intermediate and of gate/up outputs
    (T·f each) plus the fp32 residual gradient (T·h); IA³'s scaling if larger."""
    f = arch.intermediate_size * (arch.experts_per_token if arch.is_moe else 1)
    if arch.mlp == "gated":
        width = 2 * f
    elif arch.family == "gpt2" and arch.activation == "gelu_tanh":
        width = 3 * f  # the written-out tanh-GELU: gradients of x³, tanh and their product
    else:
        width = f
    return max(T * width * e + T * arch.hidden_size * FP32, _ia3_workspace(plan, e, T))


def _ia3_workspace(plan: MethodPlan, e: int, T: int) -> int:
    """IA³'s feed-forward scaling in backward (measured): the down projection's input
    gradient cast to the vector's dtype (the uncast one freed), and both products of the
    scaling's backward (for the vector's sum and for the input) before the sum."""
    ff = [lin.in_features for lin, feedforward in plan.scaled if feedforward]
    if not ff:
        return 0
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    width = max(ff)
    return 3 * T * width * ae
