"""DeepSpeed ZeRO-3's optimizer step (ftmem.deepspeed_zero3), against hand derivations from
microsoft/DeepSpeed@6ea44d02c674393c524ada811ea376c55438a913 (v0.12.3)
deepspeed/runtime/zero/stage3.py, written out below for each case."""

from __future__ import annotations

from pathlib import Path

import ftmem
from ftmem.deepspeed_zero3 import init_program, overflow_check_program, sub_groups

ROOT = Path(__file__).resolve().parents[1]
QWEN1 = ROOT / "calibration" / "configs" / "qwen1-1.8b" / "config.json"

# Qwen-1 1.8B (calibration/configs/qwen1-1.8b/config.json): h 2048, 24 blocks, vocab
# 151,936, MLP 5,504 (w1/w2 = intermediate_size / 2), untied head
H, L, V, F = 2048, 24, 151_936, 5_504
EMBED = V * H  # 311,164,928: wte and lm_head each
QKV = 3 * H * H + 3 * H  # the stand-in's q, k, v weights and biases (Qwen-1's c_attn)
BLOCK = QKV + H * H + 3 * H * F + 2 * H  # + o, gate/up/down, two RMSNorm weights
PSI = 2 * EMBED + L * BLOCK + H  # + ln_f


def test_block_and_total_elements() -> None:
    assert BLOCK == 50_604_032
    assert PSI == 1_836_828_672


def test_sub_groups_cut_like_create_fp16_sub_groups() -> None:
    """s3 l.890-913: a sub-group closes at the first parameter that brings its running
    size to sub_group_size or more; one group when the size covers everything."""
    assert sub_groups([4, 4, 4], size=12) == [12]  # ``sub_group_size >= params_group_numel``
    assert sub_groups([4, 4, 4], size=8) == [8, 4]  # closes at 8 >= 8
    assert sub_groups([5, 4, 4], size=8) == [9, 4]  # 9 >= 8: exceeds it by a tensor
    assert sub_groups([3, 3, 3, 3], size=5) == [6, 6]
    assert sub_groups([], size=5) == []


def _estimate(**over: object) -> ftmem.Estimate:
    settings: dict[str, object] = dict(
        method="full",
        precision="bf16",
        optimizer="adamw",
        batch_size=1,
        seq_len=256,
        grad_ckpt=True,
        gpus=1,
        strategy="zero3",
    )
    settings.update(over)
    return ftmem.estimate(str(QWEN1), **settings)


def test_one_rank_step_is_one_sub_group_flattened_and_converted() -> None:
    """Qwen-1 1.8B, ZeRO-3 on one GPU, bf16 (the Qwen README's full-finetuning rows).

    Sub-group 0, in model.parameters() order: wte (311,164,928) + 13 blocks
    (657,852,416) = 969,017,344 < 1e9, so it closes inside block 14 at the first tensor
    that reaches 1e9 (30,982,656 more needed). Where in block 14 depends on the order of
    its tensors, which the test leaves open: the sub-group is between 969,017,345 and
    969,017,344 + BLOCK elements.

    The step (s3 step l.1940-1975): fp64 norm copies one at a time, 8 x wte =
    2,489,319,424 bytes; then flatten (2 n) and .to(fp32) (4 n) of sub-group 0 together:
    6 n > 5.8 GB, the larger. Persistent: bf16 params 2 psi, grad_partitions_flat_buffer
    2 psi (bf16, l.492), fp32 master 4 psi, Adam m and v 8 psi; the ipg bucket h^2 x 2
    bytes (l.482-485, reduce_bucket_size = h^2 from HF's "auto")."""
    est = _estimate()
    m = est.memory
    persistent = 16 * PSI + H * H * 2
    step = m.peak_allocated_bytes - persistent - m.at_peak.workspaces - m.at_peak.block_rounding
    assert m.peak_phase == "optimizer"
    assert step % 6 == 0
    n0 = step // 6
    assert 969_017_344 < n0 <= 969_017_344 + BLOCK
    # the old model: an fp32 gradient of every parameter at once (4 psi = 7.35 GB)
    assert step < 4 * PSI
    assert step > 8 * EMBED


