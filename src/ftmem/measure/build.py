"""Build the real model, its trainable set and optimizer from an Architecture + RunConfig.

Everything here imports torch/transformers/peft; import this module lazily.
"""

from __future__ import annotations

import contextlib
import math
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import torch
from torch import nn

from ftmem import vision_pixtral
from ftmem.arch import Architecture, as_trained, count_params, layout, param_path
from ftmem.errors import InvalidInputError
from ftmem.measure.saved import FRAMEWORK_ROTARY_CACHE
from ftmem.profiles import profile_of
from ftmem.run import PROMPT_METHODS, RunConfig, split_patterns

if TYPE_CHECKING:
    from peft import PeftConfig
    from transformers import PreTrainedModel

# --------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def param_dtype(run: RunConfig) -> torch.dtype:
    """dtype of the model's (non-adapter, non-quantised) parameters."""
    if run.precision == "fp32" or run.precision.endswith("-mixed"):
        return torch.float32
    return _DTYPES[run.precision]


def autocast_dtype(run: RunConfig) -> torch.dtype | None:
    """16-bit dtype of torch.autocast around forward+loss, or None without autocast."""
    if not run.uses_autocast:
        return None
    return torch.float16 if run.precision.startswith("fp16") else torch.bfloat16


def compute_dtype(run: RunConfig) -> torch.dtype:
    """bnb_4bit_compute_dtype for qlora: explicit, else the run's 16-bit dtype, else fp32."""
    if run.compute_dtype:
        return _DTYPES[run.compute_dtype]
    return autocast_dtype(run) or param_dtype(run)


# --------------------------------------------------------------------------------------
# transformers config
# --------------------------------------------------------------------------------------


def attn_implementation(run: RunConfig, device: str) -> tuple[str, list[str]]:
    notes: list[str] = []
    if run.attn == "eager":
        return "eager", notes
    if run.attn == "sdpa":
        return "sdpa", notes
    # flash
    if torch.device(device).type == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2", notes
        except ImportError:
            notes.append("attn=flash: flash_attn is not installed, measured with sdpa instead")
            return "sdpa", notes
    notes.append("attn=flash: FlashAttention needs CUDA, measured with sdpa on the CPU")
    return "sdpa", notes


