"""The estimate as a plain, serialisable result: integers in bytes, stable field names.

This is the JSON contract (``--format json``); presentation reads it and does no
arithmetic of its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AtPeak(_Frozen):
    """What is allocated at the peak moment; the parts sum to the peak."""

    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    temporaries: int

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer_states
            + self.activations
            + self.temporaries
        )


class PhasePeaks(_Frozen):
    forward: int
    backward: int
    optimizer: int


class SavedItem(_Frozen):
    what: str
    bytes: int


class Memory(_Frozen):
    """Component sizes (whole step) and the predicted peak.

    ``*_bytes`` are the full sizes of each component; ``at_peak`` splits
    ``peak_allocated_bytes`` (the predicted ``torch.cuda.max_memory_allocated()``)
    into what is live at that moment.
    """

    weights_bytes: int
    gradients_bytes: int
    optimizer_states_bytes: int
    activations_bytes: int
    temporaries_bytes: int
    peak_allocated_bytes: int
    overhead_bytes: int
    total_bytes: int
    peak_phase: str
    at_peak: AtPeak
    phases: PhasePeaks
    activations_per_block: list[SavedItem]
    activations_outer: list[SavedItem]


class ModelInfo(_Frozen):
    name: str
    family: str
    n_params: int
    n_trainable_params: int


class Estimate(_Frozen):
    schema_version: int = SCHEMA_VERSION
    model: ModelInfo
    run: dict[str, Any]
    memory: Memory
    gpu: dict[str, Any] | None
    fits: bool | None
    headroom_bytes: int | None
    notes: list[str]
