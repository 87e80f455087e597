"""The vision tower and projector of an image-text model (LLaVA, Gemma 3; Qwen-VL in
ftmem.vision_qwen, Mistral 3's Pixtral in ftmem.vision_pixtral): their
parameters, the image tokens they put in the sequence, and what a step keeps of them.

A :class:`VisionTower` is plain data beside the language model's Architecture
(``Architecture.vision``). Two encoders and two projectors are modelled, as transformers
5.24 builds them:

- LLaVA (models/llava/modeling_llava.py): ``AutoModel.from_config(vision_config)``, a
  CLIPVisionModel with *every* layer built and run; ``get_image_features`` takes
  ``hidden_states[vision_feature_layer]`` (-2: the second to last layer's output), drops
  the CLS token under the "default" strategy, and LlavaMultiModalProjector (linear_1,
  GELU, linear_2) maps it to the text width. The layers after the selected one run, but
  their output is dropped, so they keep nothing for backward.
- Gemma 3 (models/gemma3/modeling_gemma3.py): a SiglipVisionModel (no pooling head:
  ``vision_use_head`` false) whose last_hidden_state (after post_layernorm) goes through
  Gemma3MultiModalProjector: an average pool to ``mm_tokens_per_image`` tokens, an RMSNorm
  (Gemma's fp32 (1 + w) form) and a matmul with ``mm_input_projection_weight``.

The sizes of what a trained tower saves are derived from those modules' autograd nodes
(listed in :func:`saved_per_layer_parts`) and checked against PyTorch's saved tensors in
tests/accuracy/test_vision.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ftmem import limits, mllama, vision_pixtral, vision_qwen
from ftmem.dtypes import FP32, layer_norm_saved_parts
from ftmem.errors import InvalidInputError
from ftmem.mllama import MllamaParts
from ftmem.validation import Field, Model, PositiveInt, model_validator

if TYPE_CHECKING:
    from ftmem.arch import ParamKind
    from ftmem.dtypes import StorageFormat

# (tiled: Llama-3.2-Vision's encoder over image tiles, ftmem.mllama)
Encoder = Literal["clip", "siglip", "tiled", "qwen2_vl", "qwen2_5_vl", "pixtral"]
# LLaVA's two linears around a GELU; Gemma 3's pooling, RMSNorm and one matrix;
# Llama-3.2-Vision's one linear; Qwen-VL's patch merger (ftmem.vision_qwen); Mistral 3's
# norm, patch merger and MLP (ftmem.vision_pixtral)
Projector = Literal["mlp", "pooled", "linear", "merger", "mistral3"]
# How a run treats the tower and the projector (RunConfig.vision_tower / .projector)
Training = Literal["frozen", "full"]


class VisionTower(Model, strict=True):
    """A vision encoder and the projector to the language model's width."""

    encoder: Encoder
    hidden_size: PositiveInt
    intermediate_size: PositiveInt
    num_layers: PositiveInt
    num_heads: PositiveInt
    image_size: PositiveInt
    patch_size: PositiveInt
    num_channels: PositiveInt = 3
    projector: Projector
    projector_bias: bool = Field(True, description="LLaVA: multimodal_projector_bias.")
    feature_layer: int = Field(
        -1,
        description="The hidden state the projector reads (LLaVA's vision_feature_layer: "
        "0 is the embeddings' output, -1 the last layer's, -2 the one before).",
    )
    drop_cls: bool = Field(
        False, description="LLaVA's 'default' feature strategy: the CLS token is dropped."
    )
    tokens_per_image: PositiveInt = Field(
        description="Image tokens one image puts in the language model's sequence."
    )
    mllama: MllamaParts | None = Field(
        None, description="Llama-3.2-Vision's tiles, global encoder and cross-attention layers."
    )
    # Qwen-VL (ftmem.vision_qwen): image_size is a square image's side after the
    # processor's resize (a multiple of patch_size × merge_size)
    merge_size: PositiveInt = Field(1, description="Qwen-VL: spatial_merge_size.")
    temporal_patch: PositiveInt = Field(1, description="Qwen-VL: temporal_patch_size.")
    window_size: int = Field(0, description="Qwen2.5-VL: window_size in pixels (0: none).")
    full_attention_layers: tuple[int, ...] = Field(
        (),
        strict=False,  # (a preset's YAML list)
        description="Qwen2.5-VL: fullatt_block_indexes (the others attend per window).",
    )
    min_pixels: int = Field(0, description="Qwen-VL: the processor's resize bounds.")
    max_pixels: int = Field(0, description="Qwen-VL: the processor's resize bounds.")

    @model_validator(mode="after")
    def _physical(self) -> None:
        """Each count within its physical bound (ftmem.limits) before any arithmetic, the
        heads dividing the width, and every layer index naming a layer."""
        bounds = {
            "hidden_size": limits.WIDTH,
            "intermediate_size": limits.WIDTH,
            "num_layers": limits.LAYERS,
            "num_heads": limits.WIDTH,
            "num_channels": limits.WIDTH,
            "image_size": limits.PIXELS,
            "patch_size": limits.PIXELS,
            "tokens_per_image": limits.TOKENS,
            "merge_size": limits.WIDTH,
            "temporal_patch": limits.WIDTH,
            "window_size": limits.PIXELS,
        }
        for name, bound in bounds.items():
            problem = bound.problem(name, getattr(self, name))
            if problem:
                raise ValueError(problem)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a whole number of its "
                f"{self.num_heads} heads"
            )
        if any(not 0 <= i < self.num_layers for i in self.full_attention_layers):
            raise ValueError(f"a full-attention layer index is not one of its {self.num_layers}")
        if not -self.num_layers - 1 <= self.feature_layer <= self.num_layers:
            raise ValueError(f"feature layer {self.feature_layer} is not one of its hidden states")

    @property
    def qwen(self) -> bool:
        return self.encoder in ("qwen2_vl", "qwen2_5_vl")

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tower_tokens(self) -> int:
        """Tokens each image is inside the encoder (CLIP adds its CLS token; Qwen-VL's are
        its patches)."""
        return self.patches + (1 if self.encoder == "clip" else 0)

    @property
    def layers_kept(self) -> int:
        """The encoder layers whose output reaches the projector (the others run, and their
        output is dropped): all of them for Gemma 3, L - 1 for LLaVA's -2."""
        fl = self.feature_layer
        return self.num_layers + 1 + fl if fl < 0 else fl


