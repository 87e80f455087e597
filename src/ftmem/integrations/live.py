"""A training run read from its live objects: the model (its config, its peft wrapper,
its quantisation, the dtypes of its parameters, checkpointing), the optimizer and the
trainer's arguments, as the settings of :func:`ftmem.estimate`.

Everything is read by attribute, so this module imports neither torch nor transformers.
What a live object says wins over what a config file would say (the dtype every
parameter really has, the modules peft really wrapped); each setting records where it
was read (:attr:`LiveRun.said`), and differences become notes.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ftmem.arch import Architecture
from ftmem.errors import InvalidInputError
from ftmem.filekeys import Keys
from ftmem.frameworks.distributed import LAUNCHER_NOTE, distributed_settings
from ftmem.frameworks.hf_trainer import (
    LIMITS_NOTED,
    _cpo_objective,
    _dpo_objective,
    _grpo_objective,
    _kto_objective,
    _orpo_objective,
)
from ftmem.frameworks.shared import (
    ATTENTION,
    TORCHAO_CLASSES,
    FrameworkConfig,
    galore_args,
    hf_optimizer,
)
from ftmem.optim import BNB_OPTIMIZERS
from ftmem.quantized_base import on_quantized_base, quantized_base
from ftmem.run import METHOD_SETTINGS
from ftmem.sources import architecture_from_config
from ftmem.torchao_optim import FORMATS

# torch dtypes as str(dtype) spells them, as ftmem names them
DTYPES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}
# peft's LoRA-family parameters and trainable copies (peft tuners/lora/layer.py names)
ADAPTER_PARAM = re.compile(r"\.(lora_[A-Za-z_]+|modules_to_save)\.")
# the sequence lengths TRL's configs and transformers' scripts carry, the first set wins
SEQ_LEN_ARGS = ("max_length", "max_seq_length")
# the longest example is looked for in datasets of at most this many rows
PROBED_ROWS = 10_000
HALF_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# trl/kernels/chunked_logprob.py (trl 1.16.0) ChunkedLogProb: TOKEN_CHUNK_SIZE 4096,
# trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE 32768
TRL_FUSED_NOTE = (
    "TRL's fused LM head (SFTTrainer since TRL 1.15.0) is estimated as its log-probability "
    "tiles (--loss logprob-tiles), every shifted row counted (on CUDA with Triton TRL scores "
    "the labelled ones only); off Triton its torch fallback's fp32 tile temporaries are not."
)
# optimizer classes (torch.optim, bitsandbytes.optim, transformers.optimization, lion_pytorch)
# as ftmem's --optimizer; SGD by its momentum
LIVE_OPTIMIZERS = {
    "AdamW": "adamw",
    "Adam": "adamw",
    "AdamW32bit": "adamw-32bit",
    "Adam32bit": "adamw-32bit",
    "PagedAdamW32bit": "paged-adamw",
    "PagedAdamW": "paged-adamw",
    "AdamW8bit": "adamw-8bit",
    "PagedAdamW8bit": "paged-adamw-8bit",
    "Adafactor": "adafactor",
    "Lion": "lion",
    "Lion32bit": "lion-32bit",
    "Lion8bit": "lion-8bit",
    "PagedLion32bit": "paged-lion",
    "PagedLion": "paged-lion",
    "PagedLion8bit": "paged-lion-8bit",
    "PagedAdam": "paged-adamw",
    "PagedAdam32bit": "paged-adamw",
    "PagedAdam8bit": "paged-adamw-8bit",
}
PROMPT_PEFT = {"PROMPT_TUNING": "prompt-tuning", "P_TUNING": "p-tuning"}
# TRL's preference and RL configs, read as `ftmem estimate --from` reads their files
# (ORPOConfig and CPOConfig: trl.experimental in TRL 1.16)
TRL_OBJECTIVES = {"DPOConfig": _dpo_objective, "KTOConfig": _kto_objective,
                  "GRPOConfig": _grpo_objective, "ORPOConfig": _orpo_objective,
                  "CPOConfig": _cpo_objective}  # fmt: skip
# GRPOConfig.__post_init__ sets both from either; the reader takes one of them
GRPO_DERIVED = ("generation_batch_size",)


@dataclass
class LiveRun:
    """The run as read: the architecture, ftmem.estimate's settings, where each came
    from, what could not be read exactly (notes), and the modules peft wrapped."""

    arch: Architecture
    settings: dict[str, Any] = field(default_factory=dict)
    said: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wrapped: list[str] = field(default_factory=list)  # full names of peft-wrapped modules
    n_params: int = 0  # elements of the live parameters (a packed 4-bit weight: its bytes)
    n_trainable: int = 0

    def set(self, setting: str, value: Any, said: str) -> None:
        self.settings[setting] = value
        self.said[setting] = said


def base_model(model: Any) -> Any:
    """The transformers model under peft's wrapper, DDP's ``module`` and torch.compile's
    ``_orig_mod``."""
    for _ in range(8):
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and hasattr(model.module, "config"):
            model = model.module
        else:
            break
    return model


def read_architecture(model: Any) -> tuple[Architecture, dict[str, Any]]:
    """The model's config as ``ftmem estimate config.json`` reads it, and the config."""
    base = base_model(model)
    config = getattr(base, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise InvalidInputError(
            f"{type(base).__name__} has no transformers config: ftmem reads the model's "
            "architecture from model.config."
        )
    cfg = config.to_dict()
    name = str(cfg.get("_name_or_path") or type(base).__name__)
    return architecture_from_config(cfg, name, "the live model's config"), cfg


def read_run(
    model: Any,
    args: Any,
    optimizer: Any = None,
    dataset: Any = None,
    given: dict[str, Any] | None = None,
    tokenizer: Any = None,
) -> LiveRun:
    """The run's settings from the live model, optimizer and TrainingArguments (or a
    TRL config); ``given`` (the callback's own keyword settings) win over both.
    ``tokenizer``: the trainer's processing_class, which GRPO's prompts are read with."""
    half = (
        "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else ""
    )
    # transformers 5.24 renamed it activation_checkpointing (the old name warns)
    wanted = getattr(args, "activation_checkpointing", None)
    if wanted is None:
        wanted = getattr(args, "gradient_checkpointing", False)
    live = read_model(
        model,
        autocast=half,
        autocast_said="TrainingArguments' bf16/fp16",
        checkpointing=bool(wanted),
        checkpointing_said="TrainingArguments",
    )
    _read_args(args, live)
    read_optimizer(optimizer, live)
    _read_seq_len(args, dataset, live, tokenizer)
    _read_parallel(args, live)
    _read_objective(args, live)
    take_given(live, given, "FtmemCallback's own settings")
    return live


def read_model(
    model: Any,
    *,
    autocast: str,
    autocast_said: str,
    checkpointing: bool | None,
    checkpointing_said: str,
) -> LiveRun:
    """What the live model says, whatever trains it: its architecture, method (peft),
    quantisation, dtypes, checkpointing, attention and device. ``autocast`` is the
    16-bit dtype the trainer autocasts to ("bf16", "fp16" or ""), ``checkpointing``
    whether the trainer asked for it (None: it does not say), each with where it was read."""
    arch, cfg = read_architecture(model)
    live = LiveRun(arch)
    _read_method(model, live)
    _read_quantisation(cfg, live)
    _read_dtypes(model, autocast, autocast_said, live)
    _config_dtype_note(cfg, model, live)
    _read_model_flags(model, checkpointing, checkpointing_said, live)
    return live


def take_given(live: LiveRun, given: dict[str, Any] | None, said: str) -> None:
    """The caller's own settings win over what was read."""
    for key, value in (given or {}).items():
        live.set(key, value, said)


# -- the model --------------------------------------------------------------------------


def _peft_config(model: Any) -> Any:
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    active = getattr(model, "active_adapter", None)
    if isinstance(active, list | tuple):
        active = active[0] if active else None
    return configs.get(active) if active in configs else next(iter(configs.values()))


def _read_method(model: Any, live: LiveRun) -> None:
    """The method: peft's config and the modules it wrapped, else full or a partial
    trainable set."""
    params = list(model.named_parameters())
    live.n_params = sum(numel(p) for _, p in params)
    live.n_trainable = sum(numel(p) for _, p in params if p.requires_grad)
    pc = _peft_config(model)
    if pc is None:
        _plain_method(params, live)
        return
    kind = str(getattr(pc.peft_type, "value", pc.peft_type)).upper()
    said = f"model.peft_config ({type(pc).__name__})"
    reader = _PEFT_READERS.get(kind)
    if reader is not None:
        reader(model, pc, live, said)
    elif kind == "IA3":
        live.set("method", "ia3", said)
        live.set("ia3_targets", ",".join(sorted(_names(pc.target_modules))), said)
    elif kind in ("LOHA", "LOKR"):
        _lycoris(model, pc, live, said, kind.lower())
    elif kind in ("MISS", "ROAD"):
        _miss_road(model, pc, live, said, kind.lower())
    elif kind in SHARED_BANK:
        _shared_bank(model, pc, live, said, kind)
    elif kind == "LN_TUNING":
        _ln_tuning(pc, live, said)
    elif kind == "CARTRIDGE":  # (peft 0.21.2 tuners/cartridge/config.py CartridgeConfig)
        live.set("method", "cartridge", said)
        live.set("virtual_tokens", int(pc.num_virtual_tokens), said)
        live.set("cartridge_frozen_tokens", int(pc.num_frozen_tokens), said)
    elif kind in PROMPT_PEFT or kind == "PREFIX_TUNING":
        live.set("method", PROMPT_PEFT.get(kind, "prefix-tuning"), said)
        live.set("virtual_tokens", int(pc.num_virtual_tokens), said)
        if kind == "PREFIX_TUNING" and getattr(pc, "prefix_projection", False):
            live.set("prefix_projection", True, said)
    else:
        raise InvalidInputError(
            f"peft {kind} is not a method ftmem models (`ftmem estimate --help` lists the "
            "methods under --method)."
        )


def _names(targets: Any) -> list[str]:
    if targets is None:
        return []
    if isinstance(targets, str):
        return [targets]
    return [str(t) for t in targets]


def _expert_items(wrapped: list[tuple[str, Any]], r: int) -> list[str]:
    """peft's LoRA on expert parameters (ParamWrapper, nested one per parameter) as
    --lora-targets items: a gate_up_proj at twice the rank is peft's conversion of
    gate/up targets (the roles gate,up, as ftmem.methods reads them), any other one its
    parameter with its layer (``…layers.7.mlp.experts.down_proj``)."""
    items: list[str] = []
    for name, module in wrapped:
        parameter = getattr(module, "parameter_name", None)
        if not parameter:
            continue
        rank = next(iter(module.r.values()), r)
        path = name
        while path.endswith(".base_layer"):
            path = path[: -len(".base_layer")]
        item = "gate,up" if rank == 2 * r and parameter == "gate_up_proj" else f"{path}.{parameter}"
        if item not in items:
            items.append(item)
    return items


def _wrapped(model: Any, live: LiveRun, method: str, marker: str) -> None:
    """The method's targets as the leaf names of the modules peft wrapped (those holding
    ``marker``, the adapter's own parameter)."""
    wrapped = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, marker)})
    if wrapped:
        live.set(f"{method}_targets", ",".join(wrapped), f"the modules peft wrapped ({marker})")


