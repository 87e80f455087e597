"""Training-framework configs as ftmem settings: axolotl, torchtune, TRL / HF
TrainingArguments, LitGPT and LLaMA-Factory.

Each reader maps the keys that change memory (base model, adapter, rank, targets,
sequence length, micro-batch, accumulation, checkpointing, optimizer, precision,
attention, DeepSpeed / FSDP) onto the settings of :func:`ftmem.estimate`; every other
key is listed as ignored, never silently dropped. The frameworks' own memory features
map onto ftmem's: chunked and fused losses (torchtune, Liger), activation offloading,
optimizer-in-backward, GaLore (HF ``galore_adamw*`` optimizers, LLaMA-Factory), rsLoRA
and ReLoRA; features ftmem does not model become notes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftmem.errors import ConfigError
from ftmem.filekeys import Keys
from ftmem.run import settings_for
from ftmem.textfiles import parse_json, parse_yaml, read_text

MAX_CONFIG_BYTES = 1 << 20

# keys every framework has that do not change the memory of a step
NO_MEMORY_EFFECT = {
    "learning_rate",
    "lr",
    "lr_scheduler",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "num_epochs",
    "num_train_epochs",
    "epochs",
    "max_steps",
    "seed",
    "output_dir",
    "logging_steps",
    "save_steps",
    "save_strategy",
    "eval_steps",
    "eval_strategy",
    "evaluation_strategy",
    "weight_decay",
    "datasets",
    "dataset",
    "dataset_prepared_path",
    "val_set_size",
    "wandb_project",
    "wandb_entity",
    "wandb_name",
    "wandb_watch",
    "wandb_log_model",
    "report_to",
    "run_name",
    "logging_dir",
    "hub_model_id",
    "push_to_hub",
    "resume_from_checkpoint",
    "tokenizer",
    "tokenizer_type",
    "model_type",
    "special_tokens",
    "chat_template",
    "template",
    "max_grad_norm",
    "gradient_clipping",
    "clip_grad_norm",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "logging_first_step",
    "save_total_limit",
    "save_safetensors",
    "overwrite_output_dir",
    "overwrite_cache",
    "preprocessing_num_workers",
    "dataloader_num_workers",
    "do_train",
    "plot_loss",
    "trust_remote_code",
    "strict",
    "train_on_inputs",
    "shuffle",
    "log_every_n_steps",
    "output_dir_name",
    "metric_logger",
    "device",
    "profiler",
    "seed_everything",
}


@dataclass
class FrameworkConfig:
    framework: str
    path: str
    model: str | None  # a preset id, a Hub id (an alias of a preset) or a local folder
    settings: dict[str, Any] = field(default_factory=dict)  # ftmem.estimate settings
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def under_flags(cfg: FrameworkConfig, flags: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The file's settings with the command line's flags over them, and notes.

    A flag replaces its setting; the file's settings that belonged to what a flag
    replaced go with it (its LoRA rank under ``--method full``, its FSDP offload under
    ``--strategy zero2``), each named in a note, rather than be refused as if the user
    had combined them.
    """
    settings = dict(cfg.settings)
    dropped: list[str] = []
    method = flags.get("method")
    if method is not None and method != settings.get("method", "full"):
        kept = settings_for(method, settings)
        dropped += [k for k in settings if k not in kept and k not in flags]
        settings = kept
    strategy = flags.get("strategy")
    if strategy is not None and strategy != settings.get("strategy"):
        dropped += [k for k in ("offload_optimizer", "offload_params") if k in settings]
        dropped = [k for k in dropped if k not in flags]
    settings = {k: v for k, v in settings.items() if k not in dropped}
    notes = []
    if dropped:
        names = ", ".join(sorted(dropped))
        notes.append(f"Not taken from {cfg.path} (they went with what the flags replace): {names}.")
    return {**settings, **flags}, notes


# -- shared mappings ----------------------------------------------------------------------

HF_OPTIMIZERS = {
    "adamw_torch": ("adamw", None),
    "adamw_hf": ("adamw", None),
    "adamw_torch_fused": ("adamw", "fused"),
    "adamw_apex_fused": ("adamw", "fused"),
    "adamw_bnb_8bit": ("adamw-8bit", None),
    "adamw_8bit": ("adamw-8bit", None),
    "paged_adamw_8bit": ("paged-adamw-8bit", None),
    "paged_adamw_32bit": ("adamw", None),
    "adafactor": ("adafactor", None),
    "sgd": ("sgd", None),
    "lion_32bit": ("lion", None),
    "paged_lion_32bit": ("lion", None),
}

ATTENTION = {
    "flash_attention_2": "flash",
    "flash_attention_3": "flash",
    "fa2": "flash",
    "sdpa": "sdpa",
    "auto": "sdpa",
    "eager": "eager",
    "disabled": "eager",
}


def _targets(names: list[str] | None) -> str | None:
    """peft target_modules (given as names or one comma-separated string) as ftmem
    --lora-targets."""
    if not names:
        return None
    if len(names) == 1 and names[0].lower() in ("all", "all-linear", "all_linear"):
        return "all-linear"
    return ",".join(names)


def _attention(k: Keys, key: str, cfg: FrameworkConfig) -> str | None:
    """An attention implementation name as ftmem --attn (unknown ones: sdpa, noted)."""
    name = k.text(key)
    if not name:
        return None
    if name not in ATTENTION:
        cfg.notes.append(f"{key}: {name} is not modelled; estimated with sdpa's memory.")
    return ATTENTION.get(name, "sdpa")


