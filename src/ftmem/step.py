"""The components of one training step and their sizes in time.

Weights, gradients and optimizer states from the method's tensor groups, activations
per block and outside the blocks, and the transients of each moment (logits, loss,
norm and MLP backward workspaces, checkpoint recompute). The result feeds the
timeline (phases.py) as is for one GPU, or reshaped per rank by parallel.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftmem import returned_cache, seq2seq, vision_lora, vision_step
from ftmem.activations import (
    attention_side_norms_train,
    block_saved,
    outer_saved,
    stored_kv_held,
)
from ftmem.adapters import trainable_tokens
from ftmem.adapters.dora import DoRA
from ftmem.adapters.head_lora import HeadLoRA, chunked_head_lora
from ftmem.adapters.lora import LoRA, output_bytes
from ftmem.adapters.prompt import PrefixTuning
from ftmem.arch import (
    Architecture,
    Blocks,
    buffer_numel,
    kv_sharing_refusal,
    layout,
    qk_norm_params,
)
from ftmem.block_policies import PLAIN, BlockPolicy, Checkpointed, Offloaded
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.errors import InvalidInputError
from ftmem.methods import (
    DEFAULT_FREEZE_TRAINABLE_LAYERS,
    NAMED_TRAINING_METHODS,
    PEFT_OTHER_FIELDS,
    MethodPlan,
    plan_key,
    plan_method,
)
from ftmem.ops import loss_requests, short_conv
from ftmem.ops.attention import Attention, runs_eager, sliding_window_mask
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.embedding import Embedding
from ftmem.ops.gated_deltanet import refuse_training
from ftmem.ops.linear import LinearOp, all_adapters_fused
from ftmem.ops.loss import FusedHead, HeldLogitsHead, Loss, PreferenceLoss, held_logits_head
from ftmem.ops.mlp import MLP
from ftmem.ops.moe import MoE
from ftmem.ops.norm import NORM_KINDS, Norm
from ftmem.ops.per_layer_input import PerLayerInput
from ftmem.ops.router_aux import RouterAuxLoss
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.optim import allocator_state_bytes, optimizer_step_temporary_bytes
from ftmem.phases import (
    Activations,
    BlockTransients,
    Gradients,
    HeadRequests,
    HeadTransients,
    OptimizerStep,
    StepSizes,
)
from ftmem.profiles import (
    compiled_chunked_loss,
    compiled_layers,
    framework_run,
    head_chunk_tokens,
    offload_keeps_head,
    offloads_checkpoint_inputs,
    profile_of,
)
from ftmem.release_buffers import adapter_buffer_bytes, release_buffer_bytes
from ftmem.run import GATED_PROMPT_METHODS, PROMPT_METHODS, UNPAIRED_OBJECTIVES, RunConfig
from ftmem.sequence_parallel import coloattention_mask_bytes
from ftmem.transients import (
    adapter_forward_build,
    adapter_moment,
    attention_gradients_made,
    attention_kernel_moment,
    block_backward_workspace,
    checkpointed_attention_moment,
    checkpointed_forward_adapter,
    checkpointed_moe_moment,
    deltanet_backward_moments,
    down_gradients_made,
    frozen_forward_transient,
    graphless_deltanet_forward,
    offload_moment,
    offloaded_attention_forward,
    offloaded_build_context,
    offloaded_forward_adapter,
    offloaded_own_gradients,
    offloaded_rotary_forward,
    recompute_end_moment,
    step_in_backward,
    step_in_backward_tensors,
    top_block_trains,
)
from ftmem.versions import (
    checkpoint_wraps_decoder_unit,
    head_upcasts,
    masked_shift,
    older_than,
)

if TYPE_CHECKING:  # distillation's module loads only for a teacher (CLI start-up)
    from ftmem.distill import Teacher
    from ftmem.sequence_parallel import SequenceSplit


# methods with trainable parameters of their own in every block (BlockState sets per kind)
EVERY_BLOCK_TRAINS = frozenset(
    {
        "bitfit",
        "ia3",
        "prefix-tuning",
        "cartridge",
        "adapter",
        "loha",
        "lokr",
        "boft",
        "oft",
        "miss",
        "road",
        "vera",
        "fourierft",
        "hira",
        "peanut",
        "osf",
        "psoft",
        "hra",
        "pvera",
        "randlora",
        "vblora",
        "shira",
        "supertuning",
        "waveft",
        "c3a",
        "tinylora",
        "adamss",
        "unilora",
        "lily",
        "beft",
        "glora",
    }
)


def _block_states(arch: Architecture, run: RunConfig, plan: MethodPlan) -> list[BlockState]:
    """Per block (bottom to top): does its input need a gradient, do its weights train."""
    L = arch.num_layers
    adapted = frozenset(lin.module for lin in plan.adapted)
    adapted |= {ex.linear.module for ex in plan.adapted_experts}  # (peft's target_parameters)
    first_trainable = L - plan.trainable_blocks
    # Trainable embeddings make every block's input need a gradient; with gradient
    # checkpointing transformers makes the embedding output require grad for PEFT too.
    inputs_grad = plan.outer_trainable or plan.embed_trainable or run.grad_ckpt
    # a trained vision tower or projector writes the image tokens' embeddings
    inputs_grad = inputs_grad or vision_step.trains_below(arch, run)
    if run.method in EVERY_BLOCK_TRAINS:
        # every block has trainable parameters (biases, IA³ vectors, its key/value prefix,
        # LoHa and LoKr factors, BOFT's and OFT's rotations, MiSS blocks, RoAd rotations,
        # VeRA vectors, FourierFT spectra, SHiRA values, WaveFT coefficients,
        # C3A kernels):
        # gradients flow from the top to block 0's, so every block's input but the first
        # needs a gradient
        biased = frozenset(plan.biased)
        scaled = frozenset(lin.module for lin, ff in plan.scaled if not ff)
        scaled_in = frozenset(lin.module for lin, ff in plan.scaled if ff)
        bottleneck = frozenset(lin.module for lin in plan.bottlenecked)
        # each of peft's other adapters by its field (MethodPlan's and BlockState's names)
        peft_other: dict[str, Any] = {  # (each a frozenset of module names)
            name: frozenset(lin.module for lin in getattr(plan, name)) for name in PEFT_OTHER_FIELDS
        }

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
                **peft_other,
            )

        # one object per distinct state: step_parts derives each once
        return [state(inputs_grad)] + [state(True)] * (L - 1)
    if run.method in GATED_PROMPT_METHODS:
        return _llama_adapter_states(arch, plan, inputs_grad)
    if run.method in NAMED_TRAINING_METHODS:
        return _partial_states(arch, plan, inputs_grad)
    if run.method in ("prompt-tuning", "p-tuning", "trainable-tokens"):
        # the trainable prompt (the trained token rows) is part of the blocks' input
        return [BlockState(True, False, frozenset())] * L
    weights = run.method in ("full", "freeze", "galore")
    norms = run.method == "longlora"  # LongLoRA also trains every norm
    frozen = BlockState(inputs_grad, False, frozenset())
    lowest = BlockState(inputs_grad, weights, adapted, norms_trained=norms)
    above = BlockState(True, weights, adapted, norms_trained=norms)
    trainable = L - first_trainable
    states = [frozen] * first_trainable + (
        [lowest] + [above] * (trainable - 1) if trainable else []
    )
    return _expert_layers(states, plan)


def _llama_adapter_states(
    arch: Architecture, plan: MethodPlan, inputs_grad: bool
) -> list[BlockState]:
    """LLaMA-Adapter (LitGPT's and peft's): the blocks below the first gated one keep
    nothing (frozen, their input needs no gradient); the first gated block's gate needs
    its attention output's gradient, and every block above needs its input's. v2: every block trains its norms
    and its linears' bias and scale, so every block's input but the first needs a
    gradient."""
    L = arch.num_layers
    start = L - plan.gated_blocks
    scaled = frozenset(lin.module for lin in plan.v2_scaled)
    lowest = 0 if scaled else start  # the lowest block holding a trainable tensor
    distinct: dict[tuple[bool, bool], BlockState] = {}
    states = []
    for i in range(L):
        key = (inputs_grad if i <= lowest else True, i >= start)
        if key not in distinct:
            distinct[key] = BlockState(
                key[0],
                False,
                frozenset(),
                norms_trained=bool(scaled),
                gated_prompt=key[1],
                v2_scaled=scaled,
            )
        states.append(distinct[key])
    return states


def _expert_layers(states: list[BlockState], plan: MethodPlan) -> list[BlockState]:
    """Each block's state without the expert adapters a layer-given target leaves out of
    it (one object per distinct state)."""
    if all(ex.layers is None for ex in plan.adapted_experts):
        return states
    distinct: dict[tuple[BlockState, frozenset[str]], BlockState] = {}
    out = []
    for i, st in enumerate(states):
        drop = frozenset(ex.linear.module for ex in plan.adapted_experts if not ex.in_block(i))
        key = (st, drop)
        if key not in distinct:
            distinct[key] = dataclasses.replace(st, adapted=st.adapted - drop) if drop else st
        out.append(distinct[key])
    return out


# a decoder block's norms that read the attention's output or the residual after it
# (transformers' names): training only these needs no gradient through the attention
AFTER_ATTENTION_NORMS = (
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
    "ln_2",
)


def _partial_states(arch: Architecture, plan: MethodPlan, inputs_grad: bool) -> list[BlockState]:
    """partial: each block's own trainable tensors; a block's input needs a gradient once
    anything below it (or the embedding) trains."""
    lay = layout(arch)
    qk_norms = {p.name for p in qk_norm_params(arch)}
    states = []
    below = inputs_grad
    for names in plan.trained_by_block:
        params = [p for p in lay.block if p.name in names]
        trained = frozenset(p.module for p in params if p.kind in ("linear", "router", "expert"))
        biased = frozenset(p.module for p in params if p.kind == "linear_bias")
        norm_names = [p.name for p in params if p.kind == "norm" and p.name not in qk_norms]
        after_only = bool(norm_names) and not arch.parallel_attn_mlp
        after_only = after_only and all(n.startswith(AFTER_ATTENTION_NORMS) for n in norm_names)
        states.append(
            BlockState(
                below,
                False,
                frozenset(),
                biased,
                trained=trained,
                norms_trained=bool(norm_names),
                after_attention_norms_only=after_only,
            )
        )
        if qk_norms.intersection(names):
            states[-1] = dataclasses.replace(states[-1], qk_norms_trained=True)
        below = below or bool(names)
    return states


def _sum(items: list[Saved]) -> int:
    return sum(s.nbytes for s in items)


@dataclass(frozen=True, slots=True)
class PlanSizes:
    """The sizes of a step that come from the plan alone, whatever the batch and length."""

    weights: int
    states: int
    grads: int
    grads_per_block: int
    grads_outer: int
    grads_embedding: int
    tied_embedding_backward: int
    autocast_cache: int
    optimizer: OptimizerStep  # the step's whole record: nothing in it reads the shape


_PLAN_SIZES: dict[tuple[object, ...], PlanSizes] = {}
_MAX_PLAN_SIZES = 4096


def plan_sizes(arch: Architecture, run: RunConfig, plan: MethodPlan) -> PlanSizes:
    """PlanSizes of ``plan_method(arch, run)``, cached under the plan's own key (the
    architecture and every run setting but the shape): a sweep over batch sizes and
    lengths shares them (summing the groups again was a tenth of an estimate). Safe:
    PlanSizes is frozen, and none of these functions reads a shape setting."""
    key = plan_key(arch, run)
    sizes = _PLAN_SIZES.get(key)
    if sizes is None:
        if len(_PLAN_SIZES) >= _MAX_PLAN_SIZES:
            _PLAN_SIZES.clear()
        grad_groups = [g for g in plan.groups if g.trainable]
        grads, grads_block, grads_outer, grads_embedding = _gradient_sizes(plan)
        sizes = _PLAN_SIZES[key] = PlanSizes(
            # the model's registered buffers live beside its weights, in its dtype, and
            # those of an older transformers release (release_buffers)
            weights=sum(g.nbytes for g in plan.groups)
            + buffer_numel(arch) * BYTES_PER_ELEMENT[plan.dtypes.base]
            + release_buffer_bytes(arch, run, plan.dtypes)
            + adapter_buffer_bytes(plan, run, arch.num_layers),
            # bitsandbytes' paged buffers are not the allocator's (optim.paged_state_bytes;
            # estimate adds them to the device figure)
            states=allocator_state_bytes(plan.groups, run),
            grads=grads,
            grads_per_block=grads_block,
            grads_outer=grads_outer,
            grads_embedding=grads_embedding,
            tied_embedding_backward=Embedding.backward_workspace(arch, grad_groups),
            autocast_cache=LinearOp.autocast_cache(arch, plan),
            optimizer=OptimizerStep(
                temporaries=optimizer_step_temporary_bytes(plan.groups, run),
                in_backward=run.optimizer_in_backward,
                block=step_in_backward([g for g in grad_groups if g.in_block], run),
                block_tensors=step_in_backward_tensors([g for g in grad_groups if g.in_block], run),
                outer=step_in_backward([g for g in grad_groups if not g.in_block], run),
                head_side=step_in_backward(
                    [
                        g
                        for g in grad_groups
                        if not g.in_block and not plan.gradient_completes_last(g)
                    ],
                    run,
                ),
                merge=LoRA.merge(plan, run),
            ),
        )
    return sizes


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
    # what the graph holds beside the saved tensors until the end of backward (the
    # input-gradient hook's leaves, vision_step.graph_leaves): in the embedding side's
    # activations of the timeline, not in ``activations``; one tensor each
    graph_leaves: tuple[int, ...] = ()


def step_parts(
    arch: Architecture,
    run: RunConfig,
    teacher: Teacher | None = None,
    split: SequenceSplit | None = None,
) -> StepParts:
    """The components of one step and their sizes in time (no peak yet); with a
    ``teacher``, the distillation step (ftmem.distill); with ``split``, a tensor-parallel
    rank under sequence parallelism (ftmem.sequence_parallel)."""
    # (Qwen3.5: what was measured, ops.gated_deltanet)
    refuse_training(arch, run, alone=teacher is None and split is None)
    short_conv.refuse(arch, "a training step")  # (LFM2: only its parameters)
    run = framework_run(arch, run)  # e.g. Unsloth's causal-LM forward fuses the loss
    seq2seq.check_supported(arch, run)
    _check_family_release(arch, run)
    if arch.encoder_decoder and run.objective != "sft":
        raise InvalidInputError(
            f"{arch.name} is an encoder-decoder: --objective {run.objective} is modelled "
            "for decoder-only models."
        )
    if arch.encoder_decoder:
        if teacher is not None:
            raise InvalidInputError(
                f"{arch.name} is an encoder-decoder: distillation is not modelled for it yet."
            )
        return _seq2seq_parts(arch, run)
    if run.objective == "grpo" and teacher is None:  # TRL's GRPOTrainer (ftmem.grpo)
        from ftmem import grpo

        grpo.check_supported(arch, run)
        sft = run.model_copy(update={"objective": "sft"})
        if run.framework == "torchtune":  # torchtune's own recipe (ftmem.torchtune_grpo)
            from ftmem.torchtune_grpo import with_recipe

            return with_recipe(_decoder_parts(arch, sft, split), arch, run)
        return grpo.with_grpo(_decoder_parts(arch, sft, split), arch, run)
    if run.objective != "sft":
        if teacher is not None:
            raise InvalidInputError("Distillation (--teacher) runs with --objective sft only.")
        # the chosen and rejected sequences run as one batch of 2b (TRL's DPOTrainer
        # _compute_loss, the ORPO and CPO trainers' concatenated_forward)
        pairs = run.model_copy(update={"batch_size": run.sequences})
        return _with_reference(_decoder_parts(arch, pairs, split), arch, pairs)
    parts = _decoder_parts(arch, run, split)
    return parts if teacher is None else _with_teacher(parts, teacher, arch, run)


def _decoder_parts(
    arch: Architecture, run: RunConfig, split: SequenceSplit | None = None
) -> StepParts:
    """A decoder-only step's components (``run.batch_size`` sequences per forward)."""
    plan = plan_method(arch, run)
    T = run.batch_size * run.positions
    blocks = _block_activations(arch, run, plan, T, split)
    outer_below, outer_above = _outer_items(arch, run, plan, T, blocks.per_block)
    if split is not None:
        outer_above = split.head_side(outer_above)
    outer_items = outer_below + outer_above
    fixed = plan_sizes(arch, run, plan)
    grads = _decoder_gradients(arch, fixed, run, plan)
    own_grads = (grads.per_block, grads.per_block)
    if run.activation_offload:  # those made by the block's largest moment
        e = BYTES_PER_ELEMENT[plan.dtypes.compute]
        last = list(blocks.last)
        own_grads = offloaded_own_gradients(arch, run, plan, last, e, T, grads.per_block)
    # Gemma 4's stored keys and values, held by the checkpoints (their history: at the
    # backward of the blocks below the storing ones)
    stored = stored_kv_held(arch, run, plan, _block_states(arch, run, plan), T)
    rebuilt = blocks.rebuilt
    if stored.during:
        rebuilt = tuple(r + d for r, d in zip(rebuilt, stored.during, strict=True))
    policy = _block_policy(run, rebuilt, own_grads, blocks.per_block)
    # a checkpointed block's input, the one tensor it keeps
    block_input = T * arch.hidden_size * plan.dtypes.residual_bytes
    first_input = T * arch.hidden_size * plan.dtypes.first_input_bytes
    if split is not None:
        block_input, first_input = split.tokens(block_input), split.tokens(first_input)
    inputs = (block_input,) * len(blocks.per_block)
    if len(inputs) == arch.num_layers and first_input != block_input:  # block 0's is kept
        inputs = (first_input, *inputs[1:])
    on_host = _host_inputs(run, inputs, blocks.per_block)
    if any(on_host):  # Unsloth's checkpointing: in host memory, one GPU buffer to bring back
        inputs = tuple(0 if off else x for x, off in zip(inputs, on_host, strict=True))
        outer_below.append(Saved("checkpointed input: GPU reload buffer", max(on_host)))
    outer_below += LinearOp.dequant_buffer(arch, run, plan)
    outer_below += vision_step.saved(arch, run, plan.dtypes)
    outer_items = outer_below + outer_above
    per_block_kept = policy.kept(blocks.per_block, inputs)
    aux = RouterAuxLoss.kept(arch, run, plan, T)  # whatever the policy keeps of the block
    if aux:
        aux = aux if split is None else split.tokens(aux)
        dense = arch.dense_layers
        per_block_kept = tuple(k + (aux if i >= dense else 0) for i, k in enumerate(per_block_kept))
    activations = _sum(outer_items) + sum(per_block_kept)
    offloaded = sum(on_host)
    if run.activation_offload:
        # every saved tensor leaves the GPU in forward, the embedding and head sides'
        # too (torchtune: the LM head's and the loss's stay); backward brings back one
        # node's at a time (the largest item of a block, and the loss's fp32 log-softmax)
        stays = _head_side(outer_above) if offload_keeps_head(run) else []
        offloaded = activations - _sum(stays) + policy.on_host(blocks.per_block, inputs)
        activations = _sum(stays)
        outer_below, outer_above = [], stays
    leaves = _graph_leaves(arch, run, plan, T, blocks, stored.held)
    below = _sum(outer_below) + sum(leaves)
    kept = Activations(per_block_kept, below=below, above=_sum(outer_above))
    sizes = _decoder_sizes(arch, run, plan, fixed, blocks, kept, grads, policy)
    # the blocks' returned caches, held from their forward to the loss
    returns = returned_cache.per_block(arch, run, BYTES_PER_ELEMENT[plan.dtypes.compute])
    sizes = dataclasses.replace(sizes, block_returns=returns)
    return StepParts(
        plan=plan,
        sizes=sizes,
        activations=activations,
        per_block_full=blocks.per_block,
        typical_block=blocks.last + _aux_items(aux),
        outer_items=tuple(outer_items),
        offloaded=offloaded,
        graph_leaves=leaves,
    )


