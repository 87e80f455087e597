"""Mistral 3's vision tower (Pixtral) and projector (ftmem.vision dispatches here for the
``pixtral`` encoder): their parameters and the image tokens an image puts in the
sequence. Their forward with images is not modelled yet: ``--images`` is refused.

As transformers 5.24 builds them (models/pixtral/modeling_pixtral.py PixtralVisionModel,
models/mistral3/modeling_mistral3.py Mistral3MultiModalProjector), under
``model.vision_tower`` and ``model.multi_modal_projector``:

- a Conv2d patch embedding without bias and ``ln_pre`` (RMSNorm), then
  ``num_hidden_layers`` layers: ``attention_norm``, q/k/v/o_proj without biases (2-D
  rotary), ``ffn_norm`` and a SwiGLU ``feed_forward`` without biases;
- the projector: an RMSNorm over the vision width, the patch merger (each
  spatial_merge_size² neighbours unfolded into one row, ``merging_layer`` Linear(H·m², H)
  without bias), ``linear_1`` (H → text width), GELU, ``linear_2``, biases as
  ``multimodal_projector_bias`` says (False in Mistral-Small-3.1).

An image of the config's image_size is (image_size / patch / merge)² features; the
processor puts an [IMG_BREAK] after each row but the last, which ends with [IMG_END], so
its tokens in the sequence are rows × (columns + 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ftmem.vision import VisionParam, VisionTower

TOWER = "model.vision_tower."
PROJECTOR = "model.multi_modal_projector."


def tokens_per_image(image_size: int, patch_size: int, merge_size: int) -> int:
    side = image_size // patch_size // merge_size
    return side * (side + 1)


def tower_params(v: VisionTower) -> list[VisionParam]:
    from ftmem.vision import VisionParam

    H, I, C, P = v.hidden_size, v.intermediate_size, v.num_channels, v.patch_size
    out = [
        VisionParam(f"{TOWER}patch_conv.weight", (H, C, P, P)),
        VisionParam(f"{TOWER}ln_pre.weight", (H,)),
    ]
    for i in range(v.num_layers):
        layer = f"{TOWER}transformer.layers.{i}"
        out.append(VisionParam(f"{layer}.attention_norm.weight", (H,)))
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out.append(VisionParam(f"{layer}.attention.{proj}.weight", (H, H), linear=True))
        out.append(VisionParam(f"{layer}.ffn_norm.weight", (H,)))
        for proj in ("gate_proj", "up_proj"):
            out.append(VisionParam(f"{layer}.feed_forward.{proj}.weight", (I, H), linear=True))
        out.append(VisionParam(f"{layer}.feed_forward.down_proj.weight", (H, I), linear=True))
    return out


def projector_params(v: VisionTower, text_hidden: int) -> list[VisionParam]:
    from ftmem.vision import VisionParam

    H, T = v.hidden_size, text_hidden
    out = [
        VisionParam(f"{PROJECTOR}norm.weight", (H,)),
        VisionParam(
            f"{PROJECTOR}patch_merger.merging_layer.weight", (H, H * v.merge_size**2), linear=True
        ),
        VisionParam(f"{PROJECTOR}linear_1.weight", (T, H), linear=True),
    ]
    if v.projector_bias:
        out.append(VisionParam(f"{PROJECTOR}linear_1.bias", (T,)))
    out.append(VisionParam(f"{PROJECTOR}linear_2.weight", (T, T), linear=True))
    if v.projector_bias:
        out.append(VisionParam(f"{PROJECTOR}linear_2.bias", (T,)))
    return out
