"""One peft-adapted linear's forward, measured: the moment a checkpointed block's
recompute (and its forward) reaches at that linear.

With fp32 adapters on a 16-bit base, peft's ``result + lora_B(lora_A(x)) * scaling``
promotes to fp32, so the adapter's scaled output and the sum are both output-sized fp32
tensors beside the 16-bit base output. On a wide fused linear (Phi-3's gate_up) that
moment was the peak of the step, 9 % above the estimate before it was modelled
(2026-11-29). DoRA adds its rescaled outputs and the weight it rebuilds.

Here a lone linear runs under the live-bytes tracker; what the forward adds beyond its
input and weights is compared with a hand derivation and with the estimator's
``LoRA.forward_transient`` plus the tensors autograd keeps (the input's fp32 cast
and lora_A's output).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from ftmem.adapters.lora import LoRA  # noqa: E402
from ftmem.arch import Linear  # noqa: E402
from ftmem.measure.tracker import LiveBytesTracker  # noqa: E402
from ftmem.precision import resolve_dtypes  # noqa: E402
from ftmem.run import RunConfig  # noqa: E402

T, IN, OUT, R = 150, 96, 320, 4  # tokens, Phi-3's tiny gate_up (h=96, 2f=320), rank


def _measured_forward(method: str) -> int:
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(IN, OUT, bias=False)).to(torch.bfloat16)
    cfg = peft.LoraConfig(r=R, target_modules=["0"], lora_dropout=0.0, use_dora=method == "dora")
    model = peft.get_peft_model(base, cfg)  # autocast_adapter_dtype: fp32 adapters
    x = torch.randn(3, T // 3, IN, dtype=torch.bfloat16)
    tracker = LiveBytesTracker()
    tracker.track(list(model.parameters()), x)
    with tracker:
        before = tracker.current
        tracker.reset_peak()
        y = model(x)
        peak = tracker.peak
    assert y.dtype == torch.bfloat16
    return peak - before


def _estimated(method: str) -> int:
    run = RunConfig(method=method, precision="bf16", lora_r=R)
    plan = SimpleNamespace(dtypes=resolve_dtypes(run))
    lin = Linear("mlp.gate_up_proj", ("gate", "up"), IN, OUT, False)
    kept = T * IN * 4 + T * R * 4  # the input's fp32 cast and lora_A's output
    return LoRA.forward_transient(run, plan, lin, 2, T) + kept


@pytest.mark.accuracy
def test_lora_sum_promotes_to_fp32():
    measured = _measured_forward("lora")
    # by hand: the bf16 base output, the fp32 scaled adapter output and the fp32 sum,
    # with the input's fp32 cast and lora_A's fp32 output
    by_hand = T * OUT * (2 + 4 + 4) + T * IN * 4 + T * R * 4
    assert measured == by_hand
    assert _estimated("lora") == by_hand


@pytest.mark.accuracy
def test_dora_forward_moment():
    measured = _measured_forward("dora")
    estimated = _estimated("dora")
    # DoRA's weight norm and scales (per output, fp32) are left out of the estimate
    assert abs(estimated - measured) / measured <= 0.03, (estimated, measured)


@pytest.mark.accuracy
def test_falcon_linears_stay_16_bit_under_bitsandbytes():
    """Why Falcon QLoRA estimates carry a note: transformers 5 loads Falcon with a
    BitsAndBytesConfig without quantizing a single linear, so the measured weights are
    those of plain LoRA on a bf16 base. When transformers starts converting them, this
    fails and the note goes."""
    pytest.importorskip("bitsandbytes")
    from ftmem.estimate import estimate_step
    from ftmem.measure import measure
    from tests.accuracy.cases import Case

    qlora = Case("falcon", {"method": "qlora", "precision": "bf16"})
    lora = Case("falcon", {"method": "lora", "precision": "bf16"})
    measured = measure(qlora.arch(), qlora.run()).weights_bytes
    assert measured == estimate_step(lora.arch(), lora.run()).memory.weights_bytes
    notes = estimate_step(qlora.arch(), qlora.run()).notes
    assert any("does not quantize Falcon" in n for n in notes)
