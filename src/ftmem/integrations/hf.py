"""HF Trainer and TRL: :class:`FtmemCallback` estimates the run from its live objects at
``on_train_begin`` (before step 1), stops a run that will not fit, and after
``report_after`` steps reports what was measured beside what was predicted, on the
console and in the trainer's ``logs`` (W&B, TensorBoard, MLflow...).

    from ftmem.integrations.hf import FtmemCallback
    trainer = SFTTrainer(..., callbacks=[FtmemCallback(gpu="h100", fail_if_not_fits=True)])
    trainer.train()

Needs transformers and torch (``ftmem[measure]``); docs/integrations.md.
"""

from __future__ import annotations

import gc
import json
import platform
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch  # an integration: the user's run has torch
from transformers import TrainerCallback

from ftmem import api
from ftmem.errors import FtmemError
from ftmem.hardware import Gpu, custom_gpu
from ftmem.integrations.live import LiveRun, compared, read_run
from ftmem.result import Estimate
from ftmem.units import format_bytes

RECORD_FORMAT = 1  # the version of record()'s dict
LOG_PREFIX = "ftmem/"


class RunWillNotFitError(FtmemError, RuntimeError):
    """The estimate of a run, read from its live objects, exceeds the GPU's memory."""


@dataclass(frozen=True)
class Measured:
    """One measured training step (bytes)."""

    step: int
    batch_size: int | None  # the step's input_ids shape, as the model saw it
    seq_len: int | None
    micro_batches: int  # forward-backward passes of the step (the epoch's last can be short)
    peak_allocated_bytes: int
    peak_reserved_bytes: int | None  # CUDA only
    tracker: str  # cuda-allocator | dispatch (ftmem's CPU tracker of live tensors)


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