def _hf_optimizer(k: Keys, key: str, cfg: FrameworkConfig) -> None:
    name = k.text(key)
    if not name:
        return
    lowered = name.lower()
    if lowered.startswith("galore_adamw"):
        # transformers' GaLore optimizers: full finetuning with projected states
        if cfg.settings.get("method", "full") == "full":
            cfg.settings["method"] = "galore"
        cfg.settings["optimizer"] = "adamw-8bit" if "8bit" in lowered else "adamw"
        if lowered.endswith("layerwise"):
            cfg.settings["optimizer_in_backward"] = True
        return
    opt = HF_OPTIMIZERS.get(lowered)
    if opt is None:
        cfg.notes.append(f"{key}: {name} is not modelled; the estimate assumes AdamW.")
        return
    cfg.settings["optimizer"] = opt[0]
    if opt[1]:
        cfg.settings["optimizer_impl"] = opt[1]


def _galore_args(k: Keys, cfg: FrameworkConfig) -> None:
    """transformers' GaLore settings: ``optim_args`` ("rank=64, ...") and
    ``optim_target_modules`` (names or regular expressions of the projected linears)."""
    if cfg.settings.get("method") != "galore":
        return
    args = dict(
        item.split("=", 1)
        for item in (k.text("optim_args") or "").replace(" ", "").split(",")
        if "=" in item
    )
    if "rank" in args:
        rank = args["rank"]
        if not (rank.isascii() and rank.isdigit() and len(rank) < 10 and int(rank) > 0):
            raise ConfigError(
                f"{k.file}: optim_args' rank must be a positive whole number, not {rank[:40]!r}."
            )
        cfg.settings["galore_rank"] = int(rank)
    names = k.names("optim_target_modules")
    if names:
        words = {n.strip(".*").lower() for n in names}
        if {"attn", "mlp"} <= words or {"self_attn", "mlp"} <= words:
            cfg.settings["galore_targets"] = "all-linear"
        elif words <= {"attn", "self_attn", "attention"}:
            cfg.settings["galore_targets"] = "attention"
        else:
            cfg.notes.append(f"optim_target_modules {names}: read as every linear of the blocks.")


LAUNCHER_NOTE = (
    "The GPU count comes from the launcher, not the config: give --gpus (per node) "
    "and --nodes for per-GPU memory."
)
# DeepSpeed's own choices (deepspeed.runtime.zero.config: ZeroStageEnum, OffloadDeviceEnum)
ZERO_STAGES = {"0": 0, "1": 1, "2": 2, "3": 3}
OFFLOAD_DEVICES = ("none", "cpu", "nvme")


def _not_auto(k: Keys, key: str, choices: str) -> None:
    """DeepSpeed "auto" values are filled by HF Trainer for batch sizes, buckets and the
    like (transformers.integrations.deepspeed); the stage and the offload devices only
    Accelerate's launcher fills, from its own config, which ftmem does not see."""
    if k.raw(key) == "auto":
        raise ConfigError(
            f"{k.file}: {k.name(key)} is 'auto', which only Accelerate's launcher config fills "
            f"in (HF Trainer leaves it to DeepSpeed, which refuses it); write {choices} there."
        )


def _deepspeed_config(ds: Keys, cfg: FrameworkConfig) -> None:
    zero = ds.section("zero_optimization")
    _not_auto(zero, "stage", "0, 1, 2 or 3")
    stage = zero.raw("stage")
    if stage is not None:
        spelled = str(stage).strip() if isinstance(stage, (int, str)) else ""
        if isinstance(stage, bool) or spelled not in ZERO_STAGES:
            raise zero.wrong("stage", "0, 1, 2 or 3")
        if ZERO_STAGES[spelled]:
            cfg.settings["strategy"] = f"zero{ZERO_STAGES[spelled]}"
    for key, setting in (
        ("offload_optimizer", "offload_optimizer"),
        ("offload_param", "offload_params"),
    ):
        offload = zero.section(key)
        _not_auto(offload, "device", "none, cpu or nvme")
        device = offload.choice("device", OFFLOAD_DEVICES)
        if device in ("cpu", "nvme"):
            cfg.settings[setting] = device


def _strategy_from_deepspeed(k: Keys, key: str, base: Path, cfg: FrameworkConfig) -> None:
    """A DeepSpeed config (a mapping, or a path relative to the framework config)."""
    value = k.raw(key)
    if isinstance(value, dict):
        _deepspeed_config(k.section(key), cfg)
    elif isinstance(value, str):
        path = (base / value) if not Path(value).is_absolute() else Path(value)
        if path.is_file():
            _deepspeed_config(Keys(_read(path), str(path)), cfg)
        else:
            match = re.search(r"zero[_-]?([123])", value)
            if not match:
                cfg.notes.append(f"deepspeed: {value} not found; ZeRO stage unknown, not applied.")
                return
            cfg.settings["strategy"] = f"zero{match.group(1)}"
            if "offload" in value:
                cfg.settings["offload_optimizer"] = "cpu"
                if match.group(1) == "3":
                    cfg.settings["offload_params"] = "cpu"
            cfg.notes.append(f"deepspeed: {value} not found; stage and offload read from its name.")
    else:
        raise k.wrong(key, "a DeepSpeed config file name or a mapping")
    if "strategy" in cfg.settings:
        cfg.notes.append(LAUNCHER_NOTE)


