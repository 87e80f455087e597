"""Qwen2-VL's and Qwen2.5-VL's vision transformer and patch merger (ftmem.vision
dispatches here for the ``qwen2_vl`` and ``qwen2_5_vl`` encoders): their parameters, the
image tokens an image of a given size becomes, and what a step keeps of them.

As transformers 5.24 builds them (models/qwen2_vl/modeling_qwen2_vl.py,
models/qwen2_5_vl/modeling_qwen2_5_vl.py), under ``model.visual``:

- a Conv3d patch embedding without bias (kernel temporal_patch_size × patch_size²: an
  image is its patches tiled twice in time, so a grid of 1 × h × w patches);
- ``depth`` blocks, each ``norm1``, ``attn`` (one fused ``qkv`` linear with bias, 2-D
  rotary on q and k in fp32, attention per image, or per window in Qwen2.5-VL's layers not
  in ``fullatt_block_indexes``, and ``proj``), ``norm2`` and an MLP. Qwen2-VL: LayerNorms
  and fc1 → QuickGELU → fc2 (embed_dim × mlp_ratio); Qwen2.5-VL: RMSNorms (fp32, the
  Qwen2 form) and a SwiGLU MLP whose three linears have biases;
- the ``merger`` (what LLaMA-Factory's freeze_multi_modal_projector freezes, the
  projector here): a norm (``ln_q``) over the vision width, four neighbouring patches
  (spatial_merge_size²) concatenated, Linear(4H, 4H) → GELU → Linear(4H, text width).

An image's tokens in the language model's sequence are its patches / spatial_merge_size².
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ftmem.dtypes import FP32, layer_norm_saved_parts

if TYPE_CHECKING:
    from ftmem.vision import VisionParam, VisionTower

QWEN_ENCODERS = ("qwen2_vl", "qwen2_5_vl")
TOWER = "model.visual."
MERGER = "model.visual.merger."
# the image processors' resize bounds (transformers 5.24 image_processing_qwen2_vl.py
# smart_resize and Qwen2VLImageProcessor.size: min 56², max 28² × 1280 pixels)
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int):
    """The image's size after Qwen's processor: each side a multiple of ``factor`` (patch
    × merge size), the area within [min_pixels, max_pixels], the aspect kept
    (image_processing_qwen2_vl.py smart_resize, the same steps)."""
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resized_side(side: int, patch: int, merge: int, min_pixels: int, max_pixels: int) -> int:
    """A square image's side after the processor's resize."""
    h, _ = smart_resize(side, side, patch * merge, min_pixels, max_pixels)
    return h


def with_image_side(v: VisionTower, side: int) -> VisionTower:
    """The tower for square images of ``side`` pixels, resized as the processor does."""
    resized = resized_side(side, v.patch_size, v.merge_size, v.min_pixels, v.max_pixels)
    patches = (resized // v.patch_size) ** 2
    return v.model_copy(
        update={"image_size": resized, "tokens_per_image": patches // v.merge_size**2}
    )


def tower_params(v: VisionTower) -> list[VisionParam]:
    from ftmem.vision import VisionParam

    H, I, C, P, T = (
        v.hidden_size,
        v.intermediate_size,
        v.num_channels,
        v.patch_size,
        v.temporal_patch,
    )
    out = [VisionParam(f"{TOWER}patch_embed.proj.weight", (H, C, T, P, P))]
    rms = v.encoder == "qwen2_5_vl"
    for i in range(v.num_layers):
        b = f"{TOWER}blocks.{i}"
        for norm in ("norm1", "norm2"):
            out.append(VisionParam(f"{b}.{norm}.weight", (H,)))
            if not rms:
                out.append(VisionParam(f"{b}.{norm}.bias", (H,)))
        out += [
            VisionParam(f"{b}.attn.qkv.weight", (3 * H, H), linear=True),
            VisionParam(f"{b}.attn.qkv.bias", (3 * H,)),
            VisionParam(f"{b}.attn.proj.weight", (H, H), linear=True),
            VisionParam(f"{b}.attn.proj.bias", (H,)),
        ]
        mlp = ("gate_proj", "up_proj") if rms else ("fc1",)
        for name in mlp:
            out.append(VisionParam(f"{b}.mlp.{name}.weight", (I, H), linear=True))
            out.append(VisionParam(f"{b}.mlp.{name}.bias", (I,)))
        down = "down_proj" if rms else "fc2"
        out.append(VisionParam(f"{b}.mlp.{down}.weight", (H, I), linear=True))
        out.append(VisionParam(f"{b}.mlp.{down}.bias", (H,)))
    return out


def merger_params(v: VisionTower, text_hidden: int) -> list[VisionParam]:
    from ftmem.vision import VisionParam

    H, M = v.hidden_size, v.hidden_size * v.merge_size**2
    out = [VisionParam(f"{MERGER}ln_q.weight", (H,))]
    if v.encoder == "qwen2_vl":
        out.append(VisionParam(f"{MERGER}ln_q.bias", (H,)))
    out += [
        VisionParam(f"{MERGER}mlp.0.weight", (M, M), linear=True),
        VisionParam(f"{MERGER}mlp.0.bias", (M,)),
        VisionParam(f"{MERGER}mlp.2.weight", (text_hidden, M), linear=True),
        VisionParam(f"{MERGER}mlp.2.bias", (text_hidden,)),
    ]
    return out


def window_lengths(v: VisionTower) -> list[int]:
    """The tokens of each attention window over one image (Qwen2.5-VL's windowed layers):
    windows of (window_size / merge / patch)² merge units tiled over the image's units,
    the last row and column cut short (transformers 5.24 vision_utils.py
    get_vision_window_index)."""
    side = v.image_size // v.patch_size // v.merge_size  # merge units per side
    ws = v.window_size // v.merge_size // v.patch_size
    if ws <= 0:
        return [v.patches]
    rows = [min(ws, side - r) for r in range(0, side, ws)]
    return [a * b * v.merge_size**2 for a in rows for b in rows]


def _attention_saved(v: VisionTower, images: int, e: int, eager: bool, full: bool) -> int:
    """One block's attention (n tokens): the fused qkv output that v, a view of it, keeps
    whole (3 n H e), the rotated q and k (n H e each, ``q_embed.to(orig dtype)``), the
    kernel's output and proj's input (its concatenation over the chunks); sdpa the fp32
    logsumexp, eager instead the fp32 softmax and its cast back per chunk (image or
    window), and no kernel output."""
    H, n = v.hidden_size, images * v.patches
    lengths = [v.patches] if full or v.encoder == "qwen2_vl" else window_lengths(v)
    if not eager:
        return 7 * n * H * e + n * v.num_heads * FP32
    probs = images * v.num_heads * sum(t * t for t in lengths)
    return 6 * n * H * e + probs * FP32 + (probs * e if e != FP32 else 0)


def _norm_parts(
    v: VisionTower, n: int, e: int, ln_stats: int, input_grad: bool = True
) -> tuple[int, ...]:
    """A block norm (its output, the next linear's input, counted by the caller).
    LayerNorm: its input and its mean and rstd (``ln_stats`` bytes each per row:
    dtypes.layer_norm_stats_bytes). Qwen2.5-VL's RMSNorm (fp32 steps):
    the input cast to fp32 (pow and mul keep it), rsqrt's output and the normalised x
    cast back that the weight's multiplication keeps; with no gradient for its input only
    that last one.

    As the allocator's requests, one per tensor: the LayerNorm's
    input, mean and rstd; the RMSNorm's fp32 input, rstd and cast back (measured on
    transformers' modules: tests/test_vision_norm_requests.py)."""
    H = v.hidden_size
    if v.encoder == "qwen2_vl":
        return layer_norm_saved_parts(n, H, e, ln_stats)
    if not input_grad:
        return (n * H * e,)
    return (n * H * FP32, n * FP32, n * H * e)


def saved_per_layer_parts(
    v: VisionTower,
    images: int,
    e: int,
    eager: bool,
    full: bool,
    autocast: bool = False,
    *,
    ln_stats: int,
) -> tuple[int, ...]:
    """One trained block: two norms and their outputs (qkv's and the MLP's input),
    attention, and the MLP: SwiGLU keeps the SiLU's input and output, up's output and
    their product (4 n I e), QuickGELU ``x * sigmoid(1.702 x)`` its input and the sigmoid
    and fc2 its output (3 n I e).

    ``autocast`` over fp32 weights: the stream stays 16-bit (no fp32 addend), but
    Qwen2.5-VL's RMSNorm returns its fp32 weight times the 16-bit normalised input, an
    fp32 output (transformers 5.25 qwen2_5_vl/modeling_qwen2_5_vl.py l.79), that gate and
    up each cast for themselves (l.96; no cache for a non-leaf: aten autocast_mode.h
    cached_cast): one more n H e (measured, the tiny Qwen2.5-VL full bf16-mixed); qkv is
    one linear. The weights' copies: vision_lora.trained_weight_copies.

    As the allocator's requests, in the block's order: each
    norm's tensors apart (:func:`_norm_parts`), the attention's items (qkv's input, the
    kernel's) and the MLP's (its input, or gate's and up's casts, and the activation's)
    each one request of their sum."""
    n, H = images * v.patches, v.hidden_size
    mlp = (4 if v.encoder == "qwen2_5_vl" else 3) * n * v.intermediate_size * e
    mlp_reads = 2 if autocast and v.encoder == "qwen2_5_vl" else 1
    norm = _norm_parts(v, n, e, ln_stats)
    attention = n * H * e + _attention_saved(v, images, e, eager, full)
    return (*norm, attention, *norm, mlp_reads * n * H * e + mlp)


def _input_grad_parts(
    v: VisionTower, images: int, e: int, eager: bool, full: bool, start: int, ln_stats: int
) -> tuple[int, ...]:
    """One frozen block that gradients pass through (LoRA on the tower:
    ftmem.vision_lora), its parts from ``start`` on (0: the block's input, 1: qkv, 2:
    proj, 3: the MLP's input linears, 4: its output linear): as :func:`saved_per_layer_parts`
    without what only the frozen weights' gradients need (the norms' outputs, proj's
    input, the MLP output linear's input): the norms for their input, attention's items
    but proj's input, SwiGLU's SiLU input and output and up's output (3 n I e),
    QuickGELU's input and sigmoid (2 n I e).

    As the allocator's requests: each norm's tensors
    apart (the RMSNorm's cast back left out: it is for the frozen weight's gradient), the
    attention's and the MLP's items one request each."""
    n = images * v.patches
    mlp = (3 if v.encoder == "qwen2_5_vl" else 2) * n * v.intermediate_size * e
    norm = _norm_parts(v, n, e, ln_stats)
    if v.encoder == "qwen2_5_vl":
        norm = norm[:2]
    attention = _attention_saved(v, images, e, eager, full)
    if not eager:
        attention -= n * v.hidden_size * e  # (proj's input, the chunks' concatenation)
    groups = (norm, (attention,), norm, (mlp,))
    return tuple(b for group in groups[start:] for b in group)


def lora_tower_parts(
    v: VisionTower, images: int, e: int, eager: bool, first: tuple[int, int], *, ln_stats: int
) -> tuple[int, ...]:
    """A frozen tower whose linears carry LoRA, not checkpointed: the rotary's cos and
    sin (kept by the first rotation of a q needing a gradient) and the blocks from the
    lowest adapted linear (``first``: its block and part) up; the patch embeddings need
    no gradient, so Qwen2.5-VL's window-order gather keeps no index.

    As the allocator's requests, block by block."""
    layer, start = first
    out = [rotary_tables(v, images) if layer < v.num_layers - 1 or start <= 1 else 0]
    for i in range(layer, v.num_layers):
        full = i in v.full_attention_layers
        out += _input_grad_parts(v, images, e, eager, full, start if i == layer else 0, ln_stats)
    return tuple(b for b in out if b)


def pixel_elements(v: VisionTower, images: int) -> int:
    """pixel_values: one row of C × temporal_patch × P² per patch (the processor tiles an
    image twice in time)."""
    return images * v.patches * v.num_channels * v.temporal_patch * v.patch_size**2


def rotary_tables(v: VisionTower, images: int) -> int:
    """The 2-D rotary's cos and sin: fp32, one row of head_dim per patch each."""
    return 2 * images * v.patches * (v.hidden_size // v.num_heads) * FP32


def tower_saved(
    v: VisionTower,
    images: int,
    e: int,
    eager: bool,
    checkpointed: bool,
    weights: bool = True,
    autocast: bool = False,
    *,
    ln_stats: int,
) -> int:
    """A trained tower (``autocast``: :func:`saved_per_layer_parts`): the pixels the Conv3d keeps (cast to the tower's dtype), the 2-D
    rotary's cos and sin (fp32, n × head_dim each, one pair shared by every block), and
    each block whole, or its input alone when checkpointed (the blocks are
    GradientCheckpointingLayers; cos and sin are then the checkpoint's arguments, not
    saved tensors: vision_step.pixel_input holds them). ``weights`` false: frozen but
    hooked by enable_input_require_grads (checkpointed only), no pixels. Qwen2.5-VL's window order is a gather whose backward
    keeps its int64 index (one per merge unit)."""
    parts = tower_parts(v, images, e, eager, checkpointed, weights, autocast, ln_stats=ln_stats)
    return sum(parts)


def tower_parts(
    v: VisionTower,
    images: int,
    e: int,
    eager: bool,
    checkpointed: bool,
    weights: bool = True,
    autocast: bool = False,
    *,
    ln_stats: int,
) -> tuple[int, ...]:
    """:func:`tower_saved` as the allocator's requests: the pixels, cos and sin, the
    window order's index, then block by block (:func:`saved_per_layer_parts`;
    checkpointed, each block's input)."""
    n = images * v.patches
    # (checkpointed blocks get cos and sin inside their position_embeddings tuple, which
    # the checkpoint keeps as an argument, saved by no autograd node: rotary_tables)
    # (the Conv3d keeps the pixels for its weight's gradient only: a frozen tower that
    # enable_input_require_grads hooked (patch_embed, its get_input_embeddings) keeps none)
    pixels = pixel_elements(v, images) * e if weights else 0
    out = [pixels, 0 if checkpointed else rotary_tables(v, images)]
    if v.encoder == "qwen2_5_vl":
        out.append(n // v.merge_size**2 * 8)
    for i in range(v.num_layers):
        full = i in v.full_attention_layers
        if checkpointed:
            out.append(n * v.hidden_size * e)
        else:
            out += saved_per_layer_parts(v, images, e, eager, full, autocast, ln_stats=ln_stats)
    return tuple(b for b in out if b)


def merger_parts(
    v: VisionTower, images: int, e: int, tower_trains: bool, *, ln_stats: int
) -> tuple[int, ...]:
    """The trained merger: ln_q (as a block's norm), its output that the first linear
    keeps, the GELU's input and output (n/4 rows of 4H: n H e each); Qwen2.5-VL's
    return to image order keeps its int64 index.

    As the allocator's requests, one per tensor (measured on
    transformers' PatchMerger modules, tests/test_vision_projector_requests.py)."""
    n = images * v.patches
    H = v.hidden_size
    norm = _norm_parts(v, n, e, ln_stats, input_grad=tower_trains)
    return (*norm, n * H * e, n * H * e, n * H * e, *_image_order_index(v, n))


def merger_input_grad_parts(
    v: VisionTower, images: int, e: int, *, ln_stats: int
) -> tuple[int, ...]:
    """A frozen merger passing its input's gradient to a hooked frozen tower: ln_q for its
    input alone (LayerNorm: its input, mean and rstd; RMSNorm: the fp32 input and
    rsqrt's output), the GELU's input (n/4 rows of 4H), and Qwen2.5-VL's return to image
    order its int64 index; the frozen linears keep nothing.

    As the allocator's requests, one per tensor."""
    n = images * v.patches
    H = v.hidden_size
    if v.encoder == "qwen2_vl":
        norm: tuple[int, ...] = layer_norm_saved_parts(n, H, e, ln_stats)
    else:
        norm = (n * H * FP32, n * FP32)
    return (*norm, n * H * e, *_image_order_index(v, n))


def _image_order_index(v: VisionTower, n: int) -> tuple[int, ...]:
    """Qwen2.5-VL's window order undone after the merger: its int64 index (n/4 rows)."""
    return (n // v.merge_size**2 * 8,) if v.encoder == "qwen2_5_vl" else ()


def frozen_forward(v: VisionTower, images: int, e: int) -> int:
    """The frozen tower's largest moment inside a block (measured,
    tests/accuracy/test_vision_qwen.py), beside the rotary's fp32 cos and sin and its
    int64 (h, w) position ids, and the block's input (the caller's loop keeps it):

    - attention (and norm1's output), at proj's output: the qkv output, the rotated q and k, the chunks'
      outputs, their concatenation and proj's output are all still referenced (8 n H e);
      in a 16-bit dtype, earlier, while k is rotated: qkv's output, q and k cast to fp32,
      q's fp32 rotation, and k × cos, rotate_half(k) × sin and their sum (fp32);
    - the MLP (and attention's residual sum, norm2's output): three intermediate-sized
      tensors (SwiGLU: the SiLU's output, up's and
      their product; QuickGELU: fc1's output, the sigmoid and the product).
    """
    n = images * v.patches
    H, I = v.hidden_size, v.intermediate_size
    head_dim = H // v.num_heads
    always = n * H * e + 2 * n * head_dim * FP32 + 2 * n * 8
    rotary = 3 * n * H * e + 4 * n * H * FP32 + (2 * n * H * FP32 if e != FP32 else 0)
    attention = n * H * e + max(8 * n * H * e, rotary)
    return always + max(attention, 2 * n * H * e + 3 * n * I * e)
