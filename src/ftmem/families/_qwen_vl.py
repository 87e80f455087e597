"""Reading a Qwen2-VL / Qwen2.5-VL config.json: its language model (a Qwen2 decoder, the
keys flat beside ``vision_config`` as the Hub's configs are saved, or in ``text_config``
as transformers 5 saves them) and its vision tower (ftmem.vision_qwen), transformers'
defaults filling the keys a config leaves out."""

from __future__ import annotations

from typing import Any

from ftmem import limits
from ftmem.vision import VisionTower
from ftmem.vision_qwen import MAX_PIXELS, MIN_PIXELS, resized_side

# the language model's family for each outer model_type (Qwen2_5_VLTextModel and
# Qwen2VLTextModel are Qwen2's decoder with M-RoPE: q/k/v biases, untied by default)
QWEN_VL_TEXT = {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2"}

# transformers 5.24 Qwen2VLVisionConfig / Qwen2_5_VLVisionConfig defaults
# (configuration_qwen2_vl.py, configuration_qwen2_5_vl.py)
_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen2_vl": {
        "depth": 32,
        "embed_dim": 1280,
        "hidden_size": 3584,
        "hidden_act": "quick_gelu",
        "mlp_ratio": 4,
        "num_heads": 16,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "qwen2_5_vl": {
        "depth": 32,
        "hidden_size": 3584,
        "hidden_act": "silu",
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "out_hidden_size": 3584,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
}
_ACTIVATION = {"qwen2_vl": "quick_gelu", "qwen2_5_vl": "silu"}
# the vision_config keys the arithmetic reads as sizes
_COUNTS = (
    "depth",
    "embed_dim",
    "hidden_size",
    "intermediate_size",
    "mlp_ratio",
    "num_heads",
    "in_channels",
    "patch_size",
    "spatial_merge_size",
    "temporal_patch_size",
    "window_size",
    "out_hidden_size",
)
# The square image an estimate assumes when the run names no size: 448 × 448 pixels,
# 32 × 32 patches of 14, 256 image tokens (within the processors' resize bounds)
DEFAULT_IMAGE_SIDE = 448


def qwen_text_config(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The language model's config of a Qwen-VL config.json, as the qwen2 family reads it
    (Qwen2_5_VLConfig.__post_init__ moves a flat config's text keys to text_config)."""
    outer = cfg.get("model_type")
    if not isinstance(outer, str) or outer not in QWEN_VL_TEXT:
        return None
    nested = cfg.get("text_config")
    text = (
        dict(nested)
        if isinstance(nested, dict)
        else {k: v for k, v in cfg.items() if not k.endswith("_config")}
    )
    text["model_type"] = QWEN_VL_TEXT[str(outer)]
    text.setdefault("vocab_size", 152064)  # Qwen2_5_VLTextConfig's default
    return text


def read_qwen_vision(cfg: dict[str, Any], image_side: int = DEFAULT_IMAGE_SIDE) -> VisionTower:
    """The vision tower of a Qwen-VL config.json for square images of ``image_side``
    pixels (resized as the processor does)."""
    from ftmem.families._vision import UnmodelledVision, vision_keys

    outer = str(cfg["model_type"])
    vc = vision_keys(cfg, _DEFAULTS[outer], _COUNTS)
    if vc["hidden_act"] != _ACTIVATION[outer]:
        raise UnmodelledVision(
            f"its vision activation {str(vc['hidden_act'])[:40]!r} is not modelled"
        )
    text = qwen_text_config(cfg) or {}
    if outer == "qwen2_5_vl" and vc["out_hidden_size"] != text.get("hidden_size", 8192):
        raise UnmodelledVision("its vision out_hidden_size differs from the text hidden_size")
    width = vc["embed_dim"] if outer == "qwen2_vl" else vc["hidden_size"]
    inter = width * vc["mlp_ratio"] if outer == "qwen2_vl" else vc["intermediate_size"]
    patch, merge = vc["patch_size"], vc["spatial_merge_size"]
    for name, n, bound in (
        ("patch_size", patch, limits.PIXELS),
        ("spatial_merge_size", merge, limits.WIDTH),
    ):
        problem = bound.problem(name, n) if n > 0 else f"{name} must be positive"
        if problem:
            raise UnmodelledVision(problem)
    side = resized_side(image_side, patch, merge, MIN_PIXELS, MAX_PIXELS)
    return VisionTower(
        encoder=outer,
        hidden_size=width,
        intermediate_size=int(inter),
        num_layers=vc["depth"],
        num_heads=vc["num_heads"],
        image_size=side,
        patch_size=patch,
        num_channels=vc["in_channels"],
        projector="merger",
        tokens_per_image=(side // patch) ** 2 // merge**2,
        merge_size=merge,
        temporal_patch=vc["temporal_patch_size"],
        window_size=vc.get("window_size", 0) if outer == "qwen2_5_vl" else 0,
        full_attention_layers=tuple(vc.get("fullatt_block_indexes", ())),
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
    )