FSDP_NAMES = {
    "full_shard": "fsdp",
    "shard_grad_op": "fsdp-grad-op",
    "hybrid_shard": "fsdp-hybrid",
    "no_shard": "fsdp-no-shard",
}
HYBRID_ZERO2_NOTE = (
    "{key}: HYBRID_SHARD_ZERO2 keeps the weights gathered between forward and backward "
    "within a node; estimated as hybrid_shard, which frees them."
)
# Accelerate's fsdp_sharding_strategy may be the 1-based index of these names
# (accelerate.utils.constants.FSDP_SHARDING_STRATEGY)
FSDP_BY_INDEX = ("full_shard", "shard_grad_op", "no_shard", "hybrid_shard")


# transformers' FSDPOption (trainer_utils.py): TrainingArguments refuses any other word
FSDP_OPTIONS = (*FSDP_NAMES, "hybrid_shard_zero2", "offload", "auto_wrap")


def _fsdp_options(k: Keys) -> tuple[bool, list[str]]:
    """HF's ``fsdp``: true (transformers 5), or the legacy options as one string
    ("full_shard auto_wrap offload") or a list of them."""
    value = k.raw("fsdp")
    if value is None:
        return False, []
    if isinstance(value, bool):
        return value, []
    if isinstance(value, str):
        words = value.lower().split()
    elif isinstance(value, list) and all(isinstance(x, str) for x in value):
        words = [w.lower() for x in value for w in x.split()]
    else:
        raise k.wrong("fsdp", "true, an option string (full_shard auto_wrap) or a list of options")
    unknown = [w for w in words if w not in FSDP_OPTIONS]
    if unknown:  # a typo ("ful_shard") was read as FSDP with full sharding
        raise k.wrong("fsdp", f"true or options among {', '.join(FSDP_OPTIONS)}")
    return bool(words), words


def _fsdp_settings(k: Keys, base: Path) -> Keys:
    """``fsdp_config``: a mapping or a JSON file name (as transformers takes it)."""
    value = k.raw("fsdp_config")
    if isinstance(value, str):
        path = (base / value) if not Path(value).is_absolute() else Path(value)
        return Keys(_read(path), str(path))
    return k.section("fsdp_config")


def _fsdp_key(fc: Keys, name: str) -> str:
    """transformers strips the ``fsdp_`` prefix of Accelerate's keys: either spelling."""
    return f"fsdp_{name}" if f"fsdp_{name}" in fc else name


def _strategy_from_fsdp(k: Keys, base: Path, cfg: FrameworkConfig) -> None:
    on, words = _fsdp_options(k)
    # axolotl 0.8+: fsdp_version and fsdp_config, without the legacy option list
    on = on or (k.raw("fsdp_version") is not None and bool(k.raw("fsdp_config")))
    if not on:
        return
    fc = _fsdp_settings(k, base)
    strategy = "fsdp"
    for w in words:
        strategy = FSDP_NAMES.get(w, strategy)
    if "hybrid_shard_zero2" in words:  # was read as full_shard
        strategy = "fsdp-hybrid"
        cfg.notes.append(HYBRID_ZERO2_NOTE.format(key="fsdp"))
    key = _fsdp_key(fc, "sharding_strategy")
    sharding = fc.raw(key)
    if isinstance(sharding, int) and not isinstance(sharding, bool):
        if not 1 <= sharding <= len(FSDP_BY_INDEX):
            raise fc.wrong(key, f"1 to {len(FSDP_BY_INDEX)} or a strategy name")
        strategy = FSDP_NAMES[FSDP_BY_INDEX[sharding - 1]]
    elif isinstance(sharding, str) and sharding.lower() == "hybrid_shard_zero2":
        strategy = "fsdp-hybrid"
        cfg.notes.append(HYBRID_ZERO2_NOTE.format(key=key))
    elif sharding is not None:
        strategy = FSDP_NAMES[fc.choice(key, FSDP_NAMES) or "full_shard"]
    key = _fsdp_key(fc, "reshard_after_forward")
    reshard = fc.raw(key)
    if isinstance(reshard, str) and reshard.lower() in FSDP_NAMES:
        strategy = FSDP_NAMES[reshard.lower()]  # FSDP1 spells the strategy here
    elif reshard is not None and not fc.flag(key, spelled=True):
        strategy = "fsdp-grad-op"  # FSDP2: weights stay gathered until backward
    cfg.settings["strategy"] = strategy
    offload = "offload" in words
    for name in ("offload_params", "cpu_offload"):
        offload |= fc.flag(_fsdp_key(fc, name), spelled=True)
    if offload:
        cfg.settings.update(offload_params="cpu", offload_optimizer="cpu")
    if fc.flag(_fsdp_key(fc, "activation_checkpointing"), spelled=True):
        cfg.settings["grad_ckpt"] = True
    cfg.notes.append(LAUNCHER_NOTE)


def _distributed(k: Keys, base: Path, cfg: FrameworkConfig) -> None:
    """The DeepSpeed / FSDP keys HF-Trainer-based frameworks share."""
    if k.raw("deepspeed"):
        _strategy_from_deepspeed(k, "deepspeed", base, cfg)
    if k.raw("fsdp") is not None or k.raw("fsdp_version") is not None:
        _strategy_from_fsdp(k, base, cfg)


