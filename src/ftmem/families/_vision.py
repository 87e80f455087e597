"""Reading an image-text config.json's vision tower and projector (LLaVA, Gemma 3) into
a :class:`ftmem.vision.VisionTower`, with transformers' defaults where the published
configs leave keys out; and the text_config defaults their outer classes apply."""

from __future__ import annotations

from typing import Any

from ftmem.vision import Encoder, VisionTower

# The vision configs' defaults where a published config.json leaves keys out
# (transformers 5.24 CLIPVisionConfig, SiglipVisionConfig): transformers fills them so.
_ENCODER_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip_vision_model": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 32,
        "num_channels": 3,
        "hidden_act": "quick_gelu",
    },
    # Mistral3Config's vision_config defaults (configuration_mistral3.py, Pixtral at 1540)
    "pixtral": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 1540,
        "patch_size": 14,
        "num_channels": 3,
        "hidden_act": "gelu",
    },
    "siglip_vision_model": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 16,
        "num_channels": 3,
        "hidden_act": "gelu_pytorch_tanh",
        "vision_use_head": True,
    },
}
# The outer config's own defaults (LlavaConfig, Gemma3Config): LlavaConfig's vision_config,
# when absent, is CLIP ViT-L/14 at 336 (configuration_llava.py); Gemma3Config's is
# SiglipVisionConfig() (configuration_gemma3.py).
_OUTER: dict[str, dict[str, Any]] = {
    "llava": {
        "encoder": "clip_vision_model",
        "vision_config": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 336,
            "patch_size": 14,
        },
    },
    "gemma3": {"encoder": "siglip_vision_model", "vision_config": {}},
    "mistral3": {"encoder": "pixtral", "vision_config": {}},
}
# the vision_config keys the arithmetic reads as sizes
_COUNTS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "image_size",
    "patch_size",
    "num_channels",
)
# what each encoder's activation is in transformers (the saved sizes depend on it)
_ACTIVATION = {"clip_vision_model": "quick_gelu", "siglip_vision_model": "gelu_pytorch_tanh"}


class UnmodelledVision(ValueError):
    """A vision config this module does not model (the caller says so in one sentence)."""


def vision_keys(cfg: dict[str, Any], defaults: dict[str, Any], counts: tuple[str, ...]) -> dict:
    """``vision_config`` over the defaults, the counts the arithmetic reads checked to be
    integers first (a string or a float there is a broken file, not a size)."""
    given = cfg.get("vision_config", {})
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise UnmodelledVision("its vision_config must be an object of keys")
    vc = {**defaults, **{k: v for k, v in given.items() if v is not None}}
    for key in counts:
        value = vc.get(key)
        if key in vc and (not isinstance(value, int) or isinstance(value, bool)):
            raise UnmodelledVision(f"its vision_config's {key} must be an integer")
    return vc


def vision_model_types() -> tuple[str, ...]:
    from ftmem.families._qwen_vl import QWEN_VL_TEXT

    return (*_OUTER, "mllama", *QWEN_VL_TEXT)


