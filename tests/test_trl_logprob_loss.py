"""TRL's log-probability tiles (--loss logprob-tiles): SFTTrainer's loss since TRL 1.15.0.

SFTTrainer patches the model's forward (trl 1.16.0 trl/trainer/sft_trainer.py:1144
add_fused_lm_head; trl/trainer/utils.py:1599 _fused_forward): the shifted hidden states go
through ChunkedLogProbFunction (trl/kernels/chunked_logprob.py:299), which projects them in
tiles of min(N, 4096) rows × 32768 vocabulary entries into one buffer (made in forward and
again in backward), never the full logits. The expected numbers are derived here by hand;
the measurement test runs TRL's own function on the CPU (skipped where trl is not
installed, as in CI).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftmem.frameworks import read_framework_config
from ftmem.presets import get_model
from ftmem.run import RunConfig
from ftmem.step import step_parts

from .conftest import tiny

TILES = "TRL log-prob tiles"


def _parts(arch, **settings):
    run = RunConfig(loss="logprob-tiles", grad_ckpt=False, **settings)
    return step_parts(arch, run)


def _tiles_saved(parts) -> int:
    return sum(s.nbytes for s in parts.outer_items if s.what.startswith(TILES))


# -- Llama-2-7B, by hand -------------------------------------------------------------------

V, H = 32000, 4096  # Llama-2-7B's vocabulary and hidden size


def _backbone(b: int, s: int, h: int, residual: int) -> int:
    """The backbone's last hidden states, alive beside the tiles until the fused forward
    returns (trl 1.16.0 trl/trainer/utils.py:1623): every position, in the residual's
    dtype (fp32 under autocast)."""
    return b * s * h * residual


def test_llama2_7b_buffer_is_256_mib_from_4096_rows():
    # b = 2, s = 4096: N = 2·4095 = 8190 rows ≥ 4096, so the buffer is 4096 × 32768 bf16
    # (torch.empty((min(N, TOKEN_CHUNK_SIZE), chunk_size)), chunked_logprob.py:347)
    arch = get_model("llama2-7b")
    parts = _parts(arch, method="lora", precision="bf16", batch_size=2, seq_len=4096)
    N, buffer = 8190, 4096 * 32768 * 2
    assert buffer == 256 * 2**20
    # pure bf16: no casts; at the end of forward 7 statistics + log-probs + a quotient
    assert parts.sizes.head.logits_forward == buffer + 9 * N * 4 + _backbone(2, 4096, H, 2)


def test_llama2_7b_lora_bf16_at_4096_tokens():
    arch = get_model("llama2-7b")
    parts = _parts(arch, method="lora", precision="bf16", batch_size=1, seq_len=4096)
    N = 4095  # b·(s − 1)
    buffer = N * 32768 * 2  # min(4095, 4096) rows, just under 256 MiB
    # saved: the hidden rows (bf16), int64 targets, fp32 log Z and entropy, bool mask
    assert _tiles_saved(parts) == N * H * 2 + N * 8 + 2 * N * 4 + N
    # no logits of any size are kept
    assert not any(s.nbytes >= N * V for s in parts.outer_items)
    assert parts.sizes.head.logits_forward == buffer + 9 * N * 4 + _backbone(1, 4096, H, 2)
    # backward, frozen head: incoming fp32 grad, fp32 row accumulator, the buffer again,
    # the accumulator's bf16 cast at the return (no weight gradient)
    assert parts.sizes.head.loss_backward == N * 4 + N * H * 4 + buffer + N * H * 2


def test_llama2_7b_full_bf16_adds_the_head_weight_accumulator_and_its_cast():
    arch = get_model("llama2-7b")
    parts = _parts(arch, method="full", precision="bf16", batch_size=1, seq_len=4096)
    N, buffer = 4095, 4095 * 32768 * 2
    head = V * H * 4 + V * H * 2  # fp32 accumulator, then its bf16 cast (the gradient)
    assert parts.sizes.head.loss_backward == N * 4 + N * H * 4 + buffer + N * H * 2 + head


def test_llama2_7b_autocast_casts_each_tile():
    # bf16-mixed: fp32 hidden states and head weight, tiles in bf16: the row chunk's
    # cast (R·H·2) lives through the loop; the weight slice's (C·H·2, C = min(V, 32768))
    # only inside torch.mm, before log Z and the entropy exist (5 statistics beyond them)
    arch = get_model("llama2-7b")
    parts = _parts(arch, method="lora", precision="bf16-mixed", batch_size=1, seq_len=4096)
    N, buffer = 4095, 4095 * 32768 * 2
    rows, weight = N * H * 2, V * H * 2
    assert _tiles_saved(parts) == N * H * 4 + N * 8 + 2 * N * 4 + N
    tiles = buffer + rows + max(weight + 5 * N * 4, 9 * N * 4)
    assert parts.sizes.head.logits_forward == tiles + _backbone(1, 4096, H, 4)
    # fp32 inputs: the returned gradient is the accumulator itself (no cast)
    assert parts.sizes.head.loss_backward == N * 4 + N * H * 4 + buffer + rows + weight


# -- TRL's own function on the CPU -----------------------------------------------------------


def _measure(cl, dtype, autocast: bool, head_grad: bool, b: int, s: int, v: int, h: int):
    """TRL's _fused_forward around ChunkedLogProbFunction, off Triton (all rows), its
    tile folds stubbed out: (forward peak, backward peak) above the inputs, in bytes."""
    import torch

    from ftmem.measure.tracker import LiveBytesTracker

    torch.manual_seed(0)
    last = torch.randn(b, s, h, dtype=dtype, requires_grad=True)
    weight = torch.randn(v, h, dtype=dtype, requires_grad=head_grad)
    ids = torch.randint(0, v, (b, s))
    tracker = LiveBytesTracker()
    with tracker:
        tracker.track(last, weight, ids)
        base = tracker.current
        labels = ids[:, 1:]
        mask = labels != -100
        on = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
        with on:
            out = cl.ChunkedLogProbFunction.apply(
                last[:, :-1].reshape(-1, h), weight, None, labels.clamp(min=0).reshape(-1),
                1.0, 32768, None, 1.0, ("log_probs", "entropy", "is_top1"),
            )  # fmt: skip
        forward = tracker.peak - base
        log_probs = out[0].view(mask.shape).masked_fill(~mask, 0)
        loss = -log_probs.sum() / mask.sum().clamp(min=1)
        del out, log_probs  # SFTTrainer.compute_loss returns the loss alone
        tracker.reset_peak()
        loss.backward()
        backward = tracker.peak - base
    return forward, backward


@pytest.mark.parametrize(
    "precision, head_grad",
    [("fp32", True), ("fp32", False), ("bf16", True), ("bf16-mixed", False)],
)
def test_moments_match_trls_chunked_logprob_function_on_the_cpu(monkeypatch, precision, head_grad):
    pytest.importorskip("trl")
    import torch

    cl = pytest.importorskip("trl.kernels.chunked_logprob")
    # the torch fallback of the Triton folds (_forward_tile, _backward_tile) makes fp32
    # temporaries of a tile's size that ftmem does not model (CUDA runs the Triton
    # kernels): stubbed, the rest of the function runs as it is
    monkeypatch.setattr(cl, "_forward_tile", lambda *a, **k: None)
    monkeypatch.setattr(cl, "_backward_tile", lambda *a, **k: None)
    arch = tiny("llama")  # V = 300, H = 96
    b, s, v, h = 2, 32, 300, 96
    N, R, C = b * (s - 1), b * (s - 1), v  # 62 rows, one tile of rows, one of the vocabulary
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    # the first backward of a process keeps one-time tensors (measured under pytest: the
    # size of the leaves' gradients): the second run is the one compared
    for _ in range(2):
        forward, backward = _measure(cl, dtype, precision == "bf16-mixed", head_grad, b, s, v, h)
    method = "full" if head_grad else "lora"
    parts = _parts(arch, method=method, precision=precision, batch_size=b, seq_len=s)
    saved = _tiles_saved(parts)
    e_h = 2 if precision == "bf16" else 4
    assert saved == N * h * e_h + N * 8 + 2 * N * 4 + N  # rows copy, targets, log Z + H, mask
    # forward: at its peak every saved tensor exists (or, inside the loop, all but log Z
    # and the entropy, which the 5·N·4 in ftmem's moment accounts for)
    # (the function's input, the backbone's output, exists before it is measured)
    e_r = 2 if precision == "bf16" else 4
    assert forward == saved + parts.sizes.head.logits_forward - _backbone(b, s, h, e_r)
    # backward: the loss's scalars (the label count and its clamp, int64) may still be
    # alive beside it: 0 to 16 bytes. Off CUDA, _addmm_fp32 copies 16-bit tiles and
    # inputs to fp32 (a.float(), b.float(); chunked_logprob.py:52) inside the loop: R·C·4
    # with the larger of the weight slice's C·H·4 and the row chunk's R·H·4 (16-bit tiles
    # only), freed before the return, where the accumulators' 16-bit casts are made
    # (N·H·2 and, with the head's gradient, V·H·2: pure bf16 only)
    cpu_addmm = R * C * 4 + max(C * h * 4, R * h * 4 if head_grad else 0)
    returned = N * h * 2 + (v * h * 2 if head_grad else 0) if precision == "bf16" else 0
    moment = parts.sizes.head.loss_backward
    if precision != "fp32":
        moment = max(moment, moment - returned + cpu_addmm)
    extra = backward - (saved + moment)
    assert 0 <= extra <= 16, extra


# -- the reader: SFTConfig's loss by release --------------------------------------------------


def _read(tmp_path: Path, data: dict) -> tuple[dict, list[str], list[str]]:
    path = tmp_path / "sft.json"
    path.write_text(json.dumps({"model_name_or_path": "gpt2", "max_length": 512, **data}))
    cfg = read_framework_config(str(path))
    return cfg.settings, cfg.notes, cfg.assumed


def test_sft_default_loss_is_the_tiles_since_trl_1_15(tmp_path):
    s, _, assumed = _read(tmp_path, {})
    assert s["loss"] == "logprob-tiles"
    listed = next(a for a in assumed if a.startswith("loss "))
    assert "TRL >= 1.15" in listed and "sft_config.py@v1.16.0" in listed


@pytest.mark.parametrize("loss_type", ["nll", "chunked_nll", "dft"])
def test_every_sft_loss_type_is_the_tiles_and_the_older_meaning_is_noted(tmp_path, loss_type):
    s, notes, assumed = _read(tmp_path, {"loss_type": loss_type})
    assert s["loss"] == "logprob-tiles"
    assert not any(a.startswith("loss ") for a in assumed)
    # TRL 1.7-1.14: nll took the full logits, chunked_nll checkpointed chunks
    assert any(f"loss_type {loss_type}" in n and "--loss standard" in n for n in notes)


def test_liger_does_not_supply_the_sft_loss_since_trl_1_15(tmp_path):
    s, notes, _ = _read(tmp_path, {"use_liger_kernel": True})
    assert s["loss"] == "logprob-tiles"
    assert any(n.startswith("use_liger_kernel: TRL >= 1.15") for n in notes)


def test_label_smoothing_takes_the_full_logits(tmp_path):
    s, notes, _ = _read(tmp_path, {"label_smoothing_factor": 0.1})
    assert s["loss"] == "standard"
    assert any(n.startswith("label_smoothing_factor > 0") for n in notes)
    s, _, _ = _read(tmp_path, {"label_smoothing_factor": 0.0})
    assert s["loss"] == "logprob-tiles"
    # SFTTrainer.compute_loss smooths the nll loss only: dft keeps the tiles
    s, _, _ = _read(tmp_path, {"label_smoothing_factor": 0.1, "loss_type": "dft"})
    assert s["loss"] == "logprob-tiles"


def test_preference_trainers_turn_liger_off_since_trl_1_16(tmp_path):
    # DPOTrainer >= 1.16 turns Liger's fused loss off and keeps its fused LM head
    # (trl 1.16.0 dpo_trainer.py:939-952); TRL <= 1.15's Liger DPO loss is noted
    s, notes, _ = _read(tmp_path, {"beta": 0.1, "use_liger_kernel": True})
    assert s["loss"] == "logprob-tiles"
    assert any(n.startswith("use_liger_kernel: TRL >= 1.16's DPOTrainer") for n in notes)


# -- the live reader ---------------------------------------------------------------------------


def test_live_reader_keeps_the_tiles_when_sftconfig_asks_for_liger():
    # _read_model_flags found TRL's patched forward (_fused_forward) first; SFTTrainer
    # then turns Liger's fused loss off, so use_liger_kernel must not make it "fused"
    from types import SimpleNamespace

    from ftmem.integrations.live import LiveRun, _read_args

    args = SimpleNamespace(
        per_device_train_batch_size=2, gradient_accumulation_steps=1, use_liger_kernel=True
    )
    live = LiveRun(tiny("llama"))
    live.set("loss", "logprob-tiles", "model.forward (TRL's add_fused_lm_head)")
    _read_args(args, live)
    assert live.settings["loss"] == "logprob-tiles"
    plain = LiveRun(tiny("llama"))  # HF Trainer with Liger: Liger's fused loss
    _read_args(args, plain)
    assert plain.settings["loss"] == "fused"
    # label smoothing with loss_type nll: the full logits (SFTTrainer.compute_loss)
    smooth = SimpleNamespace(
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        label_smoothing_factor=0.1,
        loss_type="nll",
    )
    live = LiveRun(tiny("llama"))
    live.set("loss", "logprob-tiles", "model.forward (TRL's add_fused_lm_head)")
    _read_args(smooth, live)
    assert live.settings["loss"] == "standard"
