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
    "group_by_length",
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


def _targets(modules: Any) -> str | None:
    """peft target_modules (list or string) as ftmem --lora-targets."""
    if modules is None:
        return None
    if isinstance(modules, str):
        if modules in ("all", "all-linear", "all_linear"):
            return "all-linear"
        modules = [m.strip() for m in modules.split(",")]
    names = [str(m) for m in modules if str(m).strip()]
    return ",".join(names) if names else None


def _hf_optimizer(name: str, cfg: FrameworkConfig, key: str) -> None:
    lowered = str(name).lower()
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


def _galore_args(data: dict[str, Any], cfg: FrameworkConfig) -> None:
    """transformers' GaLore settings: ``optim_args`` ("rank=64, ...") and
    ``optim_target_modules`` (names or regular expressions of the projected linears)."""
    if cfg.settings.get("method") != "galore":
        return
    args = dict(
        item.split("=", 1)
        for item in str(data.get("optim_args") or "").replace(" ", "").split(",")
        if "=" in item
    )
    if "rank" in args:
        cfg.settings["galore_rank"] = int(args["rank"])
    targets = data.get("optim_target_modules")
    if targets:
        names = [targets] if isinstance(targets, str) else list(targets)
        words = {str(n).strip(".*").lower() for n in names}
        if {"attn", "mlp"} <= words or {"self_attn", "mlp"} <= words:
            cfg.settings["galore_targets"] = "all-linear"
        elif words <= {"attn", "self_attn", "attention"}:
            cfg.settings["galore_targets"] = "attention"
        else:
            cfg.notes.append(f"optim_target_modules {names}: read as every linear of the blocks.")


def _strategy_from_deepspeed(value: Any, base: Path, cfg: FrameworkConfig) -> None:
    """A DeepSpeed config (dict, or a path relative to the framework config)."""
    data: dict[str, Any] | None = None
    if isinstance(value, dict):
        data = value
    elif isinstance(value, str):
        path = (base / value) if not Path(value).is_absolute() else Path(value)
        if path.is_file():
            data = _read(path)
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
    if data is not None:
        zero = data.get("zero_optimization") or {}
        stage = int(zero.get("stage", 0))
        if stage:
            cfg.settings["strategy"] = f"zero{stage}"
        for key, setting in (
            ("offload_optimizer", "offload_optimizer"),
            ("offload_param", "offload_params"),
        ):
            device = (zero.get(key) or {}).get("device")
            if device in ("cpu", "nvme"):
                cfg.settings[setting] = device
    if "strategy" in cfg.settings:
        cfg.notes.append(
            "The GPU count comes from the launcher, not the config: give --gpus (per node) "
            "and --nodes for per-GPU memory."
        )


FSDP_NAMES = {
    "full_shard": "fsdp",
    "shard_grad_op": "fsdp-grad-op",
    "hybrid_shard": "fsdp-hybrid",
    "no_shard": "fsdp-no-shard",
}


def _strategy_from_fsdp(value: Any, fsdp_config: Any, cfg: FrameworkConfig) -> None:
    words = value.split() if isinstance(value, str) else [str(v) for v in value or []]
    words = [w.lower() for w in words]
    for w in words:
        if w in FSDP_NAMES:
            cfg.settings["strategy"] = FSDP_NAMES[w]
    if "offload" in words or (
        isinstance(fsdp_config, dict) and fsdp_config.get("fsdp_offload_params")
    ):
        cfg.settings.update(offload_params="cpu", offload_optimizer="cpu")
    if isinstance(fsdp_config, dict):
        strategy = str(fsdp_config.get("fsdp_sharding_strategy", "")).lower()
        if strategy in FSDP_NAMES:
            cfg.settings["strategy"] = FSDP_NAMES[strategy]
        if fsdp_config.get("fsdp_activation_checkpointing"):
            cfg.settings["grad_ckpt"] = True
    if "strategy" in cfg.settings or words:
        cfg.settings.setdefault("strategy", "fsdp")
        cfg.notes.append(
            "The GPU count comes from the launcher, not the config: give --gpus (per node) "
            "and --nodes for per-GPU memory."
        )


