"""Qwen2-MoE's gate on its shared expert (transformers 5.25 models/qwen2_moe/
modeling_qwen2_moe.py Qwen2MoeSparseMoeBlock.forward): ``F.sigmoid(self.shared_expert_gate(x))
* shared_expert_output``, run here with the real block's ``shared_expert_gate`` module and
measured with saved_tensors_hooks on the CPU, against ops.mlp.shared_expert_gate_saved.

The truth written here: the sigmoid keeps its T × 1 output (which the multiply keeps too),
the multiply keeps the shared expert's T × h output where the sigmoid's output needs a
gradient; under autocast the gate's linear keeps its 16-bit weight copy (h) for its input's
gradient and, where its weight trains, its own 16-bit copy of the input (T × h). The MLP's
input itself is kept by the shared expert's linears in the block, so it is left out here.
"""

from __future__ import annotations

import pytest

from ftmem.arch import layout
from ftmem.methods import plan_method
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.mlp import shared_expert_gate_saved
from ftmem.run import RunConfig
from tests.conftest import tiny
from tests.saved_storages import saved_storages

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(
    ("precision", "trains", "x_grad", "expected"),
    [
        # T = 100, h = 96: s (T × 1) and the shared expert's output (T × h)
        ("fp32", False, True, [400, 38_400]),
        ("bf16", True, True, [200, 19_200]),
        # autocast over fp32 weights: + the gate's bf16 weight copy (h), + its input's copy
        ("bf16-mixed", False, True, [192, 200, 19_200]),
        ("bf16-mixed", True, True, [192, 200, 19_200, 19_200]),
        # only the shared expert's output needs a gradient: the multiply keeps s alone
        ("fp32", False, False, [400]),
    ],
)
def test_gate_keeps_what_the_estimate_counts(precision, trains, x_grad, expected):
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    arch = tiny("qwen2_moe")
    b, s, h = 2, 50, arch.hidden_size
    config = transformers.Qwen2MoeConfig(
        hidden_size=h,
        num_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
        moe_intermediate_size=arch.intermediate_size,
        shared_expert_intermediate_size=arch.shared_experts_size,
    )
    weights = torch.bfloat16 if precision == "bf16" else torch.float32
    gate = Qwen2MoeSparseMoeBlock(config).shared_expert_gate.to(weights)
    gate.requires_grad_(trains)
    torch.manual_seed(0)
    x = torch.randn(b * s, h, dtype=weights, requires_grad=x_grad)
    shared = torch.randn(b * s, h, requires_grad=True)
    autocast = precision == "bf16-mixed"

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            out = shared.to(torch.bfloat16 if precision != "fp32" else torch.float32)
            return torch.sigmoid(gate(x)) * out

    # (x: the MLP's input, which the shared expert keeps; the shared output's cast: a
    # stand-in for the down projection's output, kept by no op of the gate's)
    measured = saved_storages(step, [*gate.parameters(), x])
    assert measured == expected

    run = RunConfig(
        method="full" if trains else "lora", precision=precision, batch_size=b, seq_len=s
    )
    ctx = LayerContext(arch, run, plan_method(arch, run), b * s)
    # (the shared expert's linears adapted: their output needs a gradient in every case)
    shared_linears = [lin for lin in layout(arch).linears if ".shared_expert." in lin.module]
    state = BlockState(
        input_requires_grad=x_grad,
        weights_trainable=trains,
        adapted=frozenset(lin.module for lin in shared_linears),
    )
    items = shared_expert_gate_saved(ctx, state, x_grad, shared_linears)
    assert sorted(item.nbytes for item in items) == expected
