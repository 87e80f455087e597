"""TRL configs (SFTConfig, ScriptArguments) and HF TrainingArguments, in JSON or YAML."""

from __future__ import annotations

from pathlib import Path

from ftmem.filekeys import Keys
from ftmem.frameworks.distributed import distributed_settings
from ftmem.frameworks.shared import (
    FrameworkConfig,
    attention,
    galore_args,
    hf_optimizer,
    hf_trainer_precision,
    lora_numbers,
    peft_targets,
    settings_from,
)

# this framework's keys that do not change memory (beyond frameworks.shared's)
NO_MEMORY_EFFECT: frozenset[str] = frozenset()


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
    lora_numbers(k, cfg)
    if targets := peft_targets(k.names("lora_target_modules")):
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


def read(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
    """TRL SFTConfig / ScriptArguments / HF TrainingArguments (JSON or YAML)."""
    s = cfg.settings
    init = k.section("model_init_kwargs")
    cfg.model = k.text("model_name_or_path") or k.text("model_name")
    _hf_trainer_method(k, cfg)
    for key in HF_SEQ_LEN_KEYS:
        if (seq := k.integer(key)) is not None:
            s["seq_len"] = seq
            break
    settings_from(k, cfg, HF_NUMBERS)
    if k.flag("gradient_checkpointing"):
        s["grad_ckpt"] = True
    if k.text("optim"):
        hf_optimizer(k, "optim", cfg)
        galore_args(k, cfg)
    if k.flag("use_liger_kernel"):
        s["loss"] = "fused"  # Liger's fused linear cross-entropy replaces the LM head + loss
    dtype = init.text("torch_dtype") or init.text("dtype") or k.text("torch_dtype")
    hf_trainer_precision(k, cfg, dtype)
    for keys, key in ((init, "attn_implementation"), (k, "attn_implementation")):
        if (attn := attention(keys, key, cfg)) is not None:
            s["attn"] = attn
            break
    if k.flag("packing"):
        cfg.notes.append(
            "packing: each micro-batch is packed to the sequence length, as estimated."
        )
    _hf_lengths(k, cfg)
    distributed_settings(k, base, cfg)
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