def model_class(arch: Architecture):
    """transformers' auto class for the family: seq2seq for T5, causal LM otherwise."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoModelForSeq2SeqLM,
    )

    if arch.vision is not None:
        return AutoModelForImageTextToText
    return AutoModelForSeq2SeqLM if arch.encoder_decoder else AutoModelForCausalLM


def hf_config_kwargs(arch: Architecture, attn_impl: str = "sdpa") -> tuple[str, dict[str, Any]]:
    """(model_type, kwargs for AutoConfig.for_model): the family's key map
    (``ftmem.families``) written for this architecture, with no dropout and no cache."""
    family = arch.traits
    common: dict[str, Any] = {
        "vocab_size": arch.vocab_size,
        "tie_word_embeddings": arch.tie_embeddings,
        "use_cache": False,
        "attn_implementation": attn_impl,
    }
    dropouts = {key: getattr(arch, site) for site, key in family.dropout_keys.items()}
    if family.router_aux_loss:
        common["output_router_logits"] = arch.router_aux_loss
    if family.head_bias_switch:  # (PhiMoE's lm_head_bias)
        common[family.head_bias_switch] = arch.head_bias
    if family.qk_norm_switch:  # (Cohere's use_qk_norm, StableLM's and Phi's qk_layernorm)
        common[family.qk_norm_switch] = arch.qk_norm
    return family.model_types[0], {**common, **family.config.build(arch), **dropouts}


def hf_config(arch: Architecture, attn_impl: str = "sdpa"):
    from transformers import AutoConfig

    model_type, kw = hf_config_kwargs(arch, attn_impl)
    if arch.traits.qk_norm_switch is None and arch.qk_norm != arch.traits.qk_norm:
        # transformers has no switch for them: the model type decides (refused here, not
        # left to the parameter-count check's AssertionError)
        has = "has" if arch.traits.qk_norm else "has no"
        raise InvalidInputError(
            f"{arch.name} sets qk_norm {str(arch.qk_norm).lower()}, but transformers' "
            f"{model_type} model {has} per-head q/k norms: it cannot be measured as written."
        )
    # family defaults (e.g. Phi-3's pad id 32000) can lie outside a small test vocabulary
    defaults = AutoConfig.for_model(model_type)
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
        val = getattr(defaults, attr, None)
        if isinstance(val, int) and val >= arch.vocab_size and attr not in kw:
            kw[attr] = None
    text = AutoConfig.for_model(model_type, **kw)
    return text if arch.vision is None else image_text_config(arch, text)


def image_token_id(arch: Architecture) -> int:
    """The image placeholder id a measured image-text model uses: the vocabulary's last
    (random token ids are drawn below it)."""
    return arch.vocab_size - 1


def image_text_config(arch: Architecture, text):
    """LlavaConfig or Gemma3Config around the language model's config, its vision
    config written from Architecture.vision (ftmem.vision)."""
    from transformers import (
        CLIPVisionConfig,
        Gemma3Config,
        LlavaConfig,
        SiglipVisionConfig,
    )

    v = arch.vision
    assert v is not None
    if v.mllama is not None:
        from ftmem.measure import mllama

        return mllama.config(arch, text)
    if v.qwen:
        return qwen_vl_config(arch, text)
    if v.encoder == "pixtral":
        return mistral3_config(arch, text)
    vision = {
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_hidden_layers": v.num_layers,
        "num_attention_heads": v.num_heads,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "num_channels": v.num_channels,
        "attn_implementation": text._attn_implementation,
    }
    common: dict[str, Any] = {"tie_word_embeddings": arch.tie_embeddings, "use_cache": False}
    cfg: Any
    if v.projector == "mlp":
        cfg = LlavaConfig(
            vision_config=CLIPVisionConfig(**vision),
            text_config=text,
            image_token_index=image_token_id(arch),
            vision_feature_layer=v.feature_layer,
            vision_feature_select_strategy="default" if v.drop_cls else "full",
            multimodal_projector_bias=v.projector_bias,
            image_seq_length=v.tokens_per_image,
            **common,
        )
    else:
        cfg = Gemma3Config(
            vision_config=SiglipVisionConfig(**vision, vision_use_head=False),
            text_config=text,
            mm_tokens_per_image=v.tokens_per_image,
            image_token_index=image_token_id(arch),
            boi_token_index=0,
            eoi_token_index=0,
            **common,
        )
    cfg._attn_implementation = text._attn_implementation
    return cfg


def mistral3_config(arch: Architecture, text):
    """Mistral3Config around the language model's config, its Pixtral vision config
    written from Architecture.vision (ftmem.vision_pixtral; SwiGLU with SiLU, as
    Mistral-Small-3.1's config.json sets it)."""
    from transformers import Mistral3Config

    v = arch.vision
    assert v is not None
    vision = {
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_hidden_layers": v.num_layers,
        "num_attention_heads": v.num_heads,
        "head_dim": v.hidden_size // v.num_heads,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "num_channels": v.num_channels,
        "hidden_act": "silu",
    }
    attn = text._attn_implementation  # (read first: Mistral3Config resets the text config's)
    cfg = Mistral3Config(
        text_config=text,
        vision_config=vision,
        image_token_index=image_token_id(arch),
        spatial_merge_size=v.merge_size,
        vision_feature_layer=-1,
        multimodal_projector_bias=v.projector_bias,
        tie_word_embeddings=arch.tie_embeddings,
    )
    cfg._attn_implementation = attn  # (the setter sets the text and vision configs' too)
    return cfg


def _mrope_section(head_dim: int) -> list[int]:
    """M-RoPE's (t, h, w) split of head_dim / 2 frequencies, in Qwen's proportions
    (16, 24, 24 of 64 at head_dim 128)."""
    spatial = head_dim // 2 * 3 // 8
    return [head_dim // 2 - 2 * spatial, spatial, spatial]


def qwen_vl_config(arch: Architecture, text):
    """Qwen2_5_VLConfig or Qwen2VLConfig around the Qwen2 language model's config (its
    keys as the text config, M-RoPE's sections for its head size), the vision config
    written from Architecture.vision (ftmem.vision_qwen)."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    v = arch.vision
    assert v is not None
    text_kw = {
        k: val for k, val in text.to_dict().items() if k not in ("model_type", "architectures")
    }
    rope = dict(text_kw.get("rope_parameters") or {})
    rope.update(rope_type="default", mrope_section=_mrope_section(arch.head_size))
    text_kw["rope_parameters"] = rope
    vision: dict[str, Any] = {
        "depth": v.num_layers,
        "num_heads": v.num_heads,
        "in_channels": v.num_channels,
        "patch_size": v.patch_size,
        "spatial_merge_size": v.merge_size,
        "temporal_patch_size": v.temporal_patch,
    }
    common: dict[str, Any] = {
        "image_token_id": image_token_id(arch),
        "tie_word_embeddings": arch.tie_embeddings,
    }
    if v.encoder == "qwen2_5_vl":
        vision |= {
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "out_hidden_size": arch.hidden_size,
            "window_size": v.window_size,
            "fullatt_block_indexes": list(v.full_attention_layers),
        }
        cfg: Any = Qwen2_5_VLConfig(text_config=text_kw, vision_config=vision, **common)
    else:
        if v.intermediate_size % v.hidden_size:
            raise InvalidInputError("Qwen2-VL's MLP is embed_dim × mlp_ratio wide")
        vision |= {
            "embed_dim": v.hidden_size,
            "hidden_size": arch.hidden_size,
            "mlp_ratio": v.intermediate_size // v.hidden_size,
        }
        cfg = Qwen2VLConfig(text_config=text_kw, vision_config=vision, **common)
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = text._attn_implementation
    cfg.text_config.use_cache = False
    return cfg


def _qwen_image_inputs(v, run: RunConfig, rows: int, gen) -> dict[str, torch.Tensor]:
    """Qwen's processor output: one row of C × T × P² per patch, and each image's grid of
    1 × h × w patches."""
    side = v.image_size // v.patch_size
    images = rows * run.images
    row = v.num_channels * v.temporal_patch * v.patch_size**2
    return {
        "pixel_values": torch.randn(images * side * side, row, generator=gen),
        "image_grid_thw": torch.tensor([[1, side, side]] * images),
    }


def image_inputs(
    arch: Architecture | None, run: RunConfig, ids: torch.Tensor, seed: int, teacher: bool
) -> dict[str, torch.Tensor]:
    """Pixel values for ``run.images`` images per sequence, their placeholder tokens put
    at the start of each sequence (after one text token) and nowhere else."""
    v = None if arch is None else arch.vision
    if arch is None or v is None or not run.images:
        return {}
    if run.objective != "sft" or run.loss != "standard" or teacher:
        raise RuntimeError("images are measured with the standard SFT loss only")
    if v.mllama is not None:
        from ftmem.measure import mllama

        return mllama.inputs(arch, run, ids, seed)
    image = image_token_id(arch)
    ids.masked_fill_(ids == image, 0)
    count = run.images * v.tokens_per_image
    if v.encoder == "pixtral":
        # only the [IMG] tokens take features; the [IMG_BREAK]/[IMG_END] ones are text
        # tokens (ftmem counts them in --seq-len: tokens_per_image)
        count = run.images * vision_pixtral.features_per_image(v)
    ids[:, 1 : 1 + count] = image
    gen = torch.Generator().manual_seed(seed)
    if v.qwen:
        inputs = _qwen_image_inputs(v, run, ids.shape[0], gen)
        # the processor's mm_token_type_ids (1 at image tokens): M-RoPE's 3-D positions
        inputs["mm_token_type_ids"] = (ids == image).long()
        return {k: t.to(ids.device) for k, t in inputs.items()}
    shape = (ids.shape[0] * run.images, v.num_channels, v.image_size, v.image_size)
    inputs = {"pixel_values": torch.randn(shape, generator=gen)}
    if arch.traits.image_tokens_bidirectional:
        # Gemma3Processor's token_type_ids (1 at image tokens), which make the model's
        # masks bidirectional over each image (ftmem.ops.attention.image_block_mask)
        inputs["token_type_ids"] = (ids == image).long()
    if v.encoder == "pixtral":
        inputs["image_sizes"] = torch.tensor([[v.image_size, v.image_size]] * shape[0])
    return {k: t.to(ids.device) for k, t in inputs.items()}


def _vision_trainable(model: nn.Module, arch: Architecture, run: RunConfig) -> None:
    """The tower and projector train or not as ftmem.vision_step decides (in place)."""
    if arch.vision is None:
        return
    from ftmem.vision_step import training

    trains = training(arch, run)
    if arch.vision.mllama is not None:
        from ftmem.measure import mllama

        return mllama.set_trainable(model, arch, run, trains)
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue  # (peft's adapters on the tower train: ftmem.vision_lora)
        if "multi_modal_projector." in name or "visual.merger." in name:
            p.requires_grad_(trains.projector)
        elif "vision_tower." in name or "visual." in name:
            p.requires_grad_(trains.tower)


# --------------------------------------------------------------------------------------
# parameter-count check against arch.py
# --------------------------------------------------------------------------------------
class ParamCountMismatch(AssertionError):
    """The real model's parameters differ from ftmem.arch.layout (a bug in arch.py)."""


def unique_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """named_parameters with each storage once (tied embeddings once)."""
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters(remove_duplicate=False):
        key = p.untyped_storage()._cdata if p.device.type != "meta" else id(p)
        if key in seen:
            continue
        seen.add(key)
        out.append((name, p))
    return out


def logical_numel(p: torch.Tensor) -> int:
    """Number of weights a parameter stands for (a packed 4-bit tensor: the unpacked count)."""
    qs = getattr(p, "quant_state", None)
    if qs is not None and getattr(qs, "shape", None) is not None:
        return math.prod(qs.shape)
    return p.numel()


def layout_differences(arch: Architecture, model: nn.Module) -> list[str]:
    """Parameter names/shapes where ftmem.arch.layout and the real model disagree
    (block 0 and the outer parameters; for T5 every parameter by its full name)."""
    lay = layout(arch)
    if arch.encoder_decoder or any(p.blocks for p in lay.block):  # (or blocks differ)
        want_all = {p.name: tuple(p.shape) for p in lay.outer}
        for i in range(arch.num_layers):
            want_all |= {
                param_path(arch, i, p.name): tuple(p.shape) for p in lay.block if p.in_block(i)
            }
        got_all = {n: tuple(p.shape) for n, p in unique_params(model)}
        return [
            f"{n}: arch.py {want_all.get(n)} vs model {got_all.get(n)}"
            for n in sorted(set(want_all) | set(got_all))
            if want_all.get(n) != got_all.get(n)
        ]
    want: dict[str, tuple[int, ...]] = {}
    for p in lay.block:
        copies = getattr(p, "copies", 1)  # older arch.py: experts as a copy count
        want[p.name] = tuple(p.shape) if copies == 1 else (copies, *p.shape)
    found = find_blocks(model)
    got: dict[str, tuple[int, ...]] = {}
    outer_got: dict[str, tuple[int, ...]] = {}
    if found is not None:
        prefix, blocks = found
        got = {n: tuple(p.shape) for n, p in blocks[0].named_parameters()}
        outer_got = {
            n: tuple(p.shape) for n, p in unique_params(model) if not n.startswith(prefix + ".")
        }
    outer_want = {p.name: tuple(p.shape) for p in lay.outer}
    diff = [
        f"block {n}: arch.py {want.get(n)} vs model {got.get(n)}"
        for n in sorted(set(want) | set(got))
        if want.get(n) != got.get(n)
    ]
    diff += [
        f"{n}: arch.py {outer_want.get(n)} vs model {outer_got.get(n)}"
        for n in sorted(set(outer_want) | set(outer_got))
        if outer_want.get(n) != outer_got.get(n)
    ]
    return diff


def check_param_count(arch: Architecture, model: nn.Module) -> list[str]:
    """Raise ParamCountMismatch if the counts differ; else return name/shape differences."""
    real = sum(p.numel() for _, p in unique_params(model))
    expected = count_params(arch)
    diff = layout_differences(arch, model)
    if real != expected:
        raise ParamCountMismatch(
            f"{arch.name} ({arch.family}): transformers builds {real:,} parameters, "
            f"ftmem.arch.count_params says {expected:,} (diff {real - expected:+,}). "
            f"Differences: {'; '.join(diff) or 'none found by name'}."
        )
    return diff


# --------------------------------------------------------------------------------------
# model structure helpers
# --------------------------------------------------------------------------------------
def block_lists(model: nn.Module) -> list[nn.ModuleList]:
    """The model's stacks of blocks: T5's encoder and decoder, or the one decoder."""
    encoder = getattr(getattr(model, "encoder", None), "block", None)
    decoder = getattr(getattr(model, "decoder", None), "block", None)
    if encoder is not None and decoder is not None:
        return [encoder, decoder]
    found = find_blocks(model)
    assert found is not None, "no decoder-block ModuleList found"
    return [found[1]]


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(name, ModuleList) of the decoder blocks (model.layers / transformer.h), the
    first of the longest ModuleLists not inside another: a block's own lists are not the
    stack, however long (StableLM's per-head q/k LayerNorms: a tiny model's 4 heads
    outnumber its 2 layers)."""
    best: tuple[str, nn.ModuleList] | None = None
    outer: list[str] = []
    for name, mod in model.named_modules():  # (a list comes before what it holds)
        if not isinstance(mod, nn.ModuleList) or name.startswith(tuple(f"{o}." for o in outer)):
            continue
        outer.append(name)
        if best is None or len(mod) > len(best[1]):
            best = (name, mod)
    return best


def _fallback_target_names(arch: Architecture, run: RunConfig) -> list[str]:
    """Leaf module names peft should adapt, from run.targets (until ftmem.methods exists)."""
    lins = [lin for lin in layout(arch).linears if lin.is_module and lin.roles != ("router",)]
    spec = run.targets.strip()
    if spec == "all-linear":
        roles: set[str] | None = None
        names: set[str] = set()
    elif spec == "attention":
        roles, names = {"q", "k", "v", "o"}, set()
    else:
        roles, names = set(), set()
        for item in (s.strip() for s in spec.split(",") if s.strip()):
            if item in ("q", "k", "v", "o", "gate", "up", "down"):
                roles.add(item)
            else:
                names.add(item)
    out: list[str] = []
    for lin in lins:
        chosen = roles is None or bool(set(lin.roles) & roles) or lin.leaf in names
        if chosen and lin.leaf not in out:
            out.append(lin.leaf)
    for name in names:  # module names that are not in the layout are passed through
        if name not in out:
            out.append(name)
    return out


def target_module_names(arch: Architecture, run: RunConfig) -> list[str] | str:
    try:
        from ftmem.methods import adapted_module_names  # the estimator's own mapping
    except ImportError:
        return _fallback_target_names(arch, run)
    names = adapted_module_names(arch, run)
    return names if isinstance(names, str) else list(names)


# --------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------
def _init_device(device: str) -> contextlib.AbstractContextManager[object]:
    """Initialise weights where they will live: on the GPU directly (a CPU init of an
    8B model takes minutes), on the meta device for --fake (materialised later)."""
    if device == "meta" or device.startswith("cuda"):
        return torch.device(device)
    return contextlib.nullcontext()


def materialize_fake(model: nn.Module) -> None:
    """Replace meta parameters and buffers by fake CPU tensors (inside a FakeTensorMode).

    Assigns new objects rather than module.to(), which would try to swap fake tensors
    in place; tied parameters stay tied.
    """
    new: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in new:
                fake = torch.empty(p.shape, dtype=p.dtype, device="cpu")
                new[id(p)] = nn.Parameter(fake, requires_grad=p.requires_grad)
            module._parameters[name] = new[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = torch.zeros(b.shape, dtype=b.dtype, device="cpu")


@dataclass
class Built:
    model: nn.Module
    autocast_dtype: torch.dtype | None
    attn_implementation: str
    notes: list[str] = field(default_factory=list)


def _bnb_config(run: RunConfig):
    from transformers import BitsAndBytesConfig

    fmt = run.quant_format
    if fmt == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=fmt,
        bnb_4bit_use_double_quant=run.uses_double_quant,
        bnb_4bit_compute_dtype=compute_dtype(run),
    )


def _require_bitsandbytes(what: str) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            f"{what} measurement needs bitsandbytes (pip install bitsandbytes); "
            f"it is not importable here: {exc}"
        ) from None


def hf_model(model: nn.Module) -> PreTrainedModel:
    """The transformers model itself, under peft's wrapper if there is one."""
    from transformers import PreTrainedModel

    unwrap = getattr(model, "get_base_model", None)  # peft's PeftModel
    base = unwrap() if unwrap is not None else model
    assert isinstance(base, PreTrainedModel), type(base)
    return base


def _untie_t5_head(model: PreTrainedModel) -> None:
    """transformers 5 builds every T5 with its LM head tied to the shared embedding;
    from_pretrained unties them when a checkpoint holds both (T5 v1.1, Flan-T5), as here."""
    head = model.get_output_embeddings()
    # values of its own: from_pretrained ties two equal tensors back together
    head.weight = nn.Parameter(
        torch.empty_like(head.weight).normal_(std=head.weight.shape[1] ** -0.5)
    )
    getattr(model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)


def model_from_config(arch: Architecture, cfg, dtype=None) -> PreTrainedModel:
    """The family's transformers model from its config, random weights (T5 v1.1 untied)."""
    model = model_class(arch).from_config(cfg, dtype=dtype)
    if arch.encoder_decoder and not arch.tie_embeddings:
        _untie_t5_head(model)
    return model


def build_model(arch: Architecture, run: RunConfig, device: str = "cpu", seed: int = 0) -> Built:
    """The run's model as its framework builds it: transformers' model from the
    Architecture (quantised through from_pretrained for QLoRA), its trainable set or
    peft wrapper, and checkpointing as HF Trainer enables it."""
    arch = as_trained(arch, run.model_dropout, run.router_aux_loss)
    model, attn_impl, notes = _base_model(arch, run, device, seed)
    if run.method == "qlora":
        model = _quantized(model, arch, run, device, attn_impl)
        notes.append(
            "qlora: loaded through from_pretrained(quantization_config=BitsAndBytesConfig), "
            "non-quantised parameters in the run's dtype "
            "(prepare_model_for_kbit_training not applied)"
        )
    elif next(model.parameters()).device != torch.device(device):
        model = model.to(device=device)  # (fake parameters cannot be swapped in place)
    _framework_rotary_cache(model, arch, run, device)
    model = _with_trainable_set(model, arch, run, notes)
    if run.trl_bf16_cast:
        _trl_bf16_cast(model)
        notes.append("trl_bf16_cast: TRL's peft_module_casting_to_bf16 applied after peft")
    if run.grad_ckpt:
        enable_checkpointing(model)
    model.train()
    return Built(model, autocast_dtype(run), attn_impl, notes)


def _trl_bf16_cast(model: nn.Module) -> None:
    """TRL 0.7.5-0.21's SFTTrainer with bf16 on a 4-bit model, after get_peft_model:
    norms to fp32, the fp32 embeddings and LM head to bf16 (huggingface/trl
    trl/trainer/utils.py@v0.13.0 peft_module_casting_to_bf16, l.872-879, as written there)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) or "norm" in name:
            module.to(torch.float32)
        elif any(x in name for x in ("lm_head", "embed_tokens", "wte", "wpe")):
            weight = getattr(module, "weight", None)
            if weight is not None and weight.dtype == torch.float32:
                module.to(torch.bfloat16)


def _framework_rotary_cache(
    model: nn.Module, arch: Architecture, run: RunConfig, device: str
) -> None:
    """The rotary cache a framework's own modules register and transformers' do not
    (Profile.rotary_cache_buffer: torchtune's build_rope_cache, an fp32 (max_seq_len,
    dim / 2, 2) buffer, torchtune/modules/position_embeddings.py@1814feb17a90): its
    memory only, transformers' forward never reads it."""
    if not profile_of(run).rotary_cache_buffer or arch.position_embedding != "rotary":
        return
    shape = (arch.max_position_embeddings, arch.rotary_size // 2, 2)
    cache = torch.zeros(shape, dtype=torch.float32, device=device)
    model.register_buffer(FRAMEWORK_ROTARY_CACHE, cache, persistent=False)


def _base_model(
    arch: Architecture, run: RunConfig, device: str, seed: int
) -> tuple[nn.Module, str, list[str]]:
    """transformers' model with random weights, in the attention implementation asked
    for (eager where this transformers has no sdpa path for the family)."""
    attn_impl, notes = attn_implementation(run, device)
    dtype = param_dtype(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.manual_seed(seed)
            with _init_device(device):
                model = model_from_config(arch, hf_config(arch, attn_impl), dtype)
        except ValueError as exc:
            if attn_impl != "sdpa" or "scaled_dot_product_attention" not in str(exc):
                raise
            notes.append(
                f"attn: {arch.family} does not support sdpa in this transformers, "
                "measured with eager attention"
            )
            attn_impl = "eager"
            torch.manual_seed(seed)
            with _init_device(device):
                model = model_from_config(arch, hf_config(arch, attn_impl), dtype)
    diff = check_param_count(arch, model)
    if diff:
        notes.append("count matches but arch.layout names/shapes differ: " + "; ".join(diff))
    return model, attn_impl, notes


def _quantized(
    model: nn.Module, arch: Architecture, run: RunConfig, device: str, attn_impl: str
) -> nn.Module:
    """The model saved and loaded back with bitsandbytes' quantisation config, as a
    QLoRA script loads its base."""
    if run.quant_format == "int4":
        raise RuntimeError(
            "a GPTQ/AWQ int4 base is not measurable here: its kernels (gptqmodel, "
            "autoawq) need a GPU"
        )
    _require_bitsandbytes("QLoRA")
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory(prefix="ftmem-qlora-") as tmp:
            hf_model(model).save_pretrained(tmp)
            del model
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return model_class(arch).from_pretrained(
                    tmp,
                    quantization_config=_bnb_config(run),
                    dtype=param_dtype(run),
                    device_map={"": torch.device(device)},
                    attn_implementation=attn_impl,
                )
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _with_trainable_set(
    model: nn.Module, arch: Architecture, run: RunConfig, notes: list[str]
) -> nn.Module:
    """What the method trains: flags on the base parameters, a reference bottleneck
    adapter, or peft's wrapper (LoRA family, IA³, prompt methods)."""
    if run.method in ("full", "galore"):
        for p in model.parameters():
            p.requires_grad_(True)
    elif run.method == "freeze":
        _train_top_blocks(model, run, notes)
    elif run.method == "partial":
        from ftmem.regexes import compile_bounded

        names = [name for name, _ in model.named_parameters()]
        patterns = compile_bounded(
            split_patterns(run.trainable_modules or ""),
            "--trainable-modules",
            max(map(len, names)),
        )
        for name, p in model.named_parameters():
            p.requires_grad_(any(pat.search(name) for pat in patterns))
    elif run.method == "adapter":
        add_bottleneck_adapters(model, arch, run)
    elif run.method == "bitfit":
        # BitFit has no peft implementation: every bias trains, nothing else
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith(".bias"))
    else:  # peft's wrapper
        model = _peft_wrapped(model, arch, run)
    _vision_trainable(model, arch, run)
    return model


def _peft_wrapped(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's wrapper of the method: IA³ and the prompt methods, LoHa and LoKr, MiSS and
    RoAd, BOFT, OFT, VeRA, FourierFT, HiRA, PSOFT, HRA, SHiRA, Super-Tuning, WaveFT, C3A,
    else the LoRA family (ADAPTER_METHODS)."""
    if run.method in PROMPT_METHODS or run.method == "ia3":
        return _peft_other(model, arch, run)
    wrappers = {
        "loha": _peft_lycoris,
        "lokr": _peft_lycoris,
        "miss": _peft_miss_road,
        "road": _peft_miss_road,
        "boft": _peft_boft,
        "oft": _peft_oft,
        "vera": _peft_vera,
        "pvera": _peft_shared_bank,
        "randlora": _peft_shared_bank,
        "vblora": _peft_shared_bank,
        "tinylora": _peft_shared_bank,
        "adamss": _peft_shared_bank,
        "unilora": _peft_shared_bank,
        "lily": _peft_shared_bank,
        "fourierft": _peft_fourierft,
        "hira": _peft_hira,
        "psoft": _peft_psoft,
        "hra": _peft_hra,
        "shira": _peft_shira,
        "supertuning": _peft_supertuning,
        "waveft": _peft_waveft,
        "c3a": _peft_c3a,
        "ln-tuning": _peft_ln_tuning,
        "gralora": _peft_gralora,
        "delora": _peft_delora,
        "beft": _peft_beft,
        "deft": _peft_deft,
        "glora": _peft_glora,
        "peanut": _peft_peanut,
        "trainable-tokens": _peft_trainable_tokens,
        "osf": _peft_osf,
        "adaption-prompt": _peft_adaption_prompt,
    }
    return wrappers.get(run.method, _peft_lora)(model, arch, run)


def _peft_trainable_tokens(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's trainable tokens on the token embedding (its default target, embed_tokens),
    the ids the estimate names, its delta in the dtype asked for."""
    from peft import TrainableTokensConfig

    cfg = TrainableTokensConfig(token_indices=list(run.trainable_tokens), task_type="CAUSAL_LM")
    return _peft_in_dtype(model, cfg, run, "trainable_tokens_delta")


def _peft_beft(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's BEFT on the linears the estimate names, its beft_bias in the dtype asked for."""
    from peft import BeftConfig

    from ftmem.methods import beft_linears

    targets = [lin.module for lin in beft_linears(arch, run)]
    cfg = BeftConfig(target_modules=targets, task_type="CAUSAL_LM")
    return _peft_in_dtype(model, cfg, run, "beft_bias")


def _peft_glora(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's GLoRA on the linears the estimate names (lora or vector A/B paths), its
    parameters in the dtype asked for."""
    from peft import GloraConfig

    from ftmem.methods import glora_linears

    path: Literal["lora", "vector"] = "vector" if run.glora_vector else "lora"
    cfg = GloraConfig(
        r=run.glora[0],
        target_modules=[lin.module for lin in glora_linears(arch, run)],
        config_A_B=path,
        config_C=path,
        task_type="CAUSAL_LM",
    )
    return _peft_in_dtype(model, cfg, run, "glora_")


def _peft_deft(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's DeFT on the linears the estimate names (relu or qr, PaRa or not; alpha only
    scales R's values)."""
    from peft import DeftConfig

    cfg = DeftConfig(
        r=run.r,
        alpha=round(run.alpha),  # (only R's values scale by it; peft types it int)
        target_modules=_lora_target_modules(arch, run),
        para=bool(run.deft_para),
        decomposition_method="qr" if run.deft_qr else "relu",
        task_type="CAUSAL_LM",
    )
    return _peft_in_dtype(model, cfg, run, "deft_")


def _peft_ln_tuning(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's LNTuningConfig with its default targets (the model type's entry in
    TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING), as the MetaMathQA run."""
    from peft import LNTuningConfig, get_peft_model

    return get_peft_model(model, LNTuningConfig())


def _excluded(arch: Architecture, run: RunConfig) -> str | None:
    """peft's exclude_modules: none where peft sees the whole model (its own name match
    reaches the tower, the projector and Llama-3.2-Vision's cross-attention layers, as
    the estimate says: ftmem.vision_lora); the parts a framework filters out
    (LLaMA-Factory's vision tower and projector) where it does."""
    from ftmem.vision_lora import filtered_pattern

    return None if arch.vision is None else filtered_pattern(run)


def _lora_target_modules(arch: Architecture, run: RunConfig) -> list[str] | str | None:
    """What a user gives peft: on an image-text model, the module names themselves
    (q_proj), which peft matches over the whole model, tower included."""
    if arch.vision is None:
        return target_module_names(arch, run) or None
    from ftmem.vision_lora import peft_targets

    return peft_targets(arch, run)


def _train_top_blocks(model: nn.Module, run: RunConfig, notes: list[str]) -> None:
    """freeze: only the top ``trainable_layers`` blocks train (T5: of each stack)."""
    k = run.trainable_layers
    if k is None:
        from ftmem.methods import DEFAULT_FREEZE_TRAINABLE_LAYERS as k

        notes.append(f"freeze: trainable_layers not given, measured with the last {k} blocks")
    for p in model.parameters():
        p.requires_grad_(False)
    for blocks in block_lists(model):
        for block in list(blocks)[len(blocks) - k :] if k else []:
            for p in block.parameters():
                p.requires_grad_(True)


def _peft_lora(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's LoRA wrapper (DoRA, rsLoRA, LongLoRA's extra trainable embeddings and
    norms) with the adapters in the dtype asked for, and LoRA on the routed experts'
    3-D parameters through peft's target_parameters."""
    from peft import LoraConfig, get_peft_model

    from ftmem.methods import adapted_experts

    to_save = [
        p.module.rsplit(".", 1)[-1]
        for p in layout(arch).outer
        if ("head" if p.is_head else "embed" if p.kind == "embedding" else "")
        in run.modules_to_save
    ]
    experts = adapted_experts(arch, run)  # peft's target_parameters
    doubled = [ex for ex in experts if ex.rank != run.r]
    if run.method == "adalora":
        return _peft_adalora(model, arch, run, to_save)
    lcfg = LoraConfig(
        r=run.r,
        # peft annotates lora_alpha as int but scales by alpha / r: floats work
        lora_alpha=run.alpha,  # type: ignore[arg-type]
        lora_dropout=run.dropout,
        target_modules=_lora_target_modules(arch, run),
        target_parameters=[name for ex in experts for name in ex.parameters()] or None,
        # (what peft's own conversion of gate/up/down targets writes: gate_up at 2r)
        rank_pattern={rf".*\.{re.escape(ex.linear.leaf)}": ex.rank for ex in doubled},
        alpha_pattern={
            rf".*\.{re.escape(ex.linear.leaf)}": run.alpha * ex.rank / run.r for ex in doubled
        },
        exclude_modules=_excluded(arch, run),
        use_dora=run.method == "dora",
        use_rslora=run.method == "rslora",
        modules_to_save=to_save or None,
        bias="none",
        task_type="SEQ_2_SEQ_LM" if arch.encoder_decoder else "CAUSAL_LM",
        **_lora_variant(arch, run),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' renamed-API notices
        warnings.filterwarnings("ignore", message="fan_in_fan_out")  # GPT-2 Conv1D
        # peft 0.21.2 tuners_utils.py:1123 checks rank_pattern against module names only;
        # on target_parameters it applies all the same (the trainable count is exact)
        warnings.filterwarnings("ignore", message="The following (rank|alpha)_pattern keys")
        model = get_peft_model(model, lcfg, autocast_adapter_dtype=run.adapter_dtype == "auto")
    if run.adapter_dtype != "auto":
        ad = _DTYPES[run.adapter_dtype]
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.data = p.data.to(ad)
    if run.method == "longlora":
        # as LongLoRA's fine-tune script: trainable_params="embed,norm" by substring
        for name, p in model.named_parameters():
            if "embed" in name or "norm" in name:
                p.requires_grad_(True)
    if run.lora_fa:
        # what create_lorafa_optimizer does first (peft 0.21.2 optimizers/lorafa.py), here
        # before the first forward (build_optimizer calls it again)
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.requires_grad_(False)
    return model


def _lora_variant(arch: Architecture, run: RunConfig) -> dict[str, Any]:
    """LoraConfig's settings of a LoRA variant: MiCA's init_lora_weights; BD-LoRA's
    BdLoraConfig, with the block-diagonal factor ftmem.adapters.bdlora picks for each
    adapted linear (peft matches each pattern as a substring of the module's name)."""
    if run.lora_mica:
        return {"init_lora_weights": "mica"}
    if not run.lora_bd_blocks:
        return {}
    from peft.tuners.lora.config import BdLoraConfig

    from ftmem.adapters import bdlora
    from ftmem.methods import lora_targets

    adapted, _ = lora_targets(arch, run)
    leaves = {lin.leaf: bdlora.a_is_block_diagonal(lin) for lin in adapted}
    config = BdLoraConfig(
        target_modules_bd_a=sorted(leaf for leaf, a in leaves.items() if a) or None,
        target_modules_bd_b=sorted(leaf for leaf, a in leaves.items() if not a) or None,
        nblocks=run.lora_bd_blocks,
    )
    return {"use_bdlora": config}


# AdaLoRA's schedule for a measured step: no warm-up (tinit 0) nor final phase (tfinal 0),
# a budget allocation every step (deltaT 1), so that each step runs update_ipt and
# mask_to_budget (its largest work); total_step only shapes the budget's cubic decay
ADALORA_TOTAL_STEP = 10


def _peft_adalora(
    model: nn.Module, arch: Architecture, run: RunConfig, to_save: list[str]
) -> nn.Module:
    """peft's AdaLoRA (SVDLinear) at init_r = --lora-r, target_r = --adalora-target-r,
    on the linears LoRA would adapt, with the adapters in the dtype asked for."""
    from peft import AdaLoraConfig, get_peft_model

    cfg = AdaLoraConfig(
        init_r=run.r,
        target_r=run.target_r,
        lora_alpha=run.alpha,  # type: ignore[arg-type]
        lora_dropout=run.dropout,
        target_modules=_lora_target_modules(arch, run),
        exclude_modules=_excluded(arch, run),
        tinit=0,
        tfinal=0,
        deltaT=1,
        total_step=ADALORA_TOTAL_STEP,
        modules_to_save=to_save or None,
        task_type="SEQ_2_SEQ_LM" if arch.encoder_decoder else "CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model, cfg, autocast_adapter_dtype=run.adapter_dtype == "auto")
    if run.adapter_dtype != "auto":
        ad = _DTYPES[run.adapter_dtype]
        for name, p in model.named_parameters():
            if "lora_" in name or "ranknum" in name:  # (peft's own cast takes ranknum too)
                p.data = p.data.to(ad)
    return model


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing, and the embedding output requiring a
    gradient, as HF Trainer + peft do (transformers 5 already hooks the embeddings)."""
    base = hf_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        enable = getattr(base, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
    if hasattr(base, "enable_input_require_grads") and not hasattr(base, "_require_grads_hook"):
        base.enable_input_require_grads()


class BottleneckAdapter(nn.Module):
    """A linear followed by a residual bottleneck adapter: ``y + up(act(down(y)))``.

    peft has no Houlsby/Pfeiffer adapters; this is the reference the estimate is
    measured against: AdapterHub's placement (after the attention output and the MLP
    output) and activations (SiLU for Houlsby, ReLU for Pfeiffer), the adapter in its
    own dtype like peft's LoRA (the input cast to it, the result cast back).
    """

    def __init__(self, base: nn.Module, features: int, width: int, act: str, dtype) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Linear(features, width, dtype=dtype, device=_device_of(base))
        self.up = nn.Linear(width, features, dtype=dtype, device=_device_of(base))
        self.act = nn.SiLU() if act == "silu" else nn.ReLU()

    def forward(self, x):
        y = self.base(x)
        z = self.up(self.act(self.down(y.to(self.down.weight.dtype))))
        return y + z.to(y.dtype)


def _device_of(module: nn.Module):
    return next(module.parameters()).device


def add_bottleneck_adapters(model: nn.Module, arch: Architecture, run: RunConfig) -> None:
    """Freeze the model and put an adapter after each linear the estimate names."""
    from ftmem.methods import bottlenecked_linears

    width, placement = run.bottleneck
    act = "silu" if placement == "houlsby" else "relu"
    dtype = torch.float32 if run.adapter_dtype == "auto" else _DTYPES[run.adapter_dtype]
    for p in model.parameters():
        p.requires_grad_(False)
    found = find_blocks(model)
    assert found is not None, "no decoder-block ModuleList found"
    for block in found[1]:
        for lin in bottlenecked_linears(arch, run):
            parent_name, _, leaf = lin.module.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            base = getattr(parent, leaf)
            setattr(parent, leaf, BottleneckAdapter(base, lin.out_features, width, act, dtype))


def _peft_other(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """IA³ and the prompt-learning methods through peft's own configs."""
    from peft import (
        IA3Config,
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        get_peft_model,
    )

    cfg: PeftConfig
    if run.method == "ia3":
        from ftmem.methods import ia3_linears

        scaled = ia3_linears(arch, run)
        cfg = IA3Config(
            target_modules=[lin.module for lin, _ in scaled],
            # a list even when empty: peft has no default for newer model types
            feedforward_modules=[lin.module for lin, ff in scaled if ff],
            task_type="CAUSAL_LM",
        )
    elif run.method == "cartridge":
        from peft import CartridgeConfig

        cfg = CartridgeConfig(
            num_virtual_tokens=run.n_virtual,
            num_frozen_tokens=run.cartridge_frozen,
            task_type="CAUSAL_LM",
        )
    elif run.method == "prompt-tuning":
        cfg = PromptTuningConfig(num_virtual_tokens=run.n_virtual, task_type="CAUSAL_LM")
    elif run.method == "p-tuning":
        cfg = PromptEncoderConfig(
            num_virtual_tokens=run.n_virtual,
            encoder_reparameterization_type=run.encoder.upper(),
            # peft annotates int, but its default None means the model's hidden size
            encoder_hidden_size=run.encoder_hidden,  # type: ignore[arg-type]
            task_type="CAUSAL_LM",
        )
    else:
        cfg = PrefixTuningConfig(
            num_virtual_tokens=run.n_virtual,
            prefix_projection=bool(run.prefix_projection),
            # peft annotates int, but its default None means the model's hidden size
            encoder_hidden_size=run.encoder_hidden,  # type: ignore[arg-type]
            task_type="CAUSAL_LM",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model, cfg, autocast_adapter_dtype=run.adapter_dtype == "auto")
    if run.method == "ia3" and run.adapter_dtype != "auto":
        for name, p in model.named_parameters():
            if "ia3_l" in name:
                p.data = p.data.to(_DTYPES[run.adapter_dtype])
    return model


def _peft_in_dtype(model: nn.Module, cfg: PeftConfig, run: RunConfig, *markers: str) -> nn.Module:
    """get_peft_model with peft's notices silenced, the parameters whose names hold one of
    ``markers`` (the adapter's own) cast to --adapter-dtype when one is given."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model, cfg, autocast_adapter_dtype=run.adapter_dtype == "auto")
    if run.adapter_dtype != "auto":
        for name, p in model.named_parameters():
            if any(marker in name for marker in markers):
                p.data = p.data.to(_DTYPES[run.adapter_dtype])
    return model


def _peft_shira(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's SHiRA (random mask) on the linears the estimate names, its values in the dtype
    asked for."""
    from peft import ShiraConfig

    from ftmem.methods import shira_linears

    cfg = ShiraConfig(
        r=run.shira[0],
        target_modules=[lin.module for lin in shira_linears(arch, run)],
        task_type="CAUSAL_LM",
    )
    return _peft_in_dtype(model, cfg, run, "shira_weight")


def _peft_supertuning(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's Super-Tuning (Supra with --supertuning-r) on the linears the estimate names,
    its values and LoRA factors in the dtype asked for."""
    from peft import SupertuningConfig

    from ftmem.methods import supertuning_linears

    cfg = SupertuningConfig(
        sparsity=run.supertuning[0],
        r=run.supertuning_r,
        target_modules=[lin.module for lin in supertuning_linears(arch, run)],
        task_type="CAUSAL_LM",
    )
    return _peft_in_dtype(model, cfg, run, "supertuning_values", "supertuning_lora_")


def _peft_waveft(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's WaveFT (db1, inverse transform) on the linears the estimate names, its
    coefficients in the dtype asked for."""
    from peft import WaveFTConfig

    from ftmem.methods import waveft_linears

    cfg = WaveFTConfig(
        n_frequency=run.waveft[0],
        target_modules=[lin.module for lin in waveft_linears(arch, run)],
        task_type="CAUSAL_LM",
    )
    return _peft_in_dtype(model, cfg, run, "waveft_spectrum")


def _peft_c3a(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's C3A on the linears the estimate names (its fp32 kernels, xavier_uniform as
    PEFT's benchmark sets them: zeros would not change memory)."""
    from peft import C3AConfig

    from ftmem.methods import c3a_linears

    cfg = C3AConfig(
        block_size=run.c3a[0],
        target_modules=[lin.module for lin in c3a_linears(arch, run)],
        init_weights=False,
        task_type="CAUSAL_LM",
    )
    return _peft_in_dtype(model, cfg, run, "c3a_kernel")


def _peft_lycoris(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's LoHa or LoKr on the linears the estimate names, its adapters in the dtype
    asked for."""
    from peft import LoHaConfig, LoKrConfig

    from ftmem.methods import loha_linears, lokr_linears

    cfg: PeftConfig
    if run.method == "loha":
        r, alpha, _ = run.loha
        cfg = LoHaConfig(
            r=r,
            alpha=alpha,  # type: ignore[arg-type]  # (annotated int; scales by alpha / r)
            target_modules=[lin.module for lin in loha_linears(arch, run)],
            task_type="CAUSAL_LM",
        )
    else:
        r, alpha, _, factor, both = run.lokr
        cfg = LoKrConfig(
            r=r,
            alpha=alpha,  # type: ignore[arg-type]  # (annotated int; scales by alpha / r)
            decompose_factor=factor,
            decompose_both=both,
            target_modules=[lin.module for lin in lokr_linears(arch, run)],
            task_type="CAUSAL_LM",
        )
    return _peft_in_dtype(model, cfg, run, "hada_", "lokr_")


def _peft_boft(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's BOFT on the linears the estimate names (one butterfly factor), fp32 adapters
    as get_peft_model's autocast_adapter_dtype leaves them (RunConfig refuses 16-bit)."""
    from peft import BOFTConfig, get_peft_model

    from ftmem.methods import boft_linears

    size, num, _ = run.boft
    cfg = BOFTConfig(
        boft_block_size=size,
        boft_block_num=num,
        boft_n_butterfly_factor=1,
        target_modules=[lin.module for lin in boft_linears(arch, run)],
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, cfg, autocast_adapter_dtype=True)


def _peft_oft(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's OFT on the linears the estimate names, its adapters in the dtype asked for."""
    from peft import OFTConfig

    from ftmem.methods import oft_linears

    r, size, _, share, terms = run.oft
    cfg = OFTConfig(
        r=r,
        oft_block_size=size,
        block_share=share,
        use_cayley_neumann=terms > 0,
        num_cayley_neumann_terms=terms or 5,
        target_modules=[lin.module for lin in oft_linears(arch, run)],
        task_type="CAUSAL_LM",
    )
    return _peft_in_dtype(model, cfg, run, ".oft_R.")


def _peft_vera(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's VeRA on the linears the estimate names; its vectors and its one shared pair
    of projections (a BufferDict every layer holds) in the dtype asked for."""
    from peft import VeraConfig

    from ftmem.methods import vera_linears

    r, _ = run.vera
    cfg = VeraConfig(
        r=r, target_modules=[lin.module for lin in vera_linears(arch, run)], task_type="CAUSAL_LM"
    )
    model = _peft_in_dtype(model, cfg, run, "vera_lambda_")
    if run.adapter_dtype != "auto":
        base: Any = model.base_model
        for projections in (base.vera_A, base.vera_B):
            projections["default"] = projections["default"].to(_DTYPES[run.adapter_dtype])
    return model


def _peft_gralora(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's GraLoRA on the linears the estimate adapts (the LoRA family's targets)."""
    from peft import GraloraConfig

    cfg = GraloraConfig(
        r=run.r,
        alpha=run.alpha,  # type: ignore[arg-type]
        gralora_k=run.gralora_blocks,
        gralora_dropout=run.dropout,
        target_modules=_lora_target_modules(arch, run),
        task_type="CAUSAL_LM",
    )
    return _peft_in_dtype(model, cfg, run, "gralora_")


def _peft_delora(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's DeLoRA on the linears the estimate adapts (the LoRA family's targets), its
    default λ 15 (the MetaMathQA experiment's)."""
    from peft import DeloraConfig

    cfg = DeloraConfig(
        r=run.r, target_modules=_lora_target_modules(arch, run), task_type="CAUSAL_LM"
    )
    return _peft_in_dtype(model, cfg, run, "delora_")


def _peft_shared_bank(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's PVeRA, RandLoRA or VB-LoRA (measure.shared_bank)."""
    from ftmem.measure.shared_bank import peft_shared_bank

    return peft_shared_bank(model, arch, run)


def _peft_fourierft(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's FourierFT on the linears the estimate names, its spectra in the dtype asked for."""
    from peft import FourierFTConfig

    from ftmem.methods import fourierft_linears

    cfg = FourierFTConfig(
        n_frequency=run.fourierft[0],
        target_modules=[lin.module for lin in fourierft_linears(arch, run)],
        task_type="CAUSAL_LM",
    )
    return _peft_in_dtype(model, cfg, run, "fourierft_spectrum")


def _peft_peanut(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's Peanut (relu, its default scaling: memory does not depend on it) on the
    linears the estimate names, its weights in the dtype asked for."""
    from peft import PeanutConfig

    from ftmem.methods import peanut_linears

    r, _, depth = run.peanut
    cfg = PeanutConfig(
        r=r,
        depth=depth,
        target_modules=[lin.module for lin in peanut_linears(arch, run)],
        task_type="CAUSAL_LM",
    )
    return _peft_in_dtype(model, cfg, run, "peanut_")


def _peft_osf(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's OSF on the linears the estimate names, each keeping min(out, in) − t
    directions frozen (rank_pattern by module name; peft's default half where no
    --osf-rank)."""
    from peft import OSFConfig

    from ftmem.adapters.osf import trained_rank
    from ftmem.methods import osf_linears

    linears = osf_linears(arch, run)
    frozen: dict[str, int | float] = {
        re.escape(lin.module) + "$": min(lin.in_features, lin.out_features)
        - trained_rank(lin, run.osf_rank)
        for lin in linears
    }
    cfg = OSFConfig(
        target_modules=[lin.module for lin in linears],
        rank_pattern=frozen,
        task_type="CAUSAL_LM",
    )
    return _peft_in_dtype(model, cfg, run, "osf_")


def _peft_adaption_prompt(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's adaption prompt on the top blocks the estimate names (methods.gated_blocks),
    its prompt and gate in the base's dtype as peft builds them (no --adapter-dtype)."""
    from peft import AdaptionPromptConfig, get_peft_model

    from ftmem.methods import gated_blocks

    cfg = AdaptionPromptConfig(
        adapter_len=run.adaption_prompt[0],
        adapter_layers=gated_blocks(arch, run),
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, cfg)


def _peft_hira(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's HiRA on the linears the estimate names, its A and B in the dtype asked for."""
    from peft import HiraConfig

    from ftmem.methods import hira_linears

    cfg = HiraConfig(
        r=run.hira[0],
        target_modules=[lin.module for lin in hira_linears(arch, run)],
        task_type="CAUSAL_LM",
    )
    return _peft_in_dtype(model, cfg, run, "hira_A", "hira_B")


def _peft_psoft(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's PSOFT on the linears the estimate names (fp32 parameters: RunConfig refuses
    16-bit ones), its exact Cayley solve or the Neumann series asked for."""
    from peft import PsoftConfig

    from ftmem.methods import psoft_linears

    r, _, terms = run.psoft
    cfg = PsoftConfig(
        r=r,
        psoft_alpha=r,
        use_cayley_neumann=terms > 0,
        num_cayley_neumann_terms=terms or 5,
        target_modules=[lin.module for lin in psoft_linears(arch, run)],
        task_type="CAUSAL_LM",
    )
    return _peft_in_dtype(model, cfg, run, "psoft_R")


def _peft_hra(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's HRA on the linears the estimate names (no Gram-Schmidt), its hra_u in the
    dtype asked for."""
    from peft import HRAConfig

    from ftmem.methods import hra_linears

    cfg = HRAConfig(
        r=run.hra[0],
        target_modules=[lin.module for lin in hra_linears(arch, run)],
        task_type="CAUSAL_LM",
    )
    return _peft_in_dtype(model, cfg, run, "hra_u")


# --------------------------------------------------------------------------------------
# optimizer
# --------------------------------------------------------------------------------------
class _ImplKwargs(TypedDict, total=False):
    foreach: bool
    fused: bool


def _peft_miss_road(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's MiSS or RoAd on the linears the estimate names, its parameters in the dtype
    asked for."""
    from peft import MissConfig, RoadConfig

    from ftmem.methods import miss_linears, road_linears

    cfg: PeftConfig
    if run.method == "miss":
        r, init, mini_r, _ = run.miss
        cfg = MissConfig(
            r=r,
            mini_r=mini_r,
            init_weights=True if init == "default" else init,  # type: ignore[arg-type]
            target_modules=[lin.module for lin in miss_linears(arch, run)],
            task_type="CAUSAL_LM",
        )
    else:
        variant, group, _ = run.road
        cfg = RoadConfig(
            variant=variant,
            group_size=group,
            target_modules=[lin.module for lin in road_linears(arch, run)],
            task_type="CAUSAL_LM",
        )
    return _peft_in_dtype(model, cfg, run, "miss_block", "road_")


def _impl_kwargs(run: RunConfig) -> _ImplKwargs:
    if run.optimizer_impl == "fused":
        return {"fused": True}
    return {"foreach": run.optimizer_impl == "foreach"}


def galore_param_groups(model: nn.Module, arch: Architecture, run: RunConfig) -> list[dict]:
    """The parameter groups transformers gives galore_torch: every parameter but the
    targeted block linears in a plain group, those with the projection. The projector is
    renewed every step (``update_proj_gap=1``) so that the measured step is the one with
    the SVD, the costliest."""
    from ftmem.methods import select_linears

    rank, spec = run.galore
    linears = select_linears(arch, spec, "GaLore target")
    targets = {
        param_path(arch, i, f"{lin.module}.weight")
        for lin in linears
        for i in range(arch.num_layers)
    }
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if n not in targets and p.requires_grad]},
        {
            "params": [p for n, p in named if n in targets],
            "rank": rank,
            "update_proj_gap": 1,
            "scale": 0.25,
            "proj_type": "std",
        },
    ]


def galore_optimizer(groups: list[dict], run: RunConfig) -> torch.optim.Optimizer:
    """galore_torch's GaLoreAdamW (or GaLoreAdamW8bit) over the given groups."""
    try:
        from galore_torch import GaLoreAdamW, GaLoreAdamW8bit
    except ImportError as exc:
        raise RuntimeError(
            f"GaLore measurement needs galore-torch (pip install galore-torch): {exc}"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if run.optimizer == "adamw-8bit":
            return GaLoreAdamW8bit(groups, lr=1e-4, weight_decay=0.0)
        return GaLoreAdamW(groups, lr=1e-4, weight_decay=0.0, no_deprecation_warning=True)


def _lorafa_optimizer(model: nn.Module, run: RunConfig) -> torch.optim.Optimizer:
    """peft's create_lorafa_optimizer (it freezes lora_A); then, where the framework's loop
    runs a pass under disable_adapter() before training (profiles.PEFT_MC), that pass's
    exit, which gives lora_A its requires_grad back."""
    from peft.optimizers import create_lorafa_optimizer

    from ftmem.profiles import profile_of

    optimizer = create_lorafa_optimizer(model, r=run.r, lora_alpha=run.alpha, lr=1e-4)  # type: ignore[arg-type]
    if profile_of(run).lora_fa_a_regains_grad:
        with model.disable_adapter():  # type: ignore[operator]
            pass
    return optimizer


def build_optimizer(
    model: nn.Module, run: RunConfig, arch: Architecture | None = None
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"method {run.method!r} leaves no trainable parameter in this model")
    if run.method == "galore":
        assert arch is not None, "GaLore needs the architecture to find its targets"
        return galore_optimizer(galore_param_groups(model, arch, run), run)
    if run.lora_fa:
        return _lorafa_optimizer(model, run)
    opt = run.optimizer
    if opt == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, **_impl_kwargs(run))
    if opt == "sgd":
        return torch.optim.SGD(params, lr=1e-4, momentum=0.0, **_impl_kwargs(run))
    if opt == "sgd-momentum":
        return torch.optim.SGD(params, lr=1e-4, momentum=0.9, **_impl_kwargs(run))
    if opt == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params, lr=1e-3, scale_parameter=False, relative_step=False, warmup_init=False
        )
    if opt in BNB_CLASS:
        _require_bitsandbytes(opt)
        import bitsandbytes as bnb

        return getattr(bnb.optim, BNB_CLASS[opt])(params, lr=1e-4, weight_decay=0.0)
    if opt in TORCHAO_CLASS:
        try:
            import torchao.optim
        except ImportError as exc:
            raise RuntimeError(f"{opt} needs torchao (pip install torchao): {exc}") from None
        cls = getattr(torchao.optim, TORCHAO_CLASS[opt])
        block = {"block_size": run.optimizer_block_size} if run.optimizer_block_size else {}
        return cls(params, lr=1e-4, weight_decay=0.0, **block)
    raise RuntimeError(f"optimizer {opt!r} is not measurable here (no reference implementation)")


# ftmem's --optimizer as bitsandbytes.optim's class
BNB_CLASS = {
    "adamw-32bit": "AdamW32bit",
    "adamw-8bit": "AdamW8bit",
    "paged-adamw-8bit": "PagedAdamW8bit",
    "paged-adamw": "PagedAdamW",
    "lion-32bit": "Lion32bit",
    "lion-8bit": "Lion8bit",
    "paged-lion": "PagedLion",
    "paged-lion-8bit": "PagedLion8bit",
}
# ftmem's --optimizer as torchao.optim's class (torchao 0.18.0)
TORCHAO_CLASS = {
    "ao-adamw-8bit": "AdamW8bit",
    "ao-adamw-4bit": "AdamW4bit",
    "ao-adamw-fp8": "AdamWFp8",
}
