"""Image-text models (ftmem.vision): parameter counts against transformers on the meta
device for the published configs, the image tokens in the sequence, and what the run
settings refuse. What the tower and projector keep is measured in
tests/accuracy/test_vision.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftmem.api import estimate
from ftmem.arch import count_params
from ftmem.errors import ConfigError, InvalidInputError
from ftmem.presets import get_model
from ftmem.sources import architecture_from_config
from ftmem.vision import projector_count, tower_count
from tests.meta_counts import counted, image_text_params

FIXTURES = Path(__file__).parent / "fixtures" / "multimodal"
LLAVA = json.loads((FIXTURES / "llava-1.5-7b-hf.json").read_text())
GEMMA3_4B = json.loads((FIXTURES / "gemma-3-4b-it.json").read_text())
# google/gemma-3-12b-it and -27b-it: the same vision_config, these text_config keys
GEMMA3_TEXT = {
    "12b": dict(
        hidden_size=3840,
        intermediate_size=15360,
        num_hidden_layers=48,
        num_attention_heads=16,
        num_key_value_heads=8,
    ),
    "27b": dict(
        hidden_size=5376,
        intermediate_size=21504,
        num_hidden_layers=62,
        num_attention_heads=32,
        num_key_value_heads=16,
        head_dim=128,
        query_pre_attn_scalar=168,
    ),
}


def _gemma3(size: str) -> dict:
    if size == "4b":
        return GEMMA3_4B
    return {**GEMMA3_4B, "text_config": {**GEMMA3_4B["text_config"], **GEMMA3_TEXT[size]}}


CONFIGS = {
    "llava-1.5-7b": LLAVA,
    "gemma3-4b-vision": _gemma3("4b"),
    "gemma3-12b-vision": _gemma3("12b"),
    "gemma3-27b-vision": _gemma3("27b"),
}


def _transformers_counts(cfg: dict) -> tuple[int, int, int]:
    """(all, vision tower, projector) parameters of the model transformers builds."""
    params = image_text_params(cfg)
    return (
        counted(params),
        counted(params, ".vision_tower."),
        counted(params, ".multi_modal_projector."),
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_counts_equal_transformers(name):
    cfg = CONFIGS[name]
    arch = architecture_from_config(cfg, name, "test")
    total, tower, projector = _transformers_counts(cfg)
    assert arch.vision is not None
    assert tower_count(arch.vision) == tower
    assert projector_count(arch.vision, arch.hidden_size) == projector
    assert count_params(arch) == total
    assert count_params(get_model(name)) == total  # the preset describes the same model
    assert get_model(name).vision == arch.vision


def test_tokens_per_image():
    """LLaVA-1.5: (336 / 14)² = 576 patches, the CLS token dropped; Gemma 3: its
    mm_tokens_per_image, 64 × 64 patches pooled 4 × 4."""
    llava = architecture_from_config(LLAVA, "llava", "test").vision
    gemma = architecture_from_config(GEMMA3_4B, "gemma3", "test").vision
    assert llava is not None and gemma is not None
    assert (llava.tokens_per_image, llava.tower_tokens, llava.layers_kept) == (576, 577, 23)
    assert (gemma.tokens_per_image, gemma.tower_tokens, gemma.layers_kept) == (256, 4096, 27)


def test_images_need_room_in_the_sequence():
    with pytest.raises(InvalidInputError, match="at least"):
        estimate("llava-1.5-7b", images=2, seq_len=1000)
    estimate("llava-1.5-7b", images=1, seq_len=1000)


def test_images_refused_without_a_tower():
    with pytest.raises(InvalidInputError, match="no vision tower"):
        estimate("llama2-7b", images=1)


def test_tower_and_projector_defaults():
    """Full finetuning trains both (HF Trainer, TRL); LoRA leaves both frozen, with
    adapters where peft's names reach (none under LLaMA-Factory's freeze_vision_tower,
    freeze_multi_modal_projector)."""
    full = estimate("llava-1.5-7b", method="full", images=1, seq_len=1024)
    lora = estimate("llava-1.5-7b", method="lora", images=1, seq_len=1024)
    vision = 303_507_456 + 20_979_712
    # LLaVA's -2: no gradient reaches the last CLIP layer (q, k, v, out_proj with biases,
    # fc1 and fc2 with biases, two LayerNorms) nor post_layernorm
    H, inter = 1024, 4096
    last_layer = 4 * (H * H + H) + (inter * H + inter) + (H * inter + H) + 2 * 2 * H
    unread = last_layer + 2 * H
    assert full.model.n_trainable_params == count_params(get_model("llava-1.5-7b")) - unread
    assert lora.model.n_trainable_params < vision
    items = [s.what for s in full.memory.activations_outer]
    assert "vision tower (trained)" in items and "vision projector (trained)" in items
    # LoRA's q_proj/v_proj also adapt CLIP's (ftmem.vision_lora): the frozen tower passes
    # gradients from them; LLaMA-Factory keeps adapters out of it, and nothing is kept
    lf = estimate("llava-1.5-7b", method="lora", framework="llama-factory", images=1, seq_len=1024)
    assert not any("vision" in s.what for s in lf.memory.activations_outer)
    assert "vision LoRA adapters (their inputs, lora_A outputs)" in [
        s.what for s in lora.memory.activations_outer
    ]


def test_text_only_batches_give_the_tower_no_gradient():
    """Text-only finetuning of google/gemma-3-4b-it (AutoModelForCausalLM builds the
    image-text model): the tower and projector never run, so their weights are held and
    nothing else (torch's AdamW makes no state for a parameter whose grad is None). By
    hand: 4,300,079,472 - 3,880,263,168 = 419,816,304 vision parameters, 2 bytes each in
    bf16, beside the language model's own gradients and states."""
    hub = estimate("google/gemma-3-4b-it", method="full", precision="bf16")
    text = estimate("gemma3-4b", method="full", precision="bf16")
    vision = 4_300_079_472 - 3_880_263_168
    assert hub.model.n_params == text.model.n_params + vision
    assert hub.memory.weights_bytes == text.memory.weights_bytes + 2 * vision
    assert hub.memory.gradients_bytes == text.memory.gradients_bytes
    assert hub.memory.optimizer_states_bytes == text.memory.optimizer_states_bytes
    with pytest.raises(InvalidInputError, match="give --images N"):
        estimate("gemma3-4b-vision", method="full", vision_tower="full")


def test_trained_tower_on_a_quantised_base_is_refused():
    with pytest.raises(InvalidInputError, match="cannot train"):
        estimate("llava-1.5-7b", method="qlora", vision_tower="full", images=1, seq_len=1024)


def test_unmodelled_vision_is_refused_in_one_sentence():
    cfg = {**LLAVA, "vision_feature_layer": [-2, -5]}
    with pytest.raises(ConfigError, match="vision_feature_layer"):
        architecture_from_config(cfg, "llava", "test")


def _llama_factory(tmp_path, text: str):
    from ftmem.frameworks import read_framework_config

    path = tmp_path / "llama_factory.yaml"
    path.write_text("model_name_or_path: llava-hf/llava-1.5-7b-hf\nstage: sft\n" + text)
    return read_framework_config(str(path))


def test_llama_factory_freezes_the_tower_by_default(tmp_path):
    """LLaMA-Factory's freeze_vision_tower and freeze_multi_modal_projector default true
    (its profile), so its full finetuning leaves both frozen, unlike HF Trainer's."""
    cfg = _llama_factory(tmp_path, "finetuning_type: full\nbf16: true\n")
    assert "vision_tower" not in cfg.settings and "projector" not in cfg.settings
    settings = {**cfg.settings, "images": 1, "seq_len": 1024}
    est = estimate("llava-1.5-7b", **settings)
    assert not any("vision" in s.what for s in est.memory.activations_outer)
    unfrozen = _llama_factory(
        tmp_path, "finetuning_type: full\nbf16: true\nfreeze_vision_tower: false\n"
    )
    assert (unfrozen.settings["vision_tower"], unfrozen.settings["projector"]) == ("full", "full")
    lora = _llama_factory(tmp_path, "finetuning_type: lora\nfreeze_vision_tower: false\n")
    assert "vision_tower" not in lora.settings
    assert any("LoRA in the vision tower is not modelled" in n for n in lora.notes)


@pytest.mark.parametrize(
    ("framework", "method", "hooked"),
    [
        # transformers' gradient_checkpointing_enable calls enable_input_require_grads
        ("hf", "full", True),
        ("hf", "qlora", True),
        # LLaMA-Factory's own _gradient_checkpointing_enable does not (checkpointing.py
        # @ff6d4d12 l.126-154)...
        ("llama-factory", "full", False),
        # ...but peft's PeftModel does on a model that is not quantised (peft_model.py
        # l.184-185, l.728-735), and skips a quantised one
        ("llama-factory", "lora", True),
        ("llama-factory", "qlora", False),
    ],
)
def test_a_frozen_tower_keeps_activations_only_where_its_embeddings_are_hooked(
    framework, method, hooked
):
    """Under gradient checkpointing the frozen tower keeps what its input gradient
    needs only when enable_input_require_grads hooked its patch embedding; without
    checkpointing nothing hooks it."""
    common = {"images": 1, "seq_len": 1024, "vision_tower": "frozen", "projector": "frozen"}
    kept = [
        s.what
        for s in estimate(
            "llava-1.5-7b", method=method, framework=framework, grad_ckpt=True, **common
        ).memory.activations_outer
        if "vision tower" in s.what
    ]
    assert kept == (["vision tower (frozen, input gradients)"] if hooked else [])
    plain = estimate("llava-1.5-7b", method=method, framework=framework, **common)
    kept = [s.what for s in plain.memory.activations_outer if "vision tower" in s.what]
    # (peft's own name match puts qlora's q_proj/v_proj adapters in CLIP's layers too, and
    # gradients run through the tower from them: ftmem.vision_lora; LLaMA-Factory filters)
    adapters = framework == "hf" and method != "full"
    assert kept == (
        ["vision tower (frozen, LoRA from its lowest adapted linear)"] if adapters else []
    )
