"""LoRA on an image-text model's vision tower, projector and (Llama-3.2-Vision)
cross-attention layers: which of their nn.Linear modules a run's LoRA targets reach.

peft matches ``target_modules`` by module name over the whole model, not over the
language model alone (peft 0.21.2 tuners/tuners_utils.py check_target_module_exists,
l.2337-2376: a list item matches a module whose name is the item or ends with
``"." + item``; a string is matched whole, re.fullmatch); ``all-linear`` is every
nn.Linear but the output embedding (_maybe_include_all_linear_layers, l.2430-2490), the
tower's and the projector's included. So ``q_proj`` also wraps CLIP's, SigLIP's, Pixtral's
and Llama-3.2-Vision's vision attention and the latter's cross-attention layers, and
``gate_proj`` Qwen2.5-VL's vision MLP. TRL and HF users call peft directly: that is the
default. LLaMA-Factory filters the targets first (its profile's ``freezes_vision``):
model/model_utils/visual.py patch_target_modules (l.196-213 @ff6d4d12eeb0) drops every
module whose name holds a forbidden key, the vision tower's and the projector's
(get_forbidden_modules, l.173-193: freeze_vision_tower and freeze_multi_modal_projector,
both true by default; mllama's vision keys are ``vision_model``, l.356-359), and its
``all`` (model_utils/misc.py find_all_linear_modules, l.28-50) collects the leaf names of
the other linears: the cross-attention layers, part of the language model, keep theirs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from itertools import groupby
from typing import Literal

from ftmem.arch import ATTENTION_ROLES, Architecture, layout
from ftmem.profiles import profile_of
from ftmem.run import ADAPTER_METHODS, RunConfig

Part = Literal["tower", "projector", "cross"]
ALL_LINEAR = "all-linear"
_ROLES = ("q", "k", "v", "o", "gate", "up", "down")
# one name for a layer's linear in every layer (tower layers, Qwen blocks, cross layers)
_LAYER = re.compile(r"\.(layers|blocks)\.(\d+)\.")


@dataclass(frozen=True, slots=True)
class VisionLinear:
    """One nn.Linear outside the language model's blocks, as transformers names it."""

    module: str  # e.g. model.vision_tower.vision_model.encoder.layers.3.self_attn.q_proj
    in_features: int
    out_features: int
    part: Part
    bias: bool = False

    @property
    def layer(self) -> int | None:
        found = _LAYER.search(self.module)
        return int(found.group(2)) if found else None

    @property
    def folded(self) -> str:
        """The module under one name for all its layers (``layers.*``)."""
        return _LAYER.sub(r".\1.*.", self.module, count=1)


@lru_cache(maxsize=256)
def vision_linears(arch: Architecture) -> tuple[VisionLinear, ...]:
    """Every nn.Linear of the tower, the projector and the cross-attention layers (the
    tensors ftmem.vision lists, each nn.Linear weight marked ``linear``: convolutions
    and Gemma 3's bare projection matrix are not nn.Linear, so peft's all-linear skips
    them and a name never makes them LoRA layers here)."""
    from ftmem import mllama
    from ftmem.vision import projector_params, tower_params

    v = arch.vision
    if v is None:
        return ()
    parts: list[tuple[Part, list]] = [
        ("tower", tower_params(v)),
        ("projector", projector_params(v, arch.hidden_size)),
    ]
    if v.mllama is not None:
        parts.append(("cross", mllama.cross_layer_params(v, arch.hidden_size)))
    out = []
    for part, params in parts:
        biases = {p.name.removesuffix(".bias") for p in params if p.name.endswith(".bias")}
        for p in params:
            if p.linear:
                out_f, in_f = p.shape
                module = p.name.removesuffix(".weight")
                out.append(VisionLinear(module, in_f, out_f, part, module in biases))
    return tuple(out)


def peft_targets(arch: Architecture, run: RunConfig) -> list[str] | str:
    """The run's LoRA targets as the peft ``target_modules`` a user writes: ftmem's roles
    (q, v, attention) become the language model's module names for them (q_proj), as
    frameworks and scripts name them; other items stay as given; ``all-linear`` stays."""
    items = [x.strip() for x in run.targets.strip().split(",") if x.strip()]
    if [i.lower() for i in items] == [ALL_LINEAR]:
        return ALL_LINEAR
    linears = [lin for lin in layout(arch).linears if lin.is_module]
    out: list[str] = []
    for item in items:
        roles = (
            ATTENTION_ROLES
            if item.lower() == "attention"
            else (item.lower(),)
            if item.lower() in _ROLES
            else ()
        )
        names = [lin.leaf for lin in linears if set(lin.roles) & set(roles)] if roles else [item]
        out += [n for n in names if n not in out]
    return out


