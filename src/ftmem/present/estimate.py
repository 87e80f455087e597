"""Rendering an Estimate: rich table, JSON, Markdown. No arithmetic beyond unit conversion."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem.result import BeyondAllocated, Estimate, Memory, ParallelInfo
from ftmem.units import UnitSystem, format_bytes, format_count

if TYPE_CHECKING:
    from rich.console import RenderableType

COMPONENTS = (
    ("weights", "Weights", "weights_bytes"),
    ("gradients", "Gradients", "gradients_bytes"),
    ("optimizer_states", "Optimizer states", "optimizer_states_bytes"),
    ("activations", "Activations (saved for backward)", "activations_bytes"),
    ("temporaries", "Temporaries at the peak", "temporaries_bytes"),
)
COMMUNICATION = ("communication", "Gathered weights and buckets", "communication_bytes")


def _components(est: Estimate) -> tuple[tuple[str, str, str], ...]:
    return COMPONENTS + ((COMMUNICATION,) if est.parallel is not None else ())


BAR_WIDTH = 10
_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """A terminal bar of ``fraction`` (0..1) in ``width`` cells, to an eighth of a cell."""
    eighths = round(max(0.0, min(fraction, 1.0)) * width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + (_EIGHTHS[part] if part else "")
    return text.ljust(width, "·")


def to_json(est: Estimate) -> str:
    import json  # (not for the table: ftmem.cli.fast)

    return json.dumps(est.model_dump(mode="json"), indent=2)


def to_yaml(est: Estimate) -> str:
    import yaml

    return yaml.safe_dump(est.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


CSV_RUN = (
    "method",
    "precision",
    "optimizer",
    "batch_size",
    "seq_len",
    "grad_accum",
    "grad_ckpt",
    "attn",
)
CSV_MEMORY = (
    "weights_bytes",
    "gradients_bytes",
    "optimizer_states_bytes",
    "activations_bytes",
    "temporaries_bytes",
    "communication_bytes",
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "device_bytes",
    "overhead_bytes",
    "total_bytes",
)


def device_parts(m: Memory) -> list[tuple[str, int]]:
    """The parts of the peak a CUDA run adds to the step's tensors, where there are any:
    the BLAS workspaces and what the caching allocator's whole blocks add to the bytes
    asked for (ftmem.gpu.device)."""
    a = m.at_peak
    parts = [("BLAS workspaces", a.workspaces), ("Allocator block rounding", a.block_rounding)]
    return [(label, value) for label, value in parts if value]


def peak_where(m: Memory) -> str:
    """Where the allocated peak is: a phase of the step, or a moment of the run outside
    it (ftmem.run_phases; --peak-of run)."""
    r = m.run_peak
    if r is not None and r.moment != "step":
        return f"{r.moment}, outside the step"
    return m.peak_phase


def step_rows(m: Memory) -> list[tuple[str, int]]:
    """The step's own peak, shown when the run's is elsewhere."""
    r = m.run_peak
    if r is None or r.moment == "step":
        return []
    return [(f"Training step's peak ({m.peak_phase})", r.step_allocated_bytes)]


def beyond_rows(m: Memory) -> list[tuple[str, int]]:
    """The rows between the allocated peak and the device total: the allocator's cache
    and the reserved peak, then what lives outside the allocator (a user's --overhead
    replaces them all)."""
    b = m.beyond_allocated
    if m.device_bytes == m.peak_allocated_bytes:  # the CPU: nothing beyond the tensors
        return []
    paged = _paged_rows(b)
    if not (b.cuda_context or b.nccl):
        own = m.device_bytes - m.peak_allocated_bytes - b.paged_optimizer_states
        return [("Runtime overhead (--overhead)", own), *paged]
    rows = [
        ("Allocator cache (reserved − allocated)", b.allocator_cache),
        ("Peak reserved", m.peak_reserved_bytes),
        ("CUDA context and libraries", b.cuda_context),
    ]
    rows += [("NCCL buffers", b.nccl)] if b.nccl else []
    rows += [("vLLM engine (colocated)", b.vllm_engine)] if b.vllm_engine else []
    return rows + paged


def _paged_rows(b: BeyondAllocated) -> list[tuple[str, int]]:
    """bitsandbytes' paged optimizer states: resident (in the device total) and, where
    the card has no room, paged to host RAM (not in it)."""
    rows = []
    if b.paged_optimizer_states:
        rows.append(("Paged optimizer states (managed memory)", b.paged_optimizer_states))
    if b.paged_to_host:
        rows.append(("Paged to host RAM (not in the total)", b.paged_to_host))
    return rows


def to_csv(est: Estimate, header: bool = True) -> str:
    """One row per estimate (bytes as integers), so runs of a sweep concatenate."""
    import csv
    import io

    row: dict[str, object] = {"model": est.model.name, "n_params": est.model.n_params}
    row.update({k: getattr(est.run, k) for k in CSV_RUN})
    row["gpus"] = est.parallel.world_size if est.parallel else 1
    row["strategy"] = est.parallel.strategy if est.parallel else "single"
    row.update({k: getattr(est.memory, k) for k in CSV_MEMORY})
    row["peak_phase"] = est.memory.peak_phase
    row["gpu"] = est.gpu["id"] if est.gpu else ""
    row["fits"] = "" if est.fits is None else est.fits
    # the last column: added after the others, so positional readers keep working
    row["target_len"] = est.run.target_len
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(row), lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerow(row)
    return out.getvalue()


def estimate_schema() -> dict[str, object]:
    """The published JSON Schema of ``--format json`` (docs/schema/estimate.schema.json)."""
    schema = Estimate.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/ftmem/ftmem/docs/schema/estimate.schema.json"
    return schema


def _verdict(est: Estimate, units: UnitSystem) -> str:
    host = _host_verdict(est, units)
    if est.fits is None or est.headroom_bytes is None or est.gpu is None:
        return "No GPU given: use --gpu or --gpu-memory for a verdict." + host
    return _gpu_verdict(est, units) + host


def _host_verdict(est: Estimate, units: UnitSystem) -> str:
    p = est.parallel
    if p is None or p.host_fits is None or p.host_memory_bytes is None:
        return ""
    need, have = (
        format_bytes(p.host_bytes_per_node, units),
        format_bytes(p.host_memory_bytes, units),
    )
    if p.host_fits:
        return f" Host RAM fits: {need} of {have} per node."
    return f" Host RAM DOES NOT FIT: {need} needed per node, {have} there."


def _gpu_verdict(est: Estimate, units: UnitSystem) -> str:
    assert est.gpu is not None and est.headroom_bytes is not None
    per = " (per GPU)" if est.parallel is not None else ""
    if est.fits:
        share = est.headroom_bytes / est.gpu["memory_bytes"]
        return (
            f"FITS on {est.gpu['name']}{per}: {format_bytes(est.headroom_bytes, units)} headroom "
            f"({share:.0%} of {format_bytes(est.gpu['memory_bytes'], units)})."
        )
    return (
        f"DOES NOT FIT on {est.gpu['name']}{per}: short by "
        f"{format_bytes(-est.headroom_bytes, units)} "
        f"(needs {format_bytes(est.memory.total_bytes, units)}, has "
        f"{format_bytes(est.gpu['memory_bytes'], units)})."
    )


def table(est: Estimate, units: UnitSystem = "GiB") -> RenderableType:
    """The estimate as a rich renderable (import of rich kept lazy for fast start)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    m = est.memory
    run = est.run
    title = (
        f"{est.model.name}: {run.method} · {run.precision_regime} · {run.optimizer} · "
        f"batch {run.batch_size} × seq {run.seq_len}"
        f"{' → ' + str(run.target_len) if run.target_len else ''}"
        f"{' · grad-ckpt' if run.grad_ckpt else ''} · attn {run.attn}"
    )
    if est.parallel is not None:
        title += f" · {_spread(est.parallel)} · per GPU"
    tbl = Table(title=title, title_justify="left")
    tbl.add_column("Component")
    tbl.add_column(f"Size ({units})", justify="right")
    tbl.add_column(f"At peak ({units})", justify="right")
    tbl.add_column("Share of peak", justify="right")
    peak = m.peak_allocated_bytes or 1
    for key, label, field in _components(est):
        size = getattr(m, field)
        live = getattr(m.at_peak, key)
        share = live / peak
        tbl.add_row(
            label,
            format_bytes(size, units),
            format_bytes(live, units),
            f"{bar(share)} {share:6.1%}",
        )
    for label, live in device_parts(m):
        share = live / peak
        tbl.add_row(label, "", format_bytes(live, units), f"{bar(share)} {share:6.1%}")
    tbl.add_section()
    for label, value in step_rows(m):
        tbl.add_row(label, "", format_bytes(value, units), "")
    tbl.add_row(
        f"Peak allocated ({peak_where(m)})",
        "",
        format_bytes(m.peak_allocated_bytes, units),
        f"{bar(1.0)} 100.0%",
    )
    for label, value in beyond_rows(m):
        tbl.add_row(label, "", format_bytes(value, units), "")
    tbl.add_row(
        Text("Device total (nvidia-smi)", style="bold"),
        "",
        Text(format_bytes(m.total_bytes, units), style="bold"),
        "",
    )
    params = (
        f"Parameters: {format_count(est.model.n_params)} total "
        f"({est.model.n_params:,}), {format_count(est.model.n_trainable_params)} trainable "
        f"({est.model.n_trainable_params:,})."
    )
    verdict = _verdict(est, units)
    style = "bold green" if est.fits else "bold red" if est.fits is False else "yellow"
    if est.gpu is not None:
        used = m.total_bytes / est.gpu["memory_bytes"]
        verdict = f"GPU {bar(min(used, 1.0), 30)} {used:.0%} of its memory. " + verdict
    parts: list[RenderableType] = [tbl]
    if est.parallel is not None:
        parts.append(_parallel_table(est, units))
    if est.vllm_server is not None:
        parts.append(_server_table(est, units))
    parts += [Text(params), Text(verdict, style=style)]
    parts += [Text(f"note: {n}", style="dim") for n in est.notes]
    return Group(*parts)


