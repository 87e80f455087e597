"""LLaMA-Factory configs: finetuning_type (LoRA, freeze, full), quantisation, GaLore, DeepSpeed."""

from __future__ import annotations

from pathlib import Path

from ftmem.errors import ConfigError
from ftmem.filekeys import Keys
from ftmem.frameworks.distributed import strategy_from_deepspeed
from ftmem.frameworks.shared import (
    FrameworkConfig,
    attention,
    hf_optimizer,
    hf_trainer_precision,
    lora_numbers,
    peft_targets,
    settings_from,
)

# this framework's keys that do not change memory (beyond frameworks.shared's)
NO_MEMORY_EFFECT: frozenset[str] = frozenset()


def _llama_factory_lora(k: Keys, cfg: FrameworkConfig) -> None:
    """``finetuning_type: lora``: LoRA, DoRA, or QLoRA with bitsandbytes' 4 or 8 bits."""
    s = cfg.settings
    s["method"] = "lora"
    lora_numbers(k, cfg, "lora_rank")
    if targets := peft_targets(k.names("lora_target")):
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
        target = peft_targets(k.names("galore_target")) or "all-linear"
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


def read(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
    s = cfg.settings
    cfg.model = k.text("model_name_or_path")
    _llama_factory_method(k, cfg)
    settings_from(k, cfg, LLAMA_FACTORY_NUMBERS)
    # LLaMA-Factory checkpoints by default unless disable_gradient_checkpointing is set
    s["grad_ckpt"] = not k.flag("disable_gradient_checkpointing")
    hf_optimizer(k, "optim", cfg)
    hf_trainer_precision(k, cfg)
    flash = k.raw("flash_attn")
    if isinstance(flash, bool):  # older LLaMA-Factory: a switch for FlashAttention-2
        if flash:
            s["attn"] = "flash"
    elif (attn := attention(k, "flash_attn", cfg)) is not None:
        s["attn"] = attn
    if k.raw("deepspeed"):
        strategy_from_deepspeed(k, "deepspeed", base, cfg)
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
