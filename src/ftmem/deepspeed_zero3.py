"""DeepSpeed ZeRO-3's optimizer on one rank: its init, its sub-groups and its step's transients.

Read in microsoft/DeepSpeed@6ea44d02c674393c524ada811ea376c55438a913 (v0.12.3, read for
the Qwen-1 ZeRO-3 runs of calibration/settings/qwen.yaml), file
``deepspeed/runtime/zero/stage3.py`` (=s3); the same steps are in later releases.

* Sub-groups (s3 ``_create_fp16_sub_groups`` l.890-913): the optimizer's parameters, in
  ``model.parameters()`` order, are cut greedily: a sub-group closes at the first
  parameter that brings its running partition size to ``sub_group_size`` or more, so a
  sub-group can exceed it by up to one tensor. Each rank cuts its own partitions
  (``param.partition_numel()`` = ceil(numel / N)).
* The step (s3 ``step`` l.1940-1975) first takes the gradients' norm one tensor at a
  time (``get_grad_norm_direct`` l.1645-1699: ``g.to(device).double().norm(2)``), an
  fp64 copy of each gradient partition, freed before the next: **8 bytes x the largest
  partition**. Then per sub-group ``_prepare_fp32_grad_for_sub_group`` (l.1771-1790):
  ``self.flatten(self.averaged_gradients[i]).to(fp32)``, a contiguous copy of the
  sub-group's gradients in the gradient dtype and its fp32 conversion, both alive at
  ``.to``; the flat copy dies at once, the fp32 gradient lives through
  ``unscale_and_clip_grads`` and the optimizer step and is dropped by
  ``_release_sub_group`` (l.1819-1829) before the next sub-group starts. The 16-bit
  gradients themselves live in ``grad_partitions_flat_buffer``, allocated once at init
  (l.492-494), which ftmem counts as the gradients.

The optimizer's init (init_program) makes the masters, the states and the gradients'
buffer before training, and leaves its largest transient cached. Before the norms, the
step checks the gradient buffer for inf/nan on the reduce stream (fp16; bf16 too before
v0.11.2: overflow_check_program).

So the step's transient is ``max(8 x largest partition, (g + 4) x largest sub-group)``
bytes, g the gradient's bytes per element, where ftmem used to count an fp32 gradient of
every parameter at once (4 bytes x psi / N).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from ftmem.arch import Architecture, layout
from ftmem.dtypes import FP32
from ftmem.methods import TensorGroup

# DeepSpeedZeroConfig.sub_group_size's default, 1e9 (deepspeed/runtime/zero/config.py l.156
# @v0.12.3 ``sub_group_size: int = Field(pp_int(1e9), ...)``); Qwen-1's
# ds_config_zero3.json sets the same (QwenLM/Qwen@e8e15962d8 finetune/ds_config_zero3.json).
SUB_GROUP_SIZE = 10**9
# get_grad_norm_direct's .double(): 8 bytes per element
FP64 = 8
# the parameter kinds transformers registers before the decoder blocks
_BEFORE_BLOCKS = frozenset({"embedding", "position"})


def parameter_order(groups: Sequence[TensorGroup], arch: Architecture) -> tuple[int, ...]:
    """Element counts of the trainable tensors in ``model.parameters()`` order: the
    embeddings, each block's tensors in the plan's order, then the final norm and the
    LM head. Within a block the order may differ from the model's, which moves a
    sub-group's cut by at most one tensor."""
    before = frozenset(p.name for p in layout(arch).outer if p.kind in _BEFORE_BLOCKS)
    return _parameter_order(tuple(groups), before)


@lru_cache(maxsize=256)  # a search's candidates share their plan: the list is per layer
def _parameter_order(
    groups: tuple[TensorGroup, ...], before_names: frozenset[str]
) -> tuple[int, ...]:
    """parameter_order, given the names of the outer tensors made before the blocks."""
    trainable = [g for g in groups if g.trainable]
    before = [g for g in trainable if not g.in_block and g.name in before_names]
    after = [g for g in trainable if not g.in_block and g not in before]
    block = [g for g in trainable if g.in_block]
    layers = max((g.count for g in block), default=0)
    numels = [g.numel for g in before for _ in range(g.count)]
    for i in range(layers):
        # a group counted over fewer blocks (partial training) is in the last ones
        numels += [g.numel for g in block if i >= layers - g.count]
    numels += [g.numel for g in after for _ in range(g.count)]
    return tuple(numels)


def sub_groups(partitions: Iterable[int], size: int = SUB_GROUP_SIZE) -> list[int]:
    """The sub-groups' element counts, cut as _create_fp16_sub_groups cuts them."""
    return list(_sub_groups(tuple(partitions), size))


@lru_cache(maxsize=256)  # a search's candidates cut the same partitions again
def _sub_groups(parts: tuple[int, ...], size: int) -> tuple[int, ...]:
    total = sum(parts)
    if total <= size:  # ``sub_group_size >= params_group_numel``: one group
        return (total,) if parts else ()
    out, running = [], 0
    for n in parts:
        running += n
        if running >= size:
            out.append(running)
            running = 0
    if running:
        out.append(running)
    return tuple(out)


