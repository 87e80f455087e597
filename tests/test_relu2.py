"""ReLU² (transformers 5.25 activations.py ReLUSquaredActivation: ``relu_applied =
relu(input); squared = torch.square(relu_applied)``) in Arcee's plain MLP
(modeling_arcee.py ArceeMLP: ``down_proj(act_fn(up_proj(x)))``), the real module
measured with saved_tensors_hooks on the CPU, against ops.mlp.MLP.saved.

The truth written here: relu's backward keeps its result (ReluBackward0: ``result``) and
the square's keeps its input (torch.square is ``pow(self, 2)``: PowBackward0 ``self``):
one storage, relu's output, T × f in the up projection's output dtype; relu does not
keep the up projection's output. The down projection keeps the square (its input) for
its weight's gradient. So the MLP keeps T × f twice between its linears, as GELU's does
(its input, down's input), and on the CPU autocast casts neither op (bf16 in, bf16 out).
"""

from __future__ import annotations

import pytest

from ftmem.arch import layout
from ftmem.methods import plan_method
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.mlp import MLP
from ftmem.run import RunConfig
from tests.conftest import tiny
from tests.saved_storages import saved_storages

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

B, S = 2, 50
T = B * S


def test_relu_squared_keeps_relu_output_once():
    """The activation alone: one T × f storage, relu's output (not the input)."""
    from transformers.activations import ACT2FN

    x = torch.randn(T, 160, requires_grad=True)
    act = ACT2FN["relu2"]
    assert saved_storages(lambda: act(x), []) == [4 * T * 160]
    kept = []

    def pack(t):
        kept.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        act(x)
    assert x.untyped_storage().data_ptr() not in kept


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-mixed"])
@pytest.mark.parametrize("weights", [True, False])
def test_arcee_mlp_keeps_what_the_estimate_counts(precision, weights):
    from transformers.models.arcee.modeling_arcee import ArceeMLP

    arch = tiny("arcee")
    h, f = arch.hidden_size, arch.intermediate_size
    config = transformers.ArceeConfig(hidden_size=h, intermediate_size=f)
    autocast = precision == "bf16-mixed"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    mlp = ArceeMLP(config).to(dtype).requires_grad_(weights)
    torch.manual_seed(0)
    x = torch.randn(B, S, h, dtype=dtype, requires_grad=True)

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return mlp(x)

    measured = saved_storages(forward, list(mlp.parameters()))

    run = RunConfig(method="full", precision=precision, batch_size=B, seq_len=S, device="cpu")
    ctx = LayerContext(arch, run, plan_method(arch, run), T)
    linears = [lin for lin in layout(arch).linears if lin.module.startswith("mlp.")]
    state = BlockState(True, weights, frozenset())
    items = MLP.saved(ctx, state, True, linears, False)
    ours = sorted(p for item in items for p in (item.parts or (item.nbytes,)))
    assert ours == measured
