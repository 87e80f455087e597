"""`ftmem measure`: the step run for real (torch, random weights) beside its estimate."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import typer

from ftmem import limits
from ftmem.cli.options import RUN, TableOrJson, with_options
from ftmem.cli.output import console
from ftmem.cli.root import app
from ftmem.cli.terminal import echo
from ftmem.errors import FtmemError

if TYPE_CHECKING:
    from ftmem.arch import Architecture
    from ftmem.hardware import Gpu
    from ftmem.measure import Measurement
    from ftmem.run import RunConfig


@app.command()
# a measured step has one batch length; its allocator options are the process's own
# PYTORCH_CUDA_ALLOC_CONF, which the estimate then takes too
# (the measured batch has no pad tokens: --padding is the estimate's)
@with_options(RUN, drop=("optimizer_impl", "accounting", "lengths", "alloc_conf", "padding"))
def measure(
    model: Annotated[
        str,
        typer.Argument(help="Preset id or config.json path/folder (built with random weights)."),
    ],
    device: Annotated[Literal["cpu", "cuda"], typer.Option(help="Where the step runs.")] = "cpu",
    fsdp: Annotated[
        int,
        typer.Option(
            help="Measure torch FSDP2 (FULL_SHARD) on this many CPU ranks against the "
            "per-GPU estimate, instead of one device."
        ),
    ] = 0,
    fsdp_ranks: Annotated[
        Literal["simulated", "gloo"],
        typer.Option(
            help="simulated: each rank in turn in this process, over a fake process group "
            "(same peak on every run) | gloo: one process per rank, real collectives "
            "(the peak moves with thread timing)."
        ),
    ] = "simulated",
    steps: Annotated[int, typer.Option(help="Training steps; the last one is measured.")] = 2,
    fake: Annotated[
        bool,
        typer.Option(
            "--fake",
            help="Real-size shapes under FakeTensorMode, nothing allocated (CPU only; "
            "no bitsandbytes; kernel workspaces and the CUDA allocator are not seen).",
        ),
    ] = False,
    snapshot: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional spelled out on Python 3.10
        typer.Option(
            help="--device cuda: save the caching allocator's snapshot of the run "
            "(torch.cuda.memory._snapshot(), pickled; open it at pytorch.org/memory_viz)."
        ),
    ] = None,
    output_format: TableOrJson = "table",
    **settings: Any,
) -> None:
    """Run the step for real (torch, random weights) and compare with the estimate."""
    from ftmem.api import run_config
    from ftmem.sources import resolve_model

    _check_measure_options(device, steps, fsdp, fsdp_ranks, fake)
    _check_snapshot(snapshot, device)
    if device == "cuda":
        _check_cuda()
    arch = resolve_model(model)
    run = run_config(
        **settings,
        device=device,
        optimizer_impl="for-loop" if device == "cpu" else "foreach",
        alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF") if device == "cuda" else None,
    )
    if device == "cpu" and not fake:
        _check_host_fits(arch, run)
    with measure_errors():
        if fsdp:
            return _measure_fsdp(arch, run, fsdp, fsdp_ranks, output_format)
        from ftmem.measure import measure as run_measure

        with _snapshot_to(snapshot):
            got = run_measure(arch, run, device=device, steps=steps, fake=fake)
    _print_measured(arch, run, got, fake, output_format)


def _check_host_fits(arch: Architecture, run: RunConfig) -> None:
    """A step measured on the CPU holds what the estimate's peak holds, in this machine's
    RAM: past the RAM, building the model swaps or is killed, after minutes (`ftmem
    measure llama2-70b` ran on for ever on a 23 GiB machine); one sentence instead."""
    from ftmem.estimate import estimate_step

    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): nothing to check
        return
    peak = estimate_step(arch, run).memory.peak_allocated_bytes
    if peak > ram:
        raise FtmemError(
            f"measuring {arch.name} on the CPU holds about {peak / 2**30:,.1f} GiB at its "
            f"peak (the estimate), over this machine's RAM bound of {ram / 2**30:,.1f} GiB; "
            "measure a smaller config, or real-size shapes with --fake (nothing allocated)."
        )


def _check_snapshot(path: Path | None, device: str) -> None:
    if path is None:
        return
    if device != "cuda":
        raise FtmemError("--snapshot saves the CUDA caching allocator's state: add --device cuda.")
    if not path.parent.is_dir():
        raise FtmemError(f"--snapshot: the folder {path.parent} does not exist.")


def _check_cuda() -> None:
    """--device cuda on a machine whose torch sees no GPU: one sentence, before building."""
    from ftmem.measure import cuda_visible

    try:
        visible = cuda_visible()
    except ImportError:
        raise FtmemError(
            '--device cuda needs torch built with CUDA: pip install "ftmem[measure]".'
        ) from None
    if not visible:
        raise FtmemError(
            "--device cuda needs a CUDA GPU, and torch sees none on this machine "
            "(torch.cuda.is_available() is False); measure on the CPU with --device cpu."
        )


@contextmanager
def _snapshot_to(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    from ftmem.measure.snapshot import recording_to

    with recording_to(path):
        yield


def _check_measure_options(device: str, steps: int, fsdp: int, fsdp_ranks: str, fake: bool) -> None:
    """`ftmem measure`'s own options, before anything is built."""
    if steps < 2:
        raise FtmemError("--steps must be at least 2 (step 1 creates the optimizer states).")
    limits.MEASURED_STEPS.check("--steps", steps)
    limits.MEASURED_RANKS.check("--fsdp", fsdp)
    if fake and device != "cpu":
        raise FtmemError("--fake runs on the CPU only; drop --device cuda.")
    if fsdp and (fsdp < 2 or fake or device != "cpu"):
        raise FtmemError("--fsdp takes 2 or more CPU ranks, without --fake or --device cuda.")


