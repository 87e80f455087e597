"""What a training step holds of an image-text model's vision tower and projector
(ftmem.vision): which train, their tensor groups, what they keep for backward, the
frozen tower's forward, and the notes saying what each framework does by default."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ftmem import mllama_step, vision_lora, vision_pixtral, vision_qwen
from ftmem.arch import Architecture, ParamKind
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32, is_quantized, layer_norm_stats_bytes
from ftmem.errors import InvalidInputError
from ftmem.ops.saved import Saved
from ftmem.precision import Dtypes
from ftmem.profiles import profile_of
from ftmem.run import RunConfig
from ftmem.vision import (
    FrozenPath,
    VisionParam,
    VisionTower,
    check_images,
    frozen_forward,
    linear_modules,
    param_kind,
    pixel_bytes,
    projector_input_grad_parts,
    projector_params,
    projector_parts,
    stored_format,
    tower_params,
    tower_parts,
)

# Prefixes of the vision parameters (transformers 5.24 LlavaModel / Gemma3Model; Qwen-VL's
# tower is model.visual, its merger model.visual.merger: ftmem.vision_qwen)
TOWER = "model.vision_tower."
PROJECTOR = "model.multi_modal_projector."


def _is_projector(name: str) -> bool:
    return name.startswith((PROJECTOR, vision_qwen.MERGER))


def _folded_name(name: str) -> str:
    """A tower layer's tensor under one name for all layers (encoder.layers.* / blocks.*)."""
    for prefix in (TOWER + "encoder.layers.", vision_qwen.TOWER + "blocks."):
        if name.startswith(prefix):
            return prefix + "*." + name[len(prefix) :].split(".", 1)[1]
    return name


@dataclass(frozen=True, slots=True)
class VisionTraining:
    tower: bool
    projector: bool


def training(arch: Architecture, run: RunConfig) -> VisionTraining:
    """Whether the tower and the projector train: as asked, else as the method implies
    (full finetuning trains every parameter, as HF Trainer and TRL do; under any other
    method, and in LLaMA-Factory under every one (its freeze_vision_tower and
    freeze_multi_modal_projector: profiles.Profile.freezes_vision), they stay frozen)."""
    if arch.vision is None:
        # (a framework's default "frozen" says nothing of a model without a tower)
        if "full" in (run.vision_tower, run.projector) or run.images:
            what = "--images" if run.images else "--vision-tower/--projector full"
            raise InvalidInputError(
                f"{what}: {arch.name} has no vision tower ftmem models (LLaVA, Gemma 3, Qwen-VL, "
                "Llama-3.2-Vision and Mistral 3 image-text configs have one)."
            )
        return VisionTraining(False, False)
    check_images(arch.vision, run.images, run.seq_len, arch.name)
    if not run.images:
        # text-only batches never run the tower or the projector: no gradient reaches
        # them, their .grad stays None and torch's AdamW makes them no state
        # (torch/optim/adamw.py _init_group skips a parameter whose grad is None)
        if "full" in (run.vision_tower, run.projector):
            raise InvalidInputError(
                "--vision-tower/--projector full: without --images the tower and the "
                "projector never run, so they get no gradient; give --images N."
            )
        return VisionTraining(False, False)
    full = run.method in ("full", "galore") and not profile_of(run).freezes_vision
    tower = (run.vision_tower or ("full" if full else "frozen")) == "full"
    projector = (run.projector or ("full" if tower or full else "frozen")) == "full"
    if tower and not projector:
        raise InvalidInputError(
            "--vision-tower full with --projector frozen is not modelled (its gradient "
            "crosses the frozen projector); train both, or freeze the tower."
        )
    return VisionTraining(tower, projector)