def _hf_trainer_precision(k: Keys, cfg: FrameworkConfig, dtype: str | None = None) -> None:
    """HF Trainer: bf16/fp16 turn on autocast; the weights keep the dtype they were
    loaded in (transformers 5 loads a checkpoint's own dtype by default, 16-bit here).
    axolotl also takes ``bf16: auto`` (bf16 where the GPU has it)."""
    dtype = (dtype or "auto").lower().removeprefix("torch.")
    fp32_weights = dtype in ("float32", "fp32")
    bf16 = k.raw("bf16") == "auto" or k.flag("bf16")
    if bf16:
        cfg.settings.update(precision="bf16-mixed" if fp32_weights else "bf16")
        if not fp32_weights:
            cfg.settings["autocast"] = True
    elif k.flag("fp16"):
        cfg.settings.update(precision="fp16-mixed")
    else:
        # no mixed precision: the step runs in the dtype the weights were loaded in
        cfg.settings["precision"] = "fp32" if fp32_weights else "bf16"


def _settings_from(k: Keys, cfg: FrameworkConfig, pairs: tuple[tuple[str, str], ...]) -> None:
    """Whole-number keys (positive) that map one to one onto ftmem settings."""
    for key, setting in pairs:
        value = k.integer(key)
        if value is not None:
            cfg.settings[setting] = value


def _lora_numbers(k: Keys, cfg: FrameworkConfig, rank_key: str = "lora_r") -> None:
    """LoRA's rank, alpha and dropout, each of the type peft takes."""
    if (r := k.integer(rank_key)) is not None:
        cfg.settings["lora_r"] = r
    if (alpha := k.number("lora_alpha")) is not None:
        cfg.settings["lora_alpha"] = alpha
    if (dropout := k.number("lora_dropout", low=0.0, below=1.0)) is not None:
        cfg.settings["lora_dropout"] = dropout


# -- readers --------------------------------------------------------------------------------


def _axolotl_method(k: Keys, cfg: FrameworkConfig) -> None:
    """axolotl's adapter (LoRA, QLoRA, DoRA, rsLoRA, ReLoRA) or unfrozen parameters."""
    s = cfg.settings
    adapter = (k.text("adapter") or "").lower()
    if adapter in ("lora", "qlora"):
        s["method"] = "qlora" if adapter == "qlora" or k.flag("load_in_4bit") else "lora"
        if k.flag("load_in_8bit") and adapter == "lora":
            s.update(method="qlora", quant="int8")
        if k.flag("peft_use_dora"):
            s["method"] = "dora"
    elif adapter:
        cfg.notes.append(f"adapter: {adapter} is not modelled yet; estimated as full finetuning.")
    elif patterns := k.patterns("unfrozen_parameters"):
        # full finetuning restricted to the parameters matching these regular expressions
        s.update(method="partial", trainable_modules=",".join(patterns))
    if "method" in s and s["method"] != "partial":
        _lora_numbers(k, cfg)
        if k.flag("lora_target_linear"):
            s["lora_targets"] = "all-linear"
        elif targets := _targets(k.names("lora_target_modules")):
            s["lora_targets"] = targets
    if k.flag("peft_use_rslora") and s.get("method") == "lora":
        s["method"] = "rslora"
    if k.integer("relora_steps") and s.get("method") == "lora":
        s["method"] = "relora"


def _axolotl_modules_to_save(k: Keys, cfg: FrameworkConfig) -> None:
    """``lora_modules_to_save``: the embedding and the LM head are trained in full."""
    names = k.names("lora_modules_to_save")
    if not names or cfg.settings.get("method") in (None, "partial"):
        return
    kinds = {
        "embed" if "embed" in n or n == "wte" else "head" if n == "lm_head" else "" for n in names
    }
    if "" in kinds:
        cfg.notes.append(
            f"lora_modules_to_save: only the token embedding and the LM head are modelled "
            f"(given {', '.join(names)})."
        )
    if kinds - {""}:
        cfg.settings["lora_modules_to_save"] = ",".join(sorted(kinds - {""}))


AXOLOTL_NUMBERS = (
    ("sequence_len", "seq_len"),
    ("micro_batch_size", "batch_size"),
    ("gradient_accumulation_steps", "grad_accum"),
)
# axolotl's attention switches, the first one set wins
AXOLOTL_ATTENTION = (
    ("flash_attention", "flash"),
    ("sdp_attention", "sdpa"),
    ("eager_attention", "eager"),
)
# the keys _axolotl reads; read_framework_config lists every other one as ignored
AXOLOTL_KEYS = frozenset(
    {
        "base_model",
        "adapter",
        "load_in_4bit",
        "load_in_8bit",
        "peft_use_dora",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_linear",
        "lora_target_modules",
        "lora_modules_to_save",
        "unfrozen_parameters",
        "peft_use_rslora",
        "relora_steps",
        "liger_fused_linear_cross_entropy",
        "activation_offloading",
        "sequence_len",
        "micro_batch_size",
        "gradient_accumulation_steps",
        "gradient_checkpointing",
        "optimizer",
        "bf16",
        "fp16",
        "tf32",
        "flash_attention",
        "sdp_attention",
        "eager_attention",
        "sample_packing",
        "pad_to_sequence_len",
        "deepspeed",
        "fsdp",
        "fsdp_config",
        "fsdp_version",
        "base_model_config",
    }
)