def _distributed(data: dict[str, Any], base: Path, cfg: FrameworkConfig) -> None:
    """The DeepSpeed / FSDP keys HF-Trainer-based frameworks share."""
    if data.get("deepspeed"):
        _strategy_from_deepspeed(data["deepspeed"], base, cfg)
    if data.get("fsdp"):
        _strategy_from_fsdp(data["fsdp"], data.get("fsdp_config"), cfg)


def _hf_trainer_precision(data: dict[str, Any], cfg: FrameworkConfig, dtype: Any = None) -> None:
    """HF Trainer: bf16/fp16 turn on autocast; the weights keep the dtype they were
    loaded in (transformers 5 loads a checkpoint's own dtype by default, 16-bit here)."""
    dtype = str(dtype or "auto").lower().removeprefix("torch.")
    fp32_weights = dtype in ("float32", "fp32")
    if data.get("bf16") in (True, "auto", "true"):
        cfg.settings.update(precision="bf16-mixed" if fp32_weights else "bf16")
        if not fp32_weights:
            cfg.settings["autocast"] = True
    elif data.get("fp16") in (True, "true"):
        cfg.settings.update(precision="fp16-mixed")
    else:
        # no mixed precision: the step runs in the dtype the weights were loaded in
        cfg.settings["precision"] = "fp32" if fp32_weights else "bf16"


# -- readers --------------------------------------------------------------------------------


def _axolotl(data: dict[str, Any], cfg: FrameworkConfig, base: Path) -> set[str]:
    s = cfg.settings
    cfg.model = data.get("base_model")
    adapter = str(data.get("adapter") or "").lower()
    if adapter in ("lora", "qlora"):
        s["method"] = "qlora" if adapter == "qlora" or data.get("load_in_4bit") else "lora"
        if data.get("load_in_8bit") and adapter == "lora":
            s.update(method="qlora", quant="int8")
        if data.get("peft_use_dora"):
            s["method"] = "dora"
    elif adapter:
        cfg.notes.append(f"adapter: {adapter} is not modelled yet; estimated as full finetuning.")
    elif data.get("unfrozen_parameters"):
        # full finetuning restricted to the parameters matching these regular expressions
        patterns = ",".join(str(x) for x in data["unfrozen_parameters"])
        s.update(method="partial", trainable_modules=patterns)
    for src, dst in (
        ("lora_r", "lora_r"),
        ("lora_alpha", "lora_alpha"),
        ("lora_dropout", "lora_dropout"),
    ):
        if data.get(src) is not None and "method" in s:
            s[dst] = data[src]
    if "method" in s:
        if data.get("lora_target_linear"):
            s["lora_targets"] = "all-linear"
        elif data.get("lora_target_modules"):
            s["lora_targets"] = _targets(data["lora_target_modules"])
    if data.get("peft_use_rslora") and s.get("method") == "lora":
        s["method"] = "rslora"
    if data.get("relora_steps") and s.get("method") == "lora":
        s["method"] = "relora"
    if data.get("liger_fused_linear_cross_entropy"):
        s["loss"] = "fused"
    if data.get("activation_offloading"):
        s["activation_offload"] = True
    if data.get("lora_modules_to_save") and "method" in s:
        names = [str(n) for n in data["lora_modules_to_save"]]
        kinds = {
            "embed" if "embed" in n or n == "wte" else "head" if n == "lm_head" else ""
            for n in names
        }
        if "" in kinds:
            cfg.notes.append(
                f"lora_modules_to_save: only the token embedding and the LM head are modelled "
                f"(given {', '.join(names)})."
            )
        if kinds - {""}:
            s["lora_modules_to_save"] = ",".join(sorted(kinds - {""}))
    if data.get("sequence_len"):
        s["seq_len"] = data["sequence_len"]
    if data.get("micro_batch_size"):
        s["batch_size"] = data["micro_batch_size"]
    if data.get("gradient_accumulation_steps"):
        s["grad_accum"] = data["gradient_accumulation_steps"]
    if data.get("gradient_checkpointing"):
        s["grad_ckpt"] = True
    if data.get("optimizer"):
        _hf_optimizer(data["optimizer"], cfg, "optimizer")
    _hf_trainer_precision(data, cfg, "bfloat16" if data.get("bf16") else None)
    if data.get("flash_attention"):
        s["attn"] = "flash"
    elif data.get("sdp_attention"):
        s["attn"] = "sdpa"
    elif data.get("eager_attention"):
        s["attn"] = "eager"
    if data.get("sample_packing"):
        cfg.notes.append(
            "sample_packing: each micro-batch is packed to sequence_len tokens, as estimated."
        )
    _distributed(data, base, cfg)
    return {
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
        "base_model_config",
    }


