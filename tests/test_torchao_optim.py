"""torchao's low-bit AdamW (--optimizer ao-adamw-8bit | ao-adamw-4bit | ao-adamw-fp8):
states and step temporaries derived by hand from torchao 0.18.0's source
(ftmem.torchao_optim cites the lines), and every reader that names them.

The measured counterparts are tests/accuracy/test_torchao_optim.py (where torchao is
installed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError
from ftmem.frameworks import read_framework_config
from ftmem.integrations.live import LiveRun, read_optimizer
from ftmem.methods import TensorGroup, plan_method
from ftmem.optim import optimizer_state_bytes, optimizer_step_temporary_bytes
from ftmem.run import RunConfig
from ftmem.torchao_optim import state_bytes
from tests.conftest import tiny

MiB = 2**20


@pytest.mark.parametrize(
    ("optimizer", "block", "expected"),
    [
        # 4096×4096 bf16: 16 MiB of uint8 codes, 65,536 fp32 scales and a 256-entry fp32
        # map, for each of exp_avg and exp_avg_sq
        ("ao-adamw-8bit", None, 2 * (16 * MiB + 4 * 65_536 + 4 * 256)),
        # two codes a byte, 128-value blocks (131,072 scales), a 16-entry map
        ("ao-adamw-4bit", None, 2 * (8 * MiB + 4 * 131_072 + 4 * 16)),
        # transformers' Trainer passes block_size 256 to AdamW4bit
        ("ao-adamw-4bit", 256, 2 * (8 * MiB + 4 * 65_536 + 4 * 16)),
        # float8_e4m3fn codes and 65,536 scales, no map
        ("ao-adamw-fp8", None, 2 * (16 * MiB + 4 * 65_536)),
    ],
)
def test_quantised_states_by_hand(optimizer, block, expected):
    run = RunConfig(optimizer=optimizer, optimizer_block_size=block)
    assert state_bytes(4096 * 4096, 2, run) == expected


@pytest.mark.parametrize("optimizer", ["ao-adamw-8bit", "ao-adamw-4bit", "ao-adamw-fp8"])
def test_small_or_ragged_tensors_keep_states_in_their_own_dtype(optimizer):
    """adam.py:75: fewer than 4096 values, or a count that is not a whole number of
    blocks, gets torch.zeros_like(p): two states of the parameter's dtype."""
    run = RunConfig(optimizer=optimizer)
    assert state_bytes(4095 * 1, 2, run) == 2 * 4095 * 2  # below the threshold
    assert state_bytes(4096, 4, run) < 2 * 4096 * 4  # at it: quantised
    # 28,800 values (a 300×96 embedding): 112.5 blocks of 256, 225 of 128
    ragged = state_bytes(28_800, 2, run)
    assert (ragged == 2 * 28_800 * 2) == (optimizer != "ao-adamw-4bit")


def test_tiny_llama_states_and_step_by_hand():
    """Tiny Llama in bf16, full finetuning: per block q, k, v, o (96×96 = 9,216 values,
    36 blocks of 256) and gate, up, down (96×160 = 15,360, 60 blocks); embed and head
    300×96 = 28,800 (not a whole number of 256-blocks: bf16 states); five 96-value norms
    (bf16 states). On the GPU the step counters live on the CPU: not counted.

    8-bit: quantised states 2·(n + 4·n/256 + 1024) per tensor. The step holds the largest
    quantised tensor's two fp32 moments and two new scale vectors: 8·15,360 + 8·60."""
    arch, run = tiny("llama"), RunConfig(optimizer="ao-adamw-8bit")
    groups = plan_method(arch, run).groups
    attn = 2 * (9_216 + 4 * 36 + 1024)
    mlp = 2 * (15_360 + 4 * 60 + 1024)
    plain = 2 * 2 * (2 * 28_800 + 5 * 96)
    assert optimizer_state_bytes(groups, run) == 2 * (4 * attn + 3 * mlp) + plain
    assert optimizer_step_temporary_bytes(groups, run) == 8 * 15_360 + 8 * 60
    # 4-bit: the embedding and head are quantised (225 blocks of 128) and hold the
    # largest step: unpacked old codes (n each), fp32 moments (4n each), int64 new codes
    # (8n each), new scales: 26·28,800 + 8·225
    run4 = RunConfig(optimizer="ao-adamw-4bit")
    assert optimizer_step_temporary_bytes(groups, run4) == 26 * 28_800 + 8 * 225
    # FP8: only the new scale vectors, 2·4·(15,360 / 256)
    assert optimizer_step_temporary_bytes(groups, RunConfig(optimizer="ao-adamw-fp8")) == 480


