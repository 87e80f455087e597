"""The activations of the plain (ungated) MLPs of Arcee and Apertus, measured with
saved_tensors_hooks on the CPU (transformers 5.25), against ops.mlp.MLP.saved.

ReLU² (activations.py ReLUSquaredActivation: ``relu_applied = relu(input); squared =
torch.square(relu_applied)``), in ArceeMLP (``down_proj(act_fn(up_proj(x)))``): relu's
backward keeps its result (ReluBackward0: ``result``) and the square's keeps its input
(torch.square is ``pow(self, 2)``: PowBackward0 ``self``): one storage, relu's output,
T × f in the up projection's output dtype; relu does not keep the up projection's output.
The down projection keeps the square (its input) for its weight's gradient. So the MLP
keeps T × f twice between its linears, as GELU's does (its input, down's input), and on
the CPU autocast casts neither op (bf16 in, bf16 out).

xIELU (activations.py XIELUActivation), in ApertusMLP, op by op (its Python path:
``where(x > 0, alpha_p * x * x + beta * x, (expm1(min(x, eps)) - x) * alpha_n + beta *
x)``, alphas = softplus of (1,) parameters): where x (T × f, the up projection's output)
needs a gradient it is kept (``min`` and the multiplies), with alpha_p·x (the second
multiply's operand, promoted to the alphas' dtype), expm1's result, the bool mask and the
two softplus outputs; where the alphas train, also expm1(...) − x. With fp32 parameters
under autocast the (1,) alphas promote the products and the output to fp32 over a bf16 x,
and the down projection keeps the 16-bit cast of that output.
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
    """ReLU² alone: one T × f storage, relu's output (not the input)."""
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


@pytest.mark.parametrize(
    ("precision", "alphas", "expected"),
    [
        # x, alpha_p·x, expm1, (expm1 − x), the mask, the two softplus outputs
        ("fp32", True, [4, 4, T * 160, *[4 * T * 160] * 4]),
        ("fp32", False, [4, 4, T * 160, *[4 * T * 160] * 3]),
        ("bf16", True, [2, 2, T * 160, *[2 * T * 160] * 4]),
        # bf16-mixed: x bf16, alpha_p·x fp32, the rest in x's dtype
        ("bf16-mixed", True, [4, 4, T * 160, *[2 * T * 160] * 3, 4 * T * 160]),
        ("bf16-mixed", False, [4, 4, T * 160, *[2 * T * 160] * 2, 4 * T * 160]),
    ],
)
def test_xielu_keeps_what_is_derived(precision, alphas, expected):
    from transformers.activations import ACT2CLS

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    act = ACT2CLS["xielu"](dtype=torch.float32).to(dtype).requires_grad_(alphas)
    x = torch.randn(T, 160, dtype=torch.float32 if precision == "fp32" else torch.bfloat16)
    x.requires_grad_(True)

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            return act(x)

    assert saved_storages(forward, [*act.parameters(), *act.buffers()]) == expected


@pytest.mark.parametrize("family", ["arcee", "apertus"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-mixed"])
@pytest.mark.parametrize("weights", [True, False])
def test_plain_mlp_keeps_what_the_estimate_counts(family, precision, weights):
    """The whole MLP (its linears frozen or trained, xIELU's alphas with them), the real
    module against the estimate's items."""
    name = family.capitalize()
    module = getattr(transformers.models, family)
    mlp_class = getattr(getattr(module, f"modeling_{family}"), f"{name}MLP")
    arch = tiny(family)
    h, f = arch.hidden_size, arch.intermediate_size
    config = getattr(transformers, f"{name}Config")(hidden_size=h, intermediate_size=f)
    autocast = precision == "bf16-mixed"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    mlp = mlp_class(config).to(dtype).requires_grad_(weights)
    torch.manual_seed(0)
    x = torch.randn(B, S, h, dtype=dtype, requires_grad=True)

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return mlp(x)

    measured = saved_storages(forward, [*mlp.parameters(), *mlp.buffers()])

    run = RunConfig(method="full", precision=precision, batch_size=B, seq_len=S, device="cpu")
    ctx = LayerContext(arch, run, plan_method(arch, run), T)
    linears = [lin for lin in layout(arch).linears if lin.module.startswith("mlp.")]
    items = MLP.saved(ctx, BlockState(True, weights, frozenset()), True, linears, False)
    assert sorted(p for item in items for p in (item.parts or (item.nbytes,))) == measured
