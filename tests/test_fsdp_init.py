"""FSDP1 wrapping a model held on rank 0's CPU (ftmem.fsdp_init), as fsdp_qlora's
train.py runs it.

Every expected request below is derived in the test from the code ftmem.fsdp_init cites
(torch/distributed/fsdp/_init_utils.py ``_init_param_handle_from_module``, c10d's
``broadcast_coalesced`` and ``compute_bucket_assignment_by_size``, ``FlatParamHandle``'s
``flatten_tensors`` and ``shard``; bitsandbytes ``quantize_4bit``'s packed output), never
copied from the module's output.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

import ftmem
from ftmem.api import _architecture
from ftmem.fsdp_init import Unit, broadcast_buckets, wrap_program, wrap_units
from ftmem.gpu.allocator import CachingAllocator
from ftmem.gpu.trace import RunOutside, _EventLog, _load, _Recorder
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from tests import fsdp_gloo as gloo

from .conftest import tiny

MiB = 2**20
LIMIT = 250 * MiB  # _init_utils.py PARAM_BROADCAST_BUCKET_SIZE
CONFIGS = Path(__file__).resolve().parents[1] / "calibration" / "configs"


def test_buckets_close_when_they_reach_the_limit():
    # reducer.cpp: the tensor is added, then `if (bucket.size >= bucket_size_limit)` the
    # bucket closes; the rest form a last bucket
    assert broadcast_buckets([200 * MiB, 100 * MiB, LIMIT, 8192, 4096]) == [
        [200 * MiB, 100 * MiB],  # 300 MiB >= 250 MiB: closed with the tensor that crossed
        [LIMIT],  # exactly the limit: a bucket of its own
        [8192, 4096],
    ]


def test_one_unit_in_order():
    """A unit of five bf16 parameters on 2 GPUs, sharded (FULL_SHARD)."""
    p0, p1, p2, p3, p4 = 200 * MiB, 100 * MiB, 250 * MiB, 8192, 4096
    unit = Unit(params=(p0, p1, p2, p3, p4), moved=(3, 4, 0, 1, 2), element_bytes=2)
    program = wrap_program([unit], 2, shards=True, offload=False, resident=0)
    total = p0 + p1 + p2 + p3 + p4
    assert program == (
        # 1. _move_module_to_device: one param.to(device) each, breadth-first (allocs 0-4)
        ("alloc", p3), ("alloc", p4), ("alloc", p0), ("alloc", p1), ("alloc", p2),
        # 2. broadcast_coalesced: bucket [p0, p1] flattened by at::cat (alloc 5); bucket
        # [p2] is a view of p2 (nothing); the third bucket finds two in flight, so the
        # first finishes and is freed, then [p3, p4] is flattened (alloc 6); the rest finish
        # The copies are NCCL's inputs, record_stream'ed on its stream: their frees
        # wait until a sync shows the broadcasts done (none inside the unit)
        ("alloc", p0 + p1),
        ("alloc", p3 + p4),
        # 3. flatten_tensors: torch.cat of the parameters, the unsharded flat param (7)
        ("alloc", total),
        # 4. shard: chunk(2)[0].clone(), ceil(n / 2) elements of 2 bytes (8); the
        # unsharded storage resized to 0
        ("alloc", -(-(total // 2) // 2) * 2), ("free", 7),
        # 6. the original parameters, freed when _init_param_handle_from_module returns
        # and its `managed_params` list (parameters() order) is freed, last item first;
        # p2 (alloc 4) was broadcast in place: recorded too
        ("free", 1), ("free", 0), ("free", 3), ("free", 2),
        # after the last unit, the training loop's first blocking copy syncs: the
        # recorded blocks come back, in the order they were freed
        ("free", 5), ("free", 6), ("free", 4),
    )  # fmt: skip


def test_no_shard_keeps_the_flat_parameter_and_offload_frees_the_shard():
    a, b = 3 * MiB, 5 * MiB
    unit = Unit(params=(a, b), moved=(0, 1), element_bytes=2)
    # NO_SHARD: no shard(); the flat parameter (alloc 3) is what stays
    assert wrap_program([unit], 2, shards=False, offload=False, resident=a + b) == (
        ("alloc", a), ("alloc", b),
        ("alloc", a + b),  # one bucket of two tensors: at::cat, freed but recorded
        ("alloc", a + b),  # the flat parameter, kept
        ("free", 1), ("free", 0),
        ("free", 2),  # the bucket's copy, back after the wrap
    )  # fmt: skip
    # CPUOffload(offload_params=True): flat_param_to(cpu) after shard() frees the shard;
    # it is a blocking copy (memcpy_and_sync), so the broadcast is done and its copy back
    assert wrap_program([unit], 2, shards=True, offload=True, resident=0) == (
        ("alloc", a), ("alloc", b),
        ("alloc", a + b),
        ("alloc", a + b), ("alloc", (a + b) // 2), ("free", 3),
        ("free", 4),  # the shard moved to the CPU
        ("free", 2),  # the bucket's copy, back at that sync
        ("free", 1), ("free", 0),
    )  # fmt: skip


def test_recorded_broadcast_blocks_come_back_after_the_next_units_first_move():
    """NCCL record_streams a broadcast's input (ProcessGroupNCCL collective(): "inputs
    ... must record the ncclStream"); the caching allocator keeps a freed block with
    stream uses out of its pool until its event has completed (CUDACachingAllocator.cpp
    free / insert_events / process_events). Rank 0's next move is a blocking copy
    from the CPU (Copy.cu copy_kernel_cuda: memcpy_and_sync), after which every
    broadcast is done: the blocks are back for the unit's later requests."""
    a, b, c = 3 * MiB, 5 * MiB, 2 * MiB
    first = Unit(params=(a, b), moved=(0, 1), element_bytes=2)
    second = Unit(params=(c,), moved=(0,), element_bytes=2)
    program = wrap_program([first, second], 2, shards=False, offload=False, resident=0)
    assert program == (
        ("alloc", a), ("alloc", b), ("alloc", a + b), ("alloc", a + b),
        ("free", 1), ("free", 0),
        ("alloc", c),  # the second unit's first move: its malloc, then its sync
        ("free", 2),  # the first unit's bucket copy, back
        # one tensor: broadcast in the parameter itself, which is recorded
        ("alloc", c),  # its flat parameter
        ("free", 4),  # the moved parameter, back after the wrap
    )  # fmt: skip