def peft_matches(targets: list[str] | str, module: str) -> bool:
    """peft 0.21.2 check_target_module_exists for a list of names (l.2372-2376)."""
    if isinstance(targets, str):
        return targets == ALL_LINEAR  # (the tower's linears are nn.Linear)
    return any(module == t or module.endswith("." + t) for t in targets)


def _filtered_parts(run: RunConfig) -> frozenset[Part]:
    """The parts a framework keeps adapters out of (LLaMA-Factory: the tower and the
    projector, its freeze_vision_tower and freeze_multi_modal_projector defaults)."""
    if profile_of(run).freezes_vision:
        return frozenset({"tower", "projector"})
    return frozenset()


def filtered_pattern(run: RunConfig) -> str | None:
    """peft's exclude_modules for the parts a framework filters out (the measurement)."""
    if "tower" in _filtered_parts(run):
        return r".*\.(vision_tower|vision_model|multi_modal_projector|visual)(\..*)?"
    return None


def adapted(arch: Architecture, run: RunConfig) -> tuple[VisionLinear, ...]:
    """The tower's, projector's and cross-attention layers' linears that get LoRA."""
    if arch.vision is None or run.method not in ADAPTER_METHODS:
        return ()
    targets = peft_targets(arch, run)
    skipped = _filtered_parts(run)
    return tuple(
        lin
        for lin in vision_linears(arch)
        if lin.part not in skipped and peft_matches(targets, lin.module)
    )


def vision_only_items(arch: Architecture, run: RunConfig) -> frozenset[str]:
    """Target items that name a vision linear and no language-model linear (Qwen2.5-VL's
    ``qkv``, CLIP's ``fc1``): peft accepts them, the language model's selection skips them."""
    if arch.vision is None or run.method not in ADAPTER_METHODS:
        return frozenset()
    targets = peft_targets(arch, run)
    if isinstance(targets, str):
        return frozenset()
    lm = [lin.module for lin in layout(arch).linears if lin.is_module]
    vis = [lin.module for lin in adapted(arch, run)]
    return frozenset(
        t
        for t in targets
        if any(peft_matches([t], m) for m in vis) and not any(peft_matches([t], m) for m in lm)
    )


@dataclass(frozen=True, slots=True)
class FoldedLinear:
    """Adapted linears of one name and shape across layers."""

    module: str
    in_features: int
    out_features: int
    part: Part
    count: int
    layers: tuple[int, ...]  # the layer indices (empty: not in a layer stack)


def folded(lins: tuple[VisionLinear, ...]) -> list[FoldedLinear]:
    groups: dict[tuple[str, int, int, Part], list[int]] = defaultdict(list)
    for lin in lins:
        layer = lin.layer
        groups[(lin.folded, lin.in_features, lin.out_features, lin.part)].append(
            -1 if layer is None else layer
        )
    return [
        FoldedLinear(name, i, o, part, len(ls), tuple(x for x in ls if x >= 0))
        for (name, i, o, part), ls in groups.items()
    ]


def _trained(arch: Architecture, run: RunConfig, lin: FoldedLinear) -> tuple[int, int]:
    """(trained, idle) adapters of a folded linear: without images nothing outside the
    language model's blocks runs, and above the layer LLaVA's projector reads (its
    vision_feature_layer -2) no gradient arrives, so those adapters' .grad stays None
    and torch's AdamW makes them no state (as ftmem.vision_step.groups for the weights)."""
    v = arch.vision
    assert v is not None
    if not run.images:
        return 0, lin.count
    if lin.part != "tower":
        return lin.count, 0
    idle = sum(1 for i in lin.layers if not _reached(arch, i))
    return lin.count - idle, idle


def _reached(arch: Architecture, layer: int | None) -> bool:
    """A gradient reaches this tower layer: LLaVA's projector reads the layer below the
    last (vision_feature_layer -2), the last runs and its output is dropped (its graph,
    and what its adapters saved, with it)."""
    v = arch.vision
    assert v is not None
    return v.mllama is not None or layer is None or layer < v.layers_kept


