"""What every training-loop integration does, whatever reads the run: estimate it from
a :class:`~ftmem.integrations.live.LiveRun` before step 1 (and stop it when asked and
it will not fit), measure one step (CUDA counters, or ftmem's CPU tracker of live tensor
bytes), predict again at the shape that step ran, and build the record.

:class:`Preflight` holds that state; ``ftmem.integrations.hf.FtmemCallback`` and
``ftmem.integrations.lightning.FtmemCallback`` read the live objects and drive it from
their framework's events. Imports torch (the user's run has it).
"""

from __future__ import annotations

import platform
from typing import Any

import torch  # noqa: TID251 - an integration: the user's run has torch

from ftmem import api
from ftmem.errors import FtmemError
from ftmem.hardware import Gpu, custom_gpu
from ftmem.integrations import report
from ftmem.integrations.live import LiveRun, compared
from ftmem.integrations.report import Measured, RunWillNotFitError
from ftmem.optim import BNB_OPTIMIZERS
from ftmem.result import Estimate


class Preflight:
    """The estimate before step 1, the measured step, the prediction at its shape.

    ``gpu`` (a preset name or a :class:`~ftmem.hardware.Gpu`) or ``gpu_memory`` (a
    size, "24GiB") is the budget; without either, the CUDA device's total memory.
    ``settings`` are ftmem.estimate's and win over what is read.
    """

    source = "integration"  # the record's "source"

    def __init__(
        self,
        *,
        gpu: str | Gpu | None = None,
        gpu_memory: str | int | None = None,
        overhead: str | int | None = None,
        fail_if_not_fits: bool = False,
        report_after: int = 5,
        quiet: bool = False,
        **settings: Any,
    ) -> None:
        if report_after < 1:
            raise ValueError(f"report_after must be 1 or more, not {report_after}.")
        self.gpu = gpu
        self.gpu_memory = gpu_memory
        self.overhead = overhead
        self.fail_if_not_fits = fail_if_not_fits
        self.report_after = report_after
        self.quiet = quiet
        self.given = settings
        self.live: LiveRun | None = None
        self.estimate: Estimate | None = None
        self.measured: Measured | None = None
        self.predicted: Estimate | None = None  # at the measured step's shape
        self.problem: str | None = None  # why no estimate was made
        self._main_process = True  # the rank that prints
        self._meter: StepMeter | None = None

    # -- saying --------------------------------------------------------------------------
    def _say(self, line: str) -> None:
        if not self.quiet and self._main_process:
            print(line, flush=True)

    # -- before step 1 -------------------------------------------------------------------
    def _budget(self) -> Gpu | None:
        if self.gpu is not None or self.gpu_memory is not None:
            return api.resolve_gpu(self.gpu, self.gpu_memory)
        if self.live is not None and self.live.settings.get("device") == "cuda":
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            return custom_gpu(int(props.total_memory)).model_copy(
                update={"name": props.name, "source": "torch.cuda.get_device_properties"}
            )
        return None

    def _estimate(self, **changes: Any) -> Estimate:
        assert self.live is not None
        settings = {**self.live.settings, **changes}
        est = api.estimate(self.live.arch, gpu=self._budget(), overhead=self.overhead, **settings)
        extra = compared(self.live, est.model.n_trainable_params)
        return est.model_copy(update={"notes": [*self.live.notes, *extra, *est.notes]})

    def begin(self, read: Any) -> bool:
        """Read the run (``read()`` returns the LiveRun), estimate it, print the
        prediction and raise :class:`RunWillNotFitError` when asked and it will not fit.
        False when there is no estimate (said why; the run goes on)."""
        try:
            self.live = read()
            with_library_versions(self.live)
            self.estimate = self._estimate()
        except FtmemError as exc:
            self.problem = str(exc)
            self._say(f"ftmem: no estimate for this run: {exc}")
            return False
        except Exception as exc:  # a bug of ftmem's must not stop the user's training
            self.problem = f"{type(exc).__name__}: {exc}"
            self._say(
                f"ftmem: no estimate for this run ({self.problem}); training goes on. "
                "Please report it with callback.record()."
            )
            return False
        est = self.estimate
        self._say(report.summary(est, self.live.settings))
        for note in est.notes:
            self._say(f"  - {note}")
        if est.fits is None and self.fail_if_not_fits:
            self._say(
                "ftmem: fail_if_not_fits has no budget to check against: give gpu= or "
                "gpu_memory= (no CUDA device here)."
            )
        if est.fits is False and self.fail_if_not_fits:
            raise RunWillNotFitError(report.not_fitting(est, stopped=True))
        if est.fits is False:
            self._say(report.not_fitting(est, stopped=False))
        return True

    # -- the measured step ---------------------------------------------------------------
    def start_measuring(self, model: Any, optimizer: Any) -> None:
        assert self.live is not None
        self._meter = StepMeter(self.live.settings.get("device") == "cuda", model, optimizer)

    @property
    def measuring(self) -> bool:
        return self._meter is not None

    def track(self, *tensors: Any) -> None:
        """Tensors that exist before the step and that it reads (its batch)."""
        if self._meter is not None:
            self._meter.track(tensors)

    def stop_measuring(
        self, step: int, shape: tuple[int, int] | None, micro_batches: int
    ) -> Measured | None:
        """End the measured step: the measurement, the prediction at its shape, the line."""
        if self._meter is None:
            return None
        peak, reserved, used, tracker = self._meter.stop()
        self._meter = None
        batch, seq = shape or (None, None)
        self.measured = Measured(
            peak_allocated_bytes=peak,
            peak_reserved_bytes=reserved,
            device_bytes=used,
            step=step,
            batch_size=batch,
            seq_len=seq,
            micro_batches=micro_batches,
            tracker=tracker,
        )
        self.predicted = self._predicted_at_measured_shape()
        self._say(self.report_line())
        return self.measured

    def abort_measuring(self) -> None:
        if self._meter is not None:
            self._meter.stop()
            self._meter = None

    def _predicted_at_measured_shape(self) -> Estimate | None:
        """The estimate again at the shape the measured step ran (a dataset's batches
        can be shorter than the longest, an epoch's last step have fewer micro-batches).
        Under a preference or RL objective the model's forwards are not the batch (DPO
        concatenates chosen and rejected, GRPO generates): the settings' shape stays."""
        assert self.live is not None and self.measured is not None
        m, s = self.measured, self.live.settings
        ran: dict[str, Any] = {"grad_accum": m.micro_batches}
        supervised = s.get("objective", "sft") == "sft"
        if supervised and m.batch_size is not None and m.seq_len is not None:
            ran.update(batch_size=m.batch_size, seq_len=m.seq_len)
        if all(s.get(k, 1 if k == "grad_accum" else None) == v for k, v in ran.items()):
            return self.estimate
        try:
            return self._estimate(**ran)
        except FtmemError:
            return self.estimate

    # -- what it says --------------------------------------------------------------------
    def summary(self) -> str:
        """The prediction, in one line."""
        assert self.estimate is not None and self.live is not None
        return report.summary(self.estimate, self.live.settings)

    def report_line(self) -> str:
        assert self.measured is not None and self.predicted is not None
        return report.report_line(self.measured, self.predicted)

    def logged(self) -> dict[str, float]:
        """What goes to the trainer's loggers (GiB, and the prediction's error in %)."""
        return report.logged(self.measured, self.predicted)

    def record(self) -> dict[str, Any]:
        """One JSON-able dict in ``ftmem record``'s format: what was read, predicted and
        measured, with the versions and the device (docs/schema/record.schema.json)."""
        live, est = self.live, self.estimate
        return report.build_record(
            source=self.source,
            model=est.model.name if est else None,
            architecture=live.arch.model_dump(mode="json") if live else None,
            settings=dict(live.settings) if live else None,
            read_from=dict(live.said) if live else None,
            estimate=self.predicted or est,
            measured=self.measured,
            notes=list(est.notes) if est else ([self.problem] if self.problem else []),
            device=device(),
        )


