"""Gemma 3's image tokens attend to their whole image (ops/attention.image_block_mask).

The truth: the tiny Gemma 3 image-text model transformers 5.24 builds for the accuracy
cases, run on the CPU with the processor's token_type_ids (1 at image tokens) and
without. What each layer's attention is given is read off the layers themselves (a
forward pre-hook on every self_attn): with token_type_ids a (b, 1, s, s) boolean mask in
every layer, global and sliding, without them none (sdpa's is_causal). The hand
derivation of what that costs per layer: sdpa keeps the additive mask, b·s·s in the
compute dtype, and with GQA keys and values repeated to every query head (2·T·q·e)
instead of the rotary k and v at the kv heads' width (2·T·kv·e); plus the
token_type_ids input, 8 bytes per token.
"""

from __future__ import annotations

import pytest

from ftmem.families import by_model_type
from ftmem.run import RunConfig
from ftmem.step import step_parts
from tests.accuracy.cases import ImageTextCase
from tests.conftest import masks_seen

WINDOW = {"num_layers": 6, "sliding_window": 16, "sliding_layers": 5}


def _case(images: int, **settings) -> ImageTextCase:
    return ImageTextCase("gemma3", {"method": "full", "images": images, **settings}, WINDOW,
                         tower="gemma3")  # fmt: skip


def _layer_masks(images: int) -> list:
    """The attention_mask each of the text model's layers is called with, one step."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ftmem.measure.build import hf_config, image_inputs, model_from_config

    case = _case(images)
    arch, run = case.arch(), case.run()
    model = model_from_config(arch, hf_config(arch), torch.bfloat16).train()
    ids = torch.randint(1, 250, (run.batch_size, run.seq_len))
    inputs = image_inputs(arch, run, ids, 0, False)
    return masks_seen(model, model.model.language_model.layers, ids, **inputs)


def test_images_give_every_layer_a_boolean_mask():
    seen = _layer_masks(images=1)
    run = _case(1).run()
    assert len(seen) == WINDOW["num_layers"]
    for mask in seen:  # sliding and global layers alike
        assert mask is not None and str(mask.dtype) == "torch.bool"
        assert tuple(mask.shape) == (run.batch_size, 1, run.seq_len, run.seq_len)
    # the tokens of one image see each other both ways: not a causal pattern
    first, count = 1, _case(1).arch().vision.tokens_per_image
    assert bool(seen[-1][0, 0, first, first + count - 1])


def test_text_only_on_the_image_text_model_keeps_is_causal():
    """No image, no token_type_ids: the global layers get no mask (is_causal); the
    sliding layers' mask is transformers' own for sequences past the window
    (ops.attention.sliding_window_mask, tests/test_sliding_window_mask.py)."""
    seen = _layer_masks(images=0)
    assert seen[-1] is None  # layer 5, the global one (pattern 6)
    assert all(m is not None for m in seen[:-1])  # s = 80 > window 16


@pytest.mark.parametrize("precision", ["bf16-mixed", "fp32"])
def test_estimate_moves_by_the_hand_derivation(precision, monkeypatch):
    """The same image-text run with and without the mechanism (image_block_mask patched
    off): the activations differ, per layer, by the mask and the repeated keys and
    values; the loop holds token_type_ids, 8 bytes per token, beside the pixels."""
    import ftmem.ops.attention as attention
    from ftmem.vision_step import pixel_input

    case = _case(1, precision=precision)
    arch, run = case.arch(), case.run()
    e = 4 if precision == "fp32" else 2
    b, s = run.batch_size, run.seq_len
    T, q, kv = b * s, arch.q_size, arch.kv_size
    per_layer = b * s * s * e + 2 * T * q * e - 2 * T * kv * e
    parts = step_parts(arch, run)
    monkeypatch.setattr(attention, "image_block_mask", lambda arch, run: False)
    # without the image mask the 5 sliding layers still take the window's mask (80
    # tokens reach the window of 16: sliding_window_mask), so only the global one moves
    assert s >= arch.sliding_window
    assert parts.activations - step_parts(arch, run).activations == arch.full_layers * per_layer
    text_only = RunConfig(**{**run.model_dump(), "images": 0})
    pixels = pixel_input(arch, run, parts.plan.dtypes)
    assert pixel_input(arch, text_only, parts.plan.dtypes) == 0
    # the fp32 pixels (in fp32 a trained tower's convolution keeps them: counted with
    # the tower's saved items) and the int64 token_type_ids
    v = arch.vision
    loose_pixels = 0 if precision == "fp32" else b * 3 * v.image_size**2 * 4
    assert pixels == loose_pixels + T * 8


def test_only_gemma3_has_bidirectional_image_tokens():
    flagged = {f.name for f in by_model_type().values() if f.image_tokens_bidirectional}
    assert flagged == {"gemma3"}


@pytest.mark.parametrize(("changes", "types"), [({}, 1), (WINDOW, 2)], ids=["global", "both"])
def test_checkpointing_holds_one_mask_per_layer_type(changes, types):
    """By hand: a checkpointed layer's recompute reads the boolean mask of its own layer
    type, so the checkpoints hold as many b·s² masks as the stack has layer types (the
    tiny model's two global layers: one; five sliding and one global: two); the forward
    holds both masks either way (create_masks_for_vision_model builds both)."""
    from ftmem.ops.attention import Attention

    case = ImageTextCase("gemma3", {"method": "full", "grad_ckpt": True}, changes,
                         tower="gemma3")  # fmt: skip
    arch, run = case.arch(), case.run()
    mask = run.batch_size * run.seq_len**2
    assert Attention.held_layer_masks(arch, run) == types * mask
    assert Attention.layer_type_masks(arch, run, 2) == (2 - types) * mask
    plain = RunConfig(**{**run.model_dump(), "grad_ckpt": False})
    assert Attention.held_layer_masks(arch, plain) == 0
    assert Attention.layer_type_masks(arch, plain, 2) == 2 * mask