def _spread(p: ParallelInfo) -> str:
    degrees = [f"dp {p.data_parallel}"]
    degrees += [
        f"{name} {n}"
        for name, n in (
            ("tp", p.tensor_parallel),
            ("pp", p.pipeline_parallel),
            ("cp", p.context_parallel),
            ("ep", p.expert_parallel),
        )
        if n > 1
    ]
    gpus = f"{p.world_size} GPU{'s' if p.world_size > 1 else ''}"
    if p.nodes > 1:
        gpus += f" on {p.nodes} nodes"
    return f"{gpus} {p.strategy} ({' × '.join(degrees)})"


def _parallel_rows(est: Estimate, units: UnitSystem) -> list[tuple[str, str]]:
    """The multi-GPU facts worth a line each (no arithmetic beyond unit conversion)."""
    p = est.parallel
    assert p is not None
    rows = [
        ("Engine", f"{p.engine}, shards over {p.shard_group} GPU(s)"),
        ("Rank with the most memory", p.worst_rank),
        ("Weights sharded (this GPU's shard)", format_bytes(p.weights_sharded_bytes, units)),
        ("Weights whole on every GPU", format_bytes(p.weights_replicated_bytes, units)),
    ]
    if p.pipeline_parallel > 1:
        rows.append(
            (
                "Peak per pipeline stage",
                ", ".join(format_bytes(b, units) for b in p.stage_peak_bytes),
            )
        )
        rows.append(("Micro-batches held (that stage)", str(p.micro_batches_in_flight)))
    if p.offload_optimizer != "none" or p.offload_params != "none":
        rows.append(
            (
                "Offload",
                f"optimizer → {p.offload_optimizer}, weights → {p.offload_params}",
            )
        )
    if p.host_bytes_per_node:  # offloaded, or pinned copies kept anyway (Gemini)
        rows.append(("Host RAM per node", format_bytes(p.host_bytes_per_node, units)))
    if p.disk_bytes_per_node:
        rows.append(("NVMe per node", format_bytes(p.disk_bytes_per_node, units)))
    rows.append(("All GPUs together", format_bytes(p.job_gpu_bytes, units)))
    return rows


