"""The CUDA context probe (issue 16): device memory a training process holds outside
PyTorch's caching allocator when CUDA loads its kernels lazily or eagerly, and what
nvidia-smi counts of it.

    python scripts/context_probe.py --child default     # one variant, on a CUDA machine

scripts/gpu_validation.py runs every variant, each in a fresh process: the driver fixes
the module-loading mode once per process. A child reads, at three moments (after CUDA
initialisation, after one bf16 matmul's forward and backward, after one training step of
a tiny Llama), total - free of ``torch.cuda.mem_get_info()`` minus
``torch.cuda.memory_reserved()``, with nvidia-smi's memory.used and memory.reserved at
the same moment, and prints one line: MARK followed by its JSON.

Only the child's functions and the driver's answers touch CUDA (called in a child, once
CUDA is initialised); the rest is pure, tested on the CPU (tests/test_gpu_validation.py).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MODULE_LOADING = "CUDA_MODULE_LOADING"
MARK = "CONTEXT_PROBE "  # the child's result line starts with this
MiB = 2**20
CHILD_TIMEOUT_S = 90  # one variant: seconds for a tiny model; an eager context loads more
PROBES_BUDGET_S = 150  # no new variant after this: the validation cases need the rest
# is_available() asks NVML instead of cudaGetDeviceCount (no cuInit) when this is 1
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


@dataclass(frozen=True)
class Variant:
    """One way a process can come to its CUDA context."""

    name: str
    question: str
    # CUDA_MODULE_LOADING in the child's environment; None: removed (a container may set it)
    loading: str | None
    # torch.cuda.is_available() and device_count() before any CUDA op: cuInit runs
    # (cudaGetDeviceCount) before torch's first initialisation sets LAZY
    count_first: bool = False
    # put into the environment after the count, before the initialisation
    loading_after_count: str | None = None


VARIANTS = (
    Variant("default", "PyTorch's own default (it sets LAZY at its first initialisation)", None),
    Variant("eager", "every module loaded at once (CUDA_MODULE_LOADING=EAGER)", "EAGER"),
    Variant(
        "count-first",
        "Qwen-1's import order: is_available() and device_count() (DeepSpeed's import, "
        "transformers' bf16 check) before torch sets LAZY; this driver's default decides",
        None,
        count_first=True,
    ),
    Variant(
        "latch",
        "when the driver reads the variable: EAGER at cuInit, LAZY set before the context "
        "(eager here: read at cuInit)",
        "EAGER",
        count_first=True,
        loading_after_count="LAZY",
    ),
)
MOMENTS = (
    ("init", "CUDA initialised, no tensor"),
    ("matmul", "one bf16 matmul, forward and backward (cuBLAS/cuBLASLt kernels)"),
    ("train_step", "one step of a tiny Llama (sdpa, AdamW)"),
)
VARIANTS_BY_NAME = {v.name: v for v in VARIANTS}


def child_command(
    variant: Variant, *, python: str, base_env: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one variant's child process."""
    env = {k: v for k, v in base_env.items() if k not in (MODULE_LOADING, NVML_CHECK)}
    if variant.loading is not None:
        env[MODULE_LOADING] = variant.loading
    return [python, str(Path(__file__).resolve()), "--child", variant.name], env


def parse_child_output(name: str, returncode: int, stdout: str, stderr: str) -> dict:
    """The child's result from its output: its last MARK line, or an error naming what
    went wrong (the exit status and the last line on stderr)."""
    lines = [line for line in stdout.splitlines() if line.startswith(MARK)]
    if not lines:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        return {"variant": name, "error": f"exit {returncode}: {last}"[:300]}
    try:
        result = json.loads(lines[-1][len(MARK) :])
    except json.JSONDecodeError as exc:
        return {"variant": name, "error": f"unreadable result: {exc}"[:300]}
    if not isinstance(result, dict) or result.get("variant") != name:
        return {"variant": name, "error": "the result names another variant"}
    if returncode != 0:
        result["exit_code"] = returncode
    return result


# --------------------------------------------------------------------------------------
# nvidia-smi
# --------------------------------------------------------------------------------------