def groups(arch: Architecture, run: RunConfig, dtypes) -> list:
    """lora_A (r × in) and lora_B (out × r) beside each adapted linear, in the adapter
    dtype as the blocks' (methods._lora_groups), DoRA's magnitude per output feature;
    outside the blocks (in_block False)."""
    from ftmem.methods import TensorGroup  # (methods imports this module)

    out = []
    for lin in folded(adapted(arch, run)):
        shapes: list[tuple[str, tuple[int, ...]]] = [
            ("lora_A", (run.r, lin.in_features)),
            ("lora_B", (lin.out_features, run.r)),
        ]
        if run.method == "dora":
            shapes.append(("lora_magnitude_vector", (lin.out_features,)))
        trained, idle = _trained(arch, run, lin)
        for part, shape in shapes:
            name = f"{lin.module}.{part}"
            if idle:
                out.append(
                    TensorGroup(
                        name + " (unread)",
                        shape,
                        idle,
                        dtypes.adapter,
                        False,
                        adapter=True,
                        in_block=False,
                    )
                )
            if trained:
                out.append(
                    TensorGroup(
                        name, shape, trained, dtypes.adapter, True, adapter=True, in_block=False
                    )
                )
    return out


# where in a tower layer a linear sits (its input needs a gradient from there on):
# 1 the attention's input projections, 2 its output projection, 3 the MLP's input
# linears, 4 its output linear (ftmem.vision.input_grad_parts's ``start``)
_STAGE = {
    "q_proj": 1, "k_proj": 1, "v_proj": 1, "qkv": 1,
    "out_proj": 2, "o_proj": 2, "proj": 2,
    "fc1": 3, "gate_proj": 3, "up_proj": 3,
    "fc2": 4, "down_proj": 4,
}  # fmt: skip


def first_tower_adapter(lins: tuple[VisionLinear, ...]) -> tuple[int, int] | None:
    """(layer, stage) of the tower's lowest adapted linear: gradients run from there."""
    found = [
        (lin.layer, _STAGE[lin.module.rsplit(".", 1)[-1]])
        for lin in lins
        if lin.part == "tower" and lin.layer is not None
    ]
    return min(found) if found else None


def _tokens(arch: Architecture, lin: VisionLinear, images: int, text_tokens: int) -> int:
    """The rows an adapted linear of the tower or projector reads in one step."""
    v = arch.vision
    assert v is not None
    if v.mllama is not None:
        return _mllama_tokens(arch, lin, images, text_tokens)
    if v.qwen or v.encoder == "pixtral":
        # Qwen-VL's merger and Mistral 3's patch merger and MLP read the patches merged
        # merge_size² into one row (Mistral 3's norm before them is no linear)
        merged = lin.part == "projector"
        return images * v.patches // (v.merge_size**2 if merged else 1)
    if lin.part == "tower":
        return images * v.tower_tokens
    return images * (v.patches if v.drop_cls else v.tower_tokens)  # LLaVA's linear_1/2


def frozen_weight_copies(arch: Architecture, run: RunConfig, dtypes, unread: bool = False) -> int:
    """Autocast's 16-bit copies of the frozen tower's and projector's weights where the
    linear's input needs a gradient (:func:`inputs_needing_grad`): F.linear's backward
    takes the input's gradient through the weight, and under autocast the weight it was
    handed is the cast copy (aten/src/ATen/autocast_mode.h cached_cast), which its node
    keeps, one per linear (measured on the tiny LLaVA, LoRA bf16-mixed: nine of the
    tower's 48 × 48 linears and the projector's two). Where the input needs none, the
    frozen linear keeps nothing. None under bitsandbytes: its MatMul4Bit keeps the
    packed weight, a parameter (bitsandbytes 0.50.2 autograd/_functions.py l.357-358).
    ``unread``: the layers above the one LLaVA's projector reads instead
    (:func:`unread_held`). Trained parts are not counted here, nor checkpointed layers'
    linears (their recompute casts again in backward: measured, LLaVA LoRA bf16-mixed
    checkpointed keeps only the projector's two copies)."""
    from ftmem.dtypes import BYTES_PER_ELEMENT
    from ftmem.vision_step import training

    v = arch.vision
    if v is None or v.mllama is not None or not dtypes.casts_weights or dtypes.quantized:
        return 0
    trains = training(arch, run)
    frozen = {"tower": not trains.tower, "projector": not trains.projector, "cross": False}
    grad = inputs_needing_grad(arch, run)
    e = BYTES_PER_ELEMENT[dtypes.compute]
    copies = sum(
        lin.in_features * lin.out_features * e
        for lin in vision_linears(arch)
        if frozen[lin.part]
        and lin.module in grad
        and not (run.grad_ckpt and lin.part == "tower")
        and (lin.part == "tower" and not _reached(arch, lin.layer)) == unread
    )
    return copies + (0 if unread else _pooled_projection_copy(arch, run, e))


