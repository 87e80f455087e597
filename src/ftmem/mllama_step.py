"""What a training step holds of Llama-3.2-Vision's parts outside the Architecture's
blocks (ftmem.mllama): the tiled vision model, the projector and the text model's
cross-attention layers, as tensor groups and saved items. vision_step hands an mllama
tower here."""

from __future__ import annotations

import re
from collections import defaultdict

from ftmem.arch import Architecture, ParamKind
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32, is_quantized, layer_norm_stats_bytes
from ftmem.errors import InvalidInputError
from ftmem.mllama import CROSS_PREFIX, cross_layer_params, tower_mask, tower_parts
from ftmem.ops.saved import Saved
from ftmem.precision import Dtypes
from ftmem.run import RunConfig
from ftmem.vision import (
    VisionParam,
    linear_modules,
    param_kind,
    projector_params,
    stored_format,
    tower_params,
)

TOWER = "model.vision_model."
_LAYER = re.compile(
    r"^(model\.vision_model\.(?:global_)?transformer\.layers\.|"
    + re.escape(CROSS_PREFIX)
    + r")\d+\."
)


def cross_layers_train(run: RunConfig) -> bool:
    """The cross-attention layers are the language model's: full finetuning trains them
    (when images reach them: a text-only forward skips them, so they get no gradient);
    an adapter method leaves their weights frozen."""
    return bool(run.images) and run.method in ("full", "galore")


def groups(arch: Architecture, run: RunConfig, dtypes: Dtypes, base_format, trains) -> list:
    """The tower's, projector's and cross-attention layers' tensors as TensorGroups
    (outside the blocks), each layer stack folded into one group per tensor."""
    from ftmem.methods import TensorGroup  # (methods imports vision_step, which imports this)

    v = arch.vision
    assert v is not None and v.mllama is not None
    folded: dict[tuple[str, tuple[int, ...], ParamKind], int] = defaultdict(int)
    vision = [*tower_params(v), *projector_params(v, arch.hidden_size)]
    cross_params = cross_layer_params(v, arch.hidden_size)
    linears = linear_modules([*vision, *cross_params])
    for p in vision:
        folded[(_LAYER.sub(r"\1*.", p.name), p.shape, param_kind(p, linears))] += 1
    for p in cross_params:
        folded[(_LAYER.sub(r"\1*(cross).", p.name), p.shape, param_kind(p, linears))] += 1
    cross = cross_layers_train(run)
    out = []
    for (name, shape, kind), count in folded.items():
        if name.startswith(CROSS_PREFIX):
            trainable = cross
        else:
            trainable = trains.tower if name.startswith(TOWER) else trains.projector
        fmt = stored_format(VisionParam(name, shape), kind, dtypes, run, base_format)
        if trainable and is_quantized(fmt):
            raise InvalidInputError(
                "a quantised base quantises the vision model's linears too (transformers' "
                "bitsandbytes skips only the LM head): they cannot train; freeze the tower "
                "and the projector (--vision-tower frozen --projector frozen)."
            )
        out.append(TensorGroup(name, shape, count, fmt, trainable, in_block=False))
    return out


