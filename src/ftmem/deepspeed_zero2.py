"""DeepSpeed ZeRO-1/2's optimizer init on a rank: what it makes before the first step, and
what it leaves cached.

Read in microsoft/DeepSpeed@26d0dd927b21a3422973fd5cea9616ec03987823 (v0.11.0, the release
of the Qwen-1 Q-LoRA runs of calibration/settings/qwen.yaml), file
``deepspeed/runtime/zero/stage_1_and_2.py``, ``DeepSpeedZeroOptimizer.__init__``; the same
lines at v0.12.3 (6ea44d02). With a 16-bit model and nothing offloaded, per parameter group:

1. l.315-318: the trainable parameters are moved to the CPU (``move_to_cpu``: their GPU
   blocks freed) and ``empty_cache()`` returns every wholly free segment.
2. l.335-339: one flat, aligned 16-bit buffer of them is made on the CPU and moved to the
   GPU in one request (``flatten_dense_tensors_aligned(...).to(device)``); the model's
   trainable weights become views of it (l.350, ``_update_model_bit16_weights``).
3. l.370-371: ``partition.to(device).clone().float().detach()``: a 16-bit clone of the
   rank's partition, the fp32 master made from it, the clone freed at once.
4. ``initialize_optimizer_states`` (l.629-650): ``torch.zeros(partition, fp32)`` as the
   master's gradient, one ``optimizer.step()`` that makes the states (FusedAdam:
   ``exp_avg`` and ``exp_avg_sq`` = ``zeros_like`` of the master, deepspeed/ops/adam/
   fused_adam.py l.155-157 at v0.11.0), then ``group.grad = None``; no ``empty_cache`` follows.

So before the first step the rank holds its master and both moments as three flat fp32
tensors, and the clone's block (2 bytes per partition element) and the gradient's (4)
stay cached: the step's ``flatten(averaged_gradients)`` and its fp32 conversion are the
same sizes, so a replay finds them there. The gradients themselves are made in backward
(``grads_in_partition``), not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ftmem.dtypes import FP32

# FusedAdam's two moments beside the fp32 master, each of the master's size
_MOMENTS = 2
# the norm's copy of a gradient: ``.double()`` (l.1582)
FP64 = 8
# flatten_dense_tensors_aligned pads the flat buffer to nccl_start_alignment_factor x the
# ranks (l.274: ``self.nccl_start_alignment_factor = 2  # 4-byte alignment/sizeof(fp16)``,
# used at l.337-339)
ALIGNMENT = 2


def partition_elements(trainable: int, ranks: int) -> int:
    """Elements of one rank's partition: the flat buffer padded to ALIGNMENT x ranks,
    then cut into equal parts (stage_1_and_2.py ``get_data_parallel_partitions``)."""
    unit = ALIGNMENT * ranks
    padded = -(-trainable // unit) * unit
    return padded // ranks


def adam_states(partition: int) -> int:
    """The states ZeRO-1/2 holds with FusedAdam: fp32 master + two fp32 moments."""
    return FP32 * (1 + _MOMENTS) * partition


def init_program(partition: int, model_bytes: int, flat: int = 0) -> tuple[tuple[str, int], ...]:
    """The optimizer init's requests after loading, in order, as ("alloc", bytes),
    ("free", j) (the j-th "alloc" of this program) and ("empty_cache", 0), for the
    allocator replay: the cache emptied (step 1), the flat 16-bit buffer of ``flat``
    bytes, kept (step 2; 0: not requested, the replay then holds the trainable weights as
    loaded), the clone, the master, the clone freed, the master's zero gradient, the two
    moments, the gradient freed (steps 3-4 above). The trainable weights' move to the CPU
    before step 1 is the replay's loading less their bytes (gpu.trace.RunOutside.moved_to_cpu)."""
    master = FP32 * partition
    first = 1 if flat else 0  # the clone's number among the allocs
    return (
        ("empty_cache", 0),  # step 1
        *((("alloc", flat),) if flat else ()),  # step 2, kept
        ("alloc", model_bytes * partition),  # the 16-bit clone
        ("alloc", master),  # the fp32 master
        ("free", first),
        ("alloc", master),  # its zero gradient for the init step
        ("alloc", master),  # exp_avg
        ("alloc", master),  # exp_avg_sq
        ("free", first + 2),
    )


