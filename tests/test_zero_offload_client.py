"""ZeRO-Offload with a client optimizer (bitsandbytes', torchao's): DeepSpeed refuses one
unless the config sets ``"zero_force_ds_cpu_optimizer": false`` (deepspeedai/DeepSpeed@
edaa7221 runtime/engine.py l.2040-2044: ``ZeRORuntimeException`` for any client optimizer
but DeepSpeedCPUAdam / DeepSpeedCPULion once ``offload_optimizer`` is cpu or nvme; the key
defaults to true, runtime/constants.py l.77-78). Accelerate (HF Trainer) swaps the client
optimizer for DeepSpeed's CPU one first (accelerate 1.16.0 accelerator.py l.2336-2344,
utils/deepspeed.py ``map_pytorch_optim_to_deepspeed``: DeepSpeedCPULion for bitsandbytes'
32-bit Lion, DeepSpeedCPUAdam otherwise); Lightning's DeepSpeedStrategy does not. With the
key false, the optimizer gets the host's fp32 partition (stage_1_and_2.py l.491-516) and
steps there: on the GPU the run is the offloaded one, with no paged states
(ftmem.paged_ranks)."""

from __future__ import annotations

import json

import pytest

from ftmem import estimate
from ftmem.errors import ConfigError, InvalidInputError
from ftmem.frameworks import read_framework_config
from tests.conftest import tiny

ARCH = tiny("llama", vocab_size=1200, intermediate_size=1100)
SETTINGS = dict(
    method="full", precision="bf16", batch_size=1, seq_len=32, attn="sdpa", device="cuda", gpus=4
)
CLIENT = [
    "paged-adamw-8bit",
    "paged-adamw",
    "adamw-8bit",
    "lion-8bit",
    "paged-lion",
    "ao-adamw-8bit",
]


@pytest.mark.parametrize("strategy", ["zero1", "zero2", "zero3"])
@pytest.mark.parametrize("optimizer", CLIENT)
def test_refused_while_deepspeed_forces_its_cpu_optimizer(strategy, optimizer):
    with pytest.raises(InvalidInputError, match='"zero_force_ds_cpu_optimizer": false'):
        estimate(ARCH, optimizer=optimizer, strategy=strategy, offload_optimizer="cpu",
                 framework="lightning", **SETTINGS)  # fmt: skip


@pytest.mark.parametrize("framework", ["hf", "axolotl", "llama-factory"])
@pytest.mark.parametrize(
    ("optimizer", "ds"),
    [("paged-adamw-8bit", "adamw"), ("adamw-8bit", "adamw"), ("lion-8bit", "adamw"),
     ("ao-adamw-8bit", "adamw"), ("paged-lion", "lion"), ("lion-32bit", "lion"),
     ("adamw-32bit", "adamw")],
)  # fmt: skip
def test_accelerate_swaps_in_deepspeeds_cpu_optimizer(framework, optimizer, ds):
    """map_pytorch_optim_to_deepspeed: DeepSpeedCPULion for bitsandbytes' Lion /
    Lion32bit with optim_bits 32 (what HF's lion_32bit and paged_lion_32bit build),
    DeepSpeedCPUAdam for every other class (Lion8bit included)."""
    kw = dict(strategy="zero2", offload_optimizer="cpu", framework=framework, **SETTINGS)
    client = estimate(ARCH, optimizer=optimizer, **kw)
    swapped = estimate(ARCH, optimizer=ds, **kw)
    assert client.run.optimizer == ds
    assert client.memory.peak_allocated_bytes == swapped.memory.peak_allocated_bytes
    assert client.parallel.host_bytes_per_node == swapped.parallel.host_bytes_per_node
    name = "DeepSpeedCPULion" if ds == "lion" else "DeepSpeedCPUAdam"
    assert any(f"{optimizer} is replaced by {name}" in n for n in client.notes)


def test_the_cli_says_it_in_one_sentence(capsys):
    from ftmem.cli import main

    args = ["estimate", "llama-3.1-8b", "--method", "full", "--gpus", "4", "--framework",
            "lightning", "--strategy"]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        main([*args, "zero2", "--offload-optimizer", "cpu", "--optimizer", "paged-adamw-8bit"])
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert "--no-zero-force-ds-cpu-optimizer" in err and "ZeRORuntimeException" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as done:
        main([*args, "zero2", "--offload-optimizer", "cpu", "--optimizer", "paged-adamw-8bit",
              "--no-zero-force-ds-cpu-optimizer", "--format", "json"])  # fmt: skip
    assert done.value.code == 0