@lru_cache(maxsize=256)  # a search's candidates share their plan and rank count
def partition_sizes(numels: tuple[int, ...], ranks: int) -> tuple[int, ...]:
    """Each tensor's partition on a rank, ``ceil(numel / ranks)`` (``partition_numel``)."""
    return tuple(-(-n // ranks) for n in numels)  # ceil_div, written out: hundreds a call


def step_transient_bytes(
    groups: Sequence[TensorGroup],
    arch: Architecture,
    ranks: int,
    grad_bytes: int,
    size: int = SUB_GROUP_SIZE,
) -> tuple[int, int, int]:
    """One rank's step transients: (the largest fp64 norm copy, the largest sub-group's
    flat gradient copy, its fp32 gradient), bytes; ``grad_bytes``: bytes per element of
    the gradients (the 16-bit model dtype: DeepSpeed's gradient_accumulation_dtype under
    ZeRO, engine.py@v0.12.3 ``get_data_types`` l.866-881)."""
    partitions = partition_sizes(parameter_order(groups, arch), ranks)
    if not partitions:
        return 0, 0, 0
    largest = max(sub_groups(partitions, size))
    return FP64 * max(partitions), grad_bytes * largest, FP32 * largest


def init_program(
    partitions: Sequence[int],
    weights: int,
    states: int,
    grads: int,
    model_bytes: int,
    size: int = SUB_GROUP_SIZE,
) -> tuple[tuple[str, int], ...]:
    """What ``DeepSpeedZeroOptimizer_Stage3.__init__`` (16-bit model) requests on a rank,
    in order, as ("alloc", bytes) and ("free", j) (the j-th "alloc"), for the allocator
    replay; ``partitions``: the rank's trainable partitions in parameter order; ``weights``,
    ``states``, ``grads``: the rank's totals (bytes) the estimate holds for the whole run.

    1. ``_create_fp16_partitions_with_defragmentation`` -> ``defragment`` (s3 l.518-549):
       every trainable partition copied to the CPU and freed, ``gc.collect()`` and
       ``empty_cache()``, then one ``cpu_buffer.to(device)``: the trainable weights as one
       flat buffer; frozen ones (LoRA) keep zero.Init's tensors, made before it.
    2. ``_create_fp32_partitions`` (l.784-888), per sub-group: ``flat.to(device).clone()
       .float()``: a 16-bit clone, the fp32 master made from it, the clone freed.
    3. ``initialize_optimizer_states`` (l.965-1039): ``gradient_buffer = torch.zeros(
       largest sub-group, fp32)``, then one optimizer step per sub-group, which makes its
       states (FusedAdam: ``exp_avg``, ``exp_avg_sq`` = ``zeros_like`` of the master,
       deepspeed/ops/adam/fused_adam.py l.149-157), then the buffer is freed. No ``empty_cache``
       follows: its block stays cached.
    4. ``_setup_for_real_optimizer`` (l.481-502): the ipg bucket (left to the step's
       communication, which holds it in every phase) and ``grad_partitions_flat_buffer =
       torch.zeros(sum of partitions, gradient dtype)``, kept for the whole run.

    The optimizer states beyond the fp32 masters (``states`` minus 4 bytes per element)
    are split over the sub-groups by size, two tensors each (Adam's moments)."""
    groups = sub_groups(partitions, size)
    total = sum(groups)
    if not groups:
        return ()
    program: list[tuple[str, int]] = []
    allocs = 0

    def alloc(nbytes: int) -> int:
        nonlocal allocs
        program.append(("alloc", nbytes))
        allocs += 1
        return allocs - 1

    flat = min(weights, model_bytes * total)
    if weights > flat:
        alloc(weights - flat)  # the frozen tensors zero.Init made
    alloc(flat)
    for n in groups:
        clone = alloc(model_bytes * n)
        alloc(FP32 * n)
        program.append(("free", clone))
    others = max(0, states - FP32 * total)
    buffer = alloc(FP32 * max(groups))
    made = 0
    for i, n in enumerate(groups):
        share = others - made if i == len(groups) - 1 else others * n // total
        made += share
        alloc(share // 2)
        alloc(share - share // 2)
    program.append(("free", buffer))
    alloc(grads)
    return tuple(program)


# torch.isinf of a floating tensor is ``self.abs() == inf`` (aten/src/ATen/native/
# TensorCompare.cpp ``isinf``, composite for every device: an abs copy in the tensor's
# dtype, then a bool mask), torch.isnan ``self != self`` (one bool mask); each
# ``.any()`` a one-element bool (checked on CPU torch in tests/test_deepspeed_zero3.py).
BOOL = 1


def overflow_check_program(elements: int, grad_bytes: int) -> tuple[tuple[str, int], ...]:
    """What ZeRO-3's overflow check requests on a rank at the start of each step, in
    order, as ("alloc", bytes) and ("free", j) (the j-th "alloc"): ``has_overflow``
    (s3 l.2062-2076, the same since v0.9.5) runs, on ``reduce_and_partition_stream``,
    ``torch.isinf(self.grad_partitions_flat_buffer).any()`` and then ``torch.isnan(...)
    .any()`` on the rank's whole gradient buffer (``elements``: the sum of its
    partitions; ``grad_bytes``: its dtype's size). Those blocks belong to the reduce
    stream's pools, which the default stream never reuses."""
    return (
        ("alloc", grad_bytes * elements),  # 0: isinf's abs()
        ("alloc", BOOL * elements),  # 1: its == inf mask
        ("free", 0),
        ("alloc", BOOL),  # 2: .any()
        ("free", 1),
        ("free", 2),  # (after logical_or_ into inf_or_nan_tracker)
        ("alloc", BOOL * elements),  # 3: isnan's != mask
        ("alloc", BOOL),  # 4: .any()
        ("free", 3),
        ("free", 4),
    )


def overflow_check_peak(elements: int, grad_bytes: int) -> int:
    """The check's most bytes at once: isinf's abs copy and its mask."""
    return (grad_bytes + BOOL) * elements


def rank_elements(groups: Sequence[TensorGroup], arch: Architecture, ranks: int) -> int:
    """The rank's gradient buffer: the sum of its trainable partitions
    (``grad_partitions_flat_buffer``, s3 l.492-494)."""
    return sum(partition_sizes(parameter_order(groups, arch), ranks))