def _graph_leaves(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    T: int,
    blocks: _BlockActivations,
    stored_held: int,
) -> tuple[int, ...]:
    """What the graph and the checkpoints hold that no node saves."""
    # the input-gradient hook's leaves: held by the graph, saved by no node
    # (a trained token embedding's output is no leaf: full finetuning's, modules_to_save's)
    embed_trains = plan.embed_trainable or plan.outer_trainable
    leaves = vision_step.graph_leaves(arch, run, plan.dtypes, embed_trains)
    apart = embedding_leaf_apart(arch, run, plan)
    leaves = (*leaves, apart) if apart else leaves
    masks = Attention.held_layer_masks(arch, run)  # (the checkpoints' inputs, too)
    leaves = (*leaves, masks) if masks else leaves
    # (Gemma 4's stored keys and values: a checkpoint's keyword argument, too)
    leaves = (*leaves, stored_held) if stored_held else leaves
    # (cos and sin come in the embedding output's dtype: the first block's input's)
    rotary = Embedding.unread_rotary_held(arch, run, plan.dtypes.first_input_bytes)
    leaves = (*leaves, rotary) if rotary and any(blocks.per_block) else leaves
    # the rotary's cos and sin, held as the checkpoints' keyword argument
    leaves += Embedding.rotary_held(arch, run, T, plan.dtypes.first_input_bytes)
    return leaves


