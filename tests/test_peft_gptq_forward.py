"""peft's LoRA on a GPTQ QuantLinear, by release (ftmem.versions.PEFT_GPTQ_SUM_OUT_OF_PLACE).

The two forwards below re-implement peft's code line for line on a stand-in for AutoGPTQ's
torch path (an int8 weight dequantised per call, ``torch.matmul(x, weight)``):

- peft 0.5.0, huggingface/peft@4df9c5a2 src/peft/tuners/lora.py QuantLinear.forward:
  ``result = self.quant_linear_module(x)``; ``result = result.clone()``; without autocast
  ``x = x.to(lora_A.weight.dtype)``, ``output = lora_B(lora_A(dropout(x))).to(expected_dtype)
  * scaling``; ``result += output``.
- peft 0.16.0 on, src/peft/tuners/lora/gptq.py GPTQLoraLinear.forward (e34852f7):
  ``x = self._cast_input_dtype(x, lora_A.weight.dtype)``; ``result = result + lora_B(lora_A(
  dropout(x))) * scaling``; ``result = result.to(torch_result_dtype)``.

Each runs with its input needing a gradient (a checkpointed block's recompute) under
ftmem's own live-bytes tracker; what it keeps is what is alive after it returns but its
output, and its transient is the peak above what it keeps. That transient is compared
with ``LoRA.forward_transient`` for the run with and without ``peft_version``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ftmem.adapters.lora import LoRA
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.measure.tracker import LiveBytesTracker
from ftmem.methods import plan_method
from ftmem.run import RunConfig

from .conftest import tiny

T, R, SCALING = 256, 4, 0.25


class DequantisingLinear(nn.Module):
    """AutoGPTQ's torch path in small: the weight dequantised per call, kept by matmul."""

    def __init__(self, n_in: int, n_out: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("qweight", torch.randint(0, 15, (n_in, n_out), dtype=torch.int8))
        self.register_buffer("scales", torch.full((1, n_out), 0.01, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.scales * (self.qweight - 8)
        return torch.matmul(x, weight)


class Adapted(nn.Module):
    def __init__(self, n_in: int, n_out: int, base: torch.dtype, adapter: torch.dtype) -> None:
        super().__init__()
        self.quant_linear_module = DequantisingLinear(n_in, n_out, base)
        self.lora_A = nn.Linear(n_in, R, bias=False, dtype=adapter)
        self.lora_B = nn.Linear(R, n_out, bias=False, dtype=adapter)
        nn.init.normal_(self.lora_B.weight)
        self.lora_dropout = nn.Identity()  # peft's for lora_dropout 0

    def peft_0_5_0(self, x: torch.Tensor) -> torch.Tensor:
        result = self.quant_linear_module(x)
        result = result.clone()
        expected_dtype = result.dtype
        x = x.to(self.lora_A.weight.dtype)
        output = self.lora_B(self.lora_A(self.lora_dropout(x))).to(expected_dtype) * SCALING
        result += output
        return result

    def peft_current(self, x: torch.Tensor) -> torch.Tensor:
        result = self.quant_linear_module(x)
        torch_result_dtype = result.dtype
        x = x.to(self.lora_A.weight.dtype) if x.dtype != self.lora_A.weight.dtype else x
        result = result + self.lora_B(self.lora_A(self.lora_dropout(x))) * SCALING
        return result.to(torch_result_dtype)


def _measure(version: str, n_in: int, n_out: int, adapter: torch.dtype) -> tuple[int, int]:
    """(kept, transient) bytes of one adapted matmul's forward, its input needing a grad."""
    torch.manual_seed(0)
    module = Adapted(n_in, n_out, torch.float16, adapter)
    x = torch.randn(T, n_in, dtype=torch.float16, requires_grad=True)
    forward = module.peft_0_5_0 if version == "0.5.0" else module.peft_current
    with LiveBytesTracker() as tracker:
        tracker.track(x, list(module.parameters()), list(module.buffers()))
        start = tracker.current
        out = forward(x)
        kept = tracker.current - start - out.untyped_storage().nbytes()
        transient = tracker.peak - start - kept
    return kept, transient


def _estimated(peft_version: str | None, adapter_dtype: str) -> tuple[int, int, int]:
    """LoRA.forward_transient of tiny Llama's adapted q_proj, with its widths."""
    run = RunConfig(
        method="qlora",
        quant="int4",
        precision="fp16",
        compute_dtype="fp16",
        adapter_dtype=adapter_dtype,
        lora_targets="q",
        peft_version=peft_version,
    )
    plan = plan_method(tiny("llama"), run)
    assert not plan.dtypes.autocast  # DeepSpeed's fp16: module.half(), no autocast
    (lin,) = plan.adapted
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    return LoRA.forward_transient(run, plan, lin, e, T), lin.in_features, lin.out_features


@pytest.mark.parametrize("adapter_dtype", ["fp16", "fp32"])
def test_peft_0_5_0_clone_keeps_nothing(adapter_dtype):
    """The clone's node (CloneBackward0) saves no tensor and the original output is freed
    when ``result`` is rebound: what the forward keeps (the dequantised weight, the
    input's cast and lora_A's output) is the same in both releases."""
    _, n_in, n_out = _estimated(None, adapter_dtype)
    dtype = torch.float16 if adapter_dtype == "fp16" else torch.float32
    kept_old, _ = _measure("0.5.0", n_in, n_out, dtype)
    kept_new, _ = _measure("current", n_in, n_out, dtype)
    assert kept_old == kept_new
    cast = T * n_in * 4 if adapter_dtype == "fp32" else 0  # x.to(fp32), kept by lora_A
    lora_a_out = T * R * dtype.itemsize  # kept by lora_B
    assert kept_old == n_in * n_out * 2 + cast + lora_a_out  # + the fp16 weight


@pytest.mark.parametrize(
    ("adapter_dtype", "version", "per_output_element"),
    [
        # fp16 adapters (Qwen-1's Int4 rows): base, lora_B's output, its scaled copy
        # (0.5.0, in place) or base, scaled, sum (current): 3 x 2 bytes either way
        ("fp16", "0.5.0", 3 * 2),
        ("fp16", None, 3 * 2),
        # fp32 adapters: 0.5.0 casts lora_B's fp32 output to fp16 before scaling (base 2 +
        # lora_B 4 + cast 2); current adds in fp32 (base 2 + scaled 4 + sum 4)
        ("fp32", "0.5.0", 2 + 4 + 2),
        ("fp32", None, 2 + 4 + 4),
    ],
)
def test_forward_transient_matches_each_release(adapter_dtype, version, per_output_element):
    estimated, n_in, n_out = _estimated(version, adapter_dtype)
    dtype = torch.float16 if adapter_dtype == "fp16" else torch.float32
    _, measured = _measure(version or "current", n_in, n_out, dtype)
    assert measured == T * n_out * per_output_element
    assert estimated == measured


def test_later_releases_are_the_current_code():
    """0.16.0 (e34852f7) is the first release adding out of place; no version = current."""
    current, _, _ = _estimated(None, "fp32")
    assert _estimated("0.16.0", "fp32")[0] == current
    assert _estimated("0.21.2", "fp32")[0] == current
    assert _estimated("0.15.2", "fp32")[0] < current
