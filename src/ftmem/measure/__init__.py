"""Measure the memory of a real finetuning step, to check the estimator against.

``import ftmem.measure`` does not import torch: :func:`measure` imports the torch-using
submodules (``build``, ``tracker``, ``step``, ``saved``) when it is called.

    >>> from ftmem.measure import measure
    >>> m = measure(arch, run, device="cpu")      # doctest: +SKIP
    >>> m.peak_allocated_bytes, m.peak_phase       # doctest: +SKIP

Needs torch, transformers and peft (and bitsandbytes for qlora / 8-bit optimizers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ftmem.arch import Architecture
    from ftmem.distill import Teacher
    from ftmem.run import RunConfig

__all__ = ["Measurement", "WarmUp", "cuda_device", "cuda_visible", "measure"]

Phase = Literal["forward", "backward", "optimizer"]
WarmUp = Literal["step", "states"]  # measure()'s warm-up: a real step, or the states only


@dataclass(frozen=True)
class Measurement:
    """Memory of one steady-state training step, in bytes (each storage counted once)."""

    # persistent state
    weights_bytes: int  # parameters (+ quantisation state: absmax, codes); tied once
    buffers_bytes: int  # registered buffers (rotary inv_freq, ...), not in weights_bytes
    n_params: int  # logical parameter count (a packed 4-bit weight counts its unpacked size)
    n_trainable_params: int
    gradients_bytes: int  # sum of p.grad after the last backward
    optimizer_states_bytes: int  # every tensor in optimizer.state (incl. AdamW `step`)
    # forward
    # saved for backward at the end of forward+loss (saved_tensors_hooks, plus tensors a
    # custom autograd.Function keeps on ctx, e.g. bitsandbytes int8), params excluded;
    # includes autocast's 16-bit weight copies and checkpointed blocks' inputs
    activations_bytes: int
    forward_retained_bytes: int  # live-bytes growth over forward+loss (loss kept, logits dropped)
    # the step
    baseline_bytes: int  # live before the measured step: weights, buffers, states, inputs
    peak_allocated_bytes: int
    peak_phase: Phase
    phase_peaks: dict[str, int]  # absolute peak of live bytes within each phase
    activations_by_op: dict[str, int] = field(default_factory=dict)  # autograd node -> bytes
    # CUDA only (None on the CPU): torch.cuda.max_memory_reserved() over the whole run
    # (loading, warm-up and the measured step: the caching allocator's segments), and the
    # device memory at that peak: what mem_get_info shows in use outside the allocator
    # (CUDA context, libraries' own memory, and any other process on the same GPU) plus
    # the reserved peak, what nvidia-smi would show then
    peak_reserved_bytes: int | None = None
    device_bytes: int | None = None
    # provenance
    device: str = "cpu"
    tracker: str = ""  # "cuda-allocator" or "dispatch" (the CPU LiveBytesTracker)
    attn_implementation: str = ""
    torch_version: str = ""
    transformers_version: str = ""
    peft_version: str | None = None
    bitsandbytes_version: str | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        from dataclasses import asdict

        return asdict(self)


def cuda_visible() -> bool:
    """Whether torch sees a CUDA GPU here (imports torch; ImportError without it)."""
    import torch

    return bool(torch.cuda.is_available())


def cuda_device() -> tuple[str, int]:
    """The current CUDA device's name and total memory (imports torch)."""
    import torch

    return torch.cuda.get_device_name(), torch.cuda.mem_get_info()[1]


def measure(
    arch: Architecture,
    run: RunConfig,
    *,
    device: str = "cpu",
    steps: int = 2,
    seed: int = 0,
    fake: bool = False,
    teacher: Teacher | None = None,
    warm_up: WarmUp = "step",
) -> Measurement:
    """Build the model for ``arch``/``run``, train ``steps`` steps, measure the last one.

    With a ``teacher`` (16-bit or fp32 weights) the step is ftmem's reference
    distillation step (:mod:`ftmem.distill`): teacher logits under no_grad, then the
    student's cross-entropy plus the temperature-scaled KL term; weights include the
    teacher's.

    Step 1 creates the optimizer states; the last step is measured phase by phase
    (forward+loss, backward, optimizer.step + zero_grad(set_to_none=True)). On CUDA the
    caching allocator's statistics are used; on the CPU a dispatch-mode tracker of live
    tensor storages (:class:`ftmem.measure.tracker.LiveBytesTracker`).

    ``warm_up="states"`` (the CPU tracker only, two steps, no GRPO) replaces the
    warm-up step by what the measured step needs of it: the first micro-batch's forward
    (what a first forward leaves on the model, such as bitsandbytes' bias cast), then
    zero gradients on the leaves its graph reaches and one optimizer step over them,
    with no backward and no collection of the garbage. The tracker counts the storages
    it is told of and those ops make, not an allocator's cache, so nothing else of the
    warm-up's history can reach the reading (tests/accuracy/test_warm_up.py checks the
    two agree field by field); elsewhere it falls back to the real step.

    ``fake=True`` runs the same step under FakeTensorMode: real-size shapes (a 13B
    model on a laptop), no memory allocated; see ``step.FAKE_NOTES`` for what it
    cannot see.

    Raises RuntimeError for what cannot be measured here (an optimizer without a
    reference implementation, bitsandbytes missing), and
    :class:`ftmem.measure.build.ParamCountMismatch` if the built model's parameter count
    differs from :func:`ftmem.arch.count_params`.
    """
    from ftmem.measure.step import run_measurement
    from ftmem.vision import for_image_size

    if run.image_size is not None:  # (Qwen-VL's images at the run's size)
        arch = arch.model_copy(update={"vision": for_image_size(arch.vision, run.image_size)})
    return run_measurement(
        arch,
        run,
        device=device,
        steps=steps,
        seed=seed,
        fake=fake,
        teacher=teacher,
        warm_up=warm_up,
    )
