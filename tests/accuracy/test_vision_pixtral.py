"""Mistral 3's Pixtral tower and projector, measured (CPU, a tiny random-weight
Mistral3ForConditionalGeneration transformers builds from the same VisionTower): what they
keep for backward when they train, and the frozen tower's forward moment. The measured
truth is PyTorch's, as in tests/accuracy/test_vision_qwen.py: every autograd node's saved
tensors reachable from the image features (each storage once, parameters excluded), and
the live-bytes tracker's peak during a frozen forward. Under gradient checkpointing
(non-reentrant, as the measured steps run it) the saved tensors are those the saved-tensor
hooks pack (unpacking would recompute), and the tower's backward is the tracker's peak
over what the forward left alive.

Two images of 8 × 8 patches (56 / 7) go through the tower as ONE sequence of 128
patches with a 128 × 128 block-diagonal mask; merged 2 × 2 they are 16 features each.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ftmem.vision import (  # noqa: E402
    VisionTower,
    frozen_forward,
    projector_input_grad_parts,
    projector_parts,
    tower_parts,
)
from ftmem.vision_pixtral import (  # noqa: E402
    features_per_image,
    layer_backward,
    tokens_per_image,
)
from tests.accuracy.vision_measure import (  # noqa: E402
    cpu_ln,
    estimated_saved,
    forward_moment,
    saved_bytes,
)

TEXT_HIDDEN = 64
IMAGES = 2


PIXTRAL = VisionTower(
    encoder="pixtral",
    hidden_size=32,
    intermediate_size=48,
    num_layers=3,
    num_heads=4,
    image_size=56,
    patch_size=7,
    projector="mistral3",
    projector_bias=False,
    merge_size=2,
    tokens_per_image=tokens_per_image(56, 7, 2),
)


def build(v: VisionTower, attn: str, dtype, intermediate: int | None = None):
    """The tiny Mistral 3 transformers builds for ``v`` (a two-layer text model)."""
    text = dict(
        vocab_size=320,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )
    vision = dict(
        hidden_size=v.hidden_size,
        intermediate_size=intermediate or v.intermediate_size,
        num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads,
        head_dim=v.hidden_size // v.num_heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
        hidden_act="silu",  # (Mistral-Small-3.1's; GELU keeps the same tensor)
    )
    cfg = transformers.Mistral3Config(
        text_config=text,
        vision_config=vision,
        image_token_index=300,
        spatial_merge_size=v.merge_size,
        vision_feature_layer=-1,
        multimodal_projector_bias=v.projector_bias,
    )
    cfg._attn_implementation = attn
    cfg.vision_config._attn_implementation = attn
    torch.manual_seed(0)
    return transformers.Mistral3ForConditionalGeneration(cfg).to(dtype).train()


def pixels(v: VisionTower):
    """pixel_values (fp32, as the processor returns them) and each image's (h, w)."""
    values = torch.randn(IMAGES, v.num_channels, v.image_size, v.image_size)
    return values, torch.tensor([[v.image_size, v.image_size]] * IMAGES)


def measured_saved(v: VisionTower, attn: str, dtype, tower_trains: bool) -> int:
    model = build(v, attn, dtype)
    model.model.vision_tower.requires_grad_(tower_trains)
    model.model.multi_modal_projector.requires_grad_(True)
    values, sizes = pixels(v)
    out = model.model.get_image_features(pixel_values=values, image_sizes=sizes).pooler_output
    features = torch.cat(list(out))
    assert features.shape == (IMAGES * features_per_image(v), TEXT_HIDDEN)
    return saved_bytes(model, features)


CASES = [
    pytest.param(attn, dtype, id=f"{attn}-{str(dtype)[6:]}")
    for attn in ("sdpa", "eager")
    for dtype in (torch.float32, torch.bfloat16)
]


def test_tokens_by_hand():
    """8 × 8 patches merged 2 × 2: 4 rows of 4 [IMG], each row closed by [IMG_BREAK] (the
    last by [IMG_END]): 16 features, 20 tokens."""
    assert features_per_image(PIXTRAL) == 16 and PIXTRAL.tokens_per_image == 20


def test_mask_by_hand():
    """The sdpa mask over both images' 128 patches: 128² bf16 = 32 KiB, in the trained
    tower's saved bytes once (every layer's node holds the same tensor)."""
    from ftmem.vision_pixtral import mask_bytes

    assert mask_bytes(PIXTRAL, IMAGES, 2) == 128 * 128 * 2


@pytest.mark.accuracy
@pytest.mark.parametrize(("attn", "dtype"), CASES)
def test_trained_tower_and_projector_saved(attn, dtype):
    e = torch.finfo(dtype).bits // 8
    measured = measured_saved(PIXTRAL, attn, dtype, tower_trains=True)
    estimated = estimated_saved(PIXTRAL, IMAGES, TEXT_HIDDEN, attn, e, tower_trains=True)
    assert abs(estimated - measured) / measured <= 0.03, (estimated, measured)


@pytest.mark.accuracy
@pytest.mark.parametrize(("attn", "dtype"), CASES)
def test_frozen_tower_trained_projector_saved(attn, dtype):
    e = torch.finfo(dtype).bits // 8
    measured = measured_saved(PIXTRAL, attn, dtype, tower_trains=False)
    estimated = estimated_saved(PIXTRAL, IMAGES, TEXT_HIDDEN, attn, e, tower_trains=False)
    assert abs(estimated - measured) / measured <= 0.03, (estimated, measured)