# one 2048x1024 bf16 parameter, the second step's profiler peak on the CPU (the script in
# tests/accuracy/test_torchao_optim.py test_one_parameter_step_peak, run in side venvs):
# torch 2.5.1 with torchao 0.6.1 and 0.7.0 alike, torch 2.6.0 with torchao 0.7.0
N = 2048 * 1024
MEASURED_STEP_PEAK = {
    ("ao-adamw-8bit", "2.5.1"): 25_231_360,  # 12n + 8n/256
    ("ao-adamw-8bit", "2.6.0"): 16_842_752,  # 8n + 8n/256
    ("ao-adamw-fp8", "2.5.1"): 8_454_144,  # 4n + 8n/256
    ("ao-adamw-fp8", "2.6.0"): 65_536,  # 8n/256
}


@pytest.mark.parametrize(("optimizer", "torch_version"), sorted(MEASURED_STEP_PEAK))
def test_step_before_torch_2_6_keeps_the_fp32_update(optimizer, torch_version):
    """torch 2.5's inductor realises single_param_adam's fp32 update (n values) beside
    the moments; 2.6's does not (ftmem.versions.torchao_step_keeps_update)."""
    group = TensorGroup("w", (2048, 1024), 1, "bf16", True)
    run = RunConfig(optimizer=optimizer, torch_version=torch_version)
    assert (
        optimizer_step_temporary_bytes([group], run)
        == MEASURED_STEP_PEAK[(optimizer, torch_version)]
    )


def test_step_before_torch_2_6_four_bit_is_2n_under_its_measurement():
    """4-bit measured 32n + 8n/128 at 2.5.1 (67,239,936 B) and 28n at 2.6.0 against 26n at
    2.13: ftmem adds the update's 4n only, the other 2n has no cause read (stays visible)."""
    group = TensorGroup("w", (2048, 1024), 1, "bf16", True)
    run = RunConfig(optimizer="ao-adamw-4bit", torch_version="2.5.1")
    assert optimizer_step_temporary_bytes([group], run) == 67_239_936 - 2 * N


def test_tied_embedding_step_is_the_torchtune_8bit_peak_before_torch_2_6():
    """torchtune's README row (Llama-3.2-3B, optimizer in backward, ao 8-bit): the tied
    embedding (128,256 x 3,072 = n) steps last, beside the weights, the states and its bf16
    gradient. torch 2.5's third fp32 buffer adds 4n to that moment, which becomes the peak."""
    settings = dict(
        framework="torchtune", compile=True, method="full", precision="bf16",
        optimizer="ao-adamw-8bit", batch_size=2, seq_len=4096, padding="packed-flex",
        grad_ckpt=True, attn="sdpa", loss="chunked", optimizer_in_backward=True,
        activation_offload=True,
    )  # fmt: skip
    config = str(
        Path(__file__).resolve().parents[1] / "calibration/configs/llama-3.2-3b/config.json"
    )
    old = estimate(config, torch_version="2.5", **settings).memory
    new = estimate(config, **settings).memory
    n = 128_256 * 3_072
    at = old.at_peak
    # the moment: the gradient, the step's 12n and its new scales are the temporaries
    assert at.temporaries == 2 * n + 12 * n + 8 * n // 256
    assert at.weights + at.optimizer_states == old.weights_bytes + old.optimizer_states_bytes
    # at 2.13 the same moment is 4n lower and the head's backward (activations) is the peak
    assert new.at_peak.activations > at.activations
    assert old.peak_allocated_bytes - new.peak_allocated_bytes < 4 * n


def test_step_counters_are_on_the_cpu():
    """state["step"] = torch.tensor(0.0) (adam.py:124): the default device. A CPU run
    (the accuracy suite's) holds them beside the states: 4 bytes per parameter tensor."""
    arch = tiny("llama")
    gpu = RunConfig(optimizer="ao-adamw-8bit")
    cpu = RunConfig(optimizer="ao-adamw-8bit", device="cpu", optimizer_impl="for-loop")
    groups = plan_method(arch, gpu).groups
    tensors = sum(g.count for g in groups if g.trainable)
    assert optimizer_state_bytes(groups, cpu) - optimizer_state_bytes(groups, gpu) == 4 * tensors


def test_block_size_is_torchaos_only():
    with pytest.raises(ValueError, match="optimizer-block-size is torchao"):
        RunConfig(optimizer="adamw", optimizer_block_size=256)
    with pytest.raises(InvalidInputError, match="no fused variant"):
        estimate("gpt2", optimizer="ao-adamw-8bit", optimizer_impl="fused")


def test_estimates_order_by_state_width():
    """Llama-2-7B full finetuning: the 4-bit states are about half the 8-bit ones, which
    are about half of bf16 AdamW's."""
    states = {
        opt: estimate("llama2-7b", optimizer=opt).memory.optimizer_states_bytes
        for opt in ("adamw", "ao-adamw-8bit", "ao-adamw-4bit")
    }
    assert 0.5 < states["ao-adamw-8bit"] / states["adamw"] < 0.52
    assert 0.5 < states["ao-adamw-4bit"] / states["ao-adamw-8bit"] < 0.54