def trained_weight_copies(arch: Architecture, run: RunConfig, dtypes) -> int:
    """Autocast's 16-bit copies of the trained tower's and projector's weights that a
    matmul or a convolution reads (the nn.Linear weights, the patch convolution, Gemma
    3's projection matrix): each is a leaf needing a gradient, so autocast caches one
    cast of it per forward (aten/src/ATen/autocast_mode.h cached_cast) and the node that
    reads it keeps it for its input's gradient (a convolution keeps its weight whatever
    needs a gradient). Measured on the tiny LLaVA full bf16-mixed: the patch
    convolution's, the six linears of each layer the projector reads and the
    projector's two. The layers above the one LLaVA's projector reads keep theirs in a
    graph no gradient reaches, freed with the forward's output; checkpointed layers keep
    none (measured, full bf16-mixed checkpointed: the convolution's and the
    projector's)."""
    from ftmem.dtypes import BYTES_PER_ELEMENT
    from ftmem.vision import projector_params, tower_params
    from ftmem.vision_step import training

    v = arch.vision
    if v is None or v.mllama is not None or not run.images or not dtypes.casts_weights:
        return 0
    trains = training(arch, run)
    params = [*(tower_params(v) if trains.tower else [])]
    params += projector_params(v, arch.hidden_size) if trains.projector else []
    total = 0
    for p in params:
        if not (p.linear or len(p.shape) >= 4 or p.name.endswith("mm_input_projection_weight")):
            continue  # (norms, biases and position embeddings: no matmul reads them)
        found = _LAYER.search(p.name)
        if found and run.grad_ckpt:
            continue  # (a checkpointed layer's recompute casts again in backward)
        total += p.numel if _reached(arch, int(found.group(2)) if found else None) else 0
    return total * BYTES_PER_ELEMENT[dtypes.compute]


def _pooled_projection_copy(arch: Architecture, run: RunConfig, e: int) -> int:
    """Gemma 3's frozen projection matrix, no nn.Linear: ``torch.matmul(normed,
    mm_input_projection_weight)`` (transformers 5.25 gemma3/modeling_gemma3.py l.667),
    which autocast runs in the 16-bit dtype on a cast of the weight, kept by its node
    where the tower below passes gradients (measured: LoRA bf16-mixed, with and without
    checkpointing, one H × T copy)."""
    from ftmem.vision_step import input_hooked, training

    v = arch.vision
    assert v is not None
    if v.projector != "pooled" or training(arch, run).projector:
        return 0
    if not (input_hooked(arch, run) or first_tower_adapter(adapted(arch, run)) is not None):
        return 0
    return v.hidden_size * arch.hidden_size * e


def unread_held(arch: Architecture, run: RunConfig, dtypes) -> int:
    """What the layers above the one LLaVA's projector reads keep while the forward runs:
    their adapters make them record a graph, and LlavaModel.forward keeps the whole
    vision output (its hidden_states and last_hidden_state, which reference that graph)
    in the model output's image_outputs (transformers 5.24 llava/modeling_llava.py
    l.221-246), so it lives to the end of the forward and is freed with the output,
    before backward (no gradient reaches it)."""
    from ftmem.dtypes import BYTES_PER_ELEMENT, layer_norm_stats_bytes
    from ftmem.vision import input_grad_parts
    from ftmem.vision_step import frozen_path

    v = arch.vision
    if v is None or v.mllama is not None or v.qwen or not run.images or run.grad_ckpt:
        return 0
    lins = adapted(arch, run)
    first = first_tower_adapter(lins)
    if first is None or v.layers_kept == v.num_layers:
        return 0
    e, images = BYTES_PER_ELEMENT[dtypes.compute], run.batch_size * run.images
    layer, start = max(first, (v.layers_kept, 0))
    eager, ln = run.attn == "eager", layer_norm_stats_bytes(run.device, e)
    path = frozen_path(dtypes)
    total = sum(
        sum(input_grad_parts(v, images, e, eager, start if i == layer else 0, path, ln_stats=ln))
        for i in range(layer, v.num_layers)
    )
    total += frozen_weight_copies(arch, run, dtypes, unread=True)
    unread = tuple(lin for lin in lins if lin.part == "tower" and not _reached(arch, lin.layer))
    return total + adapter_saved(arch, run, dtypes, unread, unread=True)


