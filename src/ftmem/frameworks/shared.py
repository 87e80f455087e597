"""What every framework reader shares: the result (:class:`FrameworkConfig`), the file
read, the keys with no effect on memory, and the mappings of HF Trainer's names
(optimizers, attention, precision, LoRA numbers) several frameworks take over."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftmem.errors import ConfigError
from ftmem.filekeys import Keys
from ftmem.optim import BNB_OPTIMIZERS
from ftmem.textfiles import parse_json, parse_yaml, read_text
from ftmem.torchao_optim import FORMATS

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
    # the framework's own defaults applied where the file is silent, each with its source
    assumed: list[str] = field(default_factory=list)
    # of the ignored keys, those that may change memory (named "not read by ftmem")
    not_read: list[str] = field(default_factory=list)
    # the values of a nested DeepSpeed config / fsdp_config that no reader looked at, by
    # dotted path from the training config's key (deepspeed.zero_optimization.
    # sub_group_size): those with no effect on a step's GPU memory, and the others
    nested_no_effect: list[str] = field(default_factory=list)
    nested_not_read: list[str] = field(default_factory=list)


def assume(cfg: FrameworkConfig, setting: str, value: Any, said: str) -> None:
    """The framework's default for ``setting`` where the file gave none: applied, and
    listed with ``said`` (what the default is and where the framework sets it)."""
    if setting in cfg.settings:
        return
    cfg.settings[setting] = value
    cfg.assumed.append(f"{setting} {value} ({said})")


HF_OPTIMIZERS = {
    "adamw_torch": ("adamw", None),
    "adamw_hf": ("adamw", None),
    "adamw_torch_fused": ("adamw", "fused"),
    "adamw_apex_fused": ("adamw", "fused"),
    "adamw_bnb_8bit": ("adamw-8bit", None),
    "adamw_8bit": ("adamw-8bit", None),
    "paged_adamw_8bit": ("paged-adamw-8bit", None),
    "paged_adamw_32bit": ("paged-adamw", None),
    "adafactor": ("adafactor", None),
    "sgd": ("sgd", None),
    # bitsandbytes' Lion with optim_bits 32 or 8 and is_paged (transformers
    # trainer_optimizer.py _get_bitsandbytes_optimizer, 5.25: "8bit" in the name ->
    # optim_bits 8, "paged" -> is_paged)
    "lion_32bit": ("lion-32bit", None),
    "lion_8bit": ("lion-8bit", None),
    "paged_lion_32bit": ("paged-lion", None),
    "paged_lion_8bit": ("paged-lion-8bit", None),
    # torchao's AdamW4bit / AdamW8bit (transformers trainer_optimizer.py
    # _get_torchao_optimizer, 5.24)
    "adamw_torch_4bit": ("ao-adamw-4bit", None),
    "adamw_torch_8bit": ("ao-adamw-8bit", None),
}
# transformers passes block_size=optim_args' or 256 to both torchao classes
# (trainer_optimizer.py:471, 5.24); AdamW4bit's own default is 128
HF_TORCHAO_BLOCK = 256

ATTENTION = {
    "flash_attention_2": "flash",
    "flash_attention_3": "flash",
    "fa2": "flash",
    "fa3": "flash",  # LLaMA-Factory AttentionFunction.FA3 (extras/constants.py)
    "sdpa": "sdpa",
    "auto": "sdpa",
    "eager": "eager",
    "disabled": "eager",
}


def peft_targets(names: list[str] | None) -> str | None:
    """peft target_modules (given as names or one comma-separated string) as ftmem
    --lora-targets."""
    if not names:
        return None
    if len(names) == 1 and names[0].lower() in ("all", "all-linear", "all_linear"):
        return "all-linear"
    return ",".join(names)


# transformers 5's routed expert parameters (Mixtral, Qwen3-MoE, DeepSeek, gpt-oss)
EXPERT_PARAMETERS = ("gate_up_proj", "down_proj")


def with_target_parameters(
    k: Keys, key: str, cfg: FrameworkConfig, default_targets: str | None = None
) -> None:
    """peft ``target_parameters`` (``key``) joined to --lora-targets: the routed experts'
    3-D parameters, named as peft matches them (gate_up_proj, experts.down_proj,
    7.mlp.experts.gate_up_proj), become the same items; any other parameter is noted as
    not modelled. ``default_targets``: the framework's target_modules when it gives none."""
    names = k.names(key)
    if not names:
        return
    experts = [
        n for n in names
        if n.rsplit(".", 1)[-1] in EXPERT_PARAMETERS and (n.count(".") == 0 or ".experts." in f".{n}")
    ]  # fmt: skip
    if others := [n for n in names if n not in experts]:
        cfg.notes.append(
            f"{key} ({', '.join(others[:4])}): LoRA on parameters other than the routed "
            "experts' is not modelled; not counted."
        )
    if experts:
        targets = cfg.settings.get("lora_targets") or default_targets
        cfg.settings["lora_targets"] = ",".join([*([targets] if targets else []), *experts])