@dataclass(frozen=True, slots=True)
class VisionParam:
    name: str
    shape: tuple[int, ...]
    linear: bool = False  # an nn.Linear weight (peft's all-linear reaches it)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def param_kind(p: VisionParam, linear_modules: frozenset[str]) -> ParamKind:
    """How a quantised base stores a tower's, projector's or cross-attention layer's
    tensor: an nn.Linear's weight (``linear``), its bias (``linear_bias``: the bias of a
    module in ``linear_modules``, the modules of the ``linear`` weights, LLaVA's
    projector linear_1/linear_2 included), anything else (``norm``: convolutions,
    embeddings, norms, Gemma 3's bare projection matrix, gates)."""
    if p.linear:
        return "linear"
    if p.name.endswith(".bias") and p.name.removesuffix(".bias") in linear_modules:
        return "linear_bias"
    return "norm"


def linear_modules(params: list[VisionParam]) -> frozenset[str]:
    return frozenset(p.name.removesuffix(".weight") for p in params if p.linear)


def stored_format(p: VisionParam, kind: ParamKind, dtypes, run, base_format) -> StorageFormat:
    """``p``'s storage under the run (``base_format``: methods._base_format). Every
    nn.Linear outside the language model's blocks is 4-bit under a bitsandbytes base:
    transformers 5.24 replaces each ``type(module) is nn.Linear`` whose name no skip
    pattern matches (integrations/bitsandbytes.py replace_with_bnb_linear l.184-189,
    quantizers/quantizers_utils.py should_convert_module l.26-37), and the default
    skips name only the LM head and the token embeddings (quantizers/base.py
    get_keys_to_not_convert l.39-63: tied weights, the last parameter, the output
    embedding; get_modules_to_not_convert l.261-280, called by quantizer_bnb_4bit.py
    l.121-123, adds ``_keep_in_fp32_modules``, which LLaVA, Gemma 3, Qwen2-VL,
    Qwen2.5-VL, Mistral 3, Mllama, CLIP, SigLIP and Pixtral leave unset). TRL
    (trl/trainer/utils.py get_quantization_config l.235-251 @f2cd5771), LLaMA-Factory
    (model/model_utils/quantization.py l.182-190 @ff6d4d12) and axolotl
    (loaders/model.py l.712-737 @067b021c: only Falcon-H1's out_proj and Jamba's mamba)
    pass no llm_int8_skip_modules for them. A 4-bit linear's bias is cast
    in place to the compute dtype by its first forward (bitsandbytes@0.50.2
    nn/modules.py Linear4bit.forward l.630-635): without images the tower, the
    projector and the cross-attention layers never run, and their biases stay in the
    base dtype."""
    from ftmem.arch import Param

    fmt: StorageFormat = base_format(Param(p.name, p.shape, kind, ("q",)), dtypes, frozenset())
    if kind == "linear_bias" and not run.images:
        return dtypes.base
    return fmt


