"""Compose the components into one training step's peak, phase by phase.

A step is forward (activations pile up, the loss materialises the logits),
backward (activations are freed block by block while gradients appear) and the
optimizer step (weights + gradients + states + the step's temporaries). With
``zero_grad(set_to_none=True)`` gradients do not exist during forward, so the
peak is the largest of these moments, not the sum of the buckets; the sum is
kept as ``accounting="simple"`` (the seed's rule).
"""

from __future__ import annotations

from ftmem.activations import BlockState, Saved, block_saved, outer_saved, runs_eager
from ftmem.arch import Architecture, count_params
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.hardware import DEFAULT_ALLOCATOR_RESERVE_FRACTION, DEFAULT_CUDA_CONTEXT_BYTES, Gpu
from ftmem.methods import MethodPlan, plan_method
from ftmem.optim import optimizer_state_bytes, optimizer_step_temporary_bytes
from ftmem.phases import StepSizes, find_peak
from ftmem.result import AtPeak, Estimate, Memory, ModelInfo, SavedItem
from ftmem.run import RunConfig

FP32 = 4
SIMPLE_STATES_PER_PARAM = {  # 16-bit values per trainable parameter, seed's rule
    "adamw": 2,
    "adamw-fp32": 2,
    "adamw-8bit": 2,
    "paged-adamw-8bit": 2,
    "sgd": 0,
    "sgd-momentum": 1,
    "adafactor": 1,
    "lion": 1,
}


def _block_states(arch: Architecture, run: RunConfig, plan: MethodPlan) -> list[BlockState]:
    """Per block (bottom to top): does its input need a gradient, do its weights train."""
    L = arch.num_layers
    adapted = frozenset(lin.module for lin in plan.adapted)
    first_trainable = L - plan.trainable_blocks
    # Trainable embeddings make every block's input need a gradient; with gradient
    # checkpointing transformers makes the embedding output require grad for PEFT too.
    inputs_grad = plan.outer_trainable or run.grad_ckpt
    states = []
    for i in range(L):
        if i < first_trainable:
            states.append(BlockState(inputs_grad, False, frozenset()))
            continue
        weights = run.method in ("full", "freeze")
        x_grad = inputs_grad or i > first_trainable
        states.append(BlockState(x_grad, weights, adapted))
    return states


def _sum(items: list[Saved]) -> int:
    return sum(s.nbytes for s in items)