def _check_attention_per_layer_type(arch: Architecture, run: RunConfig) -> None:
    """Full-attention layers of their own shape (Architecture.of_layer_type) are modelled
    in the decoder blocks' walk, their parameters and rotary tables: what reads one
    attention width for every layer beside them (a generation's KV cache, prompts and
    prefixes in front of every layer's keys and values, the gated prompts), frameworks
    with their own layers or kernels (not measured), and training layers picked by
    position below the top one are refused."""
    if not arch.attention_per_layer_type:
        return
    what = None
    if run.objective == "grpo":
        what = "GRPO's generation (its KV cache)"
    elif run.framework in ("torchtune", "litgpt", "unsloth"):  # (their own layers, kernels)
        what = f"--framework {run.framework}"
    elif run.generate_batch_size or run.generate_len or profile_of(run).generates:
        what = "generation after the step (its KV cache)"
    elif run.method in PROMPT_METHODS | GATED_PROMPT_METHODS:
        what = f"--method {run.method}"
    elif run.method == "partial":  # (its names pick layers by index)
        what = "--method partial"
    elif run.method == "freeze" and 1 < (top := _freeze_top(run)) < arch.num_layers:
        # the model interleaves its layer types, the Architecture keeps their counts:
        # which types the top layers are is not known beyond the top one (global)
        what = f"freezing all but the top {top} layers (their types)"
    if what is not None:
        raise InvalidInputError(
            f"{arch.name}: {what} with full-attention layers of their own attention shape "
            "(full_head_dim, full_kv_heads, full_values_are_keys) is not modelled."
        )


# the methods measured with per-layer inputs (ops.per_layer_input; tests/accuracy/cases.py
# ``perlayerinputsize``): their adapters on the role linears only
PER_LAYER_INPUT_METHODS = frozenset(
    {"full", "freeze", "lora", "rslora", "dora", "ia3", "vera", "adalora", "loha"}
)


def _check_per_layer_inputs(arch: Architecture, run: RunConfig) -> None:
    """Per-layer inputs (Architecture.per_layer_input_size) are modelled for the runs
    measured: full finetuning, freeze, and LoRA, rsLoRA, DoRA, IA³, VeRA, AdaLoRA and
    LoHa on the attention and MLP linears (full finetuning and LoRA under gradient
    checkpointing), in the transformers loop, without quantised weights, offloaded activations, generation or
    another objective. Everything else is refused: peft's all-linear and bitsandbytes
    reach the per-layer nn.Linear modules too, prompt methods feed embeddings from which
    the model recovers the token ids, frameworks run their own layers."""
    if not arch.per_layer_input_size:
        return
    what = None
    if run.method not in PER_LAYER_INPUT_METHODS:
        what = f"--method {run.method}"
    elif run.grad_ckpt and run.method not in ("lora", "rslora", "full"):
        # (freeze with a frozen checkpointed block, fp32, reads -1.2 % where the same
        # run without per-layer inputs reads -1.6 %, not located: families/gemma4.py;
        # the other adapters not measured checkpointed)
        what = "gradient checkpointing"
    elif run.method not in ("full", "freeze") and "all-linear" in run.targets:
        what = "all-linear (peft adapts the per-layer linears too)"
    elif run.quant is not None:
        what = "quantised weights"
    elif run.activation_offload:
        what = "offloaded activations"
    elif run.framework != "hf":
        what = f"--framework {run.framework}"
    elif run.objective != "sft":
        what = f"--objective {run.objective}"
    elif run.generate_batch_size or run.generate_len or profile_of(run).generates:
        what = "generation after the step"
    if what is not None:
        raise InvalidInputError(
            f"{arch.name}: {what} with per-layer inputs (per_layer_input_size) is not "
            "modelled (full finetuning, freeze and LoRA-like adapters on the attention and "
            "MLP linears are)."
        )


def _freeze_top(run: RunConfig) -> int:
    if run.trainable_layers is None:
        return DEFAULT_FREEZE_TRAINABLE_LAYERS
    return run.trainable_layers


# LoRA's targets measured with Gemma 4's key/value sharing (tests/accuracy/cases.py)
KV_SHARING_LORA_TARGETS = frozenset({"q,v", "q,k,v", "all-linear"})


def _check_kv_sharing(arch: Architecture, run: RunConfig) -> None:
    """Gemma 4's key/value sharing (Architecture.kv_shared_layers) is estimated for the
    runs measured (families/gemma4.py; tests/accuracy/cases.py ``kvsharedlayers``): full
    finetuning and LoRA on q, v (and q, k, v, all-linear), in fp32, bf16 and bf16-mixed,
    sdpa, with or without transformers' checkpointing (the checkpoints' stored keys and
    values from the storing layers, activations.stored_kv_held; other checkpointing
    wrappers are refused by _check_family_release), on one GPU
    (estimate._check_parallel_arch); the others are refused."""
    if not arch.kv_shared_layers:
        return
    what = None
    if run.method not in ("full", "lora"):
        what = f"--method {run.method}"
    elif run.method == "lora" and run.targets not in KV_SHARING_LORA_TARGETS:
        what = f"LoRA on {run.targets}"
    elif run.precision not in ("fp32", "bf16", "bf16-mixed") or run.autocast is not None:
        what = f"--precision {run.precision} (autocast as set)"
    elif run.attn != "sdpa" or run.compile:
        what = f"--attn {run.attn}" if run.attn != "sdpa" else "torch.compile"
    elif run.quant is not None or run.activation_offload:
        what = "quantised weights or offloaded activations"
    elif run.framework != "hf" or run.objective != "sft":
        what = f"--framework {run.framework} --objective {run.objective}"
    elif run.generate_batch_size or run.generate_len or profile_of(run).generates:
        what = "generation after the step"
    if what is not None:
        raise InvalidInputError(kv_sharing_refusal(arch, what))


def _check_family_release(arch: Architecture, run: RunConfig) -> None:
    """The family's transformers code as ftmem read it (Family.since_transformers), and
    Gemma 4's stored keys and values under the checkpointing they were measured with:
    transformers' own non-reentrant checkpoint inside the layer (activations
    .stored_kv_held), not a framework's own wrapper, the reentrant one around the layer's
    call (versions.checkpoint_wraps_decoder_unit), Unsloth's or offloaded activations."""
    since = arch.traits.since_transformers
    if since is not None and older_than(run.transformers_version, since):
        first = ".".join(map(str, since))
        raise InvalidInputError(
            f"{arch.name}: ftmem models its transformers code as of {first}; an earlier "
            "transformers_version is not modelled for it."
        )
    _check_attention_per_layer_type(arch, run)
    _check_per_layer_inputs(arch, run)
    _check_kv_sharing(arch, run)
    if not (run.grad_ckpt and arch.traits.stores_last_kv_per_layer_type):
        return
    profile = profile_of(run)
    unmeasured = (
        not profile.checkpoints_in_transformers_loop
        or offloads_checkpoint_inputs(run)
        or run.activation_offload
        or checkpoint_wraps_decoder_unit(run)
    )
    if unmeasured:
        raise InvalidInputError(
            f"{arch.name} under {profile.name}'s gradient checkpointing"
            f"{' with offloaded activations' if run.activation_offload else ''} is not "
            "modelled: the keys and values its storing layers keep were measured under "
            "transformers' own non-reentrant checkpoint."
        )


def embedding_leaf_apart(arch: Architecture, run: RunConfig, plan: MethodPlan) -> int:
    """The frozen token embeddings' output where the first block reads another tensor:
    under checkpointing enable_input_require_grads makes that output a leaf requiring a
    gradient (``output.requires_grad_(True)``, vision_step.graph_leaves), and the
    AccumulateGrad node after it keeps it until the graph ends. Where the first block
    reads it as it is, the checkpoint keeps it anyway; it is held apart where the model
    makes a new tensor of it first: the embedding dropout (transformers 5.25
    modeling_starcoder2.py l.368-369 ``nn.functional.dropout(hidden_states,
    p=self.embedding_dropout)``), learned positions added to it (modeling_gpt2.py l.577,
    modeling_gpt_bigcode.py l.471 ``inputs_embeds + position_embeds``) or a scalar
    multiplier outside the embedding module (Family.embeddings_scaled_apart: Granite,
    modeling_granite.py l.388; traced on the tiny Granite, LoRA with checkpointing: the
    embedding output and its product both live to the end, -2.6 % of the bf16 peak
    without). A trained
    embedding's output is no leaf (EmbeddingBackward before it keeps only the ids), and
    images' masked_scatter copy is counted there already. Measured on the tiny StarCoder2
    (embedding_dropout 0.1) and GPT-2, LoRA with checkpointing: the embedding output lives
    from the forward to the end of backward (b·s·h; -1.8 % of GPT-2's fp32 peak without)."""
    copied = (
        arch.embedding_dropout
        or arch.position_embedding == "learned"
        or arch.traits.embeddings_scaled_apart
    )
    if not copied or not vision_step.checkpointing_hooks_tower(run):
        return 0
    if plan.outer_trainable or plan.embed_trainable or run.n_virtual > 0:
        return 0
    if arch.vision is not None and run.images:
        return 0
    return run.batch_size * run.seq_len * arch.hidden_size * plan.dtypes.residual_bytes