# --query-gpu fields and the keys they are stored under (MiB, as nvidia-smi gives them)
SMI_FIELDS = (
    ("uuid", "uuid"),
    ("memory.used", "used_mib"),
    ("memory.reserved", "reserved_mib"),
    ("memory.total", "total_mib"),
)
OLD_SMI_FIELDS = tuple(f for f in SMI_FIELDS if f[0] != "memory.reserved")


def smi_command(fields: tuple[tuple[str, str], ...]) -> list[str]:
    query = ",".join(field for field, _ in fields)
    return ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"]


def _mib(value: str) -> int | None:
    return int(value) if value.isdigit() else None  # "[N/A]", "[Not Supported]"


def parse_smi_memory(text: str, fields: tuple[tuple[str, str], ...]) -> list[dict] | None:
    """One dict per GPU line of a ``csv,noheader,nounits`` answer (a field the query did
    not ask for reads None); None when a line does not hold one value per field, as when
    the driver refuses a field it does not know."""
    rows = []
    for line in text.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(fields):
            return None
        row: dict = {key: None for _, key in SMI_FIELDS}
        for (field, key), value in zip(fields, values, strict=True):
            row[key] = value if field == "uuid" else _mib(value)
        rows.append(row)
    return rows or None


def select_gpu(rows: list[dict], uuid: str | None) -> dict | None:
    """The row of the GPU whose uuid torch reports (nvidia-smi writes "GPU-" before it);
    the only row when there is one."""
    for row in rows:
        if uuid and str(row.get("uuid", "")).lower().removeprefix("gpu-") == uuid.lower():
            return row
    return rows[0] if len(rows) == 1 else None


def read_smi_memory() -> dict:
    """nvidia-smi's memory rows now: with memory.reserved, or without it where the
    driver does not know the field."""
    for fields in (SMI_FIELDS, OLD_SMI_FIELDS):
        try:
            done = subprocess.run(smi_command(fields), capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"error": f"nvidia-smi: {type(exc).__name__}: {exc}"[:200]}
        rows = parse_smi_memory(done.stdout, fields) if done.returncode == 0 else None
        if rows is not None:
            return {"rows": rows}
    return {"error": f"nvidia-smi: {(done.stdout + done.stderr).strip()}"[:200]}


# --------------------------------------------------------------------------------------
# The driver's own answers (ctypes on libcuda; only after CUDA is initialised)
# --------------------------------------------------------------------------------------

# CUDA driver API, Module Management: enum CUmoduleLoadingMode, CU_MODULE_EAGER_LOADING =
# 0x1, CU_MODULE_LAZY_LOADING = 0x2; cuModuleGetLoadingMode exists from CUDA 11.7's driver.
LOADING_MODES = {1: "eager", 2: "lazy"}


def loading_mode_name(status: int, value: int) -> str:
    """What cuModuleGetLoadingMode's status and value say."""
    if status != 0:
        return f"error {status}"
    return LOADING_MODES.get(value, f"unknown {value}")


def driver_loading_mode() -> str:
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "libcuda.so.1 not found"
    query = getattr(libcuda, "cuModuleGetLoadingMode", None)
    if query is None:
        return "no cuModuleGetLoadingMode (a driver before CUDA 11.7)"
    mode = ctypes.c_int(0)
    return loading_mode_name(query(ctypes.byref(mode)), mode.value)


def driver_cuda_version() -> int | None:
    """cuDriverGetVersion: 12080 for a driver of CUDA 12.8."""
    try:
        version = ctypes.c_int(0)
        status = ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version))
    except (OSError, AttributeError):
        return None
    return version.value if status == 0 else None


def process_env(name: str) -> str | None:
    """The variable as the C library sees it: torch's C++ sets it with setenv, which
    Python's os.environ (a copy taken at start) does not show."""
    try:
        getenv = ctypes.CDLL(None).getenv
    except (OSError, AttributeError):
        return os.environ.get(name)
    getenv.restype = ctypes.c_char_p
    value = getenv(name.encode())
    return value.decode() if value is not None else None


# --------------------------------------------------------------------------------------
# The child (CUDA only)
# --------------------------------------------------------------------------------------


