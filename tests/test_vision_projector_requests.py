"""The image-text projectors' saved tensors as the allocator sees them (Saved.parts).

The truth: transformers' own projector modules run on the CPU in bf16, their saved
tensors collected with autograd's saved-tensor hooks, one entry per storage
(tests/saved_storages.py), as tests/test_vision_norm_requests.py does for the towers'
norms. Three cases each: a trained projector under a tower that trains (its input needs
a gradient), under a frozen tower (it does not), and a frozen projector passing its
input's gradient down (a hooked tower). ftmem's parts must be those storages, one
request each; their sum is what the accuracy suite measures as one total.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    Gemma3Config,
    LlamaConfig,
    LlavaConfig,
    Mistral3Config,
    MistralConfig,
    PixtralVisionConfig,
    SiglipVisionConfig,
)
from transformers.models.gemma3.modeling_gemma3 import Gemma3MultiModalProjector
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector
from transformers.models.mistral3.modeling_mistral3 import Mistral3MultiModalProjector
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLPatchMerger
from transformers.models.qwen2_vl.modeling_qwen2_vl import PatchMerger

from ftmem.dtypes import layer_norm_stats_bytes
from ftmem.presets import get_model
from ftmem.vision import VisionTower, projector_input_grad_parts, projector_parts
from tests.saved_storages import saved_storages

IMAGES = 2
E = 2  # bf16
LN = layer_norm_stats_bytes("cpu", E)  # a LayerNorm's mean and rstd on the CPU


def _tower(name: str, side: int | None = None) -> tuple[VisionTower, int]:
    arch = get_model(name)
    v = arch.vision
    assert v is not None
    if side is not None:  # (a smaller image keeps the CPU run short; the shapes scale)
        v = v.model_copy(update={"image_size": side})
    return v, arch.hidden_size


def _projector(name: str, v: VisionTower, T: int) -> tuple[torch.nn.Module, torch.Tensor, dict]:
    """The preset's projector as transformers 5.25 builds it, in bf16, and its input
    (what the tower hands it) with the forward's other arguments."""
    H = v.hidden_size
    if v.qwen:
        cls = PatchMerger if v.encoder == "qwen2_vl" else Qwen2_5_VLPatchMerger
        module: torch.nn.Module = cls(T, H, v.merge_size)
        x = torch.randn(IMAGES * v.patches, H)
        return module.to(torch.bfloat16), x.to(torch.bfloat16), {}
    if v.projector == "mlp":
        vision = CLIPVisionConfig(hidden_size=H, num_attention_heads=v.num_heads)
        config = LlavaConfig(
            vision_config=vision, text_config=LlamaConfig(hidden_size=T, num_attention_heads=8)
        )
        module = LlavaMultiModalProjector(config)
        selected = v.patches if v.drop_cls else v.tower_tokens
        x = torch.randn(IMAGES, selected, H)
        return module.to(torch.bfloat16), x.to(torch.bfloat16), {}
    if v.projector == "mistral3":
        vision = PixtralVisionConfig(
            hidden_size=H,
            num_attention_heads=v.num_heads,
            patch_size=v.patch_size,
            image_size=v.image_size,
        )
        config = Mistral3Config(
            vision_config=vision,
            text_config=MistralConfig(hidden_size=T, num_attention_heads=8),
            spatial_merge_size=v.merge_size,
        )
        module = Mistral3MultiModalProjector(config)
        x = torch.randn(IMAGES * v.patches, H)
        sizes = torch.tensor([[v.image_size, v.image_size]] * IMAGES)
        return module.to(torch.bfloat16), x.to(torch.bfloat16), {"image_sizes": sizes}
    vision = SiglipVisionConfig(
        hidden_size=H,
        num_attention_heads=v.num_heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
    )
    text = {"hidden_size": T, "num_attention_heads": 8, "head_dim": T // 8}
    config = Gemma3Config(
        vision_config=vision, text_config=text, mm_tokens_per_image=v.tokens_per_image
    )
    module = Gemma3MultiModalProjector(config)
    x = torch.randn(IMAGES, v.patches, H)
    return module.to(torch.bfloat16), x.to(torch.bfloat16), {}


def _measured(name: str, v: VisionTower, T: int, trained: bool, input_grad: bool) -> list[int]:
    module, x, kwargs = _projector(name, v, T)
    module.requires_grad_(trained)
    x.requires_grad_(input_grad)

    def forward() -> torch.Tensor:
        out = module(x, **kwargs)
        if v.encoder == "qwen2_5_vl":  # the window order undone after the merger
            order = torch.randperm(out.shape[0])
            out = out[torch.argsort(order), :]
        return out

    return saved_storages(forward, module.parameters())


CASES = [
    ("llava-1.5-7b", None),
    ("gemma3-4b-vision", None),
    ("mistral-small-3.1-24b", 448),
    ("qwen2-vl-2b", None),
    ("qwen2.5-vl-3b", None),
]


@pytest.mark.parametrize(("name", "side"), CASES)
def test_a_trained_projectors_requests_are_its_saved_storages(name, side):
    v, T = _tower(name, side)
    for tower_trains in (True, False):
        parts = projector_parts(v, T, IMAGES, E, tower_trains, ln_stats=LN)
        assert sorted(parts) == _measured(name, v, T, True, tower_trains), tower_trains


@pytest.mark.parametrize(("name", "side"), CASES)
def test_a_frozen_projectors_input_gradient_requests_are_its_saved_storages(name, side):
    v, T = _tower(name, side)
    parts = projector_input_grad_parts(v, T, IMAGES, E, ln_stats=LN)
    assert sorted(parts) == _measured(name, v, T, False, True)


def test_the_step_requests_the_gemma3_projector_tensor_by_tensor():
    """The step's projector item carries the parts (six requests for Gemma 3's trained
    projector under a trained tower), not one block of their sum."""
    from ftmem.api import run_config
    from ftmem.step import step_parts

    arch = get_model("gemma3-4b-vision")
    v = arch.vision
    assert v is not None
    run = run_config(
        method="full", precision="bf16", images=1, device="cpu", seq_len=v.tokens_per_image + 64
    )
    items = [s for s in step_parts(arch, run).outer_items if s.what.startswith("vision projector")]
    assert len(items) == 1
    expected = projector_parts(v, arch.hidden_size, 1, E, True, ln_stats=LN)
    assert items[0].requests() == expected and len(expected) == 6