def tower_params(v: VisionTower) -> list[VisionParam]:
    """The encoder's tensors as transformers 5.24 names them (CLIPVisionModel and
    SiglipVisionModel under ``model.vision_tower``): patch and position embeddings
    (CLIP: a class embedding, no conv bias, a pre-norm), then num_layers encoder layers
    (layer_norm1, q/k/v/out_proj with biases, layer_norm2, fc1, fc2), post_layernorm."""
    if v.mllama is not None:
        return mllama.tower_params(v)
    if v.qwen:
        return vision_qwen.tower_params(v)
    if v.encoder == "pixtral":
        return vision_pixtral.tower_params(v)
    H, I, C, P = v.hidden_size, v.intermediate_size, v.num_channels, v.patch_size
    pre = "model.vision_tower"
    clip = v.encoder == "clip"
    out = [VisionParam(f"{pre}.embeddings.patch_embedding.weight", (H, C, P, P))]
    if clip:
        out.append(VisionParam(f"{pre}.embeddings.class_embedding", (H,)))
    else:
        out.append(VisionParam(f"{pre}.embeddings.patch_embedding.bias", (H,)))
    out.append(VisionParam(f"{pre}.embeddings.position_embedding.weight", (v.tower_tokens, H)))
    if clip:
        out += [VisionParam(f"{pre}.pre_layrnorm.{w}", (H,)) for w in ("weight", "bias")]
    for i in range(v.num_layers):
        layer = f"{pre}.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out.append(VisionParam(f"{layer}.self_attn.{proj}.weight", (H, H), linear=True))
            out.append(VisionParam(f"{layer}.self_attn.{proj}.bias", (H,)))
        out += [
            VisionParam(f"{layer}.mlp.fc1.weight", (I, H), linear=True),
            VisionParam(f"{layer}.mlp.fc1.bias", (I,)),
            VisionParam(f"{layer}.mlp.fc2.weight", (H, I), linear=True),
            VisionParam(f"{layer}.mlp.fc2.bias", (H,)),
        ]
        for norm in ("layer_norm1", "layer_norm2"):
            out += [VisionParam(f"{layer}.{norm}.{w}", (H,)) for w in ("weight", "bias")]
    out += [VisionParam(f"{pre}.post_layernorm.{w}", (H,)) for w in ("weight", "bias")]
    return out