def matmul_forward_backward(torch, device: str) -> None:
    """One bf16 GEMM and its backward: the backward's two GEMMs run on the autograd
    engine's device thread, with its own cuBLAS handle."""
    a = torch.randn(1024, 1024, device=device, dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(1024, 1024, device=device, dtype=torch.bfloat16, requires_grad=True)
    (a @ b).sum().backward()


def tiny_llama_step(torch, device: str):
    """One AdamW step of a random-weight two-layer Llama with sdpa attention, in bf16;
    returns the model and the optimizer (whose state shows that the step ran)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, config.vocab_size, (2, 128), device=device)
    model(input_ids=tokens, labels=tokens).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def _reading(torch, uuid: str | None) -> dict:
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    reserved = torch.cuda.memory_reserved()
    smi = read_smi_memory()
    return {
        "outside_allocator_bytes": total - free - reserved,
        "allocator_reserved_bytes": reserved,
        "in_use_bytes": total - free,
        "total_bytes": total,
        "smi": select_gpu(smi["rows"], uuid) if "rows" in smi else smi,
    }


def _uuid(torch) -> str | None:
    uuid = str(getattr(torch.cuda.get_device_properties(0), "uuid", ""))
    return uuid if re.fullmatch(r"[0-9a-fA-F-]{36}", uuid) else None


def run_child(variant: Variant) -> dict:
    """The variant's three readings (on CUDA); a failing moment ends the list with its error."""
    result: dict = {"variant": variant.name, "loading_at_start": process_env(MODULE_LOADING)}
    started = time.time()
    import torch

    result.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    if variant.count_first:
        result["is_available"] = torch.cuda.is_available()
        result["device_count"] = torch.cuda.device_count()
        if variant.loading_after_count is not None:
            os.environ[MODULE_LOADING] = variant.loading_after_count
    work = {
        "init": torch.cuda.init,
        "matmul": lambda: matmul_forward_backward(torch, "cuda"),
        "train_step": lambda: tiny_llama_step(torch, "cuda"),
    }
    moments: dict[str, dict] = {}
    result["moments"] = moments
    uuid = None
    for name, _ in MOMENTS:
        begun = time.time()
        try:
            kept = work[name]()  # alive through the reading, as in a training run
            took = round(time.time() - begun, 2)
            uuid = _uuid(torch) if name == "init" else uuid
            # the first reading (cudaMemGetInfo) makes the context, if init has not
            moments[name] = {**_reading(torch, uuid), "seconds": took}
            del kept
            if name == "init":  # the driver asked once its context exists
                result.update(
                    loading_after_init=process_env(MODULE_LOADING),
                    driver_loading_mode=driver_loading_mode(),
                    driver_cuda_version=driver_cuda_version(),
                    gpu=torch.cuda.get_device_name(0),
                    capability="{}.{}".format(*torch.cuda.get_device_capability(0)),
                    uuid=uuid,
                )
        except Exception as exc:  # record how far it got
            result["error"] = f"{name}: {type(exc).__name__}: {exc}"[:300]
            break
    result["seconds"] = round(time.time() - started, 1)
    return result


# --------------------------------------------------------------------------------------
# The parent: every variant in turn
# --------------------------------------------------------------------------------------


def run_probes(python: str = sys.executable) -> dict:
    """Every variant in its own process, one after another (a reading counts the whole
    GPU's memory), and nvidia-smi's idle reading before them."""
    probes: dict = {"idle_smi": read_smi_memory(), "base_loading": os.environ.get(MODULE_LOADING)}
    results = []
    started = time.time()
    for variant in VARIANTS:
        if time.time() - started > PROBES_BUDGET_S:
            results.append({"variant": variant.name, "error": "skipped: time budget"})
            continue
        argv, env = child_command(variant, python=python, base_env=dict(os.environ))
        begun = time.time()
        try:
            done = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
            )
            result = parse_child_output(variant.name, done.returncode, done.stdout, done.stderr)
        except subprocess.TimeoutExpired:
            result = {"variant": variant.name, "error": f"timed out after {CHILD_TIMEOUT_S} s"}
        result["wall_seconds"] = round(time.time() - begun, 1)
        results.append(result)
        print(json.dumps({"probe": result}), flush=True)
    probes["variants"] = results
    return probes


def dry_run_lines() -> list[dict]:
    """What --dry-run lists: each variant, its environment and its question."""
    return [
        {
            "probe": v.name,
            MODULE_LOADING: v.loading if v.loading is not None else "unset",
            "count_first": v.count_first,
            "then": v.loading_after_count,
            "question": v.question,
            "moments": [name for name, _ in MOMENTS],
        }
        for v in VARIANTS
    ]


