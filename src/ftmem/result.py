"""The estimate as a plain, serialisable result: integers in bytes, stable field names.

This is the JSON contract (``--format json``); presentation reads it and does no
arithmetic of its own.
"""

from __future__ import annotations

from typing import Any

from ftmem.run import RunConfig
from ftmem.validation import Field, Model

SCHEMA_VERSION = 1


class _Frozen(Model):
    """A result: frozen, every field checked, no other key taken."""


class AtPeak(_Frozen):
    """What is allocated at the peak moment; the parts sum to the peak."""

    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    temporaries: int
    communication: int = 0  # gathered weights and buckets (multi-GPU strategies)
    # cuBLAS / cuBLASLt workspaces from the caching allocator (CUDA; ftmem.gpu.runtime)
    workspaces: int = 0
    # CUDA: what the caching allocator's whole blocks add to the bytes the tensors ask
    # for (requests rounded up to 512 bytes, cached blocks handed out unsplit), as
    # max_memory_allocated counts them (ftmem.gpu.device.block_rounding); left out of a
    # dump when there is none (the CPU; a run whose peak is a moment outside the step
    # carries it in that moment's figure, RunPeak)
    block_rounding: int = Field(0, exclude_if=lambda value: value == 0)

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer_states
            + self.activations
            + self.temporaries
            + self.communication
            + self.workspaces
            + self.block_rounding
        )


class PhasePeaks(_Frozen):
    forward: int
    backward: int
    optimizer: int


class SavedItem(_Frozen):
    what: str
    bytes: int


class BeyondAllocated(_Frozen):
    """What a CUDA GPU holds beyond the allocated peak (ftmem.gpu.device); all zero on
    the CPU, and under a user's own ``--overhead``, which replaces them."""

    allocator_cache: int  # reserved − allocated: blocks the caching allocator keeps
    cuda_context: int  # driver context, loaded kernels, library handles
    nccl: int  # NCCL's own buffers (several GPUs)
    # a colocated vLLM engine's share of the GPU (GRPO --vllm colocate): its weights, its
    # activations' profile and its KV cache blocks, held for the whole run (left out of a
    # dump when there is none)
    vllm_engine: int = Field(0, exclude_if=lambda value: value == 0)
    # bitsandbytes' paged optimizer states (CUDA managed memory, ftmem.gpu.managed): the
    # part resident on the GPU, in the device figure, and the part the card has no room
    # for, which the driver keeps in host RAM (left out of a dump when there are none)
    paged_optimizer_states: int = Field(0, exclude_if=lambda value: value == 0)
    paged_to_host: int = Field(0, exclude_if=lambda value: value == 0)


class RunMoment(_Frozen):
    name: str  # loading, evaluation, generation, merge
    allocated_bytes: int  # the allocated peak of that moment
    source: str


class RunPeak(_Frozen):
    """The run beyond the step (ftmem.run_phases): ``peak_of`` says which window the
    three figures cover; ``moment`` is where the run's allocated peak is ("step" or a
    moment outside it) and ``allocated_bytes`` its size."""

    peak_of: str  # step | run
    moment: str
    allocated_bytes: int
    step_allocated_bytes: int
    moments: list[RunMoment]
    # CUDA: the allocator's block rounding in ``allocated_bytes`` (AtPeak.block_rounding),
    # left out of a dump when there is none
    block_rounding: int = Field(0, exclude_if=lambda value: value == 0)


class Memory(_Frozen):
    """Component sizes (whole step) and the predicted peaks.

    ``*_bytes`` are the full sizes of each component; ``at_peak`` splits
    ``peak_allocated_bytes`` (the predicted ``torch.cuda.max_memory_allocated()``)
    into what is live at that moment. ``peak_reserved_bytes`` is the predicted
    ``max_memory_reserved()`` and ``device_bytes`` what nvidia-smi shows; ``total_bytes``
    is the device figure (the one that must fit the GPU) and ``overhead_bytes`` its part
    beyond the allocated peak.
    """

    weights_bytes: int
    gradients_bytes: int
    optimizer_states_bytes: int
    activations_bytes: int
    temporaries_bytes: int
    peak_allocated_bytes: int
    communication_bytes: int = 0  # largest gathered weights + buckets at any moment
    overhead_bytes: int
    total_bytes: int
    peak_reserved_bytes: int
    device_bytes: int
    beyond_allocated: BeyondAllocated
    peak_phase: str
    at_peak: AtPeak
    phases: PhasePeaks
    activations_per_block: list[SavedItem]
    activations_outer: list[SavedItem]
    run_peak: RunPeak | None = None  # CUDA, one GPU: the moments outside the step

    def with_outside(self, **parts: int) -> Memory:
        """The same memory with device bytes outside torch's allocator added: each part
        named as its ``beyond_allocated`` field, and in the device total and overhead."""
        added = sum(parts.values())
        return self.model_copy(
            update={
                "total_bytes": self.total_bytes + added,
                "device_bytes": self.device_bytes + added,
                "overhead_bytes": self.overhead_bytes + added,
                "beyond_allocated": self.beyond_allocated.model_copy(update=parts),
            }
        )


