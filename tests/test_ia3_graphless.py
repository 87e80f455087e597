"""IA³'s forward where its block keeps nothing on the device (activation offload): one
peft IA³ Linear run alone under ``torch.no_grad`` on the CPU (ftmem's live-storage
tracker) against IA3.graphless_forward, and the offloaded Falcon step's forward phase
against its measured row (tests/accuracy measures the whole row again).
"""

from __future__ import annotations

import warnings

import pytest

from ftmem.estimate import estimate_step
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from tests.conftest import tiny

T = 600


def _nograd_peak(torch, dtype, shape: tuple[int, int], feedforward: bool) -> int:
    """The largest live bytes of one peft IA³ Linear's forward beyond its input."""
    from peft import IA3Config, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    in_f, out_f = shape
    model = torch.nn.Sequential()
    model.add_module("down", torch.nn.Linear(in_f, out_f, bias=False))
    ff = ["down"] if feedforward else []
    config = IA3Config(target_modules=["down"], feedforward_modules=ff)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model.to(dtype), config, autocast_adapter_dtype=True)
    x = torch.randn(T, in_f, dtype=dtype)
    with LiveBytesTracker() as tracker, torch.no_grad():
        tracker.track(x, *model.parameters())
        start = tracker.current
        y = model(x)
        del y
        return tracker.peak - start


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("widths", [(160, 96), (96, 160)], ids=str)
@pytest.mark.parametrize("feedforward", [True, False], ids=["feedforward", "output"])
def test_graphless_forward_matches_one_peft_linear(
    precision: str, widths: tuple[int, int], feedforward: bool
) -> None:
    """A feed-forward linear (down: f -> h) and an output-scaled one (q: h -> heads x 16), each
    wider in and wider out: exact, up to the vector times one (``scaling *= l``: one fp32
    element per scaled feature)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from ftmem.adapters.ia3 import IA3

    a, b = widths
    if feedforward:
        arch, targets = tiny("llama", intermediate_size=a, hidden_size=b), "down"
    else:  # q: hidden -> heads x 16
        arch = tiny("llama", hidden_size=a, num_heads=b // 16, num_kv_heads=b // 16, head_dim=16)
        targets = "q"
    run = RunConfig(precision=precision, method="ia3", ia3_targets=targets, device="cpu")
    plan = plan_method(arch, run)
    ((lin, ff),) = plan.scaled
    shape = (lin.in_features, lin.out_features)
    assert ff == feedforward and shape == widths
    x = 4 if precision == "fp32" else 2
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    got = _nograd_peak(torch, dtype, shape, feedforward)
    vector = 4 * (a if feedforward else b)
    assert got - vector == IA3.graphless_forward(plan, lin, feedforward, T, x)


def test_offloaded_falcon_forward_phase() -> None:
    """docs/accuracy.md's row: forward 1,275,444 B measured (the tracker on the whole step),
    at dense_4h_to_h's scaling beside the embedding output, the block's input, the norm's
    and the attention's outputs; -26.4 % before, within 0.5 % now (the causal mask,
    position ids and the vector times one left out)."""
    run = RunConfig(
        method="ia3", precision="bf16", activation_offload=True, device="cpu", batch_size=3
    )
    run = run.model_copy(update={"seq_len": 50, "optimizer_impl": "for-loop"})
    forward = estimate_step(tiny("falcon"), run).memory.phases.forward
    assert -0.005 < (forward - 1_275_444) / 1_275_444 < 0