def _axolotl(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
    s = cfg.settings
    cfg.model = k.text("base_model")
    _axolotl_method(k, cfg)
    if k.flag("liger_fused_linear_cross_entropy"):
        s["loss"] = "fused"
    if k.flag_or_text("activation_offloading", ("legacy", "disk")):  # axolotl's schema
        s["activation_offload"] = True
    _axolotl_modules_to_save(k, cfg)
    _settings_from(k, cfg, AXOLOTL_NUMBERS)
    # axolotl's schema (utils/schemas/config.py): true, false, "offload" or "offload_disk";
    # "unsloth" in its older releases
    if k.flag_or_text("gradient_checkpointing", ("offload", "offload_disk", "unsloth")):
        s["grad_ckpt"] = True
    _hf_optimizer(k, "optimizer", cfg)
    bf16 = k.raw("bf16") == "auto" or k.flag("bf16")
    _hf_trainer_precision(k, cfg, "bfloat16" if bf16 else None)
    for key, attn in AXOLOTL_ATTENTION:
        if k.flag(key):
            s["attn"] = attn
            break
    if k.flag("sample_packing"):
        cfg.notes.append(
            "sample_packing: each micro-batch is packed to sequence_len tokens, as estimated."
        )
    _distributed(k, base, cfg)
    return AXOLOTL_KEYS


TORCHTUNE_MODEL = re.compile(
    r"(?:q?lora_)?(llama3_[123]|llama3|llama2|mistral|qwen3|qwen2_5|qwen2|gemma2|gemma|phi3)_"
    # the base and instruct builders of one size have the same weights
    r"(\w+?)(?:_base|_instruct)?$"
)
TORCHTUNE_FAMILY = {
    "llama3_1": "llama3.1",
    "llama3_2": "llama3.2",
    "llama3_3": "llama3.3",
    "llama3": "llama3",
    "llama2": "llama2",
    "mistral": "mistral",
    "qwen3": "qwen3",
    "qwen2_5": "qwen2.5",
    "qwen2": "qwen2",
    "gemma2": "gemma2",
    "gemma": "gemma",
    "phi3": "phi3",
}
TORCHTUNE_MODULES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "output_proj": "o"}
TORCHTUNE_DTYPES = {"bf16": "bf16", "fp32": "fp32", "fp16": "fp16"}


# the keys _torchtune reads; read_framework_config lists every other one as ignored
TORCHTUNE_KEYS = frozenset(
    {
        "model",
        "dtype",
        "tokenizer",
        "batch_size",
        "gradient_accumulation_steps",
        "enable_activation_checkpointing",
        "enable_activation_offloading",
        "optimizer",
        "optimizer_in_bwd",
        "loss",
        "compile",
        "checkpointer",
        "packed",
        "fsdp_cpu_offload",
    }
)