def test_buffers_move_after_the_parameters_and_broadcast_first():
    """A decoder layer's buffers (transformers 4.37's rotary cos and sin tables): moved
    after the parameters (_move_states_to_device: params, then buffers), broadcast before
    them (_sync_module_params_and_buffers: ``module.buffers()`` then the parameters), kept.
    In another dtype (fp32 tables beside bf16 weights) they are a bucket of their own,
    sorted first by its smallest index (reducer.cpp compute_bucket_assignment_by_size);
    in the same dtype they open the parameters' bucket."""
    a, b, c = 3 * MiB, 5 * MiB, 2 * MiB
    apart = Unit(params=(a, b), moved=(0, 1), element_bytes=2, buffers=(c, c), buffers_apart=True)
    assert wrap_program([apart], 2, shards=False, offload=False, resident=0) == (
        ("alloc", a), ("alloc", b),  # the parameters moved
        ("alloc", c), ("alloc", c),  # the buffers moved, kept
        ("alloc", 2 * c),  # the buffers' bucket, flattened (recorded)
        ("alloc", a + b),  # the parameters' bucket (recorded)
        ("alloc", a + b),  # the flat parameter
        ("free", 1), ("free", 0),  # the original parameters; the buffers stay
        ("free", 4), ("free", 5),  # the buckets' copies, back after the wrap
    )  # fmt: skip
    joined = Unit(params=(a, b), moved=(0, 1), element_bytes=2, buffers=(c, c))
    program = wrap_program([joined], 2, shards=False, offload=False, resident=0)
    assert program[4] == ("alloc", 2 * c + a + b)  # one bucket of buffers and parameters
    # the rank's resident bytes count the buffers as kept: nothing requested before them
    resident = a + b + 2 * c
    assert wrap_program([joined], 2, shards=False, offload=False, resident=resident)[0] == (
        "alloc",
        a,
    )


