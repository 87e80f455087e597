"""The vision tower and projector of LLaVA and Gemma 3, measured (CPU, tiny random-weight
models built by transformers from the same VisionTower): what their forward keeps for
backward when they train, and the frozen tower's forward moment.

The measured truth is PyTorch's: the saved tensors of every autograd node reachable from
the image features (measure.saved.walk_saved, each storage once, parameters excluded),
and the live-bytes tracker's peak during a frozen forward. Whole training steps of tiny
image-text models are accuracy cases (tests/accuracy/cases.py _image_text).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ftmem.vision import (  # noqa: E402
    VisionTower,
    frozen_forward,
)
from tests.accuracy.vision_measure import (  # noqa: E402
    estimated_saved,
    forward_moment,
    saved_bytes,
)

TEXT_HIDDEN = 64
IMAGES = 3


LLAVA = VisionTower(
    encoder="clip",
    hidden_size=32,
    intermediate_size=48,
    num_layers=3,
    num_heads=4,
    image_size=28,
    patch_size=7,
    projector="mlp",
    feature_layer=-2,
    drop_cls=True,
    tokens_per_image=16,
)
GEMMA3 = VisionTower(
    encoder="siglip",
    hidden_size=32,
    intermediate_size=48,
    num_layers=3,
    num_heads=4,
    image_size=28,
    patch_size=7,
    projector="pooled",
    tokens_per_image=4,
)


def build(v: VisionTower, attn: str, dtype):
    """The tiny image-text model transformers builds for ``v`` (a two-layer text model)."""
    t = transformers
    vision = dict(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
    )
    text = dict(
        vocab_size=320,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    if v.projector == "mlp":
        cfg = t.LlavaConfig(
            vision_config=t.CLIPVisionConfig(**vision),
            text_config=t.LlamaConfig(**text),
            image_token_id=300,
            vision_feature_layer=v.feature_layer,
        )
        model_class = t.LlavaForConditionalGeneration
    else:
        cfg = t.Gemma3Config(
            vision_config=t.SiglipVisionConfig(**vision, vision_use_head=False),
            text_config=t.Gemma3TextConfig(**text, head_dim=16),
            mm_tokens_per_image=v.tokens_per_image,
            image_token_index=300,
        )
        model_class = t.Gemma3ForConditionalGeneration
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return model_class(cfg).to(dtype).train()


def _features(model, pixels):
    out = model.model.get_image_features(pixel_values=pixels).pooler_output
    return torch.stack(list(out)) if isinstance(out, list | tuple) else out


def measured_saved(v: VisionTower, attn: str, dtype, tower_trains: bool) -> int:
    model = build(v, attn, dtype)
    model.model.vision_tower.requires_grad_(tower_trains)
    pixels = torch.randn(IMAGES, 3, v.image_size, v.image_size, dtype=dtype)
    features = _features(model, pixels)
    assert features.shape[:2] == (IMAGES, v.tokens_per_image)  # the image tokens
    return saved_bytes(model, features)


CASES = [
    pytest.param(v, attn, dtype, id=f"{name}-{attn}-{str(dtype)[6:]}")
    for name, v in (("llava", LLAVA), ("gemma3", GEMMA3))
    for attn in ("sdpa", "eager")
    for dtype in (torch.float32, torch.bfloat16)
]


@pytest.mark.accuracy
@pytest.mark.parametrize(("v", "attn", "dtype"), CASES)
def test_trained_tower_and_projector_saved(v, attn, dtype):
    e = torch.finfo(dtype).bits // 8
    measured = measured_saved(v, attn, dtype, tower_trains=True)
    estimated = estimated_saved(v, IMAGES, TEXT_HIDDEN, attn, e, tower_trains=True)
    assert abs(estimated - measured) / measured <= 0.03, (estimated, measured)


@pytest.mark.accuracy
@pytest.mark.parametrize(("v", "attn", "dtype"), CASES)
def test_frozen_tower_trained_projector_saved(v, attn, dtype):
    """Only the projector trains: the tower's forward keeps nothing (pixels need no
    gradient and its weights are frozen), the projector its inputs."""
    e = torch.finfo(dtype).bits // 8
    measured = measured_saved(v, attn, dtype, tower_trains=False)
    estimated = estimated_saved(v, IMAGES, TEXT_HIDDEN, attn, e, tower_trains=False)
    assert abs(estimated - measured) / measured <= 0.03, (estimated, measured)


def test_llava_builds_every_tower_layer_and_keeps_those_it_reads():
    """By hand: LLaVA's vision_feature_layer -2 reads the second to last layer's output;
    transformers builds and runs all three layers, the third's output is dropped."""
    assert LLAVA.layers_kept == 2 and GEMMA3.layers_kept == 3
    model = build(LLAVA, "sdpa", torch.float32)
    assert len(model.model.vision_tower.encoder.layers) == LLAVA.num_layers


