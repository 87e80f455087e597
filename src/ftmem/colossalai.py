"""ColossalAI's booster plugins as ftmem strategies, from ColossalAI's own source.

Read at hpcaitech/ColossalAI 4f9953be335e (``version.txt`` 0.5.0; the 0.5.0 release has
the same text for every line cited here but ``hybrid_parallel_plugin.py``, whose lines
from 1415 on sit two lower). Paths are under ``colossalai/``.

* ``colossalai-zero1`` / ``colossalai-zero2``: ``LowLevelZeroPlugin(stage=1|2)`` on one
  data-parallel group, or ``HybridParallelPlugin(zero_stage=1|2)`` with ``--tp/--pp/--cp``.
  The whole model is cast to the 16-bit precision (``low_level_zero_plugin.py:77-85``);
  only trainable tensors enter ZeRO, each padded to a multiple of the group and split
  (``zero/low_level/low_level_optim.py:199-203, 269-292``); the fp32 master of a shard is
  a clone even in fp32 (``:291-292``). Stage 1 keeps the whole reduced 16-bit gradient
  on every rank (``:393-400``), stage 2 this rank's slice (``:369-389``).
* ``colossalai-3d``: ``HybridParallelPlugin(zero_stage=0)``: an fp32 master of every
  trainable local tensor in 16-bit runs (``amp/naive_amp/mixed_precision_optimizer.py:76-86``),
  torch DDP (25 MB buckets) when ``pp == 1`` (``booster/plugin/hybrid_parallel_plugin.py:1311-1313``).
* ``colossalai-gemini``: ``GeminiPlugin``: see :mod:`ftmem.gemini`.

ColossalAI's ``TorchDDPPlugin`` is ftmem's ``ddp`` (same 25 MB buckets and
``gradient_as_bucket_view=False``, ``booster/plugin/torch_ddp_plugin.py:235-254``) and its
``TorchFSDPPlugin`` is torch FSDP (``fsdp`` with a per-block wrap policy): ``--emit
colossalai`` writes them for those strategies.
"""

from __future__ import annotations

from collections.abc import Iterable

from ftmem.dtypes import ceil_div
from ftmem.errors import InvalidInputError
from ftmem.methods import TensorGroup
from ftmem.run import ADAPTER_METHODS, RunConfig

COLOSSALAI_COMMIT = "hpcaitech/ColossalAI@4f9953be335e"

LOW_LEVEL_ZERO: dict[str, int] = {"colossalai-zero1": 1, "colossalai-zero2": 2}
HYBRID_AMP = "colossalai-3d"  # HybridParallelPlugin(zero_stage=0)
GEMINI = "colossalai-gemini"
COLOSSALAI: frozenset[str] = frozenset({*LOW_LEVEL_ZERO, HYBRID_AMP, GEMINI})

# low_level_zero_plugin.py:451 (reduce_bucket_size_in_m=12: m·1024·1024 elements) and
# hybrid_parallel_plugin.py:1244 (zero_bucket_size_in_m=12)
ZERO_BUCKET_ELEMENTS = 12 * 2**20
# shardformer pads the vocabulary to a multiple of 64·tp (make_vocab_size_divisible_by=64,
# shardformer/layer/embedding.py:303-305, shardformer/layer/linear.py:734-736)
VOCAB_MULTIPLE = 64
# GeminiOptimizer steps FusedAdam, CPUAdam or HybridAdam only (zero/gemini/gemini_optimizer.py:
# 43, 121-123): AdamW with fp32 states
GEMINI_OPTIMIZERS = frozenset({"adamw", "adamw-fp32"})


def zero_stage(strategy: str) -> int:
    """The ZeRO stage of a ColossalAI strategy (0: none; Gemini is not a stage)."""
    return LOW_LEVEL_ZERO.get(strategy, 0)


def plugin_name(strategy: str, model_parallel: int, ep: int = 1) -> str:
    """The booster plugin that runs the strategy."""
    if strategy == GEMINI:
        return "GeminiPlugin"
    if ep > 1:
        return "MoeHybridParallelPlugin"
    if strategy in LOW_LEVEL_ZERO and model_parallel == 1:
        return "LowLevelZeroPlugin"
    return "HybridParallelPlugin"


def effective_bucket(bucket: int, groups: Iterable[TensorGroup]) -> int:
    """Elements reduced at once: a gradient larger than the bucket is reduced alone
    (``_add_to_bucket`` first reduces what the bucket holds, then adds the tensor whole,
    low_level_optim.py:431-445; the bucket records parameters, it does not copy)."""
    largest = max((g.numel for g in groups if g.trainable), default=0)
    return max(bucket, largest)


def backward_buffers(stage: int, bucket: int, group: int, element_bytes: int) -> int:
    """The reduce buffers alive in backward (overlap_communication=True, the plugins'
    default): the flat copy of a bucket (``get_flatten_grad``, bookkeeping/bucket_store.py:
    103-115) kept by ``record_stream`` until its collective ends while the next one is
    built: two; stage 2 adds the received slice (``low_level_optim.py:369-383``)."""
    flats = 2 * bucket
    if stage == 2:
        flats += ceil_div(bucket, group)
    return flats * element_bytes


