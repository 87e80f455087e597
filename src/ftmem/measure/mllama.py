"""Measuring Llama-3.2-Vision (MllamaForConditionalGeneration, transformers 5.24): its
config around the text model's, its image inputs (tiles, aspect ratios, the
cross-attention mask) and the modules peft and the trainable flags leave alone."""

from __future__ import annotations

from typing import Any

import torch

from ftmem.arch import Architecture
from ftmem.run import RunConfig


def config(arch: Architecture, text):
    """MllamaConfig: the vision config from Architecture.vision, the text config given."""
    from transformers import MllamaConfig, MllamaVisionConfig

    v = arch.vision
    assert v is not None and v.mllama is not None
    m = v.mllama
    attn = text._attn_implementation  # (read first: MllamaConfig resets the text config's)
    vision = MllamaVisionConfig(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_layers,
        num_global_layers=m.global_layers,
        attention_heads=v.num_heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
        num_channels=v.num_channels,
        max_num_tiles=m.max_num_tiles,
        intermediate_layers_indices=list(m.intermediate_layers),
        vision_output_dim=m.output_dim,
        # the tile arrangements of max_num_tiles (image_processing_mllama.py
        # get_all_supported_aspect_ratios): only their count sizes the embeddings
        supported_aspect_ratios=_ratios(m.max_num_tiles, m.aspect_ratios),
    )
    cfg: Any = MllamaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id(arch),
    )
    cfg._attn_implementation = attn  # (the setter sets the text and vision configs' too)
    return cfg


def _ratios(tiles: int, count: int) -> list[list[int]]:
    ratios = [[w, h] for w in range(1, tiles + 1) for h in range(1, tiles + 1) if w * h <= tiles]
    if len(ratios) < count:
        ratios += [[1, 1]] * (count - len(ratios))
    return ratios[:count]


def image_token_id(arch: Architecture) -> int:
    """The <|image|> placeholder: the vocabulary's last id, so that the labels stay
    inside the LM head (the published one, 128256, is the first of embed_tokens' 8 extra
    rows; MllamaForConditionalGeneration never reads the id: images reach the text model
    through the cross-attention layers)."""
    return arch.vocab_size - 1


def inputs(arch: Architecture, run: RunConfig, ids: torch.Tensor, seed: int) -> dict:
    """``run.images`` images per sequence, each max_num_tiles tiles (every tile real:
    aspect ratio id of the full arrangement), their <|image|> tokens at the start of the
    sequence, and a cross-attention mask letting every text token see every tile."""
    v = arch.vision
    assert v is not None and v.mllama is not None
    tiles = v.mllama.max_num_tiles
    b = ids.shape[0]
    ids[:, 1 : 1 + run.images] = image_token_id(arch)
    gen = torch.Generator().manual_seed(seed)
    size = v.image_size
    pixels = torch.randn((b, run.images, tiles, v.num_channels, size, size), generator=gen)
    # the arrangement using every tile: (1, tiles) has id `tiles` (ids count from 1)
    ratio = torch.full((b, run.images), min(tiles, v.mllama.aspect_ratios), dtype=torch.long)
    mask = torch.ones((b, run.images, tiles), dtype=torch.long)
    cross = torch.ones((b, ids.shape[1], run.images, tiles), dtype=torch.long)
    return {
        "pixel_values": pixels.to(ids.device),
        "aspect_ratio_ids": ratio.to(ids.device),
        "aspect_ratio_mask": mask.to(ids.device),
        "cross_attention_mask": cross.to(ids.device),
    }


def set_trainable(model, arch: Architecture, run: RunConfig, trains) -> None:
    """Tower, projector and cross-attention layers train as ftmem.mllama_step says."""
    from ftmem.mllama_step import cross_layers_train

    v = arch.vision
    assert v is not None and v.mllama is not None
    cross = tuple(f"language_model.layers.{i}." for i in v.mllama.cross_layers)
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue  # (peft's adapters train wherever its names reach: ftmem.vision_lora)
        if "vision_model." in name:
            p.requires_grad_(trains.tower)
        elif "multi_modal_projector." in name:
            p.requires_grad_(trains.projector)
        elif any(c in name for c in cross) and "lora_" not in name:
            p.requires_grad_(cross_layers_train(run))