@dataclass(frozen=True, slots=True)
class _BlockActivations:
    """What the decoder blocks keep: each block's saved bytes, what each one's recompute
    rebuilds under checkpointing, and the items of the last block (the first backward
    reaches)."""

    per_block: tuple[int, ...]
    rebuilt: tuple[int, ...]
    last: tuple[Saved, ...]
    graph_held: int = 0  # what autograd ctx attributes keep of every block (Saved.graph_held)
    # the items of each Gated DeltaNet block and whether its weights train (None for the
    # other blocks), bottom to top; () in a stack without them
    linear_items: tuple[tuple[tuple[Saved, ...], bool] | None, ...] = ()


def _block_activations(
    arch: Architecture, run: RunConfig, plan: MethodPlan, T: int, split: SequenceSplit | None
) -> _BlockActivations:
    """Activations per block, derived once per distinct block state and block kind."""
    block_states = _block_states(arch, run, plan)
    cache: dict[tuple[BlockState, bool, bool, bool, bool, int | None], list[Saved]] = {}
    per_block: list[int] = []
    rebuilt: list[int] = []  # checkpointing: what each block's recompute adds
    previous: tuple[BlockState, bool, bool, bool, bool, int | None] | None = None
    previous_sum, previous_rebuilt, previous_held, graph_held = 0, 0, 0, 0
    sliding = _sliding_blocks(arch, run)
    per_type = arch.attention_per_layer_type
    full_blocks = arch.type_blocks(full=True)
    linear = arch.linear_attention_blocks
    shared = arch.kv_shared_layers > 0
    linear_items: list[tuple[tuple[Saved, ...], bool] | None] = []
    for i, st in enumerate(block_states):
        # (DeepSeek's first blocks are dense; a sliding layer's sdpa may take a mask; the
        # full-attention layers may have their own attention shape, the blocks past the
        # sliding ones as _sliding_blocks takes them; Qwen3.5's Gated DeltaNet blocks
        # wherever config.json's layer_types puts them)
        key = (
            st,
            i < arch.dense_layers,
            i in sliding,
            not per_type or full_blocks.holds(i),
            linear is not None and linear.holds(i),
            # (key/value sharing: each block its own, its linears and kind by index)
            i if shared else None,
        )
        if key != previous:  # consecutive blocks usually share one state object
            shape = arch.of_layer_type(full=key[3])
            if key not in cache:
                saved = block_saved(shape, run, plan, st, T, key[1], key[2], key[4], block=key[5])
                cache[key] = saved if split is None else split.block(saved)
            previous, previous_sum = key, _sum(cache[key])
            previous_held = sum(x.graph_held for x in cache[key])
            own_input = compiled_layers(run) or profile_of(run).kernel_rms_norm
            reused = Norm.recompute_reuses_input(shape, plan, cache[key], T, own_input)
            previous_rebuilt = previous_sum - reused
        if linear is not None:
            linear_items.append((tuple(cache[key]), st.weights_trainable) if key[4] else None)
        per_block.append(previous_sum)
        rebuilt.append(previous_rebuilt)
        graph_held += previous_held
    # (the top block: never dense, a full-attention one)
    top = arch.num_layers - 1
    last = cache[(block_states[-1], False, top in sliding, True, False, top if shared else None)]
    return _BlockActivations(
        tuple(per_block), tuple(rebuilt), tuple(last), graph_held, tuple(linear_items)
    )


def _sliding_blocks(arch: Architecture, run: RunConfig) -> Sequence[int]:
    """The blocks whose sdpa call takes the sliding window's mask (empty unless
    ops.attention.sliding_window_mask). Architecture keeps only how many layers slide, so
    they are taken as the lowest ones: the top block is a full-attention one whenever the
    stack has one, as in Gemma 2 and 3 and EXAONE 4 stacks whose depth is a multiple of
    their pattern (Gemma 3's every sixth layer global: configuration_gemma3.py
    ``bool((i + 1) % 6)``). Qwen2's top layers slide (i >= max_window_layers): there the
    top block is the other type; the sum over blocks is the same either way."""
    if not sliding_window_mask(arch, run):
        return range(0)
    if arch.sliding_indices:  # (Gemma 4 with key/value sharing: by index)
        return sorted(arch.sliding_indices)
    return range(arch.sliding_layers)


def _aux_items(aux: int) -> tuple[Saved, ...]:
    """The router's load-balancing loss's share of a MoE block (ops.router_aux)."""
    what = "router logits for the load-balancing loss (their softmax, then their gradient)"
    return (Saved(what, aux, Kind.MOE, Side.MLP),) if aux else ()


def _outer_items(
    arch: Architecture, run: RunConfig, plan: MethodPlan, T: int, per_block: tuple[int, ...]
) -> tuple[list[Saved], list[Saved]]:
    """What the embedding side and the head side keep (below the blocks, above them)."""
    outer_below, outer_above = outer_saved(arch, run, plan, T)
    if run.grad_ckpt and arch.traits.eager_float_mask and runs_eager(arch, run) and any(per_block):
        # GPT-2's eager path passes every block a float (b, 1, s, s) causal mask,
        # which checkpointing keeps as an input (one storage for all blocks)
        e = BYTES_PER_ELEMENT[plan.dtypes.compute]
        s_len = run.positions
        mask = run.batch_size * s_len * s_len * e
        outer_below.append(Saved("eager attention mask (kept by checkpointing)", mask))
    colo_mask = coloattention_mask_bytes(
        arch, run.batch_size, BYTES_PER_ELEMENT[plan.dtypes.compute]
    )
    if run.grad_ckpt and colo_mask and any(per_block):
        # ColossalAI's shardformer model forward: one mask for all blocks, which every
        # checkpoint keeps as an input (without checkpointing it is freed with the
        # model forward's frame, before the loss)
        outer_below.append(Saved("ColoAttention's causal mask (kept by checkpointing)", colo_mask))
    alibi = Attention.alibi_mask_saved(arch, run)
    if alibi and any(per_block):  # kept by every layer's kernel, one storage
        outer_below.append(Saved("ALiBi mask (b, heads, s, s), one for every layer", alibi))
    return outer_below, outer_above


def _loss_backward(arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int) -> int:
    """The loss's backward beyond its saved tensors: the log-softmax's and the logits'
    fp32 gradients (a fused loss kept its own; a chunked one has one chunk's at a time)."""
    V = arch.vocab_size
    if run.loss == "logprob-tiles":
        trains_head = plan.outer_trainable or plan.head_trainable
        return Loss.logprob_tiles_backward(arch, run, plan, e, trains_head)
    return {
        "fused": lambda: Loss.fused_backward(arch, run, plan, T),
        "chunked": lambda: Loss.chunked_backward(run, V, e, T),
        "shifted": lambda: Loss.shifted_backward(run, V, e, T),
        "upcast-shifted": lambda: Loss.upcast_shifted_backward(run, V, e, T),
        "linear-chunked": lambda: Loss.linear_chunked_backward(arch, plan, e, T),
    }.get(Loss.kind(run), lambda: 2 * T * V * FP32)()


def _logits_forward(arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int) -> int:
    """At the loss in forward; with LoRA on the head, the larger of its sum's moment and
    the loss's: the sum's operands are freed before the loss runs, and at the sum the
    loss's saved tensors (counted with every activation) do not exist yet: subtracted."""
    if run.loss == "fused" and profile_of(run).fused_loss_chunk_bytes is None:
        loss = Loss.liger_forward(arch, run, plan, e, T)
    else:
        loss = Loss.forward_transient(arch, run, e, T)
    if not plan.head_lora:
        return loss
    return max(
        loss, HeadLoRA.forward_transient(arch, run, plan, T) - _head_lora_loss_saved(arch, run, T)
    )


def _head_lora_loss_saved(arch: Architecture, run: RunConfig, T: int) -> int:
    """The fp32 cross-entropy's saved item beside an adapted head (the standard loss's
    T rows; torchtune 0.1's upcast-shifted loss, the shifted R)."""
    if Loss.kind(run) == "upcast-shifted":
        return Loss.cross_entropy_saved(
            Loss.rows(run), arch.vocab_size, FP32, False, Loss.shifted_labels(run)
        )
    return Loss.cross_entropy_saved(T, arch.vocab_size, FP32, False)


def _head_backward(arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int) -> int:
    """The loss's backward beyond its saved tensors; then the head's own backward beyond
    the same saved tensors (freed by then: subtracted), where it is larger: LoRA on the
    head, or the pieces of torchtune's chunked output (Loss.chunked_head_backward)."""
    loss = _loss_backward(arch, run, plan, e, T)
    if run.loss == "chunked":  # the head's pieces after the loss's saved tensors are freed
        pieces = Loss.chunked_head_backward(arch, plan, T)
        loss = max(loss, pieces - Loss.chunked_saved(run, arch.vocab_size, e, T))
    if tied_tokens := trainable_tokens.head_backward(arch, run, plan, T):  # (a tied head)
        loss = max(loss, tied_tokens - _head_lora_loss_saved(arch, run, T))
    if not plan.head_lora:
        return loss
    return max(loss, HeadLoRA.backward(arch, plan, T) - _head_lora_loss_saved(arch, run, T))


