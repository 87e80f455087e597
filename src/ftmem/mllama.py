"""Llama-3.2-Vision (transformers 5.24 models/mllama/modeling_mllama.py,
MllamaForConditionalGeneration): its tiled vision model, its projector and the text
model's cross-attention layers, as plain data beside the language model's Architecture.

- MllamaVisionModel: each image is ``max_num_tiles`` tiles of ``image_size`` pixels (the
  image processor pads every image to that many tiles: image_processing_mllama.py
  ``pad_batches_and_tiles``); a tile is a CLS token and (image_size / patch)² patches,
  padded to a multiple of 8 inside the encoders. A local transformer (num_hidden_layers
  CLIP-like layers, no attention biases) runs per tile, a gated global transformer
  (num_global_layers, tanh gates on attention and MLP) over an image's tiles at once; the
  output is the global one's last state concatenated with the local layers'
  ``intermediate_layers_indices`` states (vision_output_dim = H × (1 + indices)).
- multi_modal_projector: one nn.Linear (vision_output_dim → text hidden, with bias).
- MllamaTextModel: ``num_hidden_layers`` layers of which those listed in
  ``cross_attention_layers`` are MllamaCrossAttentionDecoderLayer (q/k/v/o, per-head q/k
  RMSNorms, no rotary, tanh gates after attention and the MLP, no self-attention). The
  Architecture's blocks are the self-attention layers only: a cross-attention layer is
  skipped in a text-only forward (MllamaTextModel.forward ``continue``), and over images its
  keys and values are the image tokens, so it is sized here. embed_tokens holds vocab + 8
  rows (the image token), lm_head vocab rows.
"""

from __future__ import annotations

from ftmem.dtypes import FP32, layer_norm_saved_parts
from ftmem.validation import Model, PositiveInt, field_validator


class MllamaParts(Model, strict=True):
    """What Llama-3.2-Vision adds to its VisionTower (hidden/intermediate/layers/heads/
    image/patch there are the local transformer's)."""

    global_layers: PositiveInt
    max_num_tiles: PositiveInt
    aspect_ratios: PositiveInt  # len(supported_aspect_ratios): max_aspect_ratio_id
    intermediate_layers: tuple[int, ...]
    output_dim: PositiveInt  # vision_output_dim
    cross_layers: tuple[int, ...]  # the text model's cross_attention_layers
    text_heads: PositiveInt
    text_kv_heads: PositiveInt
    text_head_dim: PositiveInt
    text_intermediate: PositiveInt

    @field_validator("intermediate_layers", "cross_layers", mode="before")
    @classmethod
    def _listed(cls, value: object) -> object:
        """A preset's YAML lists them (strict mode takes only tuples); indices only."""
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple) and not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1000 for i in value
        ):
            raise ValueError("layer indices must be integers from 0 to 999")
        return value