# FakeTensorMode's errors for an op whose result depends on a tensor's values (peft's
# LoHa, LoKr and AdaLoRA branch on torch.rand(1) > module_dropout in forward); their text
# is the op's name alone ("aten._local_scalar_dense.default")
_DATA_DEPENDENT = ("DataDependentOutputException", "DynamicOutputShapeException")
# bitsandbytes >= 0.48 on an AVX512-BF16 CPU warns at import that an optional kernel
# (kernels-community's gemm_4bit_forward) did not load: one more line on stderr
_NOISY_LOGGER = "bitsandbytes.backends.cpu.ops"


@contextmanager
def measure_errors() -> Iterator[None]:
    """A missing optional dependency, or torch refusing the run, as one sentence; a
    library's import-time notice kept off stderr."""
    noisy = logging.getLogger(_NOISY_LOGGER)
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        yield
    except ImportError as exc:
        raise FtmemError(
            f"`ftmem measure` needs torch, transformers and peft ({exc.name} is missing): "
            'pip install "ftmem[measure]".'
        ) from None
    except RuntimeError as exc:
        if type(exc).__name__ in _DATA_DEPENDENT:
            raise FtmemError(
                f"fake tensors cannot run this step: {str(exc).splitlines()[0]} needs a "
                "tensor's value, which a fake tensor does not hold; measure without --fake "
                "at a size this machine holds."
            ) from None
        raise FtmemError(str(exc).splitlines()[0]) from None
    finally:
        noisy.setLevel(level)


def _print_measured(
    arch: Architecture, run: RunConfig, got: Measurement, fake: bool, output_format: str
) -> None:
    """The measured step beside the estimate of the same run: a table, or the estimate's
    JSON with a ``measured`` part."""
    from ftmem.estimate import estimate_step
    from ftmem.present.measure import measured_json, measured_rows, measured_table

    est = estimate_step(arch, run, gpu=_measured_gpu() if got.device.startswith("cuda") else None)
    if output_format == "json":
        echo(measured_json(est, got, fake))
        return
    where = "fake tensors (nothing allocated)" if fake else got.device
    title = f"{arch.name}: {run.method} · {run.precision} · measured on {where}"
    rows = measured_rows(est.memory, got)
    phases = (est.memory.peak_phase, got.peak_phase)
    console().print(measured_table(title, "Estimated", rows, phases))


def _measured_gpu() -> Gpu | None:
    """The preset of the GPU measured on: its id's model in the device's name (h100 in
    "NVIDIA H100 80GB HBM3"), the nearest in memory among those; None if none."""
    from ftmem.measure import cuda_device
    from ftmem.presets import gpu_presets

    name, total = cuda_device()
    lowered = name.lower().replace(" ", "")
    named = [g for key, g in gpu_presets().items() if key.split("-")[0] in lowered]
    return min(named, key=lambda g: abs(g.memory_bytes - total), default=None)


def _measure_fsdp(arch: Any, run: Any, ranks: int, mode: str, output_format: str) -> None:
    """`ftmem measure --fsdp N`: each rank's shards and the largest peak, beside the
    per-GPU estimate of the same run with ``--gpus N --strategy fsdp``."""
    import json

    from ftmem.estimate import estimate_step
    from ftmem.measure.sharded import measure_fsdp
    from ftmem.parallel import ParallelConfig
    from ftmem.present.measure import measured_table

    measured = measure_fsdp(arch, run, ranks, mode=mode)
    est = estimate_step(arch, run, par=ParallelConfig(gpus=ranks, strategy="fsdp")).memory
    rows = [
        (key.removesuffix("_bytes"), getattr(est, key), max(r[key] for r in measured))
        for key in (
            "weights_bytes",
            "gradients_bytes",
            "optimizer_states_bytes",
            "peak_allocated_bytes",
        )
    ]
    if output_format == "json":
        echo(json.dumps({"estimate": est.model_dump(mode="json"), "ranks": measured}, indent=2))
        return
    title = f"{arch.name}: {run.method} · FSDP over {ranks} CPU ranks ({mode}), largest rank"
    console().print(measured_table(title, "Estimated per GPU", rows))