def estimate_step(
    arch: Architecture, run: RunConfig, gpu: Gpu | None = None, overhead_bytes: int | None = None
) -> Estimate:
    """Predict the memory of one steady-state training step."""
    plan = plan_method(arch, run)
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    T = run.batch_size * run.seq_len
    V, h = arch.vocab_size, arch.hidden_size
    notes = list(plan.notes)

    weights = sum(g.nbytes for g in plan.groups)
    grad_groups = [g for g in plan.groups if g.trainable]
    grads = sum(g.total_numel * g.element_bytes for g in grad_groups)
    states = optimizer_state_bytes(plan.groups, run)
    opt_temp = optimizer_step_temporary_bytes(plan.groups, run)

    # Activations per block, computed once per distinct block state.
    block_states = _block_states(arch, run, plan)
    cache: dict[BlockState, list[Saved]] = {}
    per_block: list[int] = []
    for st in block_states:
        if st not in cache:
            cache[st] = block_saved(arch, run, plan, st, T)
        per_block.append(_sum(cache[st]))
    outer_below, outer_above = outer_saved(arch, run, plan, T)
    outer_items = outer_below + outer_above
    outer = _sum(outer_items)
    if run.grad_ckpt:
        # each checkpointed block keeps only its input; backward recomputes one block
        full_block = max(per_block)
        ckpt = [T * h * plan.dtypes.residual_bytes if b else 0 for b in per_block]
        per_block_kept = ckpt
        recompute = full_block
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

    upcast = e != FP32
    peak_info = find_peak(
        StepSizes(
            weights=weights,
            states=states,
            grads=grads,
            grads_outer=grads_outer,
            grads_per_block=grads_block,
            trainable_blocks=plan.trainable_blocks,
            acts_per_block=tuple(per_block_kept),
            acts_below=_sum(outer_below),
            acts_above=_sum(outer_above),
            logits_forward=T * V * e + (T * V * FP32 if upcast else 0),
            forward_block_transient=_forward_block_transient(plan, run),
            loss_backward=2 * T * V * FP32,
            block_workspace=_block_backward_workspace(arch, run, plan, e, T),
            # the final norm's backward, its fp32 input still saved
            head_workspace=_norm_backward_workspace(arch, e, T) + T * h * FP32,
            recompute=recompute,
            optimizer_temporaries=opt_temp,
            grads_persist=run.grad_accum > 1,
        )
    )
    phases = peak_info.phases
    if run.accounting == "simple":
        n_train = plan.n_trainable
        grads_s = 2 * n_train
        states_s = 2 * SIMPLE_STATES_PER_PARAM[run.optimizer] * n_train
        peak = weights + activations + grads_s + states_s
        at_peak = AtPeak(
            weights=weights,
            gradients=grads_s,
            optimizer_states=states_s,
            activations=activations,
            temporaries=0,
        )
        memory_grads, memory_states, temporaries, phase = grads_s, states_s, 0, "sum (simple)"
        notes.append(
            "Simple accounting: weights + activations + gradients + optimizer states, "
            "each gradient and state 16-bit; an upper bound, not a phase of the step."
        )
    else:
        phase, at_peak = peak_info.phase, peak_info.at_peak
        peak = at_peak.total
        memory_grads, memory_states, temporaries = grads, states, at_peak.temporaries

    if overhead_bytes is None:
        overhead = DEFAULT_CUDA_CONTEXT_BYTES + int(peak * DEFAULT_ALLOCATOR_RESERVE_FRACTION)
    else:
        overhead = overhead_bytes
    total = peak + overhead
    fits = None if gpu is None else total <= gpu.memory_bytes
    headroom = None if gpu is None else gpu.memory_bytes - total

    typical = cache[block_states[-1]]
    memory = Memory(
        weights_bytes=weights,
        gradients_bytes=memory_grads,
        optimizer_states_bytes=memory_states,
        activations_bytes=activations,
        temporaries_bytes=temporaries,
        peak_allocated_bytes=peak,
        overhead_bytes=overhead,
        total_bytes=total,
        peak_phase=phase,
        at_peak=at_peak,
        phases=phases,
        activations_per_block=[SavedItem(what=s.what, bytes=s.nbytes) for s in typical],
        activations_outer=[SavedItem(what=s.what, bytes=s.nbytes) for s in outer_items],
    )
    if run.attn == "flash":
        notes.append(
            "flash-attn is not measured here (no CPU kernel): assumed to keep what sdpa's "
            "flash kernel keeps (output + logsumexp)."
        )
    if arch.is_moe:
        notes.append(
            "MoE: activations count the routed tokens (batch tokens × experts per token); "
            "the grouped matmuls process them together, so routing imbalance does not change "
            "them here, but expert-parallel setups would see it."
        )
    if arch.family == "gemma2" and run.attn != "eager":
        notes.append(
            "Gemma-2 has no sdpa path in transformers 5: its attention runs eagerly and keeps "
            "the soft-capped s² scores."
        )
    if arch.family == "falcon":
        notes.append("Falcon's attention runs eagerly in fp32 in transformers 5: s² scores kept.")
    return Estimate(
        model=ModelInfo(
            name=arch.name,
            family=arch.family,
            n_params=count_params(arch),
            n_trainable_params=plan.n_trainable,
        ),
        run=_resolved_run(run, plan),
        memory=memory,
        gpu=None
        if gpu is None
        else {"name": gpu.name, "id": gpu.id, "memory_bytes": gpu.memory_bytes},
        fits=fits,
        headroom_bytes=headroom,
        notes=notes,
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
    f = arch.intermediate_size * (arch.experts_per_token if arch.is_moe else 1)
    if arch.mlp == "gated":
        width = 2 * f
    elif arch.family == "gpt2" and arch.activation == "gelu_tanh":
        width = 3 * f  # the written-out tanh-GELU: gradients of x³, tanh and their product
    else:
        width = f
    attn = 0
    if runs_eager(arch, run):
        attn = 2 * run.batch_size * arch.num_heads * run.seq_len**2 * FP32
    cast_grad = 0
    dt = plan.dtypes
    if plan.adapted and not dt.autocast and dt.adapter != dt.compute:
        cast_grad = T * arch.hidden_size * BYTES_PER_ELEMENT[dt.adapter]
    mlp = T * width * e + T * arch.hidden_size * FP32
    if run.grad_ckpt:
        return mlp + cast_grad
    return max(mlp, attn, _norm_backward_workspace(arch, e, T)) + cast_grad


def _resolved_run(run: RunConfig, plan: MethodPlan) -> dict[str, object]:
    resolved: dict[str, object] = run.model_dump()
    resolved["precision_regime"] = plan.dtypes.describe()
    resolved["autocast"] = plan.dtypes.autocast
    resolved["compute_dtype"] = plan.dtypes.compute
    if run.method in ("lora", "qlora", "dora"):
        resolved.update(
            lora_r=run.r,
            lora_alpha=run.alpha,
            lora_targets=run.targets,
            lora_dropout=run.dropout,
            adapter_dtype=plan.dtypes.adapter,
            adapted_modules=[lin.module for lin in plan.adapted],
        )
    if run.method == "qlora":
        resolved.update(quant=run.quant_format, double_quant=run.uses_double_quant)
    if run.method == "freeze":
        resolved["trainable_layers"] = plan.trainable_blocks
    return resolved