def projector_params(v: VisionTower, text_hidden: int) -> list[VisionParam]:
    """LlavaMultiModalProjector (linear_1: vision → text width, linear_2: text → text) or
    Gemma3MultiModalProjector (a (vision, text) matrix and the RMSNorm's weight), or
    Qwen-VL's patch merger (ftmem.vision_qwen)."""
    if v.mllama is not None:
        return mllama.projector_params(v, text_hidden)
    if v.qwen:
        return vision_qwen.merger_params(v, text_hidden)
    if v.projector == "mistral3":
        return vision_pixtral.projector_params(v, text_hidden)
    H, T = v.hidden_size, text_hidden
    pre = "model.multi_modal_projector"
    if v.projector == "pooled":
        return [
            VisionParam(f"{pre}.mm_input_projection_weight", (H, T)),
            VisionParam(f"{pre}.mm_soft_emb_norm.weight", (H,)),
        ]
    out = [VisionParam(f"{pre}.linear_1.weight", (T, H), linear=True)]
    if v.projector_bias:
        out.append(VisionParam(f"{pre}.linear_1.bias", (T,)))
    out.append(VisionParam(f"{pre}.linear_2.weight", (T, T), linear=True))
    if v.projector_bias:
        out.append(VisionParam(f"{pre}.linear_2.bias", (T,)))
    return out


def tower_count(v: VisionTower) -> int:
    return sum(p.numel for p in tower_params(v))


def projector_count(v: VisionTower, text_hidden: int) -> int:
    return sum(p.numel for p in projector_params(v, text_hidden))


def text_extras_count(v: VisionTower, text_hidden: int) -> int:
    """Parameters the image-text model adds inside its language model: Llama-3.2-Vision's
    cross-attention layers (outside the Architecture's blocks, ftmem.mllama)."""
    return 0 if v.mllama is None else mllama.cross_layer_count(v, text_hidden)


def saved_per_layer_parts(
    v: VisionTower,
    images: int,
    e: int,
    eager: bool = False,
    path: FrozenPath | None = None,
    *,
    ln_stats: int,
) -> tuple[int, ...]:
    """What one trained encoder layer keeps for backward, for ``images`` images of t tower
    tokens (n = images × t) in a compute dtype of ``e`` bytes (transformers 5.24
    clip/siglip ``EncoderLayer.forward``; ``ln_stats``: bytes per element of a LayerNorm's
    mean and rstd, dtypes.layer_norm_stats_bytes):

    - layer_norm1 and layer_norm2: each its input and its mean and rstd
    - q/k/v_proj: one shared input, layer_norm1's output (n H e)
    - sdpa: query, key, value and output (4 n H e), the fp32 logsumexp (n · heads · 4);
      out_proj reads that output (the kernel returns it (batch, tokens, heads, dim), so
      ``transpose(1, 2).contiguous()`` copies nothing)
    - eager instead: query, key and value (3 n H e), the fp32 softmax (images · heads ·
      t² · 4) and, in a 16-bit dtype, its cast back that the second matmul keeps, and
      out_proj's input, a contiguous copy of the heads (n H e)
    - fc1: layer_norm2's output (n H e)
    - the activation: SigLIP's gelu_pytorch_tanh its input (n I e); CLIP's quick_gelu,
      ``x * sigmoid(1.702 x)``, its input and the sigmoid's output (2 n I e)
    - fc2: the activation's output (n I e)

    Under autocast over fp32 weights (``path``, FrozenPath: the stream fp32) the
    LayerNorms keep fp32 inputs and statistics, and q/k/v_proj each keep their own
    16-bit cast of layer_norm1's fp32 output (autocast casts a non-leaf input at every
    call: aten autocast_mode.h cached_cast caches leaves only), 3 n H e (measured, the
    tiny LLaVA full bf16-mixed); the weights' copies: vision_lora.trained_weight_copies.

    As the allocator's requests, in the layer's order: each
    LayerNorm's three tensors apart (input, mean, rstd: dtypes.layer_norm_saved_parts,
    measured on CLIP's and SigLIP's modules, tests/test_vision_norm_requests.py), the
    attention's items (q/k/v's inputs and the kernel's) and the MLP's (fc1's input, the
    activation's) each as one request of their sum."""
    path = path or FrozenPath.uniform(e)
    stats = FP32 if path.stream == FP32 else ln_stats
    H, I, t = v.hidden_size, v.intermediate_size, v.tower_tokens
    n = images * t
    act = 2 if v.encoder == "clip" else 1
    if eager:
        probs = images * v.num_heads * t * t
        attention = 4 * n * H * e + probs * FP32 + (probs * e if e != FP32 else 0)
    else:
        attention = 4 * n * H * e + n * v.num_heads * FP32
    norm = layer_norm_saved_parts(n, H, path.stream, stats)
    qkv_reads = 3 if path.stream != path.compute else 1
    mlp = n * H * e + (act + 1) * n * I * e
    return (*norm, qkv_reads * n * H * e + attention, *norm, mlp)


