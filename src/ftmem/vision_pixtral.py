"""Mistral 3's vision tower (Pixtral) and projector (ftmem.vision dispatches here for the
``pixtral`` encoder): their parameters, the image tokens an image puts in the sequence,
and what a step keeps of their forward with images.

As transformers 5.24 builds them (models/pixtral/modeling_pixtral.py PixtralVisionModel,
models/mistral3/modeling_mistral3.py Mistral3MultiModalProjector), under
``model.vision_tower`` and ``model.multi_modal_projector``:

- a Conv2d patch embedding without bias and ``ln_pre`` (RMSNorm), then
  ``num_hidden_layers`` layers: ``attention_norm``, q/k/v/o_proj without biases (2-D
  rotary), ``ffn_norm`` and a SwiGLU ``feed_forward`` without biases;
- the projector: an RMSNorm over the vision width, the patch merger (each
  spatial_merge_size² neighbours unfolded into one row, ``merging_layer`` Linear(H·m², H)
  without bias), ``linear_1`` (H → text width), GELU, ``linear_2``, biases as
  ``multimodal_projector_bias`` says (False in Mistral-Small-3.1).

An image of the config's image_size is (image_size / patch / merge)² features; the
processor puts an [IMG_BREAK] after each row but the last, which ends with [IMG_END], so
its tokens in the sequence are rows × (columns + 1) (ftmem counts the [IMG_BREAK] and
[IMG_END] tokens in --seq-len with the [IMG] ones; only the [IMG] ones receive features).

The forward (transformers 5.24 modeling_pixtral.py PixtralVisionModel.forward, lines
404-462): every image of the step goes through patch_conv, and their patches are
concatenated into ONE sequence (``torch.cat([p.flatten(1).T ...]).unsqueeze(0)``, line
423) that the layers attend over with a dense block-diagonal mask of that sequence's
length squared in the compute dtype (generate_block_attention_mask, lines 360-374; flash
attention takes cu_seqlens instead, lines 438-451). The rotary's cos and sin are one row
of head_dim per patch in the compute dtype (PixtralVisionRotaryEmbedding.forward, line
85). Mistral 3 reads the last layer (modeling_mistral3.py get_image_features, line 211)
and its projector runs norm → patch merger (unfold, lines 92-104) → linear_1 → GELU →
linear_2 (lines 127-133). The sizes below are checked against PyTorch's saved tensors in
tests/accuracy/test_vision_pixtral.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem.dtypes import FP32

if TYPE_CHECKING:
    from ftmem.vision import FrozenPath, VisionParam, VisionTower

TOWER = "model.vision_tower."
PROJECTOR = "model.multi_modal_projector."


def tokens_per_image(image_size: int, patch_size: int, merge_size: int) -> int:
    side = image_size // patch_size // merge_size
    return side * (side + 1)


def features_per_image(v: VisionTower) -> int:
    """The [IMG] tokens of one image: its patches merged spatial_merge_size² into one."""
    return v.patches // v.merge_size**2


def tower_params(v: VisionTower) -> list[VisionParam]:
    from ftmem.vision import VisionParam

    H, I, C, P = v.hidden_size, v.intermediate_size, v.num_channels, v.patch_size
    out = [
        VisionParam(f"{TOWER}patch_conv.weight", (H, C, P, P)),
        VisionParam(f"{TOWER}ln_pre.weight", (H,)),
    ]
    for i in range(v.num_layers):
        layer = f"{TOWER}transformer.layers.{i}"
        out.append(VisionParam(f"{layer}.attention_norm.weight", (H,)))
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out.append(VisionParam(f"{layer}.attention.{proj}.weight", (H, H), linear=True))
        out.append(VisionParam(f"{layer}.ffn_norm.weight", (H,)))
        for proj in ("gate_proj", "up_proj"):
            out.append(VisionParam(f"{layer}.feed_forward.{proj}.weight", (I, H), linear=True))
        out.append(VisionParam(f"{layer}.feed_forward.down_proj.weight", (H, I), linear=True))
    return out


def projector_params(v: VisionTower, text_hidden: int) -> list[VisionParam]:
    from ftmem.vision import VisionParam

    H, T = v.hidden_size, text_hidden
    out = [
        VisionParam(f"{PROJECTOR}norm.weight", (H,)),
        VisionParam(
            f"{PROJECTOR}patch_merger.merging_layer.weight", (H, H * v.merge_size**2), linear=True
        ),
        VisionParam(f"{PROJECTOR}linear_1.weight", (T, H), linear=True),
    ]
    if v.projector_bias:
        out.append(VisionParam(f"{PROJECTOR}linear_1.bias", (T,)))
    out.append(VisionParam(f"{PROJECTOR}linear_2.weight", (T, T), linear=True))
    if v.projector_bias:
        out.append(VisionParam(f"{PROJECTOR}linear_2.bias", (T,)))
    return out


def _rms_parts(
    n: int, width: int, e: int, input_grad: bool = True, stream: int | None = None
) -> tuple[int, ...]:
    """PixtralRMSNorm / Mistral3RMSNorm (fp32 steps, modeling_pixtral.py lines 250-255):
    the input cast to fp32 that pow and the first mul keep, rsqrt's output, and the
    normalised x cast back (to the input's dtype, ``stream``: default ``e``; fp32 under
    autocast, where the fp32 stream is the input) that the weight's mul keeps; with no
    gradient for its input, only that last one.

    As the allocator's requests, one per tensor: the fp32 input,
    the rstd (one fp32 value a row) and the cast back (measured on PixtralRMSNorm,
    tests/test_vision_norm_requests.py)."""
    cast = n * width * (stream or e)
    return (n * width * FP32, n * FP32, cast) if input_grad else (cast,)


def mask_bytes(v: VisionTower, images: int, e: int) -> int:
    """The block-diagonal attention mask over all the step's patches as one sequence."""
    n = images * v.patches
    return n * n * e