def _decoder_sizes(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    fixed: PlanSizes,
    blocks: _BlockActivations,
    kept: Activations,
    grads: Gradients,
    policy: BlockPolicy,
) -> StepSizes:
    """A decoder-only step's sizes in time (``fixed``: the plan's, ``kept``: the
    activations on the GPU)."""
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    T = run.batch_size * run.positions
    V = arch.vocab_size
    offloaded = run.activation_offload
    # checkpointed or offloaded blocks under autocast: the cast cache is all that keeps
    # their 16-bit weight copies on the GPU, until the forward (and the loss in it) ends
    forward_cache = fixed.autocast_cache if run.grad_ckpt or offloaded else 0
    # (LLaVA's unread tower layers' graph, held by the model output: ftmem.vision_lora)
    forward_cache += vision_lora.unread_held(arch, run, plan.dtypes)
    forward_cache += vision_step.image_outputs_held(arch, run, plan.dtypes)
    framework_head = _framework_head(arch, run, plan, e, T)
    loss_inputs, loss_saved = _offloaded_loss_inputs(arch, run, plan, e, T)
    head = HeadTransients(
        logits_forward=_head_forward(arch, run, plan, e, T, forward_cache)
        + sum(loss_inputs)
        + loss_saved,
        loss_backward=_offloaded_shifted_backward(arch, run, plan, e, T, loss_saved)
        or _head_backward(arch, run, plan, e, T)
        + (
            T * V * FP32
            if offloaded
            and run.loss not in ("fused", "logprob-tiles")
            and not offload_keeps_head(run)
            else 0
        ),
        # the final norm's backward, its fp32 input still saved (a kernel norm's: in place)
        workspace=Norm.backward_workspace(arch, e, T, in_place=profile_of(run).kernel_rms_norm)
        + (0 if profile_of(run).kernel_rms_norm else T * arch.hidden_size * FP32),
    )
    output_held = _output_held(run, V, e, T) if framework_head is None else 0
    # (an adapted head's moments are laid out tensor by tensor on torchtune 0.1's loop
    # loss only: ops.loss_requests._loop_shifted_loss)
    adapted = plan.head_lora and Loss.loop_shifted_copy(run, V, T) > 0 and _same_dtypes(plan, e)
    if framework_head is None and run.objective == "sft" and (adapted or not plan.head_lora):
        requests = _head_requests(
            arch, run, plan, e, T, head, forward_cache, output_held, loss_inputs
        )
        head = dataclasses.replace(head, requests=requests)
    if framework_head is None:
        head = _with_router_aux_moment(arch, run, plan, T, head)
    loop_held = vision_step.pixel_input(arch, run, plan.dtypes)  # an image-text batch's pixels
    loop_held += loop_output(arch, run, e, T)
    if run.objective == "sft":  # torchtune 0.1's loop: the shifted fp32 logits
        loop_held += Loss.loop_shifted_copy(run, V, T)
    if framework_head is not None:  # LitGPT: fp32 logits held by the loop, chunked loss
        loop_held += framework_head.held
        head = dataclasses.replace(
            head,
            logits_forward=framework_head.logits_forward + forward_cache,
            loss_backward=framework_head.loss_backward,
        )
    return StepSizes(
        weights=fixed.weights,
        states=fixed.states,
        gradients=grads,
        activations=kept,
        block=_decoder_block(arch, run, plan, blocks, forward_cache, policy),
        head=head,
        optimizer=fixed.optimizer,
        loop_held=loop_held,
        previous_graph=_previous_graph(run, blocks),
        # a frozen vision tower's forward, before the language model's (ftmem.vision_step)
        teacher_forward=vision_step.forward_transient(arch, run, plan.dtypes),
        vision_backward=vision_step.backward_transient(arch, run, plan.dtypes, plan.embed_trainable)
        + trainable_tokens.backward_moment(arch, run, plan, T),  # (text-only: never both)
        forward_start=trainable_tokens.forward_moment(arch, run, plan, T),
        output_held=output_held,
    )


def _framework_head(
    arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int
) -> HeldLogitsHead | None:
    """LitGPT's head side (ops.loss.held_logits_head), with LoRA on its chunked head where
    the run adapts it (adapters.head_lora.chunked_head_lora); None on other frameworks."""
    chunk = head_chunk_tokens(run)
    pieces = chunked_head_lora(arch, run, plan, chunk) if plan.head_lora and chunk else None
    return held_logits_head(arch, run, plan, e, T, pieces)


def _head_forward(
    arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int, forward_cache: int
) -> int:
    """The head's forward moment beyond what the loss saves: the loss's own with what
    the forward holds until it returns, or, once it has returned and its caches are
    freed, accelerate's fp32 copy of the returned logits (Loss.fp32_output_moment)."""
    tiles = run.loss == "logprob-tiles"  # TRL's log-probability tiles
    loss = (
        # (the preference objectives' FusedHead counts the backbone's output itself)
        Loss.logprob_tiles_moment(arch, run, plan, e)
        if tiles and run.objective == "sft"
        else Loss.logprob_tiles_forward(arch, run, plan, e)
        if tiles
        else _logits_forward(arch, run, plan, e, T)
    )
    held = PrefixTuning.cache(arch, run, plan.dtypes) + forward_cache
    held += _named_head_input(arch, run, plan, T)
    converted = 0 if plan.head_lora else Loss.fp32_output_moment(arch, run, e, T)
    return max(loss + held, converted)


def _named_head_input(arch: Architecture, run: RunConfig, plan: MethodPlan, T: int) -> int:
    """The LM head's input where the causal LM's forward computes the loss and nothing
    saves that input (the head and everything outside the blocks frozen: else Loss.saved
    keeps it): the final norm's output, which the forward names (``hidden_states =
    outputs[0]``, then ``self.lm_head(hidden_states[:, ...])`` and ``self.loss_function``)
    until the loss has returned, T·h in the residual stream's dtype (transformers 4.48.1
    models/mistral/modeling_mistral.py:846-852, models/mixtral/modeling_mixtral.py:1072-1078;
    5.x the same lines; the model's own losses of GPT-2 or Qwen-1 alike). 0 where the loop
    computes the loss after the forward (Profile.loss_in_model_forward), under activation
    offload (_offloaded_loss_inputs names it), for the fused, chunked and preference losses
    (their own inputs) and with LoRA on the head (HeadLoRA keeps the input). Measured on the
    CPU: tests/test_named_head_input.py."""
    if not profile_of(run).loss_in_model_forward or run.activation_offload:
        return 0
    if run.objective != "sft" or plan.head_lora:
        return 0
    if Loss.kind(run) not in ("standard", "shifted", "upcast-shifted"):
        return 0
    if plan.outer_trainable or plan.head_trainable:
        return 0
    return T * arch.hidden_size * plan.dtypes.residual_bytes


def _offloaded_loss_inputs(
    arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int
) -> tuple[tuple[int, ...], int]:
    """With activations offloaded (all of them: not torchtune's, whose head side stays),
    the head side's saved tensors are on the host, but at the loss in forward the ones
    the loss reads are still referenced: the LM head's input (``hidden_states`` in the
    causal LM's forward, saved or not; the residual stream's dtype) and the log-softmax
    and labels nll_loss runs on (its arguments). A trained fp32 head under autocast: its
    16-bit copy, in autocast's cache until the forward ends (LinearOp.autocast_cache has
    the blocks'). The standard and the shifted losses of supervised finetuning (the
    latter's saved item over their shifted rows); the standard one measured on the tiny
    Llama, Qwen2 and Qwen3 offload cases (the forward phase -10 to -15 % without).

    Returns the tensors the forward names beyond the loss's own, each (the head's
    input, its 16-bit copy: those present), and the sum of the loss's saved tensors
    (the head's requests make those: ops.loss_requests); ((), 0) where none applies."""
    if not run.activation_offload or offload_keeps_head(run):
        return (), 0
    # the shifted losses alike (their rows, their log-softmax's dtype), but CUDA
    # autocast's shifted one, whose cast is ordered apart (loss_requests.head_requests)
    shifted = Loss.kind(run) == "upcast-shifted" or (
        run.loss == "shifted" and not Loss.shifted_nll_cast(run, e)
    )
    if not (run.loss == "standard" or shifted):
        return (), 0
    if run.objective != "sft" or plan.head_lora:
        return (), 0
    V, h = arch.vocab_size, arch.hidden_size
    dt = plan.dtypes
    head_copy = V * h * e if dt.autocast and dt.base == "fp32" and plan.outer_trainable else 0
    named = tuple(x for x in (T * h * dt.residual_bytes, head_copy) if x)
    rows, labels = (Loss.rows(run), Loss.shifted_labels(run)) if shifted else (T, None)
    log_softmax = Loss.shifted_log_softmax_bytes(run, e) if run.loss == "shifted" else FP32
    return named, Loss.cross_entropy_saved(rows, V, log_softmax, False, labels)


def _offloaded_shifted_backward(
    arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int, loss_saved: int
) -> int:
    """An offloaded shifted loss's backward (its saved item on the host: ``loss_saved``
    from _offloaded_loss_inputs, 0 where that does not apply), its moments as its
    program makes them (ops.loss_requests._shifted_loss, _upcast_shifted_loss, measured
    under save_on_cpu): NllLossBackward0's copies of the log-softmax, labels and
    total_weight beside its gradient; LogSoftmaxBackward0's copy beside both gradients;
    the cast back of the shifted gradient (the shifted loss in fp32 under the CPU's
    autocast); the slice's zeros of the whole logits beside it; the cast back of those
    (upcast-shifted). 0 where it does not apply."""
    if not loss_saved or Loss.kind(run) not in ("shifted", "upcast-shifted"):
        return 0
    V, R = arch.vocab_size, Loss.rows(run)
    ls = Loss.shifted_log_softmax_bytes(run, e) if run.loss == "shifted" else FP32
    first = loss_saved + R * V * ls
    second = 3 * R * V * ls
    if run.loss == "shifted":
        cast_back = R * V * (ls + e) if ls != e else 0
        return max(first, second, cast_back, R * V * e + T * V * e)
    cast_back = T * V * (FP32 + e) if e != FP32 else 0
    return max(first, second, R * V * FP32 + T * V * FP32, cast_back)


def _with_router_aux_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, T: int, head: HeadTransients
) -> HeadTransients:
    """The load-balancing loss after the cross-entropy, the logits still held, when it is
    the head's largest moment (its requests no longer lay out that moment: gpu.trace
    replays it)."""
    # (the forward still names the head's input: the aux loss follows the cross-entropy)
    aux_moment = RouterAuxLoss.loss_moment(arch, run, plan, T)
    aux_moment += _named_head_input(arch, run, plan, T) if aux_moment else 0
    if run.loss == "standard" and aux_moment > head.logits_forward:
        return dataclasses.replace(head, logits_forward=aux_moment)
    return head


def _output_held(run: RunConfig, V: int, e: int, T: int) -> int:
    """The model's logits the loop holds through the backward and the optimizer step
    (Profile.output_held_through_step; supervised finetuning's output)."""
    if not profile_of(run).output_held_through_step or run.objective != "sft":
        return 0
    return Loss.output_logits(run, V, e, T)


def loop_output(arch: Architecture, run: RunConfig, e: int, T: int) -> int:
    """The last pass's output a loop holds at every moment of the next one, until that
    forward returns (Profile.output_held_into_next_forward): its logits (Loss.output_logits)
    and, without checkpointing, the DynamicCache of the training forward, a key and a
    value tensor per layer of T tokens (the ``torch.cat`` copies attention then reads and
    saves). Held throughout the step: exact up to the forward's return; from the backward
    on the loop holds the current pass's output instead (the same bytes at one length),
    whose cache is the keys and values attention saved, so the backward's moments count
    the not yet freed ones twice (at most one cache: an upper bound)."""
    if not profile_of(run).output_held_into_next_forward or run.objective != "sft":
        return 0
    cache = 0 if run.grad_ckpt else T * sum(arch.cache_widths) * e * arch.num_layers
    return Loss.output_logits(run, arch.vocab_size, e, T) + cache