@dataclass(frozen=True, slots=True)
class FrozenPath:
    """Element sizes along the image path (measured for a frozen CLIP / SigLIP tower and
    LLaVA's projector passing input gradients to adapters below them; the stream's also
    for trained and checkpointed towers, Gemma 3's projector and Pixtral), by what each
    tensor is:

    - ``compute``: attention's tensors (autocast runs sdpa in the 16-bit dtype, casting
      its inputs) and the adapters' items.
    - ``stream``: the residual stream, which each LayerNorm keeps. It is in the
      non-quantised weights' dtype, fp32 under autocast with fp32 parameters: the
      embeddings' fp32 position embedding (and CLIP's class embedding) promote the
      patch convolution's 16-bit output (transformers 5.25 clip/modeling_clip.py
      l.208-217, siglip/modeling_siglip.py l.179-184) and each residual add the 16-bit
      branch (clip/modeling_clip.py l.376, l.381).
    - ``linear_out``: a frozen linear's output, which the activation after it keeps (the
      tower's fc1, LLaVA's linear_1). bitsandbytes' 4-bit linears answer in their
      input's dtype (bitsandbytes 0.50.2 nn/modules.py Linear4bit.forward,
      ``.to(inp_dtype)``): fp32 after a LayerNorm under autocast (Dtypes.four_bit_outputs_fp32).
    """

    compute: int
    stream: int
    linear_out: int

    @classmethod
    def uniform(cls, e: int) -> FrozenPath:
        """Everything in one dtype (no autocast over fp32 weights)."""
        return cls(e, e, e)


def input_grad_parts(
    v: VisionTower,
    images: int,
    e: int,
    eager: bool,
    start: int,
    path: FrozenPath | None,
    ln_stats: int,
) -> tuple[int, ...]:
    """What one frozen CLIP / SigLIP encoder layer keeps when gradients pass through it
    (LoRA on the tower: ftmem.vision_lora), the layer's parts from ``start`` on (0: its
    input needs a gradient; 1: from the attention projections, 2: from out_proj, 3: from
    fc1, 4: from fc2, where the lowest adapted linear of the tower is). As
    :func:`saved_per_layer_parts` without the frozen linears' inputs (a frozen weight's input
    gradient needs only the weight): the LayerNorms (input, mean and rstd: ``ln_stats``
    bytes each, an fp32 stream's in fp32), the attention kernel's items, the activation's;
    each in its dtype along ``path`` (default: all in ``e``).

    As the allocator's requests: each LayerNorm's input,
    mean and rstd apart, the attention's and the activation's items one request each."""
    path = path or FrozenPath.uniform(e)
    stats = FP32 if path.stream == FP32 else ln_stats
    H, I, t = v.hidden_size, v.intermediate_size, v.tower_tokens
    n = images * t
    act = 2 if v.encoder == "clip" else 1
    if eager:
        probs = images * v.num_heads * t * t
        attention = 3 * n * H * e + probs * FP32 + (probs * e if e != FP32 else 0)
    else:
        attention = 4 * n * H * e + n * v.num_heads * FP32
    norm = layer_norm_saved_parts(n, H, path.stream, stats)
    groups = (norm, (attention,), norm, (act * n * I * path.linear_out,))
    return tuple(b for group in groups[start:] for b in group)