def flat_buffer_bytes(trainable: int, ranks: int, model_bytes: int) -> int:
    """The flat 16-bit buffer of step 2: every trainable element on every rank (ZeRO-1/2
    shard states and gradients, not weights), padded to ALIGNMENT x ranks."""
    return model_bytes * partition_elements(trainable, ranks) * ranks


def norm_copy_bytes(largest: int) -> int:
    """The step's largest transient before its flatten, on one rank (``largest``: the
    largest trainable tensor's elements). ``step`` (l.1707) first checks every averaged
    gradient for overflow with ``float(x.float().sum())`` (``_has_inf_or_nan``,
    l.1902-1907: an fp32 copy of one gradient at a time), then ``scaled_global_norm``
    (l.1728 -> ``get_grad_norm_direct`` l.1577-1583) takes ``g.data.double().norm(2)`` of
    each: an fp64 copy, the larger of the two, freed before the next tensor's. On one rank
    each averaged gradient is a whole parameter's view of the partition (l.712-755); on
    more a parameter may be cut at a partition's edge (not derived)."""
    return FP64 * largest


class Requests(Protocol):
    """What the replay's recorder offers (gpu.trace._Recorder)."""

    def alloc(self, sizes: Sequence[int]) -> list[int]: ...

    def free(self, keys: list[int]) -> None: ...


@dataclass(frozen=True, slots=True)
class Gradients:
    """ZeRO-2's 16-bit gradients on one rank, with ``contiguous_gradients`` and
    ``overlap_comm`` (stage_1_and_2.py at v0.11.0, the same lines at v0.12.3), in bytes:
    ``bucket`` one ipg buffer (``reduce_bucket_size`` elements), ``partition`` the
    ``grads_in_partition`` buffer (the sum of the partition's parameters, l.1247-1257:
    all trainable ones on one rank, unpadded), ``padding`` the zeros
    ``get_flat_partition`` appends up to the padded partition (l.1632-1633)."""

    bucket: int
    partition: int
    padding: int


class Backward:
    """One micro-step's gradient requests (``first``: the first of the optimizer step's):

    - ``backward`` (l.1931-1945): two ipg buffers of ``reduce_bucket_size`` elements
      (overlap_comm's double buffer), before autograd's backward starts;
    - each gradient autograd makes is copied into the ipg buffer by its parameter's hook
      and the parameter re-pointed there (l.885-910): autograd's tensor is freed at once,
      unless it outnumbers the bucket (``extra_large_param_to_reduce``), then it waits for
      the next reduce;
    - a reduce (``reduce_ipg_grads``, l.1268-1325) runs when the next gradient would
      overflow the bucket (l.888) and in the epilogue; its first copy into the partition
      allocates ``grads_in_partition`` (``copy_grads_in_partition``, l.1247-1257). A
      reduce of an empty bucket copies nothing;
    - the epilogue (l.712-755): the last reduce; micro-step 1's ``averaged_gradients``
      are views of the partition plus the padding zeros, which the step keeps; a later
      micro-step's are added into them, and its partition and padding are freed with the
      ipg buffers (``_release_ipg_buffers``) and ``zero_grad(set_to_none=True)``."""

    __slots__ = ("_fill", "_g", "_ipg", "_large", "_partition", "_pending", "_rec")

    def __init__(self, g: Gradients, rec: Requests) -> None:
        self._g, self._rec = g, rec
        self._fill = self._pending = 0
        self._large: list[int] = []
        self._partition: list[int] | None = None
        self._ipg = rec.alloc((g.bucket, g.bucket))

    def gradient(self, size: int) -> None:
        rec, g = self._rec, self._g
        made = rec.alloc((size,))
        if self._fill + size > g.bucket:
            self._reduce()
        self._pending += 1
        self._fill += size
        if size > g.bucket:
            self._large = made
        else:
            rec.free(made)

    def _reduce(self) -> None:
        if self._pending and self._partition is None:
            self._partition = self._rec.alloc((self._g.partition,))
        self._rec.free(self._large)
        self._large = []
        self._fill = self._pending = 0

    def end(self, first: bool) -> list[int]:
        """The epilogue; returns what the step keeps (micro-step 1's partition)."""
        rec = self._rec
        self._reduce()
        kept = (self._partition or []) + rec.alloc((self._g.padding,))
        rec.free(self._ipg)
        if first:
            return kept
        rec.free(kept)
        return []