def read_vision(cfg: dict[str, Any]) -> VisionTower | None:
    """The vision tower of an image-text config.json (LLaVA, Gemma 3), transformers'
    defaults filling the keys it leaves out; None for a config without one modelled.
    Raises UnmodelledVision where a modelled family sets something not modelled."""
    from ftmem.families._qwen_vl import QWEN_VL_TEXT, read_qwen_vision

    outer = cfg.get("model_type")
    if not isinstance(outer, str):
        return None  # the family reader names the wrong type
    if outer == "mllama":
        from ftmem.families._mllama import UnmodelledMllama, read_mllama

        try:
            return read_mllama(cfg)
        except UnmodelledMllama as exc:
            raise UnmodelledVision(f"{exc} is not modelled") from None
    if outer in QWEN_VL_TEXT:
        return read_qwen_vision(cfg)
    if outer not in _OUTER:
        return None
    given = cfg.get("vision_config")
    given = given if isinstance(given, dict) else {}  # (vision_keys refuses a non-object)
    encoder = given.get("model_type") or _OUTER[outer]["encoder"]
    if not isinstance(encoder, str):
        raise UnmodelledVision("its vision_config's model_type is not a name")
    if encoder not in _ENCODER_DEFAULTS:
        raise UnmodelledVision(f"its vision encoder {encoder[:40]!r} is not modelled")
    base = dict(_ENCODER_DEFAULTS[encoder])
    base.update(_OUTER[outer]["vision_config"])
    vc = vision_keys(cfg, base, _COUNTS)
    if outer == "mistral3":
        return _mistral3(cfg, vc)
    if vc["hidden_act"] != _ACTIVATION[encoder]:
        raise UnmodelledVision(
            f"its vision activation {str(vc['hidden_act'])[:40]!r} is not modelled"
        )
    if vc.get("vision_use_head"):
        raise UnmodelledVision("its SigLIP pooling head (vision_use_head) is not modelled")
    kind: Encoder = "clip" if encoder == "clip_vision_model" else "siglip"
    common: dict[str, Any] = {
        "encoder": kind,
        "hidden_size": vc["hidden_size"],
        "intermediate_size": vc["intermediate_size"],
        "num_layers": vc["num_hidden_layers"],
        "num_heads": vc["num_attention_heads"],
        "image_size": vc["image_size"],
        "patch_size": vc["patch_size"],
        "num_channels": vc["num_channels"],
    }
    if outer == "llava":
        layer = cfg.get("vision_feature_layer", -2)
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise UnmodelledVision("a list of vision_feature_layer is not modelled")
        strategy = cfg.get("vision_feature_select_strategy", "default")
        if cfg.get("projector_hidden_act", "gelu") != "gelu":
            raise UnmodelledVision("its projector activation is not modelled")
        patches = (int(vc["image_size"]) // int(vc["patch_size"])) ** 2
        return VisionTower(
            **common,
            projector="mlp",
            projector_bias=cfg.get("multimodal_projector_bias", True),
            feature_layer=layer,
            drop_cls=strategy == "default",
            tokens_per_image=patches if strategy == "default" else patches + 1,
        )
    return VisionTower(
        **common,
        projector="pooled",
        tokens_per_image=int(cfg.get("mm_tokens_per_image", 256)),
    )


def _mistral3(cfg: dict[str, Any], vc: dict[str, Any]) -> VisionTower:
    """Mistral 3's Pixtral tower and projector (ftmem.vision_pixtral): counted; the
    projector reads the last layer (a list of vision_feature_layer widens linear_1)."""
    from ftmem.vision_pixtral import tokens_per_image

    if cfg.get("vision_feature_layer", -1) != -1:
        raise UnmodelledVision("a vision_feature_layer other than -1 is not modelled")
    if vc.get("head_dim") not in (None, vc["hidden_size"] // vc["num_attention_heads"]):
        raise UnmodelledVision("a Pixtral head_dim other than hidden / heads is not modelled")
    merge = int(cfg.get("spatial_merge_size", 2))
    return VisionTower(
        encoder="pixtral",
        hidden_size=vc["hidden_size"],
        intermediate_size=vc["intermediate_size"],
        num_layers=vc["num_hidden_layers"],
        num_heads=vc["num_attention_heads"],
        image_size=vc["image_size"],
        patch_size=vc["patch_size"],
        num_channels=vc["num_channels"],
        projector="mistral3",
        projector_bias=bool(cfg.get("multimodal_projector_bias", False)),
        merge_size=merge,
        tokens_per_image=tokens_per_image(vc["image_size"], vc["patch_size"], merge),
    )


# LlavaConfig builds its text_config from the given keys over the text class's defaults
# (transformers 5.24 configuration_llava.py: CONFIG_MAPPING[model_type](**text_config));
# llava-hf/llava-1.5-7b-hf gives only vocab_size, max_position_embeddings and
# rms_norm_eps, the rest are LlamaConfig's defaults (configuration_llama.py).
_TEXT_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("llava", "llama"): {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "max_position_embeddings": 2048,
    },
}


def text_defaults(outer: str, text_type: str) -> dict[str, Any]:
    """The keys an image-text config's class fills in its text_config."""
    return _TEXT_DEFAULTS.get((outer, text_type), {})


# The text_config class an image-text config builds when its text_config names no
# model_type (transformers 5.24: configuration_llava.py and configuration_mistral3.py
# SubConfigSpec(AutoConfig, model_type="llama" / "mistral"); configuration_gemma3.py and
# configuration_mllama.py always build Gemma3TextConfig / MllamaTextConfig)
TEXT_MODEL_TYPE = {
    "llava": "llama",
    "mistral3": "mistral",
    "gemma3": "gemma3_text",
    "mllama": "mllama_text_model",
}