def tile_tokens(v) -> int:
    """A tile's tokens: its CLS token and patches (num_patches in transformers)."""
    return (v.image_size // v.patch_size) ** 2 + 1


def padded_tile_tokens(v) -> int:
    """A tile's tokens inside the encoders, padded to a multiple of 8 (``F.pad``)."""
    t = tile_tokens(v)
    return t + (8 - t % 8) % 8


def image_states(v) -> int:
    """The cross-attention keys' and values' tokens one image gives: tiles × (patches + 1)."""
    return v.mllama.max_num_tiles * tile_tokens(v)


def tower_params(v) -> list:
    """MllamaVisionModel's tensors under ``model.vision_model`` (transformers 5.24
    modeling_mllama.py MllamaVisionModel.__init__, MllamaPrecomputed*Embedding,
    MllamaVisionEncoderLayer)."""
    from ftmem.vision import VisionParam

    m: MllamaParts = v.mllama
    H, I, C, P = v.hidden_size, v.intermediate_size, v.num_channels, v.patch_size
    T, rows, t = m.max_num_tiles, m.aspect_ratios + 1, tile_tokens(v)
    pre = "model.vision_model"
    out = [
        VisionParam(f"{pre}.patch_embedding.weight", (H, C, P, P)),
        VisionParam(f"{pre}.class_embedding", (H,)),
        VisionParam(f"{pre}.gated_positional_embedding.gate", (1,)),
        VisionParam(f"{pre}.gated_positional_embedding.embedding", (t, H)),
        VisionParam(f"{pre}.gated_positional_embedding.tile_embedding.weight", (rows, T * t * H)),
    ]
    for tile in ("pre", "post"):
        out.append(VisionParam(f"{pre}.{tile}_tile_positional_embedding.gate", (1,)))
        out.append(
            VisionParam(f"{pre}.{tile}_tile_positional_embedding.embedding.weight", (rows, T * H))
        )
    for norm in ("layernorm_pre", "layernorm_post"):
        out += [VisionParam(f"{pre}.{norm}.{w}", (H,)) for w in ("weight", "bias")]
    for stack, count in (("transformer", v.num_layers), ("global_transformer", m.global_layers)):
        for i in range(count):
            layer = f"{pre}.{stack}.layers.{i}"
            if stack == "global_transformer":
                out += [VisionParam(f"{layer}.{g}", (1,)) for g in ("gate_attn", "gate_ffn")]
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                out.append(VisionParam(f"{layer}.self_attn.{proj}.weight", (H, H), linear=True))
            out += [
                VisionParam(f"{layer}.mlp.fc1.weight", (I, H), linear=True),
                VisionParam(f"{layer}.mlp.fc1.bias", (I,)),
                VisionParam(f"{layer}.mlp.fc2.weight", (H, I), linear=True),
                VisionParam(f"{layer}.mlp.fc2.bias", (H,)),
            ]
            for norm in ("input_layernorm", "post_attention_layernorm"):
                out += [VisionParam(f"{layer}.{norm}.{w}", (H,)) for w in ("weight", "bias")]
    return out


def projector_params(v, text_hidden: int) -> list:
    """``multi_modal_projector = nn.Linear(vision_output_dim, text hidden, bias=True)``."""
    from ftmem.vision import VisionParam

    pre = "model.multi_modal_projector"
    return [
        VisionParam(f"{pre}.weight", (text_hidden, v.mllama.output_dim), linear=True),
        VisionParam(f"{pre}.bias", (text_hidden,)),
    ]


def cross_layer_params(v, text_hidden: int) -> list:
    """The text model's cross-attention layers (MllamaCrossAttentionDecoderLayer): q/k/v/o
    without biases, q_norm/k_norm over head_dim, the two tanh gates, the two RMSNorms and
    the gated MLP, under ``model.language_model.layers.{i}``."""
    from ftmem.vision import VisionParam

    m: MllamaParts = v.mllama
    h, d, ffn = text_hidden, m.text_head_dim, m.text_intermediate
    q, kv = m.text_heads * d, m.text_kv_heads * d
    out = []
    for i in m.cross_layers:
        layer = f"{CROSS_PREFIX}{i}"
        out += [
            VisionParam(f"{layer}.cross_attn_attn_gate", (1,)),
            VisionParam(f"{layer}.cross_attn_mlp_gate", (1,)),
            VisionParam(f"{layer}.cross_attn.q_proj.weight", (q, h), linear=True),
            VisionParam(f"{layer}.cross_attn.k_proj.weight", (kv, h), linear=True),
            VisionParam(f"{layer}.cross_attn.v_proj.weight", (kv, h), linear=True),
            VisionParam(f"{layer}.cross_attn.o_proj.weight", (h, q), linear=True),
            VisionParam(f"{layer}.cross_attn.q_norm.weight", (d,)),
            VisionParam(f"{layer}.cross_attn.k_norm.weight", (d,)),
            VisionParam(f"{layer}.input_layernorm.weight", (h,)),
            VisionParam(f"{layer}.post_attention_layernorm.weight", (h,)),
            VisionParam(f"{layer}.mlp.gate_proj.weight", (ffn, h), linear=True),
            VisionParam(f"{layer}.mlp.up_proj.weight", (ffn, h), linear=True),
            VisionParam(f"{layer}.mlp.down_proj.weight", (h, ffn), linear=True),
        ]
    return out


CROSS_PREFIX = "model.language_model.layers."


def cross_layer_count(v, text_hidden: int) -> int:
    return sum(p.numel for p in cross_layer_params(v, text_hidden))


def pixel_bytes(v, images: int) -> int:
    """pixel_values: (batch, images, max_num_tiles, channels, size, size) in fp32, as
    the image processor returns them (``torch.zeros(..., dtype=torch.float32)``)."""
    return images * v.mllama.max_num_tiles * v.num_channels * v.image_size**2 * FP32


def tower_saved(
    v,
    images: int,
    e: int,
    weights: bool,
    eager: bool = False,
    autocast: bool = False,
    fp32_linears: bool = False,
    *,
    ln_stats: int,
) -> int:
    """What MllamaVisionModel keeps for backward over ``images`` images (transformers
    5.24 MllamaVisionModel.forward, MllamaVisionEncoderLayer.forward), with a gradient
    reaching its input: its weights train (``weights``), or, frozen, transformers'
    enable_input_require_grads (gradient checkpointing, adapters) hooks its
    get_input_embeddings, the patch convolution, so that every layer above passes input
    gradients. Both encoders run over an image's tiles at once: N = images × tiles ×
    padded tile tokens, L = tiles × padded tokens. Per layer: two LayerNorms; the
    attention's items (:func:`_attention_saved`; sdpa's mask, kept once, is
    :func:`tower_mask`); the exact GELU's input; with trained weights also the q/k/v and
    fc1 inputs (the norms' outputs) and fc2's (the GELU's output), and in the global
    layers the two tanh gates' operands (attention and MLP outputs). Outside the layers:
    layernorm_pre (over the unpadded tokens) and layernorm_post; trained, the patch
    convolution's pixels (cast to the compute dtype) and the gated tile and position
    embeddings' lookups the gates multiply.

    ``autocast``: the fp32 weights keep the residual stream in fp32 (each layer adds its
    16-bit o_proj and fc2 outputs to the fp32 embeddings), and autocast runs layer_norm
    in fp32, so every LayerNorm keeps an fp32 input; the gates' tanh is fp32 (in the
    weights' dtype). Trained weights then keep one 16-bit cast of the fp32 norm output
    per linear, q, k and v each their own (autocast casts a tensor that is no leaf at
    every call: torch aten/src/ATen/autocast_mode.h cached_cast), and the gated tile and
    position lookups stay fp32 (fp32 embeddings times fp32 gates). Autocast's 16-bit
    weight copies are mllama_step.autocast_copies'. ``fp32_linears``: bitsandbytes'
    4-bit linears answer in their input's dtype (precision.Dtypes.four_bit_outputs_fp32),
    so fc1's output, the GELU's input, stays fp32."""
    parts = tower_parts(v, images, e, weights, eager, autocast, fp32_linears, ln_stats=ln_stats)
    return sum(parts)


def tower_parts(
    v,
    images: int,
    e: int,
    weights: bool,
    eager: bool = False,
    autocast: bool = False,
    fp32_linears: bool = False,
    *,
    ln_stats: int,
) -> tuple[int, ...]:
    """:func:`tower_saved` as the allocator's requests, in the forward's order: the
    pixels and the gated lookups, layernorm_pre, the local layers, layernorm_post, the
    global layers; each LayerNorm's input, mean and rstd apart
    (dtypes.layer_norm_saved_parts, measured on the CPU: tests/test_vision_norm_requests.py),
    a layer's attention items, its MLP's and a global layer's gates one request each."""
    m: MllamaParts = v.mllama
    H, I = v.hidden_size, v.intermediate_size
    tiles = m.max_num_tiles
    t, tp = tile_tokens(v), padded_tile_tokens(v)
    N = images * tiles * tp
    stream = FP32 if autocast else e  # (the LayerNorms' inputs)
    stats = FP32 if autocast else ln_stats  # an fp32 input's statistics are fp32
    norm = layer_norm_saved_parts(N, H, stream, stats)
    attention = _attention_saved(v, images, e, weights, eager)
    mlp = N * I * (FP32 if fp32_linears else e)
    gated = 2 * (FP32 if autocast else e)  # the tanh of each gate, which h's gradient reads
    pixels = tile_lookups = 0
    if weights:
        # q/k/v's inputs (one shared norm output, or under autocast each linear's own
        # cast of the fp32 one), fc1's and fc2's
        attention += (3 if autocast else 1) * N * H * e
        mlp += N * H * e + N * I * e
        gated += 2 * N * H * e
        pixels = images * tiles * v.num_channels * v.image_size**2 * e
        lookup = FP32 if autocast else e
        tile_lookups = (2 * images * tiles * H + images * tiles * t * H) * lookup
    layer = (*norm, attention, *norm, mlp)
    out = (
        pixels,
        tile_lookups,
        *layer_norm_saved_parts(images * tiles * t, H, stream, stats),
        *layer * v.num_layers,
        *norm,
        *(*layer, gated) * m.global_layers,
    )
    return tuple(b for b in out if b)


def _attention_saved(v, images: int, e: int, weights: bool, eager: bool) -> int:
    """One vision layer's attention (MllamaVisionAttention.forward) over N tokens in
    sequences of L: sdpa keeps q, k, v, its output (o_proj's input too) and the fp32
    logsumexp (images × heads × L). Eager (eager_attention_forward) keeps what its two
    matmuls fold into 3-D batches: torch.matmul reshapes the heads-transposed q, kᵀ and
    v into contiguous copies (3 N H e), the fp32 softmax (images × heads × L² × 4) and,
    in a 16-bit dtype, its cast back (the second matmul's operand; in fp32 the cast is
    the softmax itself), and with trained weights o_proj's input, the output made
    contiguous by ``transpose(1, 2).contiguous()`` (N H e); no mask (added, not kept)."""
    H, heads = v.hidden_size, v.num_heads
    L = v.mllama.max_num_tiles * padded_tile_tokens(v)
    N = images * L
    if not eager:
        return 4 * N * H * e + images * heads * L * FP32
    probs = images * heads * L * L
    return (
        3 * N * H * e
        + probs * FP32
        + (probs * e if e != FP32 else 0)
        + (N * H * e if weights else 0)
    )


def tower_mask(v, images: int, e: int) -> int:
    """The encoders' (images, 1, L, L) aspect-ratio attention mask in the compute dtype
    (_prepare_aspect_ratio_attention_mask), one tensor every layer's sdpa keeps."""
    L = v.mllama.max_num_tiles * padded_tile_tokens(v)
    return images * L * L * e


def frozen_forward(v, images: int, e: int, score_bytes: int = 0) -> int:
    """The frozen vision model's forward (nothing needs a gradient): its largest moment,
    derived from MllamaVisionModel.forward. Both encoders return every layer's output
    (MllamaVisionEncoder.forward's ``encoder_states``) and the forward keeps the local
    one's until it stacks the intermediate layers, so the moment grows to its end: the
    aspect-ratio mask, the local and global layers' outputs (N tokens each, padded), the
    stacked intermediate states, their unpadded copy, the last state's unpadded copy and
    the concatenation (vision_output_dim wide); or, if larger, inside the last local
    layer's MLP (the outputs so far, its input norm's output, fc1's and the GELU's
    outputs). Eager attention (``score_bytes`` per score: :func:`ftmem.dtypes.eager_score_bytes`):
    inside the last layer's softmax, beside the layers' outputs, its norm's output and
    q, k and v (measured on the CPU: tests/test_mllama.py)."""
    m: MllamaParts = v.mllama
    H, I = v.hidden_size, v.intermediate_size
    tiles = m.max_num_tiles
    N = images * tiles * padded_tile_tokens(v)
    n = images * tiles * tile_tokens(v)
    k = len(m.intermediate_layers)
    layers = v.num_layers + m.global_layers
    end = layers * N * H + k * N * H + k * n * H + n * H
    end += n * m.output_dim
    mlp = (v.num_layers + 1) * N * H + N * H + 2 * N * I
    scores = (layers + 4) * N * H * e + scores_per_layer(v, images) * score_bytes
    return tower_mask(v, images, e) + max(max(end, mlp) * e, scores if score_bytes else 0)


def scores_per_layer(v, images: int) -> int:
    """One vision layer's attention scores: images × heads × L², L = tiles × padded tokens."""
    L = v.mllama.max_num_tiles * padded_tile_tokens(v)
    return images * v.num_heads * L * L