TORCHTUNE_MODEL = re.compile(
    r"(?:q?lora_)?(llama3_[123]|llama3|llama2|mistral|qwen2_5|qwen2|gemma2|gemma|phi3)_(\w+)$"
)
TORCHTUNE_FAMILY = {
    "llama3_1": "llama3.1",
    "llama3_2": "llama3.2",
    "llama3_3": "llama3.3",
    "llama3": "llama3",
    "llama2": "llama2",
    "mistral": "mistral",
    "qwen2_5": "qwen2.5",
    "qwen2": "qwen2",
    "gemma2": "gemma2",
    "gemma": "gemma",
    "phi3": "phi3",
}
TORCHTUNE_MODULES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "output_proj": "o"}


def _torchtune(data: dict[str, Any], cfg: FrameworkConfig, base: Path) -> set[str]:
    s = cfg.settings
    model = data.get("model") or {}
    component = str(model.get("_component_", ""))
    leaf = component.rsplit(".", 1)[-1]
    match = TORCHTUNE_MODEL.match(leaf)
    if match:
        family, size = match.groups()
        size = size.replace("_", ".")
        cfg.model = f"{TORCHTUNE_FAMILY[family]}-{size}"
        if size == "mini":
            cfg.model = "phi3-mini"
    if leaf.startswith(("lora_", "qlora_")):
        s["method"] = "qlora" if leaf.startswith("qlora_") else "lora"
        if model.get("use_dora"):
            s["method"] = "dora"
        targets = [TORCHTUNE_MODULES.get(m, m) for m in model.get("lora_attn_modules") or []]
        if model.get("apply_lora_to_mlp"):
            targets += ["gate", "up", "down"]
        if targets:
            s["lora_targets"] = ",".join(targets)
        if model.get("apply_lora_to_output"):
            cfg.notes.append("apply_lora_to_output (LoRA on the LM head) is not modelled yet.")
        if model.get("lora_rank"):
            s["lora_r"] = model["lora_rank"]
        if model.get("lora_alpha"):
            s["lora_alpha"] = model["lora_alpha"]
        if model.get("lora_dropout"):
            s["lora_dropout"] = model["lora_dropout"]
    cfg.notes.append(
        "torchtune runs its own model code: estimated with the transformers layout of the "
        "same model, whose weights match; saved activations may differ a little."
    )
    dtype = str(data.get("dtype", "bf16")).lower()
    # torchtune trains in the dtype it is given, adapters too; no autocast
    s["precision"] = {"bf16": "bf16", "fp32": "fp32", "fp16": "fp16"}.get(dtype, "bf16")
    if s.get("method") in ("lora", "dora") and s["precision"] != "fp32":
        s["adapter_dtype"] = s["precision"]
    tokenizer = data.get("tokenizer") or {}
    if tokenizer.get("max_seq_len"):
        s["seq_len"] = tokenizer["max_seq_len"]
    if data.get("batch_size"):
        s["batch_size"] = data["batch_size"]
    if data.get("gradient_accumulation_steps"):
        s["grad_accum"] = data["gradient_accumulation_steps"]
    if data.get("enable_activation_checkpointing"):
        s["grad_ckpt"] = True
    optimizer = data.get("optimizer") or {}
    opt = str(optimizer.get("_component_", "torch.optim.AdamW"))
    if opt.endswith("PagedAdamW8bit"):
        s["optimizer"] = "paged-adamw-8bit"
    elif opt.endswith(("AdamW8bit", "Adam8bit")):
        s["optimizer"] = "adamw-8bit"
    elif opt.endswith(("AdamW", "Adam")):
        s["optimizer"] = "adamw"
        if optimizer.get("fused"):
            s["optimizer_impl"] = "fused"
    elif opt.endswith("SGD"):
        s["optimizer"] = "sgd-momentum" if optimizer.get("momentum") else "sgd"
    else:
        cfg.notes.append(f"optimizer {opt} is not modelled; the estimate assumes AdamW.")
    loss = str((data.get("loss") or {}).get("_component_", ""))
    if "Chunked" in loss:
        s["loss"] = "chunked"
    if data.get("enable_activation_offloading"):
        s["activation_offload"] = True
    if data.get("optimizer_in_bwd"):
        s["optimizer_in_backward"] = True
    if data.get("compile"):
        cfg.notes.append("compile: torch.compile is not modelled; the estimate is without it.")
    return {
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


def _hf_trainer(data: dict[str, Any], cfg: FrameworkConfig, base: Path) -> set[str]:
    """TRL SFTConfig / ScriptArguments / HF TrainingArguments (JSON or YAML)."""
    s = cfg.settings
    init = data.get("model_init_kwargs") or {}
    cfg.model = data.get("model_name_or_path") or data.get("model_name")
    if data.get("use_peft") or data.get("lora_r"):
        s["method"] = "qlora" if data.get("load_in_4bit") else "lora"
        if data.get("load_in_8bit"):
            s.update(method="qlora", quant="int8")
        if data.get("use_dora"):
            s["method"] = "dora"
        for key in ("lora_r", "lora_alpha", "lora_dropout"):
            if data.get(key) is not None:
                s[key] = data[key]
        if data.get("lora_target_modules"):
            s["lora_targets"] = _targets(data["lora_target_modules"])
    seq = data.get("max_seq_length") or data.get("max_length") or data.get("max_source_length")
    if seq:
        s["seq_len"] = seq
    # transformers' seq2seq example scripts (run_summarization, run_translation): the
    # decoder's length; an encoder-decoder takes it as --target-len
    if data.get("max_target_length"):
        s["target_len"] = data["max_target_length"]
    if data.get("per_device_train_batch_size"):
        s["batch_size"] = data["per_device_train_batch_size"]
    if data.get("gradient_accumulation_steps"):
        s["grad_accum"] = data["gradient_accumulation_steps"]
    if data.get("gradient_checkpointing"):
        s["grad_ckpt"] = True
    if data.get("optim"):
        _hf_optimizer(data["optim"], cfg, "optim")
        _galore_args(data, cfg)
    if data.get("use_liger_kernel"):
        s["loss"] = "fused"  # Liger's fused linear cross-entropy replaces the LM head + loss
    _hf_trainer_precision(
        data, cfg, init.get("torch_dtype") or init.get("dtype") or data.get("torch_dtype")
    )
    attn = init.get("attn_implementation") or data.get("attn_implementation")
    if attn:
        s["attn"] = ATTENTION.get(str(attn), "sdpa")
    if data.get("packing"):
        cfg.notes.append(
            "packing: each micro-batch is packed to the sequence length, as estimated."
        )
    _distributed(data, base, cfg)
    return {
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
        "max_seq_length",
        "max_length",
        "max_source_length",
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


def _litgpt(data: dict[str, Any], cfg: FrameworkConfig, base: Path) -> set[str]:
    s = cfg.settings
    ckpt = str(data.get("checkpoint_dir", ""))
    local = base / ckpt if not Path(ckpt).is_absolute() else Path(ckpt)
    if ckpt and (local / "config.json").is_file():
        cfg.model = str(local)
    elif ckpt:
        cfg.model = ckpt.removeprefix("checkpoints/")
    cfg.notes.append(
        "LitGPT runs its own model code (fused q/k/v): estimated with the transformers layout "
        "of the same model, whose weights match; saved activations may differ a little."
    )
    precision = str(data.get("precision") or "bf16-true").lower()
    s["precision"] = LITGPT_PRECISION.get(precision, "bf16")
    if data.get("lora_r") is not None:
        s["method"] = "lora"
        s["lora_r"] = data["lora_r"]
        for key in ("lora_alpha", "lora_dropout"):
            if data.get(key) is not None:
                s[key] = data[key]
        targets = [
            role
            for key, role in (
                ("lora_query", "q"),
                ("lora_key", "k"),
                ("lora_value", "v"),
                ("lora_projection", "o"),
                ("lora_mlp", "gate,up,down"),
            )
            if data.get(key)
        ]
        if targets:
            s["lora_targets"] = ",".join(targets)
        if data.get("lora_head"):
            cfg.notes.append("lora_head (LoRA on the LM head) is not modelled yet.")
        if s["precision"] in ("bf16", "fp16"):
            s["adapter_dtype"] = s["precision"]  # LitGPT keeps adapters in the model dtype
    quant = str(data.get("quantize") or "")
    if quant.startswith("bnb."):
        kind = quant.removeprefix("bnb.")
        s["method"] = "qlora"
        s["quant"] = {
            "nf4": "nf4",
            "nf4-dq": "nf4",
            "fp4": "fp4",
            "fp4-dq": "fp4",
            "int8": "int8",
        }.get(kind, "nf4")
        s["double_quant"] = kind.endswith("-dq")
    train = data.get("train") or {}
    if train.get("max_seq_length"):
        s["seq_len"] = train["max_seq_length"]
    micro = train.get("micro_batch_size")
    if micro:
        s["batch_size"] = micro
        devices = d if isinstance(d := data.get("devices"), int) else 1
        if train.get("global_batch_size"):
            s["grad_accum"] = max(1, train["global_batch_size"] // (micro * max(devices, 1)))
    optimizer = data.get("optimizer")
    name = (
        optimizer.get("class_path", "")
        if isinstance(optimizer, dict)
        else str(optimizer or "AdamW")
    )
    if not name.endswith(("AdamW", "Adam")):
        cfg.notes.append(f"optimizer {name} is not modelled; the estimate assumes AdamW.")
    return {
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


def _llama_factory(data: dict[str, Any], cfg: FrameworkConfig, base: Path) -> set[str]:
    s = cfg.settings
    cfg.model = data.get("model_name_or_path")
    kind = str(data.get("finetuning_type", "lora")).lower()
    if kind == "lora":
        s["method"] = "lora"
        if data.get("lora_rank"):
            s["lora_r"] = data["lora_rank"]
        for key in ("lora_alpha", "lora_dropout"):
            if data.get(key) is not None:
                s[key] = data[key]
        if data.get("lora_target"):
            s["lora_targets"] = _targets(data["lora_target"])
        if data.get("use_dora"):
            s["method"] = "dora"
        if data.get("quantization_bit") in (4, 8):
            s["method"] = "qlora"
            if data["quantization_bit"] == 8:
                s["quant"] = "int8"
    elif kind == "freeze":
        s["method"] = "freeze"
        if data.get("freeze_trainable_layers"):
            s["trainable_layers"] = data["freeze_trainable_layers"]
    elif kind == "full":
        s["method"] = "full"
    if data.get("cutoff_len"):
        s["seq_len"] = data["cutoff_len"]
    if data.get("per_device_train_batch_size"):
        s["batch_size"] = data["per_device_train_batch_size"]
    if data.get("gradient_accumulation_steps"):
        s["grad_accum"] = data["gradient_accumulation_steps"]
    # LLaMA-Factory checkpoints by default unless disable_gradient_checkpointing is set
    s["grad_ckpt"] = not data.get("disable_gradient_checkpointing", False)
    if data.get("optim"):
        _hf_optimizer(data["optim"], cfg, "optim")
    _hf_trainer_precision(data, cfg)
    if data.get("flash_attn"):
        s["attn"] = ATTENTION.get(str(data["flash_attn"]), "sdpa")
    if data.get("deepspeed"):
        _strategy_from_deepspeed(data["deepspeed"], base, cfg)
    if data.get("enable_liger_kernel"):
        s["loss"] = "fused"  # Liger's fused linear cross-entropy (its other kernels aside)
    if data.get("use_rslora") and s.get("method") == "lora":
        s["method"] = "rslora"
    if data.get("use_galore") and s.get("method") == "full":
        s["method"] = "galore"
        if data.get("galore_rank"):
            s["galore_rank"] = data["galore_rank"]
        target = str(data.get("galore_target") or "all")
        s["galore_targets"] = "all-linear" if target == "all" else _targets(target)
        if data.get("galore_layerwise"):
            s["optimizer_in_backward"] = True
    for key, what in (("use_unsloth", "Unsloth's kernels"),):
        if data.get(key):
            cfg.notes.append(f"{key}: {what} are not modelled; the estimate is without them.")
    return {
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
    known = READERS[name](data, cfg, p.parent)
    cfg.settings = {k: v for k, v in cfg.settings.items() if v is not None}
    cfg.ignored = sorted(k for k in data if k not in known)
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
