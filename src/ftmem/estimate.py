"""Compose the components into one training step's peak, phase by phase.

A step is forward (activations pile up, the loss materialises the logits),
backward (activations are freed block by block while gradients appear) and the
optimizer step (weights + gradients + states + the step's temporaries). With
``zero_grad(set_to_none=True)`` gradients do not exist during forward, so the
peak is the largest of these moments, not the sum of the buckets; the sum is
kept as ``accounting="simple"`` (the seed's rule). Many GPUs: parallel.py gives
each rank's sizes and the rank with the most memory is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING

from ftmem import deepspeed_zero2, deepspeed_zero3
from ftmem.arch import Architecture, Linear, count_params, kv_sharing_refusal
from ftmem.colossalai import COLOSSALAI
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.errors import InvalidInputError
from ftmem.gpu.device import DeviceFigures, cuda_runtime, device_figures, workspace_bytes
from ftmem.gpu.managed import PAGED_PARALLEL_NOTE, paged_notes, with_paged_states
from ftmem.gpu.program import never_freed
from ftmem.gpu.trace import (
    STEP_ONLY,
    RunOutside,
    StepTensors,
    coarse_tensors,
    leaf_grad_shards,
    leaf_unit_tensors,
    leaf_units,
    outer_sides,
    plan_tensors,
)
from ftmem.grpo import check_groups, vllm_reserved_bytes
from ftmem.hardware import Gpu
from ftmem.methods import MethodPlan, plan_method
from ftmem.ops import short_conv
from ftmem.ops.attention import (
    alibi_notes,
    attention_path,
    image_mask_notes,
    padding_notes,
    sliding_mask_notes,
)
from ftmem.ops.gated_deltanet import refuse_training
from ftmem.ops.nograd_requests import checkpointed_layer
from ftmem.optim import (
    PAGED_OPTIMIZERS,
    optimizer_step_temporary_tensors,
    paged_state_bytes,
    state_bytes_per_tensor,
)
from ftmem.parallel import (
    FSDP,
    SHARDED_FSDP,
    SHARDS_WEIGHTS,
    ParallelConfig,
    ParallelStep,
    paging_unmodelled,
    parallel_notes,
    parallel_step,
    wraps_each_trainable_leaf,
)
from ftmem.phases import StepSizes, find_peak
from ftmem.profiles import framework_arch, framework_run, profile_notes, profile_of
from ftmem.release_buffers import rotary_table_bytes
from ftmem.result import (
    AtPeak,
    Estimate,
    Memory,
    ModelInfo,
    ParallelInfo,
    PhasePeaks,
    ResolvedRun,
    RunMoment,
    RunPeak,
)
from ftmem.run import ADAPTER_METHODS, PROMPT_METHODS, RunConfig
from ftmem.run_phases import replayed_loading, resolved_peak_of, run_moments
from ftmem.step import StepParts, objective_note, step_parts
from ftmem.torchao_optim import TORCHAO_OPTIMIZERS
from ftmem.torchtune_init import torchtune_init

if TYPE_CHECKING:  # distillation's module loads only for a teacher (CLI start-up)
    from ftmem.distill import Teacher

SIMPLE_STATES_PER_PARAM = {  # 16-bit values per trainable parameter, seed's rule
    "adamw": 2,
    "adamw-fp32": 2,
    "adamw-32bit": 2,
    "adamw-8bit": 2,
    "paged-adamw-8bit": 2,
    "paged-adamw": 2,
    "lion-32bit": 1,
    "lion-8bit": 1,
    "paged-lion": 1,
    "paged-lion-8bit": 1,
    "ao-adamw-8bit": 2,
    "ao-adamw-4bit": 2,
    "ao-adamw-fp8": 2,
    "sgd": 0,
    "sgd-momentum": 1,
    "adafactor": 1,
    "lion": 1,
}


_SCREENING: ContextVar[bool] = ContextVar("ftmem_screening", default=False)
SCREENED_NOTE = (
    "Does not fit even before the allocator's cache: the cache was not replayed, so the "
    "reserved and device figures are lower bounds."
)


@contextmanager
def screening() -> Iterator[None]:
    """Estimates made inside answer ``fits`` exactly but skip the allocator replay of a
    run that cannot fit anyway (gpu.device.device_figures' ``fits_within``), for
    searches that show only the runs that fit: such an estimate says so in a note."""
    token = _SCREENING.set(True)
    try:
        yield
    finally:
        _SCREENING.reset(token)


def estimate_step(
    arch: Architecture,
    run: RunConfig,
    gpu: Gpu | None = None,
    overhead_bytes: int | None = None,
    par: ParallelConfig | None = None,
    teacher: Teacher | None = None,
) -> Estimate:
    """Predict the memory of one steady-state training step (per GPU when spread); with a
    ``teacher``, of a distillation step."""
    arch = framework_arch(arch, run)  # e.g. LitGPT's own, never tied, LM head
    run = framework_run(arch, run)  # e.g. Unsloth's fused loss and allocator options
    if run.objective == "grpo":
        check_groups(run, 1 if par is None else par.dp)
    if par is not None and not par.is_trivial:
        _one_gpu_only(run, teacher, par)
        return _estimate_parallel(arch, run, par, gpu, overhead_bytes)
    parts = step_parts(arch, run, teacher)
    plan = parts.plan
    notes = _step_notes(parts, run, teacher)
    weights, activations = parts.sizes.weights, parts.activations
    peak_info = find_peak(parts.sizes)
    if run.accounting == "simple":
        n_train = plan.n_trainable
        grads_s = 2 * n_train
        states_s = 2 * SIMPLE_STATES_PER_PARAM[run.optimizer] * n_train
        at_peak = AtPeak(
            weights=weights,
            gradients=grads_s,
            optimizer_states=states_s,
            activations=activations,
            temporaries=0,
        )
        phase, grads, states = "sum (simple)", grads_s, states_s
        notes.append(
            "Simple accounting: weights + activations + gradients + optimizer states, "
            "each gradient and state 16-bit; an upper bound, not a phase of the step."
        )
    else:
        phase, at_peak = peak_info.phase, peak_info.at_peak
        grads, states = parts.sizes.gradients.total, parts.sizes.states
    # bitsandbytes' paged buffers: in the component, outside the allocator's peaks
    paged = 0 if run.accounting == "simple" else paged_state_bytes(plan.groups, run)

    def step_at(length: int) -> tuple[StepParts, StepSizes]:
        if length == run.seq_len:
            return parts, parts.sizes
        shorter = step_parts(arch, _at_length(run, length), teacher)
        return shorter, shorter.sizes

    at_peak, figures, run_peak = _device(
        at_peak, parts, parts.sizes, run, gpu, overhead_bytes, step_at, arch=arch, model=arch
    )
    memory = _with_vllm_engine(
        run,
        gpu,
        overhead_bytes,
        _memory(
            Components(weights, grads, states + paged, activations, 0),
            phase,
            at_peak,
            peak_info.phases,
            parts,
            figures,
            run_peak,
        ),
    )
    memory = with_paged_states(memory, paged, gpu)
    notes += paged_notes(memory, paged, gpu)
    notes += _family_notes(arch, run) + ([] if figures.replayed else [SCREENED_NOTE])
    return _result(arch, run, plan, plan.n_requires_grad, memory, gpu, notes)


def _with_vllm_engine(
    run: RunConfig, gpu: Gpu | None, overhead: int | None, memory: Memory
) -> Memory:
    """A colocated vLLM engine (GRPO --vllm colocate) takes its share of the GPU's memory
    beyond the training step's allocated peak, for the whole run: added to the device
    total on a CUDA GPU of known size, unless the user's --overhead replaces it."""
    if gpu is None or run.device != "cuda" or overhead is not None:
        return memory
    vllm = vllm_reserved_bytes(run, gpu.memory_bytes)
    if not vllm:
        return memory
    return memory.with_outside(vllm_engine=vllm)


def _step_notes(parts: StepParts, run: RunConfig, teacher: Teacher | None) -> list[str]:
    """What the estimate says of the step beyond its method's notes: offloaded tensors,
    the teacher, the objective, the optimizer in backward."""
    notes = list(parts.plan.notes)
    if parts.offloaded and run.activation_offload:
        notes.append(
            f"activation offload: {parts.offloaded:,} bytes of saved activations live in "
            "host RAM (pinned); backward brings one op's back at a time."
        )
    elif parts.offloaded:
        notes.append(
            f"checkpointed block inputs: {parts.offloaded:,} bytes live in host RAM "
            "(pinned); each comes back for its block's recompute."
        )
    if teacher is not None:
        notes.append(
            f"Distillation from {teacher.arch.name} ({teacher.weights} weights, included in "
            "Weights): its forward runs first under no_grad without a KV cache; the KL "
            "term's two fp32 distributions are kept until the loss backward."
        )
    if run.objective != "sft":
        notes.append(objective_note(parts.plan, run))
    if run.optimizer_in_backward:
        notes.append(
            "optimizer in backward: each gradient is freed by its parameter's step as soon "
            "as it is complete, so no gradient is held at the peak"
            + (
                " but a tied embedding's LM-head part, summed by autograd until the "
                "embedding's backward."
                if parts.sizes.gradients.tied_held
                else "."
            )
        )
    if run.lora_fa:
        notes.append(
            "LoRA-FA: AdamW states for lora_B only; "
            + (
                "lora_A gets its gradient back (PEFT's benchmark loop runs disable_adapter() "
                "after create_lorafa_optimizer froze it), so it keeps its input as LoRA does."
                if profile_of(run).lora_fa_a_regains_grad
                else "lora_A frozen: no gradient, and its input is not kept."
            )
        )
    if run.optimizer in TORCHAO_OPTIMIZERS:
        notes.append(
            f"{run.optimizer}: torchao compiles the step one parameter at a time; its "
            "temporaries are those of the largest quantised tensor, as inductor's CPU code "
            "holds them (the GPU's Triton code is not measured yet). Under DeepSpeed ZeRO "
            "it steps flat fp32 partitions instead of tensors: not modelled."
        )
    return notes


def _one_gpu_only(run: RunConfig, teacher: Teacher | None, par: ParallelConfig) -> None:
    """Refuse what ftmem models on one GPU only (distillation), and preference objectives
    and GRPO beyond data parallelism, which TRL's trainers do not run."""
    if teacher is not None:
        raise InvalidInputError(
            "Distillation (--teacher) is modelled on one GPU; several GPUs are not yet."
        )
    if run.objective == "grpo" and par.resolved_strategy in COLOSSALAI:
        raise InvalidInputError(
            "--objective grpo follows TRL's GRPOTrainer, which runs under DDP, DeepSpeed "
            "ZeRO or FSDP; ColossalAI's own GRPO is not modelled."
        )
    if run.objective != "sft" and par.model_parallel > 1:
        raise InvalidInputError(
            f"--objective {run.objective} runs data parallel (DDP, ZeRO, FSDP, ColossalAI's "
            "ZeRO), as TRL's trainers run it; drop --tp, --pp and --cp."
        )
    if run.lora_fa and par.resolved_strategy != "ddp":
        # LoraFAOptimizer pairs each lora_A with its lora_B by parameter name (peft 0.21.2
        # optimizers/lorafa.py step): whole named tensors, which only DDP leaves it
        raise InvalidInputError(
            "--lora-fa steps whole lora_A/lora_B pairs by name, which only DDP leaves "
            f"intact; use --strategy ddp, not {par.resolved_strategy}."
        )


@dataclass(frozen=True, slots=True)
class Components:
    """Full sizes of the components on one GPU (the at-peak split comes from the timeline)."""

    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    communication: int


def _device(
    at_peak: AtPeak,
    parts: StepParts,
    sizes: StepSizes,
    run: RunConfig,
    gpu: Gpu | None,
    overhead: int | None,
    step_at: Callable[[int], tuple[StepParts, StepSizes]],
    par: ParallelConfig | None = None,
    arch: Architecture | None = None,
    wrap: RunOutside = STEP_ONLY,
    model: Architecture | None = None,
) -> tuple[AtPeak, DeviceFigures, RunPeak | None]:
    """The peak with the BLAS workspaces a CUDA run adds, and its reserved and device
    figures (``sizes``: the rank's step; ``step_at``: the step at another batch length,
    for a variable-length run's replay); with ``arch`` (one GPU), over the window the
    run's figure covers (run_phases); ``wrap``: a sharded rank's wrapping before the
    window (_fsdp_wrap); ``model``: the architecture whose checkpointed layers the
    replay may lay out op by op (_with_layer_forward)."""
    rt, run_peak, outside = None, None, wrap
    steps: list[tuple[StepSizes, StepTensors]] = []
    leaf = _leaf_shards(run, par)
    tensors = _with_layer_forward(_tensors(parts, sizes, leaf, run), model, run, parts)
    if run.device == "cuda":
        rt = cuda_runtime(gpu, run.torch_version, *((par.gpus, par.nodes) if par else ()))
        at_peak = at_peak.model_copy(update={"workspaces": workspace_bytes(rt)})
        steps = _length_steps(run, step_at, leaf, model)
        if arch is not None:
            outside, run_peak = _run_window(arch, parts, run, tensors, at_peak)
    allocated = run_peak.allocated_bytes if run_peak else at_peak.total
    figures = device_figures(
        allocated,
        sizes,
        tensors,
        rt,
        overhead=overhead,
        # FSDP all-gathers and reduce-scatters on streams of their own, whose cached
        # blocks the default stream cannot reuse (pytorch/pytorch PR #117323, awgu: "FSDP
        # allocates all-gather and reduce-scatter buffers in separate CUDA streams, and
        # memory blocks in the allocator are tied to a stream")
        comm_stream=par is not None and par.resolved_strategy.startswith("fsdp"),
        # a sharded strategy's reduce-scatter makes each gradient shard on the
        # post-backward stream (FSDP1 _runtime_utils._post_backward_hook /
        # _get_reduce_scatter_tensors; FSDP2 foreach_reduce's reduce_output), where the
        # optimizer finds it: a pool of its own; NO_SHARD all-reduces in place
        grad_stream=par is not None and par.resolved_strategy in SHARDED_FSDP,
        outside=outside,
        steps=steps,
        allocator=run.allocator,
        fits_within=gpu.memory_bytes if gpu is not None and _SCREENING.get() else None,
        memory=gpu.memory_bytes if gpu is not None else None,
        # the seed's simple accounting is its own sum of buckets, not the replayed step
        whole_blocks=run.accounting != "simple",
    )
    return _rounded(at_peak, figures, run_peak)


def _rounded(
    at_peak: AtPeak, figures: DeviceFigures, run_peak: RunPeak | None
) -> tuple[AtPeak, DeviceFigures, RunPeak | None]:
    """The peak counted in the allocator's whole blocks: the replay's block rounding
    (DeviceFigures.block_rounding, 0 on the CPU) added where the run's allocated peak
    is: a part of the step's peak, or, when the peak is a moment outside the step
    (--peak-of run), that moment's (the rounding is replayed at the peak only)."""
    rounding = figures.block_rounding
    if not rounding:
        return at_peak, figures, run_peak
    if run_peak is None or run_peak.moment == "step":
        at_peak = at_peak.model_copy(update={"block_rounding": rounding})
    if run_peak is None:
        return at_peak, figures, run_peak
    in_step = run_peak.moment == "step"
    moments = [
        m.model_copy(update={"allocated_bytes": m.allocated_bytes + rounding})
        if m.name == run_peak.moment
        else m
        for m in run_peak.moments
    ]
    run_peak = run_peak.model_copy(
        update={
            "allocated_bytes": run_peak.allocated_bytes + rounding,
            "step_allocated_bytes": run_peak.step_allocated_bytes + (rounding if in_step else 0),
            "moments": moments,
            "block_rounding": rounding,
        }
    )
    return at_peak, figures, run_peak


def _run_window(
    arch: Architecture, parts: StepParts, run: RunConfig, tensors: StepTensors, at_peak: AtPeak
) -> tuple[RunOutside, RunPeak]:
    """The moments outside the step, for the allocator replay and the run's peak; with
    --peak-of step they are listed but the window starts after loading."""
    profile = profile_of(run)
    peak_of = resolved_peak_of(run, profile)
    # torchtune 0.1 builds one layer and deep-copies it: its own init and load
    init = torchtune_init(arch, parts.plan, run, profile)
    moments = run_moments(
        arch,
        parts.plan,
        run,
        profile,
        weights=tensors.weights,
        states=parts.sizes.states,
        workspaces=at_peak.workspaces,
        init=init,
    )
    in_run = peak_of == "run"
    outside = RunOutside(
        loading=replayed_loading(parts.plan, run, profile, len(tensors.weights)),
        after=tuple(m.tensors for m in moments if m.when == "after") if in_run else (),
        reset=not in_run,
        requantise=profile.requantises_on_load,
        wrap=init,
    )
    name, allocated = "step", at_peak.total
    for m in moments:
        if in_run and m.peak > allocated:
            name, allocated = m.name, m.peak
    record = RunPeak(
        peak_of=peak_of,
        moment=name,
        allocated_bytes=allocated,
        step_allocated_bytes=at_peak.total,
        moments=[RunMoment(name=m.name, allocated_bytes=m.peak, source=m.source) for m in moments],
    )
    return outside, record


def _at_length(run: RunConfig, length: int) -> RunConfig:
    """The run with every batch ``length`` tokens long (validated as the run was)."""
    return run.model_copy(update={"seq_len": length, "lengths": None})


def _length_steps(
    run: RunConfig,
    step_at: Callable[[int], tuple[StepParts, StepSizes]],
    leaf_shards: int = 0,
    model: Architecture | None = None,
) -> list[tuple[StepSizes, StepTensors]]:
    """A variable-length run's steps in replay order, each with its length's sizes
    (lengths.replayed_steps); [] for fixed lengths."""
    lengths = run.replayed_lengths
    at: dict[int, tuple[StepSizes, StepTensors]] = {}
    for length in lengths:
        parts, sizes = step_at(length)
        tensors = _tensors(parts, sizes, leaf_shards, run)
        tensors = _with_layer_forward(tensors, model, _at_length(run, length), parts)
        at[length] = (sizes, tensors)
    return [at[length] for length in run.replayed_steps]


def _tensors(
    parts: StepParts, sizes: StepSizes, leaf_shards: int = 0, run: RunConfig | None = None
) -> StepTensors:
    """The step's tensors one by one (a sharded rank's as flat buffers; ``leaf_shards``:
    the shard count where each trainable tensor is an FSDP unit of its own, whose
    gradient shards are then one tensor each; ``run``: its optimizer's states and
    temporaries per tensor, else in proportion to the tensors' element counts)."""
    # the graph's leaves first: the hooked embeddings' outputs, made before what the
    # embedding side saves (the two sums the timeline adds in its ``below``)
    items = [*parts.graph_leaves, *(n for s in parts.outer_items for n in s.requests())]
    below, above = outer_sides(items, sizes.activations.below, sizes.activations.above)
    block = [n for s in parts.typical_block for n in s.requests()]
    if sizes is parts.sizes:
        if run is None:
            return plan_tensors(parts.plan, sizes, block, below, above)
        groups = parts.plan.groups
        return plan_tensors(
            parts.plan,
            sizes,
            block,
            below,
            above,
            state_shares=state_bytes_per_tensor(groups, run),
            temporaries=optimizer_step_temporary_tensors(groups, run),
        )
    coarse = coarse_tensors(sizes, block, below, above)
    if not leaf_shards:
        return coarse
    coarse = leaf_unit_tensors(coarse, sizes, leaf_units(parts.plan, leaf_shards))
    if not coarse.block_grads:
        return coarse
    per_block = sizes.gradients.per_block
    return replace(coarse, block_grads=leaf_grad_shards(parts.plan, per_block, leaf_shards))


def _with_layer_forward(
    tensors: StepTensors, model: Architecture | None, run: RunConfig, parts: StepParts
) -> StepTensors:
    """The step's tensors with a checkpointed layer's no-grad forward op by op, where
    ops.nograd_requests derives the run's layer (``model``: its architecture)."""
    layer = None if model is None else checkpointed_layer(model, run, parts.plan)
    if layer is None:
        return tensors
    requests, output = layer
    # what else the layer never frees is in autocast's cache (LayerShape.weight_casts)
    cached = tuple(k for k in never_freed(requests) if k != output)
    return replace(tensors, block_forward=requests, block_output=output, block_cached=cached)


def _leaf_shards(run: RunConfig, par: ParallelConfig | None) -> int:
    """The shard count where the framework makes each trainable leaf an FSDP unit of
    its own (parallel.wraps_each_trainable_leaf): the shard group under a sharded
    strategy, 1 under NO_SHARD (each unit's flat parameter, gradient and optimizer
    states whole), else 0."""
    if par is None or par.resolved_strategy not in FSDP:
        return 0
    if not wraps_each_trainable_leaf(run, par):
        return 0
    return par.shard_group if par.resolved_strategy in SHARDED_FSDP else 1


def _graph_held_apart(at_peak: AtPeak, c: Components, graph_held: int, tied: int) -> AtPeak:
    """The peak's parts with what autograd holds that is neither saved for backward nor a
    gradient the step keeps counted as temporaries: the graph's leaves and the
    checkpoints' layer masks (StepParts.graph_leaves), and under optimizer-in-backward a
    tied weight's LM-head gradient waiting in autograd's input buffer (gradients' size
    0: each is stepped as it completes). Each part at the peak then holds no more than
    its size; the total is unchanged."""
    acts = min(graph_held, at_peak.activations - c.activations)
    grads = min(tied, at_peak.gradients - c.gradients)
    acts, grads = max(acts, 0), max(grads, 0)
    if not acts and not grads:
        return at_peak
    return at_peak.model_copy(
        update={
            "activations": at_peak.activations - acts,
            "gradients": at_peak.gradients - grads,
            "temporaries": at_peak.temporaries + acts + grads,
        }
    )


def _memory(
    c: Components,
    phase: str,
    at_peak: AtPeak,
    phases: PhasePeaks,
    parts: StepParts,
    figures: DeviceFigures,
    run_peak: RunPeak | None = None,
) -> Memory:
    at_peak = _graph_held_apart(
        at_peak, c, sum(parts.graph_leaves), parts.sizes.gradients.tied_held
    )
    peak = run_peak.allocated_bytes if run_peak else at_peak.total
    # the workspaces are kept for the run's life: in every phase of a steady step; the
    # block rounding is replayed at the peak only and shown in every phase alike (most
    # of it belongs to the tensors held through the step)
    ws = at_peak.workspaces + at_peak.block_rounding
    if ws:
        phases = PhasePeaks(
            forward=phases.forward + ws,
            backward=phases.backward + ws,
            optimizer=phases.optimizer + ws,
        )
    return Memory.model_validate(
        dict(
            weights_bytes=c.weights,
            gradients_bytes=c.gradients,
            optimizer_states_bytes=c.optimizer_states,
            activations_bytes=c.activations,
            temporaries_bytes=at_peak.temporaries,
            communication_bytes=c.communication,
            peak_allocated_bytes=peak,
            overhead_bytes=figures.device - peak,
            total_bytes=figures.device,
            peak_reserved_bytes=figures.reserved,
            device_bytes=figures.device,
            beyond_allocated={
                "allocator_cache": figures.allocator_cache,
                "cuda_context": figures.cuda_context,
                "nccl": figures.nccl,
            },
            peak_phase=phase,
            at_peak=at_peak,
            phases=phases,
            # validated in one go, the saved items as mappings (twenty separate
            # SavedItem(...) calls were a tenth of an estimate's time)
            activations_per_block=[
                {"what": s.what, "bytes": s.nbytes} for s in parts.typical_block if s.nbytes
            ],
            activations_outer=[{"what": s.what, "bytes": s.nbytes} for s in parts.outer_items],
            run_peak=run_peak,
        )
    )


def _result(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    n_trainable: int,
    memory: Memory,
    gpu: Gpu | None,
    notes: list[str],
    parallel: ParallelInfo | None = None,
) -> Estimate:
    fits = None if gpu is None else memory.total_bytes <= gpu.memory_bytes
    headroom = None if gpu is None else gpu.memory_bytes - memory.total_bytes
    server = None
    if run.objective == "grpo" and run.vllm == "server":  # (ftmem.serve: only then)
        from ftmem.vllm_server import server_info, server_notes

        server = server_info(arch, run, gpu, parallel.world_size if parallel else 1)
        if server is not None:
            notes = notes + server_notes(arch, server, gpu)
    return Estimate(
        model=ModelInfo(
            name=arch.name,
            family=arch.family,
            n_params=count_params(arch),
            n_trainable_params=n_trainable,
        ),
        run=_resolved_run(run, plan, arch),
        memory=memory,
        gpu=None
        if gpu is None
        else {"name": gpu.name, "id": gpu.id, "memory_bytes": gpu.memory_bytes},
        fits=fits,
        headroom_bytes=headroom,
        parallel=parallel,
        vllm_server=server,
        notes=notes,
    )


def _family_notes(arch: Architecture, run: RunConfig) -> list[str]:
    notes = profile_notes(run)
    if run.attn == "flash":
        notes.append(
            "flash-attn is not measured here (no CPU kernel): assumed to keep what sdpa's "
            "flash kernel keeps (output + logsumexp)."
        )
    notes += padding_notes(arch, run)
    notes += image_mask_notes(arch, run)
    notes += sliding_mask_notes(arch, run)
    notes += alibi_notes(arch, run)
    if arch.is_moe:
        notes.append(
            "MoE: activations count the routed tokens (batch tokens × experts per token); "
            "the grouped matmuls process them together, so routing imbalance does not change "
            "them here, but expert-parallel setups would see it."
        )
    family = arch.traits
    # an eager-only family's note says what the estimate assumed unless eager was asked;
    # Falcon's fp32 attention differs from what eager means for the others
    path = attention_path(arch, run)
    if path == "eager-fp32" or (path == "eager" and run.attn != "eager"):
        notes += family.notes_for("attention")
    if run.method == "qlora" and run.quant_format != "int4":
        notes += family.notes_for("qlora")
    notes += family.notes_for("model")  # what the family's own code does to every run
    if run.device == "cuda" and run.replayed_lengths:
        lengths = ", ".join(map(str, run.replayed_lengths))
        notes.append(
            f"Variable lengths ({run.lengths}): the reserved peak replays batches of {lengths} "
            "tokens (ftmem.lengths: the lengths at which a shuffled run meets a batch longer "
            "than any before, then mixed); the allocated peak is the "
            f"longest's ({run.seq_len})."
        )
    return notes


def _check_parallel_arch(arch: Architecture, par: ParallelConfig) -> None:
    """What the parallel layouts were not measured with: global layers of their own
    attention shape under tensor or context parallelism, per-layer inputs at all."""
    if arch.attention_per_layer_type and (par.tp > 1 or par.cp > 1):
        raise InvalidInputError(
            f"{arch.name}: tensor or context parallelism with full-attention layers of their "
            "own attention shape (full_head_dim, full_kv_heads, full_values_are_keys) is not "
            "modelled."
        )
    if arch.kv_shared_layers:
        raise InvalidInputError(kv_sharing_refusal(arch, "more than one GPU"))
    if arch.per_layer_input_size:
        raise InvalidInputError(
            f"{arch.name}: more than one GPU with per-layer inputs (per_layer_input_size) "
            "is not modelled."
        )


def _estimate_parallel(
    arch: Architecture,
    run: RunConfig,
    par: ParallelConfig,
    gpu: Gpu | None,
    overhead_bytes: int | None,
) -> Estimate:
    """The estimate of the rank with the most memory, and the layout of the job."""
    refuse_training(arch, run, alone=False)  # (Qwen3.5's layers: one GPU measured)
    short_conv.refuse(arch, "a training step")  # (LFM2: only its parameters)
    _check_parallel_run(run)
    _check_parallel_arch(arch, par)
    cap = gpu.memory_bytes if gpu is not None else None
    step = parallel_step(arch, run, par, cap)
    sz = step.ranks[step.worst].sizes
    peak_info = step.peak
    activations = sz.activations.total
    comm = sz.comm.largest()

    def step_at(length: int) -> tuple[StepParts, StepSizes]:
        if length == run.seq_len:
            return step.parts, sz
        shorter = parallel_step(arch, _at_length(run, length), par, cap)
        return shorter.parts, shorter.ranks[step.worst].sizes

    wrap = _fsdp_wrap(arch, step.run, par, step.parts.plan, sz.weights)
    if wrap is STEP_ONLY:
        wrap = _zero3_init(arch, par, step.parts.plan, sz)
    if wrap is STEP_ONLY:
        wrap = _zero2_init(arch, par, step.parts.plan, sz)
    at_peak, figures, _ = _device(
        peak_info.at_peak,
        step.parts,
        sz,
        step.run,
        gpu,
        overhead_bytes,
        step_at,
        par,
        wrap=wrap,
        model=arch,
    )
    paged = step.ranks[step.worst].paged_bytes  # bitsandbytes' managed memory
    memory = _memory(
        Components(sz.weights, sz.gradients.total, sz.states + paged, activations, comm),
        peak_info.phase,
        at_peak,
        peak_info.phases,
        step.parts,
        figures,
    )
    memory = with_paged_states(memory, paged, gpu)
    # every stage holds its workspaces; the block rounding is the worst rank's, replayed
    info = _parallel_info(
        arch, par, step, memory.overhead_bytes, at_peak.workspaces + at_peak.block_rounding
    )
    full_trainable = plan_method(arch, run).n_requires_grad
    notes = list(step.parts.plan.notes) + parallel_notes(arch, run, par, step)
    if run.objective != "sft":  # what the objective adds, as on one GPU
        notes.append(objective_note(step.parts.plan, step.run))
    notes += paged_notes(memory, paged, gpu)
    # (offloaded states are on the host, where bitsandbytes pages nothing)
    paged_optimizer = run.optimizer in PAGED_OPTIMIZERS and run.device != "cpu" and sz.states
    if paged_optimizer and paging_unmodelled(par.resolved_strategy, par):
        notes.append(PAGED_PARALLEL_NOTE)
    if par.host_memory_bytes is not None and not info.host_fits:
        notes.insert(
            0,
            f"Host RAM is the bottleneck: offload needs {info.host_bytes_per_node / 2**30:.1f} "
            f"GiB per node, the node has {par.host_memory_bytes / 2**30:.1f} GiB.",
        )
    notes += _family_notes(arch, run) + ([] if figures.replayed else [SCREENED_NOTE])
    return _result(arch, step.run, step.parts.plan, full_trainable, memory, gpu, notes, info)


def _fsdp_wrap(
    arch: Architecture, run: RunConfig, par: ParallelConfig, plan: MethodPlan, weights: int
) -> RunOutside:
    """A framework that wraps a CPU-held model with FSDP (profiles.fsdp_wraps_from_cpu):
    the wrap's requests before the step, the peaks reset after it (rank 0; its auto-wrap
    policy as fsdp_init.wrap_units lays it out: LoRA and QLoRA only)."""
    s = par.resolved_strategy
    if not profile_of(run).fsdp_wraps_from_cpu or s not in FSDP or par.model_parallel > 1:
        return STEP_ONLY  # (train.py shards data-parallel only)
    if run.method not in ("lora", "qlora") or arch.encoder_decoder:
        return STEP_ONLY  # (its policy and loading are laid out for these)
    # imported here: few runs wrap from the CPU (and `ftmem estimate` starts faster)
    from ftmem.fsdp_init import wrap_program, wrap_units

    storage = plan.dtypes.base  # fsdp_qlora: Linear4bit(quant_storage=torch_dtype)
    # each layer's rotary cos and sin tables (an older transformers release's buffers),
    # moved and broadcast with its unit: fp32 ones (a quantised model built from its
    # config) in a bucket of their own
    tables = rotary_table_bytes(arch, run, plan.dtypes) // (2 * arch.num_layers)
    element = tables // max(arch.max_position_embeddings * arch.rotary_size, 1)
    units = wrap_units(
        plan,
        arch.num_layers,
        storage,
        layer_buffers=(tables, tables) if tables else (),
        buffers_apart=element != BYTES_PER_ELEMENT[storage],
    )
    if units is None:
        return STEP_ONLY
    program = wrap_program(
        units,
        par.shard_group,
        shards=s in SHARDS_WEIGHTS,
        offload=par.offload_params != "none",
        resident=weights,
    )
    return RunOutside(wrap=program, reset=True)


def _zero3_init(
    arch: Architecture, par: ParallelConfig, plan: MethodPlan, sz: StepSizes
) -> RunOutside:
    """DeepSpeed ZeRO-3 with a 16-bit model and nothing offloaded: its optimizer's init
    (deepspeed_zero3.init_program) makes the weights' flat buffer, the fp32 masters, the
    states and the gradients' buffer before the first step, and leaves its transients
    cached; ``see_memory_usage(..., force=True)`` at its end resets the peaks
    (microsoft/DeepSpeed@6ea44d02 (v0.12.3) runtime/zero/stage3.py l.394-395,
    runtime/utils.py l.813), which frees nothing."""
    if par.resolved_strategy != "zero3" or not sz.optimizer.tensors or par.model_parallel > 1:
        return STEP_ONLY
    N = par.shard_group
    order = deepspeed_zero3.parameter_order(plan.groups, arch)
    program = deepspeed_zero3.init_program(
        deepspeed_zero3.partition_sizes(order, N),
        weights=sz.weights,
        states=sz.states,
        grads=sz.gradients.total,
        model_bytes=BYTES_PER_ELEMENT[plan.dtypes.compute],
    )
    return RunOutside(wrap=program, reset=True, made=True)


def _zero2_init(
    arch: Architecture, par: ParallelConfig, plan: MethodPlan, sz: StepSizes
) -> RunOutside:
    """DeepSpeed ZeRO-1/2 with a 16-bit model and nothing offloaded. With FusedAdam, its
    optimizer's init (deepspeed_zero2.init_program) makes the fp32 master and both
    moments before the first step and leaves the master's 16-bit clone and its zero
    gradient cached; ``see_memory_usage(..., force=True)`` after it resets the peaks
    (microsoft/DeepSpeed@26d0dd92 (v0.11.0) runtime/zero/stage_1_and_2.py l.508-516,
    runtime/utils.py ``see_memory_usage``), which frees nothing. Other optimizers
    (their states are not a master and two moments) keep the replay's own order.
    ZeRO-2 on one rank: its gradients as deepspeed_zero2.Backward requests them. The
    init's first move, the trainable weights to the CPU and back as one flat 16-bit
    buffer, is replayed where the init is (RunOutside.moved_to_cpu)."""
    if par.resolved_strategy not in ("zero1", "zero2") or par.model_parallel > 1:
        return STEP_ONLY
    model_bytes = BYTES_PER_ELEMENT[plan.dtypes.compute]
    if par.offload_optimizer != "none" or model_bytes != 2:
        return STEP_ONLY
    partition = deepspeed_zero2.partition_elements(plan.n_trainable, par.shard_group)
    if partition == 0:
        return STEP_ONLY
    grads = _zero2_gradients(arch, par, plan, sz, partition)
    if sz.states != deepspeed_zero2.adam_states(partition):
        return RunOutside(zero2_grads=grads) if grads else STEP_ONLY
    # the trainable weights go to the CPU and come back as one flat buffer (l.300-352)
    moved = sum(g.nbytes for g in plan.groups if g.trainable)
    flat = deepspeed_zero2.flat_buffer_bytes(plan.n_trainable, par.shard_group, model_bytes)
    if moved > sz.weights:  # (not the rank's weights: a pipeline stage's, say)
        moved = flat = 0
    program = deepspeed_zero2.init_program(partition, model_bytes, flat)
    return RunOutside(optimizer_init=program, reset=True, zero2_grads=grads, moved_to_cpu=moved)


def _zero2_gradients(
    arch: Architecture, par: ParallelConfig, plan: MethodPlan, sz: StepSizes, partition: int
) -> deepspeed_zero2.Gradients | None:
    """ZeRO-2's flat gradients where derived: one rank (on more, each rank's
    ``grads_in_partition`` sums the whole parameters its partition touches: not derived
    here), 16-bit gradients of every trainable element (the step's own)."""
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    if par.resolved_strategy != "zero2" or par.shard_group != 1:
        return None
    if sz.gradients.total != e * plan.n_trainable:
        return None
    return deepspeed_zero2.Gradients(
        bucket=e * par.buckets(arch)[0],
        partition=e * plan.n_trainable,
        padding=e * (partition - plan.n_trainable),
    )


def _check_parallel_run(run: RunConfig) -> None:
    """Settings ftmem models on one GPU only."""
    if run.accounting == "simple":
        raise InvalidInputError(
            "--accounting simple is the seed's single-GPU sum; use the default phases "
            "accounting with several GPUs or a strategy."
        )
    if run.optimizer_in_backward:
        raise InvalidInputError(
            "--optimizer-in-backward is modelled on one GPU; DeepSpeed and FSDP step "
            "their own sharded optimizers."
        )


def _parallel_info(
    arch: Architecture, par: ParallelConfig, step: ParallelStep, overhead: int, on_every_gpu: int
) -> ParallelInfo:
    """How the job is laid out, which rank holds the most, and what sits off the GPUs."""
    rank = step.ranks[step.worst]
    host_node = rank.host_bytes * par.gpus
    host_fits = None if par.host_memory_bytes is None else host_node <= par.host_memory_bytes
    # the BLAS workspaces (and the block rounding) on every GPU
    stage_peaks = [p + on_every_gpu for p in step.peaks]
    per_gpu_totals = [p + overhead for p in stage_peaks]
    reduce, prefetch, persist = par.buckets(arch)
    gemini = par.resolved_strategy == "colossalai-gemini"
    return ParallelInfo(
        strategy=par.resolved_strategy,
        engine=par.engine,
        world_size=par.world,
        gpus_per_node=par.gpus,
        nodes=par.nodes,
        data_parallel=par.dp,
        shard_group=par.shard_group,
        tensor_parallel=par.tp,
        pipeline_parallel=par.pp,
        context_parallel=par.cp,
        expert_parallel=par.ep,
        gemini_offload_optim_frac=par.optim_frac if gemini else None,
        gemini_shard_param_frac=par.gemini_shard_param_frac if gemini else None,
        gemini_placement=par.gemini_placement if gemini else None,
        sequence_parallel_mode=par.sequence_mode,
        pipeline_chunks=par.pp_chunks,
        worst_rank=_rank_name(par, step.worst),
        stage_peak_bytes=stage_peaks,
        micro_batches_in_flight=rank.micro_batches,
        weights_sharded_bytes=rank.weights_sharded,
        weights_replicated_bytes=rank.weights_replicated,
        offload_optimizer=par.offload_optimizer,
        offload_params=par.offload_params,
        host_bytes_per_gpu=rank.host_bytes,
        host_bytes_per_node=host_node,
        disk_bytes_per_node=rank.disk_bytes * par.gpus,
        host_memory_bytes=par.host_memory_bytes,
        host_fits=host_fits,
        job_gpu_bytes=sum(per_gpu_totals) * (par.world // par.pp),
        reduce_bucket_elements=reduce,
        prefetch_bucket_elements=prefetch,
        persistence_threshold_elements=persist,
    )


def _rank_name(par: ParallelConfig, stage: int) -> str:
    if par.pp == 1:
        return "every rank (all hold the same)"
    where = "first" if stage == 0 else "last" if stage == par.pp - 1 else "middle"
    return f"pipeline stage {stage} of {par.pp} ({where})"


@lru_cache(maxsize=1024)  # a search or a sweep reports the same run many times
def _settings(run: RunConfig) -> dict[str, object]:
    return run.model_dump()


def _tiny_vector_resolved(run: RunConfig) -> dict[str, object]:
    """TinyLoRA's, AdaMSS's, UniLoRA's and Lily's settings as the estimate used them."""
    if run.method == "tinylora":
        r, u, tying, targets = run.tinylora
        return dict(
            tinylora_rank=r, tinylora_u=u, tinylora_weight_tying=tying, tinylora_targets=targets
        )
    if run.method == "adamss":
        r, k, rank, targets = run.adamss
        return dict(
            adamss_rank=r,
            adamss_subspaces=k,
            adamss_subspace_rank=rank,
            adamss_targets=targets,
            adamss_asa=bool(run.adamss_asa),
        )
    if run.method == "lily":
        r, stride, num_b, targets = run.lily
        return dict(lily_rank=r, lily_stride_a=stride, lily_num_b=num_b, lily_targets=targets)
    r, length, targets = run.unilora
    return dict(unilora_rank=r, unilora_theta_length=length, unilora_targets=targets)


def _beft_glora_resolved(
    run: RunConfig, plan: MethodPlan
) -> tuple[dict[str, object], tuple[Linear, ...]]:
    """BEFT's, GLoRA's and Peanut's settings as the estimate used them, and the linears
    adapted."""
    if run.method == "osf":
        return dict(osf_rank=run.osf_rank, osf_targets=run.osf), plan.osf
    if run.method == "peanut":
        r, targets, depth = run.peanut
        return dict(peanut_rank=r, peanut_targets=targets, peanut_depth=depth), plan.peanut
    if run.method == "beft":
        return dict(beft_targets=run.beft), plan.beft
    r, targets = run.glora
    vector = bool(run.glora_vector)
    return dict(glora_rank=r, glora_targets=targets, glora_vector=vector), plan.glora


def _peft_other_resolved(run: RunConfig, plan: MethodPlan) -> dict[str, object]:
    """The settings of peft's adapters other than LoRA's and IA³'s as the estimate used
    them, with the adapter dtype and the linears adapted (empty for the other methods)."""
    found = _peft_other_settings(run, plan) or _peft_newer_settings(run, plan)
    if found is None:
        return {}
    settings, adapted = found
    settings.update(
        adapter_dtype=plan.dtypes.adapter, adapted_modules=[lin.module for lin in adapted]
    )
    return settings


def _peft_other_settings(
    run: RunConfig, plan: MethodPlan
) -> tuple[dict[str, object], tuple[Linear, ...]] | None:
    """LoHa's, LoKr's, MiSS's, RoAd's, BOFT's, OFT's, VeRA's, PVeRA's, RandLoRA's,
    VB-LoRA's and FourierFT's settings and linears (None for the other methods)."""
    settings: dict[str, object]
    if run.method == "loha":
        r, alpha, targets = run.loha
        settings, adapted = dict(loha_rank=r, loha_alpha=alpha, loha_targets=targets), plan.hadamard
    elif run.method == "lokr":
        r, alpha, targets, factor, both = run.lokr
        settings = dict(lokr_rank=r, lokr_alpha=alpha, lokr_targets=targets)
        settings.update(lokr_factor=None if factor == -1 else factor, lokr_decompose_both=both)
        adapted = plan.kronecker
    elif run.method == "miss":
        r, init, mini_r, targets = run.miss
        settings = dict(miss_rank=r, miss_init=init, miss_mini_r=mini_r, miss_targets=targets)
        adapted = plan.miss
    elif run.method == "road":
        variant, group, targets = run.road
        settings = dict(road_variant=variant, road_group_size=group, road_targets=targets)
        adapted = plan.road
    elif run.method == "boft":
        size, num, targets = run.boft
        settings = dict(boft_block_size=size or None, boft_block_num=num or None)
        settings["boft_targets"], adapted = targets, plan.rotated
    elif run.method == "oft":
        r, size, targets, share, terms = run.oft
        settings = dict(oft_r=r or None, oft_block_size=size or None, oft_targets=targets)
        settings.update(oft_block_share=share or None, oft_neumann_terms=terms)
        adapted = plan.block_rotated
    elif run.method in ("vera", "pvera"):
        r, targets = run.vera
        m = run.method
        settings, adapted = {f"{m}_rank": r, f"{m}_targets": targets}, plan.vectored
    elif run.method == "randlora":
        r, targets = run.randlora
        settings, adapted = dict(randlora_rank=r, randlora_targets=targets), plan.banked
    elif run.method == "vblora":
        r, n, length, k, targets = run.vblora
        settings = dict(vblora_rank=r, vblora_vectors=n, vblora_vector_length=length)
        settings.update(vblora_topk=k, vblora_targets=targets)
        adapted = plan.banked
    elif run.method in ("tinylora", "adamss", "unilora", "lily"):
        settings, adapted = _tiny_vector_resolved(run), plan.banked
    elif run.method == "fourierft":
        n, targets = run.fourierft
        settings = dict(fourierft_frequencies=n, fourierft_targets=targets)
        adapted = plan.spectral
    else:
        return None
    return settings, adapted


def _peft_newer_settings(
    run: RunConfig, plan: MethodPlan
) -> tuple[dict[str, object], tuple[Linear, ...]] | None:
    """HiRA's, PSOFT's, HRA's, SHiRA's, Super-Tuning's, WaveFT's and C3A's settings and
    linears (None for the other methods)."""
    settings: dict[str, object]
    if run.method == "hira":
        r, targets = run.hira
        settings, adapted = dict(hira_rank=r, hira_targets=targets), plan.hira
    elif run.method == "psoft":
        r, targets, terms = run.psoft
        settings = dict(psoft_rank=r, psoft_targets=targets, psoft_neumann_terms=terms)
        adapted = plan.psoft
    elif run.method == "hra":
        r, targets = run.hra
        settings, adapted = dict(hra_rank=r, hra_targets=targets), plan.householder
    elif run.method == "shira":
        r, targets = run.shira
        settings, adapted = dict(shira_rank=r, shira_targets=targets), plan.shira
    elif run.method == "supertuning":
        sparsity, targets = run.supertuning
        settings = dict(supertuning_sparsity=sparsity, supertuning_targets=targets)
        if run.supertuning_r:
            settings["supertuning_r"] = run.supertuning_r
        adapted = plan.supertuning
    elif run.method == "waveft":
        n, targets = run.waveft
        settings, adapted = dict(waveft_frequencies=n, waveft_targets=targets), plan.wavelet
    elif run.method == "c3a":
        b, targets = run.c3a
        settings, adapted = dict(c3a_block_size=b, c3a_targets=targets), plan.circulant
    elif run.method in ("beft", "glora", "peanut", "osf"):
        settings, adapted = _beft_glora_resolved(run, plan)
    else:
        return None
    return settings, adapted


def _resolved_run(run: RunConfig, plan: MethodPlan, arch: Architecture) -> ResolvedRun:
    resolved: dict[str, object] = dict(_settings(run))
    if arch.encoder_decoder:  # the decoder's length, given or defaulted
        resolved["target_len"] = run.decoder_len
    resolved["precision_regime"] = plan.dtypes.describe()
    resolved["autocast"] = plan.dtypes.autocast
    resolved["compute_dtype"] = plan.dtypes.compute
    if run.method in ADAPTER_METHODS:
        resolved.update(
            lora_r=run.r,
            lora_alpha=run.alpha,
            lora_targets=run.targets,
            lora_dropout=run.dropout,
            adapter_dtype=plan.dtypes.adapter,
            adapted_modules=[lin.module for lin in plan.adapted],
            # LoRA on the experts' 3-D parameters (peft's target_parameters, ParamWrapper)
            adapted_parameters=[p for ex in plan.adapted_experts for p in ex.paths()] or None,
        )
    if run.method == "qlora":
        resolved.update(quant=run.quant_format, double_quant=run.uses_double_quant)
    if run.method == "freeze":
        resolved["trainable_layers"] = plan.trainable_blocks
    if run.method == "ia3":
        resolved.update(
            ia3_targets=run.ia3,
            adapter_dtype=plan.dtypes.adapter,
            scaled_modules=[lin.module for lin, _ in plan.scaled],
        )
    resolved.update(_peft_other_resolved(run, plan))
    if run.method in PROMPT_METHODS:
        resolved["virtual_tokens"] = run.n_virtual
    if run.method == "trainable-tokens":  # (the count, or the ids given)
        ids = run.trainable_tokens
        given = run.trainable_token_ids is not None and "," in run.trainable_token_ids
        resolved["trainable_token_ids"] = ",".join(map(str, ids)) if given else str(len(ids))
        resolved["adapter_dtype"] = plan.dtypes.adapter
    if run.method == "adaption-prompt":  # (peft has no defaults: ftmem's, made concrete)
        resolved.update(
            adapter_prompt_length=run.adaption_prompt[0], adapter_layers=plan.gated_blocks
        )
    if run.method == "p-tuning":
        resolved.update(prompt_encoder=run.encoder, encoder_hidden=run.encoder_hidden)
    if run.method == "prefix-tuning":
        resolved["prefix_projection"] = bool(run.prefix_projection)
    if run.method == "cartridge":
        resolved["cartridge_frozen_tokens"] = run.cartridge_frozen
    # the values are the validated run's or the plan's own: no second validation
    return ResolvedRun.model_construct(**resolved)
