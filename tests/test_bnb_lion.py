"""bitsandbytes' unpaged Lion (--optimizer lion-32bit | lion-8bit; HF ``optim: lion_32bit``
/ ``lion_8bit``): its state sizes derived here from bitsandbytes' source, and every reader
that names it.

bitsandbytes@95f9af30 optim/lion.py: ``Lion`` (optim_bits 32 by default) and ``Lion32bit``
keep one fp32 ``state1`` per parameter whatever its dtype, ``Lion8bit`` one uint8 ``state1``
plus an fp32 ``absmax1`` per 256 values (``blocksize = 256``) and the signed code book
(256 fp32 values, once), except for tensors under ``min_8bit_size`` = 4096 values, which keep
an fp32 ``state1`` (Optimizer1State.init_state, optim/optimizer.py l.664-698). Unpaged:
``get_state_buffer`` returns ``torch.zeros_like`` (l.383), in torch's allocator.

The measured counterparts are the accuracy suite's ``optimizer=lion-*`` cases (bitsandbytes'
own classes stepped on the CPU, tests/accuracy/cases.py ``_paged_optimizers``)."""

from __future__ import annotations

import json

import pytest

from ftmem import estimate
from ftmem.frameworks import read_framework_config
from ftmem.integrations.live import LiveRun, read_optimizer
from ftmem.measure.build import build_model
from ftmem.methods import plan_method
from ftmem.optim import optimizer_step_temporary_bytes
from ftmem.run import RunConfig
from tests.conftest import tiny

# q/k/v/o 96×96 = 9,216 (8-bit), norms 96 (under min_8bit_size: fp32), embedding and head
# 1200×96, MLP 96×1100 (8-bit, and over 1e5: what a paged class would page)
ARCH = tiny("llama", vocab_size=1200, intermediate_size=1100)
SETTINGS = dict(method="full", precision="bf16", batch_size=1, seq_len=32, attn="sdpa")


def _sizes() -> list[int]:
    model = build_model(ARCH, RunConfig(**SETTINGS, optimizer="adamw-8bit")).model
    sizes = [p.numel() for p in model.parameters() if p.requires_grad]
    assert any(n < 4096 for n in sizes) and any(n >= 100_000 for n in sizes)
    return sizes