def cross_saved(
    arch: Architecture, run: RunConfig, e: int, projector_trains: bool, dtypes: Dtypes
) -> list:
    """What the cross-attention layers keep for backward over ``run.images`` images per
    sample (transformers 5.24 MllamaCrossAttentionDecoderLayer.forward,
    MllamaTextCrossAttention.forward), with the residual stream needing a gradient (the
    blocks below train) and the layers' weights training as :func:`cross_layers_train`
    says. Per layer, T text tokens, m image states (images × tiles × (patches + 1)):

    - input_layernorm and post_attention_layernorm (Llama's RMSNorm): the fp32 input and
      rstd; when the weights train, the normalised cast (for the norm's weight) and the
      norm's output (q_proj's input; gate_proj's and up_proj's)
    - q_norm over each head: q.float() and its rstd; k_norm the same over the keys when a
      gradient reaches them (the weights train, or the image states need one:
      ``projector_trains``, the projector trains or adapters below it)
    - the attention (:func:`_cross_kernel`, sdpa or eager); sdpa's (b, 1, s, m) mask is
      one tensor every layer's kernel keeps (counted once, by :func:`shared_saved`)
    - the tanh gates: ``gate.tanh() * h`` keeps the one-element tanh (h's gradient), and
      h (o_proj's output, the MLP's masked output) for the gate's when the weights train
    - the MLP: silu's input, its output and up_proj's output (the product's operands),
      down_proj's input when the weights train; fp32 where bitsandbytes' 4-bit linears
      answer in the fp32 residual stream's dtype (Dtypes.four_bit_outputs_fp32)
    """
    v = arch.vision
    assert v is not None and v.mllama is not None
    m_parts = v.mllama
    from ftmem.mllama import image_states

    b, s = run.batch_size, run.seq_len
    T, h, f = b * s, arch.hidden_size, m_parts.text_intermediate
    layers = len(m_parts.cross_layers)
    if run.grad_ckpt:
        # MllamaCrossAttentionDecoderLayer is a GradientCheckpointingLayer: each keeps its
        # input, the residual stream (fp32 under autocast with fp32 weights; the other
        # inputs are shared: shared_saved)
        stream = layers * T * h * dtypes.residual_bytes
        return [Saved(f"cross-attention layers ({layers}): inputs", stream)]
    nh, kvh, d = m_parts.text_heads, m_parts.text_kv_heads, m_parts.text_head_dim
    q, kv = nh * d, kvh * d
    m = b * run.images * image_states(v)
    w = cross_layers_train(run)
    r = dtypes.residual_bytes

    def norm(readers: int) -> int:
        kept = T * h * FP32 + T * FP32
        if w:
            # the normalised input in the stream's dtype (the weight's gradient) and the
            # output, one tensor its readers share; under autocast (fp32 weights) it is
            # fp32 and each linear keeps its own 16-bit cast (q_proj; gate_proj, up_proj)
            casts = readers if dtypes.casts_weights else 1
            kept += T * h * r + casts * T * h * e
        return kept

    q_norm = T * q * FP32 + b * nh * s * FP32 + (T * q * e if w else 0)
    k_grad = w or projector_trains
    k_norm = (m * kv * FP32 + b * kvh * (m // b) * FP32 + (m * kv * e if w else 0)) if k_grad else 0
    kernel = _cross_kernel(run, m, T, (nh, kvh, d), e, k_grad)
    autocast = run.precision.endswith("-mixed")
    # (autocast: the fp32 gates' tanh stays fp32, as the weights are); trained, h for
    # each gate's gradient: o_proj's output, and the MLP's output times the row mask,
    # made in the model's dtype (fp32 weights under autocast: the product is fp32)
    tanh = FP32 if autocast else e
    mlp = 3 * T * f * (FP32 if dtypes.four_bit_outputs_fp32 else e) + (T * f * e if w else 0)
    attention = norm(1) + q_norm + k_norm + kernel + tanh + (T * h * e if w else 0)
    mlp += norm(2) + tanh + (T * h * r if w else 0)
    if dtypes.casts_weights and not dtypes.quantized:
        # autocast casts each fp32 weight to the compute dtype (cached for the forward
        # where it trains: a leaf that requires grad), and the linear keeps that copy
        # for its input's gradient: q_proj, o_proj and the MLP's three; k_proj and v_proj
        # only where the image states need a gradient (adapters in the vision model or
        # the projector, a trained projector), trained or not; a 4-bit base has none
        # (autocast_copies)
        attention += (2 * h * q + (2 * h * kv if projector_trains else 0)) * e
        mlp += 3 * h * f * e
    # (two items: the attention's backward runs once the MLP's has freed its own)
    return [
        Saved(f"cross-attention layers ({layers}) over the images: attention", layers * attention),
        Saved(f"cross-attention layers ({layers}): MLP", layers * mlp),
    ]


def _cross_kernel(
    run: RunConfig, m: int, T: int, heads: tuple[int, int, int], e: int, kv_grad: bool
) -> int:
    """The attention of one cross-attention layer over T text tokens and m image states
    (MllamaTextCrossAttention.forward, eager_attention_forward), q the q_norm output.
    sdpa: transformers repeats the keys and values to every query head (repeat_kv:
    use_gqa_in_sdpa is false with a mask), and the kernel keeps q, the repeated k and v
    (views where there is one kv head per query head), its output and logsumexp; the
    mask is shared_saved's. Eager: torch.matmul folds the heads into 3-D batches and
    keeps contiguous copies of kᵀ and v (every query head's: q's and the scores'
    gradients), the fp32 softmax (b × heads × s × image states); of q and of the
    softmax's cast back (in a 16-bit dtype) only where the keys and values need a
    gradient (``kv_grad``: a matmul keeps an operand for the other's gradient); the mask
    is added, not kept."""
    nh, kvh, d = heads
    q = nh * d
    if run.attn == "eager":
        probs = T * nh * (m // run.batch_size)
        kv_side = T * q * e + (probs * e if e != FP32 else 0)
        return 2 * m * q * e + probs * FP32 + (kv_side if kv_grad else 0)
    width = q if kvh != nh else kvh * d  # repeat_kv copies; one kv head per query head: views
    return T * q * e + 2 * m * width * e + T * q * e + run.batch_size * nh * run.seq_len * FP32


def shared_saved(arch: Architecture, run: RunConfig, e: int) -> list:
    """Tensors every cross-attention layer keeps, once: the float cross-attention mask
    (b, 1, s, m) in the model's dtype that sdpa keeps, the (b, 1, s, 1) row mask the MLP's
    output is multiplied by (MllamaModel.forward _prepare_cross_attention_mask), and the
    projected image states k_proj and v_proj keep when their weights train. Checkpointed,
    the layers pack none of them: GradientCheckpointingLayer binds its keyword inputs in a
    partial that the checkpoint holds until the layer's recompute (alive through backward,
    but not saved tensors; left out, as the measurement's saved bytes leave them out)."""
    if run.grad_ckpt:
        return []
    v = arch.vision
    assert v is not None and v.mllama is not None
    from ftmem.mllama import image_states

    b, s = run.batch_size, run.seq_len
    m = run.images * image_states(v)
    out = []
    if run.attn != "eager":  # (eager adds it to the scores and keeps nothing)
        out.append(Saved("cross-attention mask (b, 1, s, images × tiles × tokens)", b * s * m * e))
    # (made in the model's dtype: fp32 weights under autocast)
    out.append(
        Saved("full-text-row mask", b * s * (FP32 if run.precision.endswith("-mixed") else e))
    )
    if cross_layers_train(run):
        states = b * m * arch.hidden_size * e
        out.append(Saved("projected image states (k_proj/v_proj input)", states))
    return out


def forward_transient(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
    """A frozen vision model's forward moment (under gradient checkpointing its input
    needs a gradient and it keeps its activations instead: tower_saved)."""
    from ftmem.mllama import frozen_forward

    v = arch.vision
    assert v is not None
    if run.grad_ckpt:
        return 0
    e = BYTES_PER_ELEMENT[dtypes.compute]
    return frozen_forward(v, run.batch_size * run.images, e, _score_bytes(run, dtypes))


def backward_transient(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
    """Eager attention in a vision model that passes gradients (it trains, carries
    adapters or gradient checkpointing hooks it): its top layer's softmax backward, the
    scores' gradients (:func:`ftmem.mllama.eager_score_bytes` per score) beside what the
    tower keeps, once the language model's backward is done. sdpa's backward works on
    the layer's N-row tensors, which the language model's moments outweigh."""
    from ftmem import vision_lora
    from ftmem.mllama import scores_per_layer
    from ftmem.vision_step import checkpointing_hooks_tower, training

    v = arch.vision
    if v is None or v.mllama is None or not run.images or run.attn != "eager":
        return 0
    adapters = vision_lora.first_tower_adapter(vision_lora.adapted(arch, run)) is not None
    if not (training(arch, run).tower or checkpointing_hooks_tower(run) or adapters):
        return 0
    return scores_per_layer(v, run.batch_size * run.images) * _score_bytes(run, dtypes)


def cross_eager_moments(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> tuple[int, int]:
    """Eager attention in a cross-attention layer (transformers 5.25 modeling_mllama.py
    eager_attention_forward: ``softmax(q kᵀ · scale + mask, dtype=float32).to(q.dtype)``)
    over its b × heads × s × image-key scores: (forward, backward) beyond what the step
    keeps, per score :func:`ftmem.mllama.eager_score_bytes`. Forward: at the softmax,
    the scores and their fp32 copy beside the fp32 softmax the layer saves (less those
    4 B; a checkpointed layer saves none). Backward: the softmax's backward, the scores'
    gradients beside the saved softmax, once the layer's MLP backward has freed what its
    side keeps; checkpointed, beside the recompute's attention side (:func:`cross_saved`
    unchecked). The step weighs them at its top block's moments, less the blocks above
    the last cross-attention layer (ftmem.step._cross_attention_moments). Where the
    image keys are fewer than the text positions the self-attention's moments outweigh
    them."""
    from ftmem import vision_lora
    from ftmem.mllama import image_states
    from ftmem.vision_step import training

    v = arch.vision
    if v is None or v.mllama is None or not run.images or run.attn != "eager":
        return 0, 0
    b, s = run.batch_size, run.seq_len
    scores = b * v.mllama.text_heads * s * run.images * image_states(v)
    per_score = _score_bytes(run, dtypes)
    e = BYTES_PER_ELEMENT[dtypes.compute]
    layers = len(v.mllama.cross_layers)
    plain = run.model_copy(update={"grad_ckpt": False})
    adapted = vision_lora.adapted(arch, run)
    states_grad = training(arch, run).projector or any(lin.part != "cross" for lin in adapted)
    attention, mlp = (x.nbytes // layers for x in cross_saved(arch, plain, e, states_grad, dtypes))
    if not run.grad_ckpt:
        return scores * (per_score - FP32), scores * per_score - mlp
    return scores * per_score, attention + scores * per_score


def _score_bytes(run: RunConfig, dtypes: Dtypes) -> int:
    from ftmem.dtypes import eager_score_bytes

    if run.attn != "eager":
        return 0
    fp16_cuda = dtypes.compute == "fp16" and run.device != "cpu"
    return eager_score_bytes(BYTES_PER_ELEMENT[dtypes.compute], fp16_cuda)


def saved(arch: Architecture, run: RunConfig, e: int, trains, dtypes) -> list:
    """Everything Llama-3.2-Vision's image path keeps for backward."""
    from ftmem import vision_lora

    adapted = vision_lora.adapted(arch, run)
    # the image states need a gradient: the projector trains, or adapters below it do
    states_grad = trains.projector or any(lin.part != "cross" for lin in adapted)
    out = cross_saved(arch, run, e, states_grad, dtypes) + shared_saved(arch, run, e)
    v = arch.vision
    assert v is not None
    images = run.batch_size * run.images
    # a gradient reaches the tower's input when it trains, or when transformers'
    # enable_input_require_grads hooks its patch convolution (gradient checkpointing);
    # from its lowest adapter on when peft's names reach it (counted from its input)
    from ftmem.vision_step import checkpointing_hooks_tower

    if adapted:
        kept = vision_lora.adapter_saved(arch, run, dtypes, adapted)
        out.append(Saved("LoRA adapters outside the blocks (inputs, lora_A outputs)", kept))
    tower_lora = vision_lora.first_tower_adapter(adapted) is not None
    eager, autocast = run.attn == "eager", dtypes.autocast
    if trains.tower or checkpointing_hooks_tower(run) or tower_lora:
        fp32_linears = dtypes.four_bit_outputs_fp32
        ln = layer_norm_stats_bytes(run.device, e)
        parts = tower_parts(v, images, e, trains.tower, eager, autocast, fp32_linears, ln_stats=ln)
        what = f"vision model ({'trained' if trains.tower else 'input gradients'})"
        # (every LayerNorm's input, mean and rstd one request each: Saved.parts)
        out.append(Saved(what, sum(parts), parts=parts))
        if not eager:  # (eager adds the mask to the scores and keeps nothing)
            out.append(Saved("vision model's aspect-ratio mask", tower_mask(v, images, e)))
    if trains.projector:
        out += projector_saved(arch, run, e)
    if dtypes.casts_weights:
        copies = autocast_copies(arch, run, e, dtypes)
        out.append(Saved("autocast's 16-bit weights (vision model, projector)", copies))
    return out


def autocast_copies(arch: Architecture, run: RunConfig, e: int, dtypes: Dtypes) -> int:
    """Under autocast each fp32 nn.Linear weight of the vision model and the projector is
    cast to the compute dtype (at every call where it is frozen: autocast's cache holds
    only leaf tensors that require grad, torch aten/src/ATen/autocast_mode.cpp cached_cast),
    and the linear keeps that copy wherever its input needs a gradient (the base
    layer's, beside its adapter; trained ones' too, cached for the forward):
    vision_lora.inputs_needing_grad. A 4-bit base (QLoRA: bitsandbytes quantises
    these linears too) has none: bitsandbytes' matmul_4bit keeps the packed weight and
    dequantises it again in backward. The cross-attention layers' are cross_saved's."""
    from ftmem.vision_lora import inputs_needing_grad, vision_linears

    if dtypes.quantized:
        return 0
    grad = inputs_needing_grad(arch, run)
    copies = sum(
        lin.in_features * lin.out_features * e
        for lin in vision_linears(arch)
        if lin.part != "cross" and lin.module in grad
    )
    from ftmem.vision_step import training

    v = arch.vision
    assert v is not None
    if training(arch, run).tower:
        # the trained patch convolution's weight: convolution's backward keeps it (the
        # frozen one runs outside the graph: the pixels need no gradient)
        copies += v.hidden_size * v.num_channels * v.patch_size**2 * e
    return copies


def image_outputs_held(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
    """What the forward holds of the image path until it returns, beyond the saved
    tensors (transformers 5.25 models/mllama/modeling_mllama.py MllamaModel.forward
    l.1345-1390; MllamaForConditionalGeneration computes the loss before it returns):

    - ``vision_outputs``, returned as the output's image_outputs: its last_hidden_state,
      b × images × tiles × (patches + 1) × vision_output_dim in the residual stream's
      dtype (fp32 under autocast with fp32 weights: the concatenated LayerNorm and layer
      outputs); nothing to add where the projector keeps this very tensor (its weight or
      adapter trains, no autocast cast between)
    - the cross-attention mask (b, 1, s, image keys) made in the model's dtype
      (``dtype=self.dtype``); sdpa keeps it where it is in the compute dtype (shared_saved),
      autocast casts it to a copy, eager adds it to the scores, and checkpointed layers
      keep none
    - autocast's cached 16-bit copies of the trained cross-attention layers' weights (a
      leaf that requires grad: torch aten/src/ATen/autocast_mode.cpp cached_cast): all of
      them when the layers are checkpointed, else k_proj's and v_proj's where no gradient
      reaches the image states (their linears keep no copy)

    Measured: the tiny model, 6 images per sample, bf16-mixed LoRA, the forward's peak at
    the loss holds the fp32 vision output (156,672 B); full finetuning, bf16-mixed,
    checkpointed: the fp32 mask and every cross-attention weight's copy."""
    from ftmem import vision_lora
    from ftmem.mllama import image_states
    from ftmem.vision_step import training

    v = arch.vision
    if v is None or v.mllama is None or not run.images:
        return 0
    r = dtypes.residual_bytes
    e = BYTES_PER_ELEMENT[dtypes.compute]
    trains = training(arch, run)
    adapted = vision_lora.adapted(arch, run)
    n = run.batch_size * run.images * image_states(v)
    held = n * v.mllama.output_dim * r
    if (trains.projector or any(lin.part == "projector" for lin in adapted)) and r == e:
        held = 0
    mask_saved = run.attn != "eager" and not run.grad_ckpt and r == e
    keys = run.images * image_states(v)
    held += 0 if mask_saved else run.batch_size * run.seq_len * keys * r
    if cross_layers_train(run) and dtypes.casts_weights:
        m = v.mllama
        h, d = arch.hidden_size, m.text_head_dim
        q, kv = m.text_heads * d, m.text_kv_heads * d
        states_grad = trains.projector or any(lin.part != "cross" for lin in adapted)
        cached = 2 * h * kv if run.grad_ckpt or not states_grad else 0
        if run.grad_ckpt:
            cached += 2 * h * q + 3 * h * m.text_intermediate
        held += len(m.cross_layers) * cached * e
    return held


def projector_saved(arch: Architecture, run: RunConfig, e: int) -> list:
    """multi_modal_projector's input (the vision model's concatenated output, b × images ×
    tiles × (patches + 1) × vision_output_dim) for its weight's gradient."""
    v = arch.vision
    assert v is not None and v.mllama is not None
    from ftmem.mllama import image_states

    n = run.batch_size * run.images * image_states(v)
    return [Saved("projector input (vision output)", n * v.mllama.output_dim * e)]


def notes(arch: Architecture, run: RunConfig, trains) -> list[str]:
    """What the estimate says of Llama-3.2-Vision's image path."""
    from ftmem.mllama import image_states

    v = arch.vision
    assert v is not None and v.mllama is not None
    layers = len(v.mllama.cross_layers)
    if not run.images:
        return [
            f"Llama-3.2-Vision without images per sample: the vision model, the projector "
            f"and the {layers} cross-attention layers never run (MllamaTextModel skips a "
            "cross-attention layer without image states), so their weights are counted "
            "and no gradient or optimizer state; --images N adds them."
        ]
    state = ", ".join(
        f"{what} {'trained' if t else 'frozen'}"
        for what, t in (
            ("vision model", trains.tower),
            ("projector", trains.projector),
            ("cross-attention layers", cross_layers_train(run)),
        )
    )
    out = [
        f"Llama-3.2-Vision ({state}): {run.images} image(s) per sample, each "
        f"{v.mllama.max_num_tiles} tiles (the image processor pads every image to "
        f"max_num_tiles) of {image_states(v) // v.mllama.max_num_tiles:,} tokens: "
        f"{run.images * image_states(v):,} keys and values in each of the {layers} "
        f"cross-attention layers, one <|image|> token each in --seq-len."
    ]
    from ftmem.vision_step import checkpointing_hooks_tower

    if checkpointing_hooks_tower(run) and not trains.tower:
        out.append(
            "Gradient checkpointing: transformers' enable_input_require_grads hooks the "
            "vision model's patch convolution too (its get_input_embeddings), so the "
            "frozen vision model passes input gradients and keeps its activations (its "
            "layers are not checkpointed)."
        )
    from ftmem import vision_lora

    return out + vision_lora.notes(arch, run)


def fsdp_root_notes(arch: Architecture, run: RunConfig) -> list[str]:
    """FSDP (ftmem.parallel): the vision model, the projector and the cross-attention
    layers lie outside the Architecture's blocks, so the root unit holds them, gathered
    whole through the step. Accelerate's transformer auto-wrap takes the model's
    _no_split_modules (transformers 5.25 modeling_mllama.py MllamaPreTrainedModel:
    MllamaVisionEncoderLayer, MllamaCrossAttentionDecoderLayer,
    MllamaSelfAttentionDecoderLayer), so each of their layers is a unit of its own,
    gathered one at a time: not modelled (not measured on several ranks), said."""
    from ftmem.mllama import cross_layer_count
    from ftmem.vision import projector_count, tower_count

    v = arch.vision
    if v is None or v.mllama is None or not run.images:
        return []
    params = tower_count(v) + projector_count(v, arch.hidden_size)
    params += cross_layer_count(v, arch.hidden_size)
    return [
        f"Llama-3.2-Vision under FSDP: the vision model, the projector and the "
        f"{len(v.mllama.cross_layers)} cross-attention layers ({params / 1e9:.2f}B "
        "parameters) are counted in the root unit, gathered whole through the step; "
        "Accelerate's auto-wrap (the model's _no_split_modules) makes each of their "
        "layers a unit of its own, gathered one at a time, so the gathered weights here "
        "are an upper bound."
    ]
