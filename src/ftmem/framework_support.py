"""What the frameworks that run their own training code can run at all.

LitGPT, torchtune and Answer.AI's fsdp_qlora build their models and adapters
themselves rather than through transformers and peft, so a peft method, a
quantisation or a trainer objective they do not implement is not a run anyone can
launch: estimated, it would be a number for a step that does not exist. Each table
lists what the framework's own code offers; anything else is refused in one sentence.
"""

from __future__ import annotations

# litgpt finetune full | lora | qlora (lora --quantize) | adapter | adapter_v2
# (Lightning-AI/litgpt tutorials/finetune.md); torchtune's recipes: full_finetune_*,
# lora_finetune_* (use_dora, quantize_base); fsdp_qlora train.py --train_type full,
# lora, qlora, bnb_dora / hqq_dora (custom_* and *_llama_pro are variants of these).
# Unsloth runs over transformers and peft, but its FastLanguageModel.get_peft_model builds
# a LoraConfig only (use_rslora, use_dora: frameworks.llama_factory.UNSLOTH_METHODS) and
# from_pretrained(full_finetuning=True) trains every weight
METHODS: dict[str, tuple[str, ...]] = {
    "litgpt": ("full", "lora", "qlora", "llama-adapter", "llama-adapter-v2"),
    "torchtune": ("full", "lora", "qlora", "dora"),
    "fsdp_qlora": ("full", "lora", "qlora", "dora"),
    "unsloth": ("full", "lora", "rslora", "qlora", "dora"),
}

# LitGPT's --quantize bnb.nf4[-dq] | bnb.fp4[-dq] | bnb.int8 (frameworks.litgpt);
# torchtune quantises the base to torchao's NF4 only (quantize_base); fsdp_qlora's
# Linear4bit is bitsandbytes nf4
QUANTS: dict[str, tuple[str, ...]] = {
    "litgpt": ("nf4", "fp4", "int8"),
    "torchtune": ("nf4",),
    "fsdp_qlora": ("nf4",),
}

# LitGPT and fsdp_qlora train next-token prediction only; torchtune's recipes add DPO
# (rlhf.loss, with its IPO and SimPO losses) and GRPO (dev/grpo_full_finetune_distributed)
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "litgpt": ("sft",),
    "fsdp_qlora": ("sft",),
    "torchtune": ("sft", "dpo", "ipo", "simpo", "grpo"),
}

# the frameworks that build their models and adapters themselves
OWN_CODE = frozenset({"litgpt", "torchtune", "fsdp_qlora"})
_WHY = {
    **{
        name: f"{shown} runs its own training code, not transformers' and peft's"
        for name, shown in (
            ("litgpt", "LitGPT"),
            ("torchtune", "torchtune"),
            ("fsdp_qlora", "fsdp_qlora"),
        )
    },
    "unsloth": "Unsloth's FastLanguageModel.get_peft_model builds LoRA adapters only",
}


def check_framework_support(framework: str, method: str, quant: str | None, objective: str) -> None:
    """Refuse (ValueError) a method, base quantisation or objective the run's framework
    does not implement; frameworks built on transformers and peft are not checked here."""
    if framework not in METHODS:
        return
    for option, value, table in (
        ("--method", method, METHODS),
        ("--quant", quant, QUANTS),
        ("--objective", objective, OBJECTIVES),
    ):
        offered = table.get(framework)
        if value is not None and offered is not None and value not in offered:
            raise ValueError(
                f"--framework {framework} has no {option} {value} ({_WHY[framework]}, so no "
                f"such run exists): use {_alternatives(offered)}, or --framework hf"
            )


def _alternatives(offered: tuple[str, ...]) -> str:
    return offered[0] if len(offered) == 1 else ", ".join(offered[:-1]) + " or " + offered[-1]


# knowledge distillation (--teacher): torchtune ships recipes (knowledge_distillation_*);
# LitGPT and fsdp_qlora have none
DISTILLS = frozenset({"torchtune"})


def check_teacher_support(framework: str) -> None:
    """Refuse (ValueError) a teacher under a framework of its own code with no
    distillation recipe."""
    if framework in OWN_CODE and framework not in DISTILLS:
        raise ValueError(
            f"--framework {framework} has no knowledge distillation ({_WHY[framework]}, "
            "with no teacher in its recipes): drop --teacher, or use --framework hf"
        )