class ModelInfo(_Frozen):
    name: str
    family: str
    n_params: int
    n_trainable_params: int


class ParallelInfo(_Frozen):
    """How the run is spread and what lies outside the GPU. ``Memory`` is per GPU:
    the rank that holds the most (``worst_rank``)."""

    strategy: str
    engine: str
    world_size: int
    gpus_per_node: int
    nodes: int
    data_parallel: int
    shard_group: int  # ranks one sharded copy is spread over
    tensor_parallel: int
    pipeline_parallel: int
    context_parallel: int
    expert_parallel: int = 1  # MoE experts split over the data-parallel ranks
    # ColossalAI's GeminiPlugin: the static placement's fractions estimated
    gemini_offload_optim_frac: float | None = None
    gemini_shard_param_frac: float | None = None
    gemini_placement: str | None = None
    # ColossalAI's sequence_parallelism_mode (split_gather, ring, all_to_all, ring_attn)
    sequence_parallel_mode: str | None = None
    pipeline_chunks: int = 1  # model chunks per stage (interleaved 1F1B above 1)
    worst_rank: str
    stage_peak_bytes: list[int]  # peak allocated per pipeline stage
    micro_batches_in_flight: int
    weights_sharded_bytes: int  # this GPU's shard
    weights_replicated_bytes: int  # held whole on every GPU
    offload_optimizer: str
    offload_params: str
    host_bytes_per_gpu: int
    host_bytes_per_node: int
    disk_bytes_per_node: int
    host_memory_bytes: int | None
    host_fits: bool | None
    job_gpu_bytes: int  # all GPUs together (peak + overhead each)
    # what the estimate assumed, and what --emit writes into the engine config
    reduce_bucket_elements: int
    prefetch_bucket_elements: int
    persistence_threshold_elements: int


class VllmServerInfo(_Frozen):
    """GRPO --vllm server: the generation server's GPUs (``trl vllm-serve``), beside the
    training GPUs the estimate is for (ftmem.vllm_server). Bytes are per server GPU;
    those that need the card's size are None without --gpu."""

    gpus: int  # tensor_parallel x data_parallel
    tensor_parallel: int
    data_parallel: int
    memory_share: float  # --gpu-memory-utilization
    reserved_bytes: int | None  # memory_share of the card
    weights_bytes: int  # this GPU's slice of the weights (bf16)
    profile_bytes: int  # vLLM's profiling forward over max_num_batched_tokens
    max_num_batched_tokens: int
    overhead_bytes: int  # the CUDA context and BLAS workspaces
    kv_cache_bytes: int | None  # what the share leaves to the KV cache blocks
    kv_bytes_per_token: int  # one token on this GPU (its KV heads), all layers
    kv_cache_tokens: int | None
    sequence_tokens: int  # one completion: prompt + completion
    completions: int  # the generation batch, every training rank's together
    completions_per_engine: int
    concurrent_completions: int | None  # whole sequences the KV cache holds
    fits: bool | None  # weights + profile leave a KV cache for one sequence


def _absent(value: object) -> bool:
    return value is None


class ResolvedRun(RunConfig):
    """The run as estimated: every setting, with what the estimate made concrete in
    place (the adapter and compute dtypes, the trainable layers, a T5 decoder's length,
    the LoRA numbers a method defaults), then what it derived: the precision regime
    and the modules the method adapts or scales (only for methods that have them); where
    LoRA wraps a parameter rather than a module (the routed experts' 3-D weights and the
    router's, through peft's target_parameters), those parameters (absent when none is)."""

    precision_regime: str
    adapted_modules: list[str] | None = Field(None, exclude_if=_absent)
    adapted_parameters: list[str] | None = Field(None, exclude_if=_absent)
    scaled_modules: list[str] | None = Field(None, exclude_if=_absent)


class ConfigRead(_Frozen):
    """What ``--from`` read from a training config: the framework, the file, the settings
    it gave (from its keys, or the framework's defaults where it is silent), those
    defaults with their sources, the keys ignored (no effect on memory, or not read by
    ftmem: each also named in a note) and the settings the command line replaced."""

    framework: str
    path: str
    settings: dict[str, Any]
    assumed: list[str]
    ignored_no_effect: list[str]
    ignored_not_read: list[str]
    replaced_by_flags: list[str]


class Estimate(_Frozen):
    schema_version: int = SCHEMA_VERSION
    model: ModelInfo
    # built from validated values (model_construct): the resolved ones would not pass the
    # settings' checks again (a compute dtype outside QLoRA), and need none (an instance
    # is kept as it is)
    run: ResolvedRun = Field(inline=True)
    memory: Memory
    gpu: dict[str, Any] | None
    fits: bool | None
    headroom_bytes: int | None
    parallel: ParallelInfo | None = None
    # grpo --vllm server: the generation server's GPUs (absent otherwise)
    vllm_server: VllmServerInfo | None = Field(None, exclude_if=_absent)
    notes: list[str]
    # --from: what the training config gave (absent without one)
    config: ConfigRead | None = Field(None, exclude_if=_absent)
