"""ftmem.measure: the live-bytes tracker on hand-computable cases, and real training
steps on tiny models whose gradient / optimizer-state / trainable counts are derived
by hand here (not from ftmem's own estimator)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ftmem.arch import Architecture  # noqa: E402
from ftmem.run import RunConfig  # noqa: E402

F32 = 4

# Tiny llama: hidden 64, 2 layers, 4 heads (head_dim 16), 2 KV heads, FFN 128, vocab 256.
V, H, L, HEADS, KV, FFN = 256, 64, 2, 4, 2, 128
HEAD_DIM = H // HEADS
KV_DIM = KV * HEAD_DIM  # 32


def tiny_llama() -> Architecture:
    return Architecture(
        name="tiny-llama",
        family="llama",
        vocab_size=V,
        hidden_size=H,
        num_layers=L,
        num_heads=HEADS,
        num_kv_heads=KV,
        intermediate_size=FFN,
    )


# Parameter tensors by hand: embed (V,H), lm_head (V,H), final norm (H,);
# per block q (H,H), k (KV_DIM,H), v (KV_DIM,H), o (H,H), gate/up (FFN,H), down (H,FFN),
# two RMSNorm weights (H,).
BLOCK_SHAPES = [(H, H), (KV_DIM, H), (KV_DIM, H), (H, H), (FFN, H), (FFN, H), (H, FFN), (H,), (H,)]
OUTER_SHAPES = [(V, H), (V, H), (H,)]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


N_PARAMS = sum(map(_numel, OUTER_SHAPES)) + L * sum(map(_numel, BLOCK_SHAPES))
N_TENSORS = len(OUTER_SHAPES) + L * len(BLOCK_SHAPES)


# ---------------------------------------------------------------------------------------
# 1. the tracker on a matmul chain
# ---------------------------------------------------------------------------------------
def test_tracker_matmul_chain_by_hand() -> None:
    from ftmem.measure.tracker import LiveBytesTracker

    n, d, h = 16, 32, 64
    x = torch.randn(n, d)
    w1 = torch.randn(d, h, requires_grad=True)
    w2 = torch.randn(h, d, requires_grad=True)
    g = torch.randn(n, d)  # upstream gradient, allocated up front
    tr = LiveBytesTracker()
    tr.track(x, w1, w2, g, w1)  # a storage registered twice counts once
    base = F32 * (n * d + d * h + h * d + n * d)
    assert tr.current == base

    with tr:
        tr.reset_peak()
        hid = x @ w1  # (n,h): saved by the second mm
        y = hid @ w2  # (n,d)
        del hid
        # forward: both outputs live at once; hid stays alive because autograd saved it
        assert tr.peak - base == F32 * (n * h + n * d)
        assert tr.current - base == F32 * (n * h + n * d)

        tr.reset_peak()
        y.backward(g)
        # y's node: grad_hid (n,h) and w2.grad (h,d) appear while hid is still saved;
        # then hid is released, and w1's node adds w1.grad (d,h) while grad_hid is live:
        #   max(hid + grad_hid + w2.grad, grad_hid + w2.grad + w1.grad), plus y
        peak1 = n * h + n * h + h * d
        peak2 = n * h + h * d + d * h
        assert tr.peak - base == F32 * (n * d + max(peak1, peak2))
        assert tr.current - base == F32 * (n * d + h * d + d * h)  # y + both grads

        del y
        assert tr.current - base == F32 * (h * d + d * h)
        opt = torch.optim.SGD([w1, w2], lr=0.1, foreach=False)
        tr.reset_peak()
        opt.step()  # in place: no temporaries
        assert tr.peak - base == F32 * (h * d + d * h)
        opt.zero_grad(set_to_none=True)
        gc.collect()
        assert tr.current == base


def test_tracker_agrees_with_memtracker_on_toy() -> None:
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    from ftmem.measure.tracker import LiveBytesTracker

    def chain(x, w1, w2, g):
        y = (x @ w1).relu() @ w2
        y.backward(g)

    tensors = [
        torch.randn(8, 24),
        torch.randn(24, 40, requires_grad=True),
        torch.randn(40, 24, requires_grad=True),
        torch.randn(8, 24),
    ]
    ours = LiveBytesTracker()
    ours.track(tensors)
    with ours:
        chain(*tensors)
    for t in tensors[1:3]:
        t.grad = None
    mt = mem_tracker.MemTracker()
    mt.track_external(*tensors)
    with mt:
        chain(*tensors)
    theirs = mt.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    assert ours.peak == theirs


# ---------------------------------------------------------------------------------------
# 2. a full fp32 AdamW step on the tiny llama
# ---------------------------------------------------------------------------------------
def test_full_fp32_adamw_counts() -> None:
    from ftmem.measure import measure

    run = RunConfig(
        method="full",
        precision="fp32",
        optimizer="adamw",
        batch_size=2,
        seq_len=16,
        optimizer_impl="for-loop",
    )
    m = measure(tiny_llama(), run)
    assert m.n_params == N_PARAMS == m.n_trainable_params
    assert m.weights_bytes == F32 * N_PARAMS
    assert m.gradients_bytes == F32 * N_PARAMS
    # exp_avg + exp_avg_sq in fp32, plus one fp32 scalar `step` tensor per parameter
    assert m.optimizer_states_bytes == 8 * N_PARAMS + F32 * N_TENSORS
    # steady state: everything persistent is live at the start of the step
    assert m.baseline_bytes >= m.weights_bytes + m.optimizer_states_bytes
    assert m.phase_peaks["backward"] >= m.baseline_bytes + m.gradients_bytes
    assert m.peak_allocated_bytes == max(m.phase_peaks.values())
    assert m.phase_peaks[m.peak_phase] == m.peak_allocated_bytes
    assert m.activations_bytes > 0
    # the graph walk sees the same saved storages as the saved-tensor hooks
    assert sum(m.activations_by_op.values()) == m.activations_bytes
    assert m.tracker == "dispatch" and m.device == "cpu"


def test_step_peak_agrees_with_memtracker() -> None:
    """Cross-check the CPU tracker with torch's own MemTracker on a whole step."""
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    from ftmem.measure import measure
    from ftmem.measure.build import build_model, build_optimizer

    arch = tiny_llama()
    run = RunConfig(method="full", precision="fp32", batch_size=1, seq_len=16)
    ours = measure(arch, run)

    model = build_model(arch, run).model
    opt = build_optimizer(model, run)
    ids = torch.randint(0, V, (1, 16), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        gc.collect()
        mt = mem_tracker.MemTracker()
        mt.track_external(model, opt, ids)
        with mt:
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            del loss
            opt.step()
            opt.zero_grad(set_to_none=True)
    theirs = mt.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    assert ours.peak_allocated_bytes == theirs


# ---------------------------------------------------------------------------------------
# 3. LoRA in bf16
# ---------------------------------------------------------------------------------------
def test_lora_bf16_trainable_count() -> None:
    pytest.importorskip("peft")
    from ftmem.measure import measure

    r = 4
    run = RunConfig(
        method="lora", precision="bf16", lora_r=r, lora_targets="q,v", batch_size=1, seq_len=8
    )
    m = measure(tiny_llama(), run)
    # A (r, d_in) + B (d_out, r) on q (64 -> 64) and v (64 -> 32), in every block
    lora = L * (r * (H + H) + r * (H + KV_DIM))
    assert m.n_trainable_params == lora
    assert m.n_params == N_PARAMS + lora
    # base weights bf16; adapters upcast to fp32 by peft (autocast_adapter_dtype=True)
    assert m.weights_bytes == 2 * N_PARAMS + F32 * lora
    assert m.gradients_bytes == F32 * lora


def test_qlora_nf4_runs_on_cpu() -> None:
    pytest.importorskip("peft")
    pytest.importorskip("bitsandbytes")
    from ftmem.measure import measure

    run = RunConfig(method="qlora", precision="bf16", lora_r=4, batch_size=1, seq_len=8)
    m = measure(tiny_llama(), run)
    lora = L * (4 * (H + H) + 4 * (H + KV_DIM))
    assert m.n_trainable_params == lora
    assert m.n_params == N_PARAMS + lora  # packed 4-bit weights count their logical size
    block_linear = L * sum(_numel(s) for s in BLOCK_SHAPES if len(s) == 2)
    # 4-bit block linears (+ absmax/code state), bf16 embeddings/head/norms, fp32 adapters
    at_least = block_linear // 2 + 2 * (N_PARAMS - block_linear) + F32 * lora
    assert at_least < m.weights_bytes < at_least + block_linear // 2
    assert m.gradients_bytes == F32 * lora


# ---------------------------------------------------------------------------------------
# 4. importing ftmem.measure does not import torch
# ---------------------------------------------------------------------------------------
def test_import_does_not_import_torch() -> None:
    code = (
        "import sys, ftmem.measure; "
        "assert callable(ftmem.measure.measure); "
        "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
        "assert not bad, bad"
    )
    import ftmem.arch

    src = str(Path(ftmem.arch.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
def test_unmeasurable_optimizer_raises() -> None:
    from ftmem.measure import measure

    with pytest.raises(RuntimeError, match="not measurable"):
        measure(tiny_llama(), RunConfig(optimizer="lion", batch_size=1, seq_len=4))


# --- fake tensors: real-size shapes without allocating ------------------------------


def test_fake_matches_real_on_a_tiny_mha_model():
    from ftmem.measure import measure

    from .conftest import tiny

    arch = tiny("llama")  # MHA: the fake and real attention kernels agree
    run = RunConfig(
        method="lora",
        precision="bf16",
        batch_size=3,
        seq_len=50,
        device="cpu",
        optimizer_impl="for-loop",
    )
    real, fake = measure(arch, run), measure(arch, run, fake=True)
    for key in ("weights_bytes", "gradients_bytes", "optimizer_states_bytes"):
        assert getattr(fake, key) == getattr(real, key), key
    assert abs(fake.activations_bytes - real.activations_bytes) <= 0.03 * real.activations_bytes
    assert fake.tracker.startswith("dispatch (fake")
    assert any("FakeTensorMode" in n for n in fake.notes)


def test_fake_refuses_bitsandbytes():
    from ftmem.measure import measure

    from .conftest import tiny

    run = RunConfig(method="qlora", device="cpu")
    with pytest.raises(RuntimeError, match="--fake cannot run bitsandbytes"):
        measure(tiny("llama"), run, fake=True)
