"""Memory per GPU when one run is spread over many.

Strategies, each following its engine's own code (DeepSpeed 0.19, torch 2.13 FSDP/DDP):

* ``ddp``: every rank holds everything; torch DDP also keeps gradient buckets the size
  of all gradients (``gradient_as_bucket_view=False``, the default).
* ``zero1`` / ``zero2`` / ``zero3`` (DeepSpeed): in its bf16/fp16 mode the model and its
  gradients are 16-bit and the optimizer holds an fp32 master copy plus its states
  (K = 12 bytes per parameter for Adam, Rajbhandari et al. 2020). Stage 1 shards the
  optimizer, stage 2 also the gradients, stage 3 also the weights (small "persistent"
  tensors stay whole) and gathers one layer at a time, prefetching the next.
* ``fsdp`` (FULL_SHARD) / ``fsdp-hybrid`` (sharded within a node, replicated across
  nodes) / ``fsdp-grad-op`` (SHARD_GRAD_OP: weights stay gathered from forward to
  backward) / ``fsdp-no-shard``: torch FSDP with one unit per decoder block; the root
  unit (embeddings, final norm, LM head) stays gathered for the whole step.

Model parallelism composes with them: tensor parallel (Megatron-style: attention heads,
MLP columns and the vocabulary split, norms replicated), pipeline parallel (blocks split
into stages; with 1F1B stage k holds up to ``pp - k`` micro-batches of activations) and
context parallel (each rank holds ``seq_len / cp`` tokens). Data parallel is what is
left: ``world / (tp · pp · cp)``.

Offload moves optimizer states (and with ZeRO-3 / FSDP the weights) to host RAM or NVMe;
the host side is reported per node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from ftmem import colossalai, deepspeed_zero2, deepspeed_zero3, engine_cast, grpo, mllama_step
from ftmem.arch import HEAD, Architecture
from ftmem.block_policies import Checkpointed
from ftmem.colossalai import COLOSSALAI, LOW_LEVEL_ZERO
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32, ceil_div, is_quantized, quant_state_bytes
from ftmem.errors import InvalidInputError
from ftmem.methods import MethodPlan, TensorGroup, adapted_experts, plan_key
from ftmem.ops.embedding import Embedding
from ftmem.ops.norm import Norm
from ftmem.optim import (
    optimizer_state_bytes,
    optimizer_step_temporary_bytes,
    step_tensor_bytes,
)
from ftmem.paged_ranks import (
    Hands,
    accelerate_cpu_optimizer,
    check_fsdp2,
    check_zero_offload,
    rank_paged_bytes,
    zero_offload_notes,
)
from ftmem.phases import (
    NO_COMMUNICATION,
    NO_HEAD,
    Activations,
    Communication,
    Gradients,
    Peak,
    StepSizes,
    find_peak,
    moment_grads,
)
from ftmem.precision import resolve_dtypes
from ftmem.profiles import batch_padding, compiled_layers, profile_of
from ftmem.release_buffers import stage_buffer_bytes
from ftmem.run import ADAPTER_METHODS, RunConfig
from ftmem.sequence_parallel import (
    INSIDE_TP,
    SequenceSplit,
    SpMode,
    check_policy,
    coloattention_mask_bytes,
    ring_attention_backward,
    ring_attention_forward,
    shardformer_mask_build,
    shardformer_mask_positions,
    shardformer_repeats_kv,
    shardformer_runs_eager,
)
from ftmem.step import StepParts, reference_weights, step_parts, trains_own_weights
from ftmem.transients import attention_backward_beside, attention_gradients_made
from ftmem.validation import Field, Model, PositiveInt, model_validator
from ftmem.versions import (
    checkpoint_wraps_decoder_unit,
    hf_trainer_fsdp_version,
    hf_trainer_wraps_peft_leaves,
    zero3_checks_overflow,
)

if TYPE_CHECKING:  # imported where used: only GeminiPlugin runs (CLI start-up)
    from ftmem.gemini import GeminiRank

Strategy = Literal[
    "single",
    "ddp",
    "zero1",
    "zero2",
    "zero3",
    "fsdp",
    "fsdp-hybrid",
    "fsdp-grad-op",
    "fsdp-no-shard",
    "colossalai-zero1",
    "colossalai-zero2",
    "colossalai-3d",
    "colossalai-gemini",
]
Offload = Literal["none", "cpu", "nvme"]

DEEPSPEED: frozenset[str] = frozenset({"zero1", "zero2", "zero3"})
FSDP: frozenset[str] = frozenset({"fsdp", "fsdp-hybrid", "fsdp-grad-op", "fsdp-no-shard"})
# the FSDP strategies that reduce-scatter gradients into shards (NO_SHARD all-reduces)
SHARDED_FSDP: frozenset[str] = FSDP - {"fsdp-no-shard"}
SHARDS_WEIGHTS: frozenset[str] = frozenset(
    {"zero3", "fsdp", "fsdp-hybrid", "fsdp-grad-op", "colossalai-gemini"}
)
SHARDS_GRADS: frozenset[str] = SHARDS_WEIGHTS | {"zero2", "colossalai-zero2"}
SHARDS_STATES: frozenset[str] = SHARDS_GRADS | {"zero1", "colossalai-zero1"}
# the engines that cast the whole model to the 16-bit precision and keep fp32 masters
# in the optimizer
SIXTEEN_BIT_ENGINES: frozenset[str] = DEEPSPEED | COLOSSALAI

# Hugging Face's "auto" values for DeepSpeed ZeRO (transformers.integrations.deepspeed),
# which ftmem also writes into the configs it emits: buckets of h² elements, a
# prefetch bucket of 0.9·h², tensors under 10·h elements kept whole under ZeRO-3.
PREFETCH_FRACTION = 0.9
PERSISTENCE_FACTOR = 10
# DeepSpeed NVMe offload: pinned host buffers (offload_param: 5 buffers of 1e8
# elements; offload_optimizer: 4 buffers of one fp32 sub-group of at most 1e9 elements).
NVME_PARAM_BUFFERS = 5 * 10**8
NVME_OPTIMIZER_BUFFERS = 4
ZERO_SUB_GROUP = deepspeed_zero3.SUB_GROUP_SIZE
# Megatron pads the vocabulary so each tensor-parallel rank holds a multiple of 128 rows.
VOCAB_PAD = 128

ENGINE = {
    "single": "one GPU",
    "ddp": "torch DDP",
    **{s: "DeepSpeed" for s in DEEPSPEED},
    **{s: "torch FSDP" for s in FSDP},
}


class ParallelConfig(Model):
    """How the run is spread: GPUs, nodes, strategy, model-parallel degrees, offload."""

    gpus: PositiveInt = Field(1, description="GPUs per node.")
    nodes: PositiveInt = 1
    strategy: Strategy | None = Field(None, description="Default: single on 1 GPU, else ddp.")
    tp: PositiveInt = Field(1, description="Tensor-parallel degree.")
    pp: PositiveInt = Field(1, description="Pipeline-parallel degree (stages).")
    cp: PositiveInt = Field(1, description="Context-parallel degree (sequence split).")
    ep: PositiveInt = Field(
        1,
        description="Expert-parallel degree: MoE experts split over data-parallel ranks "
        "(ColossalAI's MoeHybridParallelPlugin).",
    )
    offload_optimizer: Offload = "none"
    offload_params: Offload = "none"
    zero_force_ds_cpu_optimizer: bool = Field(
        True,
        description="DeepSpeed's zero_force_ds_cpu_optimizer (default true): with "
        "--offload-optimizer it refuses a client optimizer other than its CPU Adam or Lion; "
        "false lets bitsandbytes' or torchao's optimizer step the offloaded states on the CPU.",
    )
    host_memory_bytes: PositiveInt | None = Field(None, description="Host RAM per node.")
    bucket_elements: PositiveInt | None = Field(
        None, description="ZeRO reduce bucket (elements); default hidden² as HF's 'auto'."
    )
    gemini_offload_optim_frac: float | None = Field(
        None,
        ge=0,
        le=1,
        description="GeminiPlugin's offload_optim_frac (default 1 with --offload-optimizer "
        "cpu, else 0).",
    )
    gemini_shard_param_frac: float = Field(
        1.0, ge=0, le=1, description="GeminiPlugin's shard_param_frac."
    )
    gemini_placement: Literal["static", "auto"] = Field(
        "static", description="GeminiPlugin's placement_policy."
    )
    pp_chunks: PositiveInt = Field(
        1,
        description="Model chunks per pipeline stage: above 1, the interleaved 1F1B schedule "
        "(ColossalAI's pp_style='interleaved', num_model_chunks).",
    )
    fsdp_sharded_ends: bool = Field(
        False,
        description="FSDP: the token embedding and the LM head are units of their own, "
        "resharded after forward, not kept gathered with the root (torchtune's "
        "custom_sharded_layers: ['tok_embeddings', 'output']).",
    )
    fsdp_version: int | None = Field(
        None,
        description="FSDP: torch's FullyShardedDataParallel (1) or fully_shard (2); default "
        "the framework's (HF Trainer: 1 before transformers 5.10, else 2).",
    )
    sp_mode: SpMode | None = Field(
        None,
        description="ColossalAI's sequence_parallelism_mode: split_gather or ring inside the "
        "TP group, all_to_all or ring_attn over --cp ranks (default all_to_all with --cp).",
    )

    @property
    def sequence_mode(self) -> str | None:
        """ColossalAI's sequence parallelism as it runs (all_to_all where --cp alone asks
        for it, HybridParallelPlugin's default, hybrid_parallel_plugin.py:1060-1062)."""
        if self.sp_mode is not None:
            return self.sp_mode
        return "all_to_all" if self.cp > 1 and self.resolved_strategy in COLOSSALAI else None

    @property
    def optim_frac(self) -> float:
        """Gemini's offload_optim_frac as estimated."""
        if self.gemini_offload_optim_frac is not None:
            return self.gemini_offload_optim_frac
        return 1.0 if self.offload_optimizer == "cpu" else 0.0

    @property
    def world(self) -> int:
        return self.gpus * self.nodes

    @property
    def model_parallel(self) -> int:
        return self.tp * self.pp * self.cp

    @property
    def dp(self) -> int:
        return self.world // self.model_parallel

    @property
    def resolved_strategy(self) -> Strategy:
        if self.strategy is not None:
            return self.strategy
        return "single" if self.world == 1 else "ddp"

    @property
    def shard_group(self) -> int:
        """Ranks one sharded copy is spread over (hybrid: the data-parallel ranks of a node)."""
        s = self.resolved_strategy
        if s not in SHARDS_STATES:
            return 1
        if s == "fsdp-hybrid":
            return max(1, self.dp // self.nodes)
        if s in COLOSSALAI:
            # ColossalAI's sequence parallelism (all_to_all) shards ZeRO over dp × sp
            # (mixed_dp_group, hybrid_parallel_plugin.py:1198-1200)
            return self.dp * self.cp
        return self.dp

    @property
    def engine(self) -> str:
        """What runs the strategy, as a user would name it."""
        s = self.resolved_strategy
        if s in COLOSSALAI:
            return f"ColossalAI {colossalai.plugin_name(s, self.model_parallel, self.ep)}"
        return ENGINE[s]

    def buckets(self, arch: Architecture) -> tuple[int, int, int]:
        """ZeRO reduce bucket, stage-3 prefetch bucket and persistence threshold (elements)."""
        if self.resolved_strategy in COLOSSALAI:
            return self.bucket_elements or colossalai.ZERO_BUCKET_ELEMENTS, 0, 0
        reduce = self.bucket_elements or arch.hidden_size**2
        return reduce, int(PREFETCH_FRACTION * reduce), PERSISTENCE_FACTOR * arch.hidden_size

    @property
    def is_trivial(self) -> bool:
        """One GPU, no strategy, nothing offloaded: the single-GPU estimate."""
        return (
            self.world == 1
            and self.resolved_strategy == "single"
            and self.offload_optimizer == "none"
            and self.offload_params == "none"
        )

    @model_validator(mode="after")
    def _combinations(self) -> ParallelConfig:
        s = self.resolved_strategy
        if self.world % self.model_parallel:
            raise ValueError(
                f"{self.world} GPUs cannot be split into tp {self.tp} × pp {self.pp} × "
                f"cp {self.cp} = {self.model_parallel}; the GPU count must be a multiple of it"
            )
        if s == "single" and self.world > 1:
            raise ValueError(f"--strategy single uses one GPU, not {self.world}")
        if s in ("zero2", "zero3") and self.pp > 1:
            raise ValueError(
                f"DeepSpeed's pipeline engine supports ZeRO stage 0 or 1 only, not {s} with --pp"
            )
        if self.ep > 1 and s not in COLOSSALAI:
            raise ValueError(
                "--ep (expert parallel) is modelled for ColossalAI's MoeHybridParallelPlugin: "
                "use --strategy colossalai-zero1"
            )
        given = self.gemini_offload_optim_frac is not None or self.gemini_shard_param_frac != 1
        given |= self.gemini_placement != "static"
        if given and s != colossalai.GEMINI:
            raise ValueError(
                "--gemini-offload-optim-frac, --gemini-shard-param-frac and "
                "--gemini-placement are GeminiPlugin's: add --strategy colossalai-gemini"
            )
        _colossalai_only(self)
        if s in COLOSSALAI:
            _colossalai_layout(self)
        if s == "fsdp-hybrid" and self.dp % self.nodes:
            raise ValueError("fsdp-hybrid needs the data-parallel ranks spread evenly over nodes")
        offloads = DEEPSPEED | FSDP | LOW_LEVEL_ZERO.keys() | {colossalai.GEMINI}
        if self.offload_optimizer != "none" and s not in offloads:
            raise ValueError(
                "--offload-optimizer needs a DeepSpeed ZeRO or FSDP strategy (or ColossalAI's "
                f"colossalai-zero1, colossalai-zero2, colossalai-gemini), not {s}"
            )
        if not self.zero_force_ds_cpu_optimizer and s not in DEEPSPEED:
            raise ValueError(
                f"--no-zero-force-ds-cpu-optimizer is DeepSpeed's setting: it needs a zero "
                f"strategy, not {s}"
            )
        if self.offload_params != "none" and s not in ("zero3", *FSDP, colossalai.GEMINI):
            raise ValueError(
                f"--offload-params needs zero3 or an FSDP strategy (or colossalai-gemini), not {s}"
            )
        if self.fsdp_sharded_ends and s not in FSDP:
            raise ValueError(
                "--fsdp-sharded-ends wraps the embedding and the LM head as FSDP units of "
                f"their own: it needs an FSDP strategy (--strategy fsdp), not {s}"
            )
        _fsdp_version_fits(self)
        if s in FSDP:
            if "nvme" in (self.offload_optimizer, self.offload_params):
                raise ValueError("FSDP offloads to the CPU only; NVMe offload is DeepSpeed's")
            if self.offload_optimizer != self.offload_params:
                raise ValueError(
                    "FSDP's CPU offload moves weights, gradients and the optimizer together: "
                    "add --offload-params cpu"
                )
        return self

    @model_validator(mode="before")
    @classmethod
    def _fsdp_offload_is_one_switch(cls, data: object) -> object:
        """FSDP's CPUOffload(offload_params=True) takes the optimizer along (its step runs
        on the host): --offload-params cpu alone means both."""
        if (
            isinstance(data, dict)
            and isinstance(data.get("strategy"), str)  # a list is for the field to refuse
            and data.get("strategy") in FSDP
            and data.get("offload_params") == "cpu"
        ):
            if data.get("offload_optimizer") == "none":
                raise ValueError(
                    "FSDP's CPU offload takes the optimizer step to the host with the "
                    "weights: drop --offload-optimizer none"
                )
            if data.get("offload_optimizer") in (None, "cpu"):
                return {**data, "offload_optimizer": "cpu"}
            # any other value (nvme) is refused by _combinations, not replaced by cpu
        return data


def _fsdp_version_fits(par: ParallelConfig) -> None:
    """--fsdp-version names one of torch's two FSDP implementations, for an FSDP strategy."""
    v, s = par.fsdp_version, par.resolved_strategy
    if v is not None and v not in (1, 2):
        raise ValueError(
            f"--fsdp-version is 1 (torch's FullyShardedDataParallel) or 2 (fully_shard), not {v}"
        )
    if v is not None and s not in FSDP:
        raise ValueError(
            f"--fsdp-version {v} picks the FSDP implementation: it needs an FSDP strategy "
            f"(--strategy fsdp), not {s}"
        )


def _colossalai_only(par: ParallelConfig) -> None:
    """The settings ftmem models for ColossalAI's plugins only."""
    colossal = par.resolved_strategy in COLOSSALAI
    if par.pp_chunks > 1 and par.pp == 1:
        raise ValueError(
            "--pp-chunks splits each pipeline stage into interleaved chunks: add --pp 2 or more"
        )
    if par.pp_chunks > 1 and not colossal:
        raise ValueError(
            "--pp-chunks (the interleaved 1F1B schedule) is modelled for ColossalAI's "
            "HybridParallelPlugin: use --strategy colossalai-zero1 or colossalai-3d "
            "(DeepSpeed's pipeline engine runs 1F1B only)"
        )
    if par.sp_mode is not None and not colossal:
        raise ValueError(
            "--sp-mode is ColossalAI's sequence_parallelism_mode: use a colossalai-* "
            "strategy (elsewhere --cp alone is ring-style context parallelism)"
        )


def _colossalai_layout(par: ParallelConfig) -> None:
    """The layouts ColossalAI's plugins refuse (hybrid_parallel_plugin.py:1123-1136)."""
    s = par.resolved_strategy
    if s == "colossalai-zero2" and par.pp > 1:
        raise ValueError(
            "ColossalAI's HybridParallelPlugin takes zero_stage 0 or 1 with pipeline "
            "parallelism, not 2: use --strategy colossalai-zero1 with --pp"
        )
    if "nvme" in (par.offload_optimizer, par.offload_params):
        raise ValueError("ColossalAI's plugins offload to the CPU only, not NVMe")
    if par.ep > 1 and s not in LOW_LEVEL_ZERO:
        raise ValueError(
            "expert parallelism is ColossalAI's MoeHybridParallelPlugin with ZeRO here: use "
            "--strategy colossalai-zero1 with --ep (its DDP path, zero_stage 0, refuses "
            "experts split over the data-parallel ranks)"
        )
    if par.dp % par.ep:
        raise ValueError(
            f"--ep {par.ep} must divide the {par.dp} data-parallel ranks (moe_dp = dp / ep, "
            "moe_hybrid_parallel_plugin.py:262-269)"
        )
    _sequence_layout(par)
    if par.gemini_offload_optim_frac is not None and par.offload_optimizer != "none":
        raise ValueError(
            "--offload-optimizer cpu is --gemini-offload-optim-frac 1: give one of them"
        )
    static = (par.offload_optimizer, par.offload_params, par.gemini_offload_optim_frac)
    if par.gemini_placement == "auto" and (
        static != ("none", "none", None) or par.gemini_shard_param_frac != 1
    ):
        raise ValueError(
            "GeminiPlugin's auto placement decides what leaves the GPU itself; the offload "
            "flags and fractions are its static placement's: drop them"
        )
    if s == colossalai.GEMINI:
        if par.offload_params == "cpu" and (par.optim_frac < 1 or par.gemini_shard_param_frac < 1):
            raise ValueError(
                "ColossalAI's GeminiPlugin moves weights off the GPU only with "
                "offload_optim_frac and shard_param_frac at 1 (placement_policy.py:59-61)"
            )
        if par.pp > 1:
            raise ValueError(
                "ColossalAI's GeminiPlugin has no pipeline parallelism (gemini_ddp.py:354-355): "
                "drop --pp, or use --strategy colossalai-zero1"
            )
        if par.cp > 1:
            raise ValueError(
                "ColossalAI's GeminiPlugin splits the sequence only with tensor parallelism: "
                "drop --cp"
            )
        if par.offload_params == "cpu" and par.offload_optimizer != "cpu":
            raise ValueError(
                "ColossalAI's GeminiPlugin moves weights off the GPU only with the optimizer "
                "(offload_param_frac needs offload_optim_frac=1, placement_policy.py:59-61): "
                "add --offload-optimizer cpu"
            )


def _sequence_layout(par: ParallelConfig) -> None:
    """How ColossalAI's sequence parallelism modes sit on the process mesh
    (hybrid_parallel_plugin.py:1059-1087, shardformer/shard/shard_config.py:75-92)."""
    mode = par.sp_mode
    if mode is None:
        return
    if mode in INSIDE_TP:
        if par.tp < 2:
            raise ValueError(
                f"--sp-mode {mode} splits the sequence inside the tensor-parallel group: "
                "add --tp 2 or more (hybrid_parallel_plugin.py:1066-1069)"
            )
        if par.cp > 1:
            raise ValueError(
                f"--sp-mode {mode} uses the TP ranks for the sequence (sp_size is forced to "
                "1, hybrid_parallel_plugin.py:1070-1075): drop --cp"
            )
    elif par.cp < 2:
        raise ValueError(
            f"--sp-mode {mode} splits the sequence over --cp ranks: add --cp 2 or more"
        )
    if par.resolved_strategy == colossalai.GEMINI and mode != "split_gather":
        raise ValueError(
            "ColossalAI's GeminiPlugin takes only shardformer's default sequence parallelism, "
            "split_gather, with --tp (gemini_plugin.py:539, 559-567)"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RankMemory:
    """One rank's memory: its timeline inputs plus what sits off the GPU."""

    stage: int
    sizes: StepSizes
    weights_sharded: int  # resident shard of the weights
    weights_replicated: int  # weights every rank holds whole
    micro_batches: int  # micro-batches whose activations the stage holds
    host_bytes: int  # offloaded to host RAM (pinned buffers included)
    disk_bytes: int  # offloaded to NVMe
    # bitsandbytes' paged optimizer states (managed memory, not in ``sizes.states``:
    # ftmem.paged_ranks)
    paged_bytes: int = 0


def check_layout(arch: Architecture, run: RunConfig, par: ParallelConfig) -> None:
    """The divisibility rules a user hits when launching the run."""
    tp, pp, cp = par.tp, par.pp, par.cp
    if arch.encoder_decoder and max(tp, pp, cp) > 1:
        raise InvalidInputError(
            f"{arch.name} is an encoder-decoder: ftmem models it on data-parallel ranks "
            "(DDP, ZeRO, FSDP, offload), not with tensor, pipeline or context parallelism."
        )
    if tp > 1:
        for what, n in (
            ("attention heads", arch.num_heads),
            ("KV heads", arch.kv_heads),
            ("MLP width (intermediate_size)", arch.intermediate_size),
        ):
            if n % tp:
                raise InvalidInputError(
                    f"--tp {tp} must divide {arch.name}'s {n} {what}; "
                    f"try --tp {_largest_divisor(n, tp)}."
                )
    if run.method == "adaption-prompt" and max(tp, pp, cp) > 1:
        # (peft's AdaptedAttention reads the heads from the config and k_proj's shape, so a
        # head-split attention breaks it; no transformers trainer pipelines a peft model)
        raise InvalidInputError(
            "peft's adaption prompt is modelled on data-parallel ranks (DDP, ZeRO, FSDP) "
            "only: drop --tp, --pp and --cp."
        )
    _check_uneven_stack(arch, par)
    profile = profile_of(run)
    if par.fsdp_version and profile.fsdp_version and par.fsdp_version != profile.fsdp_version:
        raise InvalidInputError(
            f"{profile.name} shards with FSDP{profile.fsdp_version} only: drop "
            f"--fsdp-version {par.fsdp_version}."
        )
    if arch.num_layers % pp:
        raise InvalidInputError(
            f"--pp {pp} must divide {arch.name}'s {arch.num_layers} blocks into equal stages; "
            f"try --pp {_largest_divisor(arch.num_layers, pp)}."
        )
    if run.seq_len % cp:
        raise InvalidInputError(f"--cp {cp} must divide --seq-len {run.seq_len}.")
    v = par.pp_chunks
    if v > 1 and arch.num_layers % (pp * v):
        raise InvalidInputError(
            f"--pp {pp} × --pp-chunks {v} must divide {arch.name}'s {arch.num_layers} blocks "
            "into equal chunks."
        )
    if v > 1 and run.grad_accum % pp:
        raise InvalidInputError(
            f"The interleaved schedule runs a multiple of the {pp} stages in micro-batches "
            f"(interleaved_pp.py:88-90): --grad-accum {run.grad_accum} must be one."
        )
    if par.ep > 1 and (not arch.is_moe or arch.num_experts % par.ep):
        what = f"its {arch.num_experts} experts" if arch.is_moe else "no experts: it is dense"
        raise InvalidInputError(f"--ep {par.ep} splits MoE experts; {arch.name} has {what}.")
    split = par.ep > 1 or par.tp > 1 or par.pp > 1
    if split and run.method in ADAPTER_METHODS and adapted_experts(arch, run):
        # (peft's ParamWrapper rebuilds each whole expert stack; how a split one is
        # rebuilt on each rank has not been measured)
        raise InvalidInputError(
            "LoRA on the routed experts is modelled with data parallelism (DDP, ZeRO, "
            "FSDP) only: drop --tp, --pp and --ep, or adapt the attention."
        )


def _check_uneven_stack(arch: Architecture, par: ParallelConfig) -> None:
    """What the model-parallel layouts do not split yet: latent attention (its q_b/kv_b
    columns and replicated latents) under tensor parallelism, a stack whose first blocks
    are dense under a pipeline (stages of unlike blocks), shared experts and dense blocks
    under expert parallelism, gpt-oss's per-head sinks and biased experts under tensor,
    context and expert parallelism."""
    if arch.kv_lora_rank is not None and (par.tp > 1 or par.cp > 1):
        raise InvalidInputError(
            f"{arch.name}'s latent attention is not split over tensor or context parallel "
            "ranks in ftmem yet: use data parallelism (ZeRO, FSDP)."
        )
    if arch.traits.attention_sinks and (par.tp > 1 or par.cp > 1 or par.ep > 1):
        raise InvalidInputError(
            f"{arch.name}'s attention sinks and biased experts are not split over tensor, "
            "context or expert parallel ranks in ftmem yet: use data parallelism (ZeRO, FSDP)."
        )
    if arch.dense_layers and par.pp > 1:
        raise InvalidInputError(
            f"{arch.name}'s first {arch.dense_layers} blocks are dense and the rest MoE: "
            "ftmem does not lay such a stack out over pipeline stages yet; use ZeRO or FSDP."
        )
    if (arch.dense_layers or arch.shared_experts_size) and par.ep > 1:
        raise InvalidInputError(
            f"{arch.name}'s shared experts and dense blocks are not modelled under expert "
            "parallelism yet: use --ep 1."
        )


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, at_most + 1) if n % d == 0)