def _beft(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's BeftConfig: the modules it wrapped (beft_bias)."""
    live.set("method", "beft", said)
    _wrapped(model, live, "beft", "beft_bias")


def _lycoris(model: Any, pc: Any, live: LiveRun, said: str, method: str) -> None:
    """peft's LoHaConfig or LoKrConfig: its rank and alpha (LoKr: its decomposition), and
    the modules it wrapped (hada_w1_a, lokr_w1)."""
    live.set("method", method, said)
    live.set(f"{method}_rank", int(pc.r), said)
    live.set(f"{method}_alpha", float(pc.alpha), said)
    if method == "lokr":
        if pc.decompose_factor != -1:
            live.set("lokr_factor", int(pc.decompose_factor), said)
        if pc.decompose_both:
            live.set("lokr_decompose_both", True, said)
    _wrapped(model, live, method, "hada_w1_a" if method == "loha" else "lokr_w1")
    if pc.rank_dropout or pc.module_dropout:
        live.notes.append(
            f"{method} rank_dropout / module_dropout: not modelled (the dropped ΔW is a "
            "copy of the same size, made in the forward); estimated without."
        )


def _miss_road(model: Any, pc: Any, live: LiveRun, said: str, method: str) -> None:
    """peft's MissConfig (r, init_weights, mini_r) or RoadConfig (variant, group_size), and
    the modules it wrapped (miss_block, road_theta)."""
    live.set("method", method, said)
    if method == "miss":
        live.set("miss_rank", int(pc.r), said)
        init = pc.init_weights
        live.set("miss_init", init if init in ("bat", "mini") else "default", said)
        live.set("miss_mini_r", int(pc.mini_r), said)
        if pc.miss_dropout:
            live.notes.append("miss_dropout: not modelled (a dropped copy of the input).")
    else:
        live.set("road_variant", str(pc.variant), said)
        live.set("road_group_size", int(pc.group_size), said)
    _wrapped(model, live, method, "miss_block" if method == "miss" else "road_theta")


def _boft(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's BOFTConfig: its block split and the modules it wrapped (boft_R); more than
    one butterfly factor is refused (not modelled)."""
    if int(pc.boft_n_butterfly_factor) != 1:
        raise InvalidInputError(
            f"BOFT with boft_n_butterfly_factor {pc.boft_n_butterfly_factor} is not modelled "
            "(ftmem models one butterfly factor); estimate it with 1."
        )
    live.set("method", "boft", said)
    if pc.boft_block_num:
        live.set("boft_block_num", int(pc.boft_block_num), said)
    else:
        live.set("boft_block_size", int(pc.boft_block_size), said)
    _wrapped(model, live, "boft", "boft_R")
    if pc.boft_dropout:
        live.notes.append(
            "boft_dropout: not modelled (its mask swaps whole blocks for the identity, "
            "block-sized tensors); estimated without."
        )


# methods whose trainable parameters' dtype is the run's --adapter-dtype (the run's own
# list: one place to add a method)
ADAPTER_DTYPE_METHODS = METHOD_SETTINGS["adapter_dtype"]


def _oft(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's OFTConfig: its block split, block_share, Cayley-Neumann terms (0: the exact
    solve) and the modules it wrapped (oft_R)."""
    live.set("method", "oft", said)
    if pc.r:
        live.set("oft_r", int(pc.r), said)
    else:
        live.set("oft_block_size", int(pc.oft_block_size), said)
    if pc.block_share:
        live.set("oft_block_share", True, said)
    terms = int(pc.num_cayley_neumann_terms) if pc.use_cayley_neumann else 0
    if terms != 5:
        live.set("oft_neumann_terms", terms, said)
    _wrapped(model, live, "oft", "oft_R")
    if pc.coft:
        live.notes.append("coft: its projection (no gradient, block-sized) is not modelled.")


def _gralora(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's GraloraConfig: rank, alpha, k, dropout and the modules it wrapped; hybrid_r
    (a plain LoRA beside it) is not modelled."""
    if pc.hybrid_r:
        raise InvalidInputError(
            f"peft's GraLoRA hybrid_r {pc.hybrid_r} (a LoRA beside the sub-blocks) is not "
            "modelled; ftmem models hybrid_r 0."
        )
    live.set("method", "gralora", said)
    live.set("lora_r", int(pc.r), said)
    live.set("lora_alpha", float(pc.alpha), said)
    live.set("gralora_k", int(pc.gralora_k), said)
    if pc.gralora_dropout:
        live.set("lora_dropout", float(pc.gralora_dropout), said)
    wrapped = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "gralora_A")}
    )
    if wrapped:
        live.set("lora_targets", ",".join(wrapped), "the modules peft wrapped (gralora_A)")


def _delora(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's DeloraConfig: rank and the modules it wrapped; module_dropout is not modelled."""
    if pc.module_dropout:
        raise InvalidInputError(
            f"peft's DeLoRA module_dropout {pc.module_dropout} is not modelled; ftmem models "
            "DeLoRA without dropout."
        )
    live.set("method", "delora", said)
    live.set("lora_r", int(pc.r), said)
    wrapped = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "delora_A")}
    )
    if wrapped:
        live.set("lora_targets", ",".join(wrapped), "the modules peft wrapped (delora_A)")