def _lion_8bit_bytes(sizes: list[int]) -> int:
    """Lion8bit by hand: uint8 state1 + ceil(n / 256) fp32 absmax1 from 4096 values, fp32
    state1 below; one 256-entry fp32 code book."""
    per = sum(n + 4 * -(-n // 256) if n >= 4096 else 4 * n for n in sizes)
    return per + 256 * 4


def _figures(optimizer: str, device: str = "cuda", **extra: object):
    return estimate(ARCH, optimizer=optimizer, device=device, **SETTINGS, **extra)


def test_lion_32bit_keeps_one_fp32_state_per_value():
    sizes = _sizes()
    est = _figures("lion-32bit")
    assert est.memory.optimizer_states_bytes == 4 * sum(sizes)
    # lion-pytorch's Lion keeps its state in the parameters' dtype (bf16 here)
    assert _figures("lion").memory.optimizer_states_bytes == 2 * sum(sizes)


def test_lion_8bit_states_from_bitsandbytes_arithmetic():
    assert _figures("lion-8bit").memory.optimizer_states_bytes == _lion_8bit_bytes(_sizes())


@pytest.mark.parametrize(
    ("plain", "paged"),
    [
        ("lion-32bit", "paged-lion"),
        ("lion-8bit", "paged-lion-8bit"),
        ("adamw-32bit", "paged-adamw"),  # (tests/test_bnb_adamw.py: the unpaged AdamW)
    ],
)
def test_unpaged_bnb_optimizers_keep_their_states_in_the_allocator(plain, paged):
    """The same states as the paged twin; none in managed memory, so the allocated peak
    holds what the paged class moves out."""
    a, b = _figures(plain), _figures(paged)
    assert a.memory.optimizer_states_bytes == b.memory.optimizer_states_bytes
    assert a.memory.beyond_allocated.paged_optimizer_states == 0
    moved = b.memory.beyond_allocated.paged_optimizer_states
    assert moved > 0
    rounding = a.memory.at_peak.block_rounding - b.memory.at_peak.block_rounding
    assert a.memory.peak_allocated_bytes - b.memory.peak_allocated_bytes - rounding == moved


def test_no_step_temporaries():
    """bitsandbytes updates in its kernel (optimizer_update_32bit / _8bit_blockwise): no
    state-sized temporaries, unlike lion-pytorch's torch ops."""

    def temporaries(opt: str) -> int:
        run = RunConfig(**SETTINGS, optimizer=opt)
        return optimizer_step_temporary_bytes(plan_method(ARCH, run).groups, run)

    assert temporaries("lion-32bit") == temporaries("lion-8bit") == 0
    assert temporaries("lion") > 0


def test_hf_names(tmp_path):
    """transformers 5.25 OptimizerNames LION = "lion_32bit", LION_8BIT = "lion_8bit":
    bitsandbytes' Lion with optim_bits 32 / 8, is_paged False (trainer_optimizer.py
    _get_bitsandbytes_optimizer)."""

    def hf(optim: str) -> str:
        path = tmp_path / "trl.json"
        path.write_text(
            json.dumps({"model_name_or_path": "meta-llama/Llama-2-7b-hf", "optim": optim})
        )
        return read_framework_config(str(path)).settings["optimizer"]

    assert hf("lion_32bit") == "lion-32bit"
    assert hf("lion_8bit") == "lion-8bit"


@pytest.mark.parametrize("reader", ["torchtune", "litgpt"])
def test_class_paths(tmp_path, reader):
    """bitsandbytes.optim.Lion / Lion32bit / Lion8bit; lion-pytorch's ``Lion`` is not
    bitsandbytes'."""

    def read(path: str) -> str | None:
        if reader == "torchtune":
            text = (
                "model:\n  _component_: torchtune.models.llama3_1.lora_llama3_1_8b\n"
                f"optimizer:\n  _component_: {path}\n"
            )
        else:
            text = (
                "checkpoint_dir: checkpoints/meta-llama/Llama-2-7b-hf\n"
                f"optimizer: {{class_path: {path}}}\n"
            )
        file = tmp_path / "cfg.yaml"
        file.write_text(text)
        return read_framework_config(str(file)).settings.get("optimizer")

    assert read("bitsandbytes.optim.Lion") == read("bitsandbytes.optim.Lion32bit") == "lion-32bit"
    assert read("bitsandbytes.optim.Lion8bit") == "lion-8bit"
    assert read("lion_pytorch.Lion") not in ("lion-32bit", "lion-8bit")


@pytest.mark.parametrize(
    ("cls", "kwargs", "expected"),
    [
        ("Lion", {}, "lion-32bit"),
        ("Lion", {"optim_bits": 8}, "lion-8bit"),
        ("Lion", {"is_paged": True}, "paged-lion"),
        ("Lion", {"optim_bits": 8, "is_paged": True}, "paged-lion-8bit"),
        ("Lion8bit", {}, "lion-8bit"),
        ("AdamW", {"optim_bits": 8}, "adamw-8bit"),
        ("AdamW", {"optim_bits": 8, "is_paged": True}, "paged-adamw-8bit"),
        ("AdamW", {"is_paged": True}, "paged-adamw"),
    ],
)
def test_live_bitsandbytes_optimizers_by_how_they_were_built(cls, kwargs, expected):
    """transformers builds bitsandbytes' plain Lion and AdamW for every bnb ``optim`` and
    passes optim_bits and is_paged: the live reader reads them off the real object."""
    import torch

    bnb = pytest.importorskip("bitsandbytes")
    params = [torch.nn.Parameter(torch.zeros(4, 4))]
    opt = getattr(bnb.optim, cls)(params, **kwargs)
    live = LiveRun(tiny("llama"))
    read_optimizer(opt, live)
    assert live.settings["optimizer"] == expected