def local_arch(arch: Architecture, tp: int, vocab_pad: int = VOCAB_PAD) -> Architecture:
    """The slice of the model one tensor-parallel rank holds.

    Column-parallel q/k/v, gate and up and row-parallel o and down keep 1/tp of the heads
    and of the MLP width; norms and the row-parallel biases stay whole; the embedding
    and LM head are split by vocabulary, each rank's rows a multiple of ``vocab_pad``
    (Megatron's 128; ColossalAI's shardformer 64).
    """
    if tp == 1:
        return arch
    vocab = ceil_div(arch.vocab_size, vocab_pad * tp) * vocab_pad
    return arch.model_copy(
        update={
            "num_heads": arch.num_heads // tp,
            "num_kv_heads": arch.kv_heads // tp,
            "head_dim": arch.head_size,
            "intermediate_size": arch.intermediate_size // tp,
            "vocab_size": vocab,
        }
    )


def engine_run(run: RunConfig, par: ParallelConfig) -> RunConfig:
    """The run as the engine executes it.

    DeepSpeed's bf16/fp16 modes and ColossalAI's plugins cast the whole model (every peft
    method's adapters too: engine_cast) to 16-bit and keep the fp32 master weights inside
    the optimizer, so ``bf16-mixed`` and ``bf16`` are the same run there. Context parallel leaves each rank ``seq_len / cp`` tokens.
    Under ZeRO-Offload, Accelerate steps DeepSpeed's CPU optimizer in place of a
    bitsandbytes or torchao one (paged_ranks.accelerate_cpu_optimizer).
    """
    update: dict[str, object] = {}
    if par.resolved_strategy in DEEPSPEED and par.offload_optimizer != "none":
        mapped = accelerate_cpu_optimizer(run, par.zero_force_ds_cpu_optimizer)
        if mapped:
            update.update(optimizer=mapped, optimizer_block_size=None)
    if par.cp > 1:
        update["seq_len"] = run.seq_len // par.cp
    s = par.resolved_strategy
    if s in SIXTEEN_BIT_ENGINES:
        engine_cast.check_cast(run, s, _casting_engine(s))
        if s in DEEPSPEED:
            engine_cast.check_kept_buffers(run, s)
        update.update(engine_cast.sixteen_bit(run))
    # (FSDP's MixedPrecision casts them for compute only, under a *-mixed precision, which
    # the methods of engine_cast.UNMODELLED refuse: _fsdp_mixed)
    return run.model_copy(update=update) if update else run


def _casting_engine(s: str) -> str:
    """What casts the adapters under strategy ``s``, for a sentence."""
    return "DeepSpeed's 16-bit mode" if s in DEEPSPEED else "ColossalAI's precision"


