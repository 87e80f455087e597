"""The GPU validation script's CPU-side parts: case list, estimates, the report table."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_validation.py"
spec = importlib.util.spec_from_file_location("gpu_validation", SCRIPT)
gpu_validation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_validation)


def _dry_run_rows() -> list[dict]:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, check=True
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_dry_run_lists_the_context_probes_first_then_every_case_with_its_estimate():
    rows = _dry_run_rows()
    probes = [r for r in rows if "probe" in r]
    cases = [r for r in rows if "model" in r]
    assert rows[: len(probes)] == probes  # the probes run before any case
    assert [p["probe"] for p in probes] == ["default", "eager", "count-first", "latch"]
    assert [p["CUDA_MODULE_LOADING"] for p in probes] == ["unset", "EAGER", "unset", "EAGER"]
    assert len(cases) == len(gpu_validation.CASES)
    assert all(r["estimated_peak_bytes"] > 0 for r in cases)


def test_markdown_report_computes_the_error():
    meta = {
        "date": "2026-11-28",
        "gpu": "NVIDIA H200, 570.00, 143771 MiB",
        "torch": "2.13.0",
        "cuda": "12.8",
        "context_bytes": 500 * 2**20,
    }
    results = [
        {
            "model": "llama3-8b",
            "method": "lora",
            "seq_len": 2048,
            "estimated_peak_bytes": 21 * 2**30,
            "measured_peak_bytes": 20 * 2**30,
            "estimated_reserved_bytes": 22 * 2**30,
            "max_memory_reserved_bytes": 25 * 2**30,
            "estimated_device_bytes": 23 * 2**30,
            "measured_device_bytes": 25 * 2**30 + 2**29,
        },
        {"model": "qwen2.5-3b", "method": "qlora", "error": "skipped: time budget"},
    ]
    text = gpu_validation.markdown_report(results, meta)
    assert "CUDA context 500 MiB" in text
    # (21 - 20) / 20, (22 - 25) / 25, (23 - 25.5) / 25.5
    assert (
        "| llama3-8b | method=lora, seq_len=2048 | 21.00 GiB | 20.00 GiB | +5.0% | "
        "22.00 GiB | 25.00 GiB | -12.0% | 23.00 GiB | 25.50 GiB | -9.8% |" in text
    )
    assert "skipped: time budget" in text


def test_errors_per_metric_class_from_a_fake_measurement():
    row = {
        "estimated_peak_bytes": 90,
        "measured_peak_bytes": 100,
        "estimated_reserved_bytes": 120,
        "max_memory_reserved_bytes": 100,
        "estimated_device_bytes": 100,
        "measured_device_bytes": None,  # a case whose device reading failed
    }
    assert gpu_validation.errors(row) == {
        "allocated_error": -0.1,
        "reserved_error": 0.2,
        "device_error": None,
    }


def test_dry_run_estimates_all_three_numbers_for_the_gpu():
    row = next(r for r in _dry_run_rows() if "model" in r)
    # allocated <= reserved (the cache is never negative) < device (+ the CUDA context)
    assert row["estimated_peak_bytes"] <= row["estimated_reserved_bytes"]
    assert row["estimated_reserved_bytes"] < row["estimated_device_bytes"]


# --------------------------------------------------------------------------------------
# The CUDA context probe (scripts/context_probe.py): its pure parts, on canned inputs
# --------------------------------------------------------------------------------------

probe = gpu_validation.context_probe
MiB = 2**20
UUID = "5c0a9d3e-1f2b-4c6d-8e9f-0a1b2c3d4e5f"


def test_child_commands_set_or_remove_the_loading_variable():
    # an NGC-style container sets LAZY itself: the unset variants must remove it; an NVML
    # availability check would keep is_available() from calling cuInit: removed too
    base = {"PATH": "/usr/bin", "CUDA_MODULE_LOADING": "LAZY", "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
    by_name = probe.VARIANTS_BY_NAME
    argv, env = probe.child_command(by_name["default"], python="python3", base_env=base)
    assert argv == ["python3", str(ROOT / "scripts" / "context_probe.py"), "--child", "default"]
    assert env == {"PATH": "/usr/bin"}
    _, env = probe.child_command(by_name["eager"], python="python3", base_env=base)
    assert env == {"PATH": "/usr/bin", "CUDA_MODULE_LOADING": "EAGER"}
    _, env = probe.child_command(by_name["count-first"], python="python3", base_env=base)
    assert env == {"PATH": "/usr/bin"}
    _, env = probe.child_command(by_name["latch"], python="python3", base_env=base)
    assert env == {"PATH": "/usr/bin", "CUDA_MODULE_LOADING": "EAGER"}
    assert base["CUDA_MODULE_LOADING"] == "LAZY"  # the parent's own environment untouched


def test_child_output_is_read_from_its_marked_line_among_other_output():
    stdout = (
        "loading the model\n"
        'CONTEXT_PROBE {"variant": "eager", "moments": {"init": '
        '{"outside_allocator_bytes": 1073741824}}}\n'
    )
    got = probe.parse_child_output("eager", 0, stdout, "a warning\n")
    assert got == {"variant": "eager", "moments": {"init": {"outside_allocator_bytes": 2**30}}}
    # a child that printed its result and then failed at exit keeps it, with the status
    got = probe.parse_child_output("eager", -11, stdout, "")
    assert got["exit_code"] == -11
    assert got["moments"]["init"]["outside_allocator_bytes"] == 2**30


def test_child_without_a_result_is_an_error_naming_its_exit_and_last_stderr_line():
    stderr = 'Traceback (most recent call last):\n  File "x"\nRuntimeError: no CUDA GPUs\n'
    got = probe.parse_child_output("default", 1, "", stderr)
    assert got == {"variant": "default", "error": "exit 1: RuntimeError: no CUDA GPUs"}
    assert probe.parse_child_output("default", -9, "", "") == {
        "variant": "default",
        "error": "exit -9: no output",
    }
    got = probe.parse_child_output("default", 0, "CONTEXT_PROBE {broken\n", "")
    assert got["error"].startswith("unreadable result")
    got = probe.parse_child_output("default", 0, 'CONTEXT_PROBE {"variant": "eager"}\n', "")
    assert got == {"variant": "default", "error": "the result names another variant"}


def test_smi_commands_ask_for_reserved_and_without_it():
    assert probe.smi_command(probe.SMI_FIELDS) == [
        "nvidia-smi",
        "--query-gpu=uuid,memory.used,memory.reserved,memory.total",
        "--format=csv,noheader,nounits",
    ]
    assert probe.smi_command(probe.OLD_SMI_FIELDS)[1] == "--query-gpu=uuid,memory.used,memory.total"


def test_smi_csv_with_and_without_the_reserved_field():
    text = (
        f"GPU-{UUID}, 1021, 520, 143771\nGPU-00000000-0000-0000-0000-000000000001, 3, 520, 143771\n"
    )
    assert probe.parse_smi_memory(text, probe.SMI_FIELDS) == [
        {"uuid": f"GPU-{UUID}", "used_mib": 1021, "reserved_mib": 520, "total_mib": 143771},
        {
            "uuid": "GPU-00000000-0000-0000-0000-000000000001",
            "used_mib": 3,
            "reserved_mib": 520,
            "total_mib": 143771,
        },
    ]
    # an old driver: asked without memory.reserved, which then reads None
    old = probe.parse_smi_memory(f"GPU-{UUID}, 1021, 81251\n", probe.OLD_SMI_FIELDS)
    assert old == [
        {"uuid": f"GPU-{UUID}", "used_mib": 1021, "reserved_mib": None, "total_mib": 81251}
    ]
    # what such a driver answers when asked for it: no row, so the caller asks again
    refused = 'Field "memory.reserved" is not a valid field to query.\n'
    assert probe.parse_smi_memory(refused, probe.SMI_FIELDS) is None
    assert probe.parse_smi_memory("", probe.SMI_FIELDS) is None
    na = probe.parse_smi_memory(f"GPU-{UUID}, [N/A], [N/A], 143771", probe.SMI_FIELDS)
    assert na is not None and na[0]["used_mib"] is None and na[0]["reserved_mib"] is None


def test_the_probed_gpu_is_picked_by_torchs_uuid():
    rows = [
        {"uuid": "GPU-00000000-0000-0000-0000-000000000001", "used_mib": 3},
        {"uuid": f"GPU-{UUID.upper()}", "used_mib": 1021},
    ]
    assert probe.select_gpu(rows, UUID) == rows[1]
    assert probe.select_gpu(rows, None) is None  # two GPUs and no uuid: not guessed
    assert probe.select_gpu(rows[:1], None) == rows[0]


def test_driver_loading_mode_names():
    # CUDA driver API: CU_MODULE_EAGER_LOADING = 0x1, CU_MODULE_LAZY_LOADING = 0x2;
    # CUDA_ERROR_NOT_INITIALIZED = 3
    assert probe.loading_mode_name(0, 1) == "eager"
    assert probe.loading_mode_name(0, 2) == "lazy"
    assert probe.loading_mode_name(3, 0) == "error 3"
    assert probe.loading_mode_name(0, 7) == "unknown 7"


def _reading(outside_mib: int, reserved_mib: int, smi_used: int, smi_reserved: int | None) -> dict:
    return {
        "outside_allocator_bytes": outside_mib * MiB,
        "allocator_reserved_bytes": reserved_mib * MiB,
        "in_use_bytes": (outside_mib + reserved_mib) * MiB,
        "total_bytes": 143_771 * MiB,
        "smi": {"uuid": f"GPU-{UUID}", "used_mib": smi_used, "reserved_mib": smi_reserved},
        "seconds": 0.4,
    }


def test_markdown_section_of_the_probes():
    probes = {
        "idle_smi": {"rows": [{"uuid": f"GPU-{UUID}", "used_mib": 1, "reserved_mib": 520}]},
        "variants": [
            {
                "variant": "eager",
                "uuid": UUID,
                "driver_cuda_version": 12080,
                "loading_at_start": "EAGER",
                "loading_after_init": "EAGER",
                "driver_loading_mode": "eager",
                "moments": {
                    "init": _reading(700, 0, 701, 520),
                    "train_step": {**_reading(1200, 40, 1241, 520), "seconds": 2.5},
                },
            },
            {"variant": "latch", "error": "skipped: time budget"},
            {
                "variant": "default",
                "loading_at_start": None,
                "loading_after_init": "LAZY",
                "driver_loading_mode": "lazy",
                "moments": {"init": _reading(500, 0, 500, None)},
                "error": "matmul: RuntimeError: out of memory",
            },
        ],
    }
    text = probe.markdown_section(probes)
    # 12080 = 12 * 1000 + 80: CUDA 12.8
    assert "Driver's CUDA version 12.8; nvidia-smi idle: used 1 MiB, reserved 520 MiB." in text
    # used over idle: 701 - 1 = 700; used - (total - free): 701 - 700 = +1
    assert (
        "| eager | EAGER → EAGER | eager | init | 700 | 0 | 701 (+700) | 520 | +1 | 0.4 |" in text
    )
    # total - free = 1200 + 40 = 1240: 1241 - 1240 = +1
    assert (
        "| eager | EAGER → EAGER | eager | train_step | 1200 | 40 | 1241 (+1240) | 520 | +1 | 2.5 |"
        in text
    )
    # a driver without memory.reserved; nvidia-smi counting 500 - 500 = 0 over total - free
    assert (
        "| default | unset → LAZY | lazy | init | 500 | 0 | 500 (+499) | n/a | +0 | 0.4 |" in text
    )
    assert "| default | unset → LAZY | lazy | matmul: RuntimeError: out of memory |" in text
    assert "| latch |  |  | skipped: time budget |" in text  # never started: no environment
    # no row for the moment the eager variant lacks
    assert sum(line.startswith("| eager |") for line in text.splitlines()) == 2


def test_markdown_report_carries_the_probe_section():
    meta = {
        "date": "2026-12-04",
        "gpu": "NVIDIA H200, 570.00, 143771 MiB",
        "torch": "2.13.0",
        "cuda": "12.8",
        "context_bytes": None,
        "context_probes": {"idle_smi": {"error": "nvidia-smi: FileNotFoundError"}, "variants": []},
    }
    text = gpu_validation.markdown_report([], meta)
    assert "CUDA context not measured" in text
    assert "## CUDA context probes" in text
    assert "nvidia-smi idle: nvidia-smi: FileNotFoundError." in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="the children would measure this GPU")
def test_probe_children_run_with_their_environment(monkeypatch):
    # end to end on this CPU-only torch: every child starts with the variable its variant
    # sets, whatever the parent has, and stops at CUDA's initialisation
    monkeypatch.setenv("CUDA_MODULE_LOADING", "LAZY")
    got = probe.run_probes()
    by_name = {r["variant"]: r for r in got["variants"]}
    assert list(by_name) == ["default", "eager", "count-first", "latch"]
    assert [by_name[n]["loading_at_start"] for n in by_name] == [None, "EAGER", None, "EAGER"]
    assert by_name["count-first"]["is_available"] is False
    assert "is_available" not in by_name["default"]
    for result in by_name.values():
        assert result["error"] == "init: AssertionError: Torch not compiled with CUDA enabled"
        assert result["moments"] == {}
    assert got["base_loading"] == "LAZY"


def test_the_childs_workloads_run_on_the_cpu():
    probe.matmul_forward_backward(torch, "cpu")
    model, optimizer = probe.tiny_llama_step(torch, "cpu")
    assert model.config._attn_implementation == "sdpa"
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # two layers of (2 norms, q, k, v, o, gate, up, down) + embedding, final norm, head
    assert len(params) == 2 * 9 + 3
    assert all(float(optimizer.state[p]["step"]) == 1 for p in params)