# the part whose layers gradient checkpointing reaches: the CLIP, SigLIP, Qwen-VL and
# Pixtral layers (GradientCheckpointingLayers); Llama-3.2-Vision's cross-attention layers,
# not its vision layers (ftmem.mllama_step)
_CHECKPOINTED: dict[bool, Part] = {False: "tower", True: "cross"}


def _mllama_tokens(arch: Architecture, lin: VisionLinear, images: int, text_tokens: int) -> int:
    """Llama-3.2-Vision: the vision layers run over every tile's padded tokens, the
    projector and the cross-attention k/v over the image states, the other
    cross-attention linears over the text tokens (``images`` is batch × images)."""
    from ftmem.mllama import image_states, padded_tile_tokens

    v = arch.vision
    assert v is not None and v.mllama is not None
    if lin.part == "tower":
        return images * v.mllama.max_num_tiles * padded_tile_tokens(v)
    leaf = lin.module.rsplit(".", 1)[-1]
    if lin.part == "projector" or leaf in ("k_proj", "v_proj"):
        return images * image_states(v)
    return text_tokens


def adapter_saved(arch: Architecture, run: RunConfig, dtypes, lins, unread: bool = False) -> int:
    """What the adapters themselves keep (as ftmem.adapters.lora.LoRA.saved for a block's
    linear): the input peft casts to the adapter dtype (one copy per adapter; 16-bit
    under autocast), or the input itself, read once per input where no cast comes
    between; the dropout's output, and its mask where the input needs a gradient
    (:func:`inputs_needing_grad`); lora_A's output (r per row); autocast's 16-bit copies
    of the adapter weights (lora_A's only where its input needs a gradient); DoRA's
    rescale (ftmem.adapters.dora.DoRA.sizes). Inside checkpointed tower layers they are
    recomputed, not kept. ``unread``: those of the layers no gradient reaches instead
    (:func:`unread_held`)."""
    from ftmem.adapters.dora import DoRA
    from ftmem.dtypes import BYTES_PER_ELEMENT
    from ftmem.ops.dropout import Dropout

    v = arch.vision
    assert v is not None
    e, ae = BYTES_PER_ELEMENT[dtypes.compute], BYTES_PER_ELEMENT[dtypes.adapter]
    images = run.batch_size * run.images
    grad = inputs_needing_grad(arch, run)
    total = 0
    read: set[tuple[str, int]] = set()
    for lin in lins:
        if _reached(arch, lin.layer) == unread and lin.part == "tower":
            continue
        if run.grad_ckpt and lin.part == _CHECKPOINTED[v.mllama is not None]:
            continue  # (recomputed in backward)
        T, inp = _tokens(arch, lin, images, run.batch_size * run.seq_len), lin.in_features
        in_grad = lin.module in grad
        if run.dropout > 0:
            total += T * inp * (e if dtypes.autocast else ae)
            total += T * inp * Dropout.mask_bytes(run.device, ae) if in_grad else 0
        elif dtypes.autocast or ae != e:
            total += T * inp * (e if dtypes.autocast else ae)
        else:
            # (q, k and v read one tensor, as gate and up do)
            key = (lin.module.rsplit(".", 1)[0], _STAGE.get(lin.module.rsplit(".", 1)[-1], 0))
            total += 0 if key in read else T * inp * e
            read.add(key)
        total += T * run.r * (e if dtypes.autocast else ae)
        if dtypes.autocast:
            total += 2 * run.r * (lin.out_features + (inp if in_grad else 0))
        if run.method == "dora":
            peft_casts = not dtypes.autocast and ae != e
            features = (inp, lin.out_features)
            sizes = DoRA.sizes(dtypes, run, e, T, features, lin.bias, peft_casts, in_grad)
            total += sum(size for _, size in sizes)
    return total


