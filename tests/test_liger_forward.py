"""Liger's fused linear cross-entropy in forward (Loss.liger_forward): the reference
Function (ftmem.measure.fused_loss) run alone on the CPU under ftmem's live-storage
tracker, the backbone's last hidden states held as Liger's patched forward holds them;
the whole steps in tests/accuracy (cases ``loss=fused``).
"""

from __future__ import annotations

import pytest

from ftmem.methods import plan_method
from ftmem.ops.loss import Loss
from ftmem.run import RunConfig
from tests.conftest import tiny


def _loss_peak(torch, b: int, s: int, h: int, V: int, precision: str) -> int:
    """The largest live bytes of the fused loss's forward beyond the hidden states'
    final norm input and the head weight, less the two gradients it keeps."""
    from ftmem.measure.fused_loss import FusedLinearCrossEntropy
    from ftmem.measure.tracker import LiveBytesTracker

    wide = precision in ("fp32", "bf16-mixed")
    dtype = torch.float32 if wide else torch.bfloat16
    weight = torch.randn(V, h, dtype=dtype)  # a frozen head
    ids = torch.randint(0, V, (b, s))
    norm_in = torch.randn(b, s, h, dtype=dtype, requires_grad=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    with LiveBytesTracker() as tracker, autocast:
        tracker.track(weight, ids, norm_in)
        start = tracker.current
        hidden = norm_in * 1  # the final norm's output, which nothing saves
        x = hidden[:, :-1].reshape(-1, h)
        loss = FusedLinearCrossEntropy.apply(x, weight, ids[:, 1:].reshape(-1))
        kept = x.numel() * x.element_size()  # the input gradient (the head is frozen)
        del loss
        return tracker.peak - start - kept


@pytest.mark.parametrize("precision", ["bf16", "bf16-mixed", "fp32"])
@pytest.mark.parametrize(("b", "s", "V"), [(4, 256, 300), (3, 50, 2000)], ids=str)
def test_liger_forward_matches_the_reference_function(
    precision: str, b: int, s: int, V: int
) -> None:
    """Exact up to the per-row scalars (lse, the picked logit, masks: under 128 bytes).
    Where a chunk is only a few rows, the reference's own fp32 softmax of 4 rows at a time
    (``f`` and its softmax, 2 × 4 × V × 4 bytes: the Triton kernel's registers on a GPU)
    outgrows the second chunk's logits, which by then are freed: that moment is the
    reference's, not Liger's."""
    torch = pytest.importorskip("torch")
    arch = tiny("llama", vocab_size=V)
    run = RunConfig(
        method="freeze", trainable_layers=1, loss="fused", precision=precision, device="cpu"
    )
    run = run.model_copy(update={"batch_size": b, "seq_len": s})
    plan = plan_method(arch, run)
    e = 4 if precision == "fp32" else 2
    want = Loss.liger_forward(arch, run, plan, e, b * s)
    rows = b * (s - 1)
    chunk_logits = min(Loss.liger_chunk_rows(rows, arch.hidden_size, V), rows) * V * e
    # (under autocast the matmul's casts, freed by then, outweigh it)
    casts = (min(rows, chunk_logits // (V * e)) + V) * arch.hidden_size * e
    reference = want - chunk_logits - (casts if precision == "bf16-mixed" else 0) + 2 * 4 * V * 4
    want = max(want, reference)
    got = _loss_peak(torch, b, s, arch.hidden_size, V, precision)
    assert 0 <= got - want < 128


def test_one_token_a_sample_has_no_chunk() -> None:
    """seq_len 1 leaves no shifted row: the fused loss's forward makes no chunk (it divided
    by a zero chunk size before; found by tests/test_properties.py)."""
    from ftmem import estimate

    m = estimate("llama3.2-1b", method="ia3", precision="fp32", seq_len=1, loss="fused").memory
    assert m.peak_allocated_bytes > 0