def _head_requests(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    e: int,
    T: int,
    head: HeadTransients,
    forward_cache: int,
    output_held: int = 0,
    loss_inputs: tuple[int, ...] = (),
) -> HeadRequests | None:
    """The head's moments tensor by tensor for the allocator replay (ops.loss_requests),
    where its loss's order is derived (None elsewhere, and where they would not lay out
    the moments). Under activation offload the same program with the loss's saved
    tensors on the host (unless the framework keeps the head side's on the device,
    Profile.offload_keeps_head) and ``loss_inputs`` (_offloaded_loss_inputs) named
    through its forward."""
    if compiled_chunked_loss(run):
        return None
    shifted = run.loss == "shifted"
    log_softmax_bytes = Loss.shifted_log_softmax_bytes(run, e) if shifted else FP32
    R, labels = T, None
    if Loss.kind(run) in ("shifted", "upcast-shifted"):
        R, labels = Loss.rows(run), Loss.shifted_labels(run)
    V = arch.vocab_size
    nll_cast = shifted and Loss.shifted_nll_cast(run, e)
    saved_item = Loss.cross_entropy_saved(R, V, log_softmax_bytes, nll_cast, labels)
    named = _named_head_input(arch, run, plan, T)  # the forward's, as the loss runs
    return loss_requests.head_requests(
        Loss.kind(run),
        T,
        R,
        V,
        e,
        log_softmax_bytes,
        saved_item,
        head.logits_forward,
        head.loss_backward,
        held=forward_cache + PrefixTuning.cache(arch, run, plan.dtypes),
        output_held=output_held,
        nll_cast=nll_cast,
        fp32_output=Loss.fp32_output_moment(arch, run, e, T) > 0,
        head_grads=Loss.chunked_head_grads(arch, plan, T) if run.loss == "chunked" else (0, 0),
        offloaded=run.activation_offload and not offload_keeps_head(run),
        inputs=(*loss_inputs, named) if named else loss_inputs,
        loop_shifted=Loss.loop_shifted_copy(run, V, T) > 0,
        adapted_head=plan.head_lora,
        keep_logits=Loss.keeps_logits(run),
        masked=masked_shift(arch, run),
        fp32_head=head_upcasts(arch, run),
    )


def _same_dtypes(plan: MethodPlan, e: int) -> bool:
    """An adapted linear's base and adapter outputs are in the compute dtype (no cast,
    no promotion in the sum: adapters.lora.output_bytes)."""
    return output_bytes(plan, e) == (e, e)


def _previous_graph(run: RunConfig, blocks: _BlockActivations) -> int:
    """What the last pass's graph still holds through this pass's forward, where the
    loop rebinds its loss only after the next forward's loss: the tensors autograd ctx
    attributes keep (its nodes' saved tensors were freed by its backward). Checkpointed
    blocks are left out: not derived."""
    if not profile_of(run).loss_held_into_next_forward or run.grad_ckpt:
        return 0
    return blocks.graph_held


def _head_side(outer_above: list[Saved]) -> list[Saved]:
    """What the LM head and the loss keep: the head side's items but the final norm's."""
    return [x for x in outer_above if x.kind not in NORM_KINDS]


def _decoder_gradients(
    arch: Architecture, fixed: PlanSizes, run: RunConfig, plan: MethodPlan
) -> Gradients:
    """A decoder-only step's gradients (none held when each is freed by its own step, but
    a tied weight's LM-head part: its AccumulateGrad runs only after the embedding's
    backward, so that part waits in autograd's input buffer through the blocks'
    backward; measured on the CPU, tests/accuracy/cases.py). Where the trainable blocks
    differ, each block's own (block_gradients)."""
    held = 0 if run.optimizer_in_backward else 1
    by_block = block_gradients(arch, plan)
    # (the average's remainder stays outside the blocks only where the average is used)
    outer = fixed.grads - sum(by_block) if by_block else fixed.grads_outer
    return Gradients(
        by_block=tuple(x * held for x in by_block),
        total=fixed.grads * held,
        outer=outer * held,
        per_block=fixed.grads_per_block * held,
        trainable_blocks=plan.trainable_blocks,
        persist=run.grad_accum > 1,
        through_forward=profile_of(run).zero_grad_after_forward,
        embedding=fixed.grads_embedding * held,
        tied_backward=fixed.tied_embedding_backward,
        # (Embedding.backward_workspace: two of the tied weight's gradients)
        tied_held=fixed.tied_embedding_backward // 2 * (1 - held),
        before_loss=sum(g.count * g.grad_bytes for g in plan.groups if plan.gradient_at_head(g))
        * held,
    )


def block_gradients(arch: Architecture, plan: MethodPlan) -> tuple[int, ...]:
    """Each block's own gradient bytes, bottom to top, where the trainable blocks differ:
    a tensor that only some blocks hold (arch.Param.blocks: DeepSeek's dense MLP in its
    first_k_dense_replace blocks, its router and experts in the others) trains in those
    of them that train; an adapter's group is named after the module it adapts. () where
    every block holds every tensor (the average, Gradients.per_block, is then exact) or
    where partial training picks modules per block (its groups do not say which), or
    where one module has a shape per layer type (Architecture.of_layer_type: its groups
    share a name, the average stands)."""
    if arch.attention_per_layer_type:
        return ()
    spans: dict[str, Blocks] = {
        p.module: p.blocks for p in layout(arch).block if p.blocks is not None
    }
    if not spans or not plan.trainable_blocks or plan.trained_by_block:
        return ()
    L = arch.num_layers
    trained = range(L - plan.trainable_blocks, L)
    by_block = [0] * L
    for g in plan.groups:
        if not (g.trainable and g.in_block) or plan.gradient_at_head(g):
            continue
        span = next((span for m, span in spans.items() if g.name.startswith(m + ".")), None)
        holders = [i for i in trained if span is None or span.holds(i)]
        if not holders or g.count % len(holders):
            return ()  # not laid out as the spans say: the average stands
        for i in holders:
            by_block[i] += g.count // len(holders) * g.grad_bytes
    return tuple(by_block) if len(set(by_block[trained.start :])) > 1 else ()


def _with_context(build: int, context: int) -> int:
    """An adapter's forward build with what the layer holds beside it (0: no build)."""
    return build + context if build else 0


def _decoder_block(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    blocks: _BlockActivations,
    forward_cache: int,
    policy: BlockPolicy,
) -> BlockTransients:
    """A decoder block's transients: its forward's largest, its backward's workspace,
    and its policy (what checkpointing rebuilds, offload's own gradients)."""
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    T = run.batch_size * run.positions
    last_block = list(blocks.last)
    offloaded, top = run.activation_offload, arch.of_layer_type(full=True)
    dequant = LinearOp.dequant_moment(arch, run, plan, e, T)  # 4-bit matmuls
    fused = all_adapters_fused(arch, run, plan)  # Unsloth's LoRA Functions
    cross_forward, cross_backward = _cross_attention_moments(arch, run, plan, blocks)

    def mlp_side(own_gradients: bool) -> int:
        if MLP.runs_fused_lora(arch, run, plan):
            return MLP.fused_lora_backward(arch, plan, e, T)
        return block_backward_workspace(
            arch, run, plan, e, T, last_block, own_gradients=own_gradients
        )

    others = (
        dequant,
        0 if fused else adapter_moment(arch, run, plan, last_block, e, T),
        0 if fused else recompute_end_moment(arch, run, plan, e, T),
        checkpointed_attention_moment(top, run, plan, last_block, e),
        checkpointed_moe_moment(arch, run, plan, e, T),
        cross_backward,
    )
    with_own = 0 if offloaded else mlp_side(True)
    workspace = (
        offload_moment(arch, run, plan, last_block, e, T) if offloaded else max(with_own, *others)
    )
    # the attention kernel's moment counts the gradients its block has made by then
    kernel = 0 if offloaded else attention_kernel_moment(top, run, plan, last_block, e, T)
    made = attention_gradients_made(arch, run, plan) if kernel else 0
    # the largest moment without the gradients the moments count as made (the MLP's
    # down projection's, the kernel's): the allocator replay's transient
    if offloaded:
        transient = workspace
    else:
        own = down_gradients_made(arch, run, plan, e) and not MLP.runs_fused_lora(arch, run, plan)
        without_own = mlp_side(False) if own else with_own
        transient = max(without_own, *others, kernel - made)
    return BlockTransients(
        forward=forward_cache
        + Attention.layer_type_masks(arch, run, e)
        + _forward_moment(arch, run, plan, blocks, dequant, fused, cross_forward),
        # offloaded: one op's saved tensors back beside its workspace, and a trained
        # block's own gradients (the peak moves to the end of backward, measured)
        workspace=max(workspace, kernel),
        policy=policy,
        workspace_grads=max(workspace, kernel) - transient,
        without_kernel=workspace if kernel else None,
        workspace_by_block=_reused_kv_gradients(
            arch,
            run,
            plan,
            _per_layer_gradient(
                arch,
                run,
                plan,
                sum(s.nbytes for s in last_block if s.op == PerLayerInput.NAME),
                deltanet_backward_moments(
                    arch, run, plan, blocks.linear_items, max(workspace, kernel), e, T
                ),
            ),
        ),
    )


