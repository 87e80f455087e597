"""ALiBi Falcon (falcon-rw) read from its config.json and its mask under transformers 5.25.

The memory itself is measured in tests/accuracy (cases.FALCON_RW); here: the layout read
from the published config, the mask's size from its shape, and when each layer copies it.
"""

from __future__ import annotations

import pytest

from ftmem.api import run_config
from ftmem.arch import count_params
from ftmem.ops.attention import (
    Attention,
    alibi_mask,
    alibi_mask_copied,
    alibi_model_mask,
    alibi_notes,
)
from ftmem.sources import architecture_from_config

# tiiuae/falcon-rw-1b config.json (the keys that shape the model)
RW_1B = {
    "model_type": "falcon",
    "alibi": True,
    "bias": True,
    "multi_query": False,
    "parallel_attn": False,
    "new_decoder_architecture": False,
    "hidden_size": 2048,
    "n_head": 32,
    "n_layer": 24,
    "vocab_size": 50304,
}


@pytest.fixture
def rw():
    return architecture_from_config(RW_1B, "falcon-rw-1b", "test")


def test_sequential_block_has_two_norms(rw):
    # FalconDecoderLayer.__init__ without parallel_attn: input_layernorm and
    # post_attention_layernorm; every linear biased; the embedding tied to the head
    h, V, L = 2048, 50304, 24
    per_layer = (3 * h * h + 3 * h) + (h * h + h) + (4 * h * h + 4 * h) + (4 * h * h + h)
    per_layer += 2 * 2 * h  # two LayerNorms, weight and bias
    assert (rw.norms_per_block, rw.parallel_attn_mlp, rw.kv_heads) == (2, False, 32)
    assert count_params(rw) == V * h + L * per_layer + 2 * h


@pytest.mark.parametrize(
    ("precision", "element", "copied"),
    [("bf16", 2, False), ("fp32", 4, False), ("bf16-mixed", 4, True)],
)
def test_the_mask_in_the_embeddings_dtype(rw, precision, element, copied):
    # (b, heads, s, s) in the embeddings' dtype; autocast casts it for every layer
    run = run_config(precision=precision, batch_size=2, seq_len=64, device="cpu")
    assert alibi_mask(rw, run)
    assert Attention.alibi_mask_bytes(rw, run) == 2 * 32 * 64 * 64 * element
    assert alibi_mask_copied(rw, run) is copied


def test_cuda_pads_a_length_off_eight(rw):
    # the memory-efficient kernel pads the last dimension to a multiple of 8 (a copy)
    for seq_len, copied in ((64, False), (50, True)):
        run = run_config(precision="bf16", batch_size=1, seq_len=seq_len, device="cuda")
        assert alibi_mask_copied(rw, run) is copied


def test_before_5_25_and_under_flash(rw):
    old = run_config(precision="bf16", seq_len=64, transformers_version="5.24.0")
    assert not alibi_mask(rw, old) and Attention.alibi_mask_bytes(rw, old) == 0
    flash = run_config(precision="bf16", seq_len=64, attn="flash")
    assert not alibi_mask(rw, flash)
    assert any("refuses FlashAttention-2" in note for note in alibi_notes(rw, flash))


def test_eager_builds_the_mask_and_keeps_none(rw):
    # FalconModel.forward builds the one (b, heads, s, s) mask whichever kernel runs;
    # eager adds it to the scores (saved by no op): it weighs on the forward, and the
    # checkpoints hold it as every block's input
    run = run_config(precision="bf16", batch_size=2, seq_len=64, attn="eager")
    assert alibi_model_mask(rw, run) and not alibi_mask(rw, run)
    mask = 2 * 32 * 64 * 64 * 2
    assert Attention.alibi_mask_bytes(rw, run) == mask
    assert Attention.alibi_mask_saved(rw, run) == 0 and not alibi_mask_copied(rw, run)
    assert Attention.layer_type_masks(rw, run, 2) == mask
    checkpointed = run_config(
        precision="bf16", batch_size=2, seq_len=64, attn="eager", grad_ckpt=True
    )
    assert Attention.held_layer_masks(rw, checkpointed) == mask
    assert not alibi_notes(rw, run)
