"""`ftmem serve`: inference memory, and the most sequences or longest context that fit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, cast

import typer

from ftmem.cli.options import ModelArg, TableOrJson, Units
from ftmem.cli.output import console
from ftmem.cli.root import app
from ftmem.cli.terminal import echo
from ftmem.errors import FtmemError

# ftmem.serve's WeightFormat and KvDtype, spelled out: importing ftmem.serve here would
# load it for every command (tests/test_cli_choices.py checks they agree)
WeightFormat = Literal["bf16", "fp16", "fp32", "fp8", "int8", "nf4", "fp4", "int4", "ternary"]
KvDtype = Literal["bf16", "fp16", "fp32", "fp8"]

if TYPE_CHECKING:
    from ftmem.arch import Architecture
    from ftmem.hardware import Gpu
    from ftmem.serve import ServeConfig, ServeEstimate


@app.command()
def serve(
    model: ModelArg,
    weights: Annotated[
        WeightFormat,
        typer.Option(help="Weight format (int4: GPTQ/AWQ-style; ternary: BitNet b1.58)."),
    ] = "bf16",
    kv_dtype: Annotated[KvDtype, typer.Option(help="KV cache dtype.")] = "bf16",
    sequences: Annotated[int, typer.Option(help="Concurrent sequences.")] = 1,
    context: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="Tokens per sequence (prompt + generated); default 4,096, or the model's "
            "learned positions when fewer (GPT-2: 1,024)."
        ),
    ] = None,
    prefill_chunk: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="Tokens of one prefill forward, all sequences together (vLLM's "
            "max_num_batched_tokens); default: every whole context at once."
        ),
    ] = None,
    lora_adapters: Annotated[int, typer.Option(help="Resident LoRA adapters (multi-LoRA).")] = 0,
    lora_r: Annotated[int, typer.Option(help="Rank of the resident adapters.")] = 16,
    lora_targets: Annotated[str, typer.Option(help="Their targets.")] = "all-linear",
    max_sequences: Annotated[
        bool,
        typer.Option("--max-sequences", help="Find the most concurrent sequences that fit --gpu."),
    ] = False,
    max_context: Annotated[
        bool,
        typer.Option("--max-context", help="Find the longest context that fits --gpu."),
    ] = False,
    gpu: Annotated[Optional[str], typer.Option(help="GPU preset.")] = None,  # noqa: UP045
    gpu_memory: Annotated[Optional[str], typer.Option(help="GPU memory, e.g. 24GiB.")] = None,  # noqa: UP045
    output_format: TableOrJson = "table",
    units: Units = "GiB",
) -> None:
    """Inference / serving memory: weights, KV cache, prefill, resident adapters."""
    from ftmem.api import resolve_gpu, serve_config
    from ftmem.present.serve import serving_table, serving_verdict
    from ftmem.serve import default_context, estimate_serving
    from ftmem.sources import resolve_model

    arch = resolve_model(model)
    hw = resolve_gpu(gpu, gpu_memory)
    cfg = serve_config(
        weights=weights,
        kv_dtype=kv_dtype,
        sequences=sequences,
        context=default_context(arch) if context is None else context,
        prefill_chunk=prefill_chunk,
        lora_adapters=lora_adapters,
        lora_r=lora_r,
        lora_targets=lora_targets,
    )
    est = estimate_serving(arch, cfg, hw)
    line = None
    if max_sequences and max_context:
        raise FtmemError("Give --max-sequences or --max-context, not both.")
    if max_sequences or max_context:
        est, line = _serve_search(arch, cfg, hw, max_sequences, est)
    if output_format == "json":
        echo(est.model_dump_json(indent=2))
        return
    console().print(serving_table(arch.name, est, units))
    for text in (serving_verdict(est, units), line, *(f"note: {n}" for n in est.notes)):
        if text:
            echo(text)


def _serve_search(
    arch: Architecture,
    cfg: ServeConfig,
    hw: Gpu | None,
    max_sequences: bool,
    est: ServeEstimate,
) -> tuple[ServeEstimate, str]:
    """--max-sequences (else --max-context): the estimate at the largest count that fits
    the GPU (``est`` when none does), and the line that says it."""
    from ftmem.search import largest_fitting
    from ftmem.serve import context_limit, estimate_serving

    if hw is None:
        flag = "--max-sequences" if max_sequences else "--max-context"
        raise FtmemError(f"{flag} needs a GPU: give --gpu or --gpu-memory.")
    what = "sequences" if max_sequences else "context"

    def at(n: int) -> Any:
        return estimate_serving(arch, cfg.model_copy(update={what: n}), hw)

    highest = 2**20 if max_sequences else context_limit(arch)
    learned = arch.position_embedding == "learned"  # then the limit is the model's
    found = largest_fitting(at, 1, highest)
    if found.value is None:
        if max_sequences:
            return est, f"Not even one sequence of {cfg.context:,} tokens fits {hw.name}."
        return est, f"Not even {cfg.sequences} sequence(s) of one token fit {hw.name}."
    if max_sequences:
        line = (
            f"Most concurrent sequences of {cfg.context:,} tokens that fit {hw.name}: "
            f"{found.value:,}."
        )
    else:
        whole = learned and found.value == highest
        line = (
            f"Longest context for {cfg.sequences} sequence(s) that fits {hw.name}: "
            f"{found.value:,} tokens" + (f" (all of {arch.name}'s positions)." if whole else ".")
        )
    # largest_fitting is typed for training estimates; it searched serving ones here
    return cast("ServeEstimate", found.fits_at), line