class FtmemCallback(TrainerCallback):
    """Estimate the run before step 1 from the live model, optimizer and arguments;
    measure step ``report_after`` and report it beside the prediction.

    ``gpu`` (a preset name or a :class:`~ftmem.hardware.Gpu`) or ``gpu_memory`` (a
    size, "24GiB") is the budget; without either, the CUDA device's total memory. With
    ``fail_if_not_fits`` a run whose estimate exceeds it raises
    :class:`RunWillNotFitError` from ``trainer.train()`` before step 1 (setting
    ``control.should_training_stop`` would still run one step: the trainer looks at it
    only after a step). Other keyword settings are ftmem.estimate's (``seq_len=2048``,
    ``lengths="padded"``...) and win over what is read.
    """

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
        self._report_step = report_after
        self._shape: tuple[int, int] | None = None
        self._tracker: Any = None
        self._hook: Any = None
        self._pending: dict[str, float] = {}
        self._main_process = True  # the rank that prints (state.is_world_process_zero)
        self._measuring = False  # between on_step_begin and on_step_end of the measured step
        self._micro_batches = 0

    # -- what the callback says ---------------------------------------------------------
    def _say(self, line: str) -> None:
        if not self.quiet and self._main_process:
            print(line, flush=True)

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
        est = api.estimate(
            self.live.arch,
            gpu=self._budget(),
            overhead=self.overhead,
            **settings,
        )
        extra = compared(self.live, est.model.n_trainable_params)
        return est.model_copy(update={"notes": [*self.live.notes, *extra, *est.notes]})

    # -- the trainer's events -------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if model is None:
            return
        _first_in_line(self)
        self._main_process = bool(getattr(state, "is_world_process_zero", True))
        dataloader = kwargs.get("train_dataloader")
        dataset = getattr(dataloader, "dataset", None)
        try:
            self.live = read_run(model, args, kwargs.get("optimizer"), dataset, self.given)
            _library_versions(self.live)
            self.estimate = self._estimate()
        except FtmemError as exc:
            self.problem = str(exc)
            self._say(f"ftmem: no estimate for this run: {exc}")
            return
        except Exception as exc:  # a bug of ftmem's must not stop the user's training
            self.problem = f"{type(exc).__name__}: {exc}"
            self._say(
                f"ftmem: no estimate for this run ({self.problem}); training goes on. "
                "Please report it with callback.record()."
            )
            return
        # the report_after-th step of this train() call (a resumed run starts past 0),
        # or its last one when it is shorter
        start, last = state.global_step, state.max_steps or state.global_step + self.report_after
        self._report_step = start + max(1, min(self.report_after, last - start))
        self._hook = model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        self._say(self.summary())
        for note in self.estimate.notes:
            self._say(f"  - {note}")
        est = self.estimate
        if est.fits is None and self.fail_if_not_fits:
            self._say(
                "ftmem: fail_if_not_fits has no budget to check against: give gpu= or "
                "gpu_memory= (no CUDA device here)."
            )
        if est.fits is False and self.fail_if_not_fits:
            self._remove_hook()
            raise RunWillNotFitError(self._not_fitting(est, stopped=True))
        if est.fits is False:
            self._say(self._not_fitting(est, stopped=False))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.live is None or self.estimate is None or self.measured is not None:
            return
        if state.global_step + 1 != self._report_step:
            return
        self._measuring = True
        self._micro_batches = 1  # on_substep_end counts the others
        self._shape = None  # the measured step's own forward sets it
        if self.live.settings.get("device") == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        self._tracker = _cpu_tracker(kwargs.get("model"), kwargs.get("optimizer"))
        self._tracker.__enter__()

    def _before_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            self._shape = (int(ids.shape[0]), int(ids.shape[1]))
        if self._tracker is not None:  # the batch came from the dataloader, before the step
            self._tracker.track(args, kwargs)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._measuring:
            return
        self._measuring = False
        if self._tracker is None:  # CUDA
            torch.cuda.synchronize()
            peak = int(torch.cuda.max_memory_allocated())
            reserved: int | None = int(torch.cuda.max_memory_reserved())
            tracker = "cuda-allocator"
        else:
            self._tracker.__exit__(None, None, None)
            peak, reserved, tracker = int(self._tracker.peak), None, "dispatch"
            self._tracker = None
        batch, seq = self._shape or (None, None)
        self.measured = Measured(
            state.global_step, batch, seq, self._micro_batches, peak, reserved, tracker
        )
        self._remove_hook()
        self.predicted = self._predicted_at_measured_shape()
        self._pending = self.logged()
        self._say(self.report_line())
        control.should_log = True  # the trainer logs this step: on_log gets the numbers

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._measuring:
            self._micro_batches += 1

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if self._pending and isinstance(logs, dict):
            logs.update(self._pending)
            # the trainer copied logs into its history before calling on_log
            history = getattr(state, "log_history", None)
            if history and history[-1].get("step") == state.global_step:
                history[-1].update(self._pending)
            self._pending = {}

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._measuring = False
        if self._tracker is not None:
            self._tracker.__exit__(None, None, None)
            self._tracker = None
        self._remove_hook()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -- the report -----------------------------------------------------------------------
    def _predicted_at_measured_shape(self) -> Estimate | None:
        """The estimate again at the shape the measured step ran (a dataset's batches
        can be shorter than max_length)."""
        assert self.live is not None and self.measured is not None
        m, s = self.measured, self.live.settings
        ran = {"grad_accum": m.micro_batches}
        if m.batch_size is not None and m.seq_len is not None:
            ran.update(batch_size=m.batch_size, seq_len=m.seq_len)
        if all(s.get(k, 1 if k == "grad_accum" else None) == v for k, v in ran.items()):
            return self.estimate
        try:
            return self._estimate(**ran)
        except FtmemError:
            return self.estimate

    def summary(self) -> str:
        """The prediction, in one line."""
        est = self.estimate
        assert est is not None and self.live is not None
        s = self.live.settings
        what = f"{est.model.name}, {s.get('method', 'full')}, batch {s.get('batch_size')}"
        what += f" × {est.run.seq_len} tokens, {est.run.precision}"
        what += ", checkpointing" if est.run.grad_ckpt else ""
        mem = est.memory
        line = (
            f"ftmem: predicted peak {format_bytes(mem.peak_allocated_bytes)} allocated, "
            f"{format_bytes(mem.total_bytes)} on the device ({what})"
        )
        if est.gpu is not None and est.fits is not None:
            line += f"; {'fits' if est.fits else 'does NOT fit'} {est.gpu.get('name')}"
            line += f" ({format_bytes(int(est.gpu['memory_bytes']))})"
        return line

    def _not_fitting(self, est: Estimate, stopped: bool) -> str:
        assert est.gpu is not None
        over = -(est.headroom_bytes or 0)
        size = format_bytes(int(est.gpu["memory_bytes"]))
        budget = (
            f"the {size} budget"
            if est.gpu.get("id") == "custom"
            else (f"the {est.gpu.get('name')}'s {size}")
        )
        what = "stopped before step 1" if stopped else "it will likely run out of memory"
        return (
            f"ftmem: this run needs {format_bytes(est.memory.total_bytes)} per GPU, "
            f"{format_bytes(over)} more than {budget}: {what} "
            "(`ftmem plan` or ftmem.plan(...) lists changes that make it fit)."
        )

    def report_line(self) -> str:
        m, p = self.measured, self.predicted
        assert m is not None and p is not None
        shape = f"batch {m.batch_size} × {m.seq_len} tokens" if m.seq_len else "its batch"
        if m.micro_batches > 1:
            shape += f", {m.micro_batches} micro-batches"
        pred = p.memory.peak_allocated_bytes
        line = (
            f"ftmem: step {m.step} ({shape}): measured peak {format_bytes(m.peak_allocated_bytes)}"
            f" allocated, predicted {format_bytes(pred)} ({_error(m.peak_allocated_bytes, pred)})"
        )
        if m.peak_reserved_bytes is not None:
            line += (
                f"; reserved {format_bytes(m.peak_reserved_bytes)}, predicted "
                f"{format_bytes(p.memory.peak_reserved_bytes)}"
            )
        if m.tracker == "dispatch":
            line += "; CPU: live tensor bytes (ftmem's tracker)"
        return line

    def logged(self) -> dict[str, float]:
        """What goes into the trainer's logs (GiB, and the prediction's error in %)."""
        m, p = self.measured, self.predicted
        if m is None or p is None:
            return {}
        gib = 2**30
        out = {
            "peak_allocated_gib": m.peak_allocated_bytes / gib,
            "predicted_peak_allocated_gib": p.memory.peak_allocated_bytes / gib,
            "predicted_error_pct": _pct(m.peak_allocated_bytes, p.memory.peak_allocated_bytes),
        }
        if m.peak_reserved_bytes is not None:
            out["peak_reserved_gib"] = m.peak_reserved_bytes / gib
            out["predicted_peak_reserved_gib"] = p.memory.peak_reserved_bytes / gib
        return {LOG_PREFIX + k: v for k, v in out.items()}

    def record(self) -> dict[str, Any]:
        """One JSON-able dict: what was read, predicted and measured, with the versions
        and the device (what ``ftmem record`` will write as one JSON line)."""
        live, est = self.live, self.estimate
        out: dict[str, Any] = {
            "format": RECORD_FORMAT,
            "model": est.model.name if est else None,
            "architecture": live.arch.model_dump(mode="json") if live else None,
            "settings": dict(live.settings) if live else None,
            "read_from": dict(live.said) if live else None,
            "predicted": _predicted(self.predicted or est),
            "measured": asdict(self.measured) if self.measured else None,
            "notes": list(est.notes) if est else ([self.problem] if self.problem else []),
            "versions": {
                d: _version(d)
                for d in ("ftmem", "torch", "transformers", "peft", "trl", "bitsandbytes")
            },
            "device": _device(),
        }
        json.dumps(out)  # JSON-able, or a bug here
        return out