def _server_rows(est: Estimate, units: UnitSystem) -> list[tuple[str, str]]:
    """GRPO --vllm server: what each of the server's GPUs holds (ftmem.vllm_server)."""
    v = est.vllm_server
    assert v is not None
    gpus = f"{v.gpus} (tp {v.tensor_parallel} × dp {v.data_parallel})"
    rows = [
        ("GPUs (beside the training ones)", gpus),
        ("Weights (this GPU's slice)", format_bytes(v.weights_bytes, units)),
        (
            f"Profiling forward ({v.max_num_batched_tokens:,} tokens)",
            format_bytes(v.profile_bytes, units),
        ),
        ("CUDA context and libraries", format_bytes(v.overhead_bytes, units)),
    ]
    if v.reserved_bytes is None or v.kv_cache_bytes is None:
        return [*rows, ("KV cache", "needs --gpu")]
    kv = format_bytes(max(v.kv_cache_bytes, 0), units)
    rows.append(("KV cache", f"{kv} ({v.kv_cache_tokens:,} tokens)"))
    share = f"Reserved ({v.memory_share:.0%} of the GPU)"
    rows.append((share, format_bytes(v.reserved_bytes, units)))
    held = f"{v.concurrent_completions:,} ({v.completions_per_engine} per engine asked)"
    verdict = f"FITS: {held}" if v.fits else "DOES NOT FIT (no KV cache for one sequence)"
    rows.append((f"Sequences of {v.sequence_tokens} tokens at once", verdict))
    return rows