def test_one_rank_has_no_gathered_copies() -> None:
    """One rank: NoGatherHandle aliases each partition (partition_parameters.py
    l.44-56), so forward and backward hold only the persistent ipg bucket (h^2 x 2 bytes)
    as communication, not blocks in flight."""
    m = _estimate().memory
    assert m.communication_bytes == H * H * 2


def test_two_ranks_cut_their_partitions() -> None:
    """Two ranks: each holds ceil(numel / 2) of every tensor, 918,414,336 elements in all,
    under 1e9: one sub-group, so the step's transient is 6 x psi / 2 = 5,510,486,016
    bytes (3 psi), above the fp64 copy of half of wte (8 x 155,582,464)."""
    m = _estimate(gpus=2).memory
    per_rank = PSI // 2
    assert m.temporaries_bytes == 6 * per_rank


def test_init_program_keeps_the_totals_and_frees_its_transients() -> None:
    """Partitions [6, 6, 6] with sub_group_size 8: sub-groups 12 and 6 (the first closes
    at 12 >= 8). bf16 (2 bytes): the flat weights 36 bytes; per sub-group a 16-bit clone
    (24, 12) freed after its fp32 master (48, 24); the fp32 gradient_buffer of the
    largest sub-group (48), freed after the states (here 8 bytes per element beyond the
    masters: 144, split 96 / 48 by size, two tensors each); the gradients' buffer last."""
    program = init_program(
        [6, 6, 6], weights=36, states=4 * 18 + 144, grads=36, model_bytes=2, size=8
    )
    allocs = [v for op, v in program if op == "alloc"]
    freed = {v for op, v in program if op == "free"}
    assert allocs == [36, 24, 48, 12, 24, 48, 48, 48, 24, 24, 36]
    assert freed == {1, 3, 5}
    kept = sum(v for i, v in enumerate(allocs) if i not in freed)
    assert kept == 36 + (4 * 18 + 144) + 36


def test_one_rank_reserved_is_what_the_init_leaves_plus_the_step() -> None:
    """The caching allocator's reserved peak for the 1.8B run, by hand (segments of
    PyTorch's caching allocator, each request above 10 MiB its own cudaMalloc rounded to
    2 MiB when no cached block fits, best fit otherwise):

    init (deepspeed_zero3.init_program): flat weights 2 psi; clone 2 n0 (segment C,
    freed), master 4 n0; clone 2 n1 < 2 n0 reuses C, master 4 n1; gradient_buffer 4 n0
    (segment G, freed); Adam's m, v: 4 n0 + 4 n0 + 4 n1 + 4 n1; the gradients' buffer
    2 psi < 4 n0 takes G. Cached now: C (2 n0) and G's rest (4 n0 - 2 psi).
    step: the fp64 copy of wte (8 x EMBED = 2.49 GB) fits neither: a new segment; the
    flat copy 2 n0 then fits C exactly, and the fp32 gradient 4 n0 fits nothing: a new
    segment. Reserved: 2 psi + 2 n0 + 4 psi + 4 n0 + 8 psi + 8 EMBED + 4 n0
    = 14 psi + 10 n0 + 8 EMBED, plus the small blocks (the ipg bucket, activations)."""
    m = _estimate().memory
    persistent = 16 * PSI + H * H * 2
    n0 = (m.peak_allocated_bytes - persistent - m.at_peak.workspaces) // 6
    by_hand = 14 * PSI + 10 * n0 + 8 * EMBED
    assert by_hand <= m.peak_reserved_bytes <= by_hand + 64 * 2**20


MiB = 2**20


