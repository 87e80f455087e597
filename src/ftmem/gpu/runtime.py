"""What a CUDA GPU holds besides the step's tensors: the CUDA context, the cuBLAS and
cuBLASLt workspaces PyTorch hands to its BLAS handles, and NCCL's buffers (issue 16,
items 1 and 3).

Two kinds of bytes, kept apart because they land in different published metrics:
- through PyTorch's caching allocator (the cuBLAS / cuBLASLt workspaces): they count in
  ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``;
- outside it (the CUDA context, NCCL's buffers, and cuBLAS's own workspace when PyTorch
  does not set one): only nvidia-smi sees them.

Every constant names its source: a library file at a commit, or a measurement with the
address it was published at. Nothing here is fitted to the calibration rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ftmem.errors import InvalidInputError
from ftmem.hardware import Gpu

KiB = 2**10
MiB = 2**20

# --------------------------------------------------------------------------------------
# Sources, named once
# --------------------------------------------------------------------------------------
CUBLAS_POOL_SRC = (
    "pytorch/pytorch aten/src/ATen/cuda/CublasHandlePool.cpp "
    "@ 26a39059ec580351411f180816c47e2ef5134ae1 (parseChosenWorkspaceSize, "
    "parseCUDABlasLtWorkspaceSize, setWorkspaceForHandle, getCUDABlasLtWorkspace)"
)
CACHING_ALLOCATOR_SRC = (
    "pytorch/pytorch c10/cuda/CUDACachingAllocator.cpp @ "
    "eb42ad6eca0ce61e7c581212b4bf32f991425571 (kMinLargeAlloc, kLargeBuffer)"
)
NCCL_DEVICE_SRC = "NVIDIA/nccl src/include/device.h @ 0524aef7a0333bc79d885e392812519087eab71f"
NCCL_INIT_SRC = (
    "NVIDIA/nccl src/init.cc (DEFAULT_LL_BUFFSIZE, DEFAULT_LL128_BUFFSIZE, DEFAULT_BUFFSIZE)"
)
# One rank connects no ring or tree peers ("if (comm->nRanks == 1) continue;" before each
# ncclTransportP2pConnect) and runs its collectives as a one-rank reduce kernel; its device
# allocations are per-channel peer structs (nRanks + 1 each, MAXCHANNELS = 32): kilobytes.
NCCL_ONE_RANK_SRC = (
    "NVIDIA/nccl v2.14.3-1 = c4e2aa6c792b4e94d0343c72ce20e71285238827 (what PyPI's torch 2.0.1 "
    "requires: nvidia-nccl-cu11==2.14.3): src/init.cc l.783-799, src/enqueue.cc l.1184-1188, "
    "src/channel.cc initChannel, src/include/devcomm.h MAXCHANNELS"
)
NCCL_P2P_SRC = (
    "NVIDIA/nccl src/transport/p2p.cc @ 033d799524fb97629af5ac2f609de367472b2696 "
    "(p2pRecvSetup: LL + LL128 (+ SIMPLE unless P2P read) on the receiver; p2pSendSetup: "
    "SIMPLE on the sender when P2P read)"
)

# --------------------------------------------------------------------------------------
# 1. The CUDA context
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContextMeasurement:
    """One published size of a bare CUDA context (nvidia-smi before any tensor)."""

    bytes: int
    compute_capability: str | None  # None: the GPU was not named
    module_loading: str  # "lazy" or "eager"
    setting: str
    source: str
    quote: str


# PyTorch 1.13 made CUDA_MODULE_LOADING=LAZY the default when unset (pytorch/pytorch
# PR #86509); lazy loading needs a CUDA >= 11.7 runtime and a >= R515 driver (CUDA
# programming guide, "Lazy Loading"). The PR measured cudaMemGetInfo's total-free after
# one 20x16x50x100 fp32 tensor, which the caching allocator serves from a 20 MiB
# segment (1 MiB < 6.4 MB < kMinLargeAlloc = 10 MiB -> kLargeBuffer = 20 MiB,
# CACHING_ALLOCATOR_SRC); the context is what is left.
PR86509_SEGMENT_BYTES = 20 * MiB
PR86509_LAZY = ContextMeasurement(
    bytes=287_047_680 - PR86509_SEGMENT_BYTES,
    compute_capability=None,
    module_loading="lazy",
    setting="PyTorch 1.13, CUDA 11.7, one 6.4 MB tensor (its 20 MiB segment subtracted)",
    source="https://github.com/pytorch/pytorch/pull/86509",
    quote="which shows a memory usage of: 287,047,680 bytes",
)
PR86509_EAGER = ContextMeasurement(
    bytes=666_632_192 - PR86509_SEGMENT_BYTES,
    compute_capability=None,
    module_loading="eager",
    setting="same run with CUDA_MODULE_LOADING=DEFAULT (eager)",
    source="https://github.com/pytorch/pytorch/pull/86509",
    quote="which shows 666,632,192 bytes",
)
# Generic lazy figure from a PyTorch maintainer (ptrblck), used when the generation has
# no measurement of its own: "around 400MB" (a second answer says "~300MB", #107667).
MAINTAINER_LAZY = ContextMeasurement(
    bytes=400 * MiB,
    compute_capability=None,
    module_loading="lazy",
    setting="any GPU, CUDA >= 11.7, lazy module loading (PyTorch's default)",
    source="https://github.com/pytorch/pytorch/issues/109888",
    quote="The first CUDA operation will create the CUDA context which uses around 400MB "
    "if CUDA >= 11.7 is used and lazy module loading enabled",
)
CONTEXT_BY_CAPABILITY: dict[str, ContextMeasurement] = {
    "8.6": ContextMeasurement(
        bytes=256 * MiB,
        compute_capability="8.6",
        module_loading="lazy",
        setting="RTX 3090, torch 2.7.1+cu128, driver 610.43.03, no tensor",
        source="https://github.com/invoke-ai/InvokeAI/issues/9413",
        quote="On this host that is a flat 256 MiB.",
    ),
    "8.9": ContextMeasurement(
        bytes=426 * MiB,
        compute_capability="8.9",
        module_loading="lazy",
        setting="RTX 6000 Ada, torch 2.10.0+cu130, context from torch.cuda.mem_get_info",
        source="https://github.com/unslothai/unsloth-zoo/pull/1053",
        quote="| `torch.cuda.mem_get_info(0)` | 426 MiB | 0 / 0 |",
    ),
}


def lazy_loading_default(torch_version: str | None) -> bool:
    """Whether PyTorch sets CUDA_MODULE_LOADING=LAZY itself (1.13 and later, PR #86509);
    an unknown version is taken as a current one."""
    # A caveat this cannot see: PyTorch sets the variable in its first _lazy_init (torch
    # 2.0.1 torch/cuda/__init__.py), while torch.cuda.is_available() runs cuInit earlier
    # (cudaGetDeviceCount); DeepSpeed >= 0.10.3 calls it when imported. Whether the driver
    # reads the variable at cuInit is not documented (calibration/notes/qwen.md, issue 16).
    version = parse_version(torch_version)
    return version is None or version >= (1, 13)


def context_measurement(compute_capability: str | None, *, lazy: bool = True) -> ContextMeasurement:
    """The context size for a GPU generation: its own measurement where one is published,
    the maintainer's generic figure otherwise; eager loading has one measurement."""
    if not lazy:
        return PR86509_EAGER
    if compute_capability in CONTEXT_BY_CAPABILITY:
        return CONTEXT_BY_CAPABILITY[compute_capability]
    return MAINTAINER_LAZY


# --------------------------------------------------------------------------------------
# 2. cuBLAS / cuBLASLt workspaces
# --------------------------------------------------------------------------------------

# parseChosenWorkspaceSize (CUBLAS_POOL_SRC): "/* :4096:2:16:8 default, 32MiB for Hopper */"
# default_size = sm90 ? 4096 * 8 * 1024 : 4096 * 1024 * 2 + 16 * 1024 * 8
CUBLAS_DEFAULT_CONFIG = ":4096:2:16:8"
CUBLAS_HOPPER_CONFIG = ":4096:8"
# The ROCm branch of the same function: "32MiB default, 128MiB for gfx94x/gfx95x".
HIPBLAS_DEFAULT_BYTES = 32 * MiB
HIPBLAS_GFX94_BYTES = 128 * MiB
# parseCUDABlasLtWorkspaceSize: "workspace_size = 1024; /* default size in KiB according
# to #73328 */" on CUDA, "76*1024; /* Use 76 MB for hipBLASLt */" on ROCm.
CUBLASLT_DEFAULT_BYTES = 1024 * KiB
HIPBLASLT_DEFAULT_BYTES = 76 * 1024 * KiB

# One workspace per (handle, stream); handles are per thread (DeviceThreadHandlePool's
# thread_local PoolWindow, CUBLAS_POOL_SRC). A training step runs cuBLAS on two threads of
# one stream: the Python thread (forward) and the autograd engine's CUDA device thread
# (backward and checkpointed recomputation). pytorch/pytorch torch/csrc/autograd/engine.cpp
# @ e1253a956f6866469eafd88cc3bfb4627f4b1efc, Note [Allocating GPUs to autograd threads]:
# "We allocate one thread to handle all CPU operations, and a thread per CUDA device";
# Note [Streaming backwards]: backward ops "are run on the same stream that ran them in
# forward". PyTorch's own clear function names both threads: "Clear cuBLAS workspaces on
# this thread and CUDA autograd worker threads" (PR #187726).
TRAINING_BLAS_THREADS = 2

_CONFIG_PAIR = re.compile(r":([0-9]+):([0-9]+)")


def parse_cublas_workspace_config(config: str) -> int | None:
    """Bytes of one workspace for a CUBLAS_WORKSPACE_CONFIG value, the way PyTorch reads
    it: every ":SIZE_KiB:COUNT" pair adds SIZE * 1024 * COUNT; None when nothing parses
    (PyTorch then warns and uses its default)."""
    pairs = _CONFIG_PAIR.findall(config)
    if not pairs:
        return None
    return sum(int(size) * KiB * int(count) for size, count in pairs)


def parse_version(version: str | None) -> tuple[int, int] | None:
    """(major, minor) of a version string such as "2.1.0+cu121"; None if unreadable."""
    if version is None:
        return None
    match = re.match(r"\s*(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _capability(compute_capability: str | None) -> tuple[int, int] | None:
    return parse_version(compute_capability)


def uses_32mib_default(compute_capability: str | None, torch_version: str | None) -> bool:
    """Whether PyTorch's default cuBLAS workspace is 32 MiB on this GPU.

    Hopper (9.0) since PyTorch 2.0 (PR #91564, re-open of #89027, merged Jan 2023).
    Blackwell (10.x, 12.x; 11.x later) from PR #175344 (merged 2026-02-19): taken as from
    PyTorch 2.11, the first release cut after it (a doubt: the release is not verified).
    """
    cap = _capability(compute_capability)
    if cap is None:
        return False
    if cap == (9, 0):
        return True
    version = parse_version(torch_version)
    return cap[0] in (10, 11, 12) and (version is None or version >= (2, 11))


def cublas_workspace_bytes(
    compute_capability: str | None,
    *,
    torch_version: str | None = None,
    config: str | None = None,
    rocm_arch: str | None = None,
) -> int:
    """Bytes of one cuBLAS (hipBLAS on ROCm) workspace PyTorch allocates for a handle;
    ``config`` is CUBLAS_WORKSPACE_CONFIG (HIPBLAS_WORKSPACE_CONFIG on ROCm)."""
    if rocm_arch is not None:
        gfx94_95 = rocm_arch.startswith(("gfx94", "gfx95"))
        default = HIPBLAS_GFX94_BYTES if gfx94_95 else HIPBLAS_DEFAULT_BYTES
    elif uses_32mib_default(compute_capability, torch_version):
        default = parse_cublas_workspace_config(CUBLAS_HOPPER_CONFIG) or 0
    else:
        default = parse_cublas_workspace_config(CUBLAS_DEFAULT_CONFIG) or 0
    if config is None:
        return default
    parsed = parse_cublas_workspace_config(config)
    return default if parsed is None else parsed


# ROCm architecture of the AMD presets: rocminfo on an MI300X prints "Name: gfx942" next
# to "Marketing Name: AMD Instinct MI300X" (https://github.com/ROCm/legacy-rocm-build/issues/4414).
ROCM_ARCH_BY_PRESET = {"mi300x": "gfx942"}


@dataclass(frozen=True)
class WorkspacePolicy:
    """How a PyTorch version holds its BLAS workspaces."""

    through_allocator: bool  # allocated from the caching allocator (else cuBLAS's own)
    persistent: bool  # kept per (handle, stream) for the process's life (else per call)
    lt_persistent: bool  # the cuBLASLt workspace likewise
    why: str


def workspace_policy(
    torch_version: str | None, cuda_version: str | None = None, *, rocm: bool = False
) -> WorkspacePolicy:
    """The version history of CublasHandlePool.cpp, from its pull requests (an unknown
    version is taken as a current one)."""
    version = parse_version(torch_version) or (99, 0)
    lt_kept = version >= (2, 8)  # PR #156495 (June 2025): one Lt workspace per handle+stream
    own = WorkspacePolicy(through_allocator=False, persistent=True, lt_persistent=False, why="")
    kept = WorkspacePolicy(through_allocator=True, persistent=True, lt_persistent=lt_kept, why="")
    if rocm and version < (2, 6):
        why = "ROCm before 2.6: rocBLAS kept its own workspace (set by PyTorch from PR #138791)"
        return replace(own, why=why)
    if rocm:
        return replace(kept, why="ROCm: one hipBLAS workspace per handle (PR #138791)")
    if version < (2, 0):
        # 1.13 left the workspace to cuBLAS: issue #95668, "1.13 does not have this issue"
        return replace(own, why="before 2.0 cuBLAS kept its own workspace (issue #95668)")
    cuda = parse_version(cuda_version)
    if (2, 2) <= version < (2, 4) and cuda is not None and cuda >= (12, 2):
        why = "2.2-2.3 built with CUDA >= 12.2 left it to cuBLAS (PR #113994, undone by #124250)"
        return replace(own, why=why)
    if version >= (2, 15):
        # docs 2.15, TORCH_CUBLAS_WORKSPACE_CACHE: "If set to 1, retains ATen's cuBLAS and
        # cuBLASLt workspaces per handle and stream"; otherwise ATen binds one per call.
        why = "2.15 binds a workspace per call unless TORCH_CUBLAS_WORKSPACE_CACHE=1"
        return WorkspacePolicy(
            through_allocator=True, persistent=False, lt_persistent=False, why=why
        )
    # Explicit workspaces from the caching allocator (PR #83461's design), first released in
    # 2.0: issue #95668 sees them in a 2.0 nightly, not in 1.13.
    return replace(kept, why="one workspace per (handle, stream) from the caching allocator")


# --------------------------------------------------------------------------------------
# 3. NCCL
# --------------------------------------------------------------------------------------

# Per-connection FIFO buffers, one per protocol (NCCL_INIT_SRC; sizes from NCCL_DEVICE_SRC):
# DEFAULT_LL_BUFFSIZE = NCCL_LL_LINES_PER_THREAD(8) * NCCL_LL_MAX_NTHREADS(512)
#                       * NCCL_STEPS(8) * sizeof(union ncclLLFifoLine)(16)
# DEFAULT_LL128_BUFFSIZE = NCCL_LL128_ELEMS_PER_THREAD(120) * NCCL_LL128_MAX_NTHREADS(640)
#                          * NCCL_STEPS(8) * sizeof(uint64_t)(8)
# DEFAULT_BUFFSIZE = 1 << 22 /* 4MiB */ (SIMPLE; NCCL_BUFFSIZE overrides it)
NCCL_STEPS = 8
NCCL_LL_BUFFSIZE = 8 * 512 * NCCL_STEPS * 16
NCCL_LL128_BUFFSIZE = 120 * 640 * NCCL_STEPS * 8
NCCL_SIMPLE_BUFFSIZE = 1 << 22
NCCL_CONNECTION_BYTES = NCCL_LL_BUFFSIZE + NCCL_LL128_BUFFSIZE + NCCL_SIMPLE_BUFFSIZE
# With cuMem each buffer is a 2 MiB-granular allocation: NCCL's ALLOC log on 8x H100
# shows buffers "of size 10485760" (https://github.com/NVIDIA/nccl/issues/1685). cuMem is
# on by default from NCCL 2.19, which PyTorch bundles from 2.2: NCCL's docs quoted in
# https://github.com/vllm-project/vllm/pull/5091 ("since 2.19 this feature is
# auto-enabled by default"; "we hit exactly the problem when we upgrade to pytorch 2.2").
NCCL_CUMEM_GRANULARITY = 2 * MiB
# NCCL_MAX_TREE_ARITY 3 (NCCL_DEVICE_SRC): a tree rank has up to 3 children + 1 parent.
NCCL_MAX_TREE_ARITY = 3
# Collective channels NCCL builds, from INIT logs:
# - PCIe: 2 ("Channel 00/02", https://github.com/rwth-i6/returnn/issues/1469);
# - an NVSwitch node: 24, whatever the GPU count ("Channel 23/24" on HGX A100 8 GPUs,
#   https://github.com/NVIDIA/nccl-tests/issues/100; on 8x H100 "12 one-direction channel.
#   So after duplicate, there are 24 channels totally", https://github.com/NVIDIA/nccl/issues/1367);
# - across nodes: 16, limited by the NICs ("Channel 00/16" on 3x8 H100,
#   https://github.com/NVIDIA/nccl/issues/1453).
NCCL_CHANNELS_PCIE = 2
NCCL_CHANNELS_NVSWITCH_NODE = 24
NCCL_CHANNELS_ACROSS_NODES = 16
# NVLink SHARP (compute capability >= 9.0 with NVSwitch, more than 2 GPUs): NCCL's log on
# 8x H200 "nvlsPerRankSize 301989888" (https://github.com/vllm-project/vllm/issues/9699).
NCCL_NVLS_PER_RANK_BYTES = 301_989_888
# What a communicator costs besides its FIFO buffers (NCCL's own kernels in the context,
# device structures, proxy FIFOs), from one cited measurement on 4x A100 NVLink with
# PyTorch: "for group with only 2 devices, it requires 544 MB. And for group with more
# than 2 devices, it requires 688 MB" (https://github.com/NVIDIA/nccl/issues/964, NCCL
# of mid-2023, no cuMem). With 16 channels the buffers leave the same remainder for both
# (2 and 3 connection sets: 250 and 247 MiB); 24 would leave 103 and 27 MiB. So that
# machine is read as a 16-channel one, and the mean remainder is kept.
NCCL_964_TWO_GPUS = 544 * MiB
NCCL_964_MORE_GPUS = 688 * MiB
NCCL_964_CHANNELS = 16


def nccl_connection_sets(gpus_per_node: int, nodes: int) -> int:
    """Connection buffer sets one rank holds per channel.

    Ring: the receive side of the link from the previous rank plus, with P2P read, the
    SIMPLE buffer on the send side: one full set (NCCL_P2P_SRC). Tree: intra-node a chain
    (one neighbour each side, one with 2 GPUs); across nodes up to NCCL_MAX_TREE_ARITY
    children and a parent.
    """
    if gpus_per_node * nodes <= 1:
        return 0  # NCCL_ONE_RANK_SRC: a one-rank communicator connects no buffers
    if nodes > 1:
        tree = NCCL_MAX_TREE_ARITY + 1
    else:
        tree = 1 if gpus_per_node == 2 else 2
    return 1 + tree


def nccl_channels(*, nvlink: bool, nodes: int) -> int:
    """Collective channels NCCL builds for this topology (logs quoted above)."""
    if not nvlink:
        return NCCL_CHANNELS_PCIE
    return NCCL_CHANNELS_NVSWITCH_NODE if nodes == 1 else NCCL_CHANNELS_ACROSS_NODES


def nccl_fixed_bytes() -> int:
    """NCCL's per-communicator cost beyond its FIFO buffers, from nccl#964's two
    measurements minus the buffers NCCL's source gives them (no cuMem rounding then)."""
    two = NCCL_964_TWO_GPUS - NCCL_964_CHANNELS * nccl_connection_sets(2, 1) * NCCL_CONNECTION_BYTES
    more = (
        NCCL_964_MORE_GPUS - NCCL_964_CHANNELS * nccl_connection_sets(4, 1) * NCCL_CONNECTION_BYTES
    )
    return (two + more) // 2


def nccl_bytes(
    *,
    gpus_per_node: int,
    nodes: int = 1,
    nvlink: bool,
    nvls: bool = False,
    cumem: bool = True,
    communicators: int = 1,
) -> int:
    """Device bytes NCCL holds on one GPU, outside PyTorch's allocator, once its
    communicators have run a collective (buffers are connected at first use)."""
    sets = nccl_connection_sets(gpus_per_node, nodes)
    if sets == 0:
        return 0
    channels = nccl_channels(nvlink=nvlink, nodes=nodes)
    per_set = NCCL_CONNECTION_BYTES
    if cumem:
        per_set = -(-per_set // NCCL_CUMEM_GRANULARITY) * NCCL_CUMEM_GRANULARITY
    one = channels * sets * per_set + nccl_fixed_bytes()
    if nvls and gpus_per_node > 2:
        one += NCCL_NVLS_PER_RANK_BYTES
    return communicators * one


# --------------------------------------------------------------------------------------
# The sum for one GPU
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """What one GPU holds besides the step's tensors, split by where it is counted."""

    context_bytes: int  # outside the allocator
    cublas_workspace_bytes: int  # one workspace
    cublas_workspaces: int  # kept for the process's life (0: one per call)
    cublaslt_workspace_bytes: int  # one workspace
    cublaslt_workspaces: int
    nccl_bytes: int  # outside the allocator
    through_allocator: bool  # whether the BLAS workspaces come from the caching allocator
    notes: tuple[str, ...] = field(default=())

    @property
    def persistent_workspace_bytes(self) -> int:
        """BLAS workspaces held for the whole run."""
        return (
            self.cublas_workspace_bytes * self.cublas_workspaces
            + self.cublaslt_workspace_bytes * self.cublaslt_workspaces
        )

    @property
    def transient_workspace_bytes(self) -> int:
        """The most a running GEMM adds when its library's workspace is not kept: one
        call uses either cuBLAS or cuBLASLt, so the larger of the two not kept."""
        cublas = 0 if self.cublas_workspaces else self.cublas_workspace_bytes
        cublaslt = 0 if self.cublaslt_workspaces else self.cublaslt_workspace_bytes
        return max(cublas, cublaslt)

    def workspace_events(self) -> tuple[tuple[str, int], ...]:
        """When the kept cuBLAS workspaces are allocated, for a replay of the allocator:
        the first GEMM on each thread. The backward's comes at the start of the backward,
        when the saved activations are all alive, so it adds to the allocated peak."""
        if not self.cublas_workspaces:
            return (("every GEMM (freed when it returns)", self.cublas_workspace_bytes),)
        moments = ("first GEMM of the forward", "first GEMM of the backward")
        return tuple(
            (when, self.cublas_workspace_bytes) for when in moments[: self.cublas_workspaces]
        )

    @property
    def allocated_bytes(self) -> int:
        """Persistent bytes that count in max_memory_allocated."""
        return self.persistent_workspace_bytes if self.through_allocator else 0

    @property
    def outside_allocator_bytes(self) -> int:
        """Bytes only nvidia-smi sees: context, NCCL, cuBLAS's own workspaces."""
        own = 0 if self.through_allocator else self.persistent_workspace_bytes
        return self.context_bytes + self.nccl_bytes + own


def _nvlink_assumed(compute_capability: str | None) -> bool:
    """Datacenter SXM parts (7.0 V100, 8.0 A100, 9.0 H100/H200) are taken as NVLink-
    connected when several share a node; every other part as PCIe."""
    return compute_capability in ("7.0", "8.0", "9.0")


def _check_layout(*, gpus: int, nodes: int, communicators: int, loading: str | None) -> None:
    for name, value in (("gpus", gpus), ("nodes", nodes), ("communicators", communicators)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a whole number of at least 1, not {value!r}.")
    if loading not in (None, "lazy", "eager"):
        raise InvalidInputError(f"module_loading must be 'lazy' or 'eager', not {loading!r}.")


def runtime_for(
    gpu: Gpu | None,
    *,
    gpus: int = 1,
    nodes: int = 1,
    torch_version: str | None = None,
    cuda_version: str | None = None,
    cublas_workspace_config: str | None = None,
    module_loading: str | None = None,
    nvlink: bool | None = None,
    nvls: bool | None = None,
    communicators: int = 1,
) -> Runtime:
    """The runtime's bytes on one GPU of ``gpus`` per node over ``nodes`` nodes.

    ``communicators``: NCCL communicators the run creates on each GPU (2 for HSDP's shard
    and replicate groups, or TP beside DP); each costs its own buffers. ``nvls=False`` for
    NCCL_NVLS_ENABLE=0; by default NVLink SHARP is taken as on where NCCL enables it."""
    _check_layout(gpus=gpus, nodes=nodes, communicators=communicators, loading=module_loading)
    capability = gpu.compute_capability if gpu is not None else None
    rocm_arch = ROCM_ARCH_BY_PRESET.get(gpu.id) if gpu is not None and gpu.vendor == "amd" else None
    lazy = (
        lazy_loading_default(torch_version) if module_loading is None else module_loading == "lazy"
    )
    context = context_measurement(capability, lazy=lazy)
    rocm = gpu is not None and gpu.vendor == "amd"
    policy = workspace_policy(torch_version, cuda_version, rocm=rocm)
    one = cublas_workspace_bytes(
        capability, torch_version=torch_version, config=cublas_workspace_config, rocm_arch=rocm_arch
    )
    # getCUDABlasLtWorkspaceSize caps the Lt workspace at the cuBLAS one (CUBLAS_POOL_SRC).
    lt = HIPBLASLT_DEFAULT_BYTES if rocm else min(CUBLASLT_DEFAULT_BYTES, one)
    link = _nvlink_assumed(capability) if nvlink is None else nvlink
    cap = _capability(capability)
    version = parse_version(torch_version)
    nccl = nccl_bytes(
        gpus_per_node=gpus,
        nodes=nodes,
        nvlink=link,
        nvls=(link and cap is not None and cap >= (9, 0)) if nvls is None else nvls,
        cumem=version is None or version >= (2, 2),  # NCCL 2.19 from PyTorch 2.2
        communicators=communicators,
    )
    notes = (
        f"CUDA context {context.bytes / MiB:.0f} MiB ({context.module_loading} loading): {context.source}",
        f"BLAS workspaces: {policy.why}",
    )
    return Runtime(
        context_bytes=context.bytes,
        cublas_workspace_bytes=one,
        cublas_workspaces=TRAINING_BLAS_THREADS if policy.persistent else 0,
        cublaslt_workspace_bytes=lt,
        cublaslt_workspaces=TRAINING_BLAS_THREADS if policy.lt_persistent else 0,
        nccl_bytes=nccl,
        through_allocator=policy.through_allocator,
        notes=notes,
    )