def attention(k: Keys, key: str, cfg: FrameworkConfig) -> str | None:
    """An attention implementation name as ftmem --attn (unknown ones: sdpa, noted)."""
    name = k.text(key)
    if not name:
        return None
    if name not in ATTENTION:
        cfg.notes.append(f"{key}: {name} is not modelled; estimated with sdpa's memory.")
    return ATTENTION.get(name, "sdpa")


def hf_optimizer(k: Keys, key: str, cfg: FrameworkConfig) -> None:
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
    if opt[0].startswith("ao-"):
        block = optim_args(k).get("block_size", str(HF_TORCHAO_BLOCK))
        if not (block.isascii() and block.isdigit() and 0 < len(block) < 10 and int(block)):
            raise ConfigError(
                f"{k.file}: optim_args' block_size must be a positive whole number, "
                f"not {block[:40]!r}."
            )
        if int(block) != FORMATS[opt[0]].default_block:  # said where it differs only
            cfg.settings["optimizer_block_size"] = int(block)


# torchao's low-bit Adam classes by name (torchao/optim/__init__.py, 0.18.0; before 0.11
# torchao.prototype.low_bit_optim): Adam and AdamW keep the same states
TORCHAO_CLASSES = {
    "AdamW8bit": "ao-adamw-8bit", "Adam8bit": "ao-adamw-8bit",
    "AdamW4bit": "ao-adamw-4bit", "Adam4bit": "ao-adamw-4bit",
    "AdamWFp8": "ao-adamw-fp8", "AdamFp8": "ao-adamw-fp8",
}  # fmt: skip


# bitsandbytes.optim's classes by name as (states, optim_bits, is_paged), None where the
# class passes its own optim_bits / is_paged argument on (defaults 32 and False); Adam and
# AdamW keep the same states (bitsandbytes@95f9af30 optim/adamw.py: AdamW l.9 passes both
# l.55-58, AdamW8bit l.62 fixes 8 l.119 and refuses another optim_bits l.110, AdamW32bit
# l.126 fixes 32 l.172, the Paged ones l.179-336 fix is_paged=True; adam.py and lion.py
# alike, Lion8bit taking any optim_bits)
BNB_CLASSES: dict[str, tuple[int, int | None, bool | None]] = {
    "AdamW": (2, None, None), "Adam": (2, None, None),
    "AdamW8bit": (2, 8, None), "Adam8bit": (2, 8, None),
    "AdamW32bit": (2, 32, None), "Adam32bit": (2, 32, None),
    "PagedAdamW": (2, None, True), "PagedAdam": (2, None, True),
    "PagedAdamW8bit": (2, 8, True), "PagedAdam8bit": (2, 8, True),
    "PagedAdamW32bit": (2, 32, True), "PagedAdam32bit": (2, 32, True),
    "Lion": (1, None, None), "Lion8bit": (1, 8, None), "Lion32bit": (1, 32, None),
    "PagedLion": (1, None, True), "PagedLion8bit": (1, 8, True),
    "PagedLion32bit": (1, 32, True),
}  # fmt: skip
# names that torch.optim and lion-pytorch use too: bitsandbytes' only under its module
BNB_SHARED_NAMES = frozenset({"AdamW", "Adam", "Lion"})