def _trainable_tokens(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's TrainableTokensConfig: its token ids, on the token embedding only (other
    targets, e.g. an LM head of its own, are not modelled)."""
    targets = _names(pc.target_modules)  # (None: the input embedding)
    if len(targets) > 1 or not all(t.split(".")[-1] == "embed_tokens" for t in targets):
        raise InvalidInputError(
            f"peft's trainable tokens on {', '.join(targets) or 'no module'} is not modelled; "
            "ftmem models it on the token embedding (target_modules embed_tokens)."
        )
    live.set("method", "trainable-tokens", said)
    ids = [int(i) for i in pc.token_indices]
    live.set("trainable_token_ids", ",".join(map(str, ids)) if len(ids) > 1 else f"{ids[0]},", said)


def _glora(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's GloraConfig: rank, the A/B path (lora or vector) and the modules it wrapped."""
    if pc.config_A_B not in ("lora", "vector"):
        raise InvalidInputError(
            f"peft's GLoRA config_A_B {pc.config_A_B!r} is not modelled; ftmem models its "
            "'lora' and 'vector' paths."
        )
    live.set("method", "glora", said)
    live.set("glora_rank", int(pc.r), said)
    if pc.config_A_B == "vector":
        live.set("glora_vector", True, said)
    _wrapped(model, live, "glora", "glora_A")