def lora_tower_parts(
    v: VisionTower,
    images: int,
    e: int,
    eager: bool,
    first: tuple[int, int],
    path: FrozenPath | None = None,
    *,
    ln_stats: int,
) -> tuple[int, ...]:
    """A frozen tower whose linears carry LoRA (ftmem.vision_lora), not checkpointed:
    gradients run from the lowest adapted linear (``first``: its layer and the part of
    the layer, as :func:`input_grad_parts`'s ``start``) up to the layer the projector
    reads; below it nothing needs a gradient (nor CLIP's pre-norm); SigLIP's post-norm
    when Gemma 3 reads the last layer.

    As the allocator's requests, layer by layer."""
    path = path or FrozenPath.uniform(e)
    layer, start = first
    n = images * v.tower_tokens
    out: list[int] = []
    for i in range(layer, v.layers_kept):
        out += input_grad_parts(v, images, e, eager, start if i == layer else 0, path, ln_stats)
    if v.layers_kept == v.num_layers and v.encoder == "siglip":
        stats = FP32 if path.stream == FP32 else ln_stats
        out += layer_norm_saved_parts(n, v.hidden_size, path.stream, stats)
    return tuple(out)


def pixel_bytes(v: VisionTower, images: int) -> int:
    """The batch's pixel_values, in fp32 as the image processors return them (CLIP's and
    SigLIP's embeddings cast them to the weights' dtype themselves; Qwen-VL's are rows of
    patches)."""
    if v.mllama is not None:
        return mllama.pixel_bytes(v, images)
    if v.qwen:
        return vision_qwen.pixel_elements(v, images) * FP32
    return images * v.num_channels * v.image_size**2 * FP32


def tower_parts(
    v: VisionTower,
    images: int,
    e: int,
    eager: bool = False,
    checkpointed: bool = False,
    weights: bool = True,
    path: FrozenPath | None = None,
    *,
    ln_stats: int,
) -> tuple[int, ...]:
    """What a tower passing gradients keeps, ``images`` images at once: the pixels the
    patch convolution saves (cast to the tower's dtype; for its weight's gradient only),
    CLIP's pre-norm, the layers the projector reads (each whole, or its input alone when
    ``checkpointed``), and SigLIP's post_layernorm (Gemma 3 reads last_hidden_state;
    LLaVA's -2 does not). ``weights`` false: a frozen tower that transformers'
    enable_input_require_grads hooked (gradient checkpointing: vision_step.input_hooked),
    so only input gradients run through it; checkpointed, its layers keep their inputs
    as trained ones do, its LayerNorms their input, mean and rstd (torch's
    native_layer_norm saves them whatever needs a gradient; ``ln_stats``: bytes per
    element of their mean and rstd, dtypes.layer_norm_stats_bytes). ``path``: the
    stream's dtype (FrozenPath; fp32 under autocast over fp32 weights), which the
    checkpoints and the LayerNorms keep (measured, LLaVA LoRA bf16-mixed checkpointed
    and full bf16-mixed: every such item in fp32).

    As the allocator's requests: CLIP's and SigLIP's LayerNorms
    each as their three tensors (:func:`saved_per_layer_parts`), Pixtral's RMSNorms as
    theirs (vision_pixtral.tower_parts), Qwen-VL's norms theirs (vision_qwen.tower_parts)."""
    if v.qwen:
        autocast = path is not None and path.stream != path.compute
        return vision_qwen.tower_parts(
            v, images, e, eager, checkpointed, weights, autocast, ln_stats=ln_stats
        )
    if v.encoder == "pixtral":
        stream = path.stream if path is not None else None
        return vision_pixtral.tower_parts(v, images, e, eager, checkpointed, weights, stream)
    if not weights and not checkpointed:
        raise ValueError("a frozen tower passes input gradients only under checkpointing")
    return _clip_siglip_parts(v, images, e, eager, checkpointed, weights, path, ln_stats)


