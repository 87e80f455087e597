"""GPU descriptions and the runtime overhead that sits outside PyTorch's allocator."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from ftmem.limits import GPU_MEMORY

MiB = 2**20

# What nvidia-smi shows beyond torch.cuda.max_memory_allocated(), split in parts:
# the CUDA context (driver, kernels, cuBLAS handle; ~300-600 MiB on recent drivers
# with lazy module loading) and the caching allocator's reserve/fragmentation.
# Defaults until the GPU validation script measures them (docs/gpu-validation.md).
DEFAULT_CUDA_CONTEXT_BYTES = 512 * MiB
DEFAULT_ALLOCATOR_RESERVE_FRACTION = 0.05


class Gpu(BaseModel):
    """One accelerator model; memory_bytes is what the device reports, not its label."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    vendor: str = "nvidia"
    memory_bytes: PositiveInt = Field(
        description="Total memory as the driver reports it (torch total_memory / nvidia-smi)."
    )
    source: str
    aliases: tuple[str, ...] = ()
    bf16: bool = True
    fp8: bool = False
    compute_capability: str | None = Field(
        default=None,
        pattern=r"^[0-9]+\.[0-9]$",
        description="NVIDIA compute capability 'major.minor' (None: unknown or not NVIDIA).",
    )
    compute_capability_source: str | None = Field(
        default=None,
        description="Where the compute capability comes from, or why there is none.",
    )
    notes: str | None = None

    @field_validator("memory_bytes", mode="before")
    @classmethod
    def _count_not_flag(cls, value: object) -> object:
        if isinstance(value, bool):  # pydantic's lax integers would read true as 1 byte
            raise ValueError(f"memory_bytes must be a number of bytes, not {value}")
        return value

    @model_validator(mode="after")
    def _within_bounds(self) -> Gpu:
        problem = GPU_MEMORY.problem("memory_bytes", self.memory_bytes)
        if problem:
            raise ValueError(problem)
        return self


def custom_gpu(memory_bytes: int) -> Gpu:
    """A GPU given only by its memory (``--gpu-memory 24GiB``)."""
    return Gpu(id="custom", name="custom", memory_bytes=memory_bytes, source="--gpu-memory")


def runtime_overhead(peak_bytes: int, override: int | None = None) -> int:
    """What nvidia-smi shows beyond the allocated peak: the CUDA context and the
    allocator's reserve, unless the user gave their own figure."""
    if override is not None:
        return override
    return DEFAULT_CUDA_CONTEXT_BYTES + int(peak_bytes * DEFAULT_ALLOCATOR_RESERVE_FRACTION)
