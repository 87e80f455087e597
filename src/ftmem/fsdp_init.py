"""FSDP1 wrapping a model that rank 0 holds on its CPU, as the caching allocator sees it.

Answer.AI's fsdp_qlora ``train.py`` (AnswerDotAI/fsdp_qlora@50efa1e ``fsdp_main``) loads
the model on rank 0's CPU (the other ranks on meta) and wraps it with ``FSDP(model,
auto_wrap_policy=..., use_orig_params=False, device_id=torch.cuda.current_device(),
sync_module_states=True, param_init_fn=to_empty(cuda) on ranks != 0)``. Nothing empties the
cache after wrapping, and ``reset_peak_memory_stats`` before the epoch loop frees nothing:
what the wrap leaves cached is where the step's reserved peak starts from
(calibration/notes/fsdp_qlora.md F0, F3).

The auto-wrap policy wraps children before their parents and the root last
(torch/distributed/fsdp/wrap.py ``_recursive_wrap``: the children's recursion runs before
``_wrap(module)``; ``FullyShardedDataParallel.__init__`` calls ``_auto_wrap`` before the
root's own ``_init_param_handle_from_module``), and each unit's constructor runs to its end
before the next unit starts. Per unit, torch/distributed/fsdp/_init_utils.py
``_init_param_handle_from_module`` (torch 2.1-2.2 text, the same steps in 2.13, whose
requests tests/test_fsdp_init.py logs on two gloo ranks on the CPU):

1. ``_move_module_to_device``: each parameter of the unit (not of a nested unit) still on
   the CPU, ``param.data = param.to(device)`` (``_move_states_to_device``): one request per
   parameter, in breadth-first module order. Ranks != 0 make the same requests through
   ``param_init_fn`` (``module.to_empty(..., recurse=False)`` over the same breadth-first
   list, ``_get_modules_to_materialize``).
2. ``_sync_module_params_and_buffers`` -> ``torch.distributed.utils._sync_params_and_buffers``
   -> ``dist._broadcast_coalesced(pg, states, PARAM_BROADCAST_BUCKET_SIZE = 250 * 1024 *
   1024, src=0)``, ``states`` in ``module.parameters()`` order: buckets per dtype closed as
   soon as their bytes reach the limit (torch/csrc/distributed/c10d/reducer.cpp
   ``compute_bucket_assignment_by_size``: ``if (bucket.size >= bucket_size_limit)``); a
   bucket of several tensors is flattened into a new tensor (torch/csrc/utils/
   tensor_flatten.h ``flatten_dense_tensors``: ``at::cat``; one tensor: a view), at most
   two in flight, each freed at its ``finish()`` (torch/csrc/distributed/c10d/comm.cpp
   ``broadcast_coalesced``, ``max_in_flight = 2``).
3. ``FlatParamHandle.flatten_tensors``: ``torch.cat`` of the parameters, the unit's
   unsharded flat parameter (``use_orig_params=False``: no alignment padding); the module's
   parameters become views of it.
4. ``FlatParamHandle.shard``: ``_get_shard`` clones ``flat.chunk(world)[rank]`` (rank 0's
   chunk is ceil(n / world) elements and is never padded), then the unsharded storage is
   resized to 0. NO_SHARD keeps the flat parameter whole.
5. With ``CPUOffload(offload_params=True)``, ``_init_param_handle_from_params`` moves the
   shard to the CPU (``flat_param_to(cpu)``): its GPU copy is freed.
6. The original parameters, no longer in the module, are freed when the function returns
   (its ``managed_params`` list held them last; CPython frees a list's items last first).

The broadcast's record_stream. ProcessGroupNCCL records every collective's input on its
NCCL stream (torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp ``collective()``: "Both
`inputs' and `outputs' ... must record the ncclStream", unless
TORCH_NCCL_AVOID_RECORD_STREAMS), so a bucket's flat copy, or the parameter itself for a
bucket of one tensor, is freed into ``insert_events``: it stays reserved and out of its
pool until a later ``malloc``'s ``process_events`` finds the broadcast done
(c10/cuda/CUDACachingAllocator.cpp @001074d2 ``free``, ``process_events``).
``WorkNCCL::wait`` only makes the compute stream wait; the CPU runs on. Rank 0's next
sync is its next blocking copy, the next unit's first ``param.to(device)`` (or, under
CPU offload, this unit's ``flat_param_to(cpu)``): aten/src/ATen/native/cuda/Copy.cu
``copy_kernel_cuda`` ends a blocking copy with ``memcpy_and_sync``. Before it, nothing in
the unit can reuse those blocks; after it, all are back. Checked against the published
``reserved_after_model_wrap`` (7B QLoRA, 2 GPUs: 3.72 GiB; replayed 3.35 GiB without the
wait, 3.69 with it; calibration/notes/fsdp_qlora.md F10).

Rank 0 is modelled (the published figures are rank 0's). Buffers (transformers 4's rotary
tables, ftmem.release_buffers) are kept whole on every rank: a unit moves its modules'
buffers after its parameters (``_move_states_to_device``) and broadcasts them before its
parameters, in buckets of their own dtype (``Unit.buffers``); those the units do not
hold are part of the request before the units.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ftmem.dtypes import BYTES_PER_ELEMENT, ceil_div
from ftmem.gpu.program import RequestProgram, Requests
from ftmem.methods import MethodPlan, TensorGroup

# torch/distributed/fsdp/_init_utils.py: PARAM_BROADCAST_BUCKET_SIZE = int(250 * 1024 * 1024)
BROADCAST_BUCKET_BYTES = 250 * 1024 * 1024
# torch/csrc/distributed/c10d/comm.cpp broadcast_coalesced: constexpr auto max_in_flight = 2
BROADCASTS_IN_FLIGHT = 2
FOUR_BIT = ("nf4", "fp4")

# A wrap as the allocator sees it (gpu.program): the shards are never freed
WrapProgram = Requests


@dataclass(frozen=True, slots=True)
class Unit:
    """One FSDP unit's own parameters (bytes each): ``params`` in ``module.parameters()``
    order (the broadcast's and the flat parameter's), ``moved``: their indices in the
    breadth-first order ``_move_module_to_device`` moves them in; ``element_bytes``: its
    flat parameter's dtype (FSDP flattens one dtype per unit); ``buffers``: its modules'
    buffers (bytes each, ``module.buffers()`` order), moved after the parameters and kept
    whole; ``buffers_apart``: they are of another dtype than the parameters, so they
    form broadcast buckets of their own."""

    params: tuple[int, ...]
    moved: tuple[int, ...]
    element_bytes: int
    buffers: tuple[int, ...] = ()
    buffers_apart: bool = False


def module_state_buckets(unit: Unit, limit: int = BROADCAST_BUCKET_BYTES) -> list[list[int]]:
    """The unit's broadcast buckets as indices into its module states, the buffers first
    then the parameters (torch/distributed/fsdp/_init_utils.py
    ``_sync_module_params_and_buffers``: ``module.buffers()``, then the parameters):
    ``compute_bucket_assignment_by_size`` keeps one bucket per dtype and sorts the
    buckets by the smallest index they hold (reducer.cpp: "Sort resulting buckets by the
    minimum tensor index they include")."""
    sizes = [*unit.buffers, *unit.params]
    apart = len(unit.buffers) if unit.buffers_apart else 0
    groups = [list(range(apart)), list(range(apart, len(sizes)))]
    buckets: list[list[int]] = []
    for indices in groups:
        current: list[int] = []
        for i in indices:
            current.append(i)
            if sum(sizes[j] for j in current) >= limit:
                buckets.append(current)
                current = []
        if current:
            buckets.append(current)
    return sorted(buckets, key=min)


def broadcast_buckets(sizes: Sequence[int], limit: int = BROADCAST_BUCKET_BYTES) -> list[list[int]]:
    """``compute_bucket_assignment_by_size`` for tensors of one dtype on one device: a
    bucket closes when its bytes reach ``limit`` (the tensor that crosses it included)."""
    buckets: list[list[int]] = []
    current: list[int] = []
    for size in sizes:
        current.append(size)
        if sum(current) >= limit:
            buckets.append(current)
            current = []
    if current:
        buckets.append(current)
    return buckets


def parameter_bytes(g: TensorGroup, storage: str) -> int | None:
    """One tensor of ``g`` as an FSDP parameter: a bitsandbytes 4-bit weight is its packed
    data in the ``quant_storage`` dtype, ``(n + 1) // (2 * storage bytes)`` elements
    (bitsandbytes 0.43 bitsandbytes/functional.py quantize_4bit); its quant_state is no
    parameter and stays where loading put it. None: a format FSDP cannot flatten here."""
    if g.fmt in FOUR_BIT:
        e = BYTES_PER_ELEMENT[storage]
        return e * ((g.numel + 1) // (2 * e))
    if g.fmt in BYTES_PER_ELEMENT:
        return g.numel * BYTES_PER_ELEMENT[g.fmt]
    return None


def _depth(name: str, adapted: bool) -> int:
    """A parameter's module depth below its unit; peft's wrapper puts an adapted linear's
    weight one level lower (``base_layer``)."""
    return name.count(".") + (1 if adapted else 0)


def _unit(
    groups: Sequence[tuple[TensorGroup, int, int]], adapted: frozenset[str], element_bytes: int
) -> Unit:
    """A unit from (group, tensors, bytes each), in the plan's (definition) order."""
    params: list[tuple[int, int]] = []
    for g, n, size in groups:
        params += [(_depth(g.name, g.name.rsplit(".", 1)[0] in adapted), size)] * n
    # stable: definition order within a depth
    moved = sorted(range(len(params)), key=lambda i: params[i][0])
    return Unit(tuple(s for _, s in params), tuple(moved), element_bytes)


def wrap_units(
    plan: MethodPlan,
    blocks: int,
    storage: str,
    layer_buffers: tuple[int, ...] = (),
    buffers_apart: bool = False,
) -> tuple[Unit, ...] | None:
    """The units in the order FSDP constructs them, for fsdp_qlora's policy (each
    trainable leaf module, i.e. each LoRA matrix; each decoder layer; the root): per block
    its adapters' units then the block's, the blocks in order, then the adapters outside
    the blocks, then the root; ``storage``: the dtype of the base weights' flat
    parameters; ``layer_buffers``: each decoder layer's buffers (bytes each; transformers
    4's rotary cos and sin tables), of another dtype than ``storage`` where
    ``buffers_apart``. None where a parameter has no flat form here."""
    adapted = frozenset(g.name.rsplit(".", 1)[0] for g in plan.groups if g.adapter)
    sized = [(g, parameter_bytes(g, storage)) for g in plan.groups]
    uneven = any(g.in_block and g.count % max(blocks, 1) for g in plan.groups)
    if blocks < 1 or uneven or any(size is None for _, size in sized):
        return None  # (a block unlike the others: LoRA on some layers only)
    per_block = [(g, g.count // blocks, s) for g, s in sized if g.in_block and s is not None]
    outer = [(g, g.count, s) for g, s in sized if not g.in_block and s is not None]
    e = BYTES_PER_ELEMENT[storage]
    block_adapters = [_own(g, s) for g, n, s in per_block if g.adapter for _ in range(n)]
    block = _unit([p for p in per_block if not p[0].adapter], adapted, e)
    block = replace(block, buffers=layer_buffers, buffers_apart=buffers_apart)
    units = [*block_adapters, block] * blocks
    units += [_own(g, s) for g, n, s in outer if g.adapter for _ in range(n)]
    root = _unit([p for p in outer if not p[0].adapter], adapted, e)
    return tuple(u for u in [*units, root] if u.params)


def _own(g: TensorGroup, size: int) -> Unit:
    """A LoRA matrix, a unit of its own (the policy's trainable leaf)."""
    return Unit((size,), (0,), BYTES_PER_ELEMENT[g.fmt])


def shard_bytes(unit: Unit, world: int) -> int:
    """Rank 0's shard of the unit's flat parameter: ceil(n / world) elements."""
    e = unit.element_bytes
    return ceil_div(sum(unit.params) // e, world) * e


def _unit_program(
    p: RequestProgram,
    unit: Unit,
    world: int,
    shards: bool,
    offload: bool,
    bucket_bytes: int,
    recorded: list[int],
) -> None:
    """One unit's constructor, steps 1-6 of the module docstring. ``recorded``: the
    blocks NCCL's broadcasts have marked and that are freed but not yet back in the
    pool (the module docstring's "The broadcast's record_stream"): given back after this
    unit's first move, which synchronises the stream."""
    moved: dict[int, int] = {}
    for i in unit.moved:
        moved[i] = p.alloc(unit.params[i])
        if recorded:  # the first copy's memcpy_and_sync: every broadcast before it is done
            p.free(*recorded)
            recorded.clear()
    for size in unit.buffers:  # _move_states_to_device: the buffers after the parameters
        p.alloc(size)
    in_place: set[int] = set()  # a bucket of one tensor is broadcast in the parameter
    in_flight: deque[int | None] = deque()
    states = [*unit.buffers, *unit.params]
    for bucket in module_state_buckets(unit, bucket_bytes):
        if len(in_flight) == BROADCASTS_IN_FLIGHT:
            _free_flat(recorded, in_flight.popleft())
        if len(bucket) == 1:  # (a buffer broadcast in place stays: nothing to record)
            in_place.add(bucket[0] - len(unit.buffers))
        in_flight.append(p.alloc(sum(states[i] for i in bucket)) if len(bucket) > 1 else None)
    while in_flight:
        _free_flat(recorded, in_flight.popleft())
    kept = p.alloc(sum(unit.params))  # the unsharded flat parameter
    if shards:
        shard = p.alloc(shard_bytes(unit, world))
        p.free(kept)
        kept = shard
    if offload:
        p.free(kept)
        # flat_param_to(cpu) is a blocking copy: memcpy_and_sync, every broadcast done
        p.free(*recorded)
        recorded.clear()
        in_place.clear()
    for i in reversed(range(len(unit.params))):  # the `managed_params` list dies
        if i in in_place:
            recorded.append(moved[i])
        else:
            p.free(moved[i])


def _free_flat(recorded: list[int], j: int | None) -> None:
    """A bucket's flat copy, freed at its ``finish()``: recorded on NCCL's stream."""
    if j is not None:
        recorded.append(j)


def wrap_program(
    units: Sequence[Unit],
    world: int,
    *,
    shards: bool,
    offload: bool,
    resident: int,
    bucket_bytes: int = BROADCAST_BUCKET_BYTES,
) -> WrapProgram:
    """The wrap's requests on rank 0, unit after unit; ``resident``: the bytes the rank
    keeps after wrapping (the step's weights): what the units' kept flat parameters do not
    make up is one request before them, what loading left on the GPU (the 4-bit weights'
    quant_state, which FSDP does not shard); ``bucket_bytes``: the broadcast's bucket size."""
    kept = sum(sum(u.buffers) for u in units)  # buffers stay on the GPU under offload too
    if not offload:
        kept += sum(shard_bytes(u, world) if shards else sum(u.params) for u in units)
    p = RequestProgram()
    if resident > kept:
        p.alloc(resident - kept)
    recorded: list[int] = []
    for unit in units:
        _unit_program(p, unit, world, shards, offload, bucket_bytes, recorded)
    p.free(*recorded)  # the training loop's first copy (the batch's .to(rank)) syncs
    return tuple(p.ops)