def inputs_needing_grad(arch: Architecture, run: RunConfig) -> frozenset[str]:
    """The tower's, projector's and cross-attention layers' linears whose input needs a
    gradient: every one where the tower trains or transformers' enable_input_require_grads
    hooked its patch embedding (ftmem.vision_step.input_hooked), else those after the
    first adapted or trained linear in the image path's order (the tower's layers by
    _STAGE, Llama-3.2-Vision's global layers after its local ones, then the projector's
    linears), q, k and v of one layer reading one input. Below the first, nothing that
    needs a gradient has run: peft's dropout there keeps no mask, and DoRA no scale − 1
    (measured, tests/accuracy/cases.py _tower_adapters). The cross-attention layers read
    the text states, which LoRA on the blocks below gives a gradient; their k and v read
    the image states, which need one when anything below them does."""
    from ftmem.vision_step import checkpointing_hooks_tower, input_hooked, training

    v = arch.vision
    if v is None or not run.images:
        return frozenset()
    trains = training(arch, run)
    hooked = input_hooked(arch, run) or (v.mllama is not None and checkpointing_hooks_tower(run))
    adapted_names = {lin.module for lin in adapted(arch, run)}
    image_path = [
        (_flow_position(lin, i), lin)
        for i, lin in enumerate(vision_linears(arch))
        if lin.part != "cross"
    ]
    image_path.sort(key=lambda item: item[0])
    upstream = trains.tower or hooked
    out: set[str] = set()
    for _, group in groupby(image_path, key=lambda item: item[0]):
        members = [lin for _, lin in group]
        if upstream:
            out.update(lin.module for lin in members)
        trained = trains.tower if members[0].part == "tower" else trains.projector
        upstream = upstream or trained or any(lin.module in adapted_names for lin in members)
    for lin in vision_linears(arch):
        leaf = lin.module.rsplit(".", 1)[-1]
        if lin.part == "cross" and (leaf not in ("k_proj", "v_proj") or upstream):
            out.add(lin.module)
    return frozenset(out)


def _flow_position(lin: VisionLinear, index: int) -> tuple[int, int, int, int]:
    """(part, layer stack, layer, stage) of a linear on the image path: the tower's
    layers (Llama-3.2-Vision's global_transformer after its local transformer), by
    _STAGE within a layer; the projector's linears after them, each its own position
    (``index``: the order ftmem.vision lists them in)."""
    if lin.part == "projector":
        return (1, 0, index, 0)
    leaf = lin.module.rsplit(".", 1)[-1]
    stack = 1 if ".global_transformer." in lin.module else 0
    return (0, stack, lin.layer or 0, _STAGE.get(leaf, 0))


_PART_NAMES = {"tower": "vision tower", "projector": "projector", "cross": "cross-attention layers"}


def notes(arch: Architecture, run: RunConfig) -> list[str]:
    """What the estimate says of LoRA outside the language model's blocks."""
    if arch.vision is None or run.method not in ADAPTER_METHODS:
        return []
    lins = adapted(arch, run)
    skipped = _filtered_parts(run)
    out = []
    if lins:
        parts = ", ".join(
            f"{sum(1 for lin in lins if lin.part == p)} in the {_PART_NAMES[p]}"
            for p in ("tower", "projector", "cross")
            if any(lin.part == p for lin in lins)
        )
        out.append(
            f"LoRA targets ({run.targets}): peft matches module names over the whole model, "
            f"so they also adapt {len(lins)} linears outside the language model's blocks "
            f"({parts}); counted, with their gradients, states and saved activations."
            + ("" if run.images else " Without --images they never run: no gradient, no state.")
        )
    if skipped:
        out.append(
            "LLaMA-Factory keeps LoRA out of the vision tower and the projector "
            "(freeze_vision_tower, freeze_multi_modal_projector: patch_target_modules)"
            + (
                "; Llama-3.2-Vision's cross-attention layers are the language model's and "
                "keep theirs."
                if arch.vision.mllama is not None
                else "."
            )
        )
    return out
