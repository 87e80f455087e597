"""Encoder-decoders (T5, Flan-T5): hand derivations of what a block keeps, how the
two lengths enter, dropout masks, and the CLI around them. The measured side is in
tests/accuracy (61 tiny cases, three real-size ones)."""

from __future__ import annotations

import json

import pytest

from ftmem import estimate
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from ftmem.seq2seq import decoder_block_parts, encoder_block_parts, stack
from ftmem.step import _block_states
from tests.conftest import tiny
from tests.test_cli import run

B, S, T = 2, 40, 24  # batch, encoder positions, decoder positions


def _parts(precision: str = "bf16", **arch_changes):
    arch = tiny("flan-t5", **arch_changes)
    run = RunConfig(
        method="full", precision=precision, batch_size=B, seq_len=S, target_len=T, device="cuda"
    )
    plan = plan_method(arch, run)
    top = _block_states(arch, run, plan)[-1]  # input needs a gradient, weights train
    enc, dec = stack(arch, run, plan, False), stack(arch, run, plan, True)
    return arch, encoder_block_parts(enc, top, True), decoder_block_parts(dec, enc, top, True, True)


def test_flan_t5_encoder_block_by_hand():
    """bf16, full finetuning, sdpa on CUDA (memory-efficient kernel), no dropout."""
    _, (attn, ff), _ = _parts()
    h, inner, f, nh = 96, 6 * 24, 160, 6
    n = B * S
    # T5's norm: fp32 copy + the bf16 input itself + fp32 rstd; normalised (bf16)
    norm = n * h * 4 + n * h * 2 + n * 4 + n * h * 2
    attention = (
        norm
        + n * h * 2  # q/k/v input (one tensor)
        + 3 * n * inner * 2  # q, k, v kept by the kernel
        + n * inner * 2  # its output, also o's input
        + B * nh * S * 4  # logsumexp
        + nh * S * S * 2  # this layer's contiguous position-bias mask
    )
    feed_forward = (
        norm
        + n * h * 2  # wi_0 / wi_1 input
        + 6 * n * f * 2  # gelu_new's x, tanh, x/2, 1 + tanh; gelu output; wi_1 output
        + n * f * 2  # wo input (the gated product)
    )
    assert sum(x.nbytes for x in attn) == attention
    assert sum(x.nbytes for x in ff) == feed_forward


def test_decoder_cross_attention_reads_the_encoder_length():
    """The cross-attention keeps q over the decoder's positions, k and v over the
    encoder's; the zero bias is shared by every layer (not in the block)."""
    _, _, ((_, cross, _), shared) = _parts()
    inner, nh = 144, 6
    core = {x.what: x.nbytes for x in cross}
    assert core["cross-attention q, k, v"] == (B * T + 2 * B * S) * inner * 2
    assert (
        core["cross-attention attention output + logsumexp"] == B * T * inner * 2 + B * nh * T * 4
    )
    # k and v read one tensor, the encoder's output, shared by every decoder block
    assert [x.nbytes for x in shared] == [B * S * 96 * 2]


def test_dropout_masks_are_bool_on_cuda():
    """With dropout, each dropout whose input needs a gradient keeps a one-byte mask:
    per encoder block the attention output (n·h) and the feed-forward's inside (n·f)
    and output (n·h), with no attention-probability mask (the kernel regenerates it)."""
    _, (a0, f0), _ = _parts()
    _, (a1, f1), _ = _parts(dropout_rate=0.1)
    n, h, f = B * S, 96, 160
    added = sum(x.nbytes for x in a1 + f1) - sum(x.nbytes for x in a0 + f0)
    assert added == n * h + n * f + n * h


@pytest.mark.parametrize("grow", ["seq_len", "target_len"])
def test_either_length_grows_the_activations(grow):
    base = dict(method="lora", seq_len=256, target_len=64)
    small = estimate("flan-t5-base", **base).memory
    large = estimate("flan-t5-base", **{**base, grow: base[grow] * 2}).memory
    assert large.activations_bytes > small.activations_bytes
    assert large.peak_allocated_bytes >= small.peak_allocated_bytes


