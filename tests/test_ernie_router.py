"""ERNIE 4.5 MoE's router (transformers 5.25 models/ernie4_5_moe/modeling_ernie4_5_moe.py
Ernie4_5_MoeTopKRouter.forward, l.345-357), the real module run on the CPU under
saved_tensors_hooks, against ops.moe.MoE's router items (router_saved, "router input").

The truth written here (T = 100 tokens, E = 8 experts, top 2, h = 96): with autocast
off, ``F.linear(x.float(), w.float())`` keeps the fp32 weight (a parameter) for x's
gradient and, where the weight trains, x's fp32 copy (x itself when x is fp32: left out
here, as the block's other readers keep it); the fp32 softmax keeps its T × E output; the
top-k's indices (Tk int64) are what gather keeps; the division by ``clamp(sum, min)``
keeps the gathered Tk fp32 and the clamped T fp32, the clamp its T fp32 input; the cast to
the hidden dtype keeps nothing. Under autocast nothing changes: no 16-bit weight copy.
"""

from __future__ import annotations

import pytest

from ftmem.methods import plan_method
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.moe import MoE
from ftmem.run import RunConfig
from tests.conftest import tiny
from tests.saved_storages import saved_storages

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# the clamp's input and the clamped sum (T × 4 each), the gathered top-k (Tk × 4), the
# indices (Tk × 8), the softmax (T × E × 4)
ROUTING = [400, 400, 800, 1_600, 3_200]


@pytest.mark.parametrize(
    ("precision", "trains", "expected"),
    [
        ("fp32", False, ROUTING),
        ("bf16", False, ROUTING),
        ("bf16-mixed", False, ROUTING),
        # a trained router on a bf16 input keeps its fp32 copy (T × h × 4)
        ("bf16", True, sorted([*ROUTING, 38_400])),
        # on an fp32 input (fp32, autocast over fp32 weights) x itself: left out
        ("fp32", True, ROUTING),
        ("bf16-mixed", True, ROUTING),
    ],
)
def test_router_keeps_what_the_estimate_counts(precision, trains, expected):
    from transformers.models.ernie4_5_moe.modeling_ernie4_5_moe import (
        Ernie4_5_MoeTopKRouter,
    )

    arch = tiny("ernie4_5_moe")
    b, s, h = 2, 50, arch.hidden_size
    config = transformers.Ernie4_5_MoeConfig(
        hidden_size=h, moe_num_experts=arch.num_experts, moe_k=arch.experts_per_token
    )
    router = Ernie4_5_MoeTopKRouter(config)  # (its weight fp32, as the model keeps it)
    router.requires_grad_(trains)
    router.moe_statics.e_score_correction_bias.requires_grad_(False)
    torch.manual_seed(0)
    x_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.randn(b * s, h, dtype=x_dtype, requires_grad=True)
    autocast = precision == "bf16-mixed"

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            return router(x)

    measured = saved_storages(step, [*router.parameters(), x])
    assert measured == expected

    run = RunConfig(
        method="full" if trains else "lora", precision=precision, batch_size=b, seq_len=s
    )
    ctx = LayerContext(arch, run, plan_method(arch, run), b * s)
    state = BlockState(input_requires_grad=True, weights_trainable=trains, adapted=frozenset())
    items = {x.what: x.nbytes for x in MoE.saved(ctx, state, x_grad=True)}
    assert items["router softmax (fp32) + top-k"] == sum(ROUTING)
    assert "router 16-bit weight copy" not in items
    # the router input: its fp32 copy, or x itself (which the estimate counts here once,
    # for the shared experts too: MoE.router_keeps_input)
    copy = sum(expected) - sum(ROUTING)
    if trains:
        assert items["router input"] == (copy or b * s * h * 4)
        assert MoE.router_keeps_input(ctx, state) == (copy == 0)
