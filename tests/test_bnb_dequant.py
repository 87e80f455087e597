"""bitsandbytes' own 4-bit matmul under transformers + peft (ops/linear.py
bnb_dequant_bytes): each call dequantises its weight into a fresh out x in tensor in
``quant_state.dtype`` and casts it to the input's dtype (bitsandbytes@2e03d3440f5b, 0.43.3,
autograd/_functions.py l.509 forward, l.540 backward; nn/modules.py l.472-477 casts the
input to the compute dtype first). On CUDA ``dequantize_4bit`` writes the weight straight
into ``torch.empty(quant_state.shape, dtype=quant_state.dtype)`` (functional.py l.1353),
so with the weight quantised in the compute dtype the call holds 2 B a weight beside its
input and output."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from ftmem.api import run_config
from ftmem.measure.tracker import LiveBytesTracker
from ftmem.methods import plan_method
from ftmem.ops.linear import LinearOp
from ftmem.presets import get_model

QLORA = {
    "method": "qlora",
    "quant": "nf4",
    "double_quant": True,
    "compute_dtype": "bf16",
    "precision": "bf16-mixed",
    "lora_r": 16,
    "batch_size": 2,
    "seq_len": 512,
}


def _moment(**change) -> int:
    arch = get_model("llama-2-7b")
    run = run_config(**{**QLORA, **change})
    return LinearOp.dequant_moment(arch, run, plan_method(arch, run), 2, 2 * 512)


def test_derivation_llama_7b_on_cuda() -> None:
    """The largest call: gate/up/down (4096 x 11008), the bf16 weight beside a bf16 input
    and output of T = 1024 rows (h and f wide, in either order)."""
    h, f, T = 4096, 11008, 2 * 512
    assert _moment(device="cuda") == h * f * 2 + T * (h + f) * 2


def test_fp32_compute_dequantises_in_fp32() -> None:
    """bnb_4bit_compute_dtype fp32 (the weight quantised in fp32): 4 B a weight."""
    h, f, T = 4096, 11008, 2 * 512
    assert _moment(device="cuda", compute_dtype="fp32") == h * f * 4 + T * (h + f) * 2


def test_not_on_cpu_nor_under_torchtune() -> None:
    """CPU: bitsandbytes' CPU backend dequantises otherwise (below); torchtune's NF4 base is
    torchao's, not bitsandbytes'."""
    assert _moment(device="cpu") == 0
    assert _moment(device="cuda", framework="torchtune") == 0


def _rise(fn, *tensors: torch.Tensor) -> int:
    with LiveBytesTracker() as tracker:
        tracker.track(*tensors)
        base = tracker.current
        out = fn()
        del out
    return tracker.peak - base


def test_cuda_path_transcribed_on_cpu() -> None:
    """MatMul4Bit.forward's CUDA requests as torch ops (the dequantised weight in bf16, the
    cast a no-op, the linear): the call's rise is the weight and the output."""
    n_in, n_out, T = 256, 512, 64
    x = torch.randn(T, n_in, dtype=torch.bfloat16)

    def call() -> torch.Tensor:
        weight = torch.empty(n_out, n_in, dtype=torch.bfloat16)  # dequantize_4bit's out
        return F.linear(x, weight.to(x.dtype))

    assert _rise(call, x) == n_in * n_out * 2 + T * n_out * 2


def test_cpu_backward_dequantises_the_bf16_weight() -> None:
    """bitsandbytes 0.50.2 on the CPU, MatMul4Bit.backward (autograd/_functions.py,
    ``F.dequantize_4bit(B, ctx.state).to(grad_output.dtype)``): the nested absmax in fp32
    (a value per 64 weights), then the weight in bf16, 2 B a weight as on CUDA. The
    backend's own int32 codes and fp32 values (backends/default/ops.py
    _dequantize_4bit_compute) stay inside its custom op, where the tracker (and the CPU
    suite) do not see them, and the forward's ``gemm_4bit`` shows only its output: the
    estimate leaves the moment out on ``--device cpu`` so the CPU suite stays exact."""
    bnb = pytest.importorskip("bitsandbytes")
    n_in, n_out, T = 256, 512, 64
    layer = bnb.nn.Linear4bit(n_in, n_out, bias=False, compute_dtype=torch.bfloat16)
    layer.weight = bnb.nn.Params4bit(
        torch.randn(n_out, n_in, dtype=torch.bfloat16), requires_grad=False, quant_type="nf4"
    )
    x = torch.randn(T, n_in, dtype=torch.bfloat16, requires_grad=True)
    out = layer.to("cpu")(x)
    events: list[tuple[str, int]] = []
    with LiveBytesTracker(events) as tracker:
        tracker.track(x, out)
        out.sum().backward()
    sizes = [size for kind, size in events if kind == "alloc"]
    n = n_in * n_out
    assert n * 2 in sizes
    assert sizes.index(n // 64 * 4) < sizes.index(n * 2)
