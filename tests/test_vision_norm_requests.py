"""The vision towers' norms as the allocator sees them (ops.saved.Saved.parts).

The truth: transformers' own modules run on the CPU, their saved tensors collected with
autograd's saved-tensor hooks, one entry per storage (tests/saved_storages.py), as
tests/test_norm_requests.py does for the decoders' norms. CLIP's and SigLIP's encoder
layers (and CLIP's pre-norm, SigLIP's post-norm) are nn.LayerNorms: native_layer_norm
keeps its input and its (n, 1) mean and rstd, three storages; Pixtral's RMSNorm its
fp32 input, its rstd and the cast back. The tower's item now requests them one by one,
not as part of one block of the tower's sum.
"""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, MllamaVisionConfig, SiglipVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from transformers.models.mllama.modeling_mllama import MllamaVisionEncoderLayer
from transformers.models.pixtral.modeling_pixtral import PixtralRMSNorm
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionBlock
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLVisionBlock
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

from ftmem.api import run_config
from ftmem.dtypes import layer_norm_saved_parts, layer_norm_stats_bytes
from ftmem.mllama import padded_tile_tokens, tile_tokens
from ftmem.presets import get_model
from ftmem.step import step_parts
from tests.saved_storages import saved_storages

IMAGES = 1


def _layer(name: str) -> torch.nn.Module:
    """One encoder layer of the preset's tower, as transformers builds it, in bf16."""
    v = get_model(name).vision
    assert v is not None
    shape = dict(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_attention_heads=v.num_heads,
    )
    if v.encoder == "clip":
        return CLIPEncoderLayer(CLIPVisionConfig(**shape)).to(torch.bfloat16)
    return SiglipEncoderLayer(SiglipVisionConfig(**shape)).to(torch.bfloat16)


def _measured(name: str, trained: bool) -> list[int]:
    """The storages layer_norm1 saves on a bf16 input that needs a gradient."""
    v = get_model(name).vision
    assert v is not None
    norm = _layer(name).layer_norm1.requires_grad_(trained)
    x = torch.randn(IMAGES, v.tower_tokens, v.hidden_size, dtype=torch.bfloat16)
    return saved_storages(lambda: norm(x.requires_grad_()), norm.parameters())


def _tower_requests(name: str, **settings) -> tuple[int, ...]:
    arch = get_model(name)
    assert arch.vision is not None
    run = run_config(
        precision="bf16", images=IMAGES, seq_len=arch.vision.tokens_per_image + 64, **settings
    )
    items = [s for s in step_parts(arch, run).outer_items if s.what.startswith("vision tower")]
    assert len(items) == 1
    return items[0].requests()


def _norm_starts(requests: tuple[int, ...], norm: tuple[int, ...]) -> list[int]:
    """Where the norm's three tensors appear one after the other, in the order they are
    made (input, mean, rstd), among the requests."""
    return [i for i in range(len(requests) - 2) if requests[i : i + 3] == norm]


@pytest.mark.parametrize("name", ["llava-1.5-7b", "gemma3-4b-vision"])
def test_the_towers_layer_norms_save_input_mean_and_rstd_apart(name):
    v = get_model(name).vision
    assert v is not None
    n = IMAGES * v.tower_tokens
    stats = layer_norm_stats_bytes("cpu", 2)  # bf16 on the CPU (fp32 on CUDA)
    parts = layer_norm_saved_parts(n, v.hidden_size, 2, stats)
    for trained in (True, False):
        assert _measured(name, trained) == sorted(parts)
    # the trained tower's item: every LayerNorm of the layers the projector reads, CLIP's
    # pre-norm and SigLIP's post-norm (Gemma 3 reads the last layer), three requests each
    requests = _tower_requests(name, method="full", device="cpu")
    clip = v.encoder == "clip"
    expected = 2 * v.layers_kept + 1
    assert len(_norm_starts(requests, parts)) == expected
    assert sum(requests) > sum(parts) * expected  # (the attention's and MLP's items beside)
    if clip:  # the pixels, then the pre-norm, then layer 0's layer_norm1
        assert requests[1:4] == parts == requests[4:7]