def groups(arch: Architecture, run: RunConfig, dtypes: Dtypes, base_format) -> list:
    """The tower's and projector's tensors as TensorGroups (outside the blocks), the
    tower's layers folded into one group per tensor with a count. ``base_format`` is
    methods._base_format: bitsandbytes quantises their nn.Linear weights as it does the
    blocks' (ftmem.vision.stored_format)."""
    from ftmem.methods import TensorGroup  # (methods imports this module)

    trains = training(arch, run)  # (refuses the vision settings on a model without a tower)
    v = arch.vision
    if v is None:
        return []
    if v.mllama is not None:
        return mllama_step.groups(arch, run, dtypes, base_format, trains)
    folded: dict[tuple[str, tuple[int, ...], ParamKind], int] = defaultdict(int)
    params = [*tower_params(v), *projector_params(v, arch.hidden_size)]
    linears = linear_modules(params)
    for p in params:
        folded[(_folded_name(p.name), p.shape, param_kind(p, linears))] += 1
    out = []
    unread = _unread(v)
    for (name, shape, kind), count in folded.items():
        trainable = trains.projector if _is_projector(name) else trains.tower
        fmt = stored_format(VisionParam(name, shape), kind, dtypes, run, base_format)
        if trainable and is_quantized(fmt):
            raise InvalidInputError(
                "a quantised base quantises the vision tower's linears too (transformers' "
                "bitsandbytes skips only the LM head): they cannot train; freeze the tower "
                "and the projector (--vision-tower frozen --projector frozen)."
            )
        idle = 0
        if trainable and name.startswith(TOWER):  # (CLIP and SigLIP: Qwen-VL reads all)
            # the layers after the one the projector reads (and CLIP's post_layernorm, on
            # the pooled CLS token LLaVA never reads) run, but no gradient reaches them:
            # their .grad stays None, and torch's AdamW makes them no state
            if name.startswith(TOWER + "encoder.layers."):
                idle = unread.layers
            elif "post_layernorm" in name and unread.post_norm:
                idle = count
        if idle:
            out.append(TensorGroup(name + " (unread)", shape, idle, fmt, False, in_block=False))
        if count - idle:
            out.append(TensorGroup(name, shape, count - idle, fmt, trainable, in_block=False))
    return out


@dataclass(frozen=True, slots=True)
class _Unread:
    layers: int
    post_norm: bool

    def __bool__(self) -> bool:
        return bool(self.layers or self.post_norm)


def _unread(v: VisionTower) -> _Unread:
    """What of the tower the projector does not read (LLaVA's -2: the last layer and
    post_layernorm)."""
    layers = v.num_layers - v.layers_kept
    return _Unread(layers, layers > 0 or v.encoder == "clip")


def is_vision(name: str) -> bool:
    return name.startswith((TOWER, PROJECTOR, mllama_step.TOWER, vision_qwen.TOWER))


def trains_below(arch: Architecture, run: RunConfig) -> bool:
    """The blocks' input needs a gradient: the image tokens' embeddings come from a
    trained projector (or tower)."""
    if arch.vision is None or not run.images or arch.vision.mllama is not None:
        return False  # (Llama-3.2-Vision's images reach its cross-attention layers only)
    trains = training(arch, run)
    # (or LoRA on the tower or the projector: their adapters' gradients cross the features)
    return trains.tower or trains.projector or bool(vision_lora.adapted(arch, run))


def images_per_step(run: RunConfig) -> int:
    return run.batch_size * run.images