def _reused_kv_gradients(
    arch: Architecture, run: RunConfig, plan: MethodPlan, by_block: tuple[int, ...]
) -> tuple[int, ...]:
    """Each block's backward moments with the gradients of the keys and values reused
    from a lower layer (Gemma 4's key/value sharing): each reusing layer's kernel backward
    adds into the gradient of the storing layer's key and value (one tensor each, its
    dtype), held from the top reusing layer of that type down to the storing layer's own
    backward (measured with a tracker between the layers' backward hooks, full fp32:
    76,800 B a type, families/gemma4.py). Only the key and value that need a gradient:
    the storing layer's input, or its k (v) projection's weights or adapter."""
    if not arch.kv_shared_layers:
        return by_block
    states = _block_states(arch, run, plan)
    first = arch.num_layers - arch.kv_shared_layers
    T = run.batch_size * run.positions
    held = list(by_block or (0,) * arch.num_layers)
    for full in (False, True):
        blocks = arch.type_blocks(full)
        stores = max((i for i in blocks.indices if i < first), default=None)
        reusers = [i for i in blocks.indices if i >= first]
        if stores is None or not reusers:
            continue
        shape, st = arch.of_layer_type(full), states[stores]
        ctx = LayerContext(shape, run, plan, T)
        every = st.input_requires_grad or attention_side_norms_train(arch, st)
        own = st.adapted | st.own_output_grad
        names = arch.traits.names.attention
        key_bytes = max(ctx.residual, ctx.projection_out_bytes)  # (fp32 cos and sin)
        size = 0
        if every or names["k"] in own or st.qk_norms_trained:
            size += T * shape.kv_size * key_bytes
        values = names["k"] if full and arch.full_values_are_keys else names["v"]
        if every or values in own:
            size += T * shape.kv_size * ctx.e
        for i in range(stores, max(reusers)):
            held[i] += size
    return tuple(held)


def _per_layer_gradient(
    arch: Architecture, run: RunConfig, plan: MethodPlan, top_side: int, by_block: tuple[int, ...]
) -> tuple[int, ...]:
    """Each block's backward moments with the per-layer inputs' gradient the blocks above
    have made (PerLayerInput.gradient_held). The top block makes it in its own backward,
    at its multiply's (modeling_gemma4.py l.1408-1415): after its post per-layer norm's
    backward, whose moment holds everything the block keeps, and before its MLP's and
    attention's, by which the block's per-layer tensors (``top_side``) are freed. Its
    one workspace cannot tell those moments apart: the top block counts what the
    gradient adds beyond the tensors freed, never under either moment (measured: the
    tiny checkpointed freeze with a frozen block below peaks at the top block's norm
    backward without it, families/gemma4.py)."""
    held = PerLayerInput.gradient_held(arch, run, plan, run.batch_size * run.positions)
    if not held:
        return by_block
    top = arch.num_layers - 1
    return tuple(
        x + (held if i < top else max(0, held - top_side))
        for i, x in enumerate(by_block or (0,) * arch.num_layers)
    )


def _forward_moment(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    blocks: _BlockActivations,
    dequant: int,
    fused: bool,
    cross_forward: int,
) -> int:
    """The top block's largest forward moment beyond the cache its forward fills: the
    largest of the candidates each mechanism's op names."""
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    T = run.batch_size * run.positions
    last_block = list(blocks.last)
    last_keeps = blocks.per_block[-1]
    return max(
        # (Unsloth's forward dequantises into its kept buffer: LinearOp.dequant_buffer)
        0 if profile_of(run).dequant_buffer else dequant,
        DoRA.forward_rebuild(plan, run),
        _with_context(
            adapter_forward_build(arch, run, plan, e, T, bool(last_keeps), last_block),
            offloaded_build_context(arch, run, plan, e, T),
        ),
        # (a fused LoRA Function adds its adapter into its output in place)
        0 if fused else checkpointed_forward_adapter(arch, run, plan, e, T),
        0 if fused else offloaded_forward_adapter(arch, run, plan, e, T),
        offloaded_attention_forward(arch, run, plan, last_block, T),
        offloaded_rotary_forward(arch, run, plan, T),
        MoE.forward_transient(
            arch, T, plan.dtypes.residual_bytes, e, top_block_trains(arch, run, plan)
        )
        if last_keeps
        else 0,
        # a block that keeps nothing of its own (frozen, checkpointed, offloaded)
        # still builds its intermediates in forward
        frozen_forward_transient(arch, run, e, plan.dtypes.residual_bytes, T, plan)
        if not last_keeps or run.activation_offload or run.grad_ckpt
        else 0,
        graphless_deltanet_forward(
            arch, run, plan, blocks.per_block, e, plan.dtypes.residual_bytes, T
        ),
        cross_forward,
    )


def _cross_attention_moments(
    arch: Architecture, run: RunConfig, plan: MethodPlan, blocks: _BlockActivations
) -> tuple[int, int]:
    """Llama-3.2-Vision's last cross-attention layer's eager softmax, forward and backward
    (ftmem.mllama_step.cross_eager_moments), as the top block's transients: less the
    activations of the blocks above that layer (not yet made in its forward, freed by its
    backward) and, checkpointed, the top block's recompute (freed too)."""
    forward, backward = vision_step.cross_eager_moments(arch, run, plan.dtypes)
    if not forward and not backward:
        return 0, 0
    above = vision_step.blocks_above_cross(arch)
    if run.grad_ckpt:  # (a checkpointed block keeps its input)
        T = run.batch_size * run.positions
        ahead = above * T * arch.hidden_size * plan.dtypes.residual_bytes
    else:
        ahead = sum(blocks.per_block[len(blocks.per_block) - above :]) if above else 0
    top_rebuilt = blocks.rebuilt[-1] if run.grad_ckpt and blocks.rebuilt else 0
    return max(0, forward - ahead), max(0, backward - ahead - top_rebuilt)


def _host_inputs(
    run: RunConfig, inputs: tuple[int, ...], saved: tuple[int, ...]
) -> tuple[int, ...]:
    """Each checkpointed block's input bytes held in host memory instead (0: on the GPU):
    every block that keeps anything but the last (Profile.offloads_checkpoint_inputs;
    unslothai/unsloth-zoo unsloth_zoo/gradient_checkpointing.py@ce232d6cef9c
    UnslothCheckpointFunction.forward skips LAST_GC_INDEX and tensors under
    MINIMUM_SIZE, 2 MiB)."""
    if not offloads_checkpoint_inputs(run):
        return ()
    kept = [i for i, s in enumerate(saved) if s]
    last = kept[-1] if kept else -1
    minimum = 2 * 1024 * 1024
    return tuple(
        x if s and i != last and x > minimum else 0
        for i, (x, s) in enumerate(zip(inputs, saved, strict=True))
    )


def _block_policy(
    run: RunConfig,
    rebuilt: tuple[int, ...],
    own_grads: tuple[int, int],
    saved: tuple[int, ...],
) -> BlockPolicy:
    """How the blocks keep their activations (``rebuilt``: what each block's recompute
    rebuilds; ``own_grads``: what a trained block's backward holds of its gradients, and
    the lowest one's with nothing below (transients.offloaded_own_gradients); ``saved``:
    what each block saves, nothing where no gradient flows through it)."""
    inner = Checkpointed(rebuilt) if run.grad_ckpt else PLAIN
    if not run.activation_offload:
        return inner
    top, lowest = own_grads
    return Offloaded(inner, top, tuple(not s for s in saved), lowest)


# the methods TRL trains through peft (is_peft_model): the reference is the same model
# with its adapter disabled; every other method gets a frozen copy
_OWN_WEIGHTS_METHODS = frozenset({"full", "freeze", "partial", "galore", "bitfit"})


def trains_own_weights(run: RunConfig) -> bool:
    """Whether TRL trains the model's own weights, not a peft model around them."""
    return run.method in _OWN_WEIGHTS_METHODS


def reference_weights(plan: MethodPlan, run: RunConfig) -> int:
    """dpo, ipo, kto: the frozen reference copy's weights (TRL's DPOTrainer and
    KTOTrainer load it from the model's checkpoint with the model's init kwargs, in the
    policy's dtype: trl/trainer/dpo_trainer.py@f2cd57710ae3 __init__, kto_trainer.py
    __init__); none under peft (the adapter
    disabled: _compute_loss, use_adapter) or with precomputed log-probabilities."""
    if not run.needs_reference or not trains_own_weights(run):
        return 0
    if run.framework == "llama-factory":
        # load_model(is_trainable=False) in the compute dtype: the fp32 upcast of the
        # trainable weights (cast_trainable_params_to_fp32) is the policy's only
        # (hiyouga/LLaMA-Factory src/llamafactory/train/trainer_utils.py@ff6d4d12eeb0
        # create_ref_model, model/adapter.py init_adapter)
        return sum(g.total_numel for g in plan.groups) * BYTES_PER_ELEMENT[plan.dtypes.compute]
    return sum(g.nbytes for g in plan.groups)


def objective_note(plan: MethodPlan, run: RunConfig) -> str:
    """What a preference objective's estimate models, in one note."""
    if run.objective == "grpo" and run.framework == "torchtune":  # (ftmem.torchtune_grpo)
        from ftmem.torchtune_grpo import recipe_note

        return recipe_note(plan, run)
    if run.objective == "grpo":  # (ftmem.grpo)
        from ftmem.grpo import grpo_note

        return grpo_note(plan, run)
    pairs = f"{run.objective.upper()}: chosen and rejected concatenated (batch {run.sequences})"
    forward, its = "a forward", "its forward"
    if run.objective in UNPAIRED_OBJECTIVES:
        n, s = run.sequences, "s" if run.sequences > 1 else ""
        pairs = f"{run.objective.upper()}: {n} unpaired completion{s} per forward"
        if run.objective == "kto":
            pairs += f", the KL term's {n} mismatched one{s} in no_grad forwards"
            forward, its = "two forwards", "its two forwards"
        if PreferenceLoss.upcasts(run):  # LLaMA-Factory's trainer
            pairs += "; the chosen and rejected logits' copies held after the loss"
        elif run.loss != "logprob-tiles":
            pairs += "; the metrics' logit copies after the loss"
    if run.loss == "logprob-tiles":
        pairs += "; log-probabilities through TRL >= 1.16's fused LM head, no logits"
    if run.eval_batch_size:
        pairs += (
            " (evaluation: estimated as one forward of the eval batch; its pairs and "
            "reference are not counted)"
        )
    if not run.needs_reference:
        why = "precomputed" if run.precompute_ref else "none needed"
        return f"{pairs}; reference: {why}."
    copy = reference_weights(plan, run)
    if copy:
        return (
            f"{pairs}; reference: a frozen copy ({copy:,} bytes, included in Weights), "
            f"{its} under no_grad after the policy's."
        )
    return f"{pairs}; reference: the adapter disabled, {forward} under no_grad after the policy's."


