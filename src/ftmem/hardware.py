"""GPU descriptions: what each accelerator has (its memory, generation, dtypes)."""

from __future__ import annotations

from ftmem.limits import GPU_MEMORY
from ftmem.validation import Field, Model, PositiveInt, field_validator, model_validator


class Gpu(Model):
    """One accelerator model; memory_bytes is what the device reports, not its label."""

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
        if isinstance(value, bool):  # true is not 1 byte: said as the field's own sentence
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