# a measured step: (peak allocated, peak reserved, device bytes, the tracker's name)
Reading = tuple[int, int | None, int | None, str]


class StepMeter:
    """One step's peak: CUDA's allocator counters, or on the CPU ftmem's tracker of live
    tensor bytes, told what exists before the step (weights and buffers, gradients,
    optimizer states; the batch through :meth:`track`)."""

    def __init__(self, on_cuda: bool, model: Any, optimizer: Any) -> None:
        self.tracker: Any = None
        if on_cuda:
            start_cuda(torch.cuda)
            return
        from ftmem.measure.saved import model_state_tensors
        from ftmem.measure.step import optimizer_state_tensors
        from ftmem.measure.tracker import LiveBytesTracker

        self.tracker = LiveBytesTracker()
        self.tracker.track(model_state_tensors(model))
        self.tracker.track([p.grad for p in model.parameters() if p.grad is not None])
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's / Lightning's
        if inner is not None and hasattr(inner, "state"):
            self.tracker.track(optimizer_state_tensors(inner))
        self.tracker.__enter__()

    def track(self, tensors: Any) -> None:
        if self.tracker is not None:
            self.tracker.track(tensors)

    def stop(self) -> Reading:
        """(peak allocated, peak reserved, device bytes, the tracker's name); the last
        two None on the CPU."""
        if self.tracker is None:
            return read_cuda(torch.cuda)
        self.tracker.__exit__(None, None, None)
        return int(self.tracker.peak), None, None, "dispatch"


