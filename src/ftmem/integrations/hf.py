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
from typing import Any

from transformers import TrainerCallback

from ftmem.integrations.live import read_run
from ftmem.integrations.preflight import Preflight, input_shape
from ftmem.integrations.report import LOG_PREFIX, RECORD_FORMAT, Measured, RunWillNotFitError

__all__ = ["LOG_PREFIX", "RECORD_FORMAT", "FtmemCallback", "Measured", "RunWillNotFitError"]


class FtmemCallback(Preflight, TrainerCallback):
    """Estimate the run before step 1 from the live model, optimizer and arguments;
    measure step ``report_after`` and report it beside the prediction.

    ``gpu`` (a preset name or a :class:`~ftmem.hardware.Gpu`) or ``gpu_memory`` (a
    size, "24GiB") is the budget; without either, the CUDA device's total memory. With
    ``fail_if_not_fits`` a run whose estimate exceeds it raises
    :class:`RunWillNotFitError` from ``trainer.train()`` before step 1 (setting
    ``control.should_training_stop`` would still run one step: the trainer looks at it
    only after a step). Other keyword settings are ftmem.estimate's (``seq_len=2048``,
    ``lengths="padded"``, ``padding="longest"`` where the collator pads...) and win over
    what is read (the arguments do not say which collator the trainer was given).
    """

    source = "hf-trainer"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._report_step = self.report_after
        self._shape: tuple[int, int] | None = None
        self._hook: Any = None
        self._pending: dict[str, float] = {}
        self._measuring = False  # between on_step_begin and on_step_end of the measured step
        self._micro_batches = 0

    # -- the trainer's events -------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if model is None:
            return
        _first_in_line(self)
        self._main_process = bool(getattr(state, "is_world_process_zero", True))
        dataset = getattr(kwargs.get("train_dataloader"), "dataset", None)
        optimizer = kwargs.get("optimizer")
        tokenizer = kwargs.get("processing_class")  # GRPO's prompts are tokenized with it
        if not self.begin(lambda: read_run(model, args, optimizer, dataset, self.given, tokenizer)):
            return
        # the report_after-th step of this train() call (a resumed run starts past 0),
        # or its last one when it is shorter
        start, last = state.global_step, state.max_steps or state.global_step + self.report_after
        self._report_step = start + max(1, min(self.report_after, last - start))
        self._hook = model.register_forward_pre_hook(self._before_forward, with_kwargs=True)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.live is None or self.estimate is None or self.measured is not None:
            return
        if state.global_step + 1 != self._report_step:
            return
        self._measuring = True
        self._micro_batches = 1  # on_substep_end counts the others
        self._shape = None  # the measured step's own forward sets it
        self.start_measuring(kwargs.get("model"), kwargs.get("optimizer"))

    def _before_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        shape = input_shape(ids)
        if shape is not None:
            self._shape = shape
        if self._measuring:  # the batch came from the dataloader, before the step
            self.track(args, kwargs)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._measuring:
            return
        self._measuring = False
        self.stop_measuring(state.global_step, self._shape, self._micro_batches)
        self._remove_hook()
        self._pending = self.logged()
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
        self.abort_measuring()
        self._remove_hook()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


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