def _deft(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's DeftConfig: rank, PaRa, decomposition and the modules it wrapped (deft_P);
    deft_dropout is not modelled."""
    if pc.deft_dropout:
        raise InvalidInputError(
            f"peft's DeFT deft_dropout {pc.deft_dropout} is not modelled; ftmem models DeFT "
            "without dropout."
        )
    live.set("method", "deft", said)
    live.set("lora_r", int(pc.r), said)
    if pc.para:
        live.set("deft_para", True, said)
    if pc.decomposition_method == "qr":
        live.set("deft_qr", True, said)
    wrapped = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "deft_P")}
    )
    if wrapped:
        live.set("lora_targets", ",".join(wrapped), "the modules peft wrapped (deft_P)")


def _vera(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's VeraConfig: its rank and the modules it wrapped (vera_lambda_b)."""
    live.set("method", "vera", said)
    live.set("vera_rank", int(pc.r), said)
    _wrapped(model, live, "vera", "vera_lambda_b")
    if pc.vera_dropout:
        live.notes.append(
            "VeRA vera_dropout: not modelled (its mask, T × in per adapted linear); "
            "estimated without."
        )


def _fourierft(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's FourierFTConfig: its n_frequency and the modules it wrapped
    (fourierft_spectrum)."""
    live.set("method", "fourierft", said)
    live.set("fourierft_frequencies", int(pc.n_frequency), said)
    _wrapped(model, live, "fourierft", "fourierft_spectrum")


def _hira(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's HiraConfig: its rank and the modules it wrapped (hira_A); a quantised base
    (peft tuners/hira/bnb.py dequantises the weight for W0 ⊙ (B A)) is refused."""
    for _, m in model.named_modules():
        base = m.get_base_layer() if hasattr(m, "hira_A") else None
        if base is not None and type(base).__module__.startswith("bitsandbytes"):
            raise InvalidInputError(
                "peft HiRA on a bitsandbytes-quantised base is not modelled (its forward "
                "dequantises each weight); use a 16-bit or fp32 base."
            )
    live.set("method", "hira", said)
    live.set("hira_rank", int(pc.r), said)
    _wrapped(model, live, "hira", "hira_A")
    if pc.hira_dropout:
        live.notes.append(
            "HiRA hira_dropout: not modelled (its mask and dropped copy, T × in per adapted "
            "linear); estimated without."
        )


def _peanut(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's PeanutConfig: rank, depth and the modules it wrapped (peanut_A); an act_fn
    other than relu (the others keep their input, not their output: not measured) and a
    bitsandbytes base (Wᵀ cast from its packed storage) are refused."""
    if pc.act_fn != "relu":
        raise InvalidInputError(
            f"peft Peanut with act_fn {pc.act_fn!r} is not modelled; ftmem models its "
            "default, relu."
        )
    for _, m in model.named_modules():
        base = m.get_base_layer() if hasattr(m, "peanut_A") else None
        if base is not None and type(base).__module__.startswith("bitsandbytes"):
            raise InvalidInputError(
                "peft Peanut on a bitsandbytes-quantised base is not modelled (its forward "
                "casts each weight); use a 16-bit or fp32 base."
            )
    live.set("method", "peanut", said)
    live.set("peanut_rank", int(pc.r), said)
    live.set("peanut_depth", int(pc.depth), said)
    _wrapped(model, live, "peanut", "peanut_A")


def _osf(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's OSFConfig: the modules it wrapped (osf_svd_params) and their trained rank
    read off U_low: peft's default (half of each smaller side) or one rank for all; other
    mixes are refused (ftmem takes one --osf-rank)."""
    shapes = [
        (*m.osf_svd_params[k]["U_low"].shape, min(m.in_features, m.out_features))
        for _, m in model.named_modules()
        if hasattr(m, "osf_svd_params")
        for k in m.osf_svd_params
    ]
    ranks = {t for _, t, _ in shapes}
    default = all(t == side - side // 2 for _, t, side in shapes)
    if len(ranks) > 1 and not default:
        raise InvalidInputError(
            f"peft OSF with trained ranks {sorted(ranks)} on different linears is not "
            "modelled; ftmem takes one --osf-rank for all."
        )
    live.set("method", "osf", said)
    if ranks and not default:
        live.set("osf_rank", ranks.pop(), "the trained rank of U_low")
    _wrapped(model, live, "osf", "osf_svd_params")


def _psoft(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's PsoftConfig: its rank, Cayley solve or series and the modules it wrapped
    (psoft_R); R without its orthogonality or scale vectors is refused (not modelled)."""
    off = [k for k in ("psoft_orth", "psoft_mag_a", "psoft_mag_b") if not getattr(pc, k)]
    if off:
        raise InvalidInputError(
            f"peft PSOFT with {', '.join(off)} False is not modelled (ftmem models the "
            "default orthogonal R with both scale vectors)."
        )
    live.set("method", "psoft", said)
    live.set("psoft_rank", int(pc.r), said)
    if pc.use_cayley_neumann:
        live.set("psoft_neumann_terms", int(pc.num_cayley_neumann_terms), said)
    _wrapped(model, live, "psoft", "psoft_R")
    if pc.psoft_dropout:
        live.notes.append(
            "PSOFT psoft_dropout: not modelled (its mask and dropped copy, T × in per adapted "
            "linear); estimated without."
        )


def _hra(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's HRAConfig: its rank and the modules it wrapped (hra_u); Gram-Schmidt
    (apply_GS) is refused (not modelled)."""
    if pc.apply_GS:
        raise InvalidInputError(
            "peft HRA with apply_GS (Gram-Schmidt) is not modelled; ftmem models its default "
            "chain of reflections."
        )
    live.set("method", "hra", said)
    live.set("hra_rank", int(pc.r), said)
    _wrapped(model, live, "hra", "hra_u")


# peft's shared-bank adapters: peft_type -> (ftmem's method, its parameter per adapted
# linear, the config's dropout field)
SHARED_BANK = {
    "PVERA": ("pvera", "pvera_lambda_b", "pvera_dropout"),
    "RANDLORA": ("randlora", "randlora_lambda", "randlora_dropout"),
    "VBLORA": ("vblora", "vblora_logits_A", "vblora_dropout"),
    "TINYLORA": ("tinylora", "tinylora_A", "tinylora_dropout"),
    "UNILORA": ("unilora", "unilora_indices_A", "unilora_dropout"),
    "LILY": ("lily", "lily_router", "lily_dropout"),
}

# their settings beyond the rank: (ftmem's setting, the config's field, its type)
SHARED_BANK_EXTRAS: dict[str, tuple[tuple[str, str, type], ...]] = {
    "VBLORA": (
        ("vblora_vectors", "num_vectors", int),
        ("vblora_vector_length", "vector_length", int),
        ("vblora_topk", "topk", int),
    ),
    "TINYLORA": (("tinylora_u", "u", int), ("tinylora_weight_tying", "weight_tying", float)),
    "UNILORA": (("unilora_theta_length", "theta_d_length", int),),
    "LILY": (("lily_stride_a", "stride_A", int), ("lily_num_b", "num_B", int)),
}


def _shared_bank(model: Any, pc: Any, live: LiveRun, said: str, kind: str) -> None:
    """peft's PVeRA, RandLoRA, VB-LoRA, TinyLoRA, UniLoRA or Lily config: its rank, its
    other settings (SHARED_BANK_EXTRAS) and the modules it wrapped."""
    method, marker, dropout = SHARED_BANK[kind]
    live.set("method", method, said)
    live.set(f"{method}_rank", int(pc.r), said)
    for setting, attribute, kind_of in SHARED_BANK_EXTRAS.get(kind, ()):
        live.set(setting, kind_of(getattr(pc, attribute)), said)
    _wrapped(model, live, method, marker)
    if getattr(pc, dropout, 0):
        live.notes.append(f"{dropout}: not modelled (its mask, T × in per adapted linear).")


def _adamss(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's AdamssConfig: r, num_subspaces, subspace_rank and the modules it wrapped
    (adamss_A), ASA; ranks read off the singular values are not modelled (peft 0.21.2
    tuners/adamss/layer.py update_layer use_dynamic_rank)."""
    if pc.use_dynamic_rank:
        raise InvalidInputError(
            "peft AdaMSS with use_dynamic_rank is not modelled (its ranks follow the "
            "weights' singular values); ftmem models fixed subspace ranks."
        )
    live.set("method", "adamss", said)
    live.set("adamss_rank", int(pc.r), said)
    live.set("adamss_subspaces", int(pc.num_subspaces), said)
    live.set("adamss_subspace_rank", int(pc.subspace_rank), said)
    if pc.use_asa:
        live.set("adamss_asa", True, said)
    _wrapped(model, live, "adamss", "adamss_A")


def _shira(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's ShiraConfig: its r and the modules it wrapped (shira_weight); a mask function
    of the user's own keeps r·(in + out) values as the random one does."""
    live.set("method", "shira", said)
    live.set("shira_rank", int(pc.r), said)
    _wrapped(model, live, "shira", "shira_weight")


def _supertuning(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's SupertuningConfig: its sparsity and the modules it wrapped
    (supertuning_values), and Supra's r; select_top picks which entries, not how many.
    Supra's LoRA dropout (its mask, T × in per linear) is not measured: refused."""
    if pc.r is not None and pc.lora_dropout:
        raise InvalidInputError(
            f"peft's Super-Tuning Supra with lora_dropout={pc.lora_dropout} is not modelled "
            "(its dropout mask and dropped input were not measured); use lora_dropout=0."
        )
    live.set("method", "supertuning", said)
    live.set("supertuning_sparsity", float(pc.sparsity), said)
    if pc.r is not None:
        live.set("supertuning_r", int(pc.r), said)
    _wrapped(model, live, "supertuning", "supertuning_values")


def _waveft(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's WaveFTConfig: its n_frequency and the modules it wrapped (waveft_spectrum);
    ftmem models the default db1 inverse transform only."""
    if pc.wavelet_family != "db1" or not pc.use_idwt or pc.proportional_parameters:
        raise InvalidInputError(
            f"peft WaveFT with wavelet_family {pc.wavelet_family}, use_idwt {pc.use_idwt} "
            f"and proportional_parameters {pc.proportional_parameters} is not modelled "
            "(ftmem models db1, use_idwt True, equal n_frequency per linear)."
        )
    live.set("method", "waveft", said)
    live.set("waveft_frequencies", int(pc.n_frequency), said)
    _wrapped(model, live, "waveft", "waveft_spectrum")


def _c3a(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's C3AConfig: its block_size and the modules it wrapped (c3a_kernel); one block
    size for every linear."""
    if pc.block_size_pattern:
        raise InvalidInputError(
            "peft C3A with a block_size_pattern is not modelled (ftmem takes one block_size "
            "for every adapted linear)."
        )
    live.set("method", "c3a", said)
    live.set("c3a_block_size", int(pc.block_size), said)
    _wrapped(model, live, "c3a", "c3a_kernel")


def _ln_tuning(pc: Any, live: LiveRun, said: str) -> None:
    """peft's LNTuningConfig: ftmem models its default targets (the model type's norms)."""
    live.set("method", "ln-tuning", said)
    if _names(pc.target_modules):
        live.notes.append(
            f"peft's LN-tuning target_modules {_names(pc.target_modules)}: estimated with "
            "peft's default targets for the model type."
        )


def _lora_variants(pc: Any, live: LiveRun, said: str) -> None:
    """LoraConfig's MiCA (init_lora_weights "mica") and BD-LoRA (use_bdlora, a
    BdLoraConfig or its dict once saved)."""
    if str(getattr(pc, "init_lora_weights", "")).lower() == "mica":
        live.set("lora_mica", True, said)
    bd = getattr(pc, "use_bdlora", None)
    if bd:
        blocks = bd["nblocks"] if isinstance(bd, dict) else bd.nblocks
        live.set("lora_bd_blocks", int(blocks), said)
        live.notes.append(
            "peft's BD-LoRA: estimated with lora_A block-diagonal on o/down and lora_B on "
            "the other linears (BdLoraConfig's guidance), whatever its patterns say."
        )


def _lora(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    adalora = str(getattr(pc.peft_type, "value", pc.peft_type)).upper() == "ADALORA"
    method = "dora" if getattr(pc, "use_dora", False) else "lora"
    if method == "lora" and getattr(pc, "use_rslora", False):
        method = "rslora"
    live.set("method", "adalora" if adalora else method, said)
    # (AdaLoraConfig's r is unused: its adapters are made at init_r)
    live.set("lora_r", int(pc.init_r if adalora else pc.r), said)
    if adalora:
        live.set("adalora_target_r", int(pc.target_r), said)
    live.set("lora_alpha", float(pc.lora_alpha), said)
    if pc.lora_dropout:
        live.set("lora_dropout", float(pc.lora_dropout), said)
    _lora_variants(pc, live, said)
    a_and_b = [(n, p.requires_grad) for n, p in model.named_parameters() if ".lora_" in n]
    a_grads = [grad for n, grad in a_and_b if ".lora_A" in n]
    lora_only = not adalora and method != "dora"
    if a_grads and lora_only and not any(a_grads) and any(grad for _, grad in a_and_b):
        # create_lorafa_optimizer froze every lora_A and B trains: LoRA-FA
        live.set("lora_fa", True, "lora_A frozen, lora_B trainable (LoRA-FA)")
    wrapped = [(n, m) for n, m in model.named_modules() if hasattr(m, "lora_A")]
    # (peft's ParamWrapper: LoRA on a parameter, the routed experts' 3-D ones)
    live.wrapped = [n for n, m in wrapped if not getattr(m, "parameter_name", None)]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in live.wrapped})
    experts = _expert_items(wrapped, int(pc.r))
    if leaves or experts:  # what peft wrapped wins over target_modules (a regex, "all-linear")
        what = "modules and parameters" if experts else "modules"
        said_wrapped = f"the {what} peft wrapped (lora_A)"
        live.set("lora_targets", ",".join(leaves + experts), said_wrapped)
    configured = _names(pc.target_modules)
    if configured and sorted(configured) != leaves:
        live.notes.append(
            f"peft's target_modules {configured} wrapped {', '.join(leaves) or 'nothing'}: "
            "estimated with the modules wrapped."
        )
    if getattr(pc, "layers_to_transform", None) is not None:
        live.notes.append(
            "peft layers_to_transform: adapters in some layers only are not modelled; "
            "estimated with adapters in every layer."
        )
    saved = _names(getattr(pc, "modules_to_save", None))
    kinds = {"embed" if "embed" in n else "head" if "lm_head" in n else "" for n in saved}
    if kinds - {""}:
        live.set("lora_modules_to_save", ",".join(sorted(kinds - {""})), said)
    if "" in kinds:
        live.notes.append(
            f"peft modules_to_save {saved}: only the token embedding and the LM head are modelled."
        )


def _plain_method(params: list[tuple[str, Any]], live: LiveRun) -> None:
    """No peft: every parameter trains (full), or those that do, by name (partial)."""
    trainable = [n for n, p in params if p.requires_grad]
    said = "the parameters' requires_grad"
    if not trainable:
        raise InvalidInputError("No parameter of the model requires grad: nothing would train.")
    if len(trainable) == len(params):
        live.set("method", "full", said)
        return
    live.set("method", "partial", said)
    patterns = trainable_patterns([n for n, _ in params], trainable)
    live.set("trainable_modules", ",".join(patterns), said)


def trainable_patterns(names: list[str], trainable: list[str]) -> list[str]:
    """--trainable-modules for a trainable set: the shortest module prefixes under which
    every parameter trains (``^model\\.layers\\.``), else the parameter's own name."""
    trained = set(trainable)
    chosen: list[str] = []
    for name in trainable:
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            prefix = ".".join(parts[:k])
            under = [n for n in names if n == prefix or n.startswith(prefix + ".")]
            if all(n in trained for n in under):
                if prefix not in chosen:
                    chosen.append(prefix)
                break
    return ["^" + re.escape(p) + ("$" if p in trained else r"\.") for p in chosen]


def _read_quantisation(cfg: dict[str, Any], live: LiveRun) -> None:
    """bitsandbytes / GPTQ / AWQ from the config's quantization_config: a LoRA on it is
    a QLoRA over the base's own format (ftmem.quantized_base)."""
    base = quantized_base(cfg)
    if base is None:
        return
    base = replace(base, said_by="model.config.quantization_config")
    settings, notes = on_quantized_base(base, live.settings)
    for key in ("method", "quant", "double_quant"):
        if key in settings and settings[key] != live.settings.get(key):
            live.set(key, settings[key], "model.config.quantization_config")
    live.notes += notes
    given = str((cfg.get("quantization_config") or {}).get("bnb_4bit_compute_dtype"))
    compute = HALF_NAMES.get(given.removeprefix("torch."))
    if compute and live.settings.get("method") == "qlora" and live.settings.get("quant") != "int8":
        live.set("compute_dtype", compute, "quantization_config.bnb_4bit_compute_dtype")


def numel(p: Any) -> int:
    """A parameter's elements; under DeepSpeed ZeRO-3 the local tensor is empty and
    ``ds_numel`` holds the count."""
    return int(getattr(p, "ds_numel", None) or p.numel())


def dtype_elements(model: Any, trainable: bool) -> Counter[str]:
    """Elements per floating dtype among the (frozen or trainable) parameters; the
    quantised storage (uint8, int8) left out."""
    count: Counter[str] = Counter()
    for _, p in model.named_parameters():
        name = DTYPES.get(str(p.dtype))
        if name is not None and bool(p.requires_grad) == trainable:
            count[name] += numel(p)
    return count


def _read_dtypes(model: Any, half: str, half_said: str, live: LiveRun) -> None:
    """The precision from the dtypes the parameters really have and the trainer's
    autocast (HF Trainer's bf16 / fp16, Lightning's "-mixed"): both keep the weights'
    dtype and autocast."""
    frozen, trained = dtype_elements(model, False), dtype_elements(model, True)
    weights = (frozen or trained).most_common(1)
    if not weights:
        return
    dtype = weights[0][0]
    said = f"the parameters' dtype ({dtype}) and {half_said}"
    if dtype == "fp32":
        live.set("precision", f"{half}-mixed" if half else "fp32", said)
    else:
        live.set("precision", dtype, said)
        if half:
            live.set("autocast", True, said)
    mixed = [d for d in (frozen + trained) if d != dtype]
    method = live.settings.get("method")
    if method in ADAPTER_DTYPE_METHODS and trained:
        adapter = trained.most_common(1)[0][0]
        live.set("adapter_dtype", adapter, f"the trainable (adapter) parameters' dtype ({adapter})")
    elif mixed and trained:
        live.notes.append(
            f"The parameters hold several dtypes ({', '.join(sorted(set(frozen + trained)))}); "
            f"estimated as {dtype}."
        )


def _config_dtype_note(cfg: dict[str, Any], model: Any, live: LiveRun) -> None:
    """The config's dtype (what config.json would say) against the parameters' own."""
    given = cfg.get("dtype") or cfg.get("torch_dtype")
    said = HALF_NAMES.get(str(given).removeprefix("torch."))
    weights = (dtype_elements(model, False) or dtype_elements(model, True)).most_common(1)
    if said and weights and weights[0][0] != said:
        live.notes.append(
            f"The model's config says dtype {given}, its parameters are {weights[0][0]}: "
            "estimated with the parameters' dtype."
        )


def compared(live: LiveRun, n_trainable_estimated: int) -> list[str]:
    """What the live model has that the estimate's layout does not: notes."""
    if live.n_trainable == n_trainable_estimated or not live.n_params:  # no live model read
        return []
    return [
        f"The live model trains {live.n_trainable:,} parameters, the estimate's layout "
        f"{n_trainable_estimated:,}: the estimate follows the layout (check the trainable "
        "set: modules_to_save, layers_to_transform, frozen parts)."
    ]


def _read_model_flags(model: Any, wanted: bool | None, wanted_said: str, live: LiveRun) -> None:
    """Checkpointing as the model has it (the trainer turns it on before its first
    step) and the attention implementation."""
    base = base_model(model)
    attr = "is_activation_checkpointing"
    on = getattr(base, attr, None)
    if on is None:
        attr = "is_gradient_checkpointing"
        on = getattr(base, attr, None)
    if on is None:
        live.set("grad_ckpt", bool(wanted), f"{wanted_said}.gradient_checkpointing")
    else:
        live.set("grad_ckpt", bool(on), f"model.{attr}")
        if wanted is not None and bool(on) != wanted:
            live.notes.append(
                f"The model has checkpointing {'on' if on else 'off'}, {wanted_said} "
                f"asked for it {'on' if wanted else 'off'}: estimated as the model has it."
            )
    impl = getattr(getattr(base, "config", None), "_attn_implementation", None)
    if isinstance(impl, str):
        live.set("attn", ATTENTION.get(impl, "sdpa"), "model.config._attn_implementation")
        if impl not in ATTENTION:
            live.notes.append(f"attention {impl} is not modelled; estimated with sdpa's memory.")
    forward = getattr(base, "forward", None)
    code = getattr(getattr(forward, "__func__", forward), "__code__", None)
    if getattr(code, "co_name", None) == "_fused_forward":
        live.set("loss", "logprob-tiles", "model.forward (TRL's add_fused_lm_head)")
        live.notes.append(TRL_FUSED_NOTE)
    device = next((str(p.device) for _, p in model.named_parameters()), "cuda")
    live.set("device", "cpu" if device.startswith("cpu") else "cuda", "the parameters' device")


# -- the trainer's arguments ------------------------------------------------------------


def _text(value: Any) -> str | None:
    value = getattr(value, "value", value)  # transformers' enums (OptimizerNames)
    return value if isinstance(value, str) and value else None


def _read_args(args: Any, live: LiveRun) -> None:
    """Batch, accumulation, optimizer (by name), the memory features of TRL's configs."""
    name = type(args).__name__
    live.set(
        "batch_size", int(args.per_device_train_batch_size), f"{name}.per_device_train_batch_size"
    )
    live.set(
        "grad_accum", int(args.gradient_accumulation_steps), f"{name}.gradient_accumulation_steps"
    )
    cfg = FrameworkConfig("trl", name, None, {"method": live.settings.get("method", "full")})
    keys = Keys({"optim": _text(getattr(args, "optim", None)),
                 "optim_args": getattr(args, "optim_args", None),
                 "optim_target_modules": getattr(args, "optim_target_modules", None)}, name)  # fmt: skip
    hf_optimizer(keys, "optim", cfg)
    galore_args(keys, cfg)
    for key, value in cfg.settings.items():
        if value != live.settings.get(key, "full" if key == "method" else None):
            live.set(key, value, f"{name}.optim")
    live.notes += cfg.notes
    # TRL >= 1.15's SFTTrainer patches the forward and turns Liger's loss off; with
    # label smoothing (loss_type nll) its loss reads the full logits (sft_trainer.py:1601)
    tiles = live.settings.get("loss") == "logprob-tiles"
    smoothing = getattr(args, "label_smoothing_factor", 0) or 0
    if tiles and smoothing > 0 and getattr(args, "loss_type", "nll") == "nll":
        live.set("loss", "standard", f"{name}.label_smoothing_factor")
        live.notes.append(
            "label_smoothing_factor > 0: SFTTrainer's loss over the full logits; its no-grad "
            "forward through the tiles for the metrics is not modelled."
        )
    if getattr(args, "use_liger_kernel", False) and not tiles:
        live.set("loss", "fused", f"{name}.use_liger_kernel")
    strategy = _text(getattr(args, "eval_strategy", None)) or "no"
    if strategy != "no" and getattr(args, "per_device_eval_batch_size", None):
        batch = int(args.per_device_eval_batch_size)
        live.set("eval_batch_size", batch, f"{name}.per_device_eval_batch_size (eval_strategy)")
    if getattr(args, "activation_offloading", False):
        live.set("activation_offload", True, f"{name}.activation_offloading")
    if getattr(args, "torch_compile", False):
        live.set("compile", True, f"{name}.torch_compile")
    for key, note in LIMITS_NOTED.items():
        if getattr(args, key, None) not in (None, False, 0, 0.0):
            live.notes.append(f"{key}: {note}")
    known = ("TrainingArguments", "SFTConfig", "Seq2SeqTrainingArguments", *TRL_OBJECTIVES)
    if name not in known:
        live.notes.append(
            f"{name}: estimated as supervised finetuning (the objective's own memory, such "
            "as a reference model, is not read from a live trainer yet)."
        )


def bnb_live(inner: Any) -> str | None:
    """A live bitsandbytes Lion or Adam(W) as ftmem's --optimizer, by what it was built
    with: transformers builds the plain ``Lion`` and ``AdamW`` classes for every bnb
    ``optim`` name and passes ``optim_bits`` and ``is_paged`` (trainer_optimizer.py
    ``_get_bitsandbytes_optimizer``, 5.25), which bitsandbytes keeps as ``args.optim_bits``
    and ``is_paged`` (bitsandbytes@95f9af30 optim/optimizer.py l.135, l.480, l.652).
    None for its other classes."""
    kind = type(inner).__name__
    states = 1 if "Lion" in kind else 2 if "Adam" in kind and "AdEMAMix" not in kind else 0
    built = (states, getattr(getattr(inner, "args", None), "optim_bits", None))
    paged = getattr(inner, "is_paged", None) is True
    return next(
        (
            name
            for name, o in BNB_OPTIMIZERS.items()
            if (o.states, o.bits, o.paged) == (*built, paged)
        ),
        None,
    )


def read_optimizer(optimizer: Any, live: LiveRun) -> None:
    """The live optimizer's class wins over the name in the arguments (a trainer given
    ``optimizers=``); torch's own say which kernel runs (fused, foreach, for-loop)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    defaults = getattr(inner, "defaults", None)
    if inner is None or not isinstance(defaults, dict) or live.settings.get("method") == "galore":
        return
    kind = type(inner).__name__
    said = f"the optimizer ({type(inner).__module__}.{kind})"
    mapped = LIVE_OPTIMIZERS.get(kind)
    if type(inner).__module__.startswith("bitsandbytes."):
        mapped = bnb_live(inner) or mapped
    if type(inner).__module__.startswith("torchao."):  # AdamW8bit is bitsandbytes' too
        mapped = TORCHAO_CLASSES.get(kind)
        block = getattr(inner, "block_size", None)
        if mapped and isinstance(block, int) and block != FORMATS[mapped].default_block:
            live.set("optimizer_block_size", block, f"{said}.block_size")
    if kind == "SGD":
        mapped = "sgd-momentum" if defaults.get("momentum") else "sgd"
    if mapped is None:
        live.notes.append(
            f"The optimizer {kind} is not modelled; estimated as "
            f"{live.settings.get('optimizer', 'adamw')}."
        )
        return
    if mapped != live.settings.get("optimizer"):
        live.set("optimizer", mapped, said)
    if not type(inner).__module__.startswith("torch.optim"):
        live.settings.pop("optimizer_impl", None)
        live.said.pop("optimizer_impl", None)
        return
    if defaults.get("fused"):
        live.set("optimizer_impl", "fused", f"{said}.defaults")
    elif defaults.get("foreach"):
        live.set("optimizer_impl", "foreach", f"{said}.defaults")
    else:  # foreach None: torch takes foreach when every tensor is on CUDA, else a for-loop
        on_cuda = live.settings.get("device") == "cuda" and defaults.get("foreach") is None
        live.set("optimizer_impl", "foreach" if on_cuda else "for-loop", f"{said}.defaults")


def _read_seq_len(args: Any, dataset: Any, live: LiveRun, tokenizer: Any = None) -> None:
    """The sequence length: TRL's max_length, else the longest example of a small
    dataset; the measured step's own shape replaces it in the report. GRPO: the longest
    prompt of the dataset, tokenized as the trainer does, and max_completion_length
    (_grpo_seq_len)."""
    name = type(args).__name__
    if name == "GRPOConfig":
        _grpo_seq_len(args, dataset, tokenizer, live)
        return  # without a prompt length the objective's reader assumes one and says so
    for key in SEQ_LEN_ARGS:
        value = getattr(args, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            live.set("seq_len", value, f"{name}.{key}")
            return
    longest = longest_example(dataset)
    if longest:
        live.set("seq_len", longest, "the longest input_ids of the training dataset")
        return
    live.notes.append(
        "No sequence length on the trainer's arguments and none found in the dataset: "
        "estimated at ftmem's 512 tokens (give FtmemCallback(seq_len=...)); the report "
        "after the measured step uses the step's real shape."
    )


def _grpo_seq_len(args: Any, dataset: Any, tokenizer: Any, live: LiveRun) -> None:
    """GRPO's training sequence is the prompt and the completion. GRPOConfig has no prompt
    length (TRL 1.16): generate() runs on the batch's prompts left-padded to the longest
    (trl 1.16.0 trl/trainer/grpo_trainer.py:1815-1827 ``pad(..., padding_side="left",
    pad_to_multiple_of=...)``), so the step's largest is the dataset's longest prompt,
    tokenized as _tokenize_prompts does (:1684-1761: a conversation through
    apply_chat_template with add_generation_prompt, else ``processing_class(text=...)``),
    rounded up to an integer pad_to_multiple_of; every completion is counted at
    max_completion_length (no early end of sequence)."""
    completion = getattr(args, "max_completion_length", None)
    longest = longest_prompt(dataset, tokenizer, getattr(args, "chat_template_kwargs", None))
    if longest is None or not isinstance(completion, int) or completion <= 0:
        return
    multiple = getattr(args, "pad_to_multiple_of", None)
    prompt, padded = longest, ""
    if isinstance(multiple, int) and not isinstance(multiple, bool) and multiple > 1:
        prompt = -(-longest // multiple) * multiple
        padded = f", padded to {prompt} (pad_to_multiple_of {multiple})"
    live.set(
        "seq_len",
        prompt + completion,
        f"the training dataset's longest prompt as GRPOTrainer tokenizes it ({longest} "
        f"tokens{padded}) + GRPOConfig.max_completion_length ({completion})",
    )


def longest_prompt(dataset: Any, tokenizer: Any, template_kwargs: Any = None) -> int | None:
    """The longest ``prompt`` of a map-style dataset of at most PROBED_ROWS rows in
    tokens, as trl 1.16.0 GRPOTrainer._tokenize_prompts makes them (no tools, no
    images); None where it cannot say (no tokenizer, no prompt column, a failure)."""
    try:
        rows = len(dataset)
    except TypeError:
        return None
    if tokenizer is None or not rows or rows > PROBED_ROWS:
        return None
    try:
        prompts = [dataset[i]["prompt"] for i in range(rows)]
        conversational = isinstance(prompts[0], list) and all(
            isinstance(m, dict) and "role" in m for m in prompts[0]
        )
        if conversational:
            ids = tokenizer.apply_chat_template(
                conversation=prompts,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                **(template_kwargs or {}),
            )["input_ids"]
        else:
            ids = tokenizer(text=prompts)["input_ids"]
        return max(len(row) for row in ids) or None
    except Exception:  # a dataset or tokenizer this reader does not know: say 512
        return None


def longest_example(dataset: Any) -> int | None:
    """The longest ``input_ids`` of a map-style dataset of at most PROBED_ROWS rows."""
    try:
        rows = len(dataset)
    except TypeError:
        return None
    if not rows or rows > PROBED_ROWS:
        return None
    longest = 0
    for i in range(rows):
        row = dataset[i]
        ids = row.get("input_ids") if isinstance(row, dict) else None
        if ids is None:
            return None
        longest = max(longest, len(ids))
    return longest or None


def _read_objective(args: Any, live: LiveRun) -> None:
    """A DPOConfig, KTOConfig, GRPOConfig, ORPOConfig or CPOConfig: the objective and its
    settings (loss_type, cpo_alpha,
    beta, precompute_ref_log_probs, num_generations, max_completion_length, vLLM...) as
    the TRL reader of ``ftmem estimate --from`` reads them, from the live config's
    fields (every one set: TRL's defaults are the object's own); dropout off as TRL's
    disable_dropout does."""
    name = type(args).__name__
    read = TRL_OBJECTIVES.get(name)
    fields = getattr(args, "__dataclass_fields__", None)
    if read is None or not isinstance(fields, dict):
        return
    data = {key: getattr(args, key, None) for key in fields if key not in GRPO_DERIVED}
    data = {key: _text(v) or v for key, v in data.items()}
    cfg = FrameworkConfig("trl", name, None, dict(live.settings))
    read(Keys(data, name), cfg, f"the live {name}")
    for key in set(live.settings) - set(cfg.settings):  # dropped (Liger's loss)
        live.settings.pop(key)
        live.said.pop(key, None)
    # a default the reader applied says why ("objective orpo (why; the live CPOConfig)")
    why = {a.split(" ", 1)[0]: a.split(" (", 1)[-1].removesuffix(")") for a in cfg.assumed}
    for key, value in cfg.settings.items():
        if value != live.settings.get(key):
            live.set(key, value, why.get(key, f"{name} ({key})"))
    if getattr(args, "disable_dropout", False):
        live.set("model_dropout", False, f"{name}.disable_dropout")
    live.notes += [n.replace("in the file", f"on the {name}") for n in cfg.notes]


def _read_parallel(args: Any, live: LiveRun) -> None:
    """World size (the launcher's processes), DeepSpeed and FSDP as TrainingArguments
    hold them after their __post_init__."""
    world = int(getattr(args, "world_size", 1) or 1)
    if world > 1:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if per_node <= 0 or world % per_node:
            per_node = world
        live.set("gpus", per_node, "TrainingArguments.world_size and LOCAL_WORLD_SIZE")
        live.set("nodes", world // per_node, "TrainingArguments.world_size and LOCAL_WORLD_SIZE")
    deepspeed = getattr(getattr(args, "hf_deepspeed_config", None), "config", None)
    data = {
        "deepspeed": deepspeed or getattr(args, "deepspeed", None) or None,
        "fsdp": getattr(args, "fsdp", None) or None,
        "fsdp_config": getattr(args, "fsdp_config", None) or None,
    }
    data = {k: v for k, v in data.items() if v is not None}
    if not data:
        return
    cfg = FrameworkConfig("trl", type(args).__name__, None, {})
    distributed_settings(Keys(data, type(args).__name__), Path.cwd(), cfg)
    for key, value in cfg.settings.items():
        live.set(key, value, f"{type(args).__name__}.deepspeed / fsdp")
    live.notes += [n for n in cfg.notes if n != LAUNCHER_NOTE]


def _adaption_prompt(model: Any, pc: Any, live: LiveRun, said: str) -> None:
    """peft's AdaptionPromptConfig: adapter_len and adapter_layers (tuners/adaption_prompt/
    config.py), on the attentions peft's own mapping names (another target_modules is
    not modelled)."""
    from ftmem.families import by_model_type

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = by_model_type().get(str(model_type))
    default = family.adaption_prompt_target if family else ""
    if default and pc.target_modules not in (None, default):
        raise InvalidInputError(
            f"peft's adaption prompt on {pc.target_modules!r} is not modelled; ftmem models "
            f"it on peft's own target ({default!r})."
        )
    live.set("method", "adaption-prompt", said)
    live.set("adapter_prompt_length", int(pc.adapter_len), said)
    live.set("adapter_layers", int(pc.adapter_layers), said)


# peft's adapter types whose readers take (model, config, live, said);
# at the end: the readers are defined above
_PEFT_READERS = {
    "LORA": _lora,
    "ADALORA": _lora,
    "BOFT": _boft,
    "OFT": _oft,
    "VERA": _vera,
    "GRALORA": _gralora,
    "DELORA": _delora,
    "FOURIERFT": _fourierft,
    "HIRA": _hira,
    "PSOFT": _psoft,
    "HRA": _hra,
    "SHIRA": _shira,
    "SUPERTUNING": _supertuning,
    "WAVEFT": _waveft,
    "C3A": _c3a,
    "BEFT": _beft,
    "DEFT": _deft,
    "GLORA": _glora,
    "PEANUT": _peanut,
    "TRAINABLE_TOKENS": _trainable_tokens,
    "OSF": _osf,
    "ADAPTION_PROMPT": _adaption_prompt,
    "ADAMSS": _adamss,
}