# -- readers --------------------------------------------------------------------------


def _read(tmp_path, name: str, text: str) -> dict:
    (tmp_path / name).write_text(text)
    cfg = read_framework_config(str(tmp_path / name))
    return {**cfg.settings, "notes": cfg.notes}


def test_hf_and_trl_names(tmp_path):
    """transformers' adamw_torch_4bit / _8bit build torchao's classes with block_size from
    optim_args, else 256 (trainer_optimizer.py:471, 5.24): 4-bit's differs from the class."""
    base = {"model_name_or_path": "meta-llama/Llama-2-7b-hf"}
    s = _read(tmp_path, "a.json", json.dumps({**base, "optim": "adamw_torch_4bit"}))
    assert (s["optimizer"], s["optimizer_block_size"]) == ("ao-adamw-4bit", 256)
    s = _read(tmp_path, "b.json", json.dumps({**base, "optim": "adamw_torch_8bit"}))
    assert s["optimizer"] == "ao-adamw-8bit" and "optimizer_block_size" not in s
    both = {**base, "optim": "adamw_torch_4bit", "optim_args": "block_size=128"}
    s = _read(tmp_path, "c.json", json.dumps(both))
    assert s["optimizer"] == "ao-adamw-4bit" and "optimizer_block_size" not in s
    s = _read(tmp_path, "d.json", json.dumps({**both, "optim": "adamw_torch_8bit"}))
    assert s["optimizer_block_size"] == 128


def test_axolotl_names(tmp_path):
    base = "base_model: meta-llama/Llama-2-7b-hf\n"
    s = _read(tmp_path, "a.yml", base + "optimizer: ao_adamw_fp8\n")
    assert s["optimizer"] == "ao-adamw-fp8" and not any("ao_adamw" in n for n in s["notes"])
    s = _read(tmp_path, "b.yml", base + "optimizer: ao_adamw_4bit\n")
    assert s["optimizer"] == "ao-adamw-4bit" and "optimizer_block_size" not in s
    assert any("raises 'Unhandled optimizer'" in n for n in s["notes"])
    s = _read(
        tmp_path, "c.yml", base + "optimizer: adamw_torch_4bit\noptim_args:\n  block_size: 64\n"
    )
    assert (s["optimizer"], s["optimizer_block_size"]) == ("ao-adamw-4bit", 64)


@pytest.mark.parametrize(
    ("component", "expected"),
    [
        ("torchao.optim.AdamW8bit", "ao-adamw-8bit"),
        ("torchao.prototype.low_bit_optim.AdamW4bit", "ao-adamw-4bit"),
        ("torchao.optim.AdamFp8", "ao-adamw-fp8"),
        ("bitsandbytes.optim.AdamW8bit", "adamw-8bit"),  # bitsandbytes' class of that name
    ],
)
def test_torchtune_components(tmp_path, component, expected):
    s = _read(
        tmp_path,
        "tt.yaml",
        "model:\n  _component_: torchtune.models.llama3_1.llama3_1_8b\n"
        f"optimizer:\n  _component_: {component}\n  lr: 1e-5\n  block_size: 128\n",
    )
    assert s["optimizer"] == expected
    assert s.get("optimizer_block_size") == (128 if expected.startswith("ao-") else None)


def test_litgpt_class_path(tmp_path):
    s = _read(
        tmp_path,
        "lit.yaml",
        "checkpoint_dir: checkpoints/meta-llama/Llama-2-7b-hf\n"
        "optimizer:\n  class_path: torchao.optim.AdamW4bit\n  init_args:\n    lr: 0.0002\n",
    )
    assert s["optimizer"] == "ao-adamw-4bit" and "optimizer_block_size" not in s


def test_live_optimizer_by_module():
    """bitsandbytes and torchao both name a class AdamW8bit: the module tells them apart;
    torchao keeps the block size on the optimizer (adam.py:49)."""
    torchao_class = type("AdamW4bit", (), {"__module__": "torchao.optim.adam"})
    opt = torchao_class()
    opt.defaults, opt.block_size = {"lr": 1e-3}, 256
    live = LiveRun(tiny("llama"))
    read_optimizer(opt, live)
    assert (live.settings["optimizer"], live.settings["optimizer_block_size"]) == (
        "ao-adamw-4bit",
        256,
    )
    bnb_class = type("AdamW8bit", (), {"__module__": "bitsandbytes.optim.adamw"})
    bnb = bnb_class()
    bnb.defaults = {"lr": 1e-3}
    live = LiveRun(tiny("llama"))
    read_optimizer(bnb, live)
    assert live.settings["optimizer"] == "adamw-8bit"
