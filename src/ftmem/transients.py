"""The moments of a block's step that several ops share: the largest workspace of a
block's backward, a checkpointed block's recompute and adapters' moments in it, an
offloaded block's backward, a frozen block's forward, an optimizer step inside backward.
Each op answers for its own part (ftmem.ops, ftmem.adapters); this module composes them
as they overlap in time. Each rule was measured on the CPU (tests/accuracy); sizes in
bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from functools import partial

from ftmem.adapters.adamss import AdaMSS
from ftmem.adapters.beft import BEFT
from ftmem.adapters.boft import BOFT
from ftmem.adapters.boft import element_bytes as rotated_input_bytes
from ftmem.adapters.c3a import C3A
from ftmem.adapters.dora import DoRA
from ftmem.adapters.glora import GLoRA
from ftmem.adapters.hira import HiRA
from ftmem.adapters.hra import HRA
from ftmem.adapters.hra import offloaded_backward as hra_offloaded
from ftmem.adapters.ia3 import IA3
from ftmem.adapters.lora import LoRA
from ftmem.adapters.lycoris import LoHa
from ftmem.adapters.miss import MiSS
from ftmem.adapters.oft import OFT
from ftmem.adapters.oft import offloaded_chain as oft_offloaded_chain
from ftmem.adapters.osf import OSF
from ftmem.adapters.peanut import Peanut
from ftmem.adapters.psoft import PSOFT
from ftmem.adapters.shared_bank import banked_backward
from ftmem.adapters.shira import Shira
from ftmem.adapters.supertuning import Supertuning
from ftmem.adapters.vera import VeRA
from ftmem.arch import MLP_ROLES, Architecture, Linear, layout
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32, INDEX_BYTES
from ftmem.methods import NAMED_TRAINING_METHODS, MethodPlan, TensorGroup, experts_are_linears
from ftmem.ops.attention import Attention, runs_eager
from ftmem.ops.context import LayerContext, bias_promotes_outputs
from ftmem.ops.embedding import Embedding
from ftmem.ops.gated_deltanet import (
    GatedDeltaNet,
    refuse_graphless_deltanet,
    refuse_trained_accumulation,
)
from ftmem.ops.linear import LinearOp
from ftmem.ops.mlp import MLP
from ftmem.ops.moe import MoE
from ftmem.ops.norm import NORM_KINDS, Norm, QKNorm
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.optim import (
    galore_step_moments,
    galore_svd_tensors,
    optimizer_step_temporary_bytes,
)
from ftmem.precision import resolve_dtypes
from ftmem.run import ADAPTER_METHODS, RunConfig

# what adapter_moment counts as one adapted linear's own: its adapter's and its weight copy
ADAPTER_OWN = frozenset({Kind.LORA, Kind.DORA, Kind.WEIGHT_COPY})


def step_in_backward(grad_groups: list[TensorGroup], run: RunConfig) -> int:
    """Optimizer in backward: the largest single gradient together with its own step's
    temporaries (one optimizer per parameter)."""
    if not run.optimizer_in_backward:
        return 0
    return max(
        (g.grad_bytes + optimizer_step_temporary_bytes([g.counted(1)], run) for g in grad_groups),
        default=0,
    )


def step_in_backward_tensors(grad_groups: list[TensorGroup], run: RunConfig) -> tuple[int, ...]:
    """The requests of :func:`step_in_backward`'s moment one by one, where the step
    makes them separately and that is known: GaLore renewing its projector (the
    gradient, then the SVD's tensors, ftmem.optim.galore_svd_tensors) when that is
    the moment; () otherwise (the moment is one request)."""
    if not run.optimizer_in_backward or run.method != "galore":
        return ()
    best = 0
    tensors: tuple[int, ...] = ()
    for g in grad_groups:
        grad = g.grad_bytes
        total = grad + optimizer_step_temporary_bytes([g.counted(1)], run)
        if total <= best:
            continue
        best, tensors = total, ()
        if g.galore_rank:
            update, svd = galore_step_moments(g, run)
            if svd >= update:
                tensors = (grad, *galore_svd_tensors(g, run))
    return tensors


def offload_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> int:
    """With activations offloaded, a block's backward holds one op's saved tensors, back
    on the GPU, beside that op's own workspace: the largest of the norm's (its fp32
    input back), the MLP's (the largest MLP item back), attention's (its saved inputs
    and output back, with eager attention's score gradients) and a weight-rebuilding
    adapter's own (offloaded_adapter_moments)."""
    return max(_offload_moments(arch, run, plan, block, e, T))


def offloaded_own_gradients(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    block: list[Saved],
    e: int,
    T: int,
    own: int,
) -> tuple[int, int]:
    """What a trained block's offloaded backward holds of its own gradients (``own``: all
    of them) beyond its workspace (:func:`offload_moment`), at its largest moment; then
    the same for the lowest trained block when nothing below it takes a gradient.

    Its backward runs top down: at the MLP's moment (its activation's backward) only
    the down projection's gradients exist, at the post-attention norm's the MLP's, at
    attention's and the input norm's all of them are taken. The lowest trained block
    with nothing below taking a gradient has no input-norm moment: that norm's backward
    makes its weight's gradient only (measured: GPT-2 full finetuning offloaded, bf16,
    the tanh-GELU's backward beside its c_proj's gradients alone; Qwen2 freeze with one
    trained block, bf16-mixed, the peak at the post-attention norm's backward beside the
    MLP's gradients). May be negative for the lowest block (its largest moment is below
    the workspace the others share)."""
    norm, mlp, attention, at_mlp, at_other = _offload_moments(arch, run, plan, block, e, T)
    down = min(own, _block_gradients(arch, plan, {"down"}))
    mlp_side = (
        own if arch.parallel_attn_mlp else min(own, _block_gradients(arch, plan, set(MLP_ROLES)))
    )
    workspace = max(norm, mlp, attention, at_mlp, at_other)
    # (an adapter's moment at an MLP linear beside the MLP's gradients, at another beside
    # all of the block's: upper bounds)
    moments = [mlp + down, norm + mlp_side, attention + own, at_mlp + mlp_side, at_other + own]
    return max(*moments, norm + own) - workspace, max(moments) - workspace


def _block_gradients(arch: Architecture, plan: MethodPlan, roles: set[str]) -> int:
    """One trained block's gradient bytes of its linears with one of these roles (their
    weights and biases, or their adapters' tensors); the experts' are not counted."""
    modules = tuple(
        p.name.rsplit(".", 1)[0] + "."
        for p in layout(arch).block
        if p.kind == "linear" and roles & set(p.roles)
    )
    return sum(
        g.grad_bytes
        for g in plan.groups
        if g.trainable and g.in_block and g.name.startswith(modules)
    )


def _offload_moments(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> tuple[int, int, int, int, int]:
    """The norm's, the MLP's and attention's moments of an offloaded block's backward, and
    its adapters' at an MLP linear and at another (offloaded_adapter_moments)."""
    h = arch.hidden_size
    # the norm's fp32 input back, and the fp32 residual gradient arriving (measured)
    norm = Norm.backward_workspace(arch, e, T) + 2 * T * h * FP32
    norm = max(norm, QKNorm.offloaded_backward(arch, T))
    mlp = MLP.offloaded_backward(arch, run, plan, block, e, T)
    attention = Attention.offloaded_backward(arch, run, block)
    return norm, mlp, attention, *offloaded_adapter_moments(arch, run, plan, block, e, T)


def offloaded_adapter_moments(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> tuple[int, int]:
    """An adapter's own backward in an offloaded block, at its largest MLP linear and at
    its largest other one (the weight-rebuilding and rotating methods:
    _peft_other_moment's; 0 for the others, the LoRA family's offloaded moments being the
    MLP's and attention's, measured).

    Each of those methods' backward moments is counted beyond what the block kept, less
    what its earlier nodes freed of the linear's own items; with the block's tensors on
    the host a node holds only what it unpacked (torch 2.13 autograd/graph.py
    save_on_cpu: ``unpack_from_cpu`` when the node reads its saved tensor, freed when the
    node is done), one of those items at most. So a linear's moment without the block,
    beside its own items (its input and its adapter's saved tensors, all of them) bounds
    it: SHiRA, LoHa/LoKr/FourierFT, OFT's rotation, the others of _peft_other_moment. Where
    a node brings back less than all of them, or a backward holds more than the
    non-offloaded moment counts, the method's own offloaded moment: OSF's two nodes, HRA's
    F.linear and chain steps, OFT's Cayley series (traced on one peft linear each).
    Measured on the tiny Llama offloaded, 64-token vocabulary (the block's backward the
    peak): 1 × 8 and 3 × 50 tokens, bf16 and bf16-mixed (calibration/notes/peft.md)."""
    if not run.activation_offload or run.grad_ckpt:
        return 0, 0
    # (no block: an attention linear's moment is not lowered by the MLP side it freed)
    moment = _peft_other_moment(arch, run, plan, [], e, T)
    if moment is None:
        return 0, 0
    if run.method == "osf":  # its two nodes, each with what it unpacked
        in_bytes = partial(LinearOp.input_bytes, plan, e=e)
        moments = [
            (lin, OSF.offloaded_backward(plan, run, lin, T, in_bytes(lin), e)) for lin in plan.osf
        ]
    elif run.method == "hra":  # F.linear's node or its chain's steps
        moments = [(lin, hra_offloaded(plan, run, lin, T)) for lin in plan.householder]
    else:
        own: dict[Linear, int] = {}
        for x in block:
            for lin in x.linears:
                own[lin] = own.get(lin, 0) + x.nbytes
        moments = [(lin, moment + b) for lin, b in own.items()]
    if run.method == "oft":  # its Cayley series' backward, beyond backward_moment's
        moments += [(lin, oft_offloaded_chain(plan, run, lin, T)) for lin in plan.block_rotated]
    mlp = [m for lin, m in moments if set(lin.roles) & set(MLP_ROLES)]
    other = [m for lin, m in moments if not set(lin.roles) & set(MLP_ROLES)]
    return max(mlp, default=0), max(other, default=0)


def frozen_forward_transient(
    arch: Architecture,
    run: RunConfig,
    e: int,
    residual: int,
    T: int,
    plan: MethodPlan | None = None,
) -> int:
    """A block that keeps nothing for backward (frozen, checkpointed or offloaded) still
    builds its MLP intermediates (or eager attention its fp32 scores and softmax) in
    forward. Beside them live the embedding output and the block's input (held by the
    model's forward), the residual and the norm output; with LoRA on its experts, their
    rebuilt stacks (:meth:`MoE.lora_stacks`)."""
    # (gpt-oss's experts compute in their parameters' dtype; a biased Falcon's projections
    # answer in it under autocast: bias_promotes_outputs)
    promoted = bias_promotes_outputs(arch, plan.dtypes if plan else resolve_dtypes(run))
    in_residual = arch.traits.clamped_swiglu or promoted
    mlp = MLP.forward_transient(arch, run, residual if in_residual else e, T)
    mlp += MoE.lora_stacks(plan) if plan is not None else 0
    attn = Attention.eager_forward_scores(arch, run, e)
    return max(mlp, attn) + 4 * T * arch.hidden_size * residual


def deltanet_model_held(arch: Architecture, run: RunConfig, plan: MethodPlan, T: int) -> int:
    """What the model holds beside ftmem's activations at a Gated DeltaNet block's own
    forward or checkpointed backward moment, found at those measured peaks (the live
    storages listed by allocation site; tests/accuracy `qwen35text-`, 8·b·s + 8·s + 16 B
    at rotary 4): the batch's int64 input ids (T, held by the training loop from before
    the forward to after the backward; saved by no node of a frozen embedding), the
    model's int64 position ids (s: Qwen3_5TextModel.forward, transformers 5.25
    modeling_qwen3_5.py l.1325-1326, ``torch.arange(s) + past_seen_tokens`` expanded as
    a view to (4, b, s), named until the forward returns; a checkpointed block holds the
    view ``text_position_ids`` it gets as the keyword ``position_ids``, bound in the
    partial GradientCheckpointingLayer checkpoints, until its backward: as
    Embedding.rotary_held's tables) and the rotary's two fp32 buffers (``inv_freq`` and
    ``original_inv_freq``, rotary_dim / 2 each, Qwen3_5TextRotaryEmbedding.__init__
    l.145-146: no parameters, so not among ftmem's weights). A trained embedding saves the
    ids (Embedding.saved): then they are among the activations already."""
    buffers = 2 * (arch.rotary_size // 2) * FP32
    ids_saved = plan.outer_trainable or plan.embed_trainable
    return (0 if ids_saved else T * INDEX_BYTES) + run.positions * INDEX_BYTES + buffers


def graphless_deltanet_forward(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    per_block: Sequence[int],
    e: int,
    residual: int,
    T: int,
) -> int:
    """The forward of a Gated DeltaNet block that keeps nothing (frozen below the lowest
    trained block, or checkpointed: its first forward): its layer's peak above its end
    (GatedDeltaNet.forward_transient, without a graph) and its output, beside the
    embedding output, the block's input (the residual) and the input norm's output, T·h
    each, and what the model holds beside (deltanet_model_held). Taken against the
    forward moment, which counts every block's kept tensors: those of the blocks from
    this one up are not made yet. Checkpointed, each block keeps its input, block 0's
    the embedding output (so not counted again). (transformers 5.25 modeling_qwen3_5.py
    Qwen3_5DecoderLayer.forward, Qwen3_5TextModel.forward: ``hidden_states =
    inputs_embeds`` stays named.) Under autocast with checkpointing the forward moment
    counts every trained fp32 weight's cached 16-bit cast (LinearOp.autocast_cache),
    those of the blocks above not made yet: over by them (LoRA q,v r 4 on the tiny
    model: 2,304 B)."""
    linear = arch.linear_attention_blocks
    lin_attn = arch.linear_attention
    if linear is None or lin_attn is None:
        return 0
    shape, h, b = lin_attn.shape(arch.hidden_size), arch.hidden_size, run.batch_size
    autocast = plan.dtypes.autocast  # (fp32 weights, e the autocast dtype's bytes)
    transient = GatedDeltaNet.forward_transient(shape, b, T // b, e, False, autocast=autocast)
    held = deltanet_model_held(arch, run, plan, T)
    kept, named = list(per_block), [3 if i else 2 for i in range(len(per_block))]
    if run.grad_ckpt:
        # every block keeps its input only (block 0's: the embedding output), and its
        # first forward builds no graph: the block's input and norm output beside
        first = T * h * plan.dtypes.first_input_bytes
        kept = [first if i == 0 else T * h * residual for i in range(len(per_block))]
        named = [2] * len(per_block)
    moments = [
        transient + T * h * e + named[i] * T * h * residual + held - sum(kept[i:])
        for i in sorted(linear.indices)
        if run.grad_ckpt or not per_block[i]
    ]
    return max(moments, default=0)


def deltanet_backward_moments(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    linear_items: Sequence[tuple[tuple[Saved, ...], bool] | None],
    workspace: int,
    e: int,
    T: int,
) -> tuple[int, ...]:
    """Each checkpointed Gated DeltaNet block's backward moment beyond the top block's
    ``workspace`` (BlockTransients.workspace_by_block), bottom to top: its recompute
    rebuilt whole, less its MLP side (freed when the layer's backward starts,
    freed_before_attention), plus the layer's backward peak above its start
    (GatedDeltaNet.backward_workspace: an input needing a gradient, as checkpointing
    makes every block's; its outgoing gradient counted) and the gradient coming into
    the layer (T·h·e, held by its caller), and what the model holds beside
    (deltanet_model_held). () unless checkpointed. The incoming gradient is the
    residual stream's (fp32 under autocast, measured: T·h·2 B short with the layer's
    16-bit output's). Where the block trains, the gradients its MLP side made before
    (_mlp_side_gradients). None of the layer's projections adapted (else refused,
    ops.gated_deltanet.refuse_graphless_deltanet)."""
    if not run.grad_ckpt or not any(kept is not None for kept in linear_items):
        return ()
    lin_attn = arch.linear_attention
    assert lin_attn is not None
    mixer = [lin for lin in layout(arch).linears if lin.roles == ("linear_attention",)]
    if any(lin.module in {a.module for a in plan.adapted} for lin in mixer):
        refuse_graphless_deltanet(arch)
    if run.grad_accum > 1 and any(kept is not None and kept[1] for kept in linear_items):
        refuse_trained_accumulation(arch)
    shape, b, h = lin_attn.shape(arch.hidden_size), run.batch_size, arch.hidden_size
    L, mlp_grads = len(linear_items), _mlp_side_gradients(arch, run, plan)
    out = []
    for i, kept in enumerate(linear_items):
        if kept is None:
            out.append(0)
            continue
        items, weights_train = kept
        own_grads = mlp_grads if i >= L - plan.trainable_blocks else 0
        own = GatedDeltaNet.backward_workspace(
            shape, b, T // b, e, weights_train, autocast=plan.dtypes.autocast
        )
        own += T * h * plan.dtypes.residual_bytes + deltanet_model_held(arch, run, plan, T)
        own += own_grads
        out.append(own - freed_before_attention(arch, items) - workspace)
    return tuple(out)


def _mlp_side_gradients(arch: Architecture, run: RunConfig, plan: MethodPlan) -> int:
    """The gradients a trained block's MLP side has made when its attention's backward
    starts (the MLP's linears' and adapters', the post-attention norm's weight): the
    timeline counts a block's own gradients from after its backward (phases
    ._blocks_backward), these exist before its Gated DeltaNet layer's backward
    (measured: the tiny checkpointed full and freeze steps exactly these 36,992 B short
    in bf16, LoRA on the MLP its adapters' 7,680 B in fp32; Qwen3.5-MoE's router and 3-D
    experts too, 49,664 B in bf16 on its tiny model, LoRA on its experts 14,336 B). None
    new under gradient accumulation: every gradient exists already (measured where the
    blocks' weights are frozen; refused where they train, refuse_trained_accumulation)."""
    if run.grad_accum > 1:
        return 0
    modules = tuple(
        p.module + "."
        for p in layout(arch).block
        if (p.kind in ("linear", "linear_bias") and set(p.roles) <= set(MLP_ROLES))
        or (p.kind == "norm" and p.module == "post_attention_layernorm")
    )
    # a MoE block's router and 3-D experts (Qwen3.5-MoE): parameters, not modules, and
    # the adapters peft puts on the experts (groups named after the parameter)
    params = tuple(p.name for p in layout(arch).block if p.kind in ("expert", "router"))
    return sum(
        g.grad_bytes
        for g in plan.groups
        if g.trainable and g.in_block and g.name.startswith(modules + params)
    )


def freed_before_attention(arch: Architecture, block: Iterable[Saved]) -> int:
    """What a checkpointed block's backward has freed when its attention's backward
    starts: the MLP side, except a parallel block's MLP norm (it runs before the
    attention in forward, so its backward comes after)."""
    return sum(x.nbytes for x in block if _freed_before_attention(arch, x))


def _freed_before_attention(arch: Architecture, x: Saved) -> bool:
    return x.side is Side.MLP and not (arch.parallel_attn_mlp and x.kind in NORM_KINDS)


def checkpointed_moe_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int
) -> int:
    """A checkpointed block's recompute in its experts (gpt-oss; the measured peak of its
    checkpointed backward): beside the whole rebuilt block, the experts' locals
    (:meth:`MoE.routed_locals`), the MLP's input (when the router does not keep it), the
    residual and the gradient that came into the block (T·h each), and the float masks
    GptOssModel.forward built, one per layer type (b·s², held by the checkpoints as block
    inputs: alive, but saved by no op). Relative to the whole rebuilt block, as the
    attention's moment. Measured on tiny gpt-oss, LoRA bf16 with checkpointing: the
    backward peak -8.3 % (F = h/2) and -8.1 % (F = 2h) without it. Mixtral's grouped
    experts run the same code without biases; not re-measured."""
    if not (run.grad_ckpt and arch.is_moe and arch.traits.experts_transposed_with_bias):
        return 0
    ee = plan.dtypes.residual_bytes
    trains = top_block_trains(arch, run, plan)
    streams = T * arch.hidden_size * (2 * ee + (0 if trains else e))
    masks = Attention.layer_type_masks(arch, run, e)
    return MoE.routed_locals(arch, T, ee, e, trains, recompute=True) + streams + masks


def top_block_trains(arch: Architecture, run: RunConfig, plan: MethodPlan) -> bool:
    """Whether the top block's own weights (its experts and router) train."""
    if run.method in ("full", "freeze", "galore"):
        return True
    if run.method in NAMED_TRAINING_METHODS and plan.trained_by_block:
        return bool(plan.trained_by_block[-1] & {p.name for p in MoE.parameters(arch)})
    return False


def checkpointed_attention_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int
) -> int:
    """A checkpointed block's backward with eager attention: its recomputed attention
    side still held (the MLP side freed) while the softmax's backward holds the
    probabilities' gradient and its fp32 result (e + 4 bytes per score; fp32 scores:
    8; measured). Returned relative to the whole recomputed block."""
    if not (run.grad_ckpt and runs_eager(arch, run)):
        return 0
    scores = Attention.recomputed_softmax_backward(arch, run, e)
    mlp_side = freed_before_attention(arch, block)
    return scores + LoRA.cast_gradient(arch, plan, run.batch_size * run.positions) - mlp_side


def attention_kernel_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: Sequence[Saved], e: int, T: int
) -> int:
    """A fused attention kernel's backward (sdpa, FlashAttention-2), relative to the whole
    block's saved activations as the MLP's moment: the q, k and v gradients it returns
    (Attention.kernel_gradients) beside what every attention's backward holds
    (attention_backward_beside). Measured on the CPU: the tiny multi-query GPTBigCode
    and a grouped Llama with a padded batch, full finetuning in bf16 (the backward's peak
    there; tests/test_padding.py)."""
    grads = Attention.kernel_gradients(arch, run, e, T)
    if not grads:
        return 0
    return grads + attention_backward_beside(arch, run, plan, block, e, T)


def attention_backward_beside(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: Sequence[Saved], e: int, T: int
) -> int:
    """What an attention's backward holds beside its own tensors (a fused kernel's
    gradients, RingAttention's buffers), relative to the whole block's saved activations:
    the gradient of its output (T·q) and the residual stream's (T·h, the residual dtype)
    arriving; the MLP side, the output projection's own saved tensors and the attention
    output's dropout mask are freed by then (their backward ran), and the gradients the
    block's backward has made so far exist (attention_gradients_made). A parallel block
    with one norm (Phi, Falcon-7B) also holds the MLP branch's gradient of that norm's
    output, waiting for the attention branch's (T·h)."""
    h, r = arch.hidden_size, plan.dtypes.residual_bytes
    # (the top block's: a full-attention one, Architecture.of_layer_type)
    arriving = T * arch.of_layer_type(full=True).q_size * e + T * h * r
    if arch.parallel_attn_mlp and arch.norms_per_block == 1:
        arriving += T * h * e
    freed = freed_before_attention(arch, block) + sum(
        x.nbytes for x in block if x.side is Side.ATTENTION and _after_the_kernel(x)
    )
    return arriving + attention_gradients_made(arch, run, plan) - freed


def _after_the_kernel(x: Saved) -> bool:
    """Saved on the attention side by an op after the kernel: the output projection (its
    input, its adapter's tensors) and the dropout of its output."""
    if x.kind is Kind.RESIDUAL_DROPOUT:
        return True
    return bool(x.linears) and all(lin.roles == ("o",) for lin in x.linears)


def _gradients_laid_out(arch: Architecture, run: RunConfig, plan: MethodPlan) -> bool:
    """A block's own gradients can be counted in its backward's moments: every block
    trains the same tensors (not MoE, whose experts' gradients are not laid out per block
    here), and they neither exist already (accumulation) nor are stepped and freed at
    once (optimizer in backward)."""
    if run.grad_accum > 1 or run.optimizer_in_backward or arch.is_moe:
        return False
    return plan.trainable_blocks == arch.num_layers and not plan.trained_by_block


def attention_gradients_made(arch: Architecture, run: RunConfig, plan: MethodPlan) -> int:
    """The gradients a block's backward has made when its attention kernel's backward
    runs: every trainable tensor of the block but the q/k/v projections (and their
    adapters), the q/k norms and the norms before the attention (the input norm; a
    parallel block's norms all); where they are laid out per block
    (_gradients_laid_out)."""
    if not _gradients_laid_out(arch, run, plan):
        return 0
    names = arch.traits.names
    if names.sequential_norms and not arch.parallel_attn_mlp:
        norms = names.sequential_norms
    else:
        norms = names.norms.get(arch.norms_per_block, ())
    if arch.parallel_attn_mlp:
        before = set(norms)
    else:
        before = set() if arch.traits.norms_after_sublayers else set(norms[:1])
    before |= {
        p.module
        for p in layout(arch).block
        if (p.kind in ("linear", "linear_bias") and set(p.roles) & {"q", "k", "v"})
        or p.kind == "sink"
        or p.name.endswith(("q_norm.weight", "k_norm.weight"))
    }
    prefixes = tuple(m + "." for m in before)
    return sum(
        g.grad_bytes
        for g in plan.groups
        if g.trainable and g.in_block and not g.name.startswith(prefixes)
    )


def down_gradients_made(arch: Architecture, run: RunConfig, plan: MethodPlan, e: int) -> int:
    """The down projection's gradients (its weight's, its bias's, its adapter's), made
    when the MLP's largest backward moment comes: the down projection is the MLP's last
    op, so its backward runs first and autograd's AccumulateGrad stores each gradient as
    soon as it is made (the ready queue runs the highest sequence number first, torch
    2.13 torch/csrc/autograd/engine.h l.91-105 CompareNodeTaskTime, and AccumulateGrad's
    is UINT64_MAX, node.h l.340-343).

    - A gated MLP or GPT-2's written-out tanh-GELU peaks after down's backward, at the
      product's or the GELU's gradients (MLP.down_input_freed): each gradient is there in
      its parameter's dtype (under autocast ToCopyBackward has made the fp32 one: the
      weight's cast is made inside the down matmul, after the activation, so its node
      runs first).
    - A single fused activation (Falcon's GELU) peaks inside down's own backward, with the
      weight gradient as the matmul makes it (the compute dtype) beside its input's: the
      activation's backward after it holds as much (its new gradient, down's input and
      autocast's weight copy freed, the fp32 weight gradient made).

    Traced on the CPU, full finetuning with checkpointing, bf16: GPT-2's GELU backward
    holds c_proj's weight and bias gradients (73,920 B, the whole -2.5 % of the peak),
    Falcon's dense_4h_to_h MmBackward its bf16 weight gradient, Llama's product backward
    down_proj's. Where the gradients are laid out per block (_gradients_laid_out).

    A bottleneck adapter behind the down projection (the adapter method) runs its
    backward before it: its gradients are made too, and its saved tensors are freed
    (_behind_down_freed)."""
    if not _gradients_laid_out(arch, run, plan):
        return 0
    single = MLP.gradients(arch, run) == 1
    made = 0
    for g in _trained_down_groups(arch, plan):
        as_made = single and _is_down_weight(g)
        made += g.numel * e if as_made else g.grad_bytes
    return made


def _trained_down_groups(arch: Architecture, plan: MethodPlan) -> list[TensorGroup]:
    """The trainable tensors of a block's down projection: its weight and bias, or its
    adapter's."""
    prefixes = tuple(
        p.module + "."
        for p in layout(arch).block
        if p.kind in ("linear", "linear_bias") and "down" in p.roles
    )
    return [g for g in plan.groups if g.trainable and g.in_block and g.name.startswith(prefixes)]


def _is_down_weight(g: TensorGroup) -> bool:
    return not g.adapter and len(g.shape) == 2


def _down_weight_trains(arch: Architecture, run: RunConfig, plan: MethodPlan) -> bool:
    """Every block's down projection weight trains (full finetuning, GaLore), its
    gradients laid out per block (_gradients_laid_out)."""
    if not _gradients_laid_out(arch, run, plan):
        return False
    return any(_is_down_weight(g) for g in _trained_down_groups(arch, plan))


def _behind_down_freed(block: Iterable[Saved]) -> int:
    """A bottleneck adapter on the down projection's output (the adapter method) is the
    MLP's last op: its backward has run, and autograd has released its saved tensors
    (torch 2.13 torch/csrc/autograd/node.h ``release_variables``), when the MLP's moment
    comes. Traced: Llama, bf16 bottleneck adapters with checkpointing: the MLP's product
    backward holds none of the adapter's input and activation (67,200 B)."""
    return sum(
        x.nbytes
        for x in block
        if x.kind is Kind.BOTTLENECK and any("down" in lin.roles for lin in x.linears)
    )


def _down_backward_cast(
    arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int
) -> int:
    """Under autocast the gradient that reaches the MLP's 16-bit output from the fp32
    residual stream is its 16-bit cast (AddBackward0's ``_to_copy``, T·h), alive while
    down's own backward runs: the moment of a single fused activation's MLP whose down
    projection keeps its input (its weight trains). Traced: Falcon full bf16-mixed with
    checkpointing, rotary and falcon-rw layouts."""
    dt = plan.dtypes
    if not dt.autocast or dt.quantized or dt.residual_bytes == e:
        return 0
    if MLP.gradients(arch, run) != 1 or arch.is_moe:
        return 0
    if not _down_weight_trains(arch, run, plan):
        return 0
    return T * arch.hidden_size * e


def adapter_forward_build(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    e: int,
    T: int,
    keeps: bool,
    block: Sequence[Saved] = (),
) -> int:
    """The adapter build in the top block's forward, beyond that block's kept tensors unless
    it keeps none (frozen, or checkpointed: its forward runs without a graph): OFT's and
    BOFT's rotations (OFT.forward_build, BOFT.forward_build), MiSS bat's weight rebuild
    (MiSS.bat_build), else LoHa's, LoKr's or FourierFT's ΔW (LoHa.forward_build). C3A's and
    PSOFT's placed at their linear in ``block``, the top block's saved tensors in order
    (placed_in_block)."""
    # the block's kept tensors are on the GPU beside the build unless checkpointing drops
    # them or offload moves them to the host as they are saved: then the build counts whole
    kept = keeps and not run.grad_ckpt and not run.activation_offload
    if run.method == "oft":
        return OFT.forward_build(plan, run, T, rotated_input_bytes(plan), kept)
    if run.method == "boft":
        return BOFT.forward_build(plan, run, T, rotated_input_bytes(plan), kept)
    in_bytes = partial(LinearOp.input_bytes, plan, e=e)
    # where each linear runs in the top block (``block``: its saved tensors, in order),
    # when that block keeps them
    at = partial(placed_in_block, arch, run, plan, e, T, block if kept else ())
    if run.method == "glora":  # GLoRA's weight rebuild and its output's sums
        return GLoRA.forward_build(plan, run, T, e, kept, in_bytes)
    if run.method == "beft":  # BEFT's base output, promoted sum and cast
        return BEFT.forward_build(plan, T, e, kept)
    if run.method == "hra":  # HRA's reflection chain, the same way
        return HRA.forward_build(plan, run, T, e, kept)
    if run.method in ("psoft", "c3a", "adamss"):  # each placed at its linear
        return _placed_build(run, plan, T, e, at, kept)
    if run.method == "osf":  # OSF's concatenated factors and its output's sum
        return OSF.forward_build(plan, run, T, in_bytes, e, kept)
    if run.method == "peanut":  # Peanut's ΔW = B(relu(Wᵀ Aᵀ))·scaling, the same way
        return Peanut.forward_build(plan, run, T, in_bytes, e, kept)
    if run.method == "hira":  # HiRA's ΔW = W0 ⊙ (B A), the same way
        return HiRA.forward_build(plan, T, in_bytes, e, kept)
    if run.method == "shira":  # SHiRA's weight rebuild, kept but in a graph-less forward
        return Shira.build(run, plan, kept)
    if run.method == "supertuning":  # Super-Tuning's scatter_add into W', the same way
        return Supertuning.build(run, plan, T, kept)
    if run.method == "miss":  # MiSS bat's weight rebuild, the same way
        return MiSS.bat_build(run, plan, T, in_bytes, kept)
    return LoHa.forward_build(plan, run, T, in_bytes, kept)


def _placed_build(
    run: RunConfig,
    plan: MethodPlan,
    T: int,
    e: int,
    at: Callable[[Linear], int],
    kept: bool,
) -> int:
    """:func:`adapter_forward_build` for the methods placed at their linear in the top
    block (``at``): PSOFT's x_cast, xr and fp32 output-wide products, C3A's FFTs' complex
    outputs (kept or not), AdaMSS's scatter's T × out copies (adapters.adamss)."""
    if run.method == "psoft":
        return max(
            (PSOFT.linear_build(run, lin, T, e, kept) + at(lin) for lin in plan.psoft), default=0
        )
    if run.method == "c3a":
        return max((C3A.linear_forward(run, lin, T) + at(lin) for lin in plan.circulant), default=0)
    if not kept:
        return 0
    return max(
        (
            AdaMSS.linear_forward(plan, run, lin, T) + T * lin.out_features * e + at(lin)
            for lin in plan.banked
        ),
        default=0,
    )


def placed_in_block(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    e: int,
    T: int,
    block: Sequence[Saved],
    lin: Linear,
) -> int:
    """Where one linear's forward runs in a top block that keeps its tensors (``block``, in
    forward order), relative to the whole block's saved tensors (which the forward moment
    counts): less what its later ops save after ``lin``'s own items (not made yet; 0 where
    ``lin`` has no item to place it by), plus what the layer holds then that nothing saves
    (LinearOp.held_inputs beside the saved; at down, the MLP norm's output, unless C3A on
    an fp32 input keeps it). For C3A's FFTs and PSOFT's products (adapter_forward_build).
    Traced: Phi-3, C3A and PSOFT on the fused qkv, bf16: the attention's and the MLP's
    saved tensors are not live at qkv's moment (forward +7.5 % and +6.9 % with them);
    Llama, PSOFT on all linears at 8 tokens: the top block's largest is at down, beside
    its input, the residual stream and the MLP norm's output."""
    mine = [i for i, x in enumerate(block) if any(o.module == lin.module for o in x.linears)]
    if not mine:
        return 0
    after = sum(x.nbytes for x in block[mine[-1] + 1 :])
    held = LinearOp.held_inputs(arch, run, plan, lin, e, T, beside_saved=True)
    r, h = plan.dtypes.residual_bytes, arch.hidden_size
    if "down" in lin.roles and not (run.method == "c3a" and r == FP32):
        held += T * h * r
    if arch.norm != "layernorm" and r != FP32:
        # the block's input (held by the model's loop) and the embedding output (the
        # model's ``inputs_embeds``): an RMSNorm keeps only its fp32 copy of them
        held += T * h * r * min(2, arch.num_layers)
    return held - after


def adapter_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> int:
    """The largest moment of a block's backward at one of its peft-adapted linears,
    relative to the whole block's saved activations (which the moments outside count).

    - With checkpointing, the recompute runs each adapted linear's forward again: what
      the block has rebuilt up to that linear, the input its caller still holds (a
      norm's output or the MLP's activation; in the MLP the residual stream too) and
      the linear's forward transient. With fp32 adapters on a 16-bit base peft's sum
      promotes to fp32, so a wide fused linear (Phi-3's gate_up, qkv) outgrows the MLP's
      backward (measured: Phi-3 LoRA on all linears, bf16, -9 % without; DoRA on qkv,
      -17 %).
    - DoRA's own backward at its linear, with what the block keeps up to it: the fp32
      gradients of its rescaled sum (Phi-3 DoRA on qkv, bf16-mixed: -6 % without).
    - LoHa's Hadamard (LoKr's Kronecker, FourierFT's inverse FFT) backward at its largest
      linear (LoHa.backward_moment), MiSS bat's (MiSS.bat_backward), VeRA's
      (VeRA.backward_own), SHiRA's (Shira.backward_own), Super-Tuning's
      (Supertuning.backward_own), C3A's (C3A.backward_own);
      FourierFT's recomputed ΔW
      build with checkpointing.

    Both beside the gradient that came into the block."""
    other = _peft_other_moment(arch, run, plan, block, e, T)
    if other is not None:
        return other
    if run.method not in ADAPTER_METHODS or not (run.grad_ckpt or run.method == "dora"):
        return 0
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    moments: list[int] = []
    for lin in plan.adapted:
        if lin.copies > 1 or not lin.is_module:
            continue
        own = [
            i
            for i, x in enumerate(block)
            if x.linears and x.linears[0].module == lin.module and x.kind in ADAPTER_OWN
        ]
        if not own:
            continue
        if run.grad_ckpt:
            held = LinearOp.held_inputs(arch, run, plan, lin, e, T, beside_saved=True)
            # up to the adapter: what came before the linear and its lora items (its
            # DoRA items are the sum's outputs, counted by the transient)
            lora = sum(block[i].nbytes for i in own if block[i].kind is Kind.LORA)
            before = sum(x.nbytes for x in block[: own[0]]) + held
            through = before + lora
            if run.dropout > 0:
                # the dropout runs on peft's cast of the input (held beside it when the
                # input is not already in the adapter dtype), and under autocast lora_A
                # keeps only a 16-bit copy of its output (measured: Llama QLoRA on all
                # linears, bf16-mixed, dropout 0.1: -14 % without)
                cast = LinearOp.input_bytes(plan, lin, e) != ae
                through += T * lin.in_features * ae * (cast + plan.dtypes.autocast)
            # the recompute stops at the last tensor backward needs: the down
            # projection's sum keeps nothing, so it is not rebuilt
            last = "down" in lin.roles
            moments.append(through + LoRA.forward_transient(run, plan, lin, e, T, last))
            if last and run.method != "dora":
                # before its adapter, down's base layer alone (4-bit: with its casts)
                moments.append(before + LinearOp.forward_transient(plan, lin, e, T))
        if run.method == "dora":
            kept = sum(x.nbytes for x in block[: own[-1] + 1])
            moments.append(kept + T * lin.out_features * (4 * ae + e))
    if not moments:
        return 0
    return max(moments) + incoming_gradient(arch, run, plan, e, T) - sum(x.nbytes for x in block)


def _peft_other_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> int | None:
    """adapter_moment for peft's adapters other than the LoRA family (None for the rest)."""
    if run.method == "oft":
        xb = rotated_input_bytes(plan)
        # checkpointing reruns each OFT forward, with its graph, inside the backward
        rerun = OFT.forward_build(plan, run, T, xb, True) if run.grad_ckpt else 0
        return max(OFT.backward_moment(plan, run, T, xb), rerun)
    if run.method == "boft":
        xb = rotated_input_bytes(plan)
        # checkpointing reruns each BOFT forward, with its graph, inside the backward
        rerun = BOFT.forward_build(plan, run, T, xb, True) if run.grad_ckpt else 0
        return max(BOFT.backward_moment(plan, T, xb), rerun)
    if run.method in (
        "loha",
        "lokr",
        "fourierft",
        "waveft",
        "hira",
        "psoft",
        "hra",
        "beft",
        "glora",
        "peanut",
        "osf",
    ):
        return _delta_moment(arch, run, plan, e, T)
    if run.method == "miss":
        return _miss_moment(arch, run, plan, block, e, T)
    if run.method == "adamss" and run.grad_ckpt:
        return max(
            shared_moment(arch, run, plan, block, e, T),
            _adamss_recompute(arch, run, plan, block, e, T),
        )
    if run.method in (
        "vera",
        "pvera",
        "randlora",
        "vblora",
        "tinylora",
        "adamss",
        "unilora",
        "lily",
    ):
        return shared_moment(arch, run, plan, block, e, T)
    if run.method in ("shira", "supertuning", "c3a"):
        moment_of = {
            "shira": shira_moment,
            "supertuning": supertuning_moment,
            "c3a": c3a_moment,
        }[run.method]
        return moment_of(arch, run, plan, block, e, T)
    return None


def _delta_moment(arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int) -> int:
    """LoHa's, LoKr's, FourierFT's or WaveFT's ΔW backward at its largest linear
    (LoHa.backward_moment) and, for FourierFT and WaveFT with checkpointing, the
    recompute's ΔW build; HiRA's (hira_moment), PSOFT's (PSOFT.backward_moment), HRA's
    (HRA.backward_moment), BEFT's (BEFT.backward_moment: no ΔW, its bias's backward beside
    the block)."""
    if run.method == "hira":
        return hira_moment(plan, e, T)
    if run.method == "osf":  # its two linears' nodes
        return OSF.backward_moment(plan, run, T, partial(LinearOp.input_bytes, plan, e=e), e)
    if run.method == "peanut":  # as HiRA's: the mm's node, then ΔW's scaled gradient
        return Peanut.backward_moment(plan, T, partial(LinearOp.input_bytes, plan, e=e), e)
    if run.method == "psoft":
        return PSOFT.backward_moment(plan, run, T, e)
    if run.method == "hra":
        return hra_moment(arch, run, plan, e, T)
    if run.method == "glora":  # its dense gradients, beside the block (and its recompute)
        incoming = incoming_gradient(arch, run, plan, e, T)
        moment = GLoRA.backward_moment(plan, run, e, True) + incoming
        in_bytes = partial(LinearOp.input_bytes, plan, e=e)
        rerun = GLoRA.forward_build(plan, run, T, e, True, in_bytes) + incoming
        rerun = rerun if run.grad_ckpt else 0
        return max(moment, rerun)
    if run.method == "beft":  # its output gradient's fp32 copy and cast, beside the block
        return BEFT.backward_moment(plan, T, e) + incoming_gradient(arch, run, plan, e, T)
    in_bytes = partial(LinearOp.input_bytes, plan, e=e)
    delta = LoHa.backward_moment(plan, run, T, in_bytes)
    if run.grad_ckpt and run.method in ("fourierft", "waveft"):
        # the recompute's ΔW build (20 bytes an element, above its backward's 16) at
        # its largest linear, with the block rebuilt up to it (taken as all of it:
        # exact at the last, the down projection) and the incoming gradient (measured:
        # tiny Llama, all linears, 8 tokens, −6.7 % without)
        rebuild = LoHa.forward_build(plan, run, T, in_bytes, True)
        delta = max(delta, rebuild + incoming_gradient(arch, run, plan, e, T))
    return delta


def hira_moment(plan: MethodPlan, e: int, T: int) -> int:
    """HiRA's backward at its largest linear (HiRA.backward_moment). With checkpointing
    the recompute reruns its forward (HiRA.forward_build) with only part of the block
    rebuilt: counting it beside the whole block and the incoming gradient overshot the
    measured peak (tiny Llama, q,v, bf16: +2.2 %; without it +0.4 %)."""
    return HiRA.backward_moment(plan, T, partial(LinearOp.input_bytes, plan, e=e), e)


def hra_moment(arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int) -> int:
    """HRA's backward at its largest linear (HRA.backward_moment) and, with checkpointing,
    the recompute's reflection chain with its graph (HRA.forward_build, kept) beside the
    incoming gradient, the block rebuilt up to it taken as all of it (exact at the last
    linear, the down projection; measured: tiny Llama, all linears, 8 tokens, fp32: −3.0 %
    without)."""
    moment = HRA.backward_moment(plan, T, e)
    if run.grad_ckpt:
        rerun = HRA.forward_build(plan, run, T, e, True)
        moment = max(moment, rerun + incoming_gradient(arch, run, plan, e, T))
    return moment


def vera_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> int:
    """VeRA's backward at its largest linear (VeRA.backward_own, the gradient handed to
    it counted as alive) beside the block's incoming gradient, relative to the whole block's saved
    activations (the recomputed block's, with checkpointing); at an attention linear
    the MLP side is freed by then."""
    mlp_side = freed_before_attention(arch, block)
    moments = [
        VeRA.backward_own(plan, run, lin, T) - (0 if set(lin.roles) & set(MLP_ROLES) else mlp_side)
        for lin in plan.vectored
    ]
    return max(moments, default=0) + incoming_gradient(arch, run, plan, e, T)


def shared_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> int:
    """The shared-bank adapters' backward at their largest linear: VeRA's and PVeRA's
    (vera_moment); RandLoRA's and VB-LoRA's (adapters.shared_bank.banked_backward, beyond
    what the linear kept) the same way."""
    if plan.vectored:
        return vera_moment(arch, run, plan, block, e, T)
    mlp_side = freed_before_attention(arch, block)
    moments = [
        banked_backward(plan, run, lin, T, e) - (0 if set(lin.roles) & set(MLP_ROLES) else mlp_side)
        for lin in plan.banked
    ]
    return max(moments, default=0) + incoming_gradient(arch, run, plan, e, T)


def _adamss_recompute(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> int:
    """A checkpointed block's recompute at its largest AdaMSS linear, relative to the
    block's saved tensors: what the block has rebuilt up to and with that linear's own
    items, the input its caller holds (an AdaMSS linear never keeps it) and the base
    output beside the scatter's copies (AdaMSS.linear_forward)."""
    moments = []
    for lin in plan.banked:
        own = [i for i, x in enumerate(block) if x.kind is Kind.BANK and x.linears == (lin,)]
        if not own:
            continue
        held = LinearOp.held_inputs(arch, run, plan, lin, e, T, beside_saved=False)
        if "o" in lin.roles:  # (the attention output: the attention keeps it)
            held -= T * lin.in_features * LinearOp.input_bytes(plan, lin, e)
        rebuilt = sum(x.nbytes for x in block[: own[-1] + 1])
        forward = AdaMSS.linear_forward(plan, run, lin, T) + T * lin.out_features * e
        moments.append(rebuilt + held + forward)
    if not moments:
        return 0
    return max(moments) + incoming_gradient(arch, run, plan, e, T) - sum(x.nbytes for x in block)


def shira_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> int:
    """SHiRA's backward at its largest linear (Shira.backward_own) beside the block's
    incoming gradient, relative to the block's saved activations, as VeRA's (at an
    attention linear the MLP side is freed by then). With checkpointing the recompute
    keeps what the forward kept: its rebuild adds nothing beyond them."""
    mlp_side = freed_before_attention(arch, block)
    moments = [
        Shira.backward_own(plan, run, lin, T, True)
        - (0 if set(lin.roles) & set(MLP_ROLES) else mlp_side)
        for lin in plan.shira
    ]
    return max(moments, default=0) + incoming_gradient(arch, run, plan, e, T)


def supertuning_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> int:
    """Super-Tuning's backward at its largest linear (Supertuning.backward_own) beside the
    block's incoming gradient, relative to the block's saved activations, as SHiRA's."""
    mlp_side = freed_before_attention(arch, block)
    moments = [
        Supertuning.backward_own(plan, run, lin, T, True)
        - (0 if set(lin.roles) & set(MLP_ROLES) else mlp_side)
        for lin in plan.supertuning
    ]
    return max(moments, default=0) + incoming_gradient(arch, run, plan, e, T)


def c3a_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> int:
    """C3A's backward at its largest linear (C3A.backward_own) beside the block's incoming
    gradient, as VeRA's and SHiRA's."""
    mlp_side = freed_before_attention(arch, block)
    moments = [
        C3A.backward_own(run, lin, T, plan) - (0 if set(lin.roles) & set(MLP_ROLES) else mlp_side)
        for lin in plan.circulant
    ]
    return max(moments, default=0) + incoming_gradient(arch, run, plan, e, T)


def _miss_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> int:
    """MiSS bat's backward (MiSS.bat_backward) and, with checkpointing, its weight rebuild
    in the recompute: what the block has rebuilt before that linear and the input its
    caller holds, beside the rebuild (MiSS.build_bytes) and the incoming gradient
    (measured: Llama bat on all linears, 8 tokens, checkpointed, -6.3 % without)."""
    moments = [MiSS.bat_backward(run, plan, T, partial(LinearOp.input_bytes, plan, e=e))]
    if not run.grad_ckpt or run.miss[1] != "bat":
        return moments[0]
    kept, incoming = sum(x.nbytes for x in block), incoming_gradient(arch, run, plan, e, T)
    for lin in plan.miss:
        own = [i for i, x in enumerate(block) if x.kind is Kind.MISS and x.linears == (lin,)]
        if own:
            held = LinearOp.held_inputs(arch, run, plan, lin, e, T, beside_saved=True)
            before = sum(x.nbytes for x in block[: own[0]]) + held
            moments.append(before + MiSS.build_bytes(plan, lin) + incoming - kept)
    return max(moments)


def checkpointed_forward_adapter(
    arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int
) -> int:
    """A checkpointed block's forward keeps nothing, but each adapted linear still runs
    with its inputs held: the largest such moment (peft's promoted sum, DoRA's rebuild
    and rescale; measured on Phi-3 and Llama, forward phase -15 to -38 % without)."""
    if run.grad_ckpt and run.method in ("vera", "pvera", "c3a", "supertuning", "adamss"):
        return _graphless_forward(arch, run, plan, e, T)
    if not run.grad_ckpt or run.method not in ADAPTER_METHODS:
        return 0
    return max(
        (_adapted_linear_forward(arch, run, plan, lin, e, T) for lin in _forward_adapted(plan)),
        default=0,
    )


def _graphless_forward(arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int) -> int:
    """VeRA's, PVeRA's, C3A's or Super-Tuning's linears in a checkpointed block's first
    forward (no graph): at the largest, what the layer holds (the linear's input, the
    MLP's residual stream, the outputs made before it: _layer_locals) beside the adapter's
    own forward (VeRA.nograd_forward, C3A.nograd_forward, Supertuning.nograd_forward;
    Phi-3 checkpointed Supra fp32: forward -11.8 % without). Measured on Llama with checkpointing:
    forward -15 % (VeRA fp32, all linears), -29 % and -46 % (PVeRA bf16, fp32), -18 %
    (C3A fp32, all linears) without."""
    moments = []
    linears = {"c3a": plan.circulant, "supertuning": plan.supertuning, "adamss": plan.banked}.get(
        run.method, plan.vectored
    )
    for lin in linears:
        if lin.copies > 1 or not lin.is_module:
            continue
        in_bytes = LinearOp.input_bytes(plan, lin, e)
        if run.method == "adamss":
            own = AdaMSS.nograd_forward(plan, run, lin, T)
        elif run.method == "c3a":
            own = C3A.nograd_forward(run, lin, T, in_bytes, e)
        elif run.method == "supertuning":
            own = Supertuning.nograd_forward(run, plan, lin, T)
        else:
            own = VeRA.nograd_forward(plan, run, lin, T, in_bytes)
        held = LinearOp.held_inputs(arch, run, plan, lin, e, T, beside_saved=False)
        moments.append(held + _layer_locals(arch, plan, lin, e, T) + own)
    return max(moments, default=0)


def _layer_locals(arch: Architecture, plan: MethodPlan, lin: Linear, e: int, T: int) -> int:
    """What a sequential block with separate projections holds in locals while one of its
    linears runs without a graph, beyond that linear's input and the MLP's residual stream
    (transformers 5 LlamaAttention.forward, LlamaMLP.forward, LlamaDecoderLayer.forward):
    k's and v's callers hold the outputs of q (and k); o's the rotated q and k, v and
    the attention norm's output; up's the gate's activation; down's the MLP norm's
    output. An adapted linear's output is in its input's dtype under autocast (peft's
    cast back), else in the compute dtype. 0 for fused projections, parallel blocks,
    latent attention and experts (not traced)."""
    if len(lin.roles) != 1 or arch.parallel_attn_mlp or arch.latent_attention or arch.is_moe:
        return 0
    dt = plan.dtypes
    adapted = {r for a in (*plan.vectored, *plan.circulant) for r in a.roles}

    def out(role: str, width: int) -> int:
        return T * width * (dt.residual_bytes if role in adapted and dt.autocast else e)

    q, k, v = out("q", arch.q_size), out("k", arch.kv_size), out("v", arch.kv_size)
    norm = T * arch.hidden_size * dt.residual_bytes
    role = lin.roles[0]
    if role == "up" and arch.mlp == "gated":
        return T * arch.intermediate_size * e
    return {"k": q, "v": q + k, "o": q + k + v + norm, "down": norm}.get(role, 0)


def recompute_end_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int
) -> int:
    """A checkpointed block's recompute at its last op, relative to the whole block's
    saved activations (all of them rebuilt by then).

    torch.utils.checkpoint's non-reentrant recompute stops at the last tensor the block's
    forward saved (torch 2.13 utils/checkpoint.py l.1094-1131: _recomputation_hook's
    pack_hook raises _StopRecomputationError once recomp_counter reaches the forward's
    count): the down projection's matmul saving its weight (a frozen one, or autocast's
    16-bit copy of it), before its output exists. Beside the rebuilt tensors the layer's
    forward still holds, saved by no op: the down projection's input (the activation's
    output, and autocast's 16-bit cast of it where that output is fp32), the MLP's input
    (its norm's output; kept by lora_A only where peft need not cast it), a sequential
    block's residual stream unless its norm keeps it, and where the family's layer keeps
    them in locals its attention norm's output and the attention output
    (Family.layer_holds_*). Beside the gradient that came into the block, and under
    autocast the 16-bit cast of it that the MLP's 16-bit product receives.

    For frozen linears under the LoRA-family methods; with LoRA on the down projection
    the recompute stops at lora_B's input, the adapter's last saved tensor (peft 0.21.2
    tuners/lora/layer.py Linear.forward l.1074-1115), with the base layer's output made
    beside it (measured: GPT-2 LoRA on all linears, bf16, checkpointed, -0.1 %, -2.6 %
    without). Under autocast peft's fp32 copy of down's input (l.1100
    ``_cast_input_dtype``: ``x.to(dtype)``, tuners_utils.py l.2220-2235, which autocast
    leaves alone) is one more local: lora_A keeps autocast's 16-bit cast of it (traced:
    GPT-2 LoRA on all linears, bf16-mixed, +1.7 % -> -0.1 %; Llama, Phi-3, Qwen3 -2.0 %
    -> -0.1 %); for DoRA adapter_moment's rules stand. Not for 4-bit linears (bitsandbytes
    keeps their tensors on ctx, saved by no hook) nor experts. Measured on the tiny Falcon, LoRA bf16-mixed
    with checkpointing, where it is the backward's peak: rotary -0.2 %, falcon-rw's layout
    -0.4 % (-6.5 % and -12.3 % without); the sequential rotary block (-8.1 % without) and
    Falcon-40B's ln_attn/ln_mlp layout -0.2 %.

    Where the base weights train (full finetuning) every linear saves its input, the
    16-bit cast of it under autocast: the frame then holds only what is not saved, the
    activation's fp32 output (a biased Falcon's under autocast), the norms' fp32 outputs,
    the attention output. Traced: falcon-rw's layout, full bf16-mixed with checkpointing,
    the backward's peak (403,200 B of locals, -1.9 % without)."""
    if not run.grad_ckpt or arch.is_moe:
        return 0
    trained = _down_weight_trains(arch, run, plan)
    if run.method not in ADAPTER_METHODS and not trained:
        return 0
    if plan.dtypes.quantized or arch.encoder_decoder:
        return 0
    dt = plan.dtypes
    down_adapted = any("down" in lin.roles for lin in plan.adapted)
    if down_adapted and run.method != "lora":
        return 0
    ctx = LayerContext(arch, run, plan, T)
    h, f = arch.hidden_size, arch.intermediate_size
    out = ctx.projection_out_bytes
    # the activation's output, down's input (and autocast's cast of an fp32 one); a
    # trained down projection saves its input (or that cast), rebuilt with the block
    if trained:
        held = T * f * out if dt.autocast and out != e else 0
    else:
        held = T * f * out + (T * f * e if dt.autocast and out != e else 0)
    if down_adapted:
        # the recompute stops at lora_B's input, the adapter's last saved tensor: its
        # base layer's output is made, waiting for the adapter's sum
        held += T * h * e
        if dt.autocast:
            # peft's own cast of down's input to the fp32 adapter (``x = self.
            # _cast_input_dtype(x, lora_A.weight.dtype)``, a plain ``.to``: autocast does
            # not touch it) is a local of its forward; lora_A keeps autocast's 16-bit
            # cast of that copy, not the copy
            held += LoRA.down_cast_gradient(plan, T)
    held += _layer_locals_held(arch, run, plan, T, trained, out)
    # (the 16-bit cast of the incoming gradient is, with an adapted down projection, the
    # gradient of its base output that incoming_gradient counts)
    cast = T * h * e if dt.autocast and not down_adapted else 0
    return held + incoming_gradient(arch, run, plan, e, T) + cast


def _layer_locals_held(
    arch: Architecture, run: RunConfig, plan: MethodPlan, T: int, trained: bool, out: int
) -> int:
    """Of recompute_end_moment: the layer's locals saved by no op (the MLP's input, a
    sequential block's residual stream, the attention norm's output and the attention
    output, as the family's layer keeps them)."""
    dt = plan.dtypes
    h, r = arch.hidden_size, dt.residual_bytes
    held = 0
    # a norm's output is kept by an adapter that reads it uncast (lora_A keeps its input)
    ae = BYTES_PER_ELEMENT[dt.adapter]
    kept_uncast = not dt.autocast and r == ae and not run.dropout
    readers = {role for lin in plan.adapted for role in lin.roles} if kept_uncast else set()
    if trained and not dt.autocast:  # every trained linear keeps its input as it is
        readers |= {"q", "k", "v", "gate", "up"}
    mlp_norm_own = not arch.parallel_attn_mlp or arch.norms_per_block >= 2
    attention_readers = {"q", "k", "v"} if mlp_norm_own else {"q", "k", "v", "gate", "up"}
    if not readers & ({"gate", "up"} if mlp_norm_own else attention_readers):
        held += T * h * r  # the MLP's input
    # a sequential block's residual stream, unless its MLP norm keeps that very tensor
    # (OLMo 2 normalises no input: its stream is the MLP's input)
    traits = arch.traits
    norm_keeps_stream = arch.norm == "layernorm" or r == FP32 or traits.norms_after_sublayers
    if not arch.parallel_attn_mlp and not norm_keeps_stream:
        held += T * h * r
    if traits.layer_holds_attention_norm_output and mlp_norm_own:
        held += 0 if readers & attention_readers else T * h * r
    if traits.layer_holds_attention_output:
        held += T * h * out
    return held


def offloaded_forward_adapter(
    arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int
) -> int:
    """With activations offloaded a block's forward keeps nothing on the GPU either: what
    lives at an adapted linear is what Python still references. Beside the linear's own
    moment (as checkpointed): the embedding output (the model's ``inputs_embeds``) and the
    block's input (its caller's ``hidden_states``), which checkpointing counts among its
    kept inputs, and rotary's cos and sin (the model's ``position_embeddings``). On the
    MLP side, eager attention's probabilities: the decoder layer binds the attention's
    weights it discards (``hidden_states, _ = self.self_attn(...)``, transformers 5.25
    modeling_llama.py l.299; GPT-2, Qwen2, Mistral, Gemma, GPT-NeoX alike) until it
    returns. At a gated MLP's separate up projection, the gate's activation
    (``self.act_fn(self.gate_proj(x)) * self.up_proj(x)``, modeling_llama.py l.164,
    evaluated left to right). Measured: Llama DoRA on all linears, eager, bf16 (the peak
    at up_proj's rescaled sum). The attention side's own locals at o_proj (q, k and v,
    bound until the attention returns) are not counted."""
    if not run.activation_offload:
        return 0
    outside = _offloaded_outside(arch, run, plan, T)
    if run.method == "ia3":
        return outside + _offloaded_ia3(arch, plan, e, T)
    if run.method not in ADAPTER_METHODS:
        return 0
    moments = [
        _adapted_linear_forward(arch, run, plan, lin, e, T)
        + _offloaded_context(arch, run, plan, lin, e, T)
        - LinearOp.held_inputs(arch, run, plan, lin, e, T, beside_saved=False)
        for lin in _forward_adapted(plan)
    ]
    return outside + max(moments, default=0)


def offloaded_build_context(
    arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int
) -> int:
    """What an offloaded block's forward holds beside an adapter's weight build
    (adapter_forward_build, whole when offloaded: it counts the build, the input's cast
    and the output, not the input itself): the model's and the layer's locals at the
    adapted linear (offloaded_forward_adapter's, _offloaded_context), the largest over
    the method's linears (a bound where the largest build sits at another linear).
    Measured: Llama HRA on q and v offloaded, bf16, 64-token vocabulary (the forward's
    peak at v_proj's output cast, q and k beside it). 0 unless offloaded (checkpointing
    with offload keeps its own rule)."""
    if not run.activation_offload or run.grad_ckpt:
        return 0
    contexts = [_offloaded_context(arch, run, plan, lin, e, T) for lin in _plan_linears(plan)]
    return _offloaded_outside(arch, run, plan, T) + max(contexts, default=0)


def _offloaded_outside(arch: Architecture, run: RunConfig, plan: MethodPlan, T: int) -> int:
    """The embedding output, the block's input and rotary's cos and sin
    (offloaded_forward_adapter)."""
    r = plan.dtypes.residual_bytes
    return 2 * T * arch.hidden_size * r + sum(
        x.nbytes for x in Embedding.rotary_saved(arch, run, T, plan.dtypes.first_input_bytes)
    )


def _offloaded_context(
    arch: Architecture, run: RunConfig, plan: MethodPlan, lin: Linear, e: int, T: int
) -> int:
    """What the layer holds at one of its linears in an offloaded forward: the linear's
    input (and the MLP's residual stream), eager attention's probabilities on the MLP
    side, the gate's activation at a separate up projection and the projections before
    a k or v (offloaded_forward_adapter)."""
    held = LinearOp.held_inputs(arch, run, plan, lin, e, T, beside_saved=False)
    if set(lin.roles) & set(MLP_ROLES) and runs_eager(arch, run):
        held += run.batch_size * arch.num_heads * run.positions**2 * e
    if "up" in lin.roles and "gate" not in lin.roles and arch.mlp == "gated":
        held += T * arch.intermediate_size * e
    return held + _earlier_projections(arch, run, plan, lin, e, T)


def _earlier_projections(
    arch: Architecture, run: RunConfig, plan: MethodPlan, lin: Linear, e: int, T: int
) -> int:
    """At a separate k or v projection, the outputs of the projections before it, bound
    as the attention's locals (``query_states = self.q_proj(hidden_states)...``, then
    k, then v: transformers 5.25 modeling_llama.py l.244-246; _projection_outputs).
    Measured: Llama LoRA on q and v offloaded, bf16, 64-token vocabulary (the forward's
    peak at v_proj's scaled adapter output, q and k beside it). 0 elsewhere (a fused
    qkv, the other layouts)."""
    outputs = _projection_outputs(arch, run, plan, e, T)
    if not outputs or lin.roles not in (("k",), ("v",)):
        return 0
    return outputs["q"] + (outputs["k"] if lin.roles == ("v",) else 0)


# peft's adapters whose forward casts its result back to its input's dtype
# (``previous_dtype = x.dtype`` ... ``result.to(previous_dtype)``: peft 0.21.2
# tuners/oft/layer.py l.639/658, hra/layer.py l.246/274, loha/layer.py l.222/244,
# lokr/layer.py l.290/312, vera/layer.py l.254/288, fourierft/layer.py l.172/190,
# waveft/layer.py l.270/288, randlora/layer.py l.328/345, vblora/layer.py l.236/252,
# c3a/layer.py l.183/201, miss/layer.py l.328/374; LoRA's casts to its base layer's
# output dtype instead, lora/layer.py l.1089/1113)
_CAST_TO_INPUT = frozenset(
    {"oft", "boft", "hra", "loha", "lokr", "vera", "fourierft", "waveft", "randlora"}
    | {"vblora", "c3a", "miss"}
)


def _projection_outputs(
    arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int
) -> dict[str, int]:
    """A layer's separate q, k and v projections' outputs: the compute dtype (a linear's
    output; LoRA casts its sum back to it), an adapter of _CAST_TO_INPUT's in its input's,
    the norm output's (the residual stream's dtype: fp32 under autocast over fp32
    weights). Empty for a fused qkv and the other attention layouts."""
    layout = arch.latent_attention or arch.attention_per_layer_type
    if layout or arch.linear_attention is not None or "qkv" in arch.traits.names.attention:
        return {}
    casts = {role for lin in _plan_linears(plan) for role in lin.roles}
    cast = run.method in _CAST_TO_INPUT

    def size(role: str) -> int:
        return plan.dtypes.residual_bytes if cast and role in casts else e

    q, kv = T * arch.q_size, T * arch.kv_size
    return {"q": q * size("q"), "k": kv * size("k"), "v": kv * size("v")}


def _plan_linears(plan: MethodPlan) -> set[Linear]:
    """Every block linear the plan names (whichever method's field holds it), one
    module of one copy."""
    return {
        lin
        for f in dataclasses.fields(plan)
        if isinstance(value := getattr(plan, f.name), tuple)
        for lin in value
        if isinstance(lin, Linear) and lin.copies == 1 and lin.is_module
    }


def _offloaded_ia3(arch: Architecture, plan: MethodPlan, e: int, T: int) -> int:
    """offloaded_forward_adapter's IA³ moments, beyond the model's own locals: at each
    scaled linear its input, what its block holds then (in the MLP a sequential block's
    residual stream, a parallel block's attention output, awaiting ``mlp_output +
    attention_output + residual``, and at down the MLP norm's output: transformers 5.25
    FalconDecoderLayer.forward; _layer_locals) and the scaling's own (IA3.graphless_forward).
    Traced: Falcon, bf16 (the forward's largest at dense_4h_to_h's scaling)."""
    h, r = arch.hidden_size, plan.dtypes.residual_bytes
    moments = []
    for lin, feedforward in plan.scaled:
        if lin.copies > 1 or not lin.is_module:
            continue
        x = LinearOp.input_bytes(plan, lin, e)
        held = T * lin.in_features * x
        if set(lin.roles) & set(MLP_ROLES) and arch.parallel_attn_mlp:
            held += T * h * e * (2 if "down" in lin.roles else 1)
        elif set(lin.roles) & set(MLP_ROLES):
            held += T * h * r + _layer_locals(arch, plan, lin, e, T)
        else:
            held += _layer_locals(arch, plan, lin, e, T)
        moments.append(held + IA3.graphless_forward(plan, lin, feedforward, T, x))
    return max(moments, default=0)


# the attention kernel's inputs as a block saves them: q, k and v (rotary outputs, a fused
# projection's output, the per-head copies eager attention makes)
_KERNEL_INPUTS = frozenset({Kind.ATTN_QK, Kind.ATTN_V, Kind.ATTN_QKV, Kind.ATTN_COPY})


def offloaded_attention_forward(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: Iterable[Saved], T: int
) -> int:
    """With activations offloaded, eager attention's forward at its softmax: the fp32
    scores (the mask added) and their softmax (Attention.eager_workspace) beside what
    Python still references, saved or not: the embedding output and the block's input
    (the model's and the layer's callers'; the residual is the input), the input norm's
    output, q, k and v and eager attention's per-head copies (the block's kernel
    inputs; rotary's q and k in the tables' dtype), rotary's cos and sin, and the
    model's (b, 1, s, s) float mask in the embeddings' dtype (transformers 5.25
    masking_utils.py eager_mask, one for every layer). Measured: Llama LoRA offloaded,
    eager, bf16-mixed with dropout (the forward's peak at the softmax: -0.1 %, -5.7 %
    without). 0 for the fused kernels."""
    if not run.activation_offload or not runs_eager(arch, run):
        return 0
    r = plan.dtypes.residual_bytes
    streams = 3 * T * arch.hidden_size * r
    rotary = sum(
        x.nbytes for x in Embedding.rotary_saved(arch, run, T, plan.dtypes.first_input_bytes)
    )
    mask = run.batch_size * run.positions * (run.positions + run.prefix_len) * r
    kernel = sum(x.nbytes for x in block if x.kind in _KERNEL_INPUTS and x.kind is not Kind.ATTN_QK)
    # rotary's q and k are the products with cos and sin, promoted to the tables' dtype
    # (fp32 under autocast over fp32 weights); what the kernel saved is autocast's cast
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    table = FP32 if arch.traits.rotary_tables_fp32 else r
    qk = max(e, table) if rotary else e
    kernel += sum(x.nbytes for x in block if x.kind is Kind.ATTN_QK) * qk // e
    return streams + rotary + mask + kernel + Attention.eager_workspace(arch, run)


def offloaded_rotary_forward(arch: Architecture, run: RunConfig, plan: MethodPlan, T: int) -> int:
    """With activations offloaded, transformers' ``apply_rotary_pos_emb`` at the key's
    sum (``k_embed = (k * cos) + (rotate_half(k) * sin)``, transformers 5.25
    modeling_llama.py l.147-148): its two products and their sum, the rotated query
    (``q_embed``, l.147) beside them, in the tables' promoted dtype, and what Python
    still references: the embedding output and the block's input, the input norm's
    output, q, k and v as projected (the attention's locals, compute dtype) and rotary's
    cos and sin. At the query's sum the three are the query's (a GQA model's query may
    be the larger). Measured: Llama LoRA offloaded, bf16-mixed, 64-token vocabulary
    (the forward's peak at l.148), less the top block's weight copies autocast has not
    cast yet (LinearOp.autocast_cache_after). 0 where the layout differs (a fused qkv, a partial
    or interleaved rotary, per-head q/k norms, other frameworks' rotary code)."""
    if not run.activation_offload or arch.position_embedding != "rotary":
        return 0
    traits = arch.traits
    rotary = arch.rotary_dim is not None or traits.rotary_tables_half or traits.rotary_tables_cached
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    outputs = _projection_outputs(arch, run, plan, e, T)
    if (
        not outputs
        or rotary
        or arch.qk_norm
        or run.framework not in ("hf", "axolotl", "llama-factory")
    ):
        return 0
    r = plan.dtypes.residual_bytes
    tables = Embedding.rotary_saved(arch, run, T, plan.dtypes.first_input_bytes)
    held = 3 * T * arch.hidden_size * r + sum(x.nbytes for x in tables) + sum(outputs.values())
    q, kv = T * arch.q_size, T * arch.kv_size
    p = max(e, FP32 if traits.rotary_tables_fp32 else r)
    # (the forward's cast cache counts every block's weight copies: the top block's
    # o and MLP ones are cast after this moment)
    names = arch.traits.names.attention
    later = LinearOp.autocast_cache_after(arch, plan, (names["q"], names["k"], names["v"]))
    return held + max(3 * q * p, (q + 3 * kv) * p) - later


def _forward_adapted(plan: MethodPlan) -> list[Linear]:
    """The adapted block linears whose forward moments are derived (a module of its own,
    one copy)."""
    return [lin for lin in plan.adapted if lin.copies == 1 and lin.is_module]


def _adapted_linear_forward(
    arch: Architecture, run: RunConfig, plan: MethodPlan, lin: Linear, e: int, T: int
) -> int:
    """An adapted linear's forward in a block that keeps nothing: its held inputs (and the
    MLP's residual stream), peft's cast of the input to the adapter dtype, held through
    the sum, the dropped copy DoRA's two matmuls read, and the adapter's sum."""
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    return (
        LinearOp.held_inputs(arch, run, plan, lin, e, T, beside_saved=False)
        + T * lin.in_features * ae * (LinearOp.input_bytes(plan, lin, e) != ae)
        + T * lin.in_features * ae * (run.dropout > 0 and run.method == "dora")
        + LoRA.forward_transient(run, plan, lin, e, T)
    )


def incoming_gradient(arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int) -> int:
    """What a checkpointed block's backward holds when its recompute starts: the
    gradient of its output (residual dtype) and, with an adapted down projection, the
    two branches of that adapter's sum (its base output's gradient and the scaled
    adapter gradient; DoRA's rescale one more), measured on Llama and Phi-3."""
    dt = plan.dtypes
    grads = T * arch.hidden_size * dt.residual_bytes
    if any("down" in lin.roles for lin in plan.adapted):
        lora_e = e if dt.autocast else BYTES_PER_ELEMENT[dt.adapter]
        # (a 4-bit down projection answering in fp32 needs no 16-bit cast of it)
        base = 0 if dt.four_bit_outputs_fp32 else e
        grads += T * arch.hidden_size * (base + lora_e * (2 if run.method == "dora" else 1))
    return grads


def block_backward_workspace(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    e: int,
    T: int,
    block: Sequence[Saved] = (),
    *,
    own_gradients: bool = True,
) -> int:
    """Transient gradients inside one block's backward (the largest of its ops).

    The MLP: the gradient of its intermediate and of gate/up outputs (T·f each) plus
    the fp32 residual gradient (T·h); eager attention: the s² score gradients; a norm's
    backward. Adapters that cast their input to another dtype add the gradient of that
    cast copy (T·h in the adapter dtype).

    With checkpointing, the block's recomputed activations are at their fullest when
    its backward starts with the MLP; by the time its norms' backward runs they are
    mostly freed, so only the MLP part is added to the recompute.

    The MLP's moment counts the down projection's gradients made by then
    (down_gradients_made); ``own_gradients=False`` leaves them out (the allocator replay
    requests them as the block's gradients).
    """
    attn = Attention.eager_workspace(arch, run)
    cast_grad = LoRA.cast_gradient(arch, plan, T)
    # a 4-bit MLP's intermediates, and so their gradients, can be fp32 (measured: QLoRA
    # bf16-mixed with checkpointing, peak -10 % without)
    # (so are a biased Falcon's under autocast: bias_promotes_outputs)
    four_bit_fp32 = plan.dtypes.four_bit_outputs_fp32 or bias_promotes_outputs(arch, plan.dtypes)
    mlp = MLP.backward_workspace(
        arch, run, plan, FP32 if four_bit_fp32 else e, _mlp_tokens(arch, run, T)
    )
    mlp += MLP.activation_output_gradient(arch, run, block, e, T) - MLP.output_dropout_freed(block)
    mlp += _down_backward_cast(arch, run, plan, e, T) - _behind_down_freed(block)
    mlp += down_gradients_made(arch, run, plan, e) if own_gradients else 0
    # the experts' own moment; an adapter's cast gradient comes later, at its linear
    # (transformers 4's per-expert loop: its experts answer in a 4-bit linear's input
    # dtype, else in the compute dtype)
    r = plan.dtypes.residual_bytes
    looped = (
        (r if plan.dtypes.four_bit_outputs_fp32 else e) if experts_are_linears(arch, run) else 0
    )
    moe = max(MoE.backward_workspace(arch, e, T, r, looped), MoE.lora_backward(plan))
    if run.grad_ckpt:
        return _recomputed_block_backward(arch, run, plan, e, T, block, mlp, moe, cast_grad)
    # (the down projection's input is freed once its node has run, as with checkpointing,
    # where its gradients are counted: GPT-2 full fp32, +1.1 % with neither)
    if down_gradients_made(arch, run, plan, e):
        mlp -= MLP.down_input_freed(arch, run, block)
    if _down_weight_trains(arch, run, plan):
        mlp -= MLP.down_weight_copy_freed(arch, run, block)
    return max(max(mlp, attn, Norm.backward_workspace(arch, e, T)) + cast_grad, moe)


def _recomputed_block_backward(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    e: int,
    T: int,
    block: Sequence[Saved],
    mlp: int,
    moe: int,
    cast_grad: int,
) -> int:
    """block_backward_workspace of a checkpointed block: the MLP's moment beside the
    recomputed activations (``mlp``, ``moe`` and ``cast_grad`` as that function has them)."""
    four_bit_fp32 = plan.dtypes.four_bit_outputs_fp32 or bias_promotes_outputs(arch, plan.dtypes)
    # Gemma-2's (and OLMo 2's) post-feedforward norm is the block's first backward, with all
    # of its recomputed activations still there (measured, the adapters' cast
    # gradient included). Elsewhere that gradient joins the MLP's only when an MLP
    # linear is adapted: the attention's comes once the MLP side is freed (GPT-2,
    # Llama, measured)
    if arch.mlp == "gated" and not arch.is_moe:
        # in a recomputed block the product's gradient is still there beside its two
        # gradients, and the incoming one is in the residual dtype (measured: Llama
        # LoRA bf16 and fp32, QLoRA bf16-mixed, with checkpointing)
        mlp += T * arch.intermediate_size * (FP32 if four_bit_fp32 else e)
    mlp_linears = [lin for lin in plan.adapted if set(lin.roles) & set(MLP_ROLES)]
    # (a 4-bit MLP's fp32 product needs no cast into an fp32 adapter)
    down_cast = 0 if four_bit_fp32 else LoRA.down_cast_gradient(plan, T)
    down_input = MLP.down_input_freed(arch, run, block)
    if _down_weight_trains(arch, run, plan):
        # (traced where it trains; with a frozen one, under autocast, the moment stays
        # as it was: a larger moment not modelled yet hides it, -1 % without it)
        down_input += MLP.down_weight_copy_freed(arch, run, block)
    mlp_cast = cast_grad if mlp_linears else 0
    if _down_copy_freed_first(arch, run, plan, down_cast):
        # the down adapter's backward first: its cast's gradient beside the whole
        # rebuilt block and the incoming fp32 gradient; lora_A's backward frees the
        # copy it kept (the gradient's size), ToCopyBackward the gradient, and only
        # then does the activation's backward start
        after = mlp + mlp_cast - down_input - down_cast
        moment = max(down_cast + T * arch.hidden_size * FP32, after)
    else:
        moment = mlp + max(mlp_cast, down_cast) - down_input
    if arch.norms_per_block == 4 or arch.traits.norms_after_sublayers:
        moment = max(moment, Norm.backward_workspace(arch, e, T) + cast_grad)
    # DoRA rebuilds each adapted weight again in the recompute; an MLP linear's
    # rebuild comes last, beside the MLP's backward (measured: Llama and Qwen2 on all
    # linears, -9 to -12 % without); attention's comes early, before it
    return max(moment + DoRA.rebuild(plan, run, mlp_linears), moe)


def _down_copy_freed_first(
    arch: Architecture, run: RunConfig, plan: MethodPlan, down_cast: int
) -> bool:
    """A recomputed plain MLP whose down projection's adapter keeps peft's own cast of
    its input (fp32 adapters on a 16-bit base, no autocast: peft 0.21.2
    tuners/lora/layer.py l.1100 ``_cast_input_dtype``, the copy lora_A saves). Traced
    on the CPU (GPT-2 LoRA on all linears, bf16, checkpointed): the block's recompute
    ends at that adapter's lora_A, whose backward then makes the copy's fp32 gradient
    and frees the copy; the tanh-GELU's backward starts once both are gone, 160 KB below
    the peak, where the sum of the two read +12.6 %. Under autocast lora_A keeps
    autocast's 16-bit cast of peft's fp32 copy, and its backward's ToCopyBackward0 nodes
    make the copy's fp32 gradient and free it in the same order, before the GELU's
    backward (traced: GPT-2 LoRA on all linears, bf16-mixed, checkpointed: both moments
    below the recompute's end, recompute_end_moment, where the sum read 73 KB above it);
    a gated MLP's ordering is measured with the sum (Llama, Phi-3 on all linears), left
    as it is."""
    return (
        down_cast > 0
        and arch.mlp != "gated"
        and not arch.is_moe
        and run.method in ("lora", "qlora")
    )


def _mlp_tokens(arch: Architecture, run: RunConfig, T: int) -> int:
    """The tokens a block's gated MLP runs its backward over: all of them, or under
    transformers 4's loop over the experts (methods.experts_are_linears), with no dense
    or shared MLP beside them, one expert's share (each expert is a gated MLP run on its
    Tk/E routed tokens, one at a time: 4.48.1 MixtralBlockSparseTop2MLP)."""
    if experts_are_linears(arch, run) and not (arch.shared_experts_size or arch.dense_layers):
        return -(-T * arch.experts_per_token // arch.num_experts)
    return T
