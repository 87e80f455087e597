"""Reading Llama-3.2-Vision's config.json (``model_type: mllama``) into a
:class:`ftmem.vision.VisionTower` carrying :class:`ftmem.mllama.MllamaParts`, with
transformers' defaults where the published configs leave keys out."""

from __future__ import annotations

from typing import Any

from ftmem.families.mllama import TEXT_DEFAULTS, cross_layers
from ftmem.mllama import MllamaParts
from ftmem.vision import VisionTower

# MllamaVisionConfig's defaults (transformers 5.24 models/mllama/configuration_mllama.py;
# image_size 448 there, 560 in both published checkpoints' config.json)
VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 1280,
    "hidden_act": "gelu",
    "num_hidden_layers": 32,
    "num_global_layers": 8,
    "attention_heads": 16,
    "num_channels": 3,
    "intermediate_size": 5120,
    "vision_output_dim": 7680,
    "image_size": 448,
    "patch_size": 14,
    "max_num_tiles": 4,
    "intermediate_layers_indices": [3, 7, 15, 23, 30],
    "supported_aspect_ratios": [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]],
}


class UnmodelledMllama(ValueError):
    """A Llama-3.2-Vision config this module does not model."""


def read_mllama(cfg: dict[str, Any]) -> VisionTower:
    """The tiled vision model, projector and cross-attention layers of an mllama
    config.json (its text_config's keys over MllamaTextConfig's defaults)."""
    given = cfg.get("vision_config")
    given = given if isinstance(given, dict) else {}
    vc = {**VISION_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    if vc["hidden_act"] != "gelu":
        raise UnmodelledMllama(f"its vision activation {str(vc['hidden_act'])[:40]!r}")
    text = cfg.get("text_config")
    text = text if isinstance(text, dict) else {}
    tc = {**TEXT_DEFAULTS, **{k: v for k, v in text.items() if v is not None}}
    ratios = vc["supported_aspect_ratios"]
    indices = vc["intermediate_layers_indices"]
    if not isinstance(ratios, list) or not isinstance(indices, list):
        raise UnmodelledMllama("supported_aspect_ratios and intermediate_layers_indices as lists")
    if vc["vision_output_dim"] != vc["hidden_size"] * (1 + len(indices)):
        # the vision model concatenates its last state and the listed layers' outputs,
        # which the projector (built vision_output_dim wide) must read: transformers
        # builds such a model and fails in its first forward
        raise UnmodelledMllama("a vision_output_dim other than hidden_size × (1 + indices)")
    heads, hidden = int(tc["num_attention_heads"]), int(tc["hidden_size"])
    parts = MllamaParts(
        global_layers=vc["num_global_layers"],
        max_num_tiles=vc["max_num_tiles"],
        aspect_ratios=len(ratios),
        intermediate_layers=tuple(indices),
        output_dim=vc["vision_output_dim"],
        cross_layers=cross_layers(tc),
        text_heads=heads,
        text_kv_heads=int(tc.get("num_key_value_heads") or heads),
        # MllamaTextCrossAttention: head_dim = hidden_size // num_heads
        text_head_dim=hidden // heads,
        text_intermediate=tc["intermediate_size"],
    )
    return VisionTower(
        encoder="tiled",
        hidden_size=vc["hidden_size"],
        intermediate_size=vc["intermediate_size"],
        num_layers=vc["num_hidden_layers"],
        num_heads=vc["attention_heads"],
        image_size=vc["image_size"],
        patch_size=vc["patch_size"],
        num_channels=vc["num_channels"],
        projector="linear",
        projector_bias=True,
        # one <|image|> token per image in the text; the image reaches the text model
        # through the cross-attention layers' keys and values, not the sequence
        tokens_per_image=1,
        mllama=parts,
    )