def _library_versions(live: LiveRun) -> None:
    """The versions the run has (ftmem models what torch and bitsandbytes allocate by
    release), unless given."""
    said = "the installed release"
    if "torch_version" not in live.settings:
        live.set("torch_version", torch.__version__, said)
    bnb = _version("bitsandbytes")
    uses_bnb = live.settings.get("method") == "qlora" or "8bit" in str(
        live.settings.get("optimizer")
    )
    if bnb and uses_bnb and "bnb_version" not in live.settings:
        live.set("bnb_version", bnb, said)


def _predicted(est: Estimate | None) -> dict[str, Any] | None:
    if est is None:
        return None
    mem = est.memory
    return {
        "peak_allocated_bytes": mem.peak_allocated_bytes,
        "peak_reserved_bytes": mem.peak_reserved_bytes,
        "device_bytes": mem.device_bytes,
        "peak_phase": mem.peak_phase,
        "batch_size": est.run.batch_size,
        "seq_len": est.run.seq_len,
        "fits": est.fits,
    }


def _device() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"kind": "cpu", "name": platform.processor() or platform.machine()}
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {
        "kind": "cuda",
        "name": props.name,
        "memory_bytes": int(props.total_memory),
        "cuda": torch.version.cuda,
        "driver": _driver(),
    }


def _driver() -> str | None:
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        return str(pynvml.nvmlSystemGetDriverVersion())
    except Exception:  # no NVML here: the record says so with None
        return None


def _pct(measured: int, predicted: int) -> float:
    return 100.0 * (predicted - measured) / measured if measured else 0.0


def _error(measured: int, predicted: int) -> str:
    return f"{_pct(measured, predicted):+.1f} %"


def _cpu_tracker(model: Any, optimizer: Any) -> Any:
    """ftmem's CPU tracker of live tensor bytes, told what exists before the step:
    weights and buffers, gradients, optimizer states."""
    from ftmem.measure.saved import model_state_tensors
    from ftmem.measure.step import optimizer_state_tensors
    from ftmem.measure.tracker import LiveBytesTracker

    tracker = LiveBytesTracker()
    tracker.track(model_state_tensors(model))
    tracker.track([p.grad for p in model.parameters() if p.grad is not None])
    inner = getattr(optimizer, "optimizer", optimizer)
    if inner is not None and hasattr(inner, "state"):
        tracker.track(optimizer_state_tensors(inner))
    return tracker


def _first_in_line(callback: TrainerCallback) -> None:
    """Move the callback to the front of its trainer's callbacks, so that the numbers
    it adds to ``logs`` reach the loggers report_to put before it (W&B, TensorBoard,
    MLflow: the trainer calls them in order, with the same dict)."""
    for holder in gc.get_referrers(callback):
        if not isinstance(holder, list):
            continue
        listed: list[Any] = holder
        if any(
            type(o).__name__ == "CallbackHandler" and getattr(o, "callbacks", None) is listed
            for o in gc.get_referrers(listed)
        ):
            listed.remove(callback)
            listed.insert(0, callback)
            return