@pytest.mark.accuracy
@pytest.mark.parametrize(
    ("v", "dtype"),
    [
        pytest.param(v, d, id=f"{n}-{str(d)[6:]}")
        for n, v in (("llava", LLAVA), ("gemma3", GEMMA3))
        for d in (torch.float32, torch.bfloat16)
    ],
)
def test_frozen_forward_moment(v, dtype):
    """The frozen tower's forward (sdpa, no gradient anywhere): the largest moment beyond
    the weights and pixels, against ftmem.vision.frozen_forward (5 %, a peak)."""
    model = build(v, "sdpa", dtype)
    model.requires_grad_(False)
    pixels = torch.randn(IMAGES, 3, v.image_size, v.image_size, dtype=dtype)
    measured = forward_moment(model, (pixels,), lambda: _features(model, pixels))
    estimated = frozen_forward(v, IMAGES, torch.finfo(dtype).bits // 8)
    assert abs(estimated - measured) / measured <= 0.05, (estimated, measured)


@pytest.mark.accuracy
@pytest.mark.parametrize("v", [LLAVA, GEMMA3], ids=["llava", "gemma3"])
def test_hooked_leaves_are_held_by_the_graph_and_saved_by_no_node(v):
    """Gradient checkpointing's enable_input_require_grads makes the frozen token
    embeddings' output and the frozen tower's patch embedding output leaves that require
    a gradient (ftmem.vision_step.graph_leaves): after the forward they are still alive
    (held by the graph, which the test does not keep them from), and no autograd node
    saves their storage (masked_scatter wrote the image features into a copy; CLIP's cat
    and SigLIP's position add copy the patches). Their bytes by hand: b · s · H + images ·
    patches · H_vision, in the compute dtype."""
    import weakref

    from ftmem.measure.saved import walk_saved, weight_storage_ptrs

    dtype, batch, seq = torch.bfloat16, 2, 3 * v.tokens_per_image
    model = build(v, "sdpa", dtype)
    model.requires_grad_(False)  # (the base frozen, as under LoRA)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    hooked = [model.get_input_embeddings(), model.model.vision_tower.get_input_embeddings()]
    leaves: list = []
    for module in hooked:  # after the library's hook, which made the output a leaf
        module.register_forward_hook(lambda m, i, out: leaves.append(weakref.ref(out)))
    ids = torch.full((batch, seq), 5)
    ids[:, 1 : 1 + v.tokens_per_image] = 300  # one image per sample
    pixels = torch.randn(batch, 3, v.image_size, v.image_size, dtype=dtype)
    loss = model(input_ids=ids, pixel_values=pixels).logits.float().mean()
    held = [ref() for ref in leaves]
    assert all(t is not None and t.is_leaf and t.requires_grad for t in held)
    saved = walk_saved(loss.grad_fn, weight_storage_ptrs(model))
    saved_ptrs = {s.ptr for s in saved}
    assert not {t.untyped_storage().data_ptr() for t in held} & saved_ptrs
    e = torch.finfo(dtype).bits // 8
    by_hand = batch * seq * TEXT_HIDDEN * e + batch * v.patches * v.hidden_size * e
    assert sum(t.untyped_storage().nbytes() for t in held) == by_hand