def test_a_recorded_bucket_copy_is_not_reused_by_the_flat_parameter():
    """By hand from CUDACachingAllocator.cpp's rules: a request between 1 and 10 MiB
    takes a 20 MiB segment (kLargeBuffer) and splits it. a (3 MiB), b (5) and the bucket's
    copy (8) fit one segment, leaving 4 MiB; the flat parameter (8 MiB) would take the
    copy's block back if it were free, but the copy waits on NCCL's stream: a second
    segment."""
    a, b = 3 * MiB, 5 * MiB
    unit = Unit(params=(a, b), moved=(0, 1), element_bytes=2)
    allocator = CachingAllocator()
    keys: list[int] = []
    for op, value in wrap_program([unit], 2, shards=False, offload=False, resident=0):
        if op == "alloc":
            keys.append(allocator.malloc(value))
            if len(keys) == 4:  # the flat parameter made: the wrap's peak
                assert allocator.stats().reserved == 2 * 20 * MiB
        else:
            allocator.free(keys[value])
    assert allocator.stats().reserved == 2 * 20 * MiB


def test_units_follow_fsdp_qlora_policy_and_bnb_packing():
    """Tiny Llama (d=96, I=160, 2 layers, V=300), QLoRA r=8 on q and v, bf16 adapters."""
    arch = tiny("llama")
    run = RunConfig(method="qlora", lora_r=8, lora_targets="q,v", adapter_dtype="bf16")
    units = wrap_units(plan_method(arch, run), arch.num_layers, "bf16")
    assert units is not None
    # quantize_4bit(quant_storage=bf16): (n + 1) // (2 * 2) bf16 elements of packed data
    attn = 2 * ((96 * 96 + 1) // 4)  # 4608
    mlp = 2 * ((160 * 96 + 1) // 4)  # 7680
    norm = 2 * 96
    lora = Unit((2 * 8 * 96,), (0,), 2)  # lora_A (8, 96) and lora_B (96, 8)
    block = Unit(
        # module.parameters(): q, k, v, o, gate, up, down, then the two norms
        params=(attn, attn, attn, attn, mlp, mlp, mlp, norm, norm),
        # breadth-first: the norms (depth 1), the linears peft did not wrap (k, o, gate,
        # up, down at depth 2), then q's and v's base_layer (depth 3)
        moved=(7, 8, 1, 3, 4, 5, 6, 0, 2),
        element_bytes=2,
    )
    embed = 2 * 300 * 96
    root = Unit((embed, norm, embed), (2, 0, 1), 2)  # lm_head at depth 1, then model.*
    # auto wrap: children first (each LoRA matrix, then its decoder layer), the root last
    assert units == (lora, lora, lora, lora, block, lora, lora, lora, lora, block, root)


def test_the_wrap_replaces_the_weights_in_the_replay():
    unit = Unit(params=(3 * MiB, 5 * MiB), moved=(0, 1), element_bytes=2)
    program = wrap_program([unit], 2, shards=True, offload=False, resident=4 * MiB + 512)
    # what the shard (4 MiB) does not make up of the rank's weights comes first, kept:
    # what loading left on the GPU (the quant states)
    assert program[0] == ("alloc", 512)
    log = _EventLog()
    _load(_Recorder(log), RunOutside(wrap=program, reset=True), (4 * MiB + 512,))
    # the wrap's requests in order and nothing else (no weight allocated beside them);
    # no request is empty, so the program's j-th alloc is the log's j-th request
    assert log.events == list(program)


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_the_estimate_reserves_at_least_what_the_wrap_left(method):
    """The step window starts from the wrap's cache (reset_peak_memory_stats frees
    nothing), so the reserved peak is at least the reserved after wrapping, replayed alone."""
    settings = dict(
        method=method,
        lora_r=64,
        lora_targets="q,k,v,gate,up,down",
        adapter_dtype="bf16",
        grad_ckpt=True,
        batch_size=1,
        seq_len=512,
        framework="fsdp_qlora",
    )
    config = str(CONFIGS / "llama-2-7b" / "config.json")
    est = ftmem.estimate(config, gpu="rtx3090", **settings, gpus=2, strategy="fsdp")
    arch = _architecture(config)
    plan = plan_method(arch, RunConfig(**settings))
    units = wrap_units(plan, arch.num_layers, "bf16")
    assert units is not None
    allocator = CachingAllocator()
    keys: list[int] = []
    for op, value in wrap_program(units, 2, shards=True, offload=False, resident=0):
        if op == "alloc":
            keys.append(allocator.malloc(value))
        else:
            allocator.free(keys[value])
    after_wrap = allocator.stats().reserved
    # A lower bound derived by hand: while the root unit is sharded, every other unit's
    # shard is held, and so are the root's moved lm_head and embedding (V x d bf16 each),
    # its unsharded flat parameter and its shard (half of it, 2 GPUs)
    d, inter, V, L, r = 4096, 11008, 32000, 32, 64
    linears = 4 * d * d + 3 * inter * d  # q, k, v, o, gate, up, down
    base = linears // 2 if method == "qlora" else 2 * linears  # bnb packed / bf16
    layer = base + 2 * 2 * d  # + the two RMSNorm weights
    lora = 2 * r * (3 * (d + d) + 2 * (d + inter) + (inter + d))  # A and B, bf16
    shards = L * (layer + lora) // 2
    head = 2 * V * d
    flat = 2 * head + 2 * d  # embed_tokens, norm, lm_head
    assert after_wrap >= shards + 2 * head + flat + flat // 2
    assert est.memory.peak_reserved_bytes >= after_wrap


def _sizes(events, skip):
    """("alloc"|"free", bytes) in order, the allocations in ``skip`` left out."""
    sizes, out = [], []
    for op, value in events:
        if op == "alloc":
            sizes.append(value)
            if len(sizes) - 1 not in skip:
                out.append((op, value))
        else:
            out.append((op, sizes[value]))
    return out


BUCKET_LIMIT = 3000  # bytes: a tiny unit's a + b reach it, buckets [a, b] and [n]


def _tiny_model():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(20, 30, bias=False)  # 2400 bytes
            self.b = nn.Linear(30, 20, bias=False)  # 2400 bytes
            self.n = nn.LayerNorm(20, bias=False)  # 80 bytes
            # two buffers in another dtype, as 4.37's fp32 rotary tables beside bf16
            # weights: 8 x 8 float64, 512 bytes each
            self.register_buffer("cos", torch.ones(8, 8, dtype=torch.float64), persistent=False)
            self.register_buffer("sin", torch.ones(8, 8, dtype=torch.float64), persistent=False)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])
            self.head = nn.Linear(20, 7, bias=False)  # 560 bytes

    return Model(), Block


