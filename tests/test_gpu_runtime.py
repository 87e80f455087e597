"""The runtime's bytes (CUDA context, cuBLAS/cuBLASLt workspaces, NCCL) against the
sources they come from: each expected number is derived here from the quoted source
line or published measurement, not read back from the module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ftmem.errors import InvalidInputError
from ftmem.gpu import runtime as rt
from ftmem.hardware import Gpu
from ftmem.presets import get_gpu
from ftmem.validation import InvalidFields

ROOT = Path(__file__).resolve().parents[1]
GPU_FILES = sorted((ROOT / "presets" / "gpus").glob("*.yaml"))
KiB, MiB = 2**10, 2**20


# --- cuBLAS workspace ------------------------------------------------------------------


def test_default_config_is_two_4mib_and_eight_16kib_pools():
    # CublasHandlePool.cpp: ":4096:2:16:8 default" -> 2 x 4096 KiB + 8 x 16 KiB
    assert rt.parse_cublas_workspace_config(":4096:2:16:8") == 2 * 4096 * KiB + 8 * 16 * KiB


def test_hopper_config_is_32_mib():
    # "32MiB for Hopper": ":4096:8" -> 8 x 4 MiB
    assert rt.parse_cublas_workspace_config(":4096:8") == 8 * 4 * MiB == 32 * MiB


def test_unparsable_config_falls_back_to_the_default():
    # PyTorch warns "Could not parse CUBLAS_WORKSPACE_CONFIG, using default workspace size"
    a100 = get_gpu("a100-80gb").compute_capability
    assert rt.cublas_workspace_bytes(a100, config="4096x8") == 8_519_680
    assert rt.cublas_workspace_bytes(a100, config=":16:8") == 8 * 16 * KiB


def test_ampere_workspace_matches_the_published_snapshot():
    # issue #95668 (A10G, 2.0 nightly): "AssertionError: (8519680, 0)" after one nn.Linear;
    # the forum snapshot shows a block of "size: 8519680" in a 20971520-byte segment.
    run = rt.runtime_for(get_gpu("a10g"), torch_version="2.0.0")
    assert run.cublas_workspace_bytes == 8_519_680


@pytest.mark.parametrize(
    ("preset", "version", "expected"),
    [
        ("h100-80gb", "2.1.0", 32 * MiB),  # sm90 since 2.0
        ("h200", "2.4.1", 32 * MiB),
        ("a100-80gb", "2.4.1", 8_519_680),  # sm80: the default
        ("l40s", None, 8_519_680),  # sm89
        ("rtx5090", "2.7.0", 8_519_680),  # sm120 before PR #175344
        ("rtx5090", "2.11.0", 32 * MiB),  # "32MiB for Hopper and Blackwell"
        ("v100-32gb", "2.1.0", 8_519_680),
    ],
)
def test_workspace_size_by_generation(preset: str, version: str | None, expected: int):
    assert rt.runtime_for(get_gpu(preset), torch_version=version).cublas_workspace_bytes == expected


def test_unknown_gpu_uses_the_default_size():
    assert rt.runtime_for(None).cublas_workspace_bytes == 8_519_680


def test_training_keeps_one_workspace_per_thread_in_the_allocator():
    # forward on the Python thread, backward on the autograd device thread: 2 handles, one
    # stream; cuBLASLt workspaces kept too from 2.8 (1024 KiB default, PR #156495).
    run = rt.runtime_for(get_gpu("a100-80gb"), torch_version="2.8.0")
    assert run.through_allocator
    assert run.allocated_bytes == 2 * 8_519_680 + 2 * 1024 * KiB
    assert run.transient_workspace_bytes == 0


def test_before_2_8_the_lt_workspace_lives_only_during_its_call():
    run = rt.runtime_for(get_gpu("h100-80gb"), torch_version="2.1.2")
    assert run.allocated_bytes == 2 * 32 * MiB
    assert run.transient_workspace_bytes == 1024 * KiB


def test_2_15_binds_a_workspace_per_call():
    run = rt.runtime_for(get_gpu("h100-80gb"), torch_version="2.15.0")
    assert run.allocated_bytes == 0
    assert run.transient_workspace_bytes == 32 * MiB


def test_cuda_12_2_builds_of_2_2_left_the_workspace_to_cublas():
    run = rt.runtime_for(get_gpu("a100-80gb"), torch_version="2.3.1", cuda_version="12.4")
    assert not run.through_allocator and run.allocated_bytes == 0
    assert run.outside_allocator_bytes == run.context_bytes + 2 * 8_519_680
    # the cu121 wheels of the same release still allocate it (CUDA_VERSION < 12200)
    wheel = rt.runtime_for(get_gpu("a100-80gb"), torch_version="2.3.1", cuda_version="12.1")
    assert wheel.through_allocator and wheel.allocated_bytes == 2 * 8_519_680


def test_mi300x_uses_the_gfx94_hipblas_sizes():
    # "32MiB default, 128MiB for gfx94x/gfx95x"; "Use 76 MB for hipBLASLt"
    run = rt.runtime_for(get_gpu("mi300x"), torch_version="2.8.0")
    assert run.cublas_workspace_bytes == 128 * 1024 * KiB
    assert run.cublaslt_workspace_bytes == 76 * 1024 * KiB


# --- CUDA context ----------------------------------------------------------------------


def test_pr86509_context_is_its_total_minus_the_tensor_segment():
    # 20x16x50x100 fp32 = 6.4 MB, between kMinLargeAlloc's 1 MiB and 10 MiB -> one
    # kLargeBuffer segment of 20 MiB; the rest of cudaMemGetInfo's total-free is context.
    tensor = 20 * 16 * 50 * 100 * 4
    assert 1 * MiB < tensor < 10 * MiB
    assert rt.PR86509_LAZY.bytes == 287_047_680 - 20 * MiB
    assert rt.PR86509_EAGER.bytes == 666_632_192 - 20 * MiB


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("rtx3090", 256 * MiB),  # InvokeAI #9413: "a flat 256 MiB"
        ("rtx-a6000", 256 * MiB),  # same generation (8.6)
        ("rtx4090", 426 * MiB),  # unsloth-zoo #1053, RTX 6000 Ada (8.9): 426 MiB
        ("l4", 426 * MiB),
        ("h100-80gb", 400 * MiB),  # no 9.0 measurement: "around 400MB" (#109888)
        ("a100-80gb", 400 * MiB),
    ],
)
def test_context_by_generation(preset: str, expected: int):
    assert rt.runtime_for(get_gpu(preset)).context_bytes == expected


def test_eager_loading_before_1_13():
    # 1.13 sets CUDA_MODULE_LOADING=LAZY when unset (PR #86509); 1.12 loaded every module
    old = rt.runtime_for(get_gpu("a100-80gb"), torch_version="1.12.1")
    assert old.context_bytes == 666_632_192 - 20 * MiB
    forced = rt.runtime_for(get_gpu("rtx3090"), torch_version="2.4", module_loading="eager")
    assert forced.context_bytes == old.context_bytes


# --- NCCL ------------------------------------------------------------------------------


def test_nccl_connection_is_the_three_protocol_fifos():
    ll = 8 * 512 * 8 * 16  # lines/thread x threads x NCCL_STEPS x sizeof(ncclLLFifoLine)
    ll128 = 120 * 640 * 8 * 8  # elems/thread x threads x NCCL_STEPS x sizeof(uint64_t)
    simple = 4 * MiB  # DEFAULT_BUFFSIZE (1 << 22)
    assert rt.NCCL_CONNECTION_BYTES == ll + ll128 + simple == 9_633_792


def test_cumem_rounding_gives_the_logged_buffer_size():
    # nccl#1685's ALLOC log on 8x H100: buffers "of size 10485760"
    rounded = -(-rt.NCCL_CONNECTION_BYTES // (2 * MiB)) * (2 * MiB)
    assert rounded == 10_485_760


def test_one_fixed_remainder_explains_both_nccl_964_measurements():
    # 4x A100 NVLink: 544 MB for a 2-GPU group, 688 MB for larger ones. With 16 channels,
    # ring + chain-tree buffers (2 sets for 2 GPUs, 3 for more) leave the same remainder;
    # with an NVSwitch node's 24 they would not, so that machine had 16.
    conn = 9_633_792

    def remainders(channels: int) -> tuple[float, float]:
        return 544 * MiB - channels * 2 * conn, 688 * MiB - channels * 3 * conn

    two, more = remainders(16)
    assert abs(two - more) < 4 * MiB
    assert abs(rt.nccl_fixed_bytes() - (two + more) / 2) < 1
    two_24, more_24 = remainders(24)
    assert abs(two_24 - more_24) > 50 * MiB


def test_nvswitch_node_has_24_channels_and_nodes_16():
    assert rt.nccl_channels(nvlink=True, nodes=1) == 24
    assert rt.nccl_channels(nvlink=True, nodes=4) == 16
    assert rt.nccl_channels(nvlink=False, nodes=1) == 2
    a100_8 = rt.runtime_for(get_gpu("a100-80gb"), gpus=8, torch_version="2.4").nccl_bytes
    assert a100_8 == 24 * 3 * 10_485_760 + rt.nccl_fixed_bytes()


def test_no_nccl_on_one_gpu():
    assert rt.runtime_for(get_gpu("h100-80gb"), gpus=1).nccl_bytes == 0


def test_one_rank_communicator_connects_no_buffers():
    # NCCL 2.14.3 (torch 2.0.1's) src/init.cc: "if (comm->nRanks == 1) continue;" skips
    # ncclTransportP2pConnect for every ring and tree channel, so no FIFO set is made:
    # 0 sets x any channel count x NCCL_CONNECTION_BYTES. The fixed remainder of nccl#964
    # (2- and 4-rank groups) is not charged either: Qwen-1's DeepSpeed rows on one A100
    # keep their device figure free of NCCL bytes.
    assert "v2.14.3-1" in rt.NCCL_ONE_RANK_SRC and "init.cc" in rt.NCCL_ONE_RANK_SRC
    assert rt.nccl_connection_sets(1, 1) == 0
    for torch_version in ("2.0", "2.4"):
        run = rt.runtime_for(get_gpu("a100-80gb"), gpus=1, torch_version=torch_version)
        assert run.nccl_bytes == 0
        assert run.outside_allocator_bytes == run.context_bytes == 400 * MiB


def test_nccl_grows_across_nodes_then_stops():
    # sjeaugey (nccl#864 via #986): "The number of GPUs, although beyond 2 nodes it
    # should no longer increase."
    one = rt.nccl_bytes(gpus_per_node=8, nodes=1, nvlink=True)
    two = rt.nccl_bytes(gpus_per_node=8, nodes=2, nvlink=True)
    many = rt.nccl_bytes(gpus_per_node=8, nodes=16, nvlink=True)
    assert one < two == many


def test_nvls_only_on_hopper_with_more_than_two_gpus():
    gap = rt.NCCL_NVLS_PER_RANK_BYTES
    h100_8 = rt.runtime_for(get_gpu("h100-80gb"), gpus=8).nccl_bytes
    a100_8 = rt.runtime_for(get_gpu("a100-80gb"), gpus=8).nccl_bytes
    assert h100_8 - a100_8 == gap == 301_989_888
    h100_2 = rt.runtime_for(get_gpu("h100-80gb"), gpus=2).nccl_bytes
    a100_2 = rt.runtime_for(get_gpu("a100-80gb"), gpus=2).nccl_bytes
    assert h100_2 == a100_2


def test_pcie_cards_build_two_channels():
    pcie = rt.runtime_for(get_gpu("rtx4090"), gpus=4, torch_version="2.4").nccl_bytes
    assert pcie == 2 * 3 * 10_485_760 + rt.nccl_fixed_bytes()


def test_8x_h100_is_at_least_what_nccl_1685_saw_before_its_first_all_to_all():
    # "before 1st all_to_all_single ... NV 1.06 GB" per GPU with PyTorch's memory excluded
    # (context + NCCL). NCCL >= 2.22 connects an algorithm's buffers at its first use, so
    # a run that has done its collectives holds at least this much.
    run = rt.runtime_for(get_gpu("h100-80gb"), gpus=8)
    assert run.context_bytes + run.nccl_bytes >= 1.06e9


# --- compute capability of the presets --------------------------------------------------

# NVIDIA's CUDA GPUs pages (current, legacy, and the 2022 data-center table)
NVIDIA_TABLE = {
    "a100-40gb": "8.0",
    "a100-80gb": "8.0",
    "a10g": "8.6",
    "h100-80gb": "9.0",
    "h200": "9.0",
    "l4": "8.9",
    "l40s": "8.9",
    "rtx-a6000": "8.6",
    "rtx3090": "8.6",
    "rtx4090": "8.9",
    "rtx5090": "12.0",
    "t4": "7.5",
    "v100-16gb": "7.0",
    "v100-32gb": "7.0",
}


@pytest.mark.parametrize("path", GPU_FILES, ids=lambda p: p.stem)
def test_every_preset_has_a_capability_or_a_reason(path: Path):
    gpu = get_gpu(path.stem)
    assert gpu.compute_capability_source, gpu.id
    if gpu.vendor == "nvidia":
        assert gpu.compute_capability == NVIDIA_TABLE[gpu.id]
        assert "developer.nvidia.com/cuda" in gpu.compute_capability_source
    else:
        assert gpu.compute_capability is None
        assert "no CUDA compute capability" in gpu.compute_capability_source


# presets whose memory source quotes torch's device properties ("major=8, minor=6")
QUOTED = [p.stem for p in GPU_FILES if re.search(r"major=\d+, minor=\d+", p.read_text())]


def test_some_memory_sources_quote_device_properties():
    assert {"a10g", "h200", "t4"} <= set(QUOTED)


@pytest.mark.parametrize("preset", QUOTED)
def test_capability_agrees_with_torch_properties_quoted_in_the_memory_source(preset: str):
    gpu = get_gpu(preset)
    quoted = re.search(r"major=(\d+), minor=(\d+)", gpu.source)
    assert quoted is not None
    assert gpu.compute_capability == f"{quoted.group(1)}.{quoted.group(2)}"


def test_capability_must_be_major_dot_minor():
    base = {"id": "x", "name": "x", "memory_bytes": 16 * 2**30, "source": "s"}
    assert Gpu(**base, compute_capability="9.0").compute_capability == "9.0"
    for bad in ("9", "sm90", "nine", "9.0.1"):
        with pytest.raises(InvalidFields, match="String should match pattern"):
            Gpu(**base, compute_capability=bad)


def test_version_parsing():
    assert rt.parse_version("2.1.0+cu121") == (2, 1)
    assert rt.parse_version("2.10") == (2, 10)
    assert rt.parse_version("nightly") is None


def test_workspaces_are_allocated_at_each_threads_first_gemm():
    kept = rt.runtime_for(get_gpu("h100-80gb"), torch_version="2.4.0").workspace_events()
    assert [size for _, size in kept] == [32 * MiB, 32 * MiB]
    assert "backward" in kept[1][0]
    per_call = rt.runtime_for(get_gpu("a100-80gb"), torch_version="2.15.0").workspace_events()
    assert per_call == (("every GEMM (freed when it returns)", 8_519_680),)


@pytest.mark.parametrize(
    "bad",
    [{"gpus": 0}, {"nodes": -1}, {"communicators": True}, {"module_loading": "LAZY"}],
)
def test_bad_layouts_are_one_sentence_errors(bad: dict[str, object]):
    with pytest.raises(InvalidInputError) as err:
        rt.runtime_for(get_gpu("a100-80gb"), **bad)  # type: ignore[arg-type]
    message = str(err.value)
    assert message.endswith(".") and message.count(". ") == 0
