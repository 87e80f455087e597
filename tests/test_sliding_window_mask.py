"""Sliding layers whose window the sequence reaches (ops/attention.sliding_window_mask).

The truth: the tiny Mistral transformers 5.24 builds for the accuracy cases (every layer
slides), run on the CPU. What each layer's attention is given is read off the layers (a
forward pre-hook on every self_attn): from s = window on, a (b, 1, s, s) boolean mask
(masking_utils.py l.285-286: ``kv_length >= local_attention_size`` forbids the causal
skip); below it none (sdpa's is_causal). The hand derivation of what the mask costs per
sliding layer: sdpa keeps the additive mask, b·s·s in the compute dtype (CPU: unpadded),
and with GQA keys and values repeated to every query head (2·T·q·e) instead of the
rotary k and v at the kv heads' width (2·T·kv·e).
"""

from __future__ import annotations

import pytest

from ftmem.estimate import estimate_step
from ftmem.ops.attention import Attention
from tests.accuracy.cases import Case
from tests.conftest import masks_seen

SLIDING = {"sliding_window": 16, "sliding_layers": 2}  # both tiny Mistral layers slide
WIDE = {"sliding_window": 64, "sliding_layers": 2}  # wider than the 50 tokens


def _layer_masks(seq_len: int) -> list:
    """The attention_mask each layer is called with, one step of seq_len tokens."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ftmem.measure.build import hf_config, model_from_config

    case = Case("mistral", {"method": "full", "precision": "bf16", "seq_len": seq_len}, SLIDING)
    arch, run = case.arch(), case.run()
    model = model_from_config(arch, hf_config(arch), torch.bfloat16).train()
    ids = torch.randint(1, 250, (run.batch_size, run.seq_len))
    return masks_seen(model, model.model.layers, ids)


@pytest.mark.parametrize("seq_len", [16, 50])
def test_a_sequence_that_reaches_the_window_gives_a_mask(seq_len):
    seen = _layer_masks(seq_len)
    assert len(seen) == 2
    for mask in seen:
        assert mask is not None and str(mask.dtype) == "torch.bool"
        assert tuple(mask.shape) == (3, 1, seq_len, seq_len)


def test_a_shorter_sequence_keeps_is_causal():
    assert _layer_masks(8) == [None, None]


def _activations(window: dict, **settings) -> int:
    case = Case("mistral", {"method": "full", "precision": "bf16", **settings}, window)
    return estimate_step(case.arch(), case.run()).memory.activations_bytes


def test_estimate_moves_by_the_hand_derivation():
    b, s, e, layers = 3, 50, 2, 2  # Case's batch and length, bf16
    q, kv = 4 * 24, 2 * 24  # 4 heads, 2 KV heads, head 96 / 4
    T = b * s
    per_layer = b * s * s * e + 2 * T * (q - kv) * e
    assert _activations(SLIDING) - _activations(WIDE) == layers * per_layer
    # checkpointed: the blocks save nothing of it; the checkpoints hold the one boolean
    # mask (b·s² bytes) as the layers' input, beside what autograd saves
    assert _activations(SLIDING, grad_ckpt=True) == _activations(WIDE, grad_ckpt=True)
    case = Case("mistral", {"method": "full", "precision": "bf16", "grad_ckpt": True}, SLIDING)
    assert Attention.held_layer_masks(case.arch(), case.run()) == b * s * s


def test_estimate_moves_as_measured():
    """The measured step (torch.autograd saved tensors) moves by the same amount."""
    pytest.importorskip("torch")
    from ftmem.measure import measure

    def measured(window: dict) -> int:
        case = Case("mistral", {"method": "full", "precision": "bf16"}, window)
        return measure(case.arch(), case.run()).activations_bytes

    assert measured(SLIDING) - measured(WIDE) == _activations(SLIDING) - _activations(WIDE)


def test_eager_and_flash_take_no_extra_mask():
    for attn in ("eager", "flash"):
        assert _activations(SLIDING, attn=attn) == _activations(WIDE, attn=attn)


def test_before_masking_utils_nothing_is_added():
    """transformers < 4.53 passes every layer one float mask of the model's: not modelled
    for the window (versions.BOOL_MASKS_PER_CALL), so the estimate does not move."""
    old = {"transformers_version": "4.52.4"}
    assert _activations(SLIDING, **old) == _activations(WIDE, **old)
