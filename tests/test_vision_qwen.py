"""Qwen2-VL and Qwen2.5-VL (ftmem.vision_qwen): parameter counts against transformers on
the meta device for the published configs (flat, as the Hub saves them), the image
tokens of an image, and the published count of Qwen2.5-VL-7B-Instruct. What the tower
and merger keep is measured in tests/accuracy/test_vision_qwen.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftmem.api import estimate
from ftmem.arch import count_params
from ftmem.presets import get_model
from ftmem.sources import architecture_from_config
from ftmem.vision import projector_count, tower_count
from ftmem.vision_qwen import smart_resize
from tests.meta_counts import counted, image_text_params

FIXTURES = Path(__file__).parent / "fixtures" / "multimodal"
# preset id -> the Hub config.json fixture (Qwen/<name>/config.json)
CONFIGS = {
    "qwen2.5-vl-3b": "Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen2.5-VL-7B-Instruct",
    "qwen2.5-vl-32b": "Qwen2.5-VL-32B-Instruct",
    "qwen2.5-vl-72b": "Qwen2.5-VL-72B-Instruct",
    "qwen2-vl-2b": "Qwen2-VL-2B-Instruct",
    "qwen2-vl-7b": "Qwen2-VL-7B-Instruct",
}


def _config(name: str) -> dict:
    return json.loads((FIXTURES / f"{CONFIGS[name]}.json").read_text())


def _transformers_counts(cfg: dict) -> tuple[int, int, int]:
    """(all, vision tower without the merger, merger) of the model transformers builds."""
    params = image_text_params(cfg)
    merger = counted(params, ".visual.merger.")
    return counted(params), counted(params, ".visual.") - merger, merger


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_counts_equal_transformers(name):
    cfg = _config(name)
    arch = architecture_from_config(cfg, name, "test")
    total, tower, merger = _transformers_counts(cfg)
    assert arch.vision is not None
    assert tower_count(arch.vision) == tower
    assert projector_count(arch.vision, arch.hidden_size) == merger
    assert count_params(arch) == total
    assert count_params(get_model(name)) == total  # the preset describes the same model
    assert get_model(name).vision == arch.vision


def test_published_count():
    """Qwen/Qwen2.5-VL-7B-Instruct's safetensors hold 8,292,166,656 parameters."""
    assert count_params(get_model("Qwen/Qwen2.5-VL-7B-Instruct")) == 8_292_166_656


def test_tokens_per_image_by_hand():
    """448 × 448 pixels: 32 × 32 patches of 14, merged 2 × 2: 256 tokens. The processor's
    resize: sides to multiples of 28, the area capped at 28² × 1280 pixels."""
    v = get_model("qwen2.5-vl-7b").vision
    assert v is not None
    assert (v.patches, v.tokens_per_image) == (1024, 256)
    # 500 / 28 = 17.9, rounded to 18 × 28 = 504; 504² is within the bounds
    assert smart_resize(500, 500, 28, 56 * 56, 28 * 28 * 1280) == (504, 504)
    # 1000 rounds to 1008, but 1008² = 1,016,064 is over the cap: 1000 / sqrt(1e6 /
    # 1,003,520) / 28 = 35.8, floored to 35 × 28 = 980
    assert smart_resize(1000, 1000, 28, 56 * 56, 28 * 28 * 1280) == (980, 980)


def test_images_run_through_the_tower():
    """Full finetuning trains the tower and the merger (HF Trainer); LoRA freezes both."""
    full = estimate("qwen2.5-vl-7b", method="full", images=1, seq_len=1024)
    assert full.model.n_trainable_params == 8_292_166_656
    lora = estimate("qwen2.5-vl-7b", method="lora", images=1, seq_len=1024)
    assert any("256 of each sequence" in n for n in lora.notes)


def test_image_size_sets_the_tokens():
    """--image-size 1000: resized to 980 (as above), 70 × 70 patches, 1,225 tokens; the
    sequence must hold them. LLaVA's processor resizes every image to 336, and a
    text-only model has no tower: both refused."""
    from ftmem.errors import InvalidInputError

    est = estimate("qwen2.5-vl-7b", method="lora", images=1, image_size=1000, seq_len=2048)
    assert any("1,225 of each sequence" in n and "4,900 patches" in n for n in est.notes)
    with pytest.raises(InvalidInputError, match="at least"):
        estimate("qwen2.5-vl-7b", images=2, image_size=1000, seq_len=2048)
    with pytest.raises(InvalidInputError, match="--image-size"):
        estimate("llava-1.5-7b", images=1, image_size=500, seq_len=1024)
    # a text-only model has no images to resize: refused, not ignored
    with pytest.raises(InvalidInputError, match="no vision tower"):
        estimate("llama2-7b", image_size=448)