def gather_after_step(
    groups: Iterable[TensorGroup], bucket: int, group: int, element_bytes: int
) -> int:
    """The all-gather of the updated 16-bit shards after ``optim.step()``
    (low_level_optim.py:600-635): a shard larger than the bucket is gathered straight
    into its working tensor; smaller ones through a ``TensorBucket`` of at most one
    bucket of shards, whose gather allocates the flat shards and ``group`` times them
    (bookkeeping/tensor_bucket.py:68-93), plus the 16-bit copy of one master shard and
    the gathered tensor being unflattened."""
    small = [g for g in groups if g.trainable and ceil_div(g.numel, group) <= bucket]
    if not small:
        return 0
    flat = min(bucket, sum(ceil_div(g.numel, group) * g.count for g in small))
    largest = max(g.numel for g in small)
    return element_bytes * ((group + 2) * flat + min(group * flat, largest))


def check_run(
    run: RunConfig, strategy: str, tp: int, model_parallel: int, encoder_decoder: bool
) -> None:
    """What the plugins refuse, in one sentence each."""
    half = run.precision != "fp32"
    if run.method == "galore":
        raise InvalidInputError(
            "ColossalAI's GaLore optimizer (DistGaloreAwamW) turns its ZeRO off "
            "(low_level_zero_plugin.py:598-604), a path ftmem does not model: use GaLore "
            "with DeepSpeed or FSDP."
        )
    if strategy == GEMINI and encoder_decoder:
        raise InvalidInputError(
            "ftmem lays out ColossalAI Gemini's chunks for decoder-only models: use "
            "--strategy colossalai-zero2 for an encoder-decoder."
        )
    if strategy == GEMINI:
        if not half:
            raise InvalidInputError(
                "ColossalAI's GeminiPlugin trains in fp16 or bf16 only (gemini_plugin.py:486): "
                "use --precision bf16."
            )
        if run.method in ADAPTER_METHODS:
            raise InvalidInputError(
                f"ColossalAI's GeminiPlugin takes no {run.method} adapters (support_lora() is "
                "False, gemini_plugin.py:576-577), and peft applied before boosting leaves the "
                "frozen base whole in 16-bit on every GPU (gemini_ddp.py:826-832): use "
                "--strategy colossalai-zero2, or colossalai-zero1 with --pp."
            )
        if run.optimizer not in GEMINI_OPTIMIZERS:
            raise InvalidInputError(
                "ColossalAI's GeminiPlugin steps with HybridAdam, CPUAdam or FusedAdam only "
                f"(gemini_optimizer.py:121-123), not {run.optimizer}: use --optimizer adamw."
            )
    if model_parallel > 1 and strategy in LOW_LEVEL_ZERO and not half:
        raise InvalidInputError(
            "ColossalAI's HybridParallelPlugin refuses fp32 with ZeRO (hybrid_parallel_plugin.py:"
            "1361): use --precision bf16, or --strategy colossalai-3d."
        )
    if tp > 1 and run.method in ADAPTER_METHODS:
        raise InvalidInputError(
            "ColossalAI's HybridParallelPlugin takes LoRA only without tensor parallelism "
            "(enable_lora asserts tp_size == 1, hybrid_parallel_plugin.py:1518): use --pp "
            "instead of --tp."
        )


def notes(strategy: str, model_parallel: int, pp: int, ep: int, offload: bool) -> list[str]:
    """What the per-GPU numbers assume, for a user to check against their plugin."""
    plugin = plugin_name(strategy, model_parallel, ep)
    stage = zero_stage(strategy)
    out: list[str] = []
    if ep > 1:
        stage = 1
        out.append(
            f"ColossalAI MoeHybridParallelPlugin, expert parallel {ep}: each GPU keeps 1/{ep} "
            "of every layer's experts, their ZeRO shards over the ranks holding the same "
            "experts; ZeRO-2 and overlap_communication run as ZeRO-1 without overlap "
            "(moe_hybrid_parallel_plugin.py:227-233); tokens assumed balanced over the "
            "experts, the all-to-all buffers not counted."
        )
    if stage:
        out.append(
            f"ColossalAI {plugin} with ZeRO stage {stage}: the whole model cast to the 16-bit "
            "precision, fp32 master and optimizer states sharded over the data-parallel ranks"
            + (", the gradients too" if stage == 2 else "")
            + f"; reduce buckets of {ZERO_BUCKET_ELEMENTS:,} elements (reduce_bucket_size_in_m"
            "=12), a larger gradient reduced alone; the fp32 copy of the gradient shard at "
            "the step."
        )
        if offload:
            out.append(
                "ColossalAI's cpu_offload: fp32 masters, optimizer states and the step's fp32 "
                "gradients on the host (not pinned); the 16-bit gradients stay on the GPU."
            )
    if strategy == HYBRID_AMP:
        out.append(
            "ColossalAI HybridParallelPlugin with zero_stage 0: an fp32 master of every "
            "trainable tensor on every rank, fp32 gradients at the step"
            + ("; torch DDP buckets as large as the gradients." if pp == 1 else ".")
        )
    if model_parallel > 1:
        out.append(
            "ColossalAI's shardformer pads the vocabulary to a multiple of 64 × tp; --cp is its "
            "sequence parallelism (all_to_all or ring_attn), whose ZeRO group spans the "
            "sequence ranks too."
        )
    return out