def _segment(nbytes: int) -> int:
    """The caching allocator's segment for one request above 10 MiB: rounded up to 2 MiB
    (gpu.allocator.SOURCE, get_allocation_size: kRoundLarge)."""
    return -(-nbytes // (2 * MiB)) * 2 * MiB


def test_isinf_copies_the_tensor_before_its_mask() -> None:
    """torch.isinf of a floating tensor is ``self.abs() == inf`` (aten TensorCompare.cpp
    ``isinf``): the profiler sees an abs copy in the tensor's dtype (2 bytes an element in
    bf16) and a one-byte mask; torch.isnan is ``self != self``, one mask. This is what
    ZeRO-3's overflow check runs on its whole gradient buffer."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    n = 1 << 16
    x = torch.zeros(n, dtype=torch.bfloat16)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.isinf(x).any()
        torch.isnan(x).any()
    made = {}
    for event in prof.events():
        if event.name in ("aten::abs", "aten::eq", "aten::ne") and event.cpu_memory_usage > 0:
            made.setdefault(event.name, event.cpu_memory_usage)
    assert made == {"aten::abs": 2 * n, "aten::eq": n, "aten::ne": n}


def test_overflow_check_program_by_hand() -> None:
    """has_overflow (v0.12.3 stage3.py l.2062-2076): isinf's abs (2 x 1,000 bytes in
    bf16) and mask (1,000) alive together, the abs freed, .any() (1 byte), the mask and
    the flag freed; then isnan's mask (1,000) and its .any(), both freed."""
    program = overflow_check_program(1_000, 2)
    allocs = [v for op, v in program if op == "alloc"]
    freed = [v for op, v in program if op == "free"]
    assert allocs == [2_000, 1_000, 1, 1_000, 1]
    assert sorted(freed) == [0, 1, 2, 3, 4]


def test_bf16_overflow_check_before_0_11_2_adds_its_reduce_stream_segments() -> None:
    """DeepSpeed <= 0.11.1 runs the overflow check for bf16 too (stage3.py@v0.11.1
    l.1843-1846; skipped for bf16 from 244040c1, v0.11.2). On one rank it scans the whole
    gradient buffer (psi elements, bf16) on reduce_and_partition_stream, whose blocks the
    default stream never reuses. By hand, in the caching allocator's segments: the abs
    copy 2 psi (a segment of its own), the mask psi (another: the abs is still alive),
    the .any() flags one 2 MiB small-pool segment; isnan's mask then fits the first
    mask's block. The first step's check leaves 2 psi + psi (each rounded up to 2 MiB)
    + 2 MiB reserved on that stream for the rest of the run, after the init and before
    the step's own peak (the flat copy and fp32 gradient on the default stream), so the
    reserved peak grows by exactly that; the allocated peak does not (3 psi < the step's
    6 n0)."""
    now = _estimate().memory
    old = _estimate(deepspeed_version="0.11.1").memory
    assert old.peak_reserved_bytes - now.peak_reserved_bytes == (
        _segment(2 * PSI) + _segment(PSI) + 2 * MiB
    )
    assert old.peak_allocated_bytes == now.peak_allocated_bytes
    assert _estimate(deepspeed_version="0.11.2").memory == now


def test_fp16_is_checked_in_every_release_and_never_on_the_host() -> None:
    """fp16 is checked in every release (``if self.dtype == torch.float16``, v0.12.3
    l.1888-1893); with the optimizer offloaded the gradient buffer lives on the host
    (l.492-497, ``device=self.device``, the CPU), so the check allocates no GPU memory."""
    fp16 = _estimate(precision="fp16").memory
    assert fp16 == _estimate(precision="fp16", deepspeed_version="0.11.1").memory
    bf16 = _estimate(deepspeed_version="0.11.1").memory
    assert fp16.peak_reserved_bytes == bf16.peak_reserved_bytes
    offloaded = dict(offload_optimizer="cpu")
    assert (
        _estimate(**offloaded).memory == _estimate(**offloaded, deepspeed_version="0.11.1").memory
    )