def _with_reference(parts: StepParts, arch: Architecture, pairs: RunConfig) -> StepParts:
    """A preference step over the pair run (2b sequences; kto's b completions): the
    loss's head moments (kto's metrics after the loss) and, for the objectives with a
    reference, its weights and its forwards under no_grad after the policy's
    (_compute_loss), beside every activation and the policy's held logits."""
    plan, sizes = parts.plan, parts.sizes
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    T = pairs.batch_size * pairs.positions
    weights = sizes.weights + reference_weights(plan, pairs)
    if pairs.loss == "logprob-tiles":  # TRL >= 1.16: every pass through its fused LM head
        blocks = frozen_forward_transient(arch, pairs, e, plan.dtypes.residual_bytes, T)
        forward = FusedHead.preference_forward(
            arch, pairs, plan, e, sizes.head.logits_forward, blocks
        )
        head = dataclasses.replace(sizes.head, logits_forward=forward)
        sizes = dataclasses.replace(sizes, weights=weights, head=head)
        return dataclasses.replace(parts, sizes=sizes)
    logits = PreferenceLoss.logits_moment(arch, pairs, e, T)
    # one forward under no_grad (the reference's; kto's KL sequences')
    no_grad_forward = max(
        frozen_forward_transient(arch, pairs, e, plan.dtypes.residual_bytes, T),
        PreferenceLoss.reference_logits_moment(arch, pairs, e, T),
    )
    if pairs.needs_reference:
        held = PreferenceLoss.held_at_reference(arch, pairs, e, T)
        logits = max(logits, held + no_grad_forward)
    # kto: TRL's reference runs its two forwards (the KL sequences', then the
    # completions') one after the other, the first's logits freed: the moment above
    # covers both; then the metrics (LLaMA-Factory: its own order)
    logits = max(logits, PreferenceLoss.unpaired_moment(arch, pairs, e, T, no_grad_forward))
    head = dataclasses.replace(
        sizes.head, logits_forward=logits, loss_backward=PreferenceLoss.backward(arch, pairs, e, T)
    )
    return dataclasses.replace(parts, sizes=dataclasses.replace(sizes, weights=weights, head=head))


def _with_teacher(
    parts: StepParts, teacher: Teacher, arch: Architecture, run: RunConfig
) -> StepParts:
    """The distillation step (ftmem.distill): the teacher's weights and forward, both
    fp32 distributions kept for the loss, and their backward."""
    from ftmem.distill import distill_sizes

    kd = distill_sizes(teacher, arch, run)
    sizes = parts.sizes
    item = Saved("distillation: student and teacher fp32 distributions", kd.kept)
    return dataclasses.replace(
        parts,
        activations=parts.activations + kd.kept,
        outer_items=(*parts.outer_items, item),
        sizes=dataclasses.replace(
            sizes,
            weights=sizes.weights + kd.weights,
            activations=dataclasses.replace(
                sizes.activations, above=sizes.activations.above + kd.kept
            ),
            head=dataclasses.replace(
                sizes.head,
                logits_forward=sizes.head.logits_forward + kd.loss_forward,
                loss_backward=sizes.head.loss_backward + kd.loss_backward,
            ),
            # (the frozen vision tower's forward comes after the teacher's, alone)
            teacher_forward=max(kd.teacher_forward, sizes.teacher_forward),
        ),
    )


def _distinct(states: list[BlockState]) -> list[BlockState]:
    """The distinct block states, in order."""
    return list(dict.fromkeys(states))


def _per_block(states: list[BlockState], saved: dict[BlockState, list[Saved]]) -> list[int]:
    """Each block's saved bytes, summed once per distinct state."""
    sums = {st: _sum(items) for st, items in saved.items()}
    out, previous, value = [], None, 0
    for st in states:
        if st is not previous:
            previous, value = st, sums[st]
        out.append(value)
    return out


def _gradient_sizes(plan: MethodPlan) -> tuple[int, int, int, int]:
    """(all gradients, one trainable block's, outside the blocks, the token embedding's)."""
    grad_groups = [g for g in plan.groups if g.trainable]
    grads = sum(g.count * g.grad_bytes for g in grad_groups)
    block = 0
    if plan.trainable_blocks:
        block = (
            sum(
                g.count * g.grad_bytes
                for g in grad_groups
                if g.in_block and not plan.gradient_at_head(g)
            )
            // plan.trainable_blocks
        )
    embedding = sum(g.count * g.grad_bytes for g in grad_groups if plan.gradient_after_blocks(g))
    return grads, block, grads - block * plan.trainable_blocks, embedding


def _seq2seq_parts(arch: Architecture, run: RunConfig) -> StepParts:
    """An encoder-decoder's step (ftmem.seq2seq): 2L timeline entries, the encoder's
    blocks below the decoder's; the head side over the decoder's positions."""
    plan = plan_method(arch, run)
    stacks = _stack_activations(arch, run, plan)
    per_block = stacks.per_block
    # checkpointed: each block rebuilds at most the largest block's saved tensors, and
    # keeps its input (what the blocks share: outer_saved)
    policy = Checkpointed((max(per_block),) * len(per_block)) if run.grad_ckpt else PLAIN
    L, hr = arch.num_layers, arch.hidden_size * plan.dtypes.residual_bytes
    b = run.batch_size
    inputs = (b * run.seq_len * hr,) * L + (b * run.decoder_len * hr,) * L
    per_block_kept = policy.kept(per_block, inputs)
    below, above = stacks.below, stacks.above
    return StepParts(
        plan=plan,
        sizes=_seq2seq_sizes(arch, run, plan, stacks, per_block_kept, policy),
        activations=sum(per_block_kept) + _sum(below) + _sum(above),
        per_block_full=per_block,
        typical_block=stacks.last,
        outer_items=tuple(below + above),
    )


@dataclass(frozen=True, slots=True)
class _StackActivations:
    """What an encoder-decoder keeps: each block's saved bytes (encoder's, then
    decoder's), the items outside the blocks, the top decoder block's items, and the
    largest attention backward of the top blocks."""

    per_block: tuple[int, ...]
    below: list[Saved]
    above: list[Saved]
    last: tuple[Saved, ...]
    attention: int


def _stack_activations(arch: Architecture, run: RunConfig, plan: MethodPlan) -> _StackActivations:
    """Both stacks' saved tensors, derived once per distinct block state."""
    enc = seq2seq.stack(arch, run, plan, decoder=False)
    dec = seq2seq.stack(arch, run, plan, decoder=True)
    states = _block_states(arch, run, plan)
    inputs_grad = states[0].input_requires_grad
    states, dec_states, enc_grad = seq2seq.stack_states(states)
    # the relative position bias tables train (full finetuning; freeze of every block,
    # as they live in the first block)
    bias_grad = any(
        g.trainable and g.name.endswith("relative_attention_bias.weight") for g in plan.groups
    )
    enc_parts = {st: seq2seq.encoder_block_parts(enc, st, bias_grad) for st in _distinct(states)}
    dec_parts: dict[BlockState, list[list[Saved]]] = {}
    shared_kv: list[Saved] = []
    for st in _distinct(dec_states):
        dec_parts[st], shared = seq2seq.decoder_block_parts(dec, enc, st, bias_grad, enc_grad)
        shared_kv = shared_kv or shared
    enc_cache = {st: [x for part in parts for x in part] for st, parts in enc_parts.items()}
    dec_cache = {st: [x for part in parts for x in part] for st, parts in dec_parts.items()}
    attention = max(
        seq2seq.attention_moment(arch, run, plan, enc_parts[states[-1]], False, bias_grad),
        seq2seq.attention_moment(arch, run, plan, dec_parts[dec_states[-1]], True, bias_grad),
    )
    per_block = _per_block(states, enc_cache) + _per_block(dec_states, dec_cache)
    below, above = seq2seq.outer_saved(arch, run, plan, inputs_grad, enc_grad, bias_grad, shared_kv)
    last = tuple(dec_cache[dec_states[-1]])
    return _StackActivations(tuple(per_block), below, above, last, attention)


def _seq2seq_sizes(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    stacks: _StackActivations,
    per_block_kept: tuple[int, ...],
    policy: BlockPolicy,
) -> StepSizes:
    """An encoder-decoder step's sizes in time."""
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    h, V = arch.hidden_size, arch.vocab_size
    enc_T, dec_T = run.batch_size * run.seq_len, run.batch_size * run.decoder_len
    fixed = plan_sizes(arch, run, plan)
    L, trained = arch.num_layers, plan.trainable_blocks
    autocast = plan.dtypes.autocast
    logit_bytes = dec_T * V
    # the logits, and under autocast their fp32 copy for the loss; the loss's backward
    # holds the log-softmax's gradient and the logits' (fp32 under autocast)
    loss_e = FP32 if autocast else e
    return StepSizes(
        weights=fixed.weights,
        states=fixed.states,
        gradients=Gradients(
            total=fixed.grads,
            outer=fixed.grads_outer,
            # the average entry (by_block is exact)
            per_block=fixed.grads_per_block // 2,
            trainable_blocks=2 * trained,
            persist=run.grad_accum > 1,
            through_forward=profile_of(run).zero_grad_after_forward,
            embedding=fixed.grads_embedding,
            tied_backward=fixed.tied_embedding_backward,
            by_block=_stack_gradients(plan, L),
            embedding_at=L,
        ),
        activations=Activations(per_block_kept, below=_sum(stacks.below), above=_sum(stacks.above)),
        block=BlockTransients(
            forward=DoRA.forward_rebuild(plan, run),
            workspace=max(
                seq2seq.block_workspace(arch, run, plan, enc_T),
                seq2seq.block_workspace(arch, run, plan, dec_T),
                stacks.attention,
            ),
            policy=policy,
        ),
        head=HeadTransients(
            logits_forward=logit_bytes * e + (logit_bytes * FP32 if autocast else 0),
            loss_backward=2 * logit_bytes * loss_e,
            workspace=Norm.backward_workspace(arch, e, dec_T) + dec_T * h * FP32,
        ),
        # (T5 refuses ReLoRA and the step in backward: only the temporaries)
        optimizer=fixed.optimizer,
    )


def _stack_gradients(plan: MethodPlan, L: int) -> tuple[int, ...]:
    """Each timeline entry's own gradients: each stack's blocks, bottom to top."""
    trained = plan.trainable_blocks
    by_block: list[int] = []
    for stack_name in ("encoder.", "decoder."):
        stack_bytes = sum(
            g.count * g.grad_bytes
            for g in plan.groups
            if g.trainable and g.in_block and g.name.startswith(stack_name)
        )
        one = stack_bytes // trained if trained else 0
        by_block += [0] * (L - trained) + [one] * trained
    return tuple(by_block)