def _head_side(arch: Architecture) -> tuple[str, ...]:
    """Name prefixes of the parameters after the last block: the final norm, the head."""
    return f"{arch.traits.names.final_norm}.", HEAD


def _stage_groups(
    parts: StepParts, arch: Architecture, stage: int, stages: int
) -> tuple[TensorGroup, ...]:
    """The parameter groups that live on one pipeline stage."""
    ends = _head_side(arch), f"{arch.traits.names.embedding}.weight"
    return _groups_on_stage(
        parts.plan.groups, arch.num_layers, arch.tie_embeddings, ends, stage, stages
    )


@lru_cache(maxsize=1024)
def _groups_on_stage(
    groups: tuple[TensorGroup, ...],
    L: int,
    tied: bool,
    ends: tuple[tuple[str, ...], str],
    stage: int,
    stages: int,
) -> tuple[TensorGroup, ...]:
    """Of a plan's groups (compared by value), those on one of ``stages`` pipeline
    stages of an ``L``-block model. ``ends``: the name prefixes of the head side (the
    final norm, the LM head) and the token embedding's name. Every strategy and GPU count of a sweep splits the
    same plan alike (rebuilding the groups was a fifth of a multi-GPU estimate). Safe:
    TensorGroup is frozen and the split depends on these arguments only."""
    per = L // stages
    lo, hi = stage * per, (stage + 1) * per
    first, last = stage == 0, stage == stages - 1
    out: list[TensorGroup] = []
    for g in groups:
        if not g.in_block:
            head = g.name.startswith(ends[0])
            # tied embeddings: the last stage keeps its own copy as the LM head (Megatron)
            tied_copy = tied and last and g.name == ends[1]
            if (head and last) or (not head and first) or tied_copy:
                out.append(g)
            continue
        blocks = g.count // g.per_block  # (per-expert linears: per_block in each)
        if blocks == L:
            span = (0, L)
        elif g.trainable:
            span = (L - blocks, L)  # freeze: the top blocks train
        else:
            span = (0, blocks)
        n = max(0, min(hi, span[1]) - max(lo, span[0]))
        if n:
            out.append(g.counted(n * g.per_block))
    return tuple(out)


def _gathered_bytes(groups: Iterable[TensorGroup], cast: int | None = None) -> int:
    """Bytes of groups gathered whole: quantized storage as stored, others in their own
    dtype or, under FSDP MixedPrecision, cast to ``cast`` bytes per element."""
    total = 0
    for g in groups:
        if is_quantized(g.fmt):
            total += g.nbytes
        else:
            total += g.total_numel * (cast or g.element_bytes)
    return total


def _grad_bytes(groups: Iterable[TensorGroup], cast: int | None = None) -> int:
    """Unsharded gradients of ``groups`` before their reduce-scatter."""
    return sum(g.total_numel * (cast or g.element_bytes) for g in groups)


def _one_block(groups: tuple[TensorGroup, ...], arch: Architecture) -> list[TensorGroup]:
    """One block's tensors (one copy of each name): what FSDP and ZeRO-3 gather at once.
    An encoder-decoder's pair block is two such units (T5Block): the larger one."""
    return list(_block_unit(groups, arch.encoder_decoder))


@lru_cache(maxsize=1024)
def _block_unit(groups: tuple[TensorGroup, ...], encoder_decoder: bool) -> tuple[TensorGroup, ...]:
    """_one_block per (a stage's groups, compared by value; encoder-decoder or not): the
    same for every strategy and GPU count of a sweep. Safe: TensorGroup is frozen."""
    seen: dict[str, TensorGroup] = {}
    for g in groups:
        if g.in_block and g.name not in seen:
            seen[g.name] = g.counted(g.per_block)
    block = tuple(seen.values())
    if not encoder_decoder:
        return block
    stacks = [tuple(g for g in block if g.name.startswith(f"{s}.")) for s in ("encoder", "decoder")]
    return max(stacks, key=lambda gs: sum(g.nbytes for g in gs))


@lru_cache(maxsize=1024)
def _fp32_copies(groups: tuple[TensorGroup, ...]) -> tuple[TensorGroup, ...]:
    """The groups stored as fp32 (DeepSpeed's optimizer keeps fp32 copies), per groups
    compared by value: a sweep asks it for the same stage again for every GPU count.
    Safe: TensorGroup is frozen."""
    return tuple(dataclasses.replace(g, fmt="fp32") for g in groups)


# Where the optimizer keeps fp32 masters: none (torch: the weights are the masters),
# DeepSpeed's 16-bit modes, ColossalAI's ZeRO optimizer, ColossalAI's AMP optimizer
Masters = Literal["none", "deepspeed", "colossalai-zero", "colossalai-amp"]


def _masters(s: Strategy) -> Masters:
    if s in DEEPSPEED:
        return "deepspeed"
    if s in LOW_LEVEL_ZERO:
        return "colossalai-zero"
    if s == colossalai.HYBRID_AMP:
        return "colossalai-amp"
    return "none"


@dataclasses.dataclass(frozen=True, slots=True)
class _StageTotals:
    """A stage's parameter sizes before any sharding."""

    weights: int
    grads: int
    psi: int  # trainable elements
    states: int  # optimizer states (DeepSpeed: fp32 copies, its master weights)
    step_temp: int  # the optimizer step's temporaries
    steps: int  # Adam's step tensors (one per tensor on every rank: not sharded)
    # gradients' storage beyond their own size (TensorGroup.grad_numel: a view into a
    # larger gradient), where a rank keeps each parameter's .grad as autograd leaves it
    views: int = 0


_STAGE_TOTALS: dict[tuple[object, ...], _StageTotals] = {}
_MAX_STAGE_TOTALS = 4096


def _stage_totals(
    groups: tuple[TensorGroup, ...],
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    masters: Masters,
) -> _StageTotals:
    """_StageTotals of a stage's groups, cached per (groups compared by value, the plan's
    key: architecture and every run setting but the shape, the engine's masters): every
    GPU count of a sweep asks for the same stage again (summing its groups was a fifth of
    a multi-GPU estimate). Safe: ``plan`` is ``plan_method(arch, run)``, decided by that
    key, and the optimizer functions read no shape setting of the run."""
    key = (groups, plan_key(arch, run), masters)
    totals = _STAGE_TOTALS.get(key)
    if totals is not None:
        return totals
    if len(_STAGE_TOTALS) >= _MAX_STAGE_TOTALS:
        _STAGE_TOTALS.clear()
    trainable = tuple(g for g in groups if g.trainable)
    psi = sum(g.total_numel for g in trainable)
    half = plan.dtypes.base != "fp32"
    if masters != "none" and (half or masters == "colossalai-zero"):
        # fp32 master copies in the optimizer; ColossalAI's ZeRO clones its shard to fp32
        # even in an fp32 run (low_level_optim.py:291-292)
        states = optimizer_state_bytes(_fp32_copies(trainable), run) + FP32 * psi
        # the step's fp32 gradients: DeepSpeed and ColossalAI's ZeRO convert the gradient
        # partition to fp32 beside the 16-bit one (low_level_optim.py:565-568);
        # ColossalAI's AMP optimizer replaces each 16-bit gradient by its fp32 copy
        # (mixed_precision_optimizer.py:174-181): 2 more bytes each
        step_temp = (
            0 if not half else (FP32 - 2) * psi if masters == "colossalai-amp" else FP32 * psi
        )
    elif masters == "deepspeed":
        states, step_temp = optimizer_state_bytes(_fp32_copies(trainable), run), 0
    else:
        states = optimizer_state_bytes(groups, run)
        step_temp = optimizer_step_temporary_bytes(groups, run)
    totals = _STAGE_TOTALS[key] = _StageTotals(
        weights=sum(g.nbytes for g in groups),
        grads=sum(g.total_numel * g.element_bytes for g in trainable),
        psi=psi,
        states=states,
        step_temp=step_temp,
        steps=step_tensor_bytes(groups, run),
        views=sum(g.count * g.grad_bytes for g in trainable)
        - sum(g.total_numel * g.element_bytes for g in trainable),
    )
    return totals


@dataclasses.dataclass(frozen=True, slots=True)
class _Stage:
    """Where one pipeline stage sits: its slice of the timeline's blocks and its ends."""

    index: int
    lo: int
    hi: int
    first: bool  # holds the embedding side
    last: bool  # holds the head side


def _stage(entries: int, stages: int, index: int) -> _Stage:
    """Stage ``index`` of ``stages`` over ``entries`` timeline entries (an
    encoder-decoder has two per layer)."""
    per = entries // stages
    return _Stage(index, index * per, (index + 1) * per, index == 0, index == stages - 1)


@dataclasses.dataclass(frozen=True, slots=True)
class _Resident:
    """What one rank keeps of the parameters, gradients and optimizer, and what moved off."""

    replicated: int  # weights held whole
    sharded: int  # this rank's shard of the others
    grads: int
    grads_block: int  # one trainable block's gradients
    states: int
    step_temp: int
    host: int = 0
    disk: int = 0
    # the step's transients one by one where the engine's code names them (ZeRO-3: a
    # sub-group's flat gradient copy and its fp32 gradient), and the fp64 norm copy
    # before them; empty / 0: step_temp as one sum
    step_pieces: tuple[int, ...] = ()
    norm_copy: int = 0
    # ZeRO-3's overflow check on its reduce stream (deepspeed_zero3.overflow_check_program)
    side_program: tuple[tuple[str, int], ...] = ()


def _sharded(
    s: Strategy,
    par: ParallelConfig,
    arch: Architecture,
    groups: tuple[TensorGroup, ...],
    totals: _StageTotals,
    grads_per_block: int,
    checks_overflow: bool = False,
) -> _Resident:
    """Each strategy's sharding: ZeRO-1 the optimizer, ZeRO-2 also the gradients, ZeRO-3
    and FSDP also the weights (ZeRO-3 keeps its small persistent tensors whole). Adam's
    step tensors stay whole on every rank. ``checks_overflow``: ZeRO-3 checks its
    gradient buffer for inf/nan before the step (versions.zero3_checks_overflow)."""
    N = par.shard_group
    weights, grads, states, step_temp = (
        totals.weights,
        totals.grads,
        totals.states,
        totals.step_temp,
    )
    replicated, sharded = weights, 0
    if s in SHARDS_WEIGHTS:
        persistent = 0
        if s == "zero3":
            threshold = par.buckets(arch)[2]
            persistent = sum(g.nbytes for g in groups if g.numel < threshold)
        elif s in FSDP:
            persistent = bnb_quant_state_bytes(groups)
        replicated, sharded = persistent, ceil_div(weights - persistent, N)
    grads_block = grads_per_block
    if s == "ddp":
        # torch DDP copies each .grad into its buckets and back, keeping the tensor
        # autograd left (without gradient_as_bucket_view): its whole storage stays
        grads += totals.views
    if s in SHARDS_GRADS:
        grads, grads_block = ceil_div(grads, N), ceil_div(grads_per_block, N)
    if s in SHARDS_STATES:
        states = ceil_div(states - totals.steps, N) + totals.steps
        step_temp = ceil_div(step_temp, N)
    if s == "zero3" and step_temp and totals.psi and par.offload_optimizer == "none":
        # one sub-group's gradients at a time, after an fp64 copy of each (deepspeed_zero3;
        # offloaded, the fp32 gradients are a host buffer: _offload_optimizer)
        g = totals.grads // totals.psi
        norm, flat, fp32 = deepspeed_zero3.step_transient_bytes(groups, arch, N, g)
        check: tuple[tuple[str, int], ...] = ()
        check_peak = 0
        if checks_overflow:
            elements = deepspeed_zero3.rank_elements(groups, arch, N)
            check = deepspeed_zero3.overflow_check_program(elements, g)
            check_peak = deepspeed_zero3.overflow_check_peak(elements, g)
        return _Resident(
            replicated,
            sharded,
            grads,
            grads_block,
            states,
            max(norm, flat + fp32, check_peak),
            step_pieces=(flat, fp32),
            norm_copy=norm,
            side_program=check,
        )
    if s in ("zero1", "zero2") and step_temp and N == 1 and par.model_parallel == 1:
        # the overflow check's and the norm's per-gradient copies, before the flatten
        # (deepspeed_zero2.norm_copy_bytes; on more ranks the pieces are not derived)
        largest = max((g.numel for g in groups if g.trainable), default=0)
        norm = deepspeed_zero2.norm_copy_bytes(largest)
        return _Resident(
            replicated, sharded, grads, grads_block, states, max(step_temp, norm), norm_copy=norm
        )
    return _Resident(replicated, sharded, grads, grads_block, states, step_temp)


def bnb_quant_state_bytes(groups: Iterable[TensorGroup]) -> int:
    """The bitsandbytes 4-bit weights' quant_state (absmax; with double quantisation the
    8-bit absmax, its nested fp32 scales, offset and code books: dtypes.quant_state_bytes),
    which FSDP leaves whole on every rank: it is no parameter (FSDP flattens and shards
    ``module.parameters()`` only), but a ``QuantState`` object that ``Params4bit._quantize``
    also hangs on its module (``self.module.quant_state = quant_state``, bitsandbytes
    0.43.0 bitsandbytes/nn/modules.py:288-290), where ``Linear4bit.forward`` finds it again
    once FSDP has swapped the weight for a view of the flat parameter (:410-417).
    Answer.AI's train.py says so where it quantises on every rank: "FSDP only syncs
    parameters and buffers, so the quant_state isn't copied" (AnswerDotAI/fsdp_qlora@50efa1e
    train.py:197-207: each rank quantises on its GPU, then only ``value.data`` moves to the
    CPU or meta). torchao's NF4Tensor (torchtune) is itself the parameter: sharded whole."""
    return sum(
        g.count * quant_state_bytes(g.numel, g.fmt, g.double_quant)
        for g in groups
        if g.fmt in ("nf4", "fp4") and g.layout == "bitsandbytes"
    )


def _offload_optimizer(s: Strategy, par: ParallelConfig, on: _Resident, psi: int) -> _Resident:
    """Optimizer states and their step's temporaries moved to host RAM or NVMe (NVMe
    keeps pinned host buffers of one fp32 sub-group each)."""
    if par.offload_optimizer == "none":
        return on
    moved = on.states + on.step_temp
    host, disk = on.host, on.disk
    if par.offload_optimizer == "nvme":
        disk += moved
        sub_group = min(ZERO_SUB_GROUP, ceil_div(psi, par.shard_group))
        host += NVME_OPTIMIZER_BUFFERS * sub_group * FP32
    else:
        host += moved
    grads, grads_block = on.grads, on.grads_block
    if s in ("zero2", "zero3"):
        # reduced gradients go straight into the fp32 partition on the host
        grads = grads_block = 0
    return dataclasses.replace(
        on,
        grads=grads,
        grads_block=grads_block,
        states=0,
        step_temp=0,
        step_pieces=(),
        norm_copy=0,
        side_program=(),  # the gradient buffer is on the host: checked there
        host=host,
        disk=disk,
    )


