"""Mistral 3 (Mistral-Small-3.1): the Pixtral tower's and projector's parameters
(ftmem.vision_pixtral) against transformers on the meta device, its image tokens, and
--images (the tower's forward with images, measured in tests/accuracy/test_vision_pixtral.py)
and its refusal under gradient checkpointing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftmem.api import estimate
from ftmem.arch import count_params
from ftmem.errors import InvalidInputError
from ftmem.presets import get_model
from ftmem.sources import architecture_from_config
from ftmem.vision import projector_count, tower_count
from tests.meta_counts import counted, image_text_params

FIXTURES = Path(__file__).parent / "fixtures" / "multimodal"
# mistralai/Mistral-Small-3.1-24B-Instruct-2503's config.json
CONFIG = json.loads((FIXTURES / "Mistral-Small-3.1-24B-Instruct-2503.json").read_text())


def _transformers_counts(cfg: dict) -> tuple[int, int, int]:
    params = image_text_params(cfg)
    return (
        counted(params),
        counted(params, ".vision_tower."),
        counted(params, ".multi_modal_projector."),
    )


@pytest.mark.parametrize("tie", [None, False])
def test_counts_equal_transformers(tie):
    """As published (transformers 5.24's Mistral3Config then ties the LM head: its
    tie_word_embeddings defaults to true) and with tie_word_embeddings false (the preset:
    the checkpoint ships its own lm_head)."""
    cfg = CONFIG if tie is None else {**CONFIG, "tie_word_embeddings": tie}
    arch = architecture_from_config(cfg, "mistral3", "test")
    total, tower, projector = _transformers_counts(cfg)
    assert arch.vision is not None
    assert tower_count(arch.vision) == tower
    assert projector_count(arch.vision, arch.hidden_size) == projector
    assert count_params(arch) == total
    if tie is False:
        assert count_params(get_model("mistral-small-3.1-24b")) == total
        assert get_model("mistral-small-3.1-24b").vision == arch.vision


def test_counts_by_hand():
    """Pixtral: conv 1024·3·14², ln_pre, 24 × (2 norms, 4 × 1024², 3 × 1024·4096);
    projector: norm, merging 1024·4096, linear_1 5120·1024, linear_2 5120², no biases.
    The untied total is 24,011,361,280, the tied one 131,072 × 5,120 fewer."""
    H, I = 1024, 4096
    tower = H * 3 * 14 * 14 + H + 24 * (2 * H + 4 * H * H + 3 * H * I)
    projector = H + H * 4 * H + 5120 * H + 5120 * 5120
    v = get_model("mistral-small-3.1-24b").vision
    assert v is not None
    assert (tower_count(v), projector_count(v, 5120)) == (tower, projector)
    assert count_params(get_model("mistral-small-3.1-24b")) == 24_011_361_280
    tied = architecture_from_config(CONFIG, "mistral3", "test")
    assert count_params(tied) == 24_011_361_280 - 131_072 * 5_120


def test_image_tokens_and_images():
    """1540 / 14 = 110 patches a side, merged 2 × 2: 55 rows of 55 features, each row
    closed by [IMG_BREAK] (the last by [IMG_END]): 55 × 56 = 3,080 tokens, which
    --seq-len must hold."""
    v = get_model("mistral-small-3.1-24b").vision
    assert v is not None and v.tokens_per_image == 3_080
    with pytest.raises(InvalidInputError, match="--seq-len must be at least"):
        estimate("mistral-small-3.1-24b", images=1, seq_len=3_000)
    est = estimate("mistral-small-3.1-24b", method="lora", images=1, seq_len=4096)
    assert any("3,025 [IMG] tokens" in n for n in est.notes)


def test_checkpointed_tower_by_hand():
    """LoRA + grad_ckpt, one 1540 px image: 110² = 12,100 patches of width 1024 in bf16.
    peft's enable_input_require_grads hooks the frozen tower: ln_pre keeps its fp32 input
    and rsqrt, every one of the 24 layers its input, and the one mask (n² bf16) is a
    checkpoint argument; the token embeddings (1 × 4096 × 5120) and patch_conv's output
    are the hook's leaves, held by the graph."""
    from ftmem.methods import plan_method
    from ftmem.run import RunConfig
    from ftmem.vision_step import graph_leaves, saved

    arch = get_model("mistral-small-3.1-24b")
    run = RunConfig(method="lora", images=1, seq_len=4096, grad_ckpt=True)
    dtypes = plan_method(arch, run).dtypes
    items = {s.what: s.nbytes for s in saved(arch, run, dtypes)}
    n, H = 12_100, 1024
    tower = n * H * 4 + n * 4 + n * n * 2 + 24 * n * H * 2
    assert items["vision tower (frozen, input gradients)"] == tower
    assert graph_leaves(arch, run, dtypes, embed_trains=False) == (4096 * 5120 * 2, n * H * 2)
    est = estimate("mistral-small-3.1-24b", method="lora", images=1, seq_len=4096, grad_ckpt=True)
    assert any("enable_input_require_grads" in note for note in est.notes)
