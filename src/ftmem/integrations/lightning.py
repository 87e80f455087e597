"""Lightning: :class:`FtmemCallback` estimates a ``lightning.pytorch.Trainer`` run from
its live objects at ``on_train_start`` (before the first training batch), stops a run
that will not fit, and after ``report_after`` optimizer steps reports what was measured
beside what was predicted, on the console and to the trainer's loggers. Fabric users
call :func:`check` once after ``fabric.setup``.

    from ftmem.integrations.lightning import FtmemCallback
    trainer = L.Trainer(..., callbacks=[FtmemCallback(gpu="h100", fail_if_not_fits=True)])
    trainer.fit(module, data)

Why ``on_train_start``: Lightning 2.6 builds the optimizers and converts and wraps the
module in ``strategy.setup``, before ``on_fit_start``, but it builds the training
dataloader (the batch size) only when the fit loop starts; ``on_train_start`` is the
first hook where the module, the optimizer and the dataloader all exist, and no training
batch has run (the sanity check before it runs validation batches only, without
gradients). Needs lightning and torch; docs/integrations.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from ftmem.errors import InvalidInputError
from ftmem.filekeys import Keys
from ftmem.frameworks.distributed import distributed_settings, fsdp_from_config
from ftmem.frameworks.shared import FrameworkConfig
from ftmem.integrations.litgpt import litgpt_model_in, read_litgpt_model
from ftmem.integrations.live import (
    LiveRun,
    longest_example,
    numel,
    read_model,
    read_optimizer,
    take_given,
)
from ftmem.integrations.preflight import Preflight, input_shape
from ftmem.integrations.report import RunWillNotFitError

__all__ = ["FtmemCallback", "RunWillNotFitError", "check", "read_lightning_run"]

# Lightning's precision flags (lightning/fabric/connector.py _PRECISION_INPUT_STR) whose
# module ftmem models: "-mixed" autocasts (weights as they are), "-true" converts the
# weights (read from the parameters)
AUTOCAST = {"bf16-mixed": "bf16", "16-mixed": "fp16"}
MODELLED_PRECISION = ("32-true", "bf16-true", "16-true", *AUTOCAST)
MANUAL_OPTIMIZATION = (
    "Manual optimization: estimated with the gradients zeroed after the optimizer step "
    "(as HF Trainer does); where training_step zeroes them after its forward, the "
    "previous step's gradients also live through the forward."
)


class FtmemCallback(Preflight, Callback):
    """Estimate a Lightning run before its first training batch from the live module
    (the transformers model inside it), optimizer, precision, strategy and dataloader;
    measure optimizer step ``report_after`` and report it beside the prediction.

    The arguments are those of ``ftmem.integrations.hf.FtmemCallback``: ``gpu`` or
    ``gpu_memory`` (the budget; default the CUDA device's memory), ``fail_if_not_fits``
    (raise :class:`RunWillNotFitError` from ``trainer.fit`` before the first batch),
    ``report_after``, ``overhead``, ``quiet``, and ftmem.estimate's settings, which win
    over what is read (``seq_len=2048``).
    """

    source = "lightning"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._report_step = self.report_after
        self._shape: tuple[int, int] | None = None
        self._micro_batches = 0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._main_process = bool(trainer.is_global_zero)
        if not self.begin(lambda: read_lightning_run(trainer, pl_module, self.given)):
            return
        start = trainer.global_step
        last = trainer.max_steps if trainer.max_steps > 0 else start + self.report_after
        self._report_step = start + max(1, min(self.report_after, last - start))

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.estimate is None or self.measured is not None:
            return
        if not self.measuring:
            if trainer.global_step + 1 != self._report_step:
                return
            # the first micro-batch of the measured optimizer step; the batch is on the
            # device already (Lightning moves it before this hook)
            optimizers = trainer.optimizers
            self.start_measuring(pl_module, optimizers[0] if optimizers else None)
            self._micro_batches = 0
            self._shape = input_shape(batch)
        self._micro_batches += 1
        self.track(batch)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.measuring or trainer.global_step < self._report_step:
            return  # an accumulating micro-batch: the optimizer has not stepped yet
        self.stop_measuring(trainer.global_step, self._shape, self._micro_batches)
        metrics = self.logged()
        # straight to the loggers: pl_module.log(on_step=True) reaches them only on
        # log_every_n_steps' steps
        if metrics and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.abort_measuring()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.abort_measuring()


def check(
    fabric: Any,
    model: Any,
    optimizer: Any = None,
    *,
    batch_size: int,
    seq_len: int,
    grad_accum: int = 1,
    **kwargs: Any,
) -> Preflight:
    """Fabric: estimate the run once its model (and optimizer) went through
    ``fabric.setup``; prints the prediction, raises :class:`RunWillNotFitError` with
    ``fail_if_not_fits=True`` when it will not fit. ``kwargs`` are FtmemCallback's
    (``gpu``, ``gpu_memory``, ``overhead``, ``quiet``) and ftmem.estimate's settings.
    The returned object has ``.estimate``, ``.live`` and ``.record()``."""
    given = {"batch_size": batch_size, "seq_len": seq_len, "grad_accum": grad_accum}
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in PREFLIGHT_OPTIONS}
    preflight = Preflight(**options, **{**kwargs, **given})
    preflight.source = "lightning-fabric"
    preflight._main_process = bool(getattr(fabric, "is_global_zero", True))
    preflight.begin(lambda: read_fabric_run(fabric, model, optimizer, preflight.given))
    return preflight


PREFLIGHT_OPTIONS = ("gpu", "gpu_memory", "overhead", "fail_if_not_fits", "quiet")


# -- reading the live objects -------------------------------------------------------------


def read_lightning_run(trainer: Any, pl_module: Any, given: dict[str, Any] | None) -> LiveRun:
    """The run of a Lightning Trainer: the model inside the module, the precision
    plugin, the strategy and world size, the first optimizer, accumulation and the
    training dataloader's batch size and longest example."""
    live = _read_module(pl_module, trainer.precision, type(trainer.strategy).__name__)
    if getattr(pl_module, "automatic_optimization", True):
        live.set("framework", "lightning", "LightningModule.automatic_optimization")
    else:
        live.notes.append(MANUAL_OPTIMIZATION)
    acc = int(trainer.accumulate_grad_batches)
    live.set("grad_accum", acc, "Trainer.accumulate_grad_batches")
    optimizers = trainer.optimizers
    if len(optimizers) > 1:
        live.notes.append(
            f"{len(optimizers)} optimizers: estimated with the first one's class for every "
            "trainable parameter."
        )
    read_optimizer(optimizers[0] if optimizers else None, live)
    _read_dataloader(trainer.train_dataloader, live)
    _read_strategy(trainer.strategy, trainer.num_devices, trainer.num_nodes, live)
    take_given(live, given, "FtmemCallback's own settings")
    return live


def read_fabric_run(
    fabric: Any, model: Any, optimizer: Any, given: dict[str, Any] | None
) -> LiveRun:
    """The run of a Fabric script: the set-up model and optimizer, Fabric's precision
    plugin and strategy; batch and length given."""
    strategy = fabric.strategy
    plugin = getattr(strategy, "precision", None)
    precision = str(getattr(plugin, "precision", "32-true"))
    module = getattr(model, "_original_module", None) or getattr(model, "module", model)
    live = _read_module(module, precision, type(strategy).__name__)
    read_optimizer(getattr(optimizer, "optimizer", optimizer), live)
    nodes = int(getattr(strategy, "num_nodes", 1) or 1)
    _read_strategy(strategy, max(1, int(fabric.world_size) // nodes), nodes, live)
    take_given(live, given, "check()'s own settings")
    return live


def hf_model_in(module: Any) -> Any:
    """The transformers model (or the peft wrapper around one) inside a module: the first
    submodule, in order, with a transformers config (a peft wrapper comes before the
    model it wraps)."""
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if hasattr(config, "to_dict") and hasattr(config, "model_type"):
            return sub
    raise InvalidInputError(
        f"{type(module).__name__} holds no transformers model (no submodule with a "
        "transformers config) and no LitGPT GPT: ftmem reads the architecture from "
        "model.config."
    )


def _read_module(module: Any, precision: str, strategy: str) -> LiveRun:
    """The model inside the module (a LitGPT GPT, or a transformers model read as the
    HF callback reads it), with Lightning's precision flag for autocast."""
    precision = str(precision)
    if precision not in MODELLED_PRECISION:
        raise InvalidInputError(
            f"Lightning precision {precision!r} is not modelled (ftmem models "
            f"{', '.join(MODELLED_PRECISION)})."
        )
    said = f"the Trainer's precision {precision!r}"
    model = litgpt_model_in(module)
    if model is not None:  # a LitGPT GPT (its config is LitGPT's own)
        live = read_litgpt_model(model, autocast=AUTOCAST.get(precision, ""), autocast_said=said)
    else:
        model = hf_model_in(module)
        # FSDP's activation_checkpointing_policy is the strategy's; other checkpointing
        # is the model's own (gradient_checkpointing_enable)
        live = read_model(
            model,
            autocast=AUTOCAST.get(precision, ""),
            autocast_said=said,
            checkpointing=None,
            checkpointing_said=strategy,
        )
    outside = sum(numel(p) for p in module.parameters() if p.requires_grad) - live.n_trainable
    if outside > 0:
        live.notes.append(
            f"The {type(module).__name__} trains {outside:,} parameters outside "
            f"{type(model).__name__}: not in the estimate."
        )
    return live


def _read_dataloader(loader: Any, live: LiveRun) -> None:
    """The micro-batch from the training DataLoader, the length from its dataset's
    longest example (a few thousand rows at most)."""
    loaders = loader if isinstance(loader, list | tuple) else [loader]
    loader = loaders[0] if loaders else None
    batch = getattr(loader, "batch_size", None)
    if isinstance(batch, int) and batch > 0:
        live.set("batch_size", batch, "the training DataLoader's batch_size")
    else:
        live.notes.append(
            "The training DataLoader has no batch_size (a batch sampler): estimated at "
            "batch 1 (give FtmemCallback(batch_size=...)); the report uses the real shape."
        )
    longest = longest_example(getattr(loader, "dataset", None))
    if longest:
        live.set("seq_len", longest, "the longest input_ids of the training dataset")
    else:
        live.notes.append(
            "No input_ids found in the training dataset: estimated at ftmem's 512 tokens "
            "(give FtmemCallback(seq_len=...)); the report uses the measured step's shape."
        )


def _read_strategy(strategy: Any, per_node: int, nodes: int, live: LiveRun) -> None:
    """World size, and DeepSpeed's config or FSDP's sharding and offload as the
    strategy object holds them."""
    kind = type(strategy).__name__
    said = f"the {kind}"
    if per_node * nodes > 1:
        live.set("gpus", int(per_node), f"{said} (devices)")
        live.set("nodes", int(nodes), f"{said} (num_nodes)")
    cfg = FrameworkConfig("lightning", kind, None, {})
    if kind.startswith("DeepSpeed"):
        config = getattr(strategy, "config", None)
        if isinstance(config, dict):
            distributed_settings(Keys({"deepspeed": config}, kind), Path.cwd(), cfg)
    elif kind.startswith("FSDP"):
        sharding = getattr(getattr(strategy, "sharding_strategy", None), "name", "FULL_SHARD")
        offload = bool(getattr(getattr(strategy, "cpu_offload", None), "offload_params", False))
        keys = Keys({"sharding_strategy": sharding.lower(), "cpu_offload": offload}, kind)
        fsdp_from_config(keys, [], cfg)
        if getattr(strategy, "_activation_checkpointing_kwargs", None):
            cfg.settings["grad_ckpt"] = True
    elif kind.startswith("DDP") and per_node * nodes > 1:
        cfg.settings["strategy"] = "ddp"
    elif kind not in ("SingleDeviceStrategy", "DDPStrategy"):
        live.notes.append(f"{kind} is not modelled: estimated as data parallel.")
    for key, value in cfg.settings.items():
        live.set(key, value, said)
    live.notes += cfg.notes
