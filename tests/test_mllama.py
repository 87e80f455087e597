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
from ftmem.errors import ConfigError
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


def test_trained_image_path_under_autocast_and_eager_beyond_the_text_are_estimated():
    """Once refused: full finetuning under autocast with images, and eager attention
    where the cross-attention layers' 6,404 image keys (4 tiles × 1,601) outnumber
    2,048 text positions (measured: tests/accuracy/cases.py
    _mllama_trained_autocast_and_eager_image_keys)."""
    for precision in ("bf16-mixed", "fp16-mixed"):
        est = estimate("llama3.2-11b-vision", method="full", images=1, precision=precision)
        assert est.memory.activations_bytes > 0
    est = estimate("llama3.2-11b-vision", method="lora", images=1, attn="eager")
    assert est.memory.peak_allocated_bytes > est.memory.weights_bytes


def test_cross_attention_eager_moments_by_hand():
    """LoRA, bf16, one image, 2,048 tokens, eager: the last cross-attention layer's
    1 × 32 heads × 2,048 × 6,404 scores. Forward: the bf16 scores and their fp32 copy
    beside the saved fp32 softmax (2 + 4 B each). Backward: bf16 scores' gradients, their
    fp32 copy and the fp32 softmax gradient (2 + 8 B), less the frozen layer's MLP side
    its backward has freed: post_attention_layernorm's fp32 input and rstd, silu's
    input, its output and up_proj's (2,048 × 14,336 bf16 each), the gate's bf16 tanh."""
    from ftmem.mllama_step import cross_eager_moments
    from ftmem.precision import resolve_dtypes
    from ftmem.run import RunConfig

    arch = get_model("llama3.2-11b-vision")
    run = RunConfig(method="lora", images=1, seq_len=2048, attn="eager")
    scores = 32 * 2048 * 6404
    T, h, f = 2048, 4096, 14336
    mlp_side = T * h * 4 + T * 4 + 3 * T * f * 2 + 2
    forward, backward = cross_eager_moments(arch, run, resolve_dtypes(run))
    assert forward == scores * 6
    assert backward == scores * 10 - mlp_side


def test_autocast_items_of_trained_cross_layers_by_hand():
    """Full finetuning, one image, 2,048 tokens, bf16-mixed against bf16, per layer: each
    RMSNorm's normalised input fp32 (+2 B), q_proj's input an own bf16 cast of the fp32
    norm output (as bf16's shared output: +0) and gate_proj's and up_proj's each their
    own (+2 B), the MLP gate's operand fp32 (the fp32 row mask: +2 B), both tanh fp32,
    and the copies of the seven weights (k/v where the image states need a gradient)."""
    from ftmem.mllama_step import cross_saved
    from ftmem.precision import resolve_dtypes
    from ftmem.run import RunConfig

    arch = get_model("llama3.2-11b-vision")

    def items(precision: str) -> int:
        run = RunConfig(method="full", images=1, seq_len=2048, precision=precision)
        return sum(x.nbytes for x in cross_saved(arch, run, 2, True, resolve_dtypes(run)))

    T, h, f, kv = 2048, 4096, 14336, 1024
    copies = (2 * h * h + 2 * h * kv + 3 * h * f) * 2
    per_layer = 2 * T * h * 2 + T * h * 2 + T * h * 2 + 2 * 2 + copies
    assert items("bf16-mixed") - items("bf16") == 8 * per_layer


def test_adapters_on_the_image_path_under_autocast_and_eager_are_estimated():
    """peft's q_proj/v_proj reach the vision model and the cross-attention layers: under
    autocast, with checkpointing, and eager where the text outnumbers the image keys
    (measured: tests/accuracy/cases.py _mllama_autocast_and_eager)."""
    for precision in ("bf16-mixed", "fp16-mixed"):
        for ckpt in (False, True):
            est = estimate(
                "llama3.2-11b-vision",
                method="qlora",
                images=1,
                precision=precision,
                grad_ckpt=ckpt,
            )
            assert est.memory.peak_allocated_bytes > est.memory.weights_bytes
    est = estimate("llama3.2-11b-vision", method="lora", images=1, attn="eager", seq_len=8192)
    assert est.memory.activations_bytes > 0


def test_autocast_weight_copies_in_the_frozen_cross_layers_by_hand():
    """LoRA under bf16-mixed, one image, 2,048 tokens: each of the 8 frozen cross-attention
    layers keeps autocast's bf16 copies of q_proj and o_proj (4096 × 4096) and of the
    MLP's three (4096 × 14336) for its input's gradient; the two tanh gates and the
    (1, 1, 2048, 1) row mask stay in the fp32 model dtype. Beside bf16's items, that
    is all that changes."""
    from ftmem.mllama_step import cross_saved, shared_saved
    from ftmem.precision import resolve_dtypes
    from ftmem.run import RunConfig

    arch = get_model("llama3.2-11b-vision")

    def items(precision: str) -> int:
        run = RunConfig(method="lora", images=1, seq_len=2048, precision=precision)
        kept = cross_saved(arch, run, 2, False, resolve_dtypes(run)) + shared_saved(arch, run, 2)
        return sum(x.nbytes for x in kept)

    copies = 8 * (2 * 4096 * 4096 + 3 * 4096 * 14336) * 2
    assert items("bf16-mixed") - items("bf16") == copies + 8 * 2 * (4 - 2) + 2048 * (4 - 2)