def _torchtune(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
    s = cfg.settings
    _torchtune_model(k.section("model"), cfg)
    cfg.notes.append(
        "torchtune runs its own model code: estimated with the transformers layout of the "
        "same model, whose weights match; saved activations may differ a little."
    )
    # torchtune trains in the dtype it is given, adapters too; no autocast
    s["precision"] = TORCHTUNE_DTYPES[k.choice("dtype", TORCHTUNE_DTYPES) or "bf16"]
    if s.get("method") in ("lora", "dora") and s["precision"] != "fp32":
        s["adapter_dtype"] = s["precision"]
    if (seq := k.section("tokenizer").integer("max_seq_len")) is not None:
        s["seq_len"] = seq
    _settings_from(
        k, cfg, (("batch_size", "batch_size"), ("gradient_accumulation_steps", "grad_accum"))
    )
    if k.flag("enable_activation_checkpointing"):
        s["grad_ckpt"] = True
    _torchtune_optimizer(k.section("optimizer"), cfg)
    if "Chunked" in (k.section("loss").text("_component_") or ""):
        s["loss"] = "chunked"
    for key, setting in (
        ("enable_activation_offloading", "activation_offload"),
        ("optimizer_in_bwd", "optimizer_in_backward"),
    ):
        if k.flag(key):
            s[setting] = True
    if k.flag("compile"):
        s["compile"] = True
    return TORCHTUNE_KEYS


def _torchtune_model(model: Keys, cfg: FrameworkConfig) -> None:
    """The model builder's name (``lora_llama3_1_8b``) as a preset and a method, and its
    LoRA switches."""
    s = cfg.settings
    leaf = (model.text("_component_") or "").rsplit(".", 1)[-1]
    match = TORCHTUNE_MODEL.match(leaf)
    if match:
        family, size = match.groups()
        size = size.replace("_", ".")
        cfg.model = f"{TORCHTUNE_FAMILY[family]}-{size}"
        if size == "mini":
            cfg.model = "phi3-mini"
    if not leaf.startswith(("lora_", "qlora_")):
        return
    s["method"] = "qlora" if leaf.startswith("qlora_") else "lora"
    if model.flag("use_dora"):
        s["method"] = "dora"
    targets = [TORCHTUNE_MODULES.get(m, m) for m in model.names("lora_attn_modules") or []]
    if model.flag("apply_lora_to_mlp"):
        targets += ["gate", "up", "down"]
    if targets:
        s["lora_targets"] = ",".join(targets)
    if model.flag("apply_lora_to_output"):
        cfg.notes.append("apply_lora_to_output (LoRA on the LM head) is not modelled yet.")
    _lora_numbers(model, cfg, "lora_rank")
    if not s.get("lora_dropout"):
        s.pop("lora_dropout", None)  # torchtune's 0.0 is ftmem's default


def _torchtune_optimizer(optimizer: Keys, cfg: FrameworkConfig) -> None:
    s = cfg.settings
    opt = optimizer.text("_component_") or "torch.optim.AdamW"
    if opt.endswith("PagedAdamW8bit"):
        s["optimizer"] = "paged-adamw-8bit"
    elif opt.endswith(("AdamW8bit", "Adam8bit")):
        s["optimizer"] = "adamw-8bit"
    elif opt.endswith(("AdamW", "Adam")):
        s["optimizer"] = "adamw"
        if optimizer.flag("fused"):
            s["optimizer_impl"] = "fused"
    elif opt.endswith("SGD"):
        s["optimizer"] = "sgd-momentum" if optimizer.number("momentum") else "sgd"
    else:
        cfg.notes.append(f"optimizer {opt} is not modelled; the estimate assumes AdamW.")


def _hf_trainer_method(k: Keys, cfg: FrameworkConfig) -> None:
    """TRL's peft switches: LoRA, QLoRA (4- or 8-bit), DoRA."""
    s = cfg.settings
    if not (k.flag("use_peft") or k.raw("lora_r") is not None):
        return
    s["method"] = "qlora" if k.flag("load_in_4bit") else "lora"
    if k.flag("load_in_8bit"):
        s.update(method="qlora", quant="int8")
    if k.flag("use_dora"):
        s["method"] = "dora"
    _lora_numbers(k, cfg)
    if targets := _targets(k.names("lora_target_modules")):
        s["lora_targets"] = targets


# the sequence length's names across TRL's and transformers' scripts, the first one given wins
HF_SEQ_LEN_KEYS = ("max_seq_length", "max_length", "max_source_length")
# transformers' seq2seq example scripts (run_summarization, run_translation): the
# decoder's length; an encoder-decoder takes it as --target-len
HF_NUMBERS = (
    ("max_target_length", "target_len"),
    ("per_device_train_batch_size", "batch_size"),
    ("gradient_accumulation_steps", "grad_accum"),
)
# the keys _hf_trainer reads; read_framework_config lists every other one as ignored
HF_TRAINER_KEYS = frozenset(
    {
        "model_name_or_path",
        "model_name",
        "model_init_kwargs",
        "use_peft",
        "load_in_4bit",
        "load_in_8bit",
        "use_dora",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        *HF_SEQ_LEN_KEYS,
        "max_target_length",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "gradient_checkpointing",
        "optim",
        "bf16",
        "fp16",
        "torch_dtype",
        "attn_implementation",
        "packing",
        "padding_free",
        "group_by_length",
        "deepspeed",
        "fsdp",
        "fsdp_config",
        "gradient_checkpointing_kwargs",
        "dataset_text_field",
        "tf32",
        "use_liger_kernel",
        "optim_args",
        "optim_target_modules",
    }
)


def _hf_trainer(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
    """TRL SFTConfig / ScriptArguments / HF TrainingArguments (JSON or YAML)."""
    s = cfg.settings
    init = k.section("model_init_kwargs")
    cfg.model = k.text("model_name_or_path") or k.text("model_name")
    _hf_trainer_method(k, cfg)
    for key in HF_SEQ_LEN_KEYS:
        if (seq := k.integer(key)) is not None:
            s["seq_len"] = seq
            break
    _settings_from(k, cfg, HF_NUMBERS)
    if k.flag("gradient_checkpointing"):
        s["grad_ckpt"] = True
    if k.text("optim"):
        _hf_optimizer(k, "optim", cfg)
        _galore_args(k, cfg)
    if k.flag("use_liger_kernel"):
        s["loss"] = "fused"  # Liger's fused linear cross-entropy replaces the LM head + loss
    dtype = init.text("torch_dtype") or init.text("dtype") or k.text("torch_dtype")
    _hf_trainer_precision(k, cfg, dtype)
    for keys, key in ((init, "attn_implementation"), (k, "attn_implementation")):
        if (attn := _attention(keys, key, cfg)) is not None:
            s["attn"] = attn
            break
    if k.flag("packing"):
        cfg.notes.append(
            "packing: each micro-batch is packed to the sequence length, as estimated."
        )
    _hf_lengths(k, cfg)
    _distributed(k, base, cfg)
    return HF_TRAINER_KEYS


def _hf_lengths(k: Keys, cfg: FrameworkConfig) -> None:
    """Batches padded to their longest: group_by_length (LengthGroupedSampler, the
    longest batch first: transformers src/transformers/trainer_pt_utils.py
    @010a915ce62bd1a3adb61d0eab2f0acca436b1c0 get_length_grouped_indices), or TRL's
    packing: false without padding_free (DataCollatorForLanguageModeling: "Inputs are
    dynamically padded to the maximum length of a batch", huggingface/trl
    trl/trainer/sft_trainer.py @00313f21920d37c3876c4021b51430224c06c936)."""
    if k.flag("packing") or k.flag("padding_free"):
        return
    if k.flag("group_by_length"):
        cfg.settings["lengths"] = "grouped"
    elif k.raw("packing") is False:
        cfg.settings["lengths"] = "padded"
    else:
        return
    cfg.notes.append(
        f"lengths {cfg.settings['lengths']}: each batch is padded to its longest, up to the "
        "sequence length; the reserved peak keeps the cache of the other lengths "
        "(give --lengths padded:MIN when the shortest is known)."
    )


LITGPT_PRECISION = {
    "bf16-true": "bf16",
    "bf16-mixed": "bf16-mixed",
    "16-true": "fp16",
    "16-mixed": "fp16-mixed",
    "32-true": "fp32",
    "32": "fp32",
    "bf16": "bf16",
    "16": "fp16",
}
LITGPT_QUANT = {
    "bnb.nf4": "nf4",
    "bnb.nf4-dq": "nf4",
    "bnb.fp4": "fp4",
    "bnb.fp4-dq": "fp4",
    "bnb.int8": "int8",
    "bnb.int8-training": "int8",  # the spelling LitGPT's finetune scripts take
}


def _litgpt_precision(k: Keys) -> str:
    """LitGPT's (Lightning's) precision name; YAML reads ``precision: 32`` as a number."""
    value = k.raw("precision")
    if isinstance(value, int) and not isinstance(value, bool) and str(value) in LITGPT_PRECISION:
        return str(value)
    return k.choice("precision", LITGPT_PRECISION) or "bf16-true"


# the keys _litgpt reads; read_framework_config lists every other one as ignored
LITGPT_KEYS = frozenset(
    {
        "checkpoint_dir",
        "precision",
        "quantize",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_query",
        "lora_key",
        "lora_value",
        "lora_projection",
        "lora_mlp",
        "lora_head",
        "train",
        "optimizer",
        "devices",
        "num_nodes",
        "data",
        "eval",
        "out_dir",
        "logger_name",
    }
)


def _litgpt(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
    s = cfg.settings
    ckpt = k.text("checkpoint_dir") or ""
    local = base / ckpt if not Path(ckpt).is_absolute() else Path(ckpt)
    if ckpt and (local / "config.json").is_file():
        cfg.model = str(local)
    elif ckpt:
        cfg.model = ckpt.removeprefix("checkpoints/")
    cfg.notes.append(
        "LitGPT runs its own model code (fused q/k/v): estimated with the transformers layout "
        "of the same model, whose weights match; saved activations may differ a little."
    )
    s["precision"] = LITGPT_PRECISION[_litgpt_precision(k)]
    if (r := k.integer("lora_r")) is not None:
        s["method"] = "lora"
        _lora_numbers(k, cfg)
        s["lora_r"] = r
        targets = [
            role
            for key, role in (
                ("lora_query", "q"),
                ("lora_key", "k"),
                ("lora_value", "v"),
                ("lora_projection", "o"),
                ("lora_mlp", "gate,up,down"),
            )
            if k.flag(key)
        ]
        if targets:
            s["lora_targets"] = ",".join(targets)
        if k.flag("lora_head"):
            cfg.notes.append("lora_head (LoRA on the LM head) is not modelled yet.")
        if s["precision"] in ("bf16", "fp16"):
            s["adapter_dtype"] = s["precision"]  # LitGPT keeps adapters in the model dtype
    quant = k.choice("quantize", LITGPT_QUANT)
    if quant:
        s["method"] = "qlora"
        s["quant"] = LITGPT_QUANT[quant]
        if s["quant"] != "int8":  # double quantisation is bitsandbytes 4-bit's
            s["double_quant"] = quant.endswith("-dq")
    train = k.section("train")
    if (seq := train.integer("max_seq_length")) is not None:
        s["seq_len"] = seq
    micro = train.integer("micro_batch_size")
    if micro:
        s["batch_size"] = micro
        devices = k.raw("devices") if isinstance(k.raw("devices"), int) else 1
        if (total := train.integer("global_batch_size")) is not None:
            s["grad_accum"] = max(1, total // (micro * max(devices, 1)))
    optimizer = k.raw("optimizer")
    if isinstance(optimizer, dict):
        name = k.section("optimizer").text("class_path") or ""
    else:
        name = k.text("optimizer") or "AdamW"
    if not name.endswith(("AdamW", "Adam")):
        cfg.notes.append(f"optimizer {name} is not modelled; the estimate assumes AdamW.")
    return LITGPT_KEYS


def _llama_factory_lora(k: Keys, cfg: FrameworkConfig) -> None:
    """``finetuning_type: lora``: LoRA, DoRA, or QLoRA with bitsandbytes' 4 or 8 bits."""
    s = cfg.settings
    s["method"] = "lora"
    _lora_numbers(k, cfg, "lora_rank")
    if targets := _targets(k.names("lora_target")):
        s["lora_targets"] = targets
    if k.flag("use_dora"):
        s["method"] = "dora"
    bits = k.integer("quantization_bit")
    if bits in (4, 8):
        s["method"] = "qlora"
        if bits == 8:
            s["quant"] = "int8"
    elif bits is not None:
        cfg.notes.append(
            f"quantization_bit {bits} is not modelled (bitsandbytes' 4 and 8 are); "
            "estimated without quantisation."
        )


def _llama_factory_freeze(k: Keys, cfg: FrameworkConfig) -> None:
    """``finetuning_type: freeze``: the last ``freeze_trainable_layers`` blocks train."""
    cfg.settings["method"] = "freeze"
    layers = k.raw("freeze_trainable_layers")
    if isinstance(layers, int) and not isinstance(layers, bool) and layers < 0:
        raise ConfigError(
            f"{k.file}: freeze_trainable_layers {layers} trains the first blocks, which "
            "ftmem does not model (it trains the last N); give a positive number."
        )
    if (n := k.integer("freeze_trainable_layers")) is not None:
        cfg.settings["trainable_layers"] = n


def _llama_factory_method(k: Keys, cfg: FrameworkConfig) -> None:
    """``finetuning_type``: LoRA (the default), freeze or full."""
    kind = (k.text("finetuning_type") or "lora").lower()
    if kind == "lora":
        _llama_factory_lora(k, cfg)
    elif kind == "freeze":
        _llama_factory_freeze(k, cfg)
    elif kind == "full":
        cfg.settings["method"] = "full"
    else:
        cfg.notes.append(f"finetuning_type: {kind} is not modelled; estimated as full finetuning.")


def _llama_factory_variants(k: Keys, cfg: FrameworkConfig) -> None:
    """rsLoRA over LoRA and GaLore over full finetuning."""
    s = cfg.settings
    if k.flag("use_rslora") and s.get("method") == "lora":
        s["method"] = "rslora"
    if k.flag("use_galore") and s.get("method") == "full":
        s["method"] = "galore"
        if (rank := k.integer("galore_rank")) is not None:
            s["galore_rank"] = rank
        target = _targets(k.names("galore_target")) or "all-linear"
        s["galore_targets"] = target
        if k.flag("galore_layerwise"):
            s["optimizer_in_backward"] = True


LLAMA_FACTORY_NUMBERS = (
    ("cutoff_len", "seq_len"),
    ("per_device_train_batch_size", "batch_size"),
    ("gradient_accumulation_steps", "grad_accum"),
)
# the keys _llama_factory reads; read_framework_config lists every other one as ignored
LLAMA_FACTORY_KEYS = frozenset(
    {
        "model_name_or_path",
        "finetuning_type",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_target",
        "use_dora",
        "quantization_bit",
        "quantization_method",
        "freeze_trainable_layers",
        "cutoff_len",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "disable_gradient_checkpointing",
        "optim",
        "bf16",
        "fp16",
        "flash_attn",
        "deepspeed",
        "stage",
        "use_unsloth",
        "enable_liger_kernel",
        "use_rslora",
        "use_galore",
        "galore_rank",
        "galore_target",
        "galore_layerwise",
        "packing",
    }
)


def _llama_factory(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
    s = cfg.settings
    cfg.model = k.text("model_name_or_path")
    _llama_factory_method(k, cfg)
    _settings_from(k, cfg, LLAMA_FACTORY_NUMBERS)
    # LLaMA-Factory checkpoints by default unless disable_gradient_checkpointing is set
    s["grad_ckpt"] = not k.flag("disable_gradient_checkpointing")
    _hf_optimizer(k, "optim", cfg)
    _hf_trainer_precision(k, cfg)
    flash = k.raw("flash_attn")
    if isinstance(flash, bool):  # older LLaMA-Factory: a switch for FlashAttention-2
        if flash:
            s["attn"] = "flash"
    elif (attn := _attention(k, "flash_attn", cfg)) is not None:
        s["attn"] = attn
    if k.raw("deepspeed"):
        _strategy_from_deepspeed(k, "deepspeed", base, cfg)
    if k.flag("enable_liger_kernel"):
        s["loss"] = "fused"  # Liger's fused linear cross-entropy (its other kernels aside)
    _llama_factory_variants(k, cfg)
    if k.flag("use_unsloth"):
        cfg.notes.append(
            "use_unsloth: Unsloth's kernels are not modelled; the estimate is without them."
        )
    stage = k.text("stage")
    if stage and stage.lower() in ("rm", "ppo", "dpo", "kto"):
        cfg.notes.append(
            f"stage {stage}: estimated as supervised finetuning of one model; a reference or "
            "reward model and pairwise batches are not counted."
        )
    return LLAMA_FACTORY_KEYS


# the code path (RunConfig.framework, ftmem.profiles) each reader's runs follow: TRL's
# and TrainingArguments' are HF Trainer's
PROFILE_OF_READER = {
    "axolotl": "axolotl",
    "torchtune": "torchtune",
    "trl": "hf",
    "litgpt": "litgpt",
    "llama-factory": "llama-factory",
}

READERS = {
    "axolotl": _axolotl,
    "torchtune": _torchtune,
    "trl": _hf_trainer,
    "litgpt": _litgpt,
    "llama-factory": _llama_factory,
}


def _read(path: Path) -> dict[str, Any]:
    text = read_text(path, "training config", MAX_CONFIG_BYTES)
    data = parse_json(text, str(path)) if path.suffix == ".json" else parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top.")
    return data


def detect(data: dict[str, Any]) -> str | None:
    model = data.get("model")
    if isinstance(model, dict) and "_component_" in model:
        return "torchtune"
    if "base_model" in data:
        return "axolotl"
    if "finetuning_type" in data or ("stage" in data and "model_name_or_path" in data):
        return "llama-factory"
    if "checkpoint_dir" in data or isinstance(data.get("train"), dict):
        return "litgpt"
    if any(
        k in data
        for k in ("per_device_train_batch_size", "model_name_or_path", "output_dir", "optim")
    ):
        return "trl"
    return None


def read_framework_config(path: str, framework: str | None = None) -> FrameworkConfig:
    """The ftmem settings of a training-framework config file."""
    p = Path(path)
    data = _read(p)
    name = framework or detect(data)
    if name is None:
        raise ConfigError(
            f"{path}: cannot tell which framework it is for; expected axolotl (base_model), "
            "torchtune (model._component_), TRL/TrainingArguments (per_device_train_batch_size), "
            "LitGPT (checkpoint_dir) or LLaMA-Factory (finetuning_type)."
        )
    if name not in READERS:
        raise ConfigError(f"Unknown framework '{name}'; one of {', '.join(READERS)}.")
    cfg = FrameworkConfig(name, str(p), None)
    known = READERS[name](Keys(data, str(p)), cfg, p.parent)
    cfg.settings = {k: v for k, v in cfg.settings.items() if v is not None}
    cfg.settings.setdefault("framework", PROFILE_OF_READER[name])
    cfg.ignored = sorted(str(k) for k in data if k not in known)
    if cfg.ignored:
        unknown = [k for k in cfg.ignored if k not in NO_MEMORY_EFFECT]
        quiet = [k for k in cfg.ignored if k in NO_MEMORY_EFFECT]
        parts = []
        if quiet:
            parts.append(f"no effect on memory: {', '.join(quiet)}")
        if unknown:
            parts.append(f"not read by ftmem: {', '.join(unknown)}")
        cfg.notes.append(f"{name} keys ignored ({'; '.join(parts)}).")
    return cfg
