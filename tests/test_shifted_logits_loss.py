"""transformers 4.46-4.48's ForCausalLMLoss: the logits shifted, not the labels.

The source (4.46.0, 4.48.1 and 4.48.3 loss/loss_utils.py:32-48): ``logits = logits.float()``
(T·V·4), ``shift_logits = logits[..., :-1, :].contiguous()`` (an fp32 copy of the R = T - b
shifted rows), cross_entropy over them (its fp32 log-softmax, R·V·4, saved), while the
model's forward still names its 16-bit logits (4.48.1 models/mistral/modeling_mistral.py
:848-860). 4.49.0 pads the labels and takes the unshifted logits: no copy, T rows.

The always-run tests write the bytes from those lines by hand; the opt-in one runs
tests/transformers4_loss_probe.py under the real 4.48.1 and 4.49.0 (unpacked wheels named
by FTMEM_TRANSFORMERS4_SITES, skipped when absent: CI has no network) and compares the
vocabulary-wide tensors live at the forward's and the backward's largest moments with
ftmem's loss moments.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ftmem.arch import Architecture
from ftmem.estimate import estimate_step
from ftmem.ops import loss_requests
from ftmem.ops.loss import Loss
from ftmem.run import RunConfig
from ftmem.versions import shifted_logits_loss
from tests.transformers4_sites import run_probe

FP32, BF16, INT64 = 4, 2, 8
B, S, V = 3, 40, 2000  # the probe's step: a vocabulary that dwarfs the tiny model
T, R = B * S, B * S - B


def mistral() -> Architecture:
    """The probe's tiny Mistral (untied head)."""
    return Architecture(
        name="tiny-mistral",
        family="mistral",
        vocab_size=V,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=128,
    )


def run(version: str | None, **settings: object) -> RunConfig:
    base: dict[str, object] = dict(method="lora", precision="bf16", batch_size=B, seq_len=S)
    return RunConfig(**(base | settings), device="cpu", transformers_version=version)


def test_the_releases_that_shift_the_logits():
    for version in ("4.46.0", "4.47.1", "4.48.1", "4.48.3"):
        assert shifted_logits_loss(run(version))
        assert Loss.kind(run(version)) == "upcast-shifted"
    for version in ("4.45.2", "4.49.0", "5.24.0", None):
        assert not shifted_logits_loss(run(version))
        assert Loss.kind(run(version)) == "standard"
    # the model's own shifted loss and a preference objective's are not ForCausalLMLoss
    assert Loss.kind(run("4.48.1", loss="shifted")) == "shifted"
    assert not shifted_logits_loss(run("4.48.1", objective="dpo", loss="standard"))


def test_forward_moment_holds_logits_upcast_and_shifted_copy():
    """Beyond the saved log-softmax: T·V·2 + T·V·4 + R·V·4 (4.48.1) against T·V·2 + T·V·4
    (4.49.0); the cross-entropy takes R rows against T."""
    arch, e = mistral(), BF16
    assert Loss.forward_transient(arch, run("4.48.1"), e, T) == T * V * (e + FP32) + R * V * FP32
    assert Loss.forward_transient(arch, run("4.49.0"), e, T) == T * V * (e + FP32)
    assert Loss.rows(run("4.48.1")) == R
    assert Loss.rows(run("4.49.0")) == T


def test_the_step_moves_by_the_shifted_copy():
    """The whole step on the CPU: the forward's peak (the loss's) rises by the shifted
    copy less the B rows the log-softmax and labels no longer have; the backward's (nll's
    and log_softmax's gradients beside the saved log-softmax: 3 x rows x V x 4) falls
    by those rows."""
    new, old = (estimate_step(mistral(), run(v)).memory.phases for v in ("4.48.1", "4.49.0"))
    assert new.forward - old.forward == R * V * FP32 - B * V * FP32 - B * INT64
    assert new.backward - old.backward == -3 * B * V * FP32 - B * INT64


def test_request_program_keeps_the_logits():
    """The allocator replay's program: the 16-bit logits live beside their fp32 copy, the
    shifted copy and the log-softmax; the model returns the 16-bit logits (what a loop that
    holds the output keeps)."""
    program = loss_requests._upcast_shifted_loss(T, R, V, BF16, hold=True, keep_logits=True)
    forward, _ = program.phases()
    sizes: list[int] = []
    peak = loss_requests.peak_of(forward, sizes)
    assert peak == T * V * (BF16 + FP32) + 2 * R * V * FP32 + R * INT64 + FP32
    assert sizes[program.output] == T * V * BF16


@pytest.mark.parametrize("version", ["4.48.1", "4.49.0"])
def test_vocabulary_wide_tensors_under_the_real_release(version):
    """What the probe's step holds that is as wide as the vocabulary, at each phase's
    largest moment, against ftmem's loss moments (the saved log-softmax R·V·4 beside the
    forward's transient; beside the backward's gradients)."""
    probe = Path(__file__).with_name("transformers4_loss_probe.py")
    got = run_probe(version, probe, str(B), str(S), str(V))
    arch, cfg = mistral(), run(version)
    rows = Loss.rows(cfg)
    log_softmax = rows * V * FP32
    forward = Loss.forward_transient(arch, cfg, BF16, T) + log_softmax
    assert sum(item[-1] for item in got["forward"]) == forward
    backward = log_softmax + (
        Loss.upcast_shifted_backward(cfg, V, BF16, T) if rows == R else 2 * T * V * FP32
    )
    assert sum(item[-1] for item in got["backward"]) == backward
    shifted = [item for item in got["forward"] if item[0] == [B, S - 1, V]]
    assert bool(shifted) == (rows == R)