def start_cuda(cuda: Any) -> None:
    """The measured step starts: the allocator's peaks from here."""
    cuda.synchronize()
    cuda.reset_peak_memory_stats()


def read_cuda(cuda: Any) -> Reading:
    """The measured step's numbers from a CUDA module (``torch.cuda``; a test gives a
    stand-in): the caching allocator's peaks since ``reset_peak_memory_stats`` and the
    device's used memory as nvidia-smi shows it, total minus free
    (``cuda.mem_get_info``: cudaMemGetInfo, every process on the device). Read at the
    step's end: the allocator keeps what it reserved during the step (HF Trainer empties
    its cache only with torch_empty_cache_steps, Lightning not at all), so the device's
    use then includes it, with the CUDA context and the libraries' workspaces. None
    where the driver cannot say."""
    cuda.synchronize()
    allocated = int(cuda.max_memory_allocated())
    reserved = int(cuda.max_memory_reserved())
    try:
        free, total = cuda.mem_get_info()
        used: int | None = int(total) - int(free)
    except (RuntimeError, AttributeError):  # no driver query (a stand-in, a bare runtime)
        used = None
    return allocated, reserved, used, "cuda-allocator"


def with_library_versions(live: LiveRun) -> None:
    """The versions the run has (ftmem models what torch and bitsandbytes allocate by
    release), unless given."""
    said = "the installed release"
    if "torch_version" not in live.settings:
        live.set("torch_version", torch.__version__, said)
    transformers = report.installed("transformers")
    own_models = live.settings.get("framework") in ("litgpt", "torchtune")  # no transformers
    if transformers and not own_models and "transformers_version" not in live.settings:
        live.set("transformers_version", transformers, said)
    bnb = report.installed("bitsandbytes")
    optimizer = str(live.settings.get("optimizer"))
    uses_bnb = live.settings.get("method") == "qlora" or "8bit" in optimizer
    # bitsandbytes' quantised linears under any method (LitGPT's adapters with --quant);
    # int4 is GPTQ's, not bitsandbytes'
    uses_bnb = uses_bnb or live.settings.get("quant") in ("nf4", "fp4", "int8")
    uses_bnb = uses_bnb or optimizer in BNB_OPTIMIZERS
    if bnb and uses_bnb and "bnb_version" not in live.settings:
        live.set("bnb_version", bnb, said)


def device() -> dict[str, Any]:
    """The device the record was measured on."""
    if not torch.cuda.is_available():
        return {"kind": "cpu", "name": platform.processor() or platform.machine()}
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    smi = report.nvidia_smi() or {}
    return {
        "kind": "cuda",
        "name": props.name,
        "memory_bytes": int(props.total_memory),
        "cuda": torch.version.cuda,
        "driver": smi.get("driver"),
    }


def input_shape(batch: Any) -> tuple[int, int] | None:
    """(batch, tokens) of a batch's ``input_ids`` (a dict, a tuple whose first item is
    the ids, or the ids themselves)."""
    ids = batch
    if isinstance(batch, dict):
        ids = batch.get("input_ids")
    elif isinstance(batch, list | tuple) and batch:
        ids = batch[0]
    if isinstance(ids, torch.Tensor) and ids.dim() == 2:
        return int(ids.shape[0]), int(ids.shape[1])
    return None
