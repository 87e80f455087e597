"""axolotl configs: adapters, unfrozen parameters, Liger, activation offload, DeepSpeed and FSDP (axolotl drives HF Trainer over transformers + peft)."""

from __future__ import annotations

from pathlib import Path

from ftmem.filekeys import Keys
from ftmem.frameworks.distributed import distributed_settings
from ftmem.frameworks.shared import (
    FrameworkConfig,
    hf_optimizer,
    hf_trainer_precision,
    lora_numbers,
    peft_targets,
    settings_from,
)

# this framework's keys that do not change memory (beyond frameworks.shared's)
NO_MEMORY_EFFECT: frozenset[str] = frozenset()


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
        lora_numbers(k, cfg)
        if k.flag("lora_target_linear"):
            s["lora_targets"] = "all-linear"
        elif targets := peft_targets(k.names("lora_target_modules")):
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


def read(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
    s = cfg.settings
    cfg.model = k.text("base_model")
    _axolotl_method(k, cfg)
    if k.flag("liger_fused_linear_cross_entropy"):
        s["loss"] = "fused"
    if k.flag_or_text("activation_offloading", ("legacy", "disk")):  # axolotl's schema
        s["activation_offload"] = True
    _axolotl_modules_to_save(k, cfg)
    settings_from(k, cfg, AXOLOTL_NUMBERS)
    # axolotl's schema (utils/schemas/config.py): true, false, "offload" or "offload_disk";
    # "unsloth" in its older releases
    if k.flag_or_text("gradient_checkpointing", ("offload", "offload_disk", "unsloth")):
        s["grad_ckpt"] = True
    hf_optimizer(k, "optimizer", cfg)
    bf16 = k.raw("bf16") == "auto" or k.flag("bf16")
    hf_trainer_precision(k, cfg, "bfloat16" if bf16 else None)
    for key, attn in AXOLOTL_ATTENTION:
        if k.flag(key):
            s["attn"] = attn
            break
    if k.flag("sample_packing"):
        cfg.notes.append(
            "sample_packing: each micro-batch is packed to sequence_len tokens, as estimated."
        )
    distributed_settings(k, base, cfg)
    return AXOLOTL_KEYS