def test_a_lora_towers_layer_norms_are_requested_apart():
    """A frozen CLIP tower with LoRA on its linears (all-linear): from the lowest adapted
    linear up, each LayerNorm's input, mean and rstd (input gradients pass through)."""
    v = get_model("llava-1.5-7b").vision
    assert v is not None
    n = IMAGES * v.tower_tokens
    stats = layer_norm_stats_bytes("cpu", 2)
    parts = layer_norm_saved_parts(n, v.hidden_size, 2, stats)
    requests = _tower_requests(
        "llava-1.5-7b", method="lora", lora_targets="all-linear", device="cpu"
    )
    # from layer 0's q/k/v (its layer_norm1 needs no gradient): layer_norm2 of layer 0,
    # then both norms of every later layer the projector reads
    assert len(_norm_starts(requests, parts)) == 2 * v.layers_kept - 1


def test_a_checkpointed_towers_norms_outside_the_layers_are_requested_apart():
    """Checkpointed, each CLIP layer keeps its input alone (one request); the pre-norm,
    outside the checkpointed layers, still keeps its three tensors."""
    v = get_model("llava-1.5-7b").vision
    assert v is not None
    n = IMAGES * v.tower_tokens
    stats = layer_norm_stats_bytes("cpu", 2)
    parts = layer_norm_saved_parts(n, v.hidden_size, 2, stats)
    requests = _tower_requests("llava-1.5-7b", method="full", device="cpu", grad_ckpt=True)
    assert _norm_starts(requests, parts) == [1]
    assert requests[4:] == (n * v.hidden_size * 2,) * v.layers_kept


def _pixtral_measured(trained: bool) -> list[int]:
    """PixtralRMSNorm (transformers 5.25 models/pixtral/modeling_pixtral.py: the fp32
    steps, then ``self.weight * hidden_states.to(input_dtype)``) on one image's patches."""
    v = get_model(PIXTRAL).vision
    assert v is not None
    norm = PixtralRMSNorm(v.hidden_size).to(torch.bfloat16).requires_grad_(trained)
    x = torch.randn(IMAGES, v.patches, v.hidden_size, dtype=torch.bfloat16)
    return saved_storages(lambda: norm(x.requires_grad_()), norm.parameters())


PIXTRAL = "mistral-small-3.1-24b"


def test_pixtrals_rms_norms_save_fp32_input_rstd_and_cast_apart():
    """A trained norm keeps its fp32 input, its rstd and the cast back (the weight's mul
    keeps it); a frozen one (LoRA's tower) the first two. The trained tower's item
    requests the three of ln_pre and of both norms of every layer one by one; the LoRA
    tower's, the two of every norm from the lowest adapted linear up."""
    v = get_model(PIXTRAL).vision
    assert v is not None
    n, H = IMAGES * v.patches, v.hidden_size
    trained = (n * H * 4, n * 4, n * H * 2)
    assert _pixtral_measured(True) == sorted(trained)
    assert _pixtral_measured(False) == sorted(trained[:2])
    requests = _tower_requests(PIXTRAL, method="full")
    assert requests[1:4] == trained  # ln_pre, after the pixels
    assert len(_norm_starts(requests, trained)) == 1 + 2 * v.num_layers
    lora = _tower_requests(PIXTRAL, method="lora", lora_targets="all-linear")
    pairs = [i for i in range(len(lora) - 1) if lora[i : i + 2] == trained[:2]]
    assert len(pairs) == 2 * v.num_layers - 1  # (layer 0's attention_norm needs no gradient)


def _qwen_norm(name: str) -> torch.nn.Module:
    """norm1 of one vision block as transformers 5.25 builds it: Qwen2-VL's LayerNorm
    (models/qwen2_vl/modeling_qwen2_vl.py Qwen2VLVisionBlock), Qwen2.5-VL's RMSNorm
    (models/qwen2_5_vl/modeling_qwen2_5_vl.py Qwen2_5_VLVisionBlock), in bf16."""
    v = get_model(name).vision
    assert v is not None
    if v.encoder == "qwen2_vl":
        config = Qwen2VLVisionConfig(embed_dim=v.hidden_size, num_heads=v.num_heads)
        block: torch.nn.Module = Qwen2VLVisionBlock(config)
    else:
        config = Qwen2_5_VLVisionConfig(
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_heads=v.num_heads,
        )
        block = Qwen2_5_VLVisionBlock(config)
    return block.norm1.to(torch.bfloat16)