# --------------------------------------------------------------------------------------
# The report's section
# --------------------------------------------------------------------------------------


def _or_na(value: object) -> str:
    return "n/a" if value is None else str(value)


def _cell_mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MiB:.0f}"


def _smi_cells(reading: dict, idle: dict | None) -> tuple[str, str, str]:
    """nvidia-smi's used (and used over its idle reading), its reserved, and used minus
    the process's total - free: 0 when nvidia-smi counts what cudaMemGetInfo does."""
    smi = reading.get("smi") or {}
    used, smi_reserved = smi.get("used_mib"), smi.get("reserved_mib")
    if used is None:
        return "n/a", "n/a", "n/a"
    idle_used = (idle or {}).get("used_mib")
    over_idle = f" (+{used - idle_used})" if idle_used is not None else ""
    gap = used - reading["in_use_bytes"] / MiB
    return f"{used}{over_idle}", _or_na(smi_reserved), f"{gap:+.0f}"


def _variant_rows(result: dict, idle: dict | None) -> list[str]:
    name = result["variant"]
    env = ""
    if "loading_at_start" in result:  # the child started
        start, after = result["loading_at_start"], result.get("loading_after_init")
        env = f"{start or 'unset'} → {after or 'unset'}"
    mode = result.get("driver_loading_mode", "n/a" if env else "")
    rows = []
    for moment, _ in MOMENTS:
        reading = result.get("moments", {}).get(moment)
        if reading is None:
            continue
        used, smi_reserved, gap = _smi_cells(reading, idle)
        rows.append(
            f"| {name} | {env} | {mode} | {moment} | "
            f"{_cell_mib(reading['outside_allocator_bytes'])} | "
            f"{_cell_mib(reading['allocator_reserved_bytes'])} | {used} | {smi_reserved} | {gap} | "
            f"{reading.get('seconds', 'n/a')} |"
        )
    if "error" in result:
        rows.append(f"| {name} | {env} | {mode} | {result['error']} | | | | | | |")
    return rows


def markdown_section(probes: dict) -> str:
    """The report's section: one row per variant and moment, in MiB."""
    variants = probes.get("variants", [])
    uuid = next((r["uuid"] for r in variants if r.get("uuid")), None)
    idle_smi = probes.get("idle_smi", {})
    idle = select_gpu(idle_smi["rows"], uuid) if "rows" in idle_smi else None
    version = next(
        (r["driver_cuda_version"] for r in variants if r.get("driver_cuda_version")), None
    )
    driver = f"{version // 1000}.{version % 1000 // 10}" if version else "n/a"
    if idle:
        reserved = idle.get("reserved_mib")
        idle_text = f"used {idle.get('used_mib')} MiB, reserved {_or_na(reserved)} MiB"
    else:
        idle_text = idle_smi.get("error", "n/a")
    lines = [
        "## CUDA context probes",
        "",
        "Each variant in a fresh process (scripts/context_probe.py). Outside the allocator: "
        "total − free of `torch.cuda.mem_get_info()` minus `torch.cuda.memory_reserved()`; "
        "nvidia-smi's memory.used (over its idle reading) and memory.reserved at the same "
        "moment; memory.used minus total − free; the seconds the moment's work took. "
        f"Driver's CUDA version {driver}; nvidia-smi idle: {idle_text}.",
        "",
    ]
    lines += [f"- {v.name}: {v.question}" for v in VARIANTS]
    lines += [f"- moment {name}: {what}" for name, what in MOMENTS]
    lines += [
        "",
        "| variant | CUDA_MODULE_LOADING (start → after init) | driver's mode | moment | "
        "outside allocator MiB | allocator reserved MiB | nvidia-smi used MiB | "
        "nvidia-smi reserved MiB | used − (total − free) MiB | seconds |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in variants:
        lines += _variant_rows(result, idle)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--child" or argv[1] not in VARIANTS_BY_NAME:
        names = ", ".join(VARIANTS_BY_NAME)
        print(f"usage: context_probe.py --child NAME, NAME one of {names}.", file=sys.stderr)
        return 2
    print(MARK + json.dumps(run_child(VARIANTS_BY_NAME[argv[1]])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