def test_target_len_defaults_to_seq_len():
    a = estimate("t5-small", seq_len=128)
    b = estimate("t5-small", seq_len=128, target_len=128)
    assert a.memory == b.memory and a.run.target_len == 128


def test_logits_follow_the_decoder_length():
    """The loss sees the decoder's positions: the log-softmax is b·t × vocab."""
    est = estimate("flan-t5-base", precision="bf16", batch_size=2, seq_len=300, target_len=50)
    loss = next(x for x in est.memory.activations_outer if x.what.startswith("loss"))
    # bf16 logits: T5's loss takes the log-softmax in their dtype, + int64 labels
    assert loss.bytes == 2 * 50 * 32128 * 2 + 2 * 50 * 8 + 2


def test_json_reports_the_target_length():
    result = run("estimate", "flan-t5-small", "--target-len", "32", "--format", "json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["run"]["target_len"] == 32 and data["model"]["family"] == "t5"


def test_measure_cli_on_a_tiny_t5(tmp_path):
    pytest.importorskip("torch")
    from ftmem.measure.build import hf_config

    arch = tiny("t5")
    (tmp_path / "config.json").write_text(hf_config(arch).to_json_string())
    result = run(
        "measure", str(tmp_path / "config.json"), "--method", "lora", "--seq-len", "32",
        "--target-len", "16", "--batch-size", "2", "--precision", "fp32", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["memory"]["weights_bytes"] == data["measured"]["weights_bytes"]
    assert data["memory"]["activations_bytes"] == data["measured"]["activations_bytes"]


def test_max_target_length_is_the_largest_that_fits():
    from ftmem import largest

    settings = dict(method="lora", batch_size=8, seq_len=512, gpu="rtx4090")
    got = largest("flan-t5-large", "target_len", **settings)
    n = got.value
    assert estimate("flan-t5-large", target_len=n, **settings).fits
    assert not estimate("flan-t5-large", target_len=n + 1, **settings).fits


def test_plan_for_flan_t5_uses_only_what_t5_supports():
    """Levers T5 refuses (fused loss, offload, tensor parallelism...) are skipped; what
    is offered fits and runs through the same estimate."""
    from ftmem import plan

    result = plan("flan-t5-xxl", gpu="rtx4090", method="full", seq_len=512, target_len=128)
    assert not result.baseline.fits and result.fitting
    for candidate in result.fitting:
        settings = dict(u for c in candidate.changes for u in c.updates)
        assert settings.get("loss", "standard") == "standard"
        assert not settings.get("activation_offload") and settings.get("tp", 1) == 1
        assert candidate.estimate.fits and candidate.estimate.run.target_len == 128


@pytest.mark.parametrize("strategy", ["ddp", "zero2", "zero3", "fsdp"])
def test_data_parallel_ranks_keep_every_block_of_both_stacks(strategy):
    """Each rank runs the whole micro-batch: its activations are the single GPU's, both
    stacks' blocks (the timeline has 2 × layers entries)."""
    settings = dict(method="full", batch_size=4, seq_len=512, target_len=128)
    one = estimate("flan-t5-base", **settings).memory
    many = estimate("flan-t5-base", gpus=2, strategy=strategy, **settings).memory
    assert many.activations_bytes == one.activations_bytes
    assert many.peak_allocated_bytes >= many.weights_bytes + many.activations_bytes


def test_csv_puts_the_target_length_last():
    """Added after the other columns, so that readers by position keep working."""
    result = run("estimate", "flan-t5-small", "--target-len", "48", "--format", "csv")
    header, row = result.stdout.strip().splitlines()
    assert header.split(",")[-1] == "target_len" and row.split(",")[-1] == "48"
    assert header.split(",")[:3] == ["model", "n_params", "method"]