def _offload_params(
    s: Strategy, par: ParallelConfig, on: _Resident, compute: int, keeps_grads: bool = False
) -> _Resident:
    """The weight shards moved to host RAM or NVMe (ZeRO-3, FSDP); NVMe keeps pinned
    host buffers in the compute dtype, FSDP's CPU offload the gradients on the host.
    ``keeps_grads`` (FSDP1, runs_fsdp1): FSDP keeps each gradient's GPU copy too until backward ends: ``_offload_grad``
    copies it into ``_cpu_grad`` but ``_accumulate_sharded_grad`` keeps it as
    ``_saved_grad_shard`` (NO_SHARD: as ``flat_param.grad``) until the post-backward
    final callback's ``prepare_gradient_for_optim`` points ``.grad`` at the CPU copy
    and deletes it (torch 2.2-2.13 torch/distributed/fsdp/_runtime_utils.py
    ``_accumulate_sharded_grad``, ``_offload_grad``; _flat_param.py
    ``prepare_gradient_for_optim``): the GPU holds the rank's gradients through
    backward, as without offload; they leave before the (CPU) optimizer step, where
    nothing else is on the GPU."""
    if par.offload_params == "none":
        return on
    host, disk = on.host, on.disk
    if par.offload_params == "nvme":
        disk += on.sharded
        host += NVME_PARAM_BUFFERS * compute
    else:
        host += on.sharded
    grads, grads_block = on.grads, on.grads_block
    if s in FSDP:
        host += grads
        if not keeps_grads:  # FSDP2: none left on the GPU
            grads = grads_block = 0
    return dataclasses.replace(
        on, sharded=0, grads=grads, grads_block=grads_block, host=host, disk=disk
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Traffic:
    """What a stage's communication buffers are made of."""

    groups: tuple[TensorGroup, ...]  # the stage's parameters
    outer: list[TensorGroup]  # those outside the blocks
    cast: int | None  # FSDP MixedPrecision: bytes per element gathered and reduced
    compute: int  # bytes per element of the compute dtype
    grads: int  # all of the stage's gradients
    bucket: int  # one ZeRO reduce bucket
    block: int  # one block gathered whole
    root: int  # FSDP's root unit (every outer tensor not in a unit of its own) gathered whole
    head_grad: int  # unsharded gradients of the head side
    # FSDP with the ends as units of their own (fsdp_sharded_ends): the LM head's unit
    # and the token embedding's, each gathered whole; None where they are the root's
    head_unit: int | None = None
    embedding_unit: int | None = None


# Blocks gathered at once (FSDP2, measured on two CPU ranks). In backward the block being
# computed and the one below, prefetched (_fsdp_param_group.py ``_backward_prefetch``). In
# forward the block's unsharded parameters and its all-gather output, which
# ``wait_for_unshard`` keeps in ``comm_ctx.all_gather_state`` until the next unit's
# copy-out (implicit prefetch; torch 2.13 torch/distributed/fsdp/_fully_shard/
# _fsdp_param_group.py l.417-489). FSDP1 gathers one in forward (fsdp1_forward). A block's
# unsharded gradients appear as its activations are freed and leave with its
# reduce-scatter, so, as on one GPU, the timeline does not add them to that block's own
# moment.
BLOCKS_IN_FLIGHT = 2


def _traffic(
    s: Strategy,
    par: ParallelConfig,
    arch: Architecture,
    groups: tuple[TensorGroup, ...],
    plan: MethodPlan,
    grads: int,
) -> _Traffic:
    """The sizes the strategies' buffers are built from, for one stage."""
    mixed = s in FSDP and plan.dtypes.base == "fp32" and plan.dtypes.autocast
    compute = BYTES_PER_ELEMENT[plan.dtypes.compute]
    cast = compute if mixed else None  # FSDP MixedPrecision gathers and reduces in 16-bit
    outer = [g for g in groups if not g.in_block]
    # gradients of the head side (LM head, final norm; a tied embedding serves as head)
    ends = _head_side(arch)
    head_side = (
        g for g in outer if g.trainable and (g.name.startswith(ends) or arch.tie_embeddings)
    )
    block = _one_block(groups, arch)

    def apart(gs: Iterable[TensorGroup]) -> int:
        # FSDP gathers the flat parameter alone: the 4-bit quant_state stays beside it
        return bnb_quant_state_bytes(gs) if s in FSDP else 0

    def gathered(gs: list[TensorGroup]) -> int:
        return _gathered_bytes(gs, cast) - apart(gs)

    head_unit = embedding_unit = None
    root = outer
    if s in FSDP and par.fsdp_sharded_ends:
        embedding_name = f"{arch.traits.names.embedding}.weight"
        embedding = [g for g in outer if g.name == embedding_name]
        head = [g for g in outer if g.name.startswith(HEAD)]
        root = [g for g in outer if g not in embedding and g not in head]
        embedding_unit = gathered(embedding)
        # a tied head is the embedding's weight: its unit is gathered at the head
        head_unit = embedding_unit if arch.tie_embeddings else gathered(head)
    return _Traffic(
        groups=groups,
        outer=outer,
        cast=cast,
        compute=compute,
        grads=grads,
        bucket=par.buckets(arch)[0] * compute,
        block=gathered(block),
        root=gathered(root),
        head_grad=_grad_bytes(head_side, cast),
        head_unit=head_unit,
        embedding_unit=embedding_unit,
    )


def _ddp_buckets(t: _Traffic) -> Communication:
    """DDP's gradient buckets, allocated once and kept for the whole step."""
    return Communication(t.grads, t.grads, t.grads)


def _zero1_buckets(t: _Traffic) -> Communication:
    """Gradients reduced in buckets at the accumulation boundary."""
    return Communication(optimizer=t.bucket)


def _zero2_buckets(t: _Traffic) -> Communication:
    """overlap_comm double-buffers the reduce bucket during backward."""
    return Communication(backward=2 * t.bucket)


def _zero2_second_partition(
    run: RunConfig, comm: Communication, grads: int, t: _Traffic
) -> Communication:
    """Under gradient accumulation ZeRO-2 keeps micro-step 1's 16-bit gradient partition
    (``averaged_gradients`` holds views of it; the epilogue's ``zero_grad(set_to_none=True)``
    drops the params' own references) and each later micro-step's ``copy_grads_in_partition``
    allocates a fresh ``grads_in_partition`` of the rank's size, freed again by its epilogue
    (microsoft/DeepSpeed@26d0dd92 (v0.11.0) deepspeed/runtime/zero/stage_1_and_2.py
    l.712-755, l.1232-1266; the same lines at v0.10.3 and v0.12.3). It is made at the first
    reduce, when the next gradient would overflow the bucket (l.888): in the blocks'
    backward only when the rank's gradients outnumber one bucket (Qwen-1 7B Q-LoRA, 143 M
    adapters under a 2e8 bucket, makes it in the epilogue, after the activations are gone),
    at the head side only when its own gradients fill one. Without CPU offload (which
    returns before allocating it: ``grads`` is 0 there)."""
    if run.grad_accum <= 1 or grads <= t.bucket:
        return comm
    head = comm.backward + (grads if t.head_grad > t.bucket else 0)
    return dataclasses.replace(
        comm, backward=comm.backward + grads, loss_backward=comm.backward, head_backward=head
    )


def _zero3_gathers(t: _Traffic) -> Communication:
    """Blocks in flight plus reduce buckets; at the ends the largest outer tensor."""
    largest_outer = max((_gathered_bytes([g], t.cast) for g in t.outer), default=0)
    forward = BLOCKS_IN_FLIGHT * t.block
    return Communication(
        forward,
        forward + 2 * t.bucket,
        head_forward=largest_outer,
        loss_backward=largest_outer,
        head_backward=largest_outer + t.head_grad + 2 * t.bucket,
    )


def _zero3_one_rank(t: _Traffic) -> Communication:
    """ZeRO-3 on a single rank: ``all_gather_coalesced`` returns ``_no_gather_coalesced``,
    whose handle makes each parameter a view of its partition, the whole tensor
    (microsoft/DeepSpeed@6ea44d02 (v0.12.3) deepspeed/runtime/zero/partition_parameters.py
    ``NoGatherHandle`` l.44-56, ``_no_gather_coalesced`` l.720-730, l.1109-1110): nothing
    is gathered or prefetched. What stays is the ipg bucket, ``torch.empty(
    reduce_bucket_size, dtype=self.dtype)`` allocated once at init and kept (stage3.py
    ``_setup_for_real_optimizer`` l.481-485): in every phase."""
    b = t.bucket
    return Communication(b, b, b, head_forward=b, loss_backward=b, head_backward=b)


def _fsdp_gathers(t: _Traffic) -> Communication:
    """FULL_SHARD (and hybrid): the root unit stays gathered; its head-side gradients
    wait, unsharded, for the root's reduce-scatter at the end of backward."""
    forward = t.root + BLOCKS_IN_FLIGHT * t.block
    # at the logits and the loss one block is gathered too: the last block is gathered
    # again for backward as soon as the root's backward begins (measured); the LM
    # head's gradient appears after the loss backward
    head = t.root + t.block
    if t.head_unit is not None:
        return _fsdp_ends_apart(t, forward)
    return Communication(
        forward,
        forward + t.head_grad,
        head_forward=head,
        loss_backward=head,
        head_backward=head + t.head_grad,
    )


def fsdp1_unprefetched(
    s: Strategy, run: RunConfig, comm: Communication, t: _Traffic
) -> Communication:
    """FSDP1 under a reentrant checkpoint around each decoder unit
    (versions.checkpoint_wraps_decoder_unit): one block gathered at a time, in forward
    and in backward, and none at the head side besides the root.

    BACKWARD_PRE prefetch unshards the next unit only if its
    ``_needs_pre_backward_unshard`` is set, which ``_register_pre_backward_hooks`` does
    on a forward's outputs with grad enabled; the final callback and each unit's own
    pre-backward hook clear it (torch 2.4.1 distributed/fsdp/_runtime_utils.py
    :1261-1266, :1380-1399, :678, :1110; the same at 2.13). The checkpoint's forward
    runs without grad, so a unit's flag is set only in its recompute, which comes after
    the pre-backward hook of the unit above (and the root's) has looked for it: nothing
    is prefetched, and each unit is gathered from its recompute until its backward ends.
    Forward prefetch is off (FSDP's and accelerate's default ``forward_prefetch=False``):
    in forward each unit is resharded before the next one gathers. Measured on 2 gloo
    ranks (tests/test_fsdp1_unprefetched.py): one decoder unit gathered at every moment
    with the checkpoint around the unit, two in backward with it inside."""
    if (
        s not in ("fsdp", "fsdp-hybrid")
        or t.head_unit is not None
        or not _checkpoint_around_unit(run)
    ):
        return comm
    one = t.root + t.block
    return dataclasses.replace(
        comm,
        forward=one,
        backward=one + t.head_grad,
        head_forward=t.root,
        loss_backward=t.root,
        head_backward=t.root + t.head_grad,
    )


def _checkpoint_around_unit(run: RunConfig) -> bool:
    """transformers' own loop checkpoints each decoder unit's whole call (reentrant):
    FSDP1 prefetches nothing in backward (fsdp1_unprefetched)."""
    return profile_of(run).checkpoints_in_transformers_loop and checkpoint_wraps_decoder_unit(run)


def runs_fsdp1(run: RunConfig, par: ParallelConfig) -> bool:
    """The run shards with torch's FSDP1 (``FullyShardedDataParallel``): the version
    given (``--fsdp-version``, a config's ``fsdp_version``), else the framework's own
    choice, else HF Trainer's default at the run's transformers release."""
    version = par.fsdp_version or profile_of(run).fsdp_version
    return (version or hf_trainer_fsdp_version(run)) == 1


def wraps_each_trainable_leaf(run: RunConfig, par: ParallelConfig) -> bool:
    """FSDP makes each trainable leaf module (every LoRA matrix) a unit of its own, with
    its own flat parameter, gradient shard and optimizer states: the framework's own
    policy (Profile.fsdp_unit_per_trainable_leaf), or HF Trainer's peft policy
    (Profile.fsdp_wraps_peft_leaves) for a LoRA-style adapter under FSDP1 at a
    transformers release that sets it (versions.hf_trainer_wraps_peft_leaves); under
    FSDP2 HF Trainer keeps the decoder layers' policy."""
    profile = profile_of(run)
    if profile.fsdp_unit_per_trainable_leaf:
        return True
    return (
        profile.fsdp_wraps_peft_leaves
        and run.method in ADAPTER_METHODS
        and runs_fsdp1(run, par)
        and hf_trainer_wraps_peft_leaves(run)
    )


def fsdp1_forward(
    s: Strategy, run: RunConfig, par: ParallelConfig, comm: Communication, t: _Traffic
) -> Communication:
    """FSDP1 gathers one decoder unit at a time in forward and none at the logits: each
    non-root unit's ``_post_forward_reshard`` frees its unsharded flat parameter before
    the next unit's ``_pre_forward_unshard`` gathers, and ``_prefetch_handle`` prefetches
    in forward only under ``forward_prefetch`` (torch 2.13
    torch/distributed/fsdp/_runtime_utils.py l.411-435, l.486-501, l.1280-1289), which
    accelerate's plugin and HF Trainer leave False (accelerate 1.16
    utils/dataclasses.py:1828-1829; transformers 4.48.1 training_args.py:1987, 5.25.0
    :2872-2874). Its all-gather writes into the unsharded flat parameter itself: no
    all-gather output held beside it as FSDP2's. Backward is BACKWARD_PRE's, the
    default of accelerate's config file and what ``--emit fsdp`` writes: the root's
    pre-backward hook gathers the last unit, each unit's the one below (kept: FSDP2's
    bytes). The unit resharded last still waits for the compute stream when the next
    one gathers (``record_stream``, the rate limiter; calibration/notes/fsdp_qlora.md
    F11): reserved, not allocated (``forward_waiting``, the allocator replay). Measured
    on 2 gloo ranks (tests/test_fsdp_units_in_flight.py)."""
    if s not in ("fsdp", "fsdp-hybrid") or t.head_unit is not None or not runs_fsdp1(run, par):
        return comm
    return dataclasses.replace(
        comm, forward=t.root + t.block, head_forward=t.root, forward_waiting=t.block
    )


def fsdp1_lora_backward(
    s: Strategy, run: RunConfig, par: ParallelConfig, comm: Communication, t: _Traffic
) -> Communication:
    """FSDP1 LoRA with each LoRA matrix a unit (wraps_each_trainable_leaf) holds one
    decoder unit through a checkpointed block's backward, not two. BACKWARD_PRE
    prefetches the handle before the current one in post-forward order (torch 2.13
    torch/distributed/fsdp/_exec_order_utils.py get_handle_to_backward_prefetch). With
    each LoRA matrix a unit, the handle before a decoder unit's is its own last LoRA
    leaf, whose post-forward ran inside the decoder's forward, not the decoder unit
    below (calibration/notes/fsdp_qlora.md F11). The unit below is gathered at its own
    pre-backward hook, when the one above is not yet resharded: two units, but before
    the recompute's activations exist, so not the block's backward moment. The root's
    pre-backward hook still gathers the last decoder unit (``loss_backward`` unchanged).
    The unit resharded last waits for the compute stream as in forward
    (``backward_waiting``: reserved, the allocator replay). Measured on 2 gloo ranks
    (tests/test_fsdp_units_in_flight.py, the LoRA half) with the checkpoint inside each
    layer; without checkpointing that boundary moment holds the block's saved
    activations, so two units are kept there."""
    if (
        s not in ("fsdp", "fsdp-hybrid")
        or t.head_unit is not None
        or run.method not in ADAPTER_METHODS
        or not run.grad_ckpt
        or _checkpoint_around_unit(run)  # nothing prefetched: one unit already
        or not runs_fsdp1(run, par)
        or not wraps_each_trainable_leaf(run, par)
    ):
        return comm
    return dataclasses.replace(
        comm, backward=t.root + t.block + t.head_grad, backward_waiting=t.block
    )


def _fsdp_ends_apart(t: _Traffic, forward: int) -> Communication:
    """FULL_SHARD with the token embedding and the LM head as units of their own
    (torchtune's full_finetune_distributed with ``custom_sharded_layers: ['tok_embeddings',
    'output']``, pytorch/torchtune@30b8519e recipes/full_finetune_distributed.py
    _setup_model, recipes/configs/llama3_1/70B_full.yaml). FSDP2 keeps only the root's
    parameters gathered after forward (``_lazy_init``: ``post_forward_mesh_info = None``
    for the root alone; torch 2.4 torch/distributed/_composable/fsdp/_fsdp_state.py,
    torch 2.13 torch/distributed/fsdp/_fully_shard/_fsdp_state.py); every other unit
    reshards in its ``post_forward``. So the embedding is gathered only for its own
    forward and backward, and the head for each call of its forward (each chunk of
    torchtune's chunked output) and from the root's ``pre_backward``, whose
    ``_backward_prefetch`` unshards the previous unit in ``post_forward_order``: the
    head, not a block. The head's ``pre_backward`` prefetches the head itself for each
    of its calls but the first one's, so the last block is gathered only for the last
    piece of the head's backward, when it is the head's gradient that waits for its
    reduce-scatter (_fsdp_param_group.py ``pre_backward``, ``_backward_prefetch``,
    ``_record_post_forward``). That gradient leaves in the head's own ``post_backward``:
    its reduce-scatter input (its unsharded size) is kept in
    ``comm_ctx.reduce_scatter_state`` until the next unit's ``post_backward`` waits for
    it, so through the last block's backward, the blocks' largest moment (torch 2.4
    _fsdp_param_group.py ``post_backward``, ``_wait_for_post_backward``; torch 2.13
    keeps them in ``reduce_scatter_states``). Measured on two CPU ranks
    (tests/accuracy/test_sharded.py)."""
    at_head = t.root + (t.head_unit or 0)
    return Communication(
        forward,
        forward + t.head_grad,
        head_forward=at_head,
        loss_backward=at_head,
        head_backward=t.root + t.block + t.head_grad,
    )


def _host_copies(
    s: Strategy, par: ParallelConfig, comm: Communication, t: _Traffic
) -> Communication:
    """FSDP's CPU offload copies a unit's shard to the GPU before each all-gather: in
    ``pre_unshard`` on the pre-unshard stream (``flat_param_to(device)``), handed to the
    unshard stream with ``record_stream`` and freed once ``_use_unsharded_flat_param``
    drops it, right after the all-gather is issued (torch 2.2-2.13
    torch/distributed/fsdp/_runtime_utils.py ``_unshard``, _flat_param.py
    ``pre_unshard``, ``_all_gather_flat_param``). Sharded strategies only (NO_SHARD
    computes on the copy itself)."""
    if s not in SHARDED_FSDP or par.offload_params != "cpu":
        return comm
    N = par.shard_group
    # with the ends apart, the largest outer unit's copy (each before its own all-gather)
    root = max(t.root, t.head_unit or 0, t.embedding_unit or 0)
    return dataclasses.replace(comm, root_copy=ceil_div(root, N), unit_copy=ceil_div(t.block, N))


def _fsdp_grad_op_gathers(t: _Traffic) -> Communication:
    """SHARD_GRAD_OP: weights gathered once in forward and kept until backward."""
    forward = _gathered_bytes(t.groups, t.cast)
    return Communication(forward, forward + t.head_grad)


# Each strategy's communication memory; the others (one GPU, NO_SHARD) have none.
_COMMUNICATION: dict[str, Callable[[_Traffic], Communication]] = {
    "ddp": _ddp_buckets,
    "zero1": _zero1_buckets,
    "zero2": _zero2_buckets,
    "zero3": _zero3_gathers,
    "fsdp": _fsdp_gathers,
    "fsdp-hybrid": _fsdp_gathers,
    "fsdp-grad-op": _fsdp_grad_op_gathers,
}


def _colossalai_communication(s: Strategy, par: ParallelConfig, t: _Traffic) -> Communication:
    """ColossalAI's reduce buffers. ZeRO: buckets of ``reduce_bucket_size_in_m`` (a larger
    gradient alone), reduced in backward as they fill (overlap_communication=True), or,
    under a pipeline, once at the end (``sync_dp_grads``, hybrid_parallel_plugin.py:
    727-743). Zero stage 0: torch DDP's buckets without a pipeline, in-place all-reduces
    with one (:161-183)."""
    if s == colossalai.HYBRID_AMP:
        return _ddp_buckets(t) if par.pp == 1 else NO_COMMUNICATION
    b = t.compute
    bucket = colossalai.effective_bucket(t.bucket // b, t.groups)
    if par.pp > 1 or par.ep > 1:
        # reduced after backward: the pipeline's sync_dp_grads, or the MoE plugin's
        # overlap_communication=False (moe_hybrid_parallel_plugin.py:211, 227-233)
        return Communication(optimizer=bucket * b)
    stage = colossalai.zero_stage(s)
    return Communication(backward=colossalai.backward_buffers(stage, bucket, par.shard_group, b))


def _stage_gradients(
    s: Strategy, par: ParallelConfig, base: StepSizes, at: _Stage, on: _Resident
) -> tuple[tuple[int, ...], int, int, int]:
    """The stage's gradients over the timeline: per block (sharded like the rest), the
    trained blocks it holds, those outside the blocks, and of these the part created
    only at the end of backward."""
    N = par.shard_group
    g = base.gradients
    L = len(base.activations.per_block)
    trainable_here = max(0, at.hi - max(at.lo, L - g.trainable_blocks))
    by_block = tuple(
        0 if on.grads_block == 0 else (ceil_div(x, N) if s in SHARDS_GRADS else x)
        for x in g.by_block[at.lo : at.hi]
    )
    block_grads = sum(by_block) if by_block else on.grads_block * trainable_here
    grads_outer = max(0, on.grads - block_grads)
    # the part of grads_outer that appears only at the end of backward: the token
    # embedding's (first stage only; sharded like the others, none where gradients
    # leave the GPU); under FSDP all of the root's, which its reduce-scatter creates
    # after the last block (the LM head's unsharded gradient is communication till then),
    # unless the ends are units of their own: the head's shard comes with its backward
    grads_embedding = 0
    if s in FSDP and not par.fsdp_sharded_ends:
        grads_embedding = grads_outer
    elif at.first and on.grads:
        grads_embedding = g.embedding
        if s in SHARDS_GRADS:
            grads_embedding = ceil_div(grads_embedding, N)
    return by_block, trainable_here, grads_outer, min(grads_embedding, grads_outer)


def _stage_sizes(
    s: Strategy,
    par: ParallelConfig,
    run: RunConfig,
    base: StepSizes,
    at: _Stage,
    on: _Resident,
    comm: Communication,
    boundary: int = 0,
    later_below: int = 0,
    first_only: int = 0,
    forward_start: int = 0,
) -> tuple[StepSizes, int]:
    """The stage's timeline inputs, and the micro-batches whose activations it holds:
    its blocks (those one micro-batch runs through at a time), its ends, its resident
    memory. ``boundary``: what each micro-batch in flight holds at the stage's edges;
    ``later_below``: what a later stage's forward holds below its blocks; ``first_only``:
    what of the first stage's below only its own forward builds, not the later chunks'
    an interleaved first device runs; ``forward_start``: the stage's model forward's
    transient before its first block (StepSizes.forward_start)."""
    micro, blocks = _in_flight(par, run, at)
    # (interleaved: the stage's largest chunk stands for all; the first block, whose input
    # needs no gradient, keeps less than the others)
    start = max(
        range(at.lo, at.hi - blocks + 1, blocks),
        key=lambda i: sum(base.activations.per_block[i : i + blocks]),
    )
    acts_blocks = base.activations.per_block[start : start + blocks]
    acts_below = base.activations.below if at.first else later_below
    # an interleaved first device's other chunks are later stages, whose forwards do not
    # build ``first_only``
    others = micro - _first_chunk_in_flight(par, run, micro) if at.first else 0
    by_block, trainable_here, grads_outer, grads_embedding = _stage_gradients(s, par, base, at, on)
    last = at.last
    # the gradients and activations are built whole: a field added to either must say
    # what a rank holds of it; the other records keep what the step had
    sizes = StepSizes(
        weights=on.replicated + on.sharded,
        states=on.states,
        gradients=Gradients(
            total=on.grads,
            outer=grads_outer,
            per_block=on.grads_block,
            trainable_blocks=trainable_here,
            persist=run.grad_accum > 1,
            through_forward=base.gradients.through_forward,
            embedding=grads_embedding,
            tied_backward=base.gradients.tied_backward,
            tied_held=0,  # the optimizer in backward: one GPU only (estimate)
            by_block=by_block,
            embedding_at=base.gradients.embedding_at,
        ),
        activations=Activations(
            acts_blocks,
            below=acts_below,
            above=base.activations.above if last else 0,
            held=(micro - 1) * (sum(acts_blocks) + acts_below)
            - others * first_only
            + micro * boundary,
        ),
        block=dataclasses.replace(base.block, policy=base.block.policy.stage(at.lo, at.hi)),
        head=base.head if last else NO_HEAD,
        optimizer=dataclasses.replace(
            base.optimizer,
            temporaries=on.step_temp,
            tensors=on.step_pieces,
            norm_copy=on.norm_copy,
            side_program=on.side_program,
        ),
        comm=comm if last else comm.blocks_only(),
        teacher_forward=base.teacher_forward,
        forward_start=forward_start,
        vision_backward=base.vision_backward if at.first else 0,
        loop_held=base.loop_held if last else 0,
        empties_cache=base.empties_cache,
        output_held=base.output_held if last else 0,
        # (each rank's blocks return their caches for its own micro-batch)
        block_returns=base.block_returns,
    )
    return sizes, micro


def _in_flight(par: ParallelConfig, run: RunConfig, at: _Stage) -> tuple[int, int]:
    """The micro-batches whose activations a stage holds at once, and the blocks each
    runs through on it. 1F1B: stage k holds up to ``pp - k``. Interleaved (``pp_chunks``
    v > 1; each stage runs v chunks of L/(pp·v) blocks): stage k runs
    ``2(pp − k − 1) + (v − 1)·pp`` chunk forwards before its first backward, then one
    forward and one backward in turn (ColossalAI's interleaved_pp.py:435-441, Megatron's
    schedule alike), so that many plus one are in flight."""
    blocks = at.hi - at.lo
    if par.pp == 1:
        return 1, blocks
    m = run.grad_accum
    v = par.pp_chunks
    if v == 1:
        return min(par.pp - at.index, m), blocks
    warmup = min(2 * (par.pp - at.index - 1) + (v - 1) * par.pp, m * v)
    return warmup + (1 if warmup < m * v else 0), blocks // v


def _first_chunk_in_flight(par: ParallelConfig, run: RunConfig, micro: int) -> int:
    """Of the first device's ``micro`` chunk forwards in flight, those of its first chunk,
    the pipeline's first stage (``is_first_stage``: stage 0 and chunk 0 when interleaved,
    pipeline/stage_manager.py:107-122), whose model forward alone builds ring_attn's
    ColoAttention mask (modeling/llama.py:129-140). 1F1B: all of them. Interleaved:
    forward and backward i run chunk ``(i mod pp·v) // pp`` and ``v − 1 −`` that
    (interleaved_pp.py:118-137), so chunk 0's first backward, backward (v − 1)·pp, comes
    after 2·v·pp − 1 forwards (warmup 2(pp − 1) + (v − 1)·pp, :435-441, then one each
    way), 2·pp of them chunk 0's; the steady state holds no more (m a multiple of pp,
    :88-89)."""
    if par.pp_chunks == 1:
        return micro
    return min(2 * par.pp, run.grad_accum)


def _mask_build_moment(
    arch: Architecture,
    run: RunConfig,
    par: ParallelConfig,
    parts: StepParts,
    at: _Stage,
    build: int,
    kept: int,
) -> int:
    """The stage's moment before its first block (StepSizes.forward_start) where its
    model forward builds ColoAttention's mask: the build (``build``) less the mask the
    stage keeps below its blocks (``kept``, counted there), and on the first stage the
    embeddings' output beside it, the whole sequence until it is split (modeling/
    llama.py:87-88, 145-166); a later stage's received input is its pipeline edge. Under
    ring_attn only the first stage builds one (:129-131)."""
    if not build or (par.sequence_mode == "ring_attn" and not at.first):
        return 0
    if not at.first:
        return build - kept
    hidden = run.batch_size * run.positions * arch.hidden_size * par.cp
    return build - kept + hidden * parts.plan.dtypes.residual_bytes


def _later_stage_rotary(
    arch: Architecture, run: RunConfig, par: ParallelConfig, parts: StepParts
) -> int:
    """The rotary cos and sin a later pipeline stage's blocks hold, as the first stage's
    do (Embedding.rotary_held under checkpointing, rotary_saved without): shardformer's
    pipeline model forward computes ``position_embeddings = self.rotary_emb(...)`` on
    every stage and hands them to every layer (hpcaitech/ColossalAI 4f9953be
    shardformer/modeling/llama.py:181, 196-210; qwen2.py:183, mistral.py:115 alike).
    Their positions: ring_attn's, the stage's received share of the sequence; the other
    modes', the whole sequence (``seq_length *= sp_size``, llama.py:98-99). DeepSpeed's
    pipeline runs the user's layer list: not counted there. 0 without a pipeline."""
    if par.pp == 1 or par.resolved_strategy not in COLOSSALAI:
        return 0
    whole = par.cp if par.sequence_mode not in (None, "ring_attn") else 1
    T = run.batch_size * run.positions * whole
    residual = parts.plan.dtypes.residual_bytes
    if run.grad_ckpt:  # held by the checkpoints, as on the first stage (step._decoder_parts)
        return sum(Embedding.rotary_held(arch, run, T, residual))
    if not any(parts.sizes.activations.per_block):  # (blocks needing no gradient keep none)
        return 0
    return sum(x.nbytes for x in Embedding.rotary_saved(arch, run, T, residual))


def _pipeline_boundary(
    arch: Architecture, run: RunConfig, par: ParallelConfig, parts: StepParts, at: _Stage
) -> int:
    """ColossalAI's pipeline schedules keep each micro-batch's received input and its
    output whole until its backward (``input_objs`` / ``output_objs``,
    pipeline/schedule/one_f_one_b.py:393-410, interleaved_pp.py:468-498; only the
    zero-bubble schedule releases them): one hidden-states tensor per edge of the stage,
    both edges for every chunk of an interleaved one but the first's input and the last's
    output."""
    if par.pp == 1 or par.resolved_strategy not in COLOSSALAI:
        return 0
    T = run.batch_size * run.positions
    hidden = T * arch.hidden_size * parts.plan.dtypes.residual_bytes
    # the received input is the stage's first norm's saved input where that norm keeps
    # its input as it is (LayerNorm; RMSNorm on an fp32 stream): one storage
    own = compiled_layers(run) or profile_of(run).kernel_rms_norm
    shared = Norm.recompute_reuses_input(arch, parts.plan, list(parts.typical_block), T, own)
    received = hidden - shared
    if par.sequence_mode in INSIDE_TP:
        hidden, received = ceil_div(hidden, par.tp), ceil_div(received, par.tp)
    if par.pp_chunks > 1:
        return received + hidden  # (the first chunk's input and the last's output: fewer)
    return (0 if at.first else received) + (0 if at.last else hidden)


def rank_memory(
    arch: Architecture,
    run: RunConfig,
    par: ParallelConfig,
    parts: StepParts,
    stage: int,
    cap: int | None = None,
    mask_build: int = 0,
) -> RankMemory:
    """Memory of the ranks of one pipeline stage (all data-parallel ranks look alike):
    the stage's parameters, sharded by the strategy, less what is offloaded, plus the
    strategy's communication buffers, over the stage's slice of the one-GPU timeline.
    ``mask_build``: what ColoAttention's mask build holds at once, before the first
    block (sequence_parallel.shardformer_mask_build)."""
    s = par.resolved_strategy
    if par.ep > 1 and s == "colossalai-zero2":
        s = "colossalai-zero1"  # moe_hybrid_parallel_plugin.py:227-233
    at = _stage(len(parts.sizes.activations.per_block), par.pp, stage)
    plan = parts.plan
    groups = _stage_groups(parts, arch, stage, par.pp)
    if s == colossalai.GEMINI:
        half = BYTES_PER_ELEMENT[plan.dtypes.compute]
        if par.gemini_placement == "auto":
            on, comm, least = _gemini_auto(par, arch, run, groups, half)
            sizes, micro = _stage_sizes(s, par, run, parts.sizes, at, on, comm)
            sizes, on = _gemini_auto_fill(sizes, on, cap, least)
        else:
            on, comm = _gemini(par, arch, run, groups, half)
            sizes, micro = _stage_sizes(s, par, run, parts.sizes, at, on, comm)
        return RankMemory(stage, sizes, on.sharded, on.replicated, micro, on.host, on.disk)
    totals = _stage_totals(groups, arch, run, plan, _masters(s))
    base = parts.sizes
    if par.ep > 1:
        groups, totals, base = _expert_parallel(groups, arch, run, plan, par.ep, totals, base)
    checks = s == "zero3" and zero3_checks_overflow(run, plan.dtypes.compute)
    on = _sharded(s, par, arch, groups, totals, base.gradients.per_block, checks)
    on, paged = _without_paged(s, run, par, groups, on)
    # the buffers beside the weights (release_buffers): whole on every rank
    extra = stage_buffer_bytes(arch, run, plan, par.pp)
    if extra:
        on = dataclasses.replace(on, replicated=on.replicated + extra)
    communication = _COMMUNICATION.get(s)
    traffic = _traffic(s, par, arch, groups, plan, totals.grads)
    if s in COLOSSALAI:
        comm = _colossalai_communication(s, par, traffic)
    elif s == "zero3" and par.shard_group == 1:
        comm = _zero3_one_rank(traffic)
    else:
        comm = communication(traffic) if communication else NO_COMMUNICATION
    comm = fsdp1_forward(s, run, par, comm, traffic)
    comm = fsdp1_lora_backward(s, run, par, comm, traffic)
    comm = fsdp1_unprefetched(s, run, comm, traffic)
    comm = _host_copies(s, par, comm, traffic)
    on = _offload_optimizer(s, par, on, totals.psi)
    keeps_grads = runs_fsdp1(run, par)
    on = _offload_params(s, par, on, BYTES_PER_ELEMENT[plan.dtypes.compute], keeps_grads)
    if s == "zero2":
        comm = _zero2_second_partition(run, comm, on.grads, traffic)
    if s in LOW_LEVEL_ZERO:
        on = _colossalai_gather_after_step(par, on, traffic)
    policy = on
    on, comm = _with_reference(s, par, arch, run, plan, on, comm)
    base = fsdp1_held_inputs(s, run, base)
    boundary = _pipeline_boundary(arch, run, par, parts, at)
    later, first_only, start = _stage_mask_and_rotary(arch, run, par, parts, at, mask_build)
    sizes, micro = _stage_sizes(s, par, run, base, at, on, comm, boundary, later, first_only, start)
    if run.objective == "grpo":
        sizes = _grpo_before(
            s, par, arch, run, plan, groups, sizes, totals.weights + extra - policy.replicated
        )
    return RankMemory(
        stage=stage,
        sizes=sizes,
        weights_sharded=on.sharded,
        weights_replicated=on.replicated,
        micro_batches=micro,
        host_bytes=on.host,
        disk_bytes=on.disk,
        paged_bytes=paged,
    )


def _without_paged(
    s: Strategy, run: RunConfig, par: ParallelConfig, groups: Iterable[TensorGroup], on: _Resident
) -> tuple[_Resident, int]:
    """The rank's states less bitsandbytes' paged buffers (not the allocator's), and
    those buffers' bytes (ftmem.paged_ranks)."""
    hands = paged_hands(s, run, par)
    paged = rank_paged_bytes(groups, run, hands, par.shard_group) if hands else 0
    return dataclasses.replace(on, states=on.states - paged), paged


def paging_unmodelled(s: Strategy, par: ParallelConfig) -> bool:
    """Expert parallelism (ColossalAI's MoE plugin, whose experts' ZeRO runs over their
    own moe_dp group): its paged optimizer states are counted in the allocator, as
    non-paged ones (gpu.managed.PAGED_PARALLEL_NOTE). (GeminiPlugin steps its own Adams
    only: a bitsandbytes optimizer is refused there, colossalai.check_run.)"""
    return par.ep > 1


def paged_hands(s: Strategy, run: RunConfig, par: ParallelConfig) -> Hands | None:
    """What the strategy hands a paged optimizer (ftmem.paged_ranks), or None where
    ftmem does not model its paging (expert parallelism) or the states sit in host RAM
    (offloaded: bitsandbytes pages no CPU tensor). FSDP2 with a bitsandbytes optimizer
    is refused (paged_ranks.check_fsdp2), and so is ZeRO-Offload with one unless
    zero_force_ds_cpu_optimizer is off (paged_ranks.check_zero_offload).

    Tensor and pipeline parallelism leave each rank plain local tensors (the groups here
    are already the rank's: a TP slice of each split weight, its stage's blocks), which
    each engine hands on as it does without them: DDP whole, ZeRO in one flat partition
    over the data-parallel ranks. ColossalAI: LowLevelZeroOptimizer (colossalai-zero1/2,
    HybridParallelPlugin's ZeRO too) hands the optimizer each trainable tensor's padded
    1/N piece as its fp32 master (zero/low_level/low_level_optim.py:263-299, put in the
    optimizer's param_groups for the step, :580-588): ``shards``; colossalai-3d's
    MixedPrecisionOptimizer an fp32 master of each whole local tensor
    (amp/naive_amp/mixed_precision_optimizer.py:76-86): ``whole``
    (hpcaitech/ColossalAI@4f9953be335e)."""
    if s in FSDP and not runs_fsdp1(run, par):
        check_fsdp2(run)
    if s in DEEPSPEED and par.offload_optimizer != "none":
        check_zero_offload(run, par.zero_force_ds_cpu_optimizer)
    offloaded = par.offload_optimizer != "none" or (s in FSDP and par.offload_params != "none")
    if paging_unmodelled(s, par) or offloaded:
        return None
    if s in DEEPSPEED:
        return "flat"
    return "shards" if s in SHARDED_FSDP or s in LOW_LEVEL_ZERO else "whole"


def _stage_mask_and_rotary(
    arch: Architecture,
    run: RunConfig,
    par: ParallelConfig,
    parts: StepParts,
    at: _Stage,
    mask_build: int,
) -> tuple[int, int, int]:
    """What a pipeline stage holds beside its blocks for ColoAttention's mask and the
    rotary tables: (later stages' bytes, the first stage's only, the mask build's
    moment). Every stage's model forward builds the mask (under ring_attn the first
    stage's only: later ones prepare a varlen batch, modeling/llama.py:129-131); the
    first stage's is in the step's activations below the blocks."""
    e = BYTES_PER_ELEMENT[parts.plan.dtypes.compute]
    kept = coloattention_mask_bytes(arch, run.batch_size, e) if run.grad_ckpt else 0
    ring = par.sequence_mode == "ring_attn"
    later, first_only = (0, kept) if ring else (kept, 0)
    later += _later_stage_rotary(arch, run, par, parts)
    start = _mask_build_moment(arch, run, par, parts, at, mask_build, kept)
    return later, first_only, start


# peft's LoRA methods (a LoraConfig): HF Trainer under FSDP sets peft's auto-wrap policy
# (transformers 4.48.1 trainer.py:5131-5138 _fsdp_qlora_plugin_updates), whose lambda
# policy makes every leaf module with a trainable weight a unit of its own (peft 0.13.2
# utils/other.py:510-517 fsdp_auto_wrap_policy): each decoder layer's unit is left with
# frozen weights only
_FROZEN_UNIT_METHODS = frozenset({"lora", "rslora", "qlora", "dora"})


def fsdp1_held_inputs(s: Strategy, run: RunConfig, base: StepSizes) -> StepSizes:
    """FSDP1 with frozen decoder units under a reentrant checkpoint around each unit
    (versions.checkpoint_wraps_decoder_unit): each block's input and its gradient stay
    until backward ends.

    A unit whose FlatParameter needs no gradient gets a reshard-only hook in its
    pre-forward, registered only with grad enabled: register_multi_grad_hook over the
    forward's inputs that require grad (torch 2.4.1 distributed/fsdp/_runtime_utils.py
    :401, :1461-1504; the same at 2.13). The checkpoint's forward runs without grad, so
    it registers in the recompute, on ``detach_variable``'s leaf copy of the saved input
    (utils/checkpoint.py:79-80, :290, :314-317). The hook keeps that leaf's AccumulateGrad
    (autograd/graph.py:159-164 _get_grad_fn_or_grad_acc, :469-500), which holds the
    leaf, which holds its .grad (the input's gradient the checkpoint hands down); the
    handle lives on ``flat_param._post_backward_hook_state`` until _finalize_params in
    the final callback removes it. Measured on 2 gloo ranks at torch 2.4.1 and 2.13
    (tests/test_fsdp1_held_inputs.py): each frozen unit's _finalize_params frees its
    input and its input's gradient (the lowest unit's input only)."""
    policy = base.block.policy
    if (
        s not in FSDP
        or run.method not in _FROZEN_UNIT_METHODS
        or not isinstance(policy, Checkpointed)
        or not profile_of(run).checkpoints_in_transformers_loop
        or not checkpoint_wraps_decoder_unit(run)
    ):
        return base
    held = dataclasses.replace(policy, held=base.activations.per_block)
    return dataclasses.replace(base, block=dataclasses.replace(base.block, policy=held))


def _experts_split(
    groups: tuple[TensorGroup, ...], arch: Architecture, ep: int
) -> tuple[TensorGroup, ...]:
    """The groups one expert-parallel rank keeps: ``num_experts / ep`` of each expert
    tensor (shardformer/modeling/mixtral.py:77-84); the router and the rest whole."""
    names = tuple(v for k, v in arch.traits.names.experts.items() if k != "router")
    return tuple(
        dataclasses.replace(g, shape=(g.shape[0] // ep, *g.shape[1:]))
        if g.name.startswith(names) and g.shape[:1] == (arch.num_experts,)
        else g
        for g in groups
    )


def _expert_parallel(
    groups: tuple[TensorGroup, ...],
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    ep: int,
    totals: _StageTotals,
    base: StepSizes,
) -> tuple[tuple[TensorGroup, ...], _StageTotals, StepSizes]:
    """ColossalAI's MoeHybridParallelPlugin: a rank's weights and gradients hold its
    experts only; its ZeRO shards the expert tensors over the dp / ep ranks holding the
    same experts (moe_hybrid_parallel_plugin.py:67-75, 262-269), so its optimizer shard is
    the whole model's over dp, as without expert parallelism. The blocks' gradients in
    the timeline shrink as the experts do; activations stay (tokens balanced over the
    experts: a rank computes as many expert rows as before, for others' tokens)."""
    local = _experts_split(groups, arch, ep)
    mine = _stage_totals(local, arch, run, plan, "colossalai-zero")
    totals = dataclasses.replace(totals, weights=mine.weights, grads=mine.grads)
    full_block = _grad_bytes(g for g in _one_block(groups, arch) if g.trainable)
    local_block = _grad_bytes(g for g in _one_block(local, arch) if g.trainable)
    g = base.gradients
    if full_block:
        g = dataclasses.replace(
            g,
            per_block=g.per_block * local_block // full_block,
            by_block=tuple(x * local_block // full_block for x in g.by_block),
        )
    return local, totals, dataclasses.replace(base, gradients=g)


# DeepSpeed's own stage-3 default (zero/config.py: stage3_param_persistence_threshold 1e5):
# TRL's reference engine keeps it, its 'auto' keys being written dotted at the top level
# where DeepSpeed does not read them (trl/models/utils.py@f2cd57710ae3 prepare_deepspeed)
DS_DEFAULT_PERSISTENCE = 10**5


def _with_reference(
    s: Strategy,
    par: ParallelConfig,
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    on: _Resident,
    comm: Communication,
) -> tuple[_Resident, Communication]:
    """A preference objective's frozen reference copy on each rank, as TRL prepares it
    (trl/models/utils.py@f2cd57710ae3): DDP, ZeRO-1/2 (prepare_deepspeed runs it as a
    stage-0 engine) and ColossalAI (ColossalChat boosts it with HybridParallelPlugin, no
    optimizer) keep it whole; ZeRO-3 shards it and gathers its blocks in its forward;
    FSDP shards it with ``fully_shard`` on the root alone (prepare_fsdp), so its forward
    gathers all of it (torchtune's recipes shard it per block, as the policy)."""
    ref = reference_weights(plan, run)
    if not ref:
        return on, comm
    if s not in SHARDS_WEIGHTS or s == colossalai.GEMINI:
        return dataclasses.replace(on, replicated=on.replicated + ref), comm
    n = par.shard_group
    block = _gathered_bytes(_one_block(plan.groups, arch))
    persistent, gathered = 0, ref
    if s == "zero3":
        persistent = sum(g.nbytes for g in plan.groups if g.numel < DS_DEFAULT_PERSISTENCE)
        gathered = BLOCKS_IN_FLIGHT * block
    elif run.framework == "torchtune":
        gathered = BLOCKS_IN_FLIGHT * block
    on = dataclasses.replace(
        on,
        replicated=on.replicated + persistent,
        sharded=on.sharded + ceil_div(ref - persistent, n),
    )
    if run.objective == "grpo":  # its forward runs before the step's (_grpo_gathered)
        return on, comm
    at_head = comm.forward if comm.head_forward is None else comm.head_forward
    return on, dataclasses.replace(comm, head_forward=at_head + gathered)


def _reference_gathered(s: Strategy, arch: Architecture, run: RunConfig, plan: MethodPlan) -> int:
    """What a sharded rank gathers of the frozen reference copy for its forward beyond
    the policy's blocks (_with_reference): two blocks under ZeRO-3 and torchtune, all of
    it under FSDP as TRL wraps it."""
    ref = reference_weights(plan, run)
    if not ref or s not in SHARDS_WEIGHTS or s == colossalai.GEMINI:
        return 0
    if s == "zero3" or run.framework == "torchtune":
        return BLOCKS_IN_FLIGHT * _gathered_bytes(_one_block(plan.groups, arch))
    return ref


def _grpo_before(
    s: Strategy,
    par: ParallelConfig,
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    groups: tuple[TensorGroup, ...],
    sizes: StepSizes,
    sharded: int,
) -> StepSizes:
    """GRPO's moment before the training forward on a rank (grpo.before_moment): where
    the weights are sharded, what it gathers is its own communication, not the forward's
    blocks."""
    if s not in SHARDS_WEIGHTS:
        before = grpo.before_moment(arch, run, plan, sizes.gradients)
        return dataclasses.replace(sizes, teacher_forward=before.transient)
    gathered = _grpo_gathered(s, par, arch, run, plan, groups, sharded, sizes.comm.forward)
    before = grpo.before_moment(arch, run, plan, sizes.gradients, gathered)
    return dataclasses.replace(
        sizes,
        teacher_forward=before.transient,
        before_requests=before.requests,
        comm=dataclasses.replace(sizes.comm, before=before.gathered),
    )


def _grpo_gathered(
    s: Strategy,
    par: ParallelConfig,
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    groups: tuple[TensorGroup, ...],
    sharded: int,
    forward: int,
) -> grpo.Gathered:
    """What a ZeRO-3 or FSDP rank gathers for GRPO's moment before the training forward
    (huggingface/trl @f2cd57710ae3):

    - generate() (grpo_trainer.py _generate_single_turn, unwrap_model_for_generation in
      models/utils.py): ZeRO-3 gathers every parameter at once
      (``ds3_gather_for_generation``, True by default: deepspeed.zero.GatheredParameters
      over model.parameters(), the hooks removed): each parameter it shards
      (``sharded`` bytes in all) comes whole, one request each. Set false, the model
      keeps DeepSpeed's hooks (models/utils.py ``if not gather_deepspeed3_params: yield
      accelerator.unwrap_model(model)``), so each decoding step is a forward through
      them: each module's parameters fetched before its forward and released after it,
      the next ones prefetched (deepspeedai/DeepSpeed@v0.19.5
      deepspeed/runtime/zero/partitioned_param_coordinator.py fetch_sub_module,
      release_sub_module): what the training forward gathers (``forward``). FSDP
      generates through its hooks too (``forward``);
    - the no_grad forwards after it: the reference copy's (_reference_gathered), or the
      policy's through its hooks (old log-probabilities; the reference as the policy
      with its adapter disabled);
    - with vLLM, the weights' sync (generation/vllm_generation.py sync_weights): under
      ZeRO-3 a peft model is gathered whole to merge its adapters; otherwise one
      parameter at a time (the largest is charged); under FSDP one unit at a time
      (_fsdp_sync)."""
    if run.framework == "torchtune":
        # torchtune's recipe (ftmem.torchtune_grpo): the policy stays gathered from
        # generation on (reshard_after_forward=False), the reference gathers its own
        # layers beside it
        return grpo.Gathered(generation=forward, reference=_reference_gathered(s, arch, run, plan))
    reference = max(_reference_gathered(s, arch, run, plan), forward)
    largest = max((g.nbytes // g.count for g in groups), default=0)
    if s != "zero3":
        sync = _fsdp_sync(arch, groups) if s in FSDP else largest
        return grpo.Gathered(generation=forward, reference=reference, sync=sync)
    threshold = par.buckets(arch)[2]  # the tensors under it stay whole (_sharded)
    whole = run.vllm is None or not trains_own_weights(run)
    one_by_one = tuple(
        size for g in groups if g.numel >= threshold for size in (g.nbytes // g.count,) * g.count
    )
    if run.vllm is None and not run.gathers_for_generation:
        return grpo.Gathered(generation=forward, reference=reference)
    return grpo.Gathered(
        generation=sharded,
        reference=reference,
        sync=sharded if whole else largest,
        one_by_one=one_by_one if whole else (),
    )


def _fsdp_sync(arch: Architecture, groups: tuple[TensorGroup, ...]) -> int:
    """What an FSDP rank gathers at once to push the policy's weights to vLLM. FSDP1
    (what ``--emit fsdp`` writes, fsdp_version 1): trl 1.16.0
    trl/generation/vllm_generation.py:385-405 ``_iter_fsdp1_params`` walks the FSDP units
    in post-order and reads each unit's own parameters under
    ``FSDP.summon_full_params(module, recurse=False, writeback=False)``, released before
    the next unit: one unit whole at a time, the largest charged, a block or the root
    (the embeddings, final norm and LM head); in the dtype they are stored in, not
    MixedPrecision's (torch 2.13 torch/distributed/fsdp/_flat_param.py:2701
    ``_force_full_precision`` in the SUMMON_FULL_PARAMS state). The same with PEFT:
    ``gather_params`` is a no-op under FSDP (:447). FSDP2 (:407-425
    ``_iter_fsdp2_params``, ``param.full_tensor()``) gathers one parameter at a time,
    less: the unit is the safe side."""
    outer = [g for g in groups if not g.in_block]
    return max(_gathered_bytes(outer), _gathered_bytes(_one_block(groups, arch)))


def _gemini_layout(
    par: ParallelConfig,
    arch: Architecture,
    run: RunConfig,
    groups: tuple[TensorGroup, ...],
    half: int,
    **placement: Any,
) -> GeminiRank:
    """GeminiPlugin's chunks over the run's ZeRO group (ftmem.gemini)."""
    from ftmem.gemini import gemini_rank  # only GeminiPlugin runs need it (CLI start-up)

    accumulation = run.grad_accum > 1  # enable_gradient_accumulation
    return gemini_rank(
        groups, arch, arch.num_layers, par.shard_group, half, accumulation=accumulation, **placement
    )


def _gemini(
    par: ParallelConfig,
    arch: Architecture,
    run: RunConfig,
    groups: tuple[TensorGroup, ...],
    half: int,
) -> tuple[_Resident, Communication]:
    """GeminiPlugin's chunks (ftmem.gemini): sharded 16-bit chunks that also take the
    reduced gradients, sharded fp32 masters and Adam states, frozen tensors whole; the
    chunks gathered at each moment are its communication. The embedding's chunk, gathered
    at the very end of backward, is charged at the head's backward (an upper bound)."""
    g = _gemini_layout(
        par,
        arch,
        run,
        groups,
        half,
        optim_frac=par.optim_frac,
        offload_params=par.offload_params == "cpu",
        shard_frac=par.gemini_shard_param_frac,
    )
    on = _Resident(
        replicated=g.replicated,
        sharded=g.shards,
        grads=g.grads,
        grads_block=0,
        states=g.masters + g.states,
        step_temp=0,  # one fused multi_tensor_adam call (hybrid_adam.py:161-189)
        host=g.host_pinned + g.host_unpinned,
    )
    comm = Communication(
        forward=g.gathered_forward + g.access_transient,
        backward=g.gathered_backward + g.block_backward,
        head_forward=g.gathered_head + g.access_transient,
        loss_backward=g.gathered_head + g.head_backward,
        head_backward=max(g.gathered_head, g.gathered_outer),
    )
    return on, comm


# GeminiPlugin(placement_policy="auto"): model data may take, at each op, 0.9 × the
# device's memory less the non-model memory its warm-up step measured there
# (steady_cuda_cap_ratio=0.9, zero/gemini/placement_policy.py:182-186; the cap is
# total_memory × _GLOBAL_CUDA_MEM_FRACTION, 1.0 unless set, legacy/utils/memory.py:100-118)
GEMINI_STEADY_CAP = 0.9


def _gemini_auto(
    par: ParallelConfig,
    arch: Architecture,
    run: RunConfig,
    groups: tuple[TensorGroup, ...],
    half: int,
) -> tuple[_Resident, Communication, int]:
    """Auto placement puts every chunk's gradients, masters and Adam states on the host
    (setup_grads_device, policy:224-234) and gathers 16-bit chunks onto the GPU as ops
    need them, releasing them only under pressure: as an upper bound, every chunk whole.
    Also returns the least it needs on the GPU: one op's chunks."""
    g = _gemini_layout(par, arch, run, groups, half, optim_frac=1.0)
    on = _Resident(
        replicated=g.replicated,
        sharded=g.chunk_elements * half,
        grads=0,
        grads_block=0,
        states=0,
        step_temp=0,
        host=g.host_pinned + g.host_unpinned,
    )
    # nothing is gathered in flight; the gradient autograd hands the hook and its copy
    comm = Communication(
        backward=g.block_backward, loss_backward=g.head_backward, head_backward=g.head_backward
    )
    return on, comm, max(g.gathered_forward, g.gathered_head)


def _gemini_auto_fill(
    sizes: StepSizes, on: _Resident, cap: int | None, least: int
) -> tuple[StepSizes, _Resident]:
    """The chunks auto placement keeps on the GPU: all of them where the step's peak
    without them leaves room under 0.9 × the device, else as many as that room holds
    (never fewer than one op's). Without a device size, all of them."""
    if cap is None:
        return sizes, on
    without = find_peak(dataclasses.replace(sizes, weights=on.replicated)).at_peak.total
    room = int(GEMINI_STEADY_CAP * cap) - without
    chunks = min(on.sharded, max(room, least))
    on = dataclasses.replace(on, sharded=chunks)
    return dataclasses.replace(sizes, weights=on.replicated + chunks), on


def _colossalai_gather_after_step(par: ParallelConfig, on: _Resident, t: _Traffic) -> _Resident:
    """ColossalAI's ZeRO gathers the updated 16-bit shards after the step, once its fp32
    gradient copies are freed and while the 16-bit ones stay: the larger of the two
    moments (the gather stays on the GPU when the optimizer is on the host)."""
    gather = colossalai.gather_after_step(
        t.groups, t.bucket // t.compute, par.shard_group, t.compute
    )
    return dataclasses.replace(on, step_temp=max(on.step_temp, gather))


@dataclasses.dataclass(frozen=True, slots=True)
class ParallelStep:
    """The per-rank memories of a parallel run, and which rank holds the most."""

    ranks: tuple[RankMemory, ...]  # one per pipeline stage
    peaks: tuple[int, ...]
    worst: int  # index into ranks
    peak: Peak  # the worst rank's timeline
    parts: StepParts  # the local (tensor/context-sliced) step
    run: RunConfig  # the run as the engine executes it
    arch: Architecture  # the tensor-parallel slice


@lru_cache(maxsize=256)
def shared_step_parts(
    arch: Architecture, run: RunConfig, split: SequenceSplit | None = None
) -> StepParts:
    """step_parts per (architecture, run), both compared by value: a sweep over
    strategies and GPU counts derives every layout from the same step (building it again
    was most of a multi-GPU estimate). Safe: StepParts is frozen, built of tuples and
    frozen dataclasses, and depends on these two arguments only; errors are not cached.
    (One-GPU estimates do not use it: a sweep there is a new run each time, and the
    misses, holding a thousand steps alive, measured slower.)"""
    return step_parts(arch, run, split=split)


def _fsdp_mixed(arch: Architecture, run: RunConfig, stored: StepParts) -> StepParts:
    """FSDP's MixedPrecision: fp32 shards, 16-bit gathered weights for compute.

    The blocks compute on 16-bit weights (autocast has nothing left to cast), every peft
    method's adapters too (``param_dtype`` is every flat parameter's compute dtype), so the
    activations are those of the 16-bit run with 16-bit adapters (engine_cast.sixteen_bit);
    weights, gradients and optimizer states keep the fp32 sizes of the stored shards.
    """
    engine_cast.check_fsdp_mixed(run)
    compute = shared_step_parts(arch, run.model_copy(update=engine_cast.sixteen_bit(run)))
    s, c = stored.sizes, compute.sizes
    sizes = dataclasses.replace(
        c,
        weights=s.weights,
        states=s.states,
        gradients=dataclasses.replace(
            c.gradients,
            total=s.gradients.total,
            outer=s.gradients.outer,
            per_block=s.gradients.per_block,
        ),
        optimizer=dataclasses.replace(c.optimizer, temporaries=s.optimizer.temporaries),
    )
    activations = compute.activations
    return dataclasses.replace(compute, plan=stored.plan, sizes=sizes, activations=activations)


def _check_engine_precision(arch: Architecture, run: RunConfig, par: ParallelConfig) -> None:
    """An encoder-decoder in fp16 under an engine that runs the whole model in fp16
    (DeepSpeed's fp16 mode; FSDP's MixedPrecision for fp16-mixed): the pure-fp16 T5 that
    ftmem refuses on one GPU, though the user asked for a mixed run."""
    s = par.resolved_strategy
    if not arch.encoder_decoder or not run.precision.startswith("fp16"):
        return
    if resolve_dtypes(run).base == "fp16" and not run.uses_autocast:
        return  # pure fp16 already: the one-GPU refusal says why
    if s in SIXTEEN_BIT_ENGINES or (s in FSDP and run.precision == "fp16-mixed"):
        engine = (
            "DeepSpeed's fp16 mode"
            if s in DEEPSPEED
            else "ColossalAI's fp16 precision"
            if s in COLOSSALAI
            else "FSDP's MixedPrecision"
        )
        raise InvalidInputError(
            f"{arch.name} is an encoder-decoder: {engine} runs the whole model in fp16, a "
            f"T5 regime ftmem does not model; use --precision bf16-mixed or fp32 with {s}."
        )


def parallel_step(
    arch: Architecture, run: RunConfig, par: ParallelConfig, cap: int | None = None
) -> ParallelStep:
    """Every rank's memory; ``cap``: the device's memory, which Gemini's auto placement
    fills up to a share of."""
    check_layout(arch, run, par)
    _check_engine_precision(arch, run, par)
    split, shardformer = None, False
    if par.resolved_strategy in COLOSSALAI:
        colossalai.check_run(
            run, par.resolved_strategy, par.tp, par.model_parallel, arch.encoder_decoder
        )
        split = _sequence_split(arch, run, par)
        shardformer = _runs_shardformer(par)
    pad = colossalai.VOCAB_MULTIPLE if par.resolved_strategy in COLOSSALAI else VOCAB_PAD
    local = local_arch(arch, par.tp, pad)
    if shardformer and shardformer_repeats_kv(
        arch, run.attn == "flash", par.sequence_mode, par.tp, par.cp
    ):
        local = local.model_copy(update={"kv_repeated": True})
    mask = shardformer_mask_positions(arch, run, par.sequence_mode, par.pp)
    if shardformer and mask:
        # (ring_attn's first stage: ``invert=(sp_mode != "ring_attn")``, modeling/llama.py:140)
        uninverted = par.sequence_mode == "ring_attn"
        local = local.model_copy(
            update={
                "coloattention_mask_positions": mask,
                "coloattention_mask_uninverted": uninverted,
            }
        )
    lrun = engine_run(run, par)
    if shardformer and shardformer_runs_eager(arch, run.attn == "flash", par.sequence_mode):
        lrun = lrun.model_copy(update={"attn": "eager"})
    parts = shared_step_parts(local, lrun, split)
    if par.resolved_strategy in FSDP and lrun.precision.endswith("-mixed"):
        parts = _fsdp_mixed(local, lrun, parts)
    if par.sequence_mode == "ring_attn":
        parts = _ring_attention(local, lrun, parts, par.cp)
    if par.pp_chunks > 1 and parts.plan.trainable_blocks not in (0, arch.num_layers):
        # (each stage's chunks are blocks pp apart: a stage of unlike blocks is not the
        # contiguous one ftmem lays out)
        raise InvalidInputError(
            "ftmem models the interleaved schedule for runs whose blocks all train alike; "
            f"--method {run.method} here trains some blocks only: use --pp-chunks 1."
        )
    build = 0
    if shardformer:
        e = BYTES_PER_ELEMENT[parts.plan.dtypes.compute]
        build = shardformer_mask_build(arch, run, par.sequence_mode, par.pp, e)
    ranks = tuple(rank_memory(local, lrun, par, parts, k, cap, build) for k in range(par.pp))
    timelines = [find_peak(r.sizes) for r in ranks]
    peaks = tuple(t.at_peak.total for t in timelines)
    worst = max(range(len(peaks)), key=lambda k: (peaks[k], -k))
    return ParallelStep(ranks, peaks, worst, timelines[worst], parts, lrun, local)


def _sequence_split(
    arch: Architecture, run: RunConfig, par: ParallelConfig
) -> SequenceSplit | None:
    """ColossalAI's shardformer policy for the model, and the split_gather / ring split."""
    check_policy(arch, _runs_shardformer(par), par.sequence_mode, par.pp)
    if par.sequence_mode == "ring_attn" and batch_padding(run) == "packed":
        # hpcaitech/ColossalAI 4f9953be modeling/llama.py l.129-131, 153: RingAttention's
        # varlen batch and zigzag split read attention_mask, which a flattened batch lacks
        raise InvalidInputError(
            "ColossalAI's ring_attn reads each batch's attention_mask, which --padding packed "
            "does not give (a flattened batch has position_ids only): use --padding none."
        )
    if par.sequence_mode not in INSIDE_TP:
        return None
    if run.seq_len % par.tp:
        raise InvalidInputError(
            f"--sp-mode {par.sequence_mode} splits each sequence evenly over the {par.tp} TP "
            f"ranks: --seq-len {run.seq_len} must be a multiple of {par.tp}."
        )
    return SequenceSplit(par.tp)


def _runs_shardformer(par: ParallelConfig) -> bool:
    """The plugin shards the model with shardformer's policy: HybridParallelPlugin (and
    the MoE one) always, GeminiPlugin with tensor parallelism (gemini_plugin.py:675-677),
    LowLevelZeroPlugin never."""
    s = par.resolved_strategy
    return s == colossalai.HYBRID_AMP or par.model_parallel > 1 or par.ep > 1


def _ring_attention(arch: Architecture, run: RunConfig, parts: StepParts, ranks: int) -> StepParts:
    """ring_attn: RingAttention's buffers beside a block's forward and backward; in
    backward, with what any attention's backward holds beside them (the gradients
    arriving and the block's made by then), in place of the fused kernel's moment."""
    e = BYTES_PER_ELEMENT[parts.plan.dtypes.compute]
    T = run.batch_size * run.positions
    block = parts.sizes.block
    ring = ring_attention_backward(arch, e, T, run.batch_size, ranks)
    if not run.activation_offload:  # (offload's own moment: step._decoder_block)
        ring += attention_backward_beside(arch, run, parts.plan, parts.typical_block, e, T)
    made = attention_gradients_made(arch, run, parts.plan)
    besides = block.workspace if block.without_kernel is None else block.without_kernel
    block = dataclasses.replace(
        block,
        forward=max(block.forward, ring_attention_forward(arch, e, T)),
        workspace=max(besides, ring),
        workspace_grads=moment_grads(besides, ring, made),
        without_kernel=None,
    )
    return dataclasses.replace(parts, sizes=dataclasses.replace(parts.sizes, block=block))


def parallel_notes(
    arch: Architecture, run: RunConfig, par: ParallelConfig, step: ParallelStep
) -> list[str]:
    """What the per-GPU numbers assume, in the words a user would check."""
    s = par.resolved_strategy
    notes: list[str] = []
    if s in DEEPSPEED:
        if run.precision == "fp32":
            notes.append(
                "DeepSpeed in fp32: weights and gradients fp32, the optimizer keeps its "
                "states only (no master copy)."
            )
        else:
            notes.append(
                "DeepSpeed's 16-bit mode: weights and gradients 16-bit (adapters too), the "
                "optimizer keeps fp32 master weights and fp32 states (Adam: 12 bytes per "
                "trainable parameter, ZeRO paper's K = 12)."
            )
    if s in DEEPSPEED and par.offload_optimizer != "none":
        notes += zero_offload_notes(run, par.zero_force_ds_cpu_optimizer)
    if s == "zero3":
        threshold = PERSISTENCE_FACTOR * arch.hidden_size
        notes.append(
            f"ZeRO-3 keeps tensors under {threshold:,} elements (10 × hidden, HF's 'auto' "
            "stage3_param_persistence_threshold) whole on every GPU and gathers one block at "
            "a time plus the prefetched next."
        )
    if s in ("fsdp", "fsdp-hybrid") and par.fsdp_sharded_ends:
        notes.append(
            "FSDP wraps each decoder block, the token embedding and the LM head as units "
            "of their own (torchtune's custom_sharded_layers); only the root's final norm "
            "stays gathered, the head is gathered at the logits and through its backward."
        )
    elif s in ("fsdp", "fsdp-hybrid"):
        notes.append(
            "FSDP wraps each decoder block as a unit; the root unit (embeddings, final norm, "
            "LM head) stays gathered through forward and backward."
        )
    if s in ("fsdp", "fsdp-hybrid"):
        notes += mllama_step.fsdp_root_notes(arch, run)
    if s == "ddp":
        notes.append(
            "torch DDP keeps gradient buckets as large as the gradients "
            "(gradient_as_bucket_view=True would save them)."
        )
    if s in COLOSSALAI:
        offload = par.offload_optimizer != "none"
        notes += colossalai.notes(s, par.model_parallel, par.pp, par.ep, offload)
    if step.run.attn == "eager" and run.attn != "eager":
        notes.append(
            f"ColossalAI's {arch.family} attention under sequence parallelism without "
            "enable_flash_attention computes the scores with eager matmuls (b·heads·s² "
            "each), whatever --attn says: estimated so; --attn flash switches the "
            "plugin's flash attention on."
        )
    notes += _model_parallel_notes(arch, run, par, step)
    if run.objective == "grpo" and s in SHARDS_WEIGHTS:
        notes.append(_grpo_gathering_note(s, run))
    if run.method == "qlora" and s in SHARDS_WEIGHTS:
        notes.append(
            "QLoRA with sharded weights needs the 4-bit storage in a float dtype "
            "(bnb_4bit_quant_storage) so FSDP/ZeRO-3 can flatten it; the shards are of the "
            "4-bit storage."
        )
    return notes


def _grpo_gathering_note(s: Strategy, run: RunConfig) -> str:
    """What a sharded rank gathers around GRPO's generation (_grpo_gathered)."""
    if run.framework == "torchtune":  # ftmem.torchtune_grpo
        return (
            "GRPO (torchtune's recipe) under FSDP2: the policy's reshard_after_forward=False "
            "keeps every parameter gathered from generation's first forward until the "
            "training step's backward; the reference gathers each layer as it runs."
        )
    if run.vllm is not None:
        if s in FSDP:
            sync = (
                "one FSDP unit at a time in its stored dtype (summon_full_params, "
                "recurse=False: a block, or the root's embeddings, final norm and LM head)"
            )
        elif s == "zero3" and not trains_own_weights(run):
            sync = "the policy gathered whole to merge its adapters"
        else:
            sync = "one parameter at a time"
        return f"GRPO on sharded weights: each sync of the weights to vLLM gathers {sync}."
    if s == "zero3" and not run.gathers_for_generation:
        return (
            "GRPO under ZeRO-3 with ds3_gather_for_generation false: generate() runs through "
            "DeepSpeed's hooks, each decoding step gathering every module's parameters "
            "before its forward and releasing them after it, the next ones prefetched "
            "(stage3_prefetch_bucket_size, within stage3_max_live_parameters): estimated as "
            "the training forward's gathering (two blocks), the whole policy all-gathered "
            "once per generated token. Parameters DeepSpeed's recorded trace reuses within "
            "stage3_max_reuse_distance (1e9 elements by default) stay gathered between "
            "modules; not counted."
        )
    if s == "zero3":
        return (
            "GRPO under ZeRO-3: generate() runs with every parameter gathered whole "
            "(TRL's ds3_gather_for_generation, true by default; false generates through "
            "DeepSpeed's hooks, module by module)."
        )
    return "GRPO under FSDP: generate() gathers through FSDP's hooks, as a forward does."


def _model_parallel_notes(
    arch: Architecture, run: RunConfig, par: ParallelConfig, step: ParallelStep
) -> list[str]:
    """Tensor, pipeline and context (sequence) parallelism, as estimated."""
    s = par.resolved_strategy
    notes: list[str] = []
    mode = par.sequence_mode
    if par.tp > 1:
        notes.append(
            f"Tensor parallel {par.tp} as Megatron splits it: heads, MLP width and the "
            f"vocabulary ({step.arch.vocab_size:,} rows per rank, padded); norms and "
            "row-parallel biases replicated; "
            + (
                f"sequence parallelism ({mode}) splits the norm and residual activations over "
                "the TP ranks, and each column-parallel linear keeps its gathered input beside "
                "its shard (one whole copy per q, k, v, gate and up)."
                if mode in INSIDE_TP
                else "without sequence parallelism the norm and residual activations are "
                "replicated too."
            )
        )
    if par.pp > 1 and par.pp_chunks > 1:
        stage, v = step.ranks[step.worst], par.pp_chunks
        notes.append(
            f"Pipeline {par.pp} stages of {v} interleaved chunks of "
            f"{arch.num_layers // (par.pp * v)} blocks: stage k holds up to "
            f"2({par.pp} - k - 1) + {(v - 1) * par.pp} + 1 chunk micro-batches; the largest is "
            f"stage {stage.stage} with {stage.micro_batches}."
        )
    elif par.pp > 1:
        stage = step.ranks[step.worst]
        notes.append(
            f"Pipeline {par.pp} stages of {arch.num_layers // par.pp} blocks, 1F1B: stage k "
            f"holds up to {par.pp} - k micro-batches; the largest is stage {stage.stage} with "
            f"{stage.micro_batches}."
        )
    if par.pp > 1 and run.grad_accum < par.pp:
        notes.append(
            f"--grad-accum {run.grad_accum} gives fewer micro-batches than the "
            f"{par.pp} stages: most of the pipeline idles (raise --grad-accum)."
        )
    if par.pp > 1 and s in COLOSSALAI:
        notes.append(
            "ColossalAI's pipeline keeps each micro-batch's received input and its output "
            "until its backward (input_objs, output_objs)."
        )
    if par.cp > 1:
        held = f"each rank holds {run.seq_len // par.cp:,} of the {run.seq_len:,} tokens"
        if mode == "all_to_all":
            notes.append(
                f"ColossalAI's all_to_all sequence parallelism over {par.cp} ranks: {held}; "
                "attention runs on the whole sequence with 1/cp of the heads (same bytes)."
            )
        elif mode == "ring_attn":
            notes.append(
                f"ColossalAI's ring_attn over {par.cp} ranks: {held}; RingAttention's key/value "
                "buffers and fp32 gradient accumulators counted in each block's backward."
            )
        else:
            notes.append(
                f"Context parallel {par.cp}: {held}; ring attention's in-flight key/value "
                "chunks are not counted."
            )
    return notes