def _qwen_measured(name: str, trained: bool) -> list[int]:
    v = get_model(name).vision
    assert v is not None
    norm = _qwen_norm(name).requires_grad_(trained)
    x = torch.randn(IMAGES * v.patches, v.hidden_size, dtype=torch.bfloat16)
    return saved_storages(lambda: norm(x.requires_grad_()), norm.parameters())


@pytest.mark.parametrize("name", ["qwen2-vl-2b", "qwen2.5-vl-3b"])
def test_qwen_vl_block_norms_save_their_tensors_apart(name):
    """Qwen2-VL's LayerNorm keeps its input, mean and rstd; Qwen2.5-VL's RMSNorm its fp32
    input and rstd, and, for a trained weight, the normalised x cast back. The trained
    tower's item requests each block's two norms tensor by tensor; the LoRA tower's
    (all-linear: from block 0's qkv) every norm but block 0's norm1, without the cast."""
    v = get_model(name).vision
    assert v is not None
    n, H = IMAGES * v.patches, v.hidden_size
    if v.encoder == "qwen2_vl":
        trained = frozen = layer_norm_saved_parts(n, H, 2, layer_norm_stats_bytes("cpu", 2))
    else:
        trained, frozen = (n * H * 4, n * 4, n * H * 2), (n * H * 4, n * 4)
    for grad, parts in ((True, trained), (False, frozen)):
        assert _qwen_measured(name, grad) == sorted(parts)
    requests = _tower_requests(name, method="full", device="cpu")
    assert len(_norm_starts(requests, trained)) == 2 * v.num_layers
    lora = _tower_requests(name, method="lora", lora_targets="all-linear", device="cpu")
    k = len(frozen)
    starts = [i for i in range(len(lora) - k + 1) if lora[i : i + k] == frozen]
    assert len(starts) == 2 * v.num_layers - 1


def test_mllama_vision_layer_norms_save_input_mean_and_rstd_apart():
    """MllamaVisionEncoderLayer's input_layernorm (nn.LayerNorm, transformers 5.25
    models/mllama/modeling_mllama.py) over an image's padded tiles: three storages. The
    trained tower's item requests them one by one for both norms of every local and
    global layer and layernorm_post (N padded rows), and layernorm_pre's (the unpadded
    rows) after the pixels and the gated lookups."""
    arch = get_model("llama3.2-11b-vision")
    v = arch.vision
    assert v is not None and v.mllama is not None
    config = MllamaVisionConfig(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        attention_heads=v.num_heads,
    )
    tiles = v.mllama.max_num_tiles
    N = IMAGES * tiles * padded_tile_tokens(v)
    stats = layer_norm_stats_bytes("cpu", 2)
    parts = layer_norm_saved_parts(N, v.hidden_size, 2, stats)
    norm = MllamaVisionEncoderLayer(config).input_layernorm.to(torch.bfloat16)
    x = torch.randn(IMAGES * tiles, padded_tile_tokens(v), v.hidden_size, dtype=torch.bfloat16)
    assert saved_storages(lambda: norm(x.requires_grad_()), norm.parameters()) == sorted(parts)
    arch_run = run_config(method="full", precision="bf16", images=IMAGES, device="cpu", seq_len=64)
    items = [
        s for s in step_parts(arch, arch_run).outer_items if s.what.startswith("vision model (")
    ]
    assert len(items) == 1
    requests = items[0].requests()
    assert len(_norm_starts(requests, parts)) == 2 * (v.num_layers + v.mllama.global_layers) + 1
    pre = layer_norm_saved_parts(IMAGES * tiles * tile_tokens(v), v.hidden_size, 2, stats)
    assert requests[2:5] == pre