def saved(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> list[Saved]:
    """What the tower and the projector keep for backward through the step (their
    gradients come last, so these live until the end of backward)."""
    v = arch.vision
    images = images_per_step(run)
    if v is None or not images:
        return []
    check_images(v, run.images, run.seq_len, arch.name)
    trains = training(arch, run)
    e = BYTES_PER_ELEMENT[dtypes.compute]
    if v.mllama is not None:
        return mllama_step.saved(arch, run, e, trains, dtypes)
    out: list[Saved] = []
    hooked = input_hooked(arch, run)
    adapted = vision_lora.adapted(arch, run)
    if trains.tower or trains.projector or hooked or adapted:
        # masked_scatter puts the image features in the embeddings; its backward selects
        # their gradient with the placeholder mask, one bool per token (the expanded view's
        # storage)
        out.append(Saved("image token mask (masked_scatter)", run.batch_size * run.seq_len))
    eager = run.attn == "eager"
    ln = layer_norm_stats_bytes(run.device, e)  # the LayerNorms' mean and rstd
    path = frozen_path(dtypes)  # (the stream fp32 under autocast over fp32 weights)
    first = vision_lora.first_tower_adapter(adapted)
    if trains.tower or hooked or (first is not None and run.grad_ckpt):
        # (checkpointed layers keep their input whatever in them needs a gradient)
        parts = tower_parts(v, images, e, eager, run.grad_ckpt, trains.tower, path, ln_stats=ln)
        what = "trained" if trains.tower else "frozen, input gradients"
        out.append(_tower_item(f"vision tower ({what})", parts))
    elif first is not None:
        parts = lora_tower_parts(v, images, e, eager, first, path, ln)
        out.append(_tower_item("vision tower (frozen, LoRA from its lowest adapted linear)", parts))
    if adapted:
        kept = vision_lora.adapter_saved(arch, run, dtypes, adapted)
        out.append(Saved("vision LoRA adapters (their inputs, lora_A outputs)", kept))
    tower_grads = trains.tower or hooked or first is not None
    if trains.projector:
        parts = projector_parts(v, arch.hidden_size, images, e, tower_grads, path, ln_stats=ln)
        out.append(_tower_item("vision projector (trained)", parts))
    elif hooked or adapted:
        parts = projector_input_grad_parts(v, arch.hidden_size, images, e, path, ln_stats=ln)
        out.append(_tower_item("vision projector (frozen, input gradients)", parts))
    copies = vision_lora.frozen_weight_copies(arch, run, dtypes)
    copies += vision_lora.trained_weight_copies(arch, run, dtypes)
    if copies:
        out.append(Saved("autocast's weight copies (vision linears, convolution)", copies))
    return out


def frozen_path(dtypes: Dtypes) -> FrozenPath:
    """The element sizes along the tower and projector (ftmem.vision.FrozenPath): the
    residual stream in the non-quantised weights' dtype, a 4-bit linear's output in its
    input's (fp32 under autocast over fp32 weights)."""
    e = BYTES_PER_ELEMENT[dtypes.compute]
    linear_out = FP32 if dtypes.four_bit_outputs_fp32 else e
    return FrozenPath(e, dtypes.residual_bytes, linear_out)


def _tower_item(what: str, parts: tuple[int, ...]) -> Saved:
    """The tower's (or projector's) saved tensors as one item whose parts are the
    allocator's requests."""
    return Saved(what, sum(parts), parts=parts if len(parts) > 1 else ())


def lora_tower_parts(
    v: VisionTower, images: int, e: int, eager: bool, first, path: FrozenPath, ln_stats: int
) -> tuple[int, ...]:
    """A frozen tower with LoRA on its linears, not checkpointed (ftmem.vision_lora), as
    the allocator's requests (every norm's tensors apart); ``path``'s dtypes for CLIP and SigLIP (Qwen-VL's and
    Pixtral's are sized in ``e``; ``ln_stats``: bytes per element of a LayerNorm's mean
    and rstd)."""
    if v.qwen:
        return vision_qwen.lora_tower_parts(v, images, e, eager, first, ln_stats=ln_stats)
    if v.encoder == "pixtral":
        return vision_pixtral.lora_tower_parts(v, images, e, eager, first, path)
    from ftmem.vision import lora_tower_parts as clip_siglip

    return clip_siglip(v, images, e, eager, first, path, ln_stats=ln_stats)


def input_hooked(arch: Architecture, run: RunConfig) -> bool:
    """A frozen tower's output needs a gradient: transformers 5.24
    gradient_checkpointing_enable calls enable_input_require_grads for an input_ids model
    (modeling_utils.py l.3190-3198), which hooks every PreTrainedModel submodule's
    get_input_embeddings (l.2147-2180): CLIPVisionModel's and SiglipVisionModel's patch
    embedding (clip/modeling_clip.py l.904, siglip/modeling_siglip.py l.852), and
    Qwen-VL's vision model's patch_embed (its _input_embed_layer, read by
    PreTrainedModel.get_input_embeddings, l.969-985: qwen2_vl/modeling_qwen2_vl.py l.647,
    qwen2_5_vl/modeling_qwen2_5_vl.py l.389). Its output then requires a gradient, so the
    frozen tower and projector keep what their input gradients need (measured,
    tests/accuracy/cases.py _image_text, lora + grad_ckpt)."""
    v = arch.vision
    if v is None or not run.images or v.mllama is not None:
        return False  # (Llama-3.2-Vision: mllama_step.saved)
    return checkpointing_hooks_tower(run) and not training(arch, run).tower


def checkpointing_hooks_tower(run: RunConfig) -> bool:
    """Gradient checkpointing has enable_input_require_grads hook the tower's input
    embeddings: through transformers' gradient_checkpointing_enable (the profile's
    checkpointing_hooks_embeddings), or through peft's PeftModel, which calls it on a
    checkpointed model that is not quantised (peft 0.21.2 peft_model.py l.184-185,
    l.728-735)."""
    from ftmem.run import ADAPTER_METHODS, PROMPT_METHODS

    if not run.grad_ckpt:
        return False
    peft = run.method != "qlora" and run.method in ADAPTER_METHODS | PROMPT_METHODS | {"ia3"}
    return profile_of(run).checkpointing_hooks_embeddings or peft


def graph_leaves(
    arch: Architecture, run: RunConfig, dtypes: Dtypes, embed_trains: bool
) -> tuple[int, ...]:
    """What the graph holds beside its saved tensors when enable_input_require_grads hooks
    the input embeddings (checkpointing_hooks_tower) and images are given: each hooked
    output of a frozen module is a leaf made to require a gradient
    (``output.requires_grad_(True)``, transformers 5.24 modeling_utils.py l.2147-2180),
    which the AccumulateGrad node after it keeps until the graph ends (a trained token
    embedding's output is no leaf: ``embed_trains``). The token embeddings' leaf is no
    block's input once masked_scatter has written the image features into a copy
    (b · s · H; llava/modeling_llava.py l.236, gemma3/modeling_gemma3.py l.864,
    qwen2_vl/modeling_qwen2_vl.py l.1167, qwen2_5_vl/modeling_qwen2_5_vl.py l.1222,
    mistral3/modeling_mistral3.py l.291), and a frozen tower's patch output is a leaf
    too (_patch_leaf). Measured on the tiny LLaVA, Gemma 3, Qwen2.5-VL, Qwen2-VL and
    Mistral 3 (tests/accuracy/cases.py, lora + grad_ckpt; tests/accuracy/test_vision.py
    checks that no node saves them). Llama-3.2-Vision has no masked_scatter: its hooked
    embeddings are the first block's input (kept there). Each leaf, one tensor.
    ``embed_trains``: the token embedding trains (full finetuning, peft's
    modules_to_save copy), and its output is no leaf. (Under full finetuning a b · s · H
    term here had matched the measured checkpointed peaks of LLaVA, Qwen2.5-VL and
    Qwen2-VL; traced, the tensor it stood for is the down projection's weight gradient,
    f · h · 2 = b · s · h · 2 in those tiny shapes: transients.down_gradients_made. The
    masked_scatter copy there is the first block's input, held once.)"""
    v = arch.vision
    if v is None or v.mllama is not None or not run.images:
        return ()
    if not checkpointing_hooks_tower(run):
        return ()
    e = BYTES_PER_ELEMENT[dtypes.compute]
    text = 0 if embed_trains else run.batch_size * run.seq_len * arch.hidden_size * e
    conv = _patch_leaf(v, images_per_step(run), e) if input_hooked(arch, run) else 0
    return tuple(leaf for leaf in (text, conv) if leaf)


def _patch_leaf(v: VisionTower, images: int, e: int) -> int:
    """A hooked frozen tower's patch embedding output (images · patches · H_vision): no
    layer's input where the tower copies it before its first layer (CLIP's cat with the
    CLS token, clip/modeling_clip.py l.209-213; SigLIP's position add,
    siglip/modeling_siglip.py l.178-184; Pixtral's flatten and cat; Qwen2.5-VL's window
    order, a gather, modeling_qwen2_5_vl.py l.456-459). Qwen2-VL's first block reads it
    as it is (modeling_qwen2_vl.py l.692-695): its checkpoint keeps it, among the tower's
    saved items already."""
    if v.encoder == "qwen2_vl":
        return 0
    return images * v.patches * v.hidden_size * e


def backward_transient(
    arch: Architecture, run: RunConfig, dtypes: Dtypes, embed_trains: bool
) -> int:
    """The checkpointed tower's backward, after the language model's: one layer's
    recompute and its largest gradients (ftmem.vision_pixtral.layer_backward), beside
    the token embeddings' leaf gradient that masked_scatter's backward wrote
    (graph_leaves). Mistral 3 only, and Llama-3.2-Vision's eager softmax backward
    (ftmem.mllama_step.backward_transient): the other towers' backward is not a moment
    of the step yet."""
    v = arch.vision
    if v is not None and v.mllama is not None:
        return mllama_step.backward_transient(arch, run, dtypes)
    if v is None or v.encoder != "pixtral" or not run.images or not run.grad_ckpt:
        return 0
    trains = training(arch, run)
    if not (trains.tower or input_hooked(arch, run)):
        return 0
    e = BYTES_PER_ELEMENT[dtypes.compute]
    layer = vision_pixtral.layer_backward(
        v, images_per_step(run), e, run.attn == "eager", trains.tower
    )
    hooked_text = checkpointing_hooks_tower(run) and not embed_trains
    return layer + (run.batch_size * run.seq_len * arch.hidden_size * e if hooked_text else 0)


def cross_eager_moments(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> tuple[int, int]:
    """Llama-3.2-Vision's cross-attention layers under eager attention: their softmax's
    forward and backward moments (ftmem.mllama_step.cross_eager_moments); 0 elsewhere."""
    return mllama_step.cross_eager_moments(arch, run, dtypes)


def blocks_above_cross(arch: Architecture) -> int:
    """Llama-3.2-Vision: the self-attention blocks above its last cross-attention layer
    (the 11B's layer 38 of 40: one); 0 elsewhere."""
    v = arch.vision
    if v is None or v.mllama is None:
        return 0
    layers = arch.num_layers + len(v.mllama.cross_layers)
    return layers - 1 - max(v.mllama.cross_layers)


def pixel_input(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
    """The batch's pixel values: an input the loop holds through the whole step (a
    trained tower's convolution keeps this very tensor in fp32, a cast of it otherwise)."""
    if arch.vision is None or not run.images:
        return 0
    # Qwen-VL's processor also returns image_grid_thw (3 int64 per image) and
    # mm_token_type_ids (one int64 per token)
    v = arch.vision
    qwen = images_per_step(run) * 3 * 8 + run.batch_size * run.seq_len * 8 if v.qwen else 0
    if v.encoder == "pixtral":
        qwen += images_per_step(run) * 2 * 8  # Mistral 3's image_sizes: (h, w) int64 per image
    if arch.traits.image_tokens_bidirectional:
        # Gemma3Processor's token_type_ids, one int64 per token (ops.attention.image_block_mask)
        qwen += run.batch_size * run.seq_len * 8
    if run.grad_ckpt and (training(arch, run).tower or input_hooked(arch, run)):
        # checkpointed layers keep the rotary's cos and sin as their checkpoint's
        # arguments (ftmem.vision_qwen.tower_saved, ftmem.vision_pixtral.tower_parts),
        # through backward (the tower trained, or frozen and hooked: input_hooked)
        if v.qwen:
            qwen += vision_qwen.rotary_tables(v, images_per_step(run))
        elif v.encoder == "pixtral":
            # (in the stream's dtype: fp32 under autocast, vision_pixtral.lora_tower_parts)
            stream = frozen_path(dtypes).stream
            qwen += vision_pixtral.rotary_tables(v, images_per_step(run), stream)
    if training(arch, run).tower and BYTES_PER_ELEMENT[dtypes.compute] == FP32:
        return qwen  # the convolution keeps the pixels themselves: counted with the tower's items
    return qwen + pixel_bytes(arch.vision, images_per_step(run))


def image_outputs_held(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
    """What LLaVA's model output holds until the forward returns beyond the saved tensors:
    LlavaModel keeps get_image_features' output, the tower's BaseModelOutputWithPooling
    whose pooler_output is the projector's image features, in its own output's
    image_outputs (transformers 5.25 llava/modeling_llava.py l.221-246), and
    LlavaForConditionalGeneration computes the loss before it returns (l.325-355). No
    node keeps the image features (masked_scatter's backward needs only the mask), nor,
    where the projector reads a layer below the last (vision_feature_layer -2), the last
    layer's output, held among the hidden states. Measured on the tiny LLaVA at the
    forward's peak, the loss: both live (bf16: 24,576 + 12,480 B). Llama-3.2-Vision's:
    ftmem.mllama_step.image_outputs_held."""
    v = arch.vision
    if v is not None and v.mllama is not None:
        return mllama_step.image_outputs_held(arch, run, dtypes)
    if v is None or not run.images or v.projector != "mlp":
        return 0
    images = images_per_step(run)
    features = images * v.tokens_per_image * arch.hidden_size * frozen_path(dtypes).linear_out
    unread = v.layers_kept < v.num_layers
    last = images * v.tower_tokens * v.hidden_size * dtypes.residual_bytes if unread else 0
    return features + last


def forward_transient(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
    """A frozen tower's forward, before the language model's: nothing needs a gradient,
    so it keeps nothing, but holds its largest moment (ftmem.vision.frozen_forward)."""
    v = arch.vision
    if v is None or not run.images or training(arch, run).tower:
        return 0
    if v.mllama is not None:
        return mllama_step.forward_transient(arch, run, dtypes)
    return frozen_forward(v, images_per_step(run), BYTES_PER_ELEMENT[dtypes.compute])


def notes(arch: Architecture, run: RunConfig) -> list[str]:
    v: VisionTower | None = arch.vision
    if v is None:
        return []
    trains = training(arch, run)
    if v.mllama is not None:
        return mllama_step.notes(arch, run, trains)
    out: list[str] = []
    state = ", ".join(
        f"{what} {'trained' if t else 'frozen'}"
        for what, t in (("vision tower", trains.tower), ("projector", trains.projector))
    )
    if not run.images:
        out.append(
            "Image-text model without images per sample: the vision tower and the projector "
            "never run, so their weights are counted and no gradient or optimizer state "
            "(torch's AdamW makes none for a parameter without a gradient; DeepSpeed and "
            "FSDP flatten every requires_grad parameter and would); --images N adds their "
            f"forward ({v.tokens_per_image} tokens per image in --seq-len)."
        )
    else:
        out.append(
            f"Image-text model ({state}): {run.images} image(s) per sample, "
            f"{run.images * v.tokens_per_image:,} of each sequence's --seq-len tokens."
            + (
                f" Images of {v.image_size} × {v.image_size} pixels after Qwen's resize "
                f"(--image-size), {v.patches:,} patches each in the tower."
                if v.qwen
                else ""
            )
            + (
                f" Mistral 3: {vision_pixtral.features_per_image(v):,} [IMG] tokens per "
                "image plus one [IMG_BREAK] per row ([IMG_END] after the last), all counted "
                "in --seq-len; the Pixtral tower attends over the step's "
                f"{images_per_step(run) * v.patches:,} patches as one sequence with a "
                "dense block-diagonal mask (its square in the compute dtype)."
                if v.encoder == "pixtral"
                else ""
            )
        )
    if input_hooked(arch, run):
        out.append(
            "Gradient checkpointing: transformers' enable_input_require_grads hooks the "
            "vision tower's patch embedding too (its get_input_embeddings), so the frozen "
            "tower and projector pass input gradients and keep what those need (the "
            "tower's checkpointed layers their inputs)."
        )
    out += vision_lora.notes(arch, run)
    return out