def _server_table(est: Estimate, units: UnitSystem) -> RenderableType:
    from rich.table import Table

    tbl = Table(title="vLLM server, per GPU", title_justify="left", show_header=False)
    tbl.add_column("What")
    tbl.add_column("", justify="right")
    for label, value in _server_rows(est, units):
        tbl.add_row(label, value)
    return tbl


def _parallel_table(est: Estimate, units: UnitSystem) -> RenderableType:
    from rich.table import Table

    tbl = Table(title="Across GPUs", title_justify="left", show_header=False)
    tbl.add_column("What")
    tbl.add_column("", justify="right")
    for label, value in _parallel_rows(est, units):
        tbl.add_row(label, value)
    return tbl


def markdown(est: Estimate, units: UnitSystem = "GiB") -> str:
    m = est.memory
    lines = [
        f"### {est.model.name}: {est.run.method} ({est.run.precision_regime})",
        "",
        f"| Component | Size ({units}) | At peak ({units}) |",
        "|---|---:|---:|",
    ]
    for key, label, field in _components(est):
        lines.append(
            f"| {label} | {format_bytes(getattr(m, field), units)} | "
            f"{format_bytes(getattr(m.at_peak, key), units)} |"
        )
    lines += [
        *(f"| {label} | | {format_bytes(value, units)} |" for label, value in device_parts(m)),
        *(f"| {label} | | {format_bytes(value, units)} |" for label, value in step_rows(m)),
        f"| **Peak allocated** ({peak_where(m)}) | | {format_bytes(m.peak_allocated_bytes, units)} |",
        *(f"| {label} | | {format_bytes(value, units)} |" for label, value in beyond_rows(m)),
        f"| **Device total** (nvidia-smi) | | **{format_bytes(m.total_bytes, units)}** |",
        "",
    ]
    if est.parallel is not None:
        lines += [f"Per GPU, {_spread(est.parallel)}:", "", "| | |", "|---|---:|"]
        lines += [f"| {label} | {value} |" for label, value in _parallel_rows(est, units)]
        lines.append("")
    if est.vllm_server is not None:
        lines += ["vLLM server, per GPU:", "", "| | |", "|---|---:|"]
        lines += [f"| {label} | {value} |" for label, value in _server_rows(est, units)]
        lines.append("")
    lines.append(_verdict(est, units))
    return "\n".join(lines) + "\n"
