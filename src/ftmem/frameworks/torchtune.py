"""torchtune recipe configs: the model builder names the model and the method; dtype, loss, optimizer, offloading and compile as the recipe applies them."""

from __future__ import annotations

import re
from pathlib import Path

from ftmem.filekeys import Keys
from ftmem.frameworks.shared import FrameworkConfig, lora_numbers, settings_from

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

# this framework's keys that do not change memory (beyond frameworks.shared's)
NO_MEMORY_EFFECT: frozenset[str] = frozenset()


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


def read(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
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
    settings_from(
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
    lora_numbers(model, cfg, "lora_rank")
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
