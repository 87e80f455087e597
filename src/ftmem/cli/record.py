"""`ftmem record`: what a run measured beside what ftmem predicts for it, as one JSON
line to share in a bug report or add to ftmem's accuracy table
(docs/schema/record.schema.json; the integrations' ``record()`` writes the same format)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from ftmem.cli.options import FROM, GPU, RUN, SPREAD, OptModelArg, with_options
from ftmem.cli.root import app
from ftmem.cli.settings import with_config
from ftmem.cli.terminal import echo
from ftmem.errors import FtmemError

MEASURED = "What was measured"
OptStr = Optional[str]  # noqa: UP045 - typer needs Optional spelled out on Python 3.10
OptInt = Optional[int]  # noqa: UP045


@app.command()
@with_options(FROM, RUN, GPU, SPREAD)
def record(
    ctx: typer.Context,
    model: OptModelArg = None,
    measured_allocated: Annotated[
        OptStr,
        typer.Option(
            help="The step's peak from torch.cuda.max_memory_allocated(), e.g. 14.2GiB.",
            rich_help_panel=MEASURED,
        ),
    ] = None,
    measured_reserved: Annotated[
        OptStr,
        typer.Option(
            help="The peak from torch.cuda.max_memory_reserved(), e.g. 15GiB.",
            rich_help_panel=MEASURED,
        ),
    ] = None,
    measured_device: Annotated[
        OptStr,
        typer.Option(
            help="What nvidia-smi showed for the process, e.g. 16.1GiB.",
            rich_help_panel=MEASURED,
        ),
    ] = None,
    step: Annotated[
        OptInt, typer.Option(help="The optimizer step measured.", rich_help_panel=MEASURED)
    ] = None,
    gpu_name: Annotated[
        OptStr,
        typer.Option(
            help="The GPU measured on (default: nvidia-smi's first GPU, where there is one).",
            rich_help_panel=MEASURED,
        ),
    ] = None,
    driver: Annotated[
        OptStr,
        typer.Option(
            help="The NVIDIA driver's version (default: nvidia-smi's).", rich_help_panel=MEASURED
        ),
    ] = None,
    **settings: Any,
) -> None:
    """Write what a run measured and what ftmem predicts for it as one JSON line."""
    from ftmem.integrations.report import Measured

    measured = Measured(
        peak_allocated_bytes=_size(measured_allocated, "--measured-allocated"),
        peak_reserved_bytes=_size(measured_reserved, "--measured-reserved"),
        device_bytes=_size(measured_device, "--measured-device"),
        step=step,
        tracker="user",
    )
    if (measured.peak_allocated_bytes, measured.peak_reserved_bytes, measured.device_bytes) == (
        None,
        None,
        None,
    ):
        raise FtmemError(
            "give what was measured: --measured-allocated (torch.cuda.max_memory_allocated()), "
            "--measured-reserved or --measured-device (nvidia-smi)."
        )
    if step is not None and step < 1:
        raise FtmemError(f"--step counts optimizer steps from 1, not {step}.")
    _reserved_holds_allocated(measured.peak_allocated_bytes, measured.peak_reserved_bytes)
    echo(json.dumps(record_line(ctx, model, settings, measured, gpu_name, driver)))


def _reserved_holds_allocated(allocated: int | None, reserved: int | None) -> None:
    """The caching allocator reserves every byte it allocates, so a peak reserved below
    the peak allocated is two figures swapped or from different runs (it was recorded)."""
    if allocated is not None and reserved is not None and reserved < allocated:
        raise FtmemError(
            f"--measured-reserved ({reserved:,} bytes) is below --measured-allocated "
            f"({allocated:,} bytes), which the caching allocator cannot do: "
            "torch.cuda.max_memory_reserved() is at least max_memory_allocated(); check "
            "that the two are not swapped."
        )


def _size(text: str | None, option: str) -> int | None:
    from ftmem.limits import GPU_MEMORY
    from ftmem.units import parse_size

    return None if text is None else parse_size(text, GPU_MEMORY, option)


def record_line(
    ctx: typer.Context,
    model: str | None,
    settings: dict[str, Any],
    measured: Any,
    gpu_name: str | None,
    driver: str | None,
) -> dict[str, Any]:
    """The record: the estimate with these settings, the measured numbers, the versions
    installed here and the GPU (given, or nvidia-smi's)."""
    from dataclasses import replace

    from ftmem.api import estimate
    from ftmem.integrations.report import build_record, nvidia_smi
    from ftmem.sources import resolve_model, source_notes

    model, settings, notes, _ = with_config(ctx, model, settings)
    arch = resolve_model(model)
    notes += source_notes(model)
    est = estimate(arch, **{**settings, "gpus": settings.get("gpus") or 1})
    measured = replace(measured, batch_size=est.run.batch_size, seq_len=est.run.seq_len)
    smi = nvidia_smi() if gpu_name is None or driver is None else None
    smi = smi or {}
    name = gpu_name or smi.get("name")
    device = {
        "kind": "cuda" if name else None,
        "name": name,
        "memory_bytes": smi.get("memory_bytes") if gpu_name is None else None,
        "driver": driver or smi.get("driver"),
    }
    return build_record(
        source="cli",
        model=model,
        architecture=arch.model_dump(mode="json"),
        settings=_given(ctx, settings),
        read_from=None,
        estimate=est,
        measured=measured,
        notes=[*notes, *est.notes],
        device=device,
    )


def _given(ctx: typer.Context, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings the user gave (flags, or read with --from): with the ftmem version
    beside them they reproduce the estimate, and a new option with a default leaves
    the record as it was."""
    defaults = {p.name: p.default for p in ctx.command.params}
    given = {}
    for key, value in settings.items():
        source = ctx.get_parameter_source(key)
        typed = source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")
        if value is not None and (typed or value != defaults.get(key)):
            given[key] = value
    return given
