"""What each framework can run at all.

LitGPT, torchtune and Answer.AI's fsdp_qlora build their models and adapters
themselves rather than through transformers and peft, so a peft method, a
quantisation or a trainer objective they do not implement is not a run anyone can
launch: estimated, it would be a number for a step that does not exist. axolotl and
LLaMA-Factory run transformers and peft but reach them through their own config keys,
which name a few of peft's methods and TRL's trainers only. Each table lists what the
framework's own code offers; anything else is refused in one sentence.
"""

from __future__ import annotations

# litgpt finetune full | lora | qlora (lora --quantize) | adapter | adapter_v2
# (Lightning-AI/litgpt tutorials/finetune.md); torchtune's recipes: full_finetune_*,
# lora_finetune_* (use_dora, quantize_base); fsdp_qlora train.py --train_type full,
# lora, qlora, bnb_dora / hqq_dora (custom_* and *_llama_pro are variants of these).
# Unsloth runs over transformers and peft, but its FastLanguageModel.get_peft_model builds
# a LoraConfig only (use_rslora, use_dora: frameworks.llama_factory.UNSLOTH_METHODS) and
# from_pretrained(full_finetuning=True) trains every weight
# axolotl (axolotl-ai-cloud/axolotl@067b021c8b87): adapter lora | qlora | llama-adapter are
# built in, any other needs a plugin (utils/schemas/peft.py LoraConfig.validate_adapter;
# the one plugin adapter is MoRA's, integrations/mora/plugin.py), and lora builds peft's
# LoraConfig with use_dora / use_rslora (loaders/adapter.py _build_lora_config_kwargs);
# relora (peft.py ReLoRAConfig); optimizer galore_adamw* (transformers', docs/optimizers.qmd);
# unfrozen_parameters, regexes over parameter names (utils/schemas/config.py): full, freeze
# (the last blocks' names), partial and bitfit (".*bias"). Its s2_attention is refused
# since afd74aed71da (schemas/deprecated.py): no longlora. Its llama-adapter is peft's
# adaption_prompt (loaders/adapter.py load_llama_adapter): --method adaption-prompt.
# LLaMA-Factory (hiyouga/LLaMA-Factory@ff6d4d12eeb0 src/llamafactory/hparams/
# finetuning_args.py): finetuning_type lora | oft | freeze | full, use_dora, use_rslora,
# quantization_bit (qlora), use_galore on full or freeze; freeze_trainable_modules and
# freeze_extra_modules name modules of the trainable blocks and outside them
# (model/adapter.py _setup_freeze_tuning): partial, but no bias-only selection (bitfit).
# Its shift_attn patch demands transformers>=4.45,<4.48 (model/model_utils/longlora.py
# _apply_llama_patch, mandatory) while pyproject.toml requires >=4.55: no longlora. (oft is
# peft's OFT, refused with its own sentence: run._rotation_settings_fit.)
METHODS: dict[str, tuple[str, ...]] = {
    "litgpt": ("full", "lora", "qlora", "llama-adapter", "llama-adapter-v2"),
    "torchtune": ("full", "lora", "qlora", "dora"),
    "fsdp_qlora": ("full", "lora", "qlora", "dora"),
    "unsloth": ("full", "lora", "rslora", "qlora", "dora"),
    "axolotl": (
        "full",
        "freeze",
        "partial",
        "bitfit",
        "galore",
        "lora",
        "rslora",
        "dora",
        "relora",
        "qlora",
        "adaption-prompt",
    ),
    "llama-factory": ("full", "freeze", "partial", "galore", "lora", "rslora", "dora", "qlora"),
}

# LitGPT's --quantize bnb.nf4[-dq] | bnb.fp4[-dq] | bnb.int8 (frameworks.litgpt);
# torchtune quantises the base to torchao's NF4 only (quantize_base); fsdp_qlora's
# Linear4bit is bitsandbytes nf4
# axolotl: load_in_4bit (nf4, or fp4 through bnb_config_kwargs), load_in_8bit, gptq (an
# int4 checkpoint) (utils/schemas/peft.py@067b021c8b87); LLaMA-Factory: quantization_bit 4
# (quantization_type nf4 | fp4) or 8 with bitsandbytes, GPTQ and AWQ checkpoints
# (model/model_utils/quantization.py@ff6d4d12eeb0 configure_quantization): every --quant
QUANTS: dict[str, tuple[str, ...]] = {
    "litgpt": ("nf4", "fp4", "int8"),
    "torchtune": ("nf4",),
    "fsdp_qlora": ("nf4",),
    "axolotl": ("nf4", "fp4", "int8", "int4"),
    "llama-factory": ("nf4", "fp4", "int8", "int4"),
}

# LitGPT and fsdp_qlora train next-token prediction only; torchtune's recipes add DPO
# (rlhf/loss/__init__.py@bd2a0fc7c314: DPOLoss, RSOLoss and PPOLoss; IPOLoss went in
# 6d3e065e660d, v0.3.1, SimPOLoss in 9b5062889b92, v0.6.0; ftmem has no torchtune version
# to gate them on) and GRPO (recipes/dev/grpo_full_finetune_distributed.py). axolotl's rl:
# dpo, ipo, orpo, kto, simpo, grpo (and gdpo, ebft: utils/schemas/enums.py@067b021c8b87
# RLType); its KTO branch passes no loss_type (core/builders/rl.py
# _build_training_arguments), so TRL's apo_zero_unpaired is out of reach. LLaMA-Factory's
# stage pt | sft | rm | ppo | dpo | kto, pref_loss sigmoid | hinge | ipo | kto_pair | orpo |
# simpo (finetuning_args.py@ff6d4d12eeb0): no GRPO
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "litgpt": ("sft",),
    "fsdp_qlora": ("sft",),
    "torchtune": ("sft", "dpo", "grpo"),
    "axolotl": ("sft", "dpo", "ipo", "simpo", "orpo", "kto", "grpo"),
    "llama-factory": ("sft", "dpo", "ipo", "simpo", "orpo", "kto"),
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
    "axolotl": (
        "axolotl's config reaches peft's LoRA and adaption prompt, TRL's trainers and its rl: "
        "types only"
    ),
    "llama-factory": (
        "LLaMA-Factory's config offers finetuning_type lora, oft, freeze or full and its "
        "stages only"
    ),
}


# where one value has a reason of its own, beside the framework's (_WHY)
_REASONS = {
    ("torchtune", "ipo"): "torchtune removed its IPOLoss in 0.3.1",
    ("torchtune", "simpo"): "torchtune removed its SimPOLoss in 0.6.0",
    ("axolotl", "longlora"): "axolotl refuses s2_attention, LongLoRA's shifted attention",
    ("axolotl", "apo-zero-unpaired"): "axolotl's rl: kto passes TRL's KTOTrainer no loss_type",
    ("llama-factory", "longlora"): (
        "LLaMA-Factory's shift_attn needs transformers below 4.48, which its own "
        "requirements exclude"
    ),
}


def check_framework_support(framework: str, method: str, quant: str | None, objective: str) -> None:
    """Refuse (ValueError) a method, base quantisation or objective the run's framework
    does not implement; hf, lightning and peft-mc (the user's own loop over transformers
    and peft) are not checked here."""
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
                f"--framework {framework} has no {option} {value} "
                f"({_REASONS.get((framework, value), _WHY[framework])}, so no "
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