def test_unmodelled_vision_config_is_refused_in_one_sentence():
    cfg = CONFIGS["llama3.2-11b-vision"]
    bad = {**cfg, "vision_config": {**cfg["vision_config"], "hidden_act": "relu"}}
    with pytest.raises(ConfigError, match="not modelled"):
        architecture_from_config(bad, "bad", "test")


def test_autocast_weight_copies_in_the_adapted_vision_model_by_hand():
    """LoRA on q_proj/v_proj under bf16-mixed: gradients run from the vision model's
    first q_proj on, so every fp32 linear after it keeps autocast's bf16 weight copy:
    in local layer 0 o_proj, fc1 and fc2; in the other 31 local and 8 global layers all
    six; the projector (vision_output_dim → 4096). QLoRA's 4-bit linears keep none."""
    from ftmem.mllama_step import autocast_copies
    from ftmem.precision import resolve_dtypes
    from ftmem.run import RunConfig

    arch = get_model("llama3.2-11b-vision")
    v = arch.vision
    assert v is not None and v.mllama is not None
    H, I = v.hidden_size, v.intermediate_size
    layers = v.num_layers + v.mllama.global_layers
    by_hand = (H * H + 2 * H * I) + (layers - 1) * (4 * H * H + 2 * H * I)
    by_hand += v.mllama.output_dim * arch.hidden_size
    run = RunConfig(method="lora", images=1, seq_len=2048, precision="bf16-mixed")
    assert autocast_copies(arch, run, 2, resolve_dtypes(run)) == by_hand * 2
    qlora = run.model_copy(update={"method": "qlora"})
    assert autocast_copies(arch, qlora, 2, resolve_dtypes(qlora)) == 0


@pytest.mark.accuracy
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("bits", [32, 16])
def test_frozen_vision_forward_moment(attn, bits):
    """The frozen vision model's forward (no gradient anywhere), measured on the CPU
    against ftmem.mllama.frozen_forward (5 %, a peak): eager's moment is the last
    layer's softmax (the 16-bit scores, their fp32 copy and the fp32 softmax)."""
    torch = pytest.importorskip("torch")
    from transformers import MllamaVisionModel

    from ftmem.arch import Architecture
    from ftmem.dtypes import eager_score_bytes
    from ftmem.measure.build import hf_config
    from ftmem.measure.mllama import config
    from ftmem.measure.tracker import LiveBytesTracker
    from ftmem.mllama import frozen_forward
    from tests.accuracy.cases import TINY_MLLAMA

    arch = Architecture(**TINY_MLLAMA)
    v = arch.vision
    assert v is not None and v.mllama is not None
    dtype = torch.float32 if bits == 32 else torch.bfloat16
    vision = config(arch, hf_config(arch, attn)).vision_config
    vision._attn_implementation = attn
    model = MllamaVisionModel(vision).to(dtype).requires_grad_(False)
    images, tiles = 3, v.mllama.max_num_tiles
    pixels = torch.randn(images, 1, tiles, 3, v.image_size, v.image_size, dtype=dtype)
    ratio = torch.full((images, 1), min(tiles, v.mllama.aspect_ratios), dtype=torch.long)
    tracker = LiveBytesTracker()
    tracker.track(list(model.parameters()), list(model.buffers()), pixels)
    with tracker:
        before = tracker.current
        tracker.reset_peak()
        out = model(
            pixel_values=pixels,
            aspect_ratio_ids=ratio,
            aspect_ratio_mask=torch.ones((images, 1, tiles), dtype=torch.long),
        )
        measured = tracker.peak - before
    del out
    e = bits // 8
    scores = eager_score_bytes(e, fp16_on_cuda=False) if attn == "eager" else 0
    estimated = frozen_forward(v, images, e, scores)
    assert abs(estimated - measured) / measured <= 0.05, (estimated, measured)


def test_fsdp_says_the_image_path_is_gathered_in_the_root_unit():
    """Under FSDP the vision model, projector and cross-attention layers are counted in
    the root unit (gathered whole); the note says so with their parameters, the sum of
    the counts test_counts_equal_transformers checks against transformers."""
    arch = get_model("llama3.2-11b-vision")
    v = arch.vision
    assert v is not None
    params = tower_count(v) + projector_count(v, arch.hidden_size)
    params += cross_layer_count(v, arch.hidden_size)
    est = estimate(
        "llama3.2-11b-vision", method="lora", images=1, gpus=8, strategy="fsdp", seq_len=2048
    )
    said = [n for n in est.notes if "under FSDP" in n]
    assert len(said) == 1 and f"({params / 1e9:.2f}B parameters)" in said[0]
    text_only = estimate("llama3.2-11b-vision", method="lora", gpus=8, strategy="fsdp")
    assert not any("under FSDP" in n for n in text_only.notes)
