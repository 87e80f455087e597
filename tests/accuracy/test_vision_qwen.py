"""Qwen2-VL's and Qwen2.5-VL's vision tower and patch merger, measured (CPU, tiny
random-weight models transformers builds from the same VisionTower): what they keep for
backward when they train, and the frozen tower's forward moment. The measured truth is
PyTorch's, as in tests/accuracy/test_vision.py: every autograd node's saved tensors
reachable from the image features (each storage once, parameters excluded), and the
live-bytes tracker's peak during a frozen forward.

The tiny Qwen2.5-VL has windows of 2 × 2 merge units over 3 × 3 units per image, so
its windowed layers attend in chunks of 16, 8, 8 and 4 tokens (the last row and column
cut short), and one full-attention layer.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ftmem.vision import (  # noqa: E402
    VisionTower,
    frozen_forward,
    projector_parts,
    tower_parts,
)
from ftmem.vision_qwen import window_lengths  # noqa: E402
from tests.accuracy.vision_measure import (  # noqa: E402
    cpu_ln,
    estimated_saved,
    forward_moment,
    saved_bytes,
)

TEXT_HIDDEN = 64
IMAGES = 2


_COMMON = dict(
    hidden_size=32,
    num_layers=3,
    num_heads=4,
    image_size=42,  # 6 × 6 patches of 7, 3 × 3 merge units
    patch_size=7,
    projector="merger",
    tokens_per_image=9,
    merge_size=2,
    temporal_patch=2,
)
QWEN25 = VisionTower(
    encoder="qwen2_5_vl",
    intermediate_size=48,
    window_size=28,
    full_attention_layers=(1,),
    **_COMMON,
)
QWEN2 = VisionTower(encoder="qwen2_vl", intermediate_size=128, **_COMMON)  # mlp_ratio 4


def build(v: VisionTower, attn: str, dtype):
    """The tiny Qwen-VL model transformers builds for ``v`` (a two-layer text model)."""
    t = transformers
    text = dict(
        vocab_size=320,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
    )
    vision: dict = dict(
        depth=v.num_layers,
        num_heads=v.num_heads,
        patch_size=v.patch_size,
        spatial_merge_size=v.merge_size,
        temporal_patch_size=v.temporal_patch,
    )
    if v.encoder == "qwen2_5_vl":
        vision |= dict(
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            out_hidden_size=TEXT_HIDDEN,
            window_size=v.window_size,
            fullatt_block_indexes=list(v.full_attention_layers),
        )
        cfg = t.Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=300)
        model_class = t.Qwen2_5_VLForConditionalGeneration
    else:
        vision |= dict(embed_dim=v.hidden_size, hidden_size=TEXT_HIDDEN, mlp_ratio=4)
        cfg = t.Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=300)
        model_class = t.Qwen2VLForConditionalGeneration
    cfg._attn_implementation = attn
    cfg.vision_config._attn_implementation = attn
    torch.manual_seed(0)
    return model_class(cfg).to(dtype).train()


def pixels(v: VisionTower, dtype):
    """pixel_values and image_grid_thw as Qwen's processor returns them: one row of
    C × T × P² per patch, a grid of 1 × h × w patches per image."""
    side = v.image_size // v.patch_size
    row = v.num_channels * v.temporal_patch * v.patch_size**2
    values = torch.randn(IMAGES * side * side, row, dtype=dtype)
    grid = torch.tensor([[1, side, side]] * IMAGES)
    return values, grid


def _features(model, v, dtype):
    values, grid = pixels(v, dtype)
    out = model.model.get_image_features(pixel_values=values, image_grid_thw=grid).pooler_output
    return torch.cat(list(out))


def measured_saved(v: VisionTower, attn: str, dtype, tower_trains: bool) -> int:
    model = build(v, attn, dtype)
    model.model.visual.requires_grad_(tower_trains)
    model.model.visual.merger.requires_grad_(True)
    features = _features(model, v, dtype)
    assert features.shape == (IMAGES * v.tokens_per_image, TEXT_HIDDEN)  # the image tokens
    return saved_bytes(model, features)


CASES = [
    pytest.param(v, attn, dtype, id=f"{name}-{attn}-{str(dtype)[6:]}")
    for name, v in (("qwen2.5-vl", QWEN25), ("qwen2-vl", QWEN2))
    for attn in ("sdpa", "eager")
    for dtype in (torch.float32, torch.bfloat16)
]


def test_window_lengths_by_hand():
    """3 × 3 merge units, windows of 2 × 2: 4, 2, 2 and 1 units of 4 patches each."""
    assert window_lengths(QWEN25) == [16, 8, 8, 4]
    assert QWEN25.patches == 36 and QWEN25.tokens_per_image == 36 // 4


@pytest.mark.accuracy
@pytest.mark.parametrize(("v", "attn", "dtype"), CASES)
def test_trained_tower_and_merger_saved(v, attn, dtype):
    e = torch.finfo(dtype).bits // 8
    measured = measured_saved(v, attn, dtype, tower_trains=True)
    estimated = estimated_saved(v, IMAGES, TEXT_HIDDEN, attn, e, tower_trains=True)
    assert abs(estimated - measured) / measured <= 0.03, (estimated, measured)


@pytest.mark.accuracy
@pytest.mark.parametrize(("v", "attn", "dtype"), CASES)
def test_frozen_tower_trained_merger_saved(v, attn, dtype):
    e = torch.finfo(dtype).bits // 8
    measured = measured_saved(v, attn, dtype, tower_trains=False)
    estimated = estimated_saved(v, IMAGES, TEXT_HIDDEN, attn, e, tower_trains=False)
    assert abs(estimated - measured) / measured <= 0.03, (estimated, measured)


@pytest.mark.accuracy
@pytest.mark.parametrize(
    ("v", "dtype"),
    [
        pytest.param(v, d, id=f"{n}-{str(d)[6:]}")
        for n, v in (("qwen2.5-vl", QWEN25), ("qwen2-vl", QWEN2))
        for d in (torch.float32, torch.bfloat16)
    ],
)
def test_frozen_forward_moment(v, dtype):
    """The frozen tower's forward (sdpa, no gradient anywhere): its largest moment beyond
    the weights and pixels, against ftmem.vision.frozen_forward (5 %, a peak)."""
    model = build(v, "sdpa", dtype)
    model.requires_grad_(False)
    values, grid = pixels(v, dtype)
    measured = forward_moment(
        model,
        (values, grid),
        lambda: model.model.get_image_features(pixel_values=values, image_grid_thw=grid),
    )
    estimated = frozen_forward(v, IMAGES, torch.finfo(dtype).bits // 8)
    assert abs(estimated - measured) / measured <= 0.05, (estimated, measured)


@pytest.mark.accuracy
@pytest.mark.parametrize(
    ("v", "dtype"),
    [
        pytest.param(v, d, id=f"{n}-{str(d)[6:]}")
        for n, v in (("qwen2.5-vl", QWEN25), ("qwen2-vl", QWEN2))
        for d in (torch.float32, torch.bfloat16)
    ],
)
def test_checkpointed_tower_saved(v, dtype):
    """Checkpointed blocks (non-reentrant, as the step measures them): what the saved
    tensor hooks see is each block's input, the pixels, the window index and the merger's;
    cos and sin reach the blocks inside a tuple and are saved by no node."""
    import gc

    from ftmem.measure.saved import SavedRegistry, walk_saved, weight_storage_ptrs

    model = build(v, "sdpa", dtype)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    ptrs = weight_storage_ptrs(model)
    registry = SavedRegistry(ptrs)
    gc.disable()
    try:
        with torch.autograd.graph.saved_tensors_hooks(registry.pack, registry.unpack):
            features = _features(model, v, dtype)
        ctx = walk_saved(features.grad_fn, ptrs, unpack=False)
        measured = registry.nbytes + sum(
            s.nbytes for s in ctx if s.nbytes and s.ptr not in registry.live
        )
    finally:
        gc.enable()
    e = torch.finfo(dtype).bits // 8
    estimated = sum(tower_parts(v, IMAGES, e, checkpointed=True, ln_stats=cpu_ln(e))) + sum(
        projector_parts(v, TEXT_HIDDEN, IMAGES, e, ln_stats=cpu_ln(e))
    )
    assert abs(estimated - measured) / measured <= 0.03, (estimated, measured)
