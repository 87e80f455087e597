"""LitGPT finetune configs (config_hub/finetune): precision, quantisation, LoRA switches and the train section."""

from __future__ import annotations

from pathlib import Path

from ftmem.filekeys import Keys
from ftmem.frameworks.shared import FrameworkConfig, lora_numbers

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

# this framework's keys that do not change memory (beyond frameworks.shared's)
NO_MEMORY_EFFECT: frozenset[str] = frozenset()


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


def read(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
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
        lora_numbers(k, cfg)
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