def _clip_siglip_parts(
    v: VisionTower,
    images: int,
    e: int,
    eager: bool,
    checkpointed: bool,
    weights: bool,
    path: FrozenPath | None,
    ln_stats: int,
) -> tuple[int, ...]:
    """CLIP's and SigLIP's tower (:func:`tower_parts`), tensor by tensor in the forward's
    order: the pixels, CLIP's pre-norm, the layers, SigLIP's post-norm."""
    n = images * v.tower_tokens
    # the convolution keeps the pixels it reads: the batch's fp32 pixel_values themselves,
    # or their cast to the tower's dtype (then the input is the loop's: pixel_bytes)
    pixels = images * v.num_channels * v.image_size**2 * e if weights else 0
    # gradient checkpointing reaches the tower's layers too (CLIPEncoderLayer and
    # SiglipEncoderLayer are GradientCheckpointingLayers): each keeps only its input
    path = path or FrozenPath.uniform(e)
    stream = path.stream
    stats = FP32 if stream == FP32 else ln_stats
    norm = layer_norm_saved_parts(n, v.hidden_size, stream, stats)
    if checkpointed:
        per_layer: tuple[int, ...] = (n * v.hidden_size * stream,)
    else:
        per_layer = saved_per_layer_parts(v, images, e, eager, path, ln_stats=ln_stats)
    out = [pixels, *(norm if v.encoder == "clip" else ()), *per_layer * v.layers_kept]
    if v.layers_kept == v.num_layers and v.encoder == "siglip":
        out += norm
    return tuple(b for b in out if b)


def projector_parts(
    v: VisionTower,
    text_hidden: int,
    images: int,
    e: int,
    tower_trains: bool = True,
    path: FrozenPath | None = None,
    *,
    ln_stats: int,
) -> tuple[int, ...]:
    """What a trained projector keeps (``path``: the stream's dtype, FrozenPath; fp32
    under autocast; the weights' copies: vision_lora.trained_weight_copies):

    - LLaVA: linear_1's input (the selected hidden state, copied when the CLS token is
      sliced off), the GELU's input and linear_2's input (linear_1's output and the GELU's).
    - Gemma 3: the average pool's input (the hidden state made contiguous, in the
      stream's dtype), the RMSNorm in fp32 (``x.float()`` that pow keeps, rsqrt's output, the normalised x and (1 + w) that
      the multiplication keeps), and the matmul's input cast back to the compute dtype.
      Under a frozen tower its output needs no gradient: only the weights' gradients
      need inputs, the normalised x (for w) and the matmul's input.
    - Qwen-VL's merger: ftmem.vision_qwen.merger_parts (``ln_stats``: Qwen2-VL's
      LayerNorm's mean and rstd, bytes per element).

    As the allocator's requests, one per tensor (measured on
    transformers' projector modules, tests/test_vision_projector_requests.py)."""
    if v.qwen:
        return vision_qwen.merger_parts(v, images, e, tower_trains, ln_stats=ln_stats)
    stream = (path or FrozenPath.uniform(e)).stream
    if v.projector == "mistral3":
        return vision_pixtral.projector_parts(v, text_hidden, images, e, tower_trains, stream)
    H, T = v.hidden_size, text_hidden
    tokens = images * v.tokens_per_image
    if v.projector == "mlp":
        selected = images * (v.patches if v.drop_cls else v.tower_tokens)
        return (selected * H * e, tokens * T * e, tokens * T * e)
    normalised, cast = tokens * H * FP32, tokens * H * e
    if not tower_trains:
        return (normalised, cast)
    pooled = images * v.patches * H * stream
    fp32_input, rstd, one_plus_w = tokens * H * FP32, tokens * FP32, H * FP32
    return (pooled, fp32_input, rstd, normalised, one_plus_w, cast)