def _wrap_events() -> list[tuple[str, int]]:
    """A rank wrapping the tiny model with FSDP1 (FULL_SHARD): the storages' allocations
    and frees, as the tracker logs them."""
    import torch
    import torch.distributed.fsdp._init_utils as init_utils
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from ftmem.measure.tracker import LiveBytesTracker

    gloo.allow_sync_module_states_on_the_cpu()
    init_utils.PARAM_BROADCAST_BUCKET_SIZE = BUCKET_LIMIT
    model, block = _tiny_model()
    events: list[tuple[str, int]] = []
    tracker = LiveBytesTracker(events)
    tracker.track(*model.parameters(), *model.buffers())  # the originals, before the wrap
    resize = torch.storage.TypedStorage._resize_

    def logged_resize(storage, size):  # shard(): the unsharded storage resized to 0
        resize(storage, size)
        tracker.resized(torch.empty(0, dtype=storage.dtype).set_(storage._untyped_storage))

    torch.storage.TypedStorage._resize_ = logged_resize
    with tracker:
        FullyShardedDataParallel(
            model,
            auto_wrap_policy=ModuleWrapPolicy({block}),
            device_id=torch.device("cpu"),
            sync_module_states=True,
            use_orig_params=False,
        )
    return events


def test_torch_fsdp_makes_the_same_requests_on_the_cpu(tmp_path):
    """PyTorch's own FSDP1 (the installed torch) wrapping a CPU model over gloo on two
    ranks, rank 0's storages logged: the broadcast buckets' copies (the blocks' float64
    buffers in a bucket of their own, first), the flat parameters, the shards, the flat
    storages resized away and the originals' frees, in order. On the CPU the moves are
    no-ops, so the originals are the tracked parameters and buffers."""
    events = gloo.on_two_ranks(tmp_path, _wrap_events)
    # the tracked originals: 2 x 3 parameters and 2 x 2 buffers in the blocks, the head
    measured = _sizes(events, skip=set(range(11)))
    block = Unit(
        params=(2400, 2400, 80),
        moved=(0, 1, 2),
        element_bytes=4,
        buffers=(512, 512),
        buffers_apart=True,
    )
    head = Unit(params=(560,), moved=(0,), element_bytes=4)
    predicted = []
    for unit in (block, block, head):
        program = wrap_program(
            [unit], 2, shards=True, offload=False, resident=0, bucket_bytes=BUCKET_LIMIT
        )
        # the moves are no-ops on the CPU: the tracked originals stand for them
        predicted += _sizes(program, skip=set(range(len(unit.params) + len(unit.buffers))))
    # the allocations in order, exactly; the frees as a whole: when a broadcast bucket's
    # copy is freed depends on gloo's worker thread finishing the transfer, so a free can
    # land before or after the next allocation from one run to the next (seen in CI)
    allocs = [x for x in measured if x[0] == "alloc"]
    assert allocs == [x for x in predicted if x[0] == "alloc"]
    assert sorted(measured) == sorted(predicted)


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_the_rotary_tables_are_moved_and_broadcast_with_each_layer(method):
    """transformers 4.37.2 registers each attention layer's cos and sin tables (4096
    positions x 128 dims, models/llama/modeling_llama.py:133-146) in the default dtype
    while the model is built: fp32 for fsdp_qlora's QLoRA (from_config without a dtype),
    bf16 for its LoRA (from_pretrained(torch_dtype=bf16)). Each decoder layer's unit moves
    them after its parameters and broadcasts them first: the fp32 pair as a bucket of its
    own (one 4 MiB copy per layer), the bf16 pair at the head of the parameters' first
    bucket (q, k, v, o, gate, up: 2 MiB + 4 x 32 MiB + 2 x 86 MiB)."""
    from ftmem.api import parallel_config
    from ftmem.estimate import _fsdp_wrap

    settings = dict(
        method=method,
        lora_r=64,
        lora_targets="q,k,v,gate,up,down",
        adapter_dtype="bf16",
        grad_ckpt=True,
        framework="fsdp_qlora",
        transformers_version="4.37.2",
    )
    arch = _architecture(str(CONFIGS / "llama-2-7b" / "config.json"))
    run = RunConfig(**settings)
    plan = plan_method(arch, run)
    par = parallel_config(gpus=2, strategy="fsdp")
    program = _fsdp_wrap(arch, run, par, plan, 10 * 2**30).wrap
    sizes = [value for op, value in program if op == "alloc"]
    table = 4096 * 128 * (4 if method == "qlora" else 2)
    d, inter = 4096, 11008
    first_bucket = 4 * 2 * d * d + 2 * 2 * inter * d  # q, k, v, o, gate, up in bf16
    if method == "qlora":
        assert sizes.count(2 * table) == 32  # the fp32 tables' own bucket, per layer
        # the packed weights and the norms, a bucket without the tables (bf16 storage:
        # n / 2 bytes per 4-bit weight)
        layer = (4 * d * d + 3 * inter * d) // 2 + 2 * 2 * d
        assert sizes.count(layer) == 32 * 2  # the bucket's copy and the flat parameter
    else:
        assert sizes.count(2 * table + first_bucket) == 32
    # moved after the parameters: each layer's two tables, one after the other
    pairs = sum(1 for x, y in pairwise(sizes) if x == y == table)
    assert pairs >= 32
