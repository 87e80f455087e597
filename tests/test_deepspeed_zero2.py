"""DeepSpeed ZeRO-1/2's optimizer init (ftmem.deepspeed_zero2) against its source, by hand.

The truth is DeepSpeedZeroOptimizer.__init__ at microsoft/DeepSpeed@26d0dd92 (v0.11.0),
runtime/zero/stage_1_and_2.py, read in the module's docstring: after ``empty_cache()`` a
16-bit clone of the partition (l.370-371), the fp32 master made from it, the clone freed;
``initialize_optimizer_states`` (l.629-650): an fp32 zero gradient, one FusedAdam step
making ``exp_avg`` and ``exp_avg_sq`` (fused_adam.py l.155-157), the gradient dropped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from ftmem import deepspeed_zero2
from ftmem.gpu.best_fit import BestFit
from ftmem.gpu.trace import STEP_ONLY

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
# Qwen-7B-Chat-Int4 with Qwen's LoRA (r 64 on c_attn, both c_proj, w1, w2): L·r·(9h + 3f')
PSI_7B = 32 * 64 * (9 * 4096 + 3 * 11008)


def _rounded(n: int) -> int:
    """CUDACachingAllocator's size of a large request: whole 2 MiB (kRoundLarge)."""
    return -(-n // (2 * MiB)) * 2 * MiB


def test_partition_pads_to_two_elements_per_rank():
    assert deepspeed_zero2.partition_elements(PSI_7B, 1) == PSI_7B  # even already
    assert deepspeed_zero2.partition_elements(7, 1) == 8
    assert deepspeed_zero2.partition_elements(7, 2) == 4  # 8 padded elements over 2 ranks
    assert deepspeed_zero2.partition_elements(9, 2) == 6  # 12 over 2


def test_adam_states_are_a_master_and_two_moments_in_fp32():
    assert deepspeed_zero2.adam_states(PSI_7B) == 12 * PSI_7B


def test_init_leaves_the_clone_and_the_gradient_cached_for_the_step():
    """Replayed on the caching allocator: after the init the rank holds 12 psi bytes
    (master, two moments) and has cached the 16-bit clone's block (2 psi) and the zero
    gradient's (4 psi); the step's flatten of the 16-bit gradients (2 psi) and its fp32
    conversion (4 psi, stage_1_and_2.py ``step`` l.1761-1767) then fit those blocks and
    reserve nothing more."""
    n = PSI_7B
    program = deepspeed_zero2.init_program(n, 2)
    target = BestFit()
    handles: list[int] = []
    assert program[0] == ("empty_cache", 0)  # after the parameters went to the CPU
    for op, value in program[1:]:
        if op == "alloc":
            handles.append(target.malloc(value))
        else:
            target.free(handles[value])
    after_init = target.stats()
    assert after_init.allocated == 3 * _rounded(4 * n)
    assert after_init.reserved == _rounded(2 * n) + 4 * _rounded(4 * n)
    assert sorted(size for size, _ in target.free_blocks()) == [_rounded(2 * n), _rounded(4 * n)]
    flat = target.malloc(2 * n)
    fp32 = target.malloc(4 * n)
    assert target.stats().reserved == after_init.reserved
    target.free(flat)
    target.free(fp32)


def test_only_zero2_with_fusedadam_on_a_16bit_model_runs_the_init():
    import ftmem.estimate  # noqa: F401  (the module; ftmem.estimate is also its function)
    from ftmem.parallel import ParallelConfig

    estimate = sys.modules["ftmem.estimate"]
    arch = type("A", (), {"hidden_size": 4096})()

    class Sizes:
        def __init__(self, states: int, grads: int = 2 * PSI_7B) -> None:
            self.states = states
            self.gradients = type("G", (), {"total": grads})()
            self.weights = 6 * 2**30  # the frozen base and the 16-bit adapters

    class Plan:
        def __init__(self, compute: str) -> None:
            self.n_trainable = PSI_7B
            self.dtypes = type("D", (), {"compute": compute})()
            frozen = type("T", (), {"trainable": False, "nbytes": 5 * 2**30})()
            adapters = type("T", (), {"trainable": True, "nbytes": 2 * PSI_7B})()
            self.groups = (frozen, adapters)

    def init(par: ParallelConfig, plan: Plan, sizes: Sizes):
        return estimate._zero2_init(arch, par, plan, sizes)

    zero2 = ParallelConfig(gpus=1, strategy="zero2")
    got = init(zero2, Plan("fp16"), Sizes(12 * PSI_7B))
    # the adapters leave the GPU and come back as one flat buffer (PSI_7B is even: no
    # padding on one rank)
    assert got.optimizer_init == deepspeed_zero2.init_program(PSI_7B, 2, 2 * PSI_7B)
    assert got.moved_to_cpu == 2 * PSI_7B
    assert got.reset
    # one rank's 16-bit gradients: ZeRO-2's flat partition, buckets of HF's auto h^2
    flat = deepspeed_zero2.Gradients(bucket=2 * 4096**2, partition=2 * PSI_7B, padding=0)
    assert got.zero2_grads == flat
    # an optimizer whose states are not an fp32 master and two moments: no init, the
    # gradients still ZeRO-2's
    other = init(zero2, Plan("fp16"), Sizes(6 * PSI_7B))
    assert other.optimizer_init == () and not other.reset and other.zero2_grads == flat
    zero1 = ParallelConfig(gpus=1, strategy="zero1")
    assert init(zero1, Plan("fp16"), Sizes(12 * PSI_7B)).zero2_grads is None
    assert init(zero1, Plan("fp16"), Sizes(6 * PSI_7B)) is STEP_ONLY
    # two ranks (12 bytes of states on each one's half): the init, but each rank's
    # gradient partition is not derived
    two = ParallelConfig(gpus=2, strategy="zero2")
    assert init(two, Plan("fp16"), Sizes(6 * PSI_7B, PSI_7B)).zero2_grads is None
    # gradients other than 16-bit ones of every trainable element: untouched
    assert init(zero2, Plan("fp16"), Sizes(6 * PSI_7B, 4 * PSI_7B)) is STEP_ONLY
    # an fp32 model (its .float() is the clone itself): untouched
    assert init(zero2, Plan("fp32"), Sizes(12 * PSI_7B)) is STEP_ONLY
    offload = ParallelConfig(gpus=1, strategy="zero2", offload_optimizer="cpu")
    assert init(offload, Plan("fp16"), Sizes(12 * PSI_7B)) is STEP_ONLY
    zero3 = ParallelConfig(gpus=1, strategy="zero3")
    assert init(zero3, Plan("fp16"), Sizes(12 * PSI_7B)) is STEP_ONLY


@pytest.mark.parametrize("row_id", ["qwen1-7b-qlora-seq256", "qwen1-14b-qlora-seq256"])
def test_the_qwen_qlora_rows_state_sizes_are_a_zero2_adam_layout(row_id):
    """The estimate's rank states for Qwen's Q-LoRA rows equal FusedAdam's under ZeRO-2
    (12 bytes per trainable element, psi = L·r·(9h + 3f')), so the init replaces the
    replay's per-tensor states."""
    import ftmem

    rows = yaml.safe_load((ROOT / "calibration" / "settings" / "qwen.yaml").read_text())
    row = next(r for r in rows if r["id"] == row_id)
    config = ROOT / "calibration" / "configs" / row["model"] / "config.json"
    est = ftmem.estimate(str(config), gpu=row["gpu"], **row["settings"])
    h, f, layers = (4096, 11008, 32) if "7b" in row_id else (5120, 13696, 40)
    psi = layers * 64 * (9 * h + 3 * f)
    assert est.memory.optimizer_states_bytes == deepspeed_zero2.adam_states(psi)


class _Log:
    """A recorder that writes down ZeRO-2's requests: ("alloc", bytes, key), ("free", key)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int] | tuple[str, int, int]] = []
        self._next = 0

    def alloc(self, sizes):
        keys = []
        for size in sizes:
            if size > 0:
                self.events.append(("alloc", size, self._next))
                keys.append(self._next)
                self._next += 1
        return keys

    def free(self, keys):
        self.events += [("free", k) for k in keys]


def test_backward_copies_each_gradient_into_the_bucket_and_makes_the_partition_at_the_first_reduce():
    """stage_1_and_2.py at v0.11.0, by hand, for a bucket of 100 bytes and gradients of
    60, 30, 20, 150, 10 made in that order (270 bytes, one rank, no padding):
    ``backward`` (l.1931-1945) makes both ipg buffers; 60 and 30 fit the bucket (90):
    each autograd gradient is copied in and freed at once (l.905-907); 20 would overflow
    it (110 > 100, l.888): ``reduce_ipg_grads`` copies the bucket's two into a new
    ``grads_in_partition`` (270, l.1247-1257), then 20 goes in; 150 overflows again (the
    partition exists already) and is larger than the bucket: autograd's tensor stays
    (``extra_large_param_to_reduce``) until 10's hook reduces it into the partition; the
    epilogue's reduce copies 10 and frees the ipg buffers (l.749), the partition kept
    by ``averaged_gradients`` in micro-step 1 (l.733-739)."""
    g = deepspeed_zero2.Gradients(bucket=100, partition=270, padding=0)
    log = _Log()
    backward = deepspeed_zero2.Backward(g, log)
    for size in (60, 30, 20, 150, 10):
        backward.gradient(size)
    kept = backward.end(first=True)
    assert log.events == [
        ("alloc", 100, 0),
        ("alloc", 100, 1),
        ("alloc", 60, 2),
        ("free", 2),
        ("alloc", 30, 3),
        ("free", 3),
        ("alloc", 20, 4),
        ("alloc", 270, 5),  # the first reduce with gradients in the bucket
        ("free", 4),
        ("alloc", 150, 6),  # outnumbers the bucket: held
        ("alloc", 10, 7),
        ("free", 6),  # copied into the partition by 10's reduce
        ("free", 7),
        ("free", 0),
        ("free", 1),
    ]
    assert kept == [5]


def test_a_later_micro_step_frees_its_partition_and_padding_in_its_epilogue():
    """Micro-step 2 (l.740-747, 749-755): its gradients all fit one bucket of 2e8
    elements (Qwen-1 7B Q-LoRA's 143,130,624 adapters, 2 bytes each), so its
    ``grads_in_partition`` is made in the epilogue's reduce, after every gradient; the
    padding zeros ``get_flat_partition`` adds (an odd count: 1 element, l.1632-1633) and
    the partition are added into micro-step 1's and freed with the ipg buffers."""
    psi = PSI_7B - 1  # odd, to have one padding element
    g = deepspeed_zero2.Gradients(bucket=2 * 200_000_000, partition=2 * psi, padding=2)
    log = _Log()
    backward = deepspeed_zero2.Backward(g, log)
    backward.gradient(2 * (psi - 1000))
    backward.gradient(2 * 1000)
    assert backward.end(first=False) == []
    assert log.events == [
        ("alloc", 400_000_000, 0),
        ("alloc", 400_000_000, 1),
        ("alloc", 2 * (psi - 1000), 2),
        ("free", 2),
        ("alloc", 2000, 3),
        ("free", 3),
        ("alloc", 2 * psi, 4),  # in the epilogue
        ("alloc", 2, 5),
        ("free", 0),
        ("free", 1),
        ("free", 4),
        ("free", 5),
    ]


def test_the_replay_of_a_zero2_step_holds_one_flat_partition_per_micro_step():
    """The trace of an accumulating ZeRO-2 step (two micro-steps) on one rank: each
    micro-step requests both ipg buffers and one flat partition; micro-step 1's
    partition is held to the step's end (``averaged_gradients``), micro-step 2's freed
    in its epilogue before micro-step 1's; with a bucket larger than every gradient,
    each autograd gradient is freed right after it is made (copied into the bucket)."""
    from ftmem.api import parallel_config, run_config
    from ftmem.estimate import _tensors
    from ftmem.gpu.trace import RunOutside, run_events
    from ftmem.parallel import parallel_step
    from ftmem.presets import get_model

    arch = get_model("qwen2.5-0.5b")
    run = run_config(method="lora", seq_len=128, batch_size=1, grad_accum=2, precision="bf16")
    par = parallel_config(gpus=1, strategy="zero2")
    step = parallel_step(arch, run, par, None)
    sizes = step.ranks[step.worst].sizes
    tensors = _tensors(step.parts, sizes)
    grads = [*tensors.outer_grads, *tensors.embedding_grads]
    grads += list(tensors.block_grads) * sizes.gradients.trainable_blocks
    assert sum(grads) == sizes.gradients.total
    flat = deepspeed_zero2.Gradients(bucket=10**9 + 2, partition=sum(grads) + 1, padding=0)
    events = run_events([(sizes, tensors)], outside=RunOutside(zero2_grads=flat))
    requests = [e for e in events if e[0] != "free"]  # a key is its request's index
    freed_at = {key: i for i, (op, key) in enumerate(events) if op == "free"}
    made_at: dict[int, int] = {}
    n = 0
    for i, (op, _) in enumerate(events):
        if op != "free":
            made_at[n] = i
            n += 1
    partitions = [k for k, (_, size) in enumerate(requests) if size == flat.partition]
    ipg = [k for k, (_, size) in enumerate(requests) if size == flat.bucket]
    assert len(partitions) == 2 and len(ipg) == 4
    first, second = partitions
    assert freed_at[second] < freed_at[first]  # micro-step 2's, in its epilogue
    assert made_at[ipg[2]] > freed_at[ipg[0]]  # micro-step 2's buckets are new ones
    # every gradient request is freed at once: the next event
    grad_sizes = set(grads)
    checked = 0
    for k, (op, size) in enumerate(requests):
        if op == "alloc" and size in grad_sizes and k not in partitions:
            assert events[made_at[k] + 1] == ("free", k), f"request {k} outlives its hook"
            checked += 1
    assert checked >= 2 * len(grads)  # each gradient, in both micro-steps


def test_the_flat_buffer_pads_every_trainable_element_on_every_rank():
    """l.335-339: ``flatten_dense_tensors_aligned(group, 2 x ranks)``, 16-bit: 7 elements
    on one rank pad to 8, on two ranks to 8 as well, 9 on two to 12 (ZeRO-1/2 keep the
    whole buffer on each rank; the partitions are views of it)."""
    assert deepspeed_zero2.flat_buffer_bytes(7, 1, 2) == 16
    assert deepspeed_zero2.flat_buffer_bytes(7, 2, 2) == 16
    assert deepspeed_zero2.flat_buffer_bytes(9, 2, 2) == 24
    assert deepspeed_zero2.flat_buffer_bytes(PSI_7B, 1, 2) == 2 * PSI_7B


def test_the_flat_buffer_is_made_after_the_cache_is_emptied_and_kept():
    """By hand on the caching allocator (l.315-339 then l.370-371, 629-650): the frozen
    weights stay; the adapters' blocks are gone to the CPU and their segments released;
    the flat buffer is one request, a segment of its own (2 MiB rounding), kept beside the
    master and both moments; the clone's and the zero gradient's blocks stay cached."""
    n = PSI_7B
    program = deepspeed_zero2.init_program(n, 2, deepspeed_zero2.flat_buffer_bytes(n, 1, 2))
    assert program[:2] == (("empty_cache", 0), ("alloc", 2 * n))
    target = BestFit()
    frozen = [target.malloc(100 * MiB) for _ in range(3)]
    adapters = [target.malloc(3 * MiB) for _ in range(4)]  # one 20 MiB large segment
    target.free_many(adapters)  # move_to_cpu
    handles: list[int] = []
    for op, value in program:
        if op == "empty_cache":
            target.empty_cache()
        elif op == "alloc":
            handles.append(target.malloc(value))
        else:
            target.free(handles[value])
    stats = target.stats()
    assert stats.allocated == 3 * 100 * MiB + _rounded(2 * n) + 3 * _rounded(4 * n)
    # the adapters' 20 MiB segment went back: frozen + flat + clone + master, gradient, moments
    assert stats.reserved == 3 * 100 * MiB + 2 * _rounded(2 * n) + 4 * _rounded(4 * n)
    assert len(frozen) == 3


def test_the_replay_loads_the_weights_less_the_trainable_ones_then_makes_the_flat_buffer():
    """A one-rank ZeRO-2 trace (qwen2.5-0.5b, LoRA): loading requests the weights less the
    trainable bytes (moved to the CPU before the init's ``empty_cache``), as many tensors
    as before; the init's first request after ``empty_cache`` is the flat buffer, never
    freed."""
    from ftmem.api import parallel_config, run_config
    from ftmem.estimate import _tensors
    from ftmem.gpu.trace import RunOutside, run_events
    from ftmem.parallel import parallel_step
    from ftmem.presets import get_model

    arch = get_model("qwen2.5-0.5b")
    run = run_config(method="lora", seq_len=128, batch_size=1, precision="bf16")
    par = parallel_config(gpus=1, strategy="zero2")
    step = parallel_step(arch, run, par, None)
    sizes = step.ranks[step.worst].sizes
    tensors = _tensors(step.parts, sizes)
    plan = step.parts.plan
    moved = sum(g.nbytes for g in plan.groups if g.trainable)
    assert moved == 2 * plan.n_trainable  # bf16 adapters
    partition = deepspeed_zero2.partition_elements(plan.n_trainable, 1)
    flat = deepspeed_zero2.flat_buffer_bytes(plan.n_trainable, 1, 2)
    outside = RunOutside(
        optimizer_init=deepspeed_zero2.init_program(partition, 2, flat), moved_to_cpu=moved
    )
    events = run_events([(sizes, tensors)], outside=outside)
    emptied = events.index(("empty_cache", 0))
    loaded = [size for op, size in events[:emptied] if op == "alloc"]
    assert sum(loaded) == sum(tensors.weights) - moved
    assert len(loaded) == len(tensors.weights)
    assert events[emptied + 1] == ("alloc", flat)
    key = sum(1 for op, _ in events[:emptied] if op == "alloc")  # a key: its request's number
    assert ("free", key) not in events


def test_a_one_rank_zero2_step_copies_its_largest_gradient_in_fp64():
    """The Qwen-7B Int4 row (LoRA r 64 on c_attn, both c_proj, w1, w2): the largest
    trainable tensor is c_attn's lora_B, 3h x r = 12,288 x 64 = 786,432 elements, whose
    ``g.double()`` (l.1582) is 6,291,456 bytes, the step's first transient; on two ranks
    the partition's pieces are not derived (none)."""
    from ftmem.api import PARALLEL_SETTINGS, _architecture, _run_and_spread
    from ftmem.parallel import parallel_step

    rows = yaml.safe_load((ROOT / "calibration" / "settings" / "qwen.yaml").read_text())
    row = next(r for r in rows if r["id"] == "qwen1-7b-qlora-seq256")
    arch = _architecture(str(ROOT / "calibration" / "configs" / row["model"] / "config.json"))
    settings = dict(row["settings"])
    spread = {k: settings.pop(k) for k in list(settings) if k in PARALLEL_SETTINGS}
    run, par = _run_and_spread(settings, spread)
    step = parallel_step(arch, run, par, None)
    assert step.ranks[step.worst].sizes.optimizer.norm_copy == 8 * 3 * 4096 * 64
    two = par.model_copy(update={"gpus": 2})
    step = parallel_step(arch, run, two, None)
    assert step.ranks[step.worst].sizes.optimizer.norm_copy == 0