def bnb_class(path: str, init: Keys) -> str | None:
    """A class path naming one of bitsandbytes' optimizers, read with its ``optim_bits``
    and ``is_paged`` arguments from ``init``, as ftmem's --optimizer; None for any other."""
    leaf = path.rsplit(".", 1)[-1]
    if leaf not in BNB_CLASSES or (
        leaf in BNB_SHARED_NAMES and not path.startswith("bitsandbytes.")
    ):
        return None
    states, bits, paged = BNB_CLASSES[leaf]
    given = init.integer("optim_bits")
    if bits == 8 and states == 2 and given not in (None, 32):
        raise init.wrong("optim_bits", f"32 or unset for {leaf} (bitsandbytes refuses others)")
    if bits is None:
        bits = given or 32
        if bits not in (8, 32):  # Optimizer2State/1State.init_state: NotImplementedError
            raise init.wrong("optim_bits", "8 or 32")
    if paged is None:
        paged = init.flag("is_paged")
    return next(
        name
        for name, o in BNB_OPTIMIZERS.items()
        if (o.states, o.bits, o.paged) == (states, bits, paged)
    )


def torchao_optimizer(path: str, init: Keys, cfg: FrameworkConfig) -> bool:
    """A class path naming one of torchao's low-bit Adams (``torchao.optim.AdamW8bit``,
    ``torchao.prototype.low_bit_optim.AdamW4bit``) read with its ``block_size``
    argument from ``init``; False for any other path."""
    module, _, leaf = path.rpartition(".")
    if not module.startswith("torchao.") or leaf not in TORCHAO_CLASSES:
        return False
    cfg.settings["optimizer"] = TORCHAO_CLASSES[leaf]
    if (block := init.integer("block_size")) is not None:
        cfg.settings["optimizer_block_size"] = block
    return True


def optim_args(k: Keys) -> dict[str, str]:
    """transformers' ``optim_args`` ("key=value,key=value"; axolotl also takes a mapping,
    which it joins the same way: core/builders/base.py)."""
    raw = k.raw("optim_args")
    if isinstance(raw, dict):
        return {str(key): str(value) for key, value in raw.items()}
    return dict(
        item.split("=", 1)
        for item in (k.text("optim_args") or "").replace(" ", "").split(",")
        if "=" in item
    )


def galore_args(k: Keys, cfg: FrameworkConfig) -> None:
    """transformers' GaLore settings: ``optim_args`` ("rank=64, ...") and
    ``optim_target_modules`` (names or regular expressions of the projected linears)."""
    if cfg.settings.get("method") != "galore":
        return
    args = optim_args(k)
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


def hf_trainer_precision(
    k: Keys, cfg: FrameworkConfig, dtype: str | None = None, bf16: bool | None = None
) -> None:
    """HF Trainer: bf16/fp16 turn on autocast; the weights keep the dtype they were
    loaded in (transformers 5 loads a checkpoint's own dtype by default, 16-bit here).
    axolotl also takes ``bf16: auto`` (bf16 where the GPU has it); ``bf16`` given: the
    framework's resolved value (TRL's default) instead of the file's key."""
    dtype = (dtype or "auto").lower().removeprefix("torch.")
    fp32_weights = dtype in ("float32", "fp32")
    if bf16 is None:
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


def settings_from(k: Keys, cfg: FrameworkConfig, pairs: tuple[tuple[str, str], ...]) -> None:
    """Whole-number keys (positive) that map one to one onto ftmem settings."""
    for key, setting in pairs:
        value = k.integer(key)
        if value is not None:
            cfg.settings[setting] = value


def lora_numbers(k: Keys, cfg: FrameworkConfig, rank_key: str = "lora_r") -> None:
    """LoRA's rank, alpha and dropout, each of the type peft takes."""
    if (r := k.integer(rank_key)) is not None:
        cfg.settings["lora_r"] = r
    if (alpha := k.number("lora_alpha")) is not None:
        cfg.settings["lora_alpha"] = alpha
    if (dropout := k.number("lora_dropout", low=0.0, below=1.0)) is not None:
        cfg.settings["lora_dropout"] = dropout


# -- readers --------------------------------------------------------------------------------


def read_mapping(path: Path, what: str = "training config") -> dict[str, Any]:
    text = read_text(path, what, MAX_CONFIG_BYTES)
    data = parse_json(text, str(path)) if path.suffix == ".json" else parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top.")
    return data