def projector_input_grad_parts(
    v: VisionTower,
    text_hidden: int,
    images: int,
    e: int,
    path: FrozenPath | None = None,
    *,
    ln_stats: int,
) -> tuple[int, ...]:
    """A frozen projector that passes its input's gradient to a hooked frozen tower
    (vision_step.input_hooked): its linears keep nothing (a frozen weight's input
    gradient needs only the weight; autocast's weight copies:
    vision_lora.frozen_weight_copies), the rest what the input's gradient needs, each in
    its dtype along ``path`` (FrozenPath; default all ``e``):

    - LLaVA: the GELU's input (linear_1's output, ``path.linear_out``).
    - Gemma 3: the average pool's input (the hidden state made contiguous, in the
      stream's dtype: fp32 under autocast, measured), and the RMSNorm's ``x.float()``
      (pow's and the product's), rsqrt's output and the fp32 ``1 + weight`` the product
      with the normalised x keeps (not the normalised x: it is for the weight's
      gradient).
    - Qwen-VL's merger: ftmem.vision_qwen.merger_input_grad_parts.

    As the allocator's requests, one per tensor."""
    if v.qwen:
        return vision_qwen.merger_input_grad_parts(v, images, e, ln_stats=ln_stats)
    if v.projector == "mistral3":
        return vision_pixtral.projector_input_grad_parts(v, text_hidden, images, e)
    path = path or FrozenPath.uniform(e)
    H, T = v.hidden_size, text_hidden
    tokens = images * v.tokens_per_image
    if v.projector == "mlp":
        return (tokens * T * path.linear_out,)
    pooled = images * v.patches * H * path.stream
    return (pooled, tokens * H * FP32, tokens * FP32, H * FP32)


def frozen_forward(v: VisionTower, images: int, e: int) -> int:
    """The tower's forward with nothing to train (no gradient reaches it): its largest
    moment inside one encoder layer past the first (measured, tests/accuracy/test_vision.py).
    Always alive: the encoder's input, which its caller's local keeps through every layer
    (``encoder(inputs_embeds=hidden_states)``), the layer's running residual and, under
    LLaVA, one hidden state its feature selection captures. In attention, at out_proj's
    output, eight hidden-sized tensors in all (SigLIP: those two, layer_norm1's output,
    q, k, v, the kernel's output and out_proj's); in the MLP: layer_norm2's
    output, fc1's output and the activation's (SigLIP's GELU: one output; CLIP's quick_gelu
    ``x * sigmoid(1.702 x)``: 1.702 x and the sigmoid beside fc1's output)."""
    if v.qwen:
        return vision_qwen.frozen_forward(v, images, e)
    if v.encoder == "pixtral":
        return vision_pixtral.frozen_forward(v, images, e)
    n = images * v.tower_tokens
    H, I = v.hidden_size, v.intermediate_size
    clip = v.encoder == "clip"
    always = 2 + (1 if v.projector == "mlp" else 0)
    # (attention's moment, at out_proj's output, measured eight hidden-sized tensors in
    # both towers)
    attention = 8 * n * H * e
    mlp = (always + 1) * n * H * e + (3 if clip else 2) * n * I * e
    return max(attention, mlp)


def for_image_size(v: VisionTower | None, side: int | None) -> VisionTower | None:
    """The tower for the run's image size: Qwen-VL resizes each image to multiples of
    patch × merge pixels (ftmem.vision_qwen); LLaVA and Gemma 3 resize every image to
    their fixed image_size, so the run's size changes nothing there."""
    if side is None:
        return v
    if v is None:
        raise InvalidInputError(
            "--image-size: this model has no vision tower ftmem models; it is for "
            "Qwen-VL's dynamic resolution."
        )
    if not v.qwen:
        raise InvalidInputError(
            f"--image-size: this model's processor resizes every image to {v.image_size} "
            "pixels (its tokens per image are fixed); it is for Qwen-VL's dynamic resolution."
        )
    return vision_qwen.with_image_side(v, side)


def check_images(v: VisionTower | None, images: int, seq_len: int, name: str) -> None:
    """Images per sample need a vision tower, and their tokens fit in the sequence."""
    if not images:
        return
    if v is None:
        raise InvalidInputError(
            f"--images: {name}'s vision tower is not modelled (LLaVA's, Gemma 3's, "
            "Llama-3.2-Vision's, Qwen-VL's and Mistral 3's are); drop --images to estimate "
            "its language model."
        )
    if images * v.tokens_per_image > seq_len:
        raise InvalidInputError(
            f"--images {images} puts {images * v.tokens_per_image:,} image tokens in each "
            f"sequence ({v.tokens_per_image} per image): --seq-len must be at least that."
        )