def rotary_tables(v: VisionTower, images: int, e: int) -> int:
    """The 2-D rotary's cos and sin, in the compute dtype, one row of head_dim per patch."""
    return 2 * images * v.patches * (v.hidden_size // v.num_heads) * e


def saved_per_layer_parts(
    v: VisionTower, images: int, e: int, eager: bool, stream: int | None = None
) -> tuple[int, ...]:
    """One trained PixtralAttentionLayer (modeling_pixtral.py lines 269-299), n patches:

    - attention_norm and ffn_norm: each _rms_parts and its output, the next linears'
      shared input (n H e);
    - sdpa: the rotated q and k, v and the kernel's output (4 n H e; o_proj reads that
      output, reshaped without a copy), the fp32 logsumexp (n · heads · 4); the mask
      is shared by all layers (tower_saved counts it once); the rotary's muls keep cos
      and sin (shared too);
    - eager instead: q, k and v (3 n H e), the fp32 softmax over the whole sequence
      (heads · n², the other images' blocks masked, not skipped) and, in a 16-bit dtype,
      its cast back that the second matmul keeps, and o_proj's input (a contiguous copy);
    - the SwiGLU feed_forward: the activation's input, its output, up's output and their
      product (down's input): 4 n I e.

    Under autocast over fp32 weights (``stream`` fp32: lora_tower_parts) the norms keep
    the normalised x in fp32 and their outputs are fp32, which autocast casts for each
    linear reading them (no cache for a non-leaf: aten autocast_mode.h cached_cast): q,
    k and v keep three 16-bit casts, gate and up two (measured, the tiny Mistral 3 full
    bf16-mixed); the weights' copies: vision_lora.trained_weight_copies.

    As the allocator's requests, in the layer's order: each
    RMSNorm's tensors apart (:func:`_rms_parts`), the attention's items (the linears'
    inputs and the kernel's) and the MLP's (its linears' inputs, the SwiGLU's) each one
    request of their sum."""
    H, n = v.hidden_size, images * v.patches
    s = stream or e
    # (each linear its own cast of the norm's fp32 output, or one shared output)
    attention_reads, mlp_reads = (3, 2) if s != e else (1, 1)
    norm = _rms_parts(n, H, e, stream=s)
    if eager:
        probs = v.num_heads * n * n
        attention = 4 * n * H * e + probs * FP32 + (probs * e if e != FP32 else 0)
    else:
        attention = 4 * n * H * e + n * v.num_heads * FP32
    mlp = mlp_reads * n * H * e + 4 * n * v.intermediate_size * e
    return (*norm, attention_reads * n * H * e + attention, *norm, mlp)


def tower_parts(
    v: VisionTower,
    images: int,
    e: int,
    eager: bool,
    checkpointed: bool = False,
    weights: bool = True,
    stream: int | None = None,
) -> tuple[int, ...]:
    """A trained tower: the pixels patch_conv keeps (cast to the tower's dtype, lines 415-416),
    ln_pre (its output is layer 0's input, counted there), cos and sin, sdpa's mask
    (every layer's node keeps the same tensor; eager adds it to the logits and keeps
    nothing) and every layer (Mistral 3 reads the last).

    ``checkpointed``: the layers are GradientCheckpointingLayers (modeling_pixtral.py line
    261; transformers 5.24 modeling_layers.py lines 84-123 call
    ``checkpoint(partial(forward, self, **kwargs), *args)``), and PixtralTransformer passes
    the hidden states and the mask positionally (lines 332-336): torch's non-reentrant
    checkpoint saves those arguments for backward (NoopSaveInputs), so each layer keeps its
    input and the one mask, under eager too. ``position_embeddings`` is a keyword held by
    the partial, saved by no node: cos and sin are then held beside (pixel_input).
    ``weights`` false: a frozen tower hooked by enable_input_require_grads (its
    get_input_embeddings is patch_conv, line 392), checkpointed only: no pixels, and
    ln_pre keeps only its input gradient's fp32 input and rsqrt (its frozen weight's mul
    keeps the weight alone).

    ``stream``: the residual stream's bytes per element (default ``e``; fp32 under
    autocast over fp32 weights: lora_tower_parts). Checkpointed, the layers' inputs and
    the mask are kept in it; otherwise cos and sin are, and each layer's sdpa keeps its
    own 16-bit cast of the mask (measured, full and LoRA bf16-mixed, checkpointed or
    not).

    As the allocator's requests: the pixels, ln_pre's tensors
    apart, the rotary tables and masks, then layer by layer (:func:`saved_per_layer_parts`;
    checkpointed, each layer's input)."""
    n, H = images * v.patches, v.hidden_size
    pixels = images * v.num_channels * v.image_size**2 * e if weights else 0
    # (a frozen weight's mul keeps the weight alone: the fp32 input and rsqrt)
    ln_pre = _rms_parts(n, H, e) if weights else _rms_parts(n, H, e)[:2]
    s = stream or e
    if checkpointed:
        out = (pixels, *ln_pre, mask_bytes(v, images, s), *(n * H * s,) * v.num_layers)
        return tuple(b for b in out if b)
    if not weights:
        raise ValueError("a frozen tower passes input gradients only under checkpointing")
    masks = 0 if eager else (v.num_layers if s != e else 1)
    layer = saved_per_layer_parts(v, images, e, eager, s)
    out = (
        pixels,
        *ln_pre,
        rotary_tables(v, images, s),
        *(mask_bytes(v, images, e),) * masks,
        *layer * v.num_layers,
    )
    return tuple(b for b in out if b)


def lora_tower_parts(
    v: VisionTower,
    images: int,
    e: int,
    eager: bool,
    first: tuple[int, int],
    path: FrozenPath | None = None,
) -> tuple[int, ...]:
    """A frozen tower whose linears carry LoRA (ftmem.vision_lora), from the lowest
    adapted linear (``first``: its layer and part, 1 q/k/v, 2 o_proj, 3 gate/up, 4 down)
    up: per layer as :func:`saved_per_layer_parts` without what only the frozen weights'
    gradients need (the norms' casts back and outputs, the SwiGLU product): the norms'
    fp32 input and rsqrt, sdpa's items (eager: no o_proj copy), SiLU's input and output
    and up's output (3 n I e); and, shared, cos and sin and sdpa's mask.

    Under autocast over fp32 weights (``path.stream`` fp32, ftmem.vision.FrozenPath)
    ln_pre's fp32 weight promotes its 16-bit input (``self.weight *
    hidden_states.to(input_dtype)``, transformers 5.25 pixtral/modeling_pixtral.py l.255),
    so the stream, and with it cos and sin (``.to(x.dtype)``, l.85) and the block mask
    (generate_block_attention_mask takes the stream's dtype, l.360-365, l.453-455), are
    fp32. The rotary's muls keep the fp32 tables; autocast casts sdpa's fp32 mask to the
    16-bit dtype at every call (no cache for a tensor needing no gradient: aten
    autocast_mode.h cached_cast), so each layer's node keeps its own cast (n² e) and none
    keeps the fp32 mask (measured: tests/accuracy/cases.py _tower_autocast).

    As the allocator's requests: cos and sin, the masks, then
    layer by layer each RMSNorm's fp32 input and rsqrt apart (:func:`_rms_parts`), the
    attention's and the SwiGLU's items one request each."""
    from ftmem.vision import FrozenPath  # (ftmem.vision imports this module)

    path = path or FrozenPath.uniform(e)
    layer, start = first
    H, n = v.hidden_size, images * v.patches
    if eager:
        probs = v.num_heads * n * n
        attention = 3 * n * H * e + probs * FP32 + (probs * e if e != FP32 else 0)
    else:
        attention = 4 * n * H * e + n * v.num_heads * FP32
    norm = _rms_parts(n, H, e)[:2]  # (the cast back is for the frozen weight's gradient)
    groups = (norm, (attention,), norm, (3 * n * v.intermediate_size * e,))
    # (one mask for all layers; its 16-bit cast per layer with a node where autocast casts)
    masks = 0 if eager else (v.num_layers - layer if path.stream != path.compute else 1)
    out = [rotary_tables(v, images, path.stream), *(mask_bytes(v, images, e),) * masks]
    for i in range(layer, v.num_layers):
        out += [b for group in groups[start if i == layer else 0 :] for b in group]
    return tuple(out)


def projector_parts(
    v: VisionTower,
    text_hidden: int,
    images: int,
    e: int,
    tower_trains: bool,
    stream: int | None = None,
) -> tuple[int, ...]:
    """The trained projector (modeling_mistral3.py lines 84-133): its norm (its input's
    fp32 cast and rsqrt only when the tower trains; the normalised x in the ``stream``'s
    dtype, fp32 under autocast: :func:`_rms_parts`), the patch merger's linear input
    (the unfolded rows concatenated: n H e in all; unfold's backward needs nothing),
    linear_1's input (tokens × H), the GELU's input and linear_2's input (tokens × T
    each).

    As the allocator's requests, one per tensor (measured on
    transformers' Mistral3MultiModalProjector, tests/test_vision_projector_requests.py)."""
    n = images * v.patches
    tokens = images * features_per_image(v)
    H = v.hidden_size
    norm = _rms_parts(n, H, e, input_grad=tower_trains, stream=stream)
    linears = (tokens * text_hidden * e, tokens * text_hidden * e)
    return (*norm, n * H * e, tokens * H * e, *linears)


def layer_backward(v: VisionTower, images: int, e: int, eager: bool, weights: bool) -> int:
    """A checkpointed layer's backward (measured in tests/accuracy/test_vision_pixtral.py):
    its recompute rebuilds what it saves (``weights`` false, a hooked frozen layer: only
    what input gradients need), then its largest moment, of two:

    - in the SwiGLU: the whole recompute and three n I e gradients (down_proj's input
      gradient, and from it the activation's and up's);
    - eager: the softmax's backward, past the feed-forward and the 16-bit cast of the
      probabilities (each node frees its saved tensors): attention_norm, q, k, v (and
      o_proj's input when it trains), the fp32 probabilities and two fp32 gradients of
      their size (the softmax's incoming and outgoing).

    In fp32 attention_norm's ``to(float32)`` is the layer's input itself, which the
    checkpoint keeps: not rebuilt.
    """
    H, n, I = v.hidden_size, images * v.patches, v.intermediate_size
    norm = sum(_rms_parts(n, H, e)) + n * H * e if weights else n * H * FP32 + n * FP32
    probs = v.num_heads * n * n
    if eager:
        attention = 3 * n * H * e + probs * FP32 + (n * H * e if weights else 0)
        cast = probs * e if e != FP32 else 0
    else:
        attention, cast = 4 * n * H * e + n * v.num_heads * FP32, 0
    # (fp32: attention_norm's fp32 input is the layer's input, the checkpoint's own)
    reused = n * H * FP32 if e == FP32 else 0
    whole = 2 * norm + attention + cast + (4 if weights else 3) * n * I * e - reused
    in_softmax = norm + attention + 2 * probs * FP32 - reused if eager else 0
    return max(whole + 3 * n * I * e, in_softmax)


def projector_input_grad_parts(
    v: VisionTower, text_hidden: int, images: int, e: int
) -> tuple[int, ...]:
    """The frozen projector passing its input's gradient to a hooked frozen tower: its
    RMSNorm the fp32 input and rsqrt's output (its frozen weight's mul keeps the weight
    alone), the GELU's input (tokens × T); the patch merger's view, permute, unfold and
    cat keep nothing, and the frozen linears need only their weights.

    As the allocator's requests, one per tensor."""
    n = images * v.patches
    tokens = images * features_per_image(v)
    return (n * v.hidden_size * FP32, n * FP32, tokens * text_hidden * e)


def frozen_forward(v: VisionTower, images: int, e: int) -> int:
    """The frozen tower's largest moment (sdpa, measured in
    tests/accuracy/test_vision_pixtral.py), beside the mask, cos and sin and the int64
    (h, w) position ids that live through the whole forward. Always alive: patch_conv's
    output (patch_embeds_list's views of it, line 417), ln_pre's output (the caller's
    ``patch_embeds`` and the transformer's ``inputs_embeds``) and the layer's input; in
    attention eight more hidden-sized tensors at its largest (11 n H e measured), in
    the feed-forward the residual sum, ffn_norm's output and three intermediate-sized
    tensors (the activation's output, up's and their product)."""
    n = images * v.patches
    H, I = v.hidden_size, v.intermediate_size
    always = mask_bytes(v, images, e) + rotary_tables(v, images, e) + 2 * n * 8
    attention = 11 * n * H * e
    mlp = 5 * n * H * e + 3 * n * I * e
    return always + max(attention, mlp)
