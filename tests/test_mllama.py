"""Llama-3.2-Vision (ftmem.mllama): parameter counts against transformers 5.24 on the
meta device and the published count, the presets, what text-only batches train, and
the refusals. What the vision model and the cross-attention layers keep is measured in
tests/accuracy (cases.py _mllama)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftmem.api import estimate
from ftmem.arch import count_params
from ftmem.errors import ConfigError, InvalidInputError
from ftmem.mllama import cross_layer_count, image_states
from ftmem.presets import get_model
from ftmem.sources import architecture_from_config
from ftmem.vision import projector_count, tower_count
from tests.meta_counts import counted, image_text_params

FIXTURES = Path(__file__).parent / "fixtures" / "multimodal"
CONFIGS = {
    "llama3.2-11b-vision": json.loads((FIXTURES / "Llama-3.2-11B-Vision.json").read_text()),
    "llama3.2-90b-vision": json.loads((FIXTURES / "Llama-3.2-90B-Vision.json").read_text()),
}


def _transformers_counts(cfg: dict) -> dict[str, int]:
    """The parameters of MllamaForConditionalGeneration built from ``cfg`` on the meta
    device: all, the vision model, the projector, the cross-attention layers."""
    params = image_text_params(cfg)
    cross = tuple(f".layers.{i}." for i in cfg["text_config"]["cross_attention_layers"])
    language = [(name, n) for name, n in params if "language_model" in name]
    return {
        "all": counted(params),
        "tower": counted(params, ".vision_model."),
        "projector": counted(params, ".multi_modal_projector."),
        "cross": counted(language, *cross),
    }


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_counts_equal_transformers(name):
    cfg = CONFIGS[name]
    arch = architecture_from_config(cfg, name, "test")
    got = _transformers_counts(cfg)
    v = arch.vision
    assert v is not None and v.mllama is not None
    assert tower_count(v) == got["tower"]
    assert projector_count(v, arch.hidden_size) == got["projector"]
    assert cross_layer_count(v, arch.hidden_size) == got["cross"]
    assert count_params(arch) == got["all"]
    assert count_params(get_model(name)) == got["all"]  # the preset describes the same model
    assert get_model(name).vision == v


def test_published_count():
    """meta-llama/Llama-3.2-11B-Vision's model card: 10,670,220,835 parameters."""
    assert count_params(get_model("meta-llama/Llama-3.2-11B-Vision-Instruct")) == 10_670_220_835


def test_blocks_are_the_self_attention_layers():
    """40 layers, 8 of them cross-attention: 32 blocks; embed_tokens has 128,256 + 8 rows."""
    arch = get_model("llama3.2-11b-vision")
    assert arch.num_layers == 32
    assert arch.embedding_extra_rows == 8


def test_image_states():
    """Each image is 4 tiles of (560 / 14)² + 1 = 1,601 tokens for the cross-attention."""
    assert image_states(get_model("llama3.2-11b-vision").vision) == 4 * 1601


def test_text_only_batches_train_no_image_path():
    """Without images the vision model, projector and cross-attention layers never run
    (MllamaTextModel skips a cross-attention layer without image states): full
    finetuning trains the 32 self-attention blocks, the embedding, final norm and head.
    By hand, 11B: 10,670,220,835 - 863,567,379 (vision) - 31,461,376 (projector) -
    1,744,898,064 (8 cross-attention layers: 8 × (4096 × 4096 × 2 + 1024 × 4096 × 2 +
    3 × 14336 × 4096 + 2 × 4096 + 2 × 128 + 2)) = 8,030,294,016 trainable."""
    est = estimate("llama3.2-11b-vision", method="full", precision="bf16")
    assert est.model.n_params == 10_670_220_835
    assert est.model.n_trainable_params == 8_030_294_016
    assert est.memory.gradients_bytes == 2 * 8_030_294_016


def test_images_train_the_cross_attention_layers_under_full_finetuning():
    """Full finetuning with images trains everything (HF Trainer, TRL)."""
    est = estimate("llama3.2-11b-vision", method="full", precision="bf16", images=1)
    assert est.model.n_trainable_params == 10_670_220_835
    assert est.memory.gradients_bytes == 2 * 10_670_220_835


def test_unmodelled_image_runs_are_refused():
    with pytest.raises(InvalidInputError, match="--attn eager"):
        estimate("llama3.2-11b-vision", method="lora", images=1, attn="eager")
    # autocast is modelled with everything on the image path frozen and not hooked
    with pytest.raises(InvalidInputError, match="bf16-mixed"):
        estimate("llama3.2-11b-vision", method="full", images=1, precision="bf16-mixed")
    with pytest.raises(InvalidInputError, match="bf16-mixed"):
        estimate(
            "llama3.2-11b-vision", method="lora", images=1, precision="bf16-mixed", grad_ckpt=True
        )
    # peft's names reach the vision model's and cross-attention layers' linears: their
    # adapters pass gradients through autocast's casts, not sized
    with pytest.raises(InvalidInputError, match="reach the vision model"):
        estimate("llama3.2-11b-vision", method="lora", images=1, precision="bf16-mixed")


def test_autocast_weight_copies_in_the_frozen_cross_layers_by_hand():
    """LoRA under bf16-mixed, one image, 2,048 tokens: each of the 8 frozen cross-attention
    layers keeps autocast's bf16 copies of q_proj and o_proj (4096 × 4096) and of the
    MLP's three (4096 × 14336) for its input's gradient; the two tanh gates and the
    (1, 1, 2048, 1) row mask stay in the fp32 model dtype. Beside bf16's items, that
    is all that changes."""
    from ftmem.mllama_step import cross_saved, shared_saved
    from ftmem.run import RunConfig

    arch = get_model("llama3.2-11b-vision")

    def items(precision: str) -> int:
        run = RunConfig(method="lora", images=1, seq_len=2048, precision=precision)
        return sum(x.nbytes for x in cross_saved(arch, run, 2, False) + shared_saved(arch, run, 2))

    copies = 8 * (2 * 4096 * 4096 + 3 * 4096 * 14336) * 2
    assert items("bf16-mixed") - items("bf16") == copies + 8 * 2 * (4 - 2) + 2048 * (4 - 2)


def test_unmodelled_vision_config_is_refused_in_one_sentence():
    cfg = CONFIGS["llama3.2-11b-vision"]
    bad = {**cfg, "vision_config": {**cfg["vision_config"], "hidden_act": "relu"}}
    with pytest.raises(ConfigError, match="not modelled"):
        architecture_from_config(bad, "bad", "test")