@pytest.mark.accuracy
@pytest.mark.parametrize(
    ("intermediate", "dtype"),
    [
        pytest.param(i, d, id=f"I{i}-{str(d)[6:]}")
        for i in (48, 192)  # attention's moment, then the feed-forward's
        for d in (torch.float32, torch.bfloat16)
    ],
)
def test_frozen_forward_moment(intermediate, dtype):
    """The frozen tower's forward (sdpa, no gradient anywhere): its largest moment beyond
    the weights and pixels, against ftmem.vision.frozen_forward (5 %, a peak)."""
    v = PIXTRAL.model_copy(update={"intermediate_size": intermediate})
    model = build(v, "sdpa", dtype)
    model.requires_grad_(False)
    values, sizes = pixels(v)
    measured = forward_moment(
        model,
        (values, sizes),
        lambda: model.model.get_image_features(pixel_values=values, image_sizes=sizes),
    )
    estimated = frozen_forward(v, IMAGES, torch.finfo(dtype).bits // 8)
    assert abs(estimated - measured) / measured <= 0.05, (estimated, measured)


def checkpointed(v: VisionTower, attn: str, dtype, tower_trains: bool, projector_trains: bool):
    """The tiny model with gradient checkpointing; a frozen tower hooked by
    enable_input_require_grads, as transformers' gradient_checkpointing_enable and peft do."""
    model = build(v, attn, dtype)
    model.requires_grad_(False)
    model.model.vision_tower.requires_grad_(tower_trains)
    model.model.multi_modal_projector.requires_grad_(projector_trains)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not tower_trains:
        model.enable_input_require_grads()
    return model


CHECKPOINTED = [
    pytest.param(attn, dtype, tower, projector, id=f"{attn}-{str(dtype)[6:]}-{name}")
    for attn in ("sdpa", "eager")
    for dtype in (torch.float32, torch.bfloat16)
    for tower, projector, name in (
        (True, True, "trained"),
        (False, False, "hooked"),
        (False, True, "hooked-projector"),
    )
]


@pytest.mark.accuracy
@pytest.mark.parametrize(("attn", "dtype", "tower", "projector"), CHECKPOINTED)
def test_checkpointed_tower_saved(attn, dtype, tower, projector):
    """Checkpointed layers keep their input and the one mask (positional arguments of the
    checkpoint); a hooked frozen tower and projector keep what input gradients need."""
    from ftmem.measure.saved import SavedRegistry, weight_storage_ptrs

    model = checkpointed(PIXTRAL, attn, dtype, tower, projector)
    values, sizes = pixels(PIXTRAL)
    registry = SavedRegistry(weight_storage_ptrs(model))
    with torch.autograd.graph.saved_tensors_hooks(registry.pack, registry.unpack):
        out = model.model.get_image_features(pixel_values=values, image_sizes=sizes)
    assert torch.cat(list(out.pooler_output)).requires_grad
    e = torch.finfo(dtype).bits // 8
    estimated = sum(
        tower_parts(PIXTRAL, IMAGES, e, attn == "eager", True, weights=tower, ln_stats=cpu_ln(e))
    )
    if projector:
        estimated += sum(
            projector_parts(PIXTRAL, TEXT_HIDDEN, IMAGES, e, tower_trains=True, ln_stats=cpu_ln(e))
        )
    else:
        estimated += sum(
            projector_input_grad_parts(PIXTRAL, TEXT_HIDDEN, IMAGES, e, ln_stats=cpu_ln(e))
        )
    assert abs(estimated - registry.nbytes) / registry.nbytes <= 0.03, (estimated, registry.nbytes)


@pytest.mark.accuracy
@pytest.mark.parametrize(
    ("attn", "dtype", "intermediate"),
    [
        pytest.param(a, d, i, id=f"{a}-{str(d)[6:]}-I{i}")
        for a, d, i in (
            ("sdpa", torch.float32, 48),
            ("sdpa", torch.bfloat16, 48),
            ("sdpa", torch.bfloat16, 192),
            ("eager", torch.float32, 48),
            ("eager", torch.bfloat16, 48),
        )
    ],
)
def test_checkpointed_layer_backward(attn, dtype, intermediate):
    """A hooked frozen tower's backward (no weight gradients to tell apart): the peak over
    what its forward left alive is one layer's recompute and gradients (5 %, a peak)."""
    from ftmem.measure.tracker import LiveBytesTracker

    v = PIXTRAL.model_copy(update={"intermediate_size": intermediate})
    model = checkpointed(v, attn, dtype, tower_trains=False, projector_trains=False)
    values, sizes = pixels(v)
    tracker = LiveBytesTracker()
    tracker.track(list(model.parameters()), list(model.buffers()), values, sizes)
    with tracker:
        out = model.model.get_image_features(pixel_values=values, image_sizes=sizes)
        features = torch.cat(list(out.pooler_output))
        del out
        grad = torch.ones_like(features)
        before = tracker.current
        tracker.reset_peak()
        features.backward(grad)
        measured = tracker.peak - before
    estimated = layer_backward(v, IMAGES, torch.finfo(dtype).bits // 8, attn == "eager", False)
    assert abs(estimated - measured) / measured <= 0.05, (estimated, measured)
