"""Helium's RMSNorm (transformers 5.25 models/helium/modeling_helium.py HeliumRMSNorm:
``(self.weight.to(torch.float32) * hidden_states).to(input_dtype)``), the real module
measured with saved_tensors_hooks on the CPU, against ops.norm.Norm.saved.

The truth written here: the norm keeps its fp32 input (the input itself where it is
fp32) and one fp32 rstd a row; the product keeps the weight's fp32 copy for its input's
gradient (a new h × 4 tensor from a 16-bit weight; an fp32 weight is not copied) and,
where the weight trains, the fp32 normalised tensor (Family.norm_weight_cast_fp32),
where Llama's norm keeps it in the input's dtype and no weight copy.
"""

from __future__ import annotations

import pytest

from ftmem.methods import plan_method
from ftmem.ops.context import LayerContext
from ftmem.ops.norm import Norm
from ftmem.run import RunConfig
from tests.conftest import tiny
from tests.saved_storages import saved_storages

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# T = 100 rows of h = 96
T, H = 100, 96


@pytest.mark.parametrize(
    ("precision", "x_grad", "w_grad", "expected"),
    [
        # the fp32 input itself and the rstd; + the fp32 normalised tensor
        ("fp32", True, False, [4 * T, 4 * T * H]),
        ("fp32", True, True, [4 * T, 4 * T * H, 4 * T * H]),
        # bf16: the input's fp32 copy, the rstd, the weight's fp32 copy (h)
        ("bf16", True, False, [4 * H, 4 * T, 4 * T * H]),
        ("bf16", True, True, [4 * H, 4 * T, 4 * T * H, 4 * T * H]),
        # only the weight needs a gradient: the fp32 normalised tensor alone
        ("bf16", False, True, [4 * T * H]),
    ],
)
def test_norm_keeps_what_the_estimate_counts(precision, x_grad, w_grad, expected):
    from transformers.models.helium.modeling_helium import HeliumRMSNorm

    arch = tiny("helium")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    norm = HeliumRMSNorm(H).to(dtype).requires_grad_(w_grad)
    torch.manual_seed(0)
    x = torch.randn(2, T // 2, H, dtype=dtype, requires_grad=x_grad)

    measured = saved_storages(lambda: norm(x), list(norm.parameters()))
    assert measured == expected

    run = RunConfig(method="full", precision=precision, batch_size=2, seq_len=T // 2)
    ctx = LayerContext(arch, run, plan_method(arch, run), T)
    items = Norm.saved(ctx, "input norm", x_grad, w_grad)
    assert sorted(p for item in items for p in (item.parts or (item.nbytes,))) == expected