@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
@pytest.mark.parametrize("optimizer", ["paged-adamw-8bit", "paged-lion", "ao-adamw-8bit"])
def test_let_through_it_steps_on_the_host(strategy, optimizer):
    """The GPU holds what it holds under DeepSpeed's own CPU Adam (the states and their
    step are on the host either way); nothing is paged; the host keeps this optimizer's
    states, not Adam's."""
    kw = dict(strategy=strategy, offload_optimizer="cpu", **SETTINGS)
    client = estimate(ARCH, optimizer=optimizer, zero_force_ds_cpu_optimizer=False, **kw)
    ds_adam = estimate(ARCH, optimizer="adamw", **kw)
    assert client.memory.peak_allocated_bytes == ds_adam.memory.peak_allocated_bytes
    assert client.memory.beyond_allocated.paged_optimizer_states == 0
    assert client.memory.optimizer_states_bytes == 0
    assert any("steps on the CPU" in n for n in client.notes)


def test_without_offload_nothing_changes():
    kw = dict(optimizer="paged-adamw-8bit", strategy="zero2", **SETTINGS)
    assert estimate(ARCH, **kw).memory.beyond_allocated.paged_optimizer_states > 0


def test_eight_bit_states_need_bitsandbytes_cpu_kernels():
    """bitsandbytes registers CPU kernels for its 8-bit blockwise update from 0.50.0
    (PR #1901); its 32-bit update had a CPU-capable default before."""
    kw = dict(strategy="zero2", offload_optimizer="cpu", zero_force_ds_cpu_optimizer=False)
    with pytest.raises(InvalidInputError, match="no CPU kernel"):
        estimate(ARCH, optimizer="paged-adamw-8bit", bnb_version="0.49.2", **kw, **SETTINGS)
    estimate(ARCH, optimizer="paged-adamw-8bit", bnb_version="0.50.0", **kw, **SETTINGS)
    estimate(ARCH, optimizer="paged-adamw", bnb_version="0.49.2", **kw, **SETTINGS)


def test_the_setting_is_deepspeeds_only():
    with pytest.raises(InvalidInputError, match="DeepSpeed's setting"):
        estimate(ARCH, optimizer="adamw", strategy="ddp", zero_force_ds_cpu_optimizer=False,
                 **SETTINGS)  # fmt: skip


def _read(tmp_path, ds: dict) -> dict:
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    cfg = {"model_name_or_path": "meta-llama/Llama-2-7b-hf", "optim": "paged_adamw_8bit",
           "deepspeed": "ds.json"}  # fmt: skip
    path = tmp_path / "trl.json"
    path.write_text(json.dumps(cfg))
    return read_framework_config(str(path)).settings


OFFLOAD = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}


def test_deepspeed_configs_carry_the_key(tmp_path):
    """axolotl's zero3_bf16_cpuoffload_all.json sets it false for its client optimizers."""
    s = _read(tmp_path, {**OFFLOAD, "zero_force_ds_cpu_optimizer": False})
    assert s["zero_force_ds_cpu_optimizer"] is False
    assert "zero_force_ds_cpu_optimizer" not in _read(tmp_path, OFFLOAD)
    s = _read(tmp_path, {**OFFLOAD, "zero_force_ds_cpu_optimizer": True})
    assert "zero_force_ds_cpu_optimizer" not in s
    with pytest.raises(ConfigError, match="true or false"):
        _read(tmp_path, {**OFFLOAD, "zero_force_ds_cpu_optimizer": "false"})


def test_axolotls_offload_configs():
    """alst-llama3-8b: torchao's AdamW8bit with zero3_bf16_cpuoffload_all.json, which sets
    the key false; mixtral.yml: adamw_bnb_8bit with zero2.json (offload, key absent), run
    with DeepSpeedCPUAdam by Accelerate."""
    from pathlib import Path

    root = Path(__file__).parent / "fixtures/frameworks/axolotl"
    s = read_framework_config(str(root / "alst-llama3-8b-deepspeed-alst.yaml")).settings
    assert (s["optimizer"], s["zero_force_ds_cpu_optimizer"]) == ("ao-adamw-8bit", False)
    s = read_framework_config(str(root / "mistral-mixtral-mixtral.yml")).settings
    assert (s["optimizer"], s["offload_optimizer"]) == ("adamw-8bit", "cpu")
    assert "zero_force_ds_cpu_optimizer" not in s
