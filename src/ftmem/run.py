"""The run description: every setting that changes memory, validated in one place."""

from __future__ import annotations

import re
from typing import Literal, get_args

from ftmem import limits
from ftmem.framework_support import check_framework_support
from ftmem.gpu.alloc_conf import AllocatorOptions, allocator_options
from ftmem.lengths import longest_given, padded_lengths, replayed_steps
from ftmem.validation import (
    Field,
    FiniteFloat,
    NonNegativeInt,
    PositiveInt,
    field_validator,
    model_validator,
)

Method = Literal[
    "full",
    "freeze",
    "partial",
    "galore",
    "lora",
    "rslora",
    "longlora",
    "relora",
    "qlora",
    "dora",
    "adalora",
    "bitfit",
    "adapter",
    "llama-adapter",
    "llama-adapter-v2",
    "ia3",
    "loha",
    "lokr",
    "miss",
    "road",
    "boft",
    "oft",
    "vera",
    "fourierft",
    "hira",
    "psoft",
    "hra",
    "gralora",
    "delora",
    "pvera",
    "randlora",
    "vblora",
    "shira",
    "supertuning",
    "waveft",
    "c3a",
    "tinylora",
    "adamss",
    "unilora",
    "lily",
    "beft",
    "deft",
    "glora",
    "peanut",
    "trainable-tokens",
    "osf",
    "adaption-prompt",
    "ln-tuning",
    "prompt-tuning",
    "prefix-tuning",
    "p-tuning",
    "cartridge",
]
Precision = Literal["fp32", "bf16", "fp16", "bf16-mixed", "fp16-mixed"]
AdapterDtype = Literal["auto", "fp32", "bf16", "fp16"]
Optimizer = Literal[
    "adamw",
    "adamw-fp32",
    "adamw-32bit",
    "adamw-8bit",
    "paged-adamw-8bit",
    "paged-adamw",
    "lion-32bit",
    "lion-8bit",
    "paged-lion",
    "paged-lion-8bit",
    "ao-adamw-8bit",
    "ao-adamw-4bit",
    "ao-adamw-fp8",
    "sgd",
    "sgd-momentum",
    "adafactor",
    "lion",
]
Attention = Literal["eager", "sdpa", "flash"]
# Whether a batch carries pad tokens that its attention_mask marks, in the words of
# transformers' own ``padding=`` argument (tokenizer and DataCollatorWithPadding:
# PaddingStrategy "longest" | "max_length" | "do_not_pad"); ops.attention.padding_mask.
# "packed": no pad tokens, but the batch flattened into one row of several sequences told
# apart by position_ids (TRL padding_free, DataCollatorWithFlattening), which under sdpa
# gets the same kind of mask (ops.attention.packed_rows). "packed-flex": torchtune's packed
# datasets, rows of s tokens each holding several sequences, their block-causal mask a
# compressed BlockMask for flex attention (no s² tensor) and their positions an input_pos
# that indexes the rotary cache (ops.attention.packed_flex)
Padding = Literal["none", "longest", "max-length", "packed", "packed-flex"]
# the training objective: supervised finetuning, or a preference loss over chosen and
# rejected sequences, or over unpaired completions labelled desirable or not (kto,
# apo-zero-unpaired: TRL's KTOTrainer) (ftmem.ops.loss.PreferenceLoss)
Objective = Literal["sft", "dpo", "ipo", "simpo", "orpo", "kto", "apo-zero-unpaired", "grpo"]
# grpo: G sampled completions per prompt, scored and trained on (ftmem.grpo)
# the objectives that compare with a reference model's log-probabilities
REFERENCE_OBJECTIVES = frozenset({"dpo", "ipo", "kto", "apo-zero-unpaired"})
# unpaired completions: b sequences per forward, not 2b (TRL's KTOTrainer)
UNPAIRED_OBJECTIVES = frozenset({"kto", "apo-zero-unpaired"})
# the objectives whose TRL trainer computes log-probabilities with its fused LM head since
# TRL 1.16.0 (--loss logprob-tiles: dpo_trainer.py:960, kto_trainer.py:967,
# grpo_trainer.py:1068); simpo and orpo run in the CPO and ORPO trainers, on full logits
TILE_OBJECTIVES = frozenset({"dpo", "ipo", "kto", "apo-zero-unpaired", "grpo"})
Quant = Literal["nf4", "fp4", "int8", "int4"]
Accounting = Literal["phases", "simple"]
OptimizerImpl = Literal["foreach", "for-loop", "fused"]

# LoRA-style adapters beside the frozen linears (the --lora-* options apply)
ADAPTER_METHODS: frozenset[str] = frozenset(
    {"lora", "rslora", "longlora", "relora", "qlora", "dora", "adalora", "gralora", "delora"}
    | {"deft"}
)
# virtual tokens learned in front of the input (prompt, P-tuning) or of every layer's
# keys and values (prefix)
PROMPT_METHODS: frozenset[str] = frozenset(
    {"prompt-tuning", "prefix-tuning", "p-tuning", "cartridge"}
)
# the prompt methods served as every layer's key/value prefix (peft's past_key_values):
# prefix tuning, and Cartridge (peft 0.21.2 tuners/cartridge: the prefix itself trained)
KV_PREFIX_METHODS: frozenset[str] = frozenset({"prefix-tuning", "cartridge"})
DEFAULT_VIRTUAL_TOKENS = 20
# LLaMA-Adapter as LitGPT implements it (litgpt/adapter.py, adapter_v2.py): a gated adaption
# prompt in the top blocks; v2 adds a bias and scale to every linear and trains the norms
LLAMA_ADAPTER_METHODS: frozenset[str] = frozenset({"llama-adapter", "llama-adapter-v2"})
# LitGPT's adapter Config defaults (litgpt/adapter.py Config, unchanged since
# lit_gpt/adapter.py@8641822b): adapter_prompt_length = 10, adapter_start_layer = 2
DEFAULT_ADAPTER_PROMPT_LENGTH = 10
DEFAULT_ADAPTER_START_LAYER = 2
# peft's adaption prompt (peft 0.21.2 tuners/adaption_prompt/: AdaptionPromptConfig's
# adapter_len and adapter_layers, the top blocks' attentions wrapped): the same gated prompt
# as LitGPT's LLaMA-Adapter, run another way (adapters.adaption_prompt)
GATED_PROMPT_METHODS: frozenset[str] = LLAMA_ADAPTER_METHODS | {"adaption-prompt"}
# the methods that take a quantised base (--quant): QLoRA, and LitGPT's adapters under
# Lightning's bitsandbytes plugin (litgpt@0f021f3a finetune/adapter.py --quantize)
QUANTIZED_BASE_METHODS: frozenset[str] = frozenset({"qlora"}) | LLAMA_ADAPTER_METHODS
DEFAULT_GALORE_RANK = 128  # the GaLore paper's LLaMA-7B setting
GALORE_OPTIMIZERS = frozenset({"adamw", "adamw-8bit"})
# torch.optim's AdamW and SGD take fused=True; the others are bitsandbytes', transformers'
# (Adafactor) or lion-pytorch's, with kernels of their own
TORCH_FUSED_OPTIMIZERS = frozenset({"adamw", "adamw-fp32", "sgd", "sgd-momentum"})
DEFAULT_IA3_TARGETS = "k,v,down"  # the paper's keys, values and FFN intermediate
# peft's LoHaConfig (and LoKrConfig) defaults (peft 0.21.2 tuners/loha/config.py: r=8, alpha=8; target_modules
# from the LoRA mapping, utils/constants.py: q_proj, v_proj for Llama)
DEFAULT_LOHA_RANK = 8
DEFAULT_LOHA_ALPHA = 8.0
# peft's MissConfig defaults (peft 0.21.2 tuners/miss/config.py: r=64, mini_r=1,
# init_weights=True) and RoadConfig's (tuners/road/config.py: variant road_1, group_size 64)
DEFAULT_MISS_RANK = 64
DEFAULT_ROAD_GROUP = 64
# peft's VeraConfig default rank (peft 0.21.2 tuners/vera/config.py: r=256; the same at
# 5d602fdbff04, the MetaMathQA release); target_modules from the VeRA mapping
# (utils/constants.py: q_proj, v_proj for Llama)
DEFAULT_VERA_RANK = 256
# peft's FourierFTConfig default (peft 0.21.2 tuners/fourierft/config.py: n_frequency=1000;
# the same at 5d602fdbff04); target_modules from the LoRA mapping (q_proj, v_proj for Llama)
DEFAULT_FOURIER_FREQUENCIES = 1000
# peft's HiraConfig default rank (peft 0.21.2 tuners/hira/config.py: r=32; the same at
# 5d602fdbff04); target_modules from the HiRA mapping, a copy of LoRA's (q_proj, v_proj)
DEFAULT_HIRA_RANK = 32
# peft's PsoftConfig defaults (peft 0.21.2 tuners/psoft/config.py: r=32, psoft_orth,
# psoft_mag_a and psoft_mag_b True, use_cayley_neumann False: the exact Cayley solve)
DEFAULT_PSOFT_RANK = 32
# peft's HRAConfig defaults (peft 0.21.2 tuners/hra/config.py: r=8, apply_GS False);
# target_modules from the HRA mapping, a copy of LoRA's (q_proj, v_proj)
DEFAULT_HRA_RANK = 8
# peft's GraloraConfig defaults (peft 0.21.2 tuners/gralora/config.py: r=32, alpha=64,
# gralora_k=2; the same at 5d602fdbff04); target_modules from the LoRA mapping (q, v)
DEFAULT_GRALORA_RANK = 32
DEFAULT_GRALORA_K = 2
# peft's PveraConfig default rank (peft 0.21.2 tuners/pvera/config.py: r=256, the same in
# the MetaMathQA release's pvera--llama-3.2-3B-default adapter_config.json); target_modules
# from the VeRA mapping (q_proj, v_proj for Llama)
DEFAULT_PVERA_RANK = 256
# peft's RandLoraConfig default rank (peft 0.21.2 tuners/randlora/config.py: r=32) and
# VBLoRAConfig's (tuners/vblora/config.py: r=4, num_vectors=256, vector_length=256,
# topk=2); both the same at 5d602fdbff04, and their target_modules q_proj, v_proj for Llama
# (utils/constants.py: the LoRA mapping for RandLoRA, the VB-LoRA mapping)
DEFAULT_RANDLORA_RANK = 32
DEFAULT_VBLORA = (4, 256, 256, 2)  # rank, num_vectors, vector_length, topk
# peft's ShiraConfig default (peft 0.21.2 tuners/shira/config.py: r=32, mask_type random;
# the same at 5d602fdbff04); target_modules from the LoRA mapping (q_proj, v_proj for Llama)
DEFAULT_SHIRA_RANK = 32
# peft's SupertuningConfig defaults (peft 0.21.2 tuners/supertuning/config.py: sparsity=0.99,
# select_top=True, r=None); target_modules from its mapping, a copy of LoRA's (q_proj,
# v_proj for Llama: utils/constants.py TRANSFORMERS_MODELS_TO_SUPERTUNING_TARGET_MODULES_MAPPING)
DEFAULT_SUPERTUNING_SPARSITY = 0.99
# peft's WaveFTConfig default (peft 0.21.2 tuners/waveft/config.py: n_frequency=2592,
# wavelet_family db1, use_idwt True); target_modules from its mapping (q_proj, v_proj)
DEFAULT_WAVE_FREQUENCIES = 2592
# peft's C3AConfig default (peft 0.21.2 tuners/c3a/config.py: block_size=256; the same at
# 5d602fdbff04); target_modules from the LoRA mapping (q_proj, v_proj for Llama)
DEFAULT_C3A_BLOCK = 256
# peft's TinyLoraConfig defaults (peft 0.21.2 tuners/tinylora/config.py: r=2, u=64,
# weight_tying=0.0; target_modules from the TinyLoRA mapping, a copy of LoRA's: q_proj and
# v_proj for Llama, utils/constants.py); the MetaMathQA release's
# tinylora--llama-3.2-3B-default config
DEFAULT_TINYLORA = (2, 64, 0.0)  # rank, u, weight_tying
# peft's AdamssConfig defaults (peft 0.21.2 tuners/adamss/config.py: r=100, num_subspaces=5,
# subspace_rank=1; target_modules from the AdaMSS mapping, a copy of LoRA's: q_proj and
# v_proj for Llama, utils/constants.py)
DEFAULT_ADAMSS = (100, 5, 1)  # r, num_subspaces, subspace_rank
# peft's UniLoraConfig defaults (peft 0.21.2 tuners/unilora/config.py: r=4,
# theta_d_length=256; target_modules from the UniLoRA mapping, a copy of LoRA's)
DEFAULT_UNILORA = (4, 256)  # rank, theta_d_length
# peft's LilyConfig defaults (peft 0.21.2 tuners/lily/config.py: r=32, stride_A=1, num_B=2;
# target_modules from the Lily mapping, a copy of LoRA's)
DEFAULT_LILY = (32, 1, 2)  # rank, stride_A, num_B


# Settings that only some methods take (the rest refuse them): what compare-methods
# passes on to each method it runs.
METHOD_SETTINGS: dict[str, frozenset[str]] = {
    **{
        k: ADAPTER_METHODS
        for k in (
            "lora_r",
            "lora_alpha",
            "lora_targets",
            "lora_dropout",
            "lora_modules_to_save",
        )
    },
    "adapter_dtype": ADAPTER_METHODS
    | {"ia3", "adapter", "loha", "lokr", "boft", "oft", "miss", "road", "vera", "fourierft"}
    | {"hira", "psoft", "hra", "pvera", "randlora", "vblora", "shira", "waveft"}
    | {"supertuning"}
    | {"beft", "glora"}
    | {"peanut", "trainable-tokens"},
    "lora_fa": frozenset({"lora", "rslora"}),
    "lora_bd_blocks": frozenset({"lora", "rslora"}),
    "lora_mica": frozenset({"lora", "rslora"}),
    "gralora_k": frozenset({"gralora"}),
    "adapter_size": frozenset({"adapter"}),
    "adapter_placement": frozenset({"adapter"}),
    "ia3_targets": frozenset({"ia3"}),
    **{k: frozenset({"loha"}) for k in ("loha_rank", "loha_alpha", "loha_targets")},
    **{
        k: frozenset({"lokr"})
        for k in ("lokr_rank", "lokr_alpha", "lokr_targets", "lokr_factor", "lokr_decompose_both")
    },
    **{k: frozenset({"miss"}) for k in ("miss_rank", "miss_init", "miss_mini_r", "miss_targets")},
    **{k: frozenset({"road"}) for k in ("road_variant", "road_group_size", "road_targets")},
    **{k: frozenset({"boft"}) for k in ("boft_block_size", "boft_block_num", "boft_targets")},
    **{
        k: frozenset({"oft"})
        for k in ("oft_r", "oft_block_size", "oft_targets", "oft_block_share", "oft_neumann_terms")
    },
    **{k: frozenset({"vera"}) for k in ("vera_rank", "vera_targets")},
    **{k: frozenset({"pvera"}) for k in ("pvera_rank", "pvera_targets")},
    **{k: frozenset({"randlora"}) for k in ("randlora_rank", "randlora_targets")},
    **{
        k: frozenset({"vblora"})
        for k in ("vblora_rank", "vblora_vectors", "vblora_vector_length", "vblora_topk")
    },
    "vblora_targets": frozenset({"vblora"}),
    **{
        k: frozenset({"tinylora"})
        for k in ("tinylora_rank", "tinylora_u", "tinylora_weight_tying", "tinylora_targets")
    },
    **{
        k: frozenset({"adamss"})
        for k in (
            "adamss_rank",
            "adamss_subspaces",
            "adamss_subspace_rank",
            "adamss_targets",
            "adamss_asa",
        )
    },
    **{
        k: frozenset({"unilora"})
        for k in ("unilora_rank", "unilora_theta_length", "unilora_targets")
    },
    **{
        k: frozenset({"lily"}) for k in ("lily_rank", "lily_stride_a", "lily_num_b", "lily_targets")
    },
    **{k: frozenset({"fourierft"}) for k in ("fourierft_frequencies", "fourierft_targets")},
    **{k: frozenset({"hira"}) for k in ("hira_rank", "hira_targets")},
    **{k: frozenset({"psoft"}) for k in ("psoft_rank", "psoft_targets", "psoft_neumann_terms")},
    **{k: frozenset({"hra"}) for k in ("hra_rank", "hra_targets")},
    **{k: frozenset({"shira"}) for k in ("shira_rank", "shira_targets")},
    **{
        k: frozenset({"supertuning"})
        for k in ("supertuning_sparsity", "supertuning_targets", "supertuning_r")
    },
    **{k: frozenset({"waveft"}) for k in ("waveft_frequencies", "waveft_targets")},
    **{k: frozenset({"c3a"}) for k in ("c3a_block_size", "c3a_targets")},
    "beft_targets": frozenset({"beft"}),
    **{k: frozenset({"deft"}) for k in ("deft_para", "deft_qr")},
    **{k: frozenset({"glora"}) for k in ("glora_rank", "glora_targets", "glora_vector")},
    **{k: frozenset({"peanut"}) for k in ("peanut_rank", "peanut_targets", "peanut_depth")},
    "trainable_token_ids": frozenset({"trainable-tokens"}),
    **{k: frozenset({"osf"}) for k in ("osf_rank", "osf_targets")},
    "adalora_target_r": frozenset({"adalora"}),
    "adapter_prompt_length": GATED_PROMPT_METHODS,
    "adapter_layers": frozenset({"adaption-prompt"}),
    "adapter_start_layer": LLAMA_ADAPTER_METHODS,
    "virtual_tokens": PROMPT_METHODS,
    "prefix_projection": frozenset({"prefix-tuning"}),
    "cartridge_frozen_tokens": frozenset({"cartridge"}),
    "encoder_hidden": frozenset({"p-tuning", "prefix-tuning"}),
    "prompt_encoder": frozenset({"p-tuning"}),
    "quant": QUANTIZED_BASE_METHODS,
    "double_quant": QUANTIZED_BASE_METHODS,
    "compute_dtype": QUANTIZED_BASE_METHODS,
    "gptq_kernel": frozenset({"qlora"}),
    "trl_bf16_cast": frozenset({"qlora"}),
    "trainable_layers": frozenset({"freeze"}),
    "trainable_modules": frozenset({"partial"}),
    "galore_rank": frozenset({"galore"}),
    "galore_targets": frozenset({"galore"}),
}


# --objective grpo's own settings (the others refuse them)
GRPO_SETTINGS = (
    "completion_len",
    "num_generations",
    "steps_per_generation",
    "num_iterations",
    "ds3_gather_for_generation",
    "kl_beta",
    "vllm",
    "vllm_memory_share",
    "vllm_tensor_parallel",
    "vllm_data_parallel",
    "generation_prompts",
)
DEFAULT_COMPLETION_LEN = 512  # TRL GRPOConfig max_completion_length
DEFAULT_NUM_GENERATIONS = 8  # TRL GRPOConfig num_generations
DEFAULT_VLLM_SHARE = 0.3  # TRL GRPOConfig vllm_gpu_memory_utilization
# `trl vllm-serve`'s gpu_memory_utilization (trl 1.16.0 trl/scripts/vllm_serve.py
# ScriptArguments, default 0.9)
DEFAULT_VLLM_SERVER_SHARE = 0.9


# The physical bound of each count a run takes (ftmem.limits).
RUN_BOUNDS: dict[str, limits.Bound] = {
    "batch_size": limits.SEQUENCES,
    "seq_len": limits.TOKENS,
    "target_len": limits.TOKENS,
    "grad_accum": limits.MICRO_BATCHES,
    "images": limits.IMAGES,
    "image_size": limits.PIXELS,
    "trainable_layers": limits.LAYERS,
    "galore_rank": limits.WIDTH,
    "optimizer_block_size": limits.WIDTH,
    "lora_r": limits.WIDTH,
    "loha_rank": limits.WIDTH,
    "lokr_rank": limits.WIDTH,
    "lokr_factor": limits.WIDTH,
    "miss_rank": limits.WIDTH,
    "miss_mini_r": limits.WIDTH,
    "road_group_size": limits.WIDTH,
    "boft_block_size": limits.WIDTH,
    "boft_block_num": limits.WIDTH,
    "oft_r": limits.WIDTH,
    "oft_block_size": limits.WIDTH,
    "oft_neumann_terms": limits.WIDTH,
    "vera_rank": limits.WIDTH,
    "pvera_rank": limits.WIDTH,
    "randlora_rank": limits.WIDTH,
    "vblora_rank": limits.WIDTH,
    "vblora_vectors": limits.WIDTH,
    "vblora_vector_length": limits.WIDTH,
    "vblora_topk": limits.WIDTH,
    "tinylora_rank": limits.WIDTH,
    "tinylora_u": limits.WIDTH,
    "adamss_rank": limits.WIDTH,
    "adamss_subspaces": limits.WIDTH,
    "adamss_subspace_rank": limits.WIDTH,
    "unilora_rank": limits.WIDTH,
    "unilora_theta_length": limits.WIDTH,
    "lily_rank": limits.WIDTH,
    "lily_stride_a": limits.WIDTH,
    "lily_num_b": limits.WIDTH,
    "fourierft_frequencies": limits.WIDTH,
    "hira_rank": limits.WIDTH,
    "psoft_rank": limits.WIDTH,
    "psoft_neumann_terms": limits.WIDTH,
    "hra_rank": limits.WIDTH,
    "shira_rank": limits.WIDTH,
    "waveft_frequencies": limits.WIDTH,
    "c3a_block_size": limits.WIDTH,
    "glora_rank": limits.WIDTH,
    "peanut_rank": limits.WIDTH,
    "peanut_depth": limits.WIDTH,
    "osf_rank": limits.WIDTH,
    "adalora_target_r": limits.WIDTH,
    "adapter_size": limits.WIDTH,
    "adapter_prompt_length": limits.TOKENS,
    "adapter_start_layer": limits.LAYERS,
    "adapter_layers": limits.LAYERS,
    "virtual_tokens": limits.TOKENS,
    "cartridge_frozen_tokens": limits.TOKENS,
    "encoder_hidden": limits.WIDTH,
    "eval_batch_size": limits.SEQUENCES,
    "generate_batch_size": limits.SEQUENCES,
    "generate_len": limits.TOKENS,
    "completion_len": limits.TOKENS,
    "num_generations": limits.SEQUENCES,
    "steps_per_generation": limits.MICRO_BATCHES,
    "num_iterations": limits.MICRO_BATCHES,
}


def _unset(value: object) -> bool:
    return value is None


def split_patterns(spec: str) -> list[str]:
    """The comma-separated regular expressions of --trainable-modules (commas inside
    ``{m,n}`` quantifiers do not separate)."""
    items, depth, current = [], 0, ""
    for ch in spec:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth <= 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return [x.strip() for x in items if x.strip()]


def _listing(items: list[str]) -> str:
    """a, b and c"""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def settings_for(method: str, settings: dict[str, object]) -> dict[str, object]:
    """``settings`` without the method-specific ones that ``method`` does not take."""
    return {
        k: v
        for k, v in settings.items()
        if v is not None and (k not in METHOD_SETTINGS or method in METHOD_SETTINGS[k])
    }


# a library release: major.minor[.patch] and a local tag (2.1, 0.43.2, 2.1.0+cu121)
RELEASE = re.compile(r"[0-9]{1,2}\.[0-9]{1,3}(\.[0-9]{1,3})?([+a-z0-9.]{0,40})")

# The training frameworks whose code path ftmem follows (profiles.py); "hf" is HF
# Trainer / TRL over transformers + peft, the path every other default describes.
Framework = Literal[
    "hf",
    "axolotl",
    "llama-factory",
    "litgpt",
    "torchtune",
    "unsloth",
    "lightning",
    "fsdp_qlora",
    "peft-mc",
]


# where a peft AdaLoraModel trains: a loop that calls update_and_allocate (HF Trainer has no
# call of its own: the user's callback or loop adds it); ftmem models peft's other adapters
# (PEFT_MODEL_METHODS below) under the same three (the frameworks that take any peft model)
ADALORA_FRAMEWORKS = frozenset({"hf", "peft-mc", "lightning"})

# peft's adapters ftmem models only under those three frameworks, as their sentences
# name them
PEFT_MODEL_METHODS = {
    "boft": "BOFT",
    "oft": "OFT",
    "miss": "MiSS",
    "road": "RoAd",
    "vera": "VeRA",
    "fourierft": "FourierFT",
    "hira": "HiRA",
    "psoft": "PSOFT",
    "hra": "HRA",
    "gralora": "GraLoRA",
    "delora": "DeLoRA",
    "pvera": "PVeRA",
    "randlora": "RandLoRA",
    "vblora": "VB-LoRA",
    "shira": "SHiRA",
    "supertuning": "Super-Tuning",
    "waveft": "WaveFT",
    "c3a": "C3A",
    "tinylora": "TinyLoRA",
    "adamss": "AdaMSS",
    "unilora": "UniLoRA",
    "lily": "Lily",
    "beft": "BEFT",
    "deft": "DeFT",
    "glora": "GLoRA",
    "peanut": "Peanut",
    "trainable-tokens": "trainable tokens",
    "osf": "OSF",
    "adaption-prompt": "adaption prompt",
    "cartridge": "Cartridge",
}
# methods not modelled under autocast, with the reason where one is known (VeRA's casts
# are modelled)
NO_AUTOCAST = {
    "osf": "",
    "supertuning": "",
    "adaption-prompt": "",
    "cartridge": "",
    "adamss": "its casts of the fp32 factors were not measured",
}


def smallest_batch(objective: str, framework: str) -> int:
    """The smallest micro-batch the trainer accepts: TRL's KTOTrainer refuses one
    completion (trl/trainer/kto_trainer.py@f2cd57710ae3 __init__; LLaMA-Factory's trainer
    skips that __init__)."""
    return 2 if objective == "kto" and framework in ("hf", "axolotl") else 1


class RunConfig(limits.BoundedSettings):
    """One training step's settings. Defaults are those of HF Trainer + peft."""

    BOUNDS = RUN_BOUNDS

    method: Method = "full"
    precision: Precision = "bf16"
    optimizer: Optimizer = "adamw"
    optimizer_impl: OptimizerImpl = Field(
        "foreach", description="torch picks foreach on CUDA, a for-loop on the CPU."
    )
    optimizer_block_size: PositiveInt | None = Field(
        None,
        description="torchao's low-bit AdamW (ao-adamw-*): values per fp32 scale (the "
        "class's default: 256, 4-bit 128; transformers' Trainer passes 256).",
        exclude_if=lambda value: value is None,  # absent from results unless given
    )
    device: Literal["cuda", "cpu"] = Field(
        "cuda", description="Where the step runs; cpu only for checking against measurement."
    )
    framework: Framework = Field(
        "hf",
        description="The training framework whose code path the step follows (set by "
        "--from): its own model code, loss and defaults (ftmem.profiles).",
    )
    torch_version: str | None = Field(
        None,
        description="PyTorch's version: its cuBLAS workspaces, CUDA context, foreach "
        "AdamW temporaries and what torch.compile keeps in torchao's low-bit AdamW step "
        "(default: 2.13, the one ftmem is measured with).",
    )
    gptq_kernel: Literal["cuda-old"] | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="An int4 (GPTQ) base's matmul: cuda-old is AutoGPTQ's qlinear_cuda_old "
        "(exllama disabled and desc_act false, as Qwen-1's finetune.py runs it), whose torch "
        "path for 128 or more tokens a call dequantises each weight to fp16 and keeps it for "
        "the input's gradient; default: kernels that dequantise inside and keep nothing.",
    )
    trl_bf16_cast: bool | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="A 4-bit QLoRA run through TRL 0.7.5-0.21's SFTTrainer with --bf16 and a "
        "peft config: after prepare_model_for_kbit_training's fp32 upcast, "
        "peft_module_casting_to_bf16 puts the token embedding and LM head back in bf16 "
        "(norms stay fp32), so the first block's input and the head's weight are 16-bit.",
    )
    bnb_version: str | None = Field(
        None,
        description="bitsandbytes' version: what its quantised linears keep for backward "
        "(default: the current release).",
    )
    transformers_version: str | None = Field(
        None,
        description="transformers' version: before 5, MoE experts are nn.Linear modules "
        "per expert (bitsandbytes quantises them, peft's all-linear adapts them, the "
        "forward loops over the experts); from 5, fused 3-D parameters. Before 4.41-4.48 "
        "(by family) every layer registers rotary cos/sin tables for every position and "
        "keeps its own cos/sin for backward; 4.38 registers a causal-mask buffer; "
        "before 4.54 sdpa gets GQA keys and values copied per head; 4.38-4.39 give "
        "sdpa an explicit float causal mask; before 4.52 the reentrant checkpoint wraps "
        "each FSDP1 unit, which under LoRA keeps every layer's input and its gradient "
        "until backward ends; before 5.10 HF Trainer's FSDP is FSDP1, one unit gathered "
        "at a time in forward; before 5.25 Falcon runs its own fp32 attention (default: "
        "5.25).",
    )
    peft_version: str | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="peft's version: before 0.16 its LoRA on an int4 (GPTQ) base casts the "
        "adapter's output to the base's dtype and adds it in place, with no sum tensor; "
        "before 0.20 AdaLoRA's ranknum stays frozen (default: the current release).",
    )
    torchao_version: str | None = Field(
        None,
        description="torchao's version (torchtune's NF4 weights): how its NF4Tensor stores "
        "the scale factors, and before 0.2 a 66-bytes-per-element transient while each "
        "weight is quantised whole (default: the current release).",
    )
    deepspeed_version: str | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="DeepSpeed's version: before 0.11.2 ZeRO-3 checks a bf16 model's "
        "gradients for inf/nan at each step as it does an fp16 one's, with temporaries "
        "on its reduce stream; before 0.19.2 its 16-bit modes cast the buffers with the "
        "parameters (default: the current release).",
    )
    # the run beyond the step (ftmem.run_phases)
    peak_of: Literal["step", "run"] | None = Field(
        None,
        description="step: the peak of a training step (after reset_peak_memory_stats); "
        "run: the whole run's, with loading, evaluation, generation and merging. Default: "
        "what the framework's own memory figure covers (ftmem.profiles).",
    )
    eval_batch_size: PositiveInt | None = Field(
        None,
        description="Evaluate during training at this batch size (no grad; HF "
        "per_device_eval_batch_size). Default: none (HF's eval_strategy 'no'); LitGPT's "
        "validate() at the micro-batch.",
    )
    generate_batch_size: PositiveInt | None = Field(
        None, description="Generate samples during training, this many sequences at once."
    )
    generate_len: PositiveInt | None = Field(
        None, description="Tokens (prompt + new) a generation's KV cache holds (default seq_len)."
    )
    merge_adapters: bool = Field(
        False, description="Merge the adapters into the base at the end (peft merge_and_unload)."
    )
    batch_size: PositiveInt = 1
    seq_len: PositiveInt = 512
    target_len: PositiveInt | None = Field(
        None,
        description="Encoder-decoders (T5): decoder tokens per sequence, the labels; "
        "seq_len is then the encoder's input. Default: seq_len.",
    )
    grad_accum: PositiveInt = Field(1, description="Micro-batches per optimizer step.")
    images: NonNegativeInt = Field(
        0,
        exclude_if=lambda value: value == 0,
        description="Image-text models: images per sample; each puts the model's image tokens "
        "in the sequence (seq_len counts them) and runs through the vision tower.",
    )
    image_size: PositiveInt | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="Image-text models with dynamic resolution (Qwen2-VL, Qwen2.5-VL): the "
        "side of each square image in pixels, resized as the model's processor does "
        "(default: the preset's image size).",
    )
    vision_tower: Literal["frozen", "full"] | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="Image-text models: whether the vision tower trains (default: with "
        "full finetuning, as TRL and HF Trainer do; frozen under any other method).",
    )
    projector: Literal["frozen", "full"] | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="Image-text models: whether the projector trains (default: as the tower's default).",
    )
    grad_ckpt: bool = False
    model_dropout: bool = Field(
        True,
        description="Train with the dropout the model's config sets (decoders' residual and "
        "embedding dropout, T5's dropout_rate); false for a run that turns it off.",
    )
    router_aux_loss: bool | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="MoE: train with the router's load-balancing loss (transformers' "
        "output_router_logits; LLaMA-Factory's moe_aux_loss_coef); default: as config.json "
        "says (false unless it sets output_router_logits).",
    )
    activation_offload: bool = Field(
        False,
        description="Copy every saved activation to host RAM in forward and back in "
        "backward (torch save_on_cpu, torchtune's OffloadActivations).",
    )
    optimizer_in_backward: bool = Field(
        False,
        description="Step each parameter from a post-accumulate-grad hook (torch's "
        "optimizer-in-backward; layer-wise GaLore): no gradient buffer.",
    )
    compile: bool = Field(
        False,
        description="torch.compile as the framework applies it: torchtune compiles each "
        "decoder layer and the chunked loss's upcast + cross-entropy (ftmem.profiles); "
        "for the other frameworks the estimate stays eager and says so.",
    )
    attn: Attention = "sdpa"
    padding: Padding | None = Field(
        None,
        exclude_if=lambda value: value is None,  # absent from results unless given
        description="Pad tokens in the batches, marked by the attention_mask the model is "
        "given: none (equal lengths, rows packed with an attention_mask of ones) | longest "
        "(each batch of several sequences padded to its longest: DataCollatorWithPadding, "
        "TRL's collator without padding_free) | max-length (every sequence padded to "
        "seq_len, batch 1 too) | packed (no attention_mask: the batch flattened into one row of b·s tokens, "
        "its sequences told apart by position_ids: TRL padding_free or packing bfd, "
        "DataCollatorWithFlattening). With sdpa a padded or packed batch gets a 4-D mask "
        "(packed: one T×T block-diagonal mask): transformers repeats GQA keys "
        "and values per head and the kernel keeps the copies and the mask "
        "(ftmem.ops.attention.padding_mask) | packed-flex (torchtune's dataset.packed: rows "
        "of seq_len tokens packing several sequences, a BlockMask for flex attention, which "
        "keeps what flash keeps; the rotary cache indexed by position, an fp32 copy per rotary "
        "call kept by eager layers; --framework torchtune only). Default: the framework's (peft-mc: longest; "
        "the others none).",
    )
    # (left out of a dump at its default: an SFT estimate's JSON stays as it was)
    objective: Objective = Field(
        "sft",
        exclude_if=lambda value: value == "sft",
        description="sft: supervised finetuning; dpo | ipo: preference pairs against a "
        "reference's log-probabilities (TRL's DPOTrainer: chosen and rejected in one forward "
        "of batch 2b; the reference is the base with the adapter disabled under PEFT, else a "
        "frozen copy); simpo | orpo: the same pair forward without a reference (ORPO adds "
        "the chosen sequences' cross-entropy); kto: b unpaired completions (TRL's "
        "KTOTrainer), with no_grad forwards of b mismatched sequences for the KL term; "
        "apo-zero-unpaired: KTOTrainer's loss without the KL term. "
        "ftmem.ops.loss.PreferenceLoss.",
    )
    precompute_ref: bool = Field(
        False,
        exclude_if=lambda value: not value,
        description="dpo | ipo | kto | apo-zero-unpaired: the reference log-probabilities "
        "were computed before training (TRL's precompute_ref_log_probs): no reference at "
        "train time.",
    )
    # grpo (TRL's GRPOTrainer, ftmem.grpo; each left out of a dump while unset)
    completion_len: PositiveInt | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="grpo: tokens generated per completion (TRL max_completion_length, 512); "
        "--seq-len is the whole sequence, prompt + completion.",
    )
    num_generations: PositiveInt | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="grpo: completions sampled per prompt (TRL num_generations, 8); the "
        "generation batch must hold whole groups. --batch-size counts completions.",
    )
    steps_per_generation: PositiveInt | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="grpo: micro-batches one generation batch feeds (TRL "
        "steps_per_generation, default --grad-accum): generate() runs on "
        "batch-size x steps-per-generation prompts at once.",
    )
    num_iterations: PositiveInt | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="grpo: optimisation passes over each generation batch (TRL "
        "num_iterations, 1): generate() runs every steps-per-generation x num-iterations "
        "micro-batches; unless grad-accum is a multiple of that, the policy's 'old' "
        "log-probabilities are computed after generation and buffered.",
    )
    generation_prompts: PositiveInt | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="grpo under torchtune's recipe: prompts per generate() call "
        "(forward_batch_size, 1), each with its num-generations completions "
        "(ftmem.torchtune_grpo).",
    )
    ds3_gather_for_generation: bool | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="grpo under ZeRO-3: generate() with every parameter gathered at once "
        "(TRL ds3_gather_for_generation, true); false: through DeepSpeed's hooks, module by "
        "module at every decoding step.",
    )
    kl_beta: FiniteFloat | None = Field(
        None,
        ge=0.0,
        exclude_if=lambda value: value is None,
        description="grpo: the KL coefficient (TRL beta, 0.0); above 0 the reference's "
        "log-probabilities are computed after generation (a frozen copy, or the adapter "
        "disabled under PEFT).",
    )
    vllm: Literal["colocate", "server"] | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="grpo: generate with vLLM (TRL use_vllm, vllm_mode) instead of "
        "transformers' generate(); colocate: the engine shares this GPU.",
    )
    vllm_memory_share: FiniteFloat | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        exclude_if=lambda value: value is None,
        description="grpo --vllm: the share of each vLLM GPU's memory the engine reserves "
        "(colocate: TRL vllm_gpu_memory_utilization, 0.3; server: `trl vllm-serve "
        "--gpu-memory-utilization`, 0.9).",
    )
    vllm_tensor_parallel: PositiveInt | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="grpo --vllm server: the server's tensor-parallel size (`trl vllm-serve "
        "--tensor-parallel-size`, 1): GPUs per engine.",
    )
    vllm_data_parallel: PositiveInt | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="grpo --vllm server: the server's data-parallel size (`trl vllm-serve "
        "--data-parallel-size`, 1): engines, each on its own GPUs.",
    )
    loss: Literal[
        "standard",
        "upcast-shifted",
        "shifted",
        "chunked",
        "linear-chunked",
        "fused",
        "logprob-tiles",
    ] = Field(
        "standard",
        description="standard: transformers' cross-entropy over full logits (transformers "
        "4.46-4.48, given as transformers_version: beside an fp32 copy of the shifted "
        "logits); "
        "upcast-shifted: transformers < 4.46's causal-LM loss in the model's forward "
        "(logits.float(), an fp32 contiguous copy of the shifted logits, "
        "CrossEntropyLoss; the model returns the fp32 logits; under the torchtune "
        "framework its 0.1 recipe's loop loss: the loop keeps the shifted copy into the next "
        "forward and transposes it for the loss); shifted: "
        "the model's own loss as older and remote-code models write it (Qwen-1): a "
        "contiguous copy of the shifted logits, cross-entropy in their dtype (fp32 under "
        "autocast), no upcast of the whole; chunked: "
        "torchtune's 8 output chunks, each upcast to fp32 on its own; linear-chunked: "
        "torchtune's LinearCrossEntropyLoss (the LM head applied in the loss, 8 chunks of "
        "labelled tokens, one chunk's logits at a time); fused: Liger-Kernel's "
        "fused linear cross-entropy (logits in chunks, never whole); logprob-tiles: TRL's "
        "SFTTrainer since 1.15.0 (the LM head projected in tiles of 4096 tokens × 32768 "
        "vocabulary entries into one reused buffer, per-token log-probabilities kept, "
        "never the logits).",
    )
    autocast: bool | None = Field(
        None, description="torch.autocast to 16-bit; default on for *-mixed, off otherwise."
    )
    # freeze
    trainable_layers: int | None = Field(None, ge=0, description="freeze: last N blocks train.")
    # partial
    trainable_modules: str | None = Field(
        None,
        description="partial: comma-separated regular expressions over parameter names "
        "(e.g. self_attn, lm_head, layers\\.3[01]\\.); matching parameters train.",
    )
    # GaLore
    galore_rank: PositiveInt | None = Field(None, description="GaLore projection rank (128).")
    galore_targets: str | None = Field(
        None, description="GaLore: linears whose gradients are projected (all-linear)."
    )
    # LoRA family
    lora_r: PositiveInt | None = None
    lora_alpha: FiniteFloat | None = None
    lora_targets: str | None = None
    lora_dropout: FiniteFloat | None = Field(None, ge=0.0, lt=1.0)
    lora_modules_to_save: str | None = Field(
        None,
        description="peft modules_to_save: 'embed', 'head' or 'embed,head' (trainable copies).",
    )
    lora_fa: bool | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="LoRA-FA (peft's create_lorafa_optimizer): lora_A frozen, lora_B "
        "stepped by an AdamW of its own on a projected gradient.",
    )
    lora_bd_blocks: PositiveInt | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="BD-LoRA (peft's use_bdlora): block-diagonal lora_A on o/down and lora_B "
        "on the other linears, in this many blocks.",
    )
    gralora_k: PositiveInt | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="GraLoRA: sub-blocks per side of each adapted linear (peft's gralora_k, 2).",
    )
    lora_mica: bool | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="MiCA (peft's init_lora_weights='mica'): lora_B set to the weight's minor "
        "singular vectors and frozen; lora_A trains.",
    )
    # DeFT (peft's DeftConfig: para drops deft_R; decomposition_method relu or qr)
    deft_para: bool | None = Field(
        None, exclude_if=_unset, description="DeFT: PaRa, deft_P only (peft's para)."
    )
    deft_qr: bool | None = Field(
        None, exclude_if=_unset, description="DeFT: QR projector (peft's 'qr'; default relu)."
    )
    adapter_dtype: AdapterDtype = "auto"
    # AdaLoRA (peft AdaLoraConfig: --lora-r is its init_r)
    adalora_target_r: PositiveInt | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="AdaLoRA: the average rank the allocator prunes down to (8).",
    )
    # bottleneck adapters
    adapter_size: PositiveInt | None = Field(None, description="Adapter bottleneck width (64).")
    adapter_placement: Literal["houlsby", "pfeiffer"] | None = Field(
        None,
        description="houlsby: after the attention and after the MLP; pfeiffer: after the MLP.",
    )
    # LLaMA-Adapter (LitGPT)
    adapter_prompt_length: PositiveInt | None = Field(
        None,
        description="llama-adapter, adaption-prompt: tokens of the adaption prompt (10: "
        "LitGPT's default, peft's adapter_len in its examples).",
    )
    adapter_start_layer: NonNegativeInt | None = Field(
        None,
        description="llama-adapter: the first block with an adaption prompt (LitGPT's default 2).",
    )
    adapter_layers: PositiveInt | None = Field(
        None,
        exclude_if=_unset,
        description="adaption-prompt: blocks, from the top, with an adaption prompt (peft's "
        "adapter_layers; default every block).",
    )
    # IA³
    ia3_targets: str | None = Field(
        None, description="IA³: linears whose output (or, for down, input) is scaled."
    )
    # LoHa (peft's LyCORIS Hadamard product of two low-rank pairs); these and LoKr's are
    # left out of the serialised run when unset (other runs' JSON unchanged)
    loha_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="LoHa: rank r of each pair (8)."
    )
    loha_alpha: FiniteFloat | None = Field(
        None, exclude_if=_unset, description="LoHa: alpha, scale alpha/r (8)."
    )
    loha_targets: str | None = Field(
        None, exclude_if=_unset, description="LoHa: adapted linears, roles or names (q,v)."
    )
    # LoKr (peft's LyCORIS Kronecker product, its right factor of rank r)
    lokr_rank: PositiveInt | None = Field(None, exclude_if=_unset, description="LoKr: rank r (8).")
    lokr_alpha: FiniteFloat | None = Field(
        None, exclude_if=_unset, description="LoKr: alpha, scale alpha/r (8)."
    )
    lokr_targets: str | None = Field(
        None, exclude_if=_unset, description="LoKr: adapted linears, roles or names (q,v)."
    )
    lokr_factor: PositiveInt | None = Field(
        None,
        exclude_if=_unset,
        description="LoKr: decompose_factor, the Kronecker split of each side "
        "(default: near the square root, peft's -1).",
    )
    lokr_decompose_both: bool | None = Field(
        None,
        exclude_if=_unset,
        description="LoKr: decompose_both, the left factor low-rank too.",
    )
    # MiSS (peft's shared block: one r-wide block per linear) and RoAd (peft's 2-D
    # rotations of each output pair), left out of the serialised run when unset
    miss_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="MiSS: r, the block's width (64)."
    )
    miss_init: Literal["default", "bat", "mini"] | None = Field(
        None,
        exclude_if=_unset,
        description="MiSS: init_weights, default (True/False), bat or mini.",
    )
    miss_mini_r: PositiveInt | None = Field(
        None, exclude_if=_unset, description="MiSS: mini_r, mini's block width (1)."
    )
    miss_targets: str | None = Field(
        None, exclude_if=_unset, description="MiSS: adapted linears, roles or names (q,v)."
    )
    road_variant: Literal["road_1", "road_2", "road_4"] | None = Field(
        None, exclude_if=_unset, description="RoAd: variant (road_1)."
    )
    road_group_size: PositiveInt | None = Field(
        None, exclude_if=_unset, description="RoAd: group_size, even (64)."
    )
    road_targets: str | None = Field(
        None, exclude_if=_unset, description="RoAd: adapted linears, roles or names (q,v)."
    )
    # BOFT (peft's butterfly orthogonal finetuning, one butterfly factor): a block-diagonal
    # rotation of each adapted linear's input and a scale of its output
    boft_block_size: PositiveInt | None = Field(
        None,
        exclude_if=_unset,
        description="BOFT: boft_block_size, each rotation block's side (4).",
    )
    boft_block_num: PositiveInt | None = Field(
        None,
        exclude_if=_unset,
        description="BOFT: boft_block_num, rotation blocks per linear (instead of the size).",
    )
    boft_targets: str | None = Field(
        None, exclude_if=_unset, description="BOFT: adapted linears, roles or names (q,v)."
    )
    # OFT (peft's orthogonal finetuning): each adapted linear's input rotated block by block
    oft_r: PositiveInt | None = Field(
        None,
        exclude_if=_unset,
        description="OFT: r, rotation blocks per linear (instead of the size).",
    )
    oft_block_size: PositiveInt | None = Field(
        None, exclude_if=_unset, description="OFT: oft_block_size, each block's side (32)."
    )
    oft_targets: str | None = Field(
        None, exclude_if=_unset, description="OFT: adapted linears, roles or names (q,v)."
    )
    oft_block_share: bool | None = Field(
        None, exclude_if=_unset, description="OFT: block_share, one rotation block for all."
    )
    oft_neumann_terms: int | None = Field(
        None,
        ge=0,
        exclude_if=_unset,
        description="OFT: Cayley-Neumann terms (5); 0 for the exact Cayley solve.",
    )
    # VeRA (peft's shared frozen random projections, trained scaling vectors)
    vera_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="VeRA: rank r of the shared projections (256)."
    )
    vera_targets: str | None = Field(
        None, exclude_if=_unset, description="VeRA: adapted linears, roles or names (q,v)."
    )
    # FourierFT (peft's spectrum of n frequencies per linear, ΔW by an inverse 2-D FFT)
    fourierft_frequencies: PositiveInt | None = Field(
        None, exclude_if=_unset, description="FourierFT: n_frequency per adapted linear (1000)."
    )
    fourierft_targets: str | None = Field(
        None, exclude_if=_unset, description="FourierFT: adapted linears, roles or names (q,v)."
    )
    # HiRA (peft's Hadamard high-rank adaptation: ΔW = W0 ⊙ (B A), built whole every forward)
    hira_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="HiRA: r, the rank of B A (32)."
    )
    hira_targets: str | None = Field(
        None, exclude_if=_unset, description="HiRA: adapted linears, roles or names (q,v)."
    )
    # PSOFT (peft's r × r orthogonal R between frozen SVD factors: ΔW = B (R − I) A)
    psoft_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="PSOFT: r, the side of its rotation R (32)."
    )
    psoft_targets: str | None = Field(
        None, exclude_if=_unset, description="PSOFT: adapted linears, roles or names (q,v)."
    )
    psoft_neumann_terms: int | None = Field(
        None,
        ge=0,
        exclude_if=_unset,
        description="PSOFT: Cayley-Neumann terms; 0 for the exact Cayley solve (0).",
    )
    # HRA (peft's chain of r Householder reflections multiplied into the weight)
    hra_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="HRA: r, the number of reflections (8)."
    )
    hra_targets: str | None = Field(
        None, exclude_if=_unset, description="HRA: adapted linears, roles or names (q,v)."
    )
    # GLoRA (peft's W + W ⊙ A + B rebuilt each forward; A and B rank-r products or vectors)
    glora_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="GLoRA: r of its A and B paths (8)."
    )
    glora_targets: str | None = Field(
        None, exclude_if=_unset, description="GLoRA: adapted linears, roles or names (q,v)."
    )
    glora_vector: bool | None = Field(
        None, exclude_if=_unset, description="GLoRA: A and B as out-wide vectors (config 'vector')."
    )
    # Peanut (peft's ΔW = B(relu(Wᵀ Aᵀ))·scaling, rebuilt whole from W every forward)
    peanut_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="Peanut: r, the width of A and B (32)."
    )
    peanut_targets: str | None = Field(
        None, exclude_if=_unset, description="Peanut: adapted linears, roles or names (q,v)."
    )
    peanut_depth: NonNegativeInt | None = Field(
        None, exclude_if=_unset, description="Peanut: encoder/decoder r × r pairs (0)."
    )
    # peft's trainable tokens (new rows of chosen token ids in the token embedding)
    trainable_token_ids: str | None = Field(
        None,
        exclude_if=_unset,
        description="Trainable tokens: how many token ids, or the ids (2: bos and eos).",
    )
    # OSF (peft's orthogonal subspace fine-tuning: the weight's low singular directions trained)
    osf_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="OSF: t, trained singular directions per linear."
    )
    osf_targets: str | None = Field(
        None, exclude_if=_unset, description="OSF: adapted linears, roles or names (all-linear)."
    )
    # BEFT (peft's trained bias vector added to each adapted linear's output)
    beft_targets: str | None = Field(
        None, exclude_if=_unset, description="BEFT: biased linears, roles or names (v)."
    )
    # PVeRA (peft's probabilistic VeRA: a sampled rank-r code between the shared projections)
    pvera_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="PVeRA: rank r of the sampled code (256)."
    )
    pvera_targets: str | None = Field(
        None, exclude_if=_unset, description="PVeRA: adapted linears, roles or names (q,v)."
    )
    # RandLoRA (peft's shared frozen random bases, trained scalings; a full-rank update)
    randlora_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="RandLoRA: rank r of each random base (32)."
    )
    randlora_targets: str | None = Field(
        None, exclude_if=_unset, description="RandLoRA: adapted linears, roles or names (q,v)."
    )
    # VB-LoRA (peft's trained vector bank shared by every layer, top-k mixed per layer)
    vblora_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="VB-LoRA: rank r of A and B (4)."
    )
    vblora_vectors: PositiveInt | None = Field(
        None, exclude_if=_unset, description="VB-LoRA: vectors in the bank (256)."
    )
    vblora_vector_length: PositiveInt | None = Field(
        None, exclude_if=_unset, description="VB-LoRA: length of each vector (256)."
    )
    vblora_topk: PositiveInt | None = Field(
        None, exclude_if=_unset, description="VB-LoRA: vectors mixed per sub-vector (2)."
    )
    vblora_targets: str | None = Field(
        None, exclude_if=_unset, description="VB-LoRA: adapted linears, roles or names (q,v)."
    )
    # SHiRA (peft's sparse high-rank adapter: r·(in + out) trained values per linear)
    shira_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="SHiRA: r, r·(in + out) values per linear (32)."
    )
    shira_targets: str | None = Field(
        None, exclude_if=_unset, description="SHiRA: adapted linears, roles or names (q,v)."
    )
    # Super-Tuning (peft's trained largest-magnitude entries of each frozen weight)
    supertuning_sparsity: FiniteFloat | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        exclude_if=_unset,
        description="Super-Tuning: the share of each weight frozen; 1 − it trains (0.99).",
    )
    supertuning_targets: str | None = Field(
        None,
        exclude_if=_unset,
        description="Super-Tuning: adapted linears, roles or names (q,v).",
    )
    supertuning_r: PositiveInt | None = Field(
        None,
        exclude_if=_unset,
        description="Super-Tuning: the Supra hybrid's LoRA rank r (none: Super alone).",
    )
    # WaveFT (peft's n wavelet coefficients per linear, ΔW by an inverse 2-D wavelet transform)
    waveft_frequencies: PositiveInt | None = Field(
        None, exclude_if=_unset, description="WaveFT: n_frequency per adapted linear (2592)."
    )
    waveft_targets: str | None = Field(
        None, exclude_if=_unset, description="WaveFT: adapted linears, roles or names (q,v)."
    )
    # C3A (peft's block circular convolution: one b-long kernel per b × b block)
    c3a_block_size: PositiveInt | None = Field(
        None, exclude_if=_unset, description="C3A: block_size, dividing in and out (256)."
    )
    c3a_targets: str | None = Field(
        None, exclude_if=_unset, description="C3A: adapted linears, roles or names (q,v)."
    )
    # TinyLoRA (peft's frozen SVD factors, a tiny trained vector through fixed projections)
    tinylora_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="TinyLoRA: rank r of the frozen SVD factors (2)."
    )
    tinylora_u: PositiveInt | None = Field(
        None, exclude_if=_unset, description="TinyLoRA: length u of each trained vector (64)."
    )
    tinylora_weight_tying: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        exclude_if=_unset,
        description="TinyLoRA: share of adapted linears tied to one vector (0: none, 1: all).",
    )
    tinylora_targets: str | None = Field(
        None, exclude_if=_unset, description="TinyLoRA: adapted linears, roles or names (q,v)."
    )
    # AdaMSS (peft's SVD of each weight, its output rows clustered into trained subspaces)
    adamss_rank: PositiveInt | None = Field(
        None,
        exclude_if=_unset,
        description="AdaMSS: SVD rank r, capped at the weight's sides (100).",
    )
    adamss_subspaces: PositiveInt | None = Field(
        None, exclude_if=_unset, description="AdaMSS: subspaces K the output rows cluster into (5)."
    )
    adamss_subspace_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="AdaMSS: rank of each trained subspace (1)."
    )
    adamss_targets: str | None = Field(
        None, exclude_if=_unset, description="AdaMSS: adapted linears, roles or names (q,v)."
    )
    adamss_asa: bool | None = Field(
        None,
        exclude_if=_unset,
        description="AdaMSS: ASA (use_asa), its importance state during the pruning warm-up.",
    )
    # UniLoRA (peft's one trained vector theta_d every adapted factor indexes into)
    unilora_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="UniLoRA: rank r of A and B (4)."
    )
    unilora_theta_length: PositiveInt | None = Field(
        None, exclude_if=_unset, description="UniLoRA: length of the trained theta_d (256)."
    )
    unilora_targets: str | None = Field(
        None, exclude_if=_unset, description="UniLoRA: adapted linears, roles or names (q,v)."
    )
    # Lily (peft's A shared by stride_A neighbouring layers, num_B Bs shared by all, routed)
    lily_rank: PositiveInt | None = Field(
        None, exclude_if=_unset, description="Lily: rank r of A and each B (32)."
    )
    lily_stride_a: PositiveInt | None = Field(
        None, exclude_if=_unset, description="Lily: neighbouring layers sharing one A (1)."
    )
    lily_num_b: PositiveInt | None = Field(
        None, exclude_if=_unset, description="Lily: Bs every layer's router mixes (2)."
    )
    lily_targets: str | None = Field(
        None, exclude_if=_unset, description="Lily: adapted linears, roles or names (q,v)."
    )
    # prompt / prefix / P-tuning
    virtual_tokens: PositiveInt | None = None  # (within the token bound: BOUNDS above)
    prefix_projection: bool | None = Field(
        None, description="prefix-tuning: reparametrise the prefix through a two-layer MLP."
    )
    encoder_hidden: PositiveInt | None = Field(
        None, description="Hidden width of the prefix MLP or P-tuning encoder (default: hidden)."
    )
    cartridge_frozen_tokens: NonNegativeInt | None = Field(
        None,
        exclude_if=_unset,
        description="cartridge: leading virtual tokens kept frozen (peft's num_frozen_tokens, "
        "default 1).",
    )
    prompt_encoder: Literal["mlp", "lstm"] | None = Field(
        None, description="p-tuning: the prompt encoder (peft's MLP or bidirectional LSTM)."
    )
    # quantised base (qlora)
    quant: Quant | None = None
    double_quant: bool | None = None
    compute_dtype: Literal["bf16", "fp16", "fp32"] | None = None
    # the CUDA caching allocator (its reserved peak)
    lengths: str | None = Field(
        None,
        description="How the batches' padded lengths vary (ftmem.lengths): fixed (every batch "
        "--seq-len tokens) | padded (each batch padded to its longest, lengths up to "
        "--seq-len) | padded:MIN | padded:MIN-MAX (MAX = --seq-len) | padded:L1,L2,... | "
        "grouped... (the longest batch first: HF group_by_length); "
        "the reserved peak then holds the segments cached for the other lengths.",
    )
    alloc_conf: str | None = Field(
        None,
        description="PYTORCH_CUDA_ALLOC_CONF of the run, e.g. expandable_segments:True: the "
        "caching allocator's options in the reserved-peak replay.",
    )
    # reporting
    accounting: Accounting = "phases"

    @model_validator(mode="before")
    @classmethod
    def _seq_len_from_lengths(cls, data: object) -> object:
        """``lengths: padded:MIN-MAX`` without a ``seq_len``: the longest is MAX."""
        if isinstance(data, dict) and data.get("seq_len") is None and data.get("lengths"):
            longest = longest_given(str(data["lengths"]))
            if longest is not None:
                data = {**data, "seq_len": longest}
        return data

    @field_validator(
        "torch_version",
        "bnb_version",
        "transformers_version",
        "torchao_version",
        "peft_version",
        "deepspeed_version",
    )
    @classmethod
    def _release(cls, value: str | None) -> str | None:
        """A library release as pip and ``__version__`` spell it (2.1, 2.1.0+cu121)."""
        if value is not None and not RELEASE.fullmatch(value):
            raise ValueError("takes a release as pip spells it, such as 4.37.2 or 2.1.0+cu121")
        return value

    def _libraries_fit_framework(self) -> None:
        """LitGPT and torchtune run their own model and adapter code, not transformers' or
        peft's, so a release of either changes nothing that runs; accepted, it would move
        the estimate through transformers' attention and loss rules."""
        if self.framework not in ("litgpt", "torchtune"):
            return
        for option, value in (
            ("transformers", self.transformers_version),
            ("peft", self.peft_version),
        ):
            if value is not None:
                raise ValueError(
                    f"--{option}-version does not apply to --framework {self.framework}, "
                    f"which runs its own model code rather than the {option} library: drop it"
                )

    def _lora_fa_fits(self) -> None:
        """LoRA-FA is peft's optimizer for the LoRA adapters of any peft model (lora and
        rslora: METHOD_SETTINGS): its own AdamW loop (peft 0.21.2 optimizers/lorafa.py
        LoraFAOptimizer.step)."""
        if not self.lora_fa:
            return
        if (
            self.optimizer != "adamw"
            or self.optimizer_impl == "fused"
            or self.optimizer_in_backward
        ):
            raise ValueError(
                "--lora-fa steps with its own AdamW loop (peft's LoraFAOptimizer): drop "
                "--optimizer, --optimizer-impl fused and --optimizer-in-backward"
            )
        if self.framework not in ADALORA_FRAMEWORKS:
            raise ValueError(
                f"--lora-fa is peft's create_lorafa_optimizer, which {self.framework} does "
                "not call: use --framework hf, peft-mc or lightning"
            )

    def _lora_variants_fit(self) -> None:
        """BD-LoRA and MiCA are LoRA variants of peft's LoraConfig (any peft model's); what
        ftmem measured of them: a 16-bit or fp32 base (BD-LoRA: without autocast)."""
        chosen = [
            name
            for name, on in (
                ("--lora-bd-blocks", self.lora_bd_blocks),
                ("--lora-mica", self.lora_mica),
            )
            if on
        ]
        if not chosen:
            return
        what = chosen[0]
        if len(chosen) > 1:
            raise ValueError("--lora-bd-blocks and --lora-mica are two LoRA variants: drop one")
        if self.framework not in ADALORA_FRAMEWORKS:
            raise ValueError(
                f"{what} is a variant of peft's LoraConfig, which {self.framework} does not "
                "build: use --framework hf, peft-mc or lightning"
            )
        if self.lora_bd_blocks and self.uses_autocast:
            raise ValueError(
                "--lora-bd-blocks is modelled without autocast (what autocast makes of its "
                "block-diagonal einsum was not measured): use --precision bf16 or fp32"
            )
        if self.lora_fa:
            raise ValueError(f"{what} and --lora-fa are not combined by peft: drop one")

    def _adalora_settings_fit(self) -> None:
        """What peft's AdaLoRA and its rank allocator cannot run."""
        if self.method != "adalora":
            return
        if self.framework not in ADALORA_FRAMEWORKS:
            raise ValueError(
                f"--framework {self.framework} has no AdaLoRA (peft's AdaLoraModel and its "
                "update_and_allocate call): use --framework hf, peft-mc or lightning"
            )
        if self.optimizer_in_backward:
            raise ValueError(
                "AdaLoRA's rank allocator reads every gradient after the optimizer step, "
                "which --optimizer-in-backward frees during backward: drop it"
            )
        if self.target_r >= self.r:
            # (peft's mask_to_budget then asks torch.kthvalue for k = 0 and fails)
            raise ValueError(
                f"AdaLoRA prunes from --lora-r {self.r} (init_r) down to --adalora-target-r "
                f"{self.target_r}: the target must be below the initial rank"
            )

    def _base_quant_settings_fit(self) -> None:
        """A LLaMA-Adapter's base is 16-bit unless --quant says otherwise (quant_format),
        so the quantised base's own settings mean nothing without it."""
        if self.method not in LLAMA_ADAPTER_METHODS or self.quant is not None:
            return
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("double_quant", "compute_dtype")
            if getattr(self, name) is not None
        ]
        if given:
            verb, them = ("describes", "it") if len(given) == 1 else ("describe", "them")
            raise ValueError(
                f"{_listing(given)} {verb} a quantised base: with --method {self.method} "
                f"give --quant too (LitGPT's --quantize), or drop {them}"
            )

    def _llama_adapter_fits_framework(self) -> None:
        """The LLaMA-Adapter methods model LitGPT's code (adapters.llama_adapter: its cached,
        gradient-free prompt keys and values, the gate over sdpa). peft's adaption_prompt,
        what transformers-based frameworks would run, keeps other tensors (a prompt
        parameter per block that trains through k_proj and v_proj every forward, recomputed
        query states, an fp32 softmax over the prompt: peft 0.21.2
        src/peft/tuners/adaption_prompt/layer.py AdaptedAttention.forward), for Llama,
        Mistral and GPT-2 only (config.py TRANSFORMERS_MODEL_CONFIG): that one is
        --method adaption-prompt (adapters.adaption_prompt); peft has no v2."""
        if self.method not in LLAMA_ADAPTER_METHODS or self.framework == "litgpt":
            return
        script = "finetune_adapter_v2" if self.method == "llama-adapter-v2" else "finetune_adapter"
        if self.framework == "torchtune":
            other = "torchtune has no LLaMA-Adapter recipe"
        elif self.framework in ADALORA_FRAMEWORKS:  # (those that take any peft model)
            other = (
                f"under --framework {self.framework} use --method adaption-prompt, peft's "
                "adaption_prompt (peft has no v2)"
            )
        else:
            other = (
                f"under --framework {self.framework} it would be peft's adaption_prompt, "
                "modelled as --method adaption-prompt under --framework hf"
            )
        raise ValueError(
            f"--method {self.method} is LitGPT's (litgpt {script}): give --framework "
            f"litgpt; {other}"
        )

    def _padding_fits_framework(self) -> None:
        """packed-flex is torchtune's collate and rotary (ops.attention.packed_flex)."""
        if self.padding == "packed-flex" and self.framework != "torchtune":
            raise ValueError(
                "--padding packed-flex is torchtune's packed dataset (BlockMask and "
                "input_pos); use it with --framework torchtune, or --padding packed for a "
                "flattened row"
            )

    @model_validator(mode="after")
    def _combinations(self) -> RunConfig:
        self._method_settings_fit()
        self._allocator_settings_fit()
        self._objective_settings_fit()
        self._padding_fits_framework()
        self._llama_adapter_fits_framework()
        self._libraries_fit_framework()
        self._base_quant_settings_fit()
        self._adalora_settings_fit()
        if self.method == "partial" and self.trainable_modules is None:
            raise ValueError(
                "--method partial needs --trainable-modules (regular expressions over "
                "parameter names, e.g. self_attn,lm_head)"
            )
        if self.method == "galore" and self.optimizer not in GALORE_OPTIMIZERS:
            raise ValueError(
                f"GaLore projects Adam's states: use --optimizer adamw or adamw-8bit "
                f"(galore_torch's GaLoreAdamW / GaLoreAdamW8bit), not {self.optimizer}"
            )
        if self.optimizer_impl == "fused" and (
            self.optimizer not in TORCH_FUSED_OPTIMIZERS or self.method == "galore"
        ):
            owner = "galore_torch's GaLore" if self.method == "galore" else self.optimizer
            raise ValueError(
                f"--optimizer-impl fused is torch's AdamW / SGD kernel; {owner} has no fused "
                "variant: drop --optimizer-impl"
            )
        if self.optimizer_block_size and not self.optimizer.startswith("ao-"):
            raise ValueError(
                "--optimizer-block-size is torchao's low-bit AdamW's: use it with "
                f"--optimizer ao-adamw-8bit, ao-adamw-4bit or ao-adamw-fp8, not {self.optimizer}"
            )
        self._lora_fa_fits()
        self._lora_variants_fit()
        if self.optimizer_in_backward and self.grad_accum > 1:
            raise ValueError(
                "--optimizer-in-backward steps every micro-batch: it cannot accumulate "
                "gradients; drop --grad-accum"
            )
        if self.ia3_targets is not None and not self.ia3_targets.strip(" ,"):
            raise ValueError("--ia3-targets is empty; give e.g. k,v,down")
        if self.method == "prefix-tuning" and self.encoder_hidden and not self.prefix_projection:
            raise ValueError(
                "--encoder-hidden applies to p-tuning and to prefix-tuning with "
                "--prefix-projection only"
            )
        if self.method in KV_PREFIX_METHODS and self.grad_ckpt:
            raise ValueError(
                f"{self.method} does not work with gradient checkpointing (peft refuses it: "
                "the prefix lives in the KV cache); drop --grad-ckpt"
            )
        if self.quant == "int4" and self.double_quant is not None:
            raise ValueError("--double-quant applies to bitsandbytes' nf4/fp4, not --quant int4")
        if self.lora_modules_to_save is not None:
            parts = {x.strip() for x in self.lora_modules_to_save.split(",") if x.strip()}
            if not parts or parts - {"embed", "head"}:
                raise ValueError(
                    "--lora-modules-to-save takes embed, head or embed,head "
                    f"(got {self.lora_modules_to_save!r})"
                )
        if self.lora_targets is not None and not self.lora_targets.strip(" ,"):
            raise ValueError("--lora-targets is empty; give e.g. q,v, attention or all-linear")
        if self.autocast and self.precision == "fp32":
            raise ValueError("--autocast needs a 16-bit compute dtype; use --precision bf16-mixed")
        if self.autocast is False and self.precision.endswith("-mixed"):
            raise ValueError(f"--precision {self.precision} means autocast; drop --no-autocast")
        return self

    @model_validator(mode="after")
    def _grpo_settings_fit(self) -> RunConfig:
        """grpo's settings, refused elsewhere (trl/trainer/grpo_config.py@f2cd57710ae3
        __post_init__)."""
        given = [
            "--" + name.replace("_", "-")
            for name in GRPO_SETTINGS
            if getattr(self, name) is not None
        ]
        if self.objective != "grpo":
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise ValueError(f"{_listing(given)} only {verb} to --objective grpo")
            return self
        if self.seq_len <= self.completion:
            raise ValueError(
                f"--seq-len {self.seq_len} leaves no prompt: with --objective grpo it is the "
                f"prompt and the completion together ({self.completion} tokens, "
                "--completion-len, default TRL's 512): give e.g. "
                f"--seq-len {self.completion + 512}"
            )
        if self.generations < 2:
            raise ValueError("GRPO needs --num-generations 2 or more (TRL refuses fewer)")
        # whole groups over the data-parallel ranks: grpo.check_groups, where they are known
        if self.vllm_memory_share is not None and self.vllm is None:
            raise ValueError("--vllm-memory-share applies to --vllm colocate or server only")
        if self.vllm != "server" and (self.vllm_tensor_parallel or self.vllm_data_parallel):
            raise ValueError(
                "--vllm-tensor-parallel and --vllm-data-parallel apply to --vllm server only"
            )
        if self.framework == "torchtune":
            from ftmem.torchtune_grpo import check_recipe_settings

            check_recipe_settings(self)
        elif self.generation_prompts is not None:
            raise ValueError(
                "generation_prompts (forward_batch_size) is torchtune's GRPO recipe's; "
                "TRL's generation batch is --steps-per-generation"
            )
        return self

    def _allocator_settings_fit(self) -> None:
        """--lengths and --alloc-conf parse, each refused in its own sentence."""
        padded_lengths(self.lengths, self.seq_len)
        if self.alloc_conf is not None:
            try:
                allocator_options(self.alloc_conf)
            except ValueError as exc:
                raise ValueError(f"--alloc-conf: {str(exc).rstrip('.')}") from None

    def _objective_settings_fit(self) -> None:
        """A preference objective's settings: a reference to precompute, the standard loss."""
        if self.precompute_ref and self.objective not in REFERENCE_OBJECTIVES:
            raise ValueError(
                f"--precompute-ref applies to dpo, ipo, kto and apo-zero-unpaired, which compare "
                f"with a reference; objective {self.objective} has none"
            )
        trl = self.framework in ("hf", "axolotl")
        if self.objective in UNPAIRED_OBJECTIVES and not (
            trl or (self.framework == "llama-factory" and self.objective == "kto")
        ):
            raise ValueError(
                f"--objective {self.objective} is modelled on TRL's KTOTrainer (--framework hf; "
                "for kto, axolotl's and LLaMA-Factory's too); not on "
                f"{self.framework}'s"
            )
        if self.batch_size < smallest_batch(self.objective, self.framework):
            raise ValueError(
                "--objective kto needs --batch-size 2 or more: TRL's KTOTrainer refuses one "
                "completion per micro-batch (its KL term would equal the implied reward)"
            )
        if self.objective == "sft" or self.loss == "standard":
            return
        if self.loss != "logprob-tiles":
            raise ValueError(
                f"--objective {self.objective} is modelled with the standard loss over full "
                f"logits (TRL's log-probabilities) or --loss logprob-tiles (TRL >= 1.16's "
                f"fused LM head); drop --loss {self.loss}"
            )
        if self.objective not in TILE_OBJECTIVES:
            raise ValueError(
                f"--loss logprob-tiles applies to dpo, ipo, kto, apo-zero-unpaired and grpo "
                f"(TRL >= 1.16's DPO, KTO and GRPO trainers); {self.objective} runs in TRL's "
                "CPO or ORPO trainer, which takes full logits: drop --loss logprob-tiles"
            )
        if not trl:
            raise ValueError(
                f"--loss logprob-tiles is TRL's fused LM head (--framework hf or axolotl); "
                f"{self.framework}'s {self.objective} takes full logits: drop it"
            )

    @model_validator(mode="after")
    def _peft_method_fits(self) -> RunConfig:
        """Where and in what precision peft's adapters other than LoRA's are modelled: one
        rule for all of them (PEFT_MODEL_METHODS, NO_AUTOCAST)."""
        name = PEFT_MODEL_METHODS.get(self.method)
        if name is None and self.method not in NO_AUTOCAST:
            return self
        # LitGPT, torchtune, fsdp_qlora and Unsloth implement none of them: their own
        # sentence says so, before any setting of a run that does not exist
        check_framework_support(self.framework, self.method, self.quant, self.objective)
        if (
            self.method == "hra"
            and self.uses_autocast
            and self.adapter_dtype not in ("auto", "fp32")
        ):
            raise ValueError(
                "HRA with 16-bit hra_u under autocast is not modelled; drop --adapter-dtype"
            )
        if self.method == "miss" and self.uses_autocast and self.miss_init == "bat":
            raise ValueError(
                "MiSS bat under autocast is not modelled (its weight rebuild's casts were not "
                "measured); use --miss-init default or mini, or drop autocast"
            )
        if self.method in NO_AUTOCAST and self.uses_autocast:
            why = NO_AUTOCAST[self.method]
            raise ValueError(
                f"{PEFT_MODEL_METHODS.get(self.method, 'LoKr')} under autocast (--precision "
                f"bf16-mixed / fp16-mixed or --autocast) is not modelled"
                f"{f' ({why})' if why else ''}; use --precision bf16 or fp32 without --autocast"
            )
        return self

    @model_validator(mode="after")
    def _cartridge_tokens_fit(self) -> RunConfig:
        """Cartridge freezes at most its virtual tokens (peft 0.21.2 tuners/cartridge/
        config.py __post_init__ refuses more)."""
        if self.method == "cartridge" and self.cartridge_frozen > self.n_virtual:
            raise ValueError(
                f"--cartridge-frozen-tokens {self.cartridge_frozen} is more than the "
                f"{self.n_virtual} virtual tokens (peft refuses it); give at most that"
            )
        return self

    @model_validator(mode="after")
    def _trainable_token_ids_given(self) -> RunConfig:
        """--trainable-token-ids: a count (at most 2^20) or distinct ids."""
        spec = self.trainable_token_ids
        if spec is None:
            return self
        items = [x.strip() for x in spec.split(",") if x.strip()]
        if not items or not all(x.isdigit() and len(x) < 10 for x in items):
            raise ValueError(
                f"--trainable-token-ids {spec!r} is neither a count nor a list of token ids; "
                "give e.g. 2 or 128000,128001"
            )
        if "," not in spec and not 0 < int(items[0]) <= 2**20:
            raise ValueError("--trainable-token-ids takes a count from 1 to 1,048,576")
        if len(set(map(int, items))) != len(items):
            raise ValueError("--trainable-token-ids names a token id twice")
        return self

    @model_validator(mode="after")
    def _lycoris_targets_given(self) -> RunConfig:
        for name in (
            "loha_targets",
            "lokr_targets",
            "boft_targets",
            "oft_targets",
            "miss_targets",
            "road_targets",
            "vera_targets",
            "fourierft_targets",
            "hira_targets",
            "psoft_targets",
            "hra_targets",
            "beft_targets",
            "glora_targets",
            "peanut_targets",
            "osf_targets",
            "pvera_targets",
            "randlora_targets",
            "vblora_targets",
            "shira_targets",
            "supertuning_targets",
            "waveft_targets",
            "c3a_targets",
            "tinylora_targets",
            "adamss_targets",
            "unilora_targets",
            "lily_targets",
        ):
            value = getattr(self, name)
            if value is not None and not value.strip(" ,"):
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} is empty; give e.g. q,v, attention or all-linear")
        if (
            self.method == "miss"
            and self.miss_init == "bat"
            and self.device == "cpu"
            and self.adapter_dtype in ("bf16", "fp16")
        ):
            # peft 0.21.2 tuners/miss/layer.py get_delta_weight: cast_to_fp32 on the CPU
            raise ValueError(
                "MiSS bat with 16-bit blocks on --device cpu is not modelled (peft rebuilds "
                "the weight in fp32 there); use --adapter-dtype fp32 or --device cuda"
            )
        if self.road_group_size is not None and self.road_group_size % 2:
            raise ValueError(
                f"--road-group-size {self.road_group_size} is odd; RoAd pairs each group's "
                "halves, give an even size"
            )
        return self

    @model_validator(mode="after")
    def _shared_bank_settings_fit(self) -> RunConfig:
        """RandLoRA's and VB-LoRA's settings as peft takes them, and what is not modelled."""
        if self.method == "randlora" and self.adapter_dtype in ("bf16", "fp16"):
            # peft 0.21.2 tuners/randlora/layer.py get_scaled_bases: cast_to_fp32 on the
            # CPU, where ftmem measures; 16-bit bases on a GPU are not measured
            raise ValueError(
                "RandLoRA with 16-bit scalings (--adapter-dtype bf16 / fp16) is not modelled "
                "(peft builds its bases in fp32 on the CPU, where ftmem measures); use "
                "--adapter-dtype fp32"
            )
        if self.method == "lily" and self.lily[2] < 2:
            # peft 0.21.2 tuners/lily/config.py __post_init__ raises below 2
            raise ValueError("--lily-num-b must be at least 2 (peft's router needs two Bs)")
        _, n, _, k, _ = self.vblora
        if self.method == "vblora" and k > n:
            raise ValueError(f"--vblora-topk {k} exceeds the bank's {n} vectors (--vblora-vectors)")
        return self

    @model_validator(mode="after")
    def _rotation_settings_fit(self) -> RunConfig:
        """BOFT's and OFT's settings as peft takes them, and the regimes not modelled."""
        # peft 0.21.2 tuners/boft/config.py and tuners/oft/config.py __post_init__: the
        # block size or the block count, not both
        if self.boft_block_size is not None and self.boft_block_num is not None:
            raise ValueError("give --boft-block-size or --boft-block-num, not both")
        if self.oft_r is not None and self.oft_block_size is not None:
            raise ValueError("give --oft-r or --oft-block-size, not both")
        if self.psoft_neumann_terms == 1:
            raise ValueError(
                "--psoft-neumann-terms 1 leaves every rotation the identity (nothing trains); "
                "give 0 (the exact solve) or 2 and more"
            )
        if self.method == "psoft" and self.uses_autocast and (self.psoft_neumann_terms or 0) > 2:
            # its Q powers are matmuls, which autocast runs in 16 bits (not measured)
            raise ValueError(
                "PSOFT's Cayley-Neumann series above 2 terms under autocast is not modelled; "
                "drop --psoft-neumann-terms (the exact solve) or autocast"
            )
        if self.method == "psoft" and self.adapter_dtype not in ("auto", "fp32"):
            # peft keeps PSOFT's A and B fp32 whatever its parameters' dtype (not measured)
            raise ValueError(
                "PSOFT with 16-bit parameters is not modelled (its frozen A and B stay fp32); "
                "drop --adapter-dtype or give fp32"
            )
        if self.oft_neumann_terms == 1:
            raise ValueError(
                "--oft-neumann-terms 1 leaves every rotation the identity (nothing trains); "
                "give 0 (the exact solve) or 2 and more"
            )
        # peft 0.21.2 tuners/boft/layer.py:465 cayley_batch: linalg.solve "must be in float32"
        solves = self.method == "boft" or (self.method == "oft" and self.oft_neumann_terms == 0)
        if solves and self.adapter_dtype not in ("auto", "fp32"):
            raise ValueError(
                f"{self.method.upper()}'s Cayley solve runs in fp32 (torch has no 16-bit "
                "linalg.solve); drop --adapter-dtype or give fp32"
            )
        return self

    @model_validator(mode="after")
    def _gptq_kernel_fits(self) -> RunConfig:
        if self.gptq_kernel is not None and self.method == "qlora" and self.quant != "int4":
            raise ValueError("--gptq-kernel is the matmul of an int4 (GPTQ) base: add --quant int4")
        return self

    @model_validator(mode="after")
    def _trl_bf16_cast_fits(self) -> RunConfig:
        # TRL casts only where args.bf16 and model.is_loaded_in_4bit (sft_trainer.py), and the
        # cast is from an fp32 upcast: a 4-bit base under bf16 autocast with fp32 parameters
        if self.trl_bf16_cast and (
            self.quant_format not in ("nf4", "fp4") or self.precision != "bf16-mixed"
        ):
            raise ValueError(
                "--trl-bf16-cast is TRL's cast of a 4-bit base's fp32-upcast embedding and "
                "head under --bf16: it needs --quant nf4 or fp4 and --precision bf16-mixed"
            )
        return self

    @model_validator(mode="after")
    def _framework_supports_run(self) -> RunConfig:
        # the last check: a method's own sentence about a framework (AdaLoRA's,
        # LLaMA-Adapter's) comes first; peft's other adapters defer to it (_peft_method_fits)
        check_framework_support(self.framework, self.method, self.quant, self.objective)
        return self

    def _method_settings_fit(self) -> None:
        """Settings that belong to other methods (METHOD_SETTINGS) are refused, the
        first group of them in one sentence."""
        wrong: dict[frozenset[str], list[str]] = {}
        for name, methods in METHOD_SETTINGS.items():
            value = getattr(self, name)
            if value is None or (name == "adapter_dtype" and value == "auto"):
                continue
            if self.method not in methods:
                wrong.setdefault(methods, []).append("--" + name.replace("_", "-"))
        if wrong:
            methods, flags = next(iter(wrong.items()))
            verb = "applies" if len(flags) == 1 else "apply"
            order = [m for m in get_args(Method) if m in methods]
            raise ValueError(
                f"{_listing(flags)} only {verb} to {_listing(order)}, not --method {self.method}"
            )

    # Resolved values (what the report prints as the run actually estimated).
    @property
    def replayed_lengths(self) -> tuple[int, ...]:
        """The distinct padded lengths of a variable-length run, ascending (the last
        one seq_len); () when every batch is seq_len long."""
        return padded_lengths(self.lengths, self.seq_len)

    @property
    def replayed_steps(self) -> tuple[int, ...]:
        """The batch length of each step the reserved-peak replay runs, in order."""
        return replayed_steps(self.lengths, self.seq_len)

    @property
    def allocator(self) -> AllocatorOptions:
        """The caching allocator's options PYTORCH_CUDA_ALLOC_CONF sets (none: defaults)."""
        return allocator_options(self.alloc_conf) if self.alloc_conf else {}

    @property
    def r(self) -> int:
        # (GraloraConfig's default rank is 32: peft 0.21.2 tuners/gralora/config.py l.76)
        return self.lora_r or (DEFAULT_GRALORA_RANK if self.method == "gralora" else 8)

    @property
    def gralora_blocks(self) -> int:
        return self.gralora_k or DEFAULT_GRALORA_K

    @property
    def target_r(self) -> int:
        """AdaLoRA's target rank: peft's default 8, below the initial rank."""
        return self.adalora_target_r or max(1, min(8, self.r - 1))

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.r

    @property
    def targets(self) -> str:
        # LongLoRA adapts every attention projection, ReLoRA every linear (their scripts)
        default = {"longlora": "attention", "relora": "all-linear"}.get(self.method, "q,v")
        return self.lora_targets or default

    @property
    def modules_to_save(self) -> frozenset[str]:
        """Which outer modules get a trainable copy (peft modules_to_save)."""
        if not self.lora_modules_to_save:
            return frozenset()
        return frozenset(x.strip() for x in self.lora_modules_to_save.split(",") if x.strip())

    @property
    def galore(self) -> tuple[int, str]:
        """(rank, targets) of GaLore's projection."""
        return self.galore_rank or DEFAULT_GALORE_RANK, self.galore_targets or "all-linear"

    @property
    def bottleneck(self) -> tuple[int, str]:
        """(width, placement) of the bottleneck adapters."""
        return self.adapter_size or 64, self.adapter_placement or "houlsby"

    @property
    def adaption_prompt(self) -> tuple[int, int]:
        """(prompt length, start layer) of LLaMA-Adapter's gated adaption prompts (the
        start layer is LitGPT's; peft's adaption-prompt counts --adapter-layers from the
        top: methods.gated_blocks)."""
        length = self.adapter_prompt_length or DEFAULT_ADAPTER_PROMPT_LENGTH
        start = self.adapter_start_layer
        return length, DEFAULT_ADAPTER_START_LAYER if start is None else start

    @property
    def ia3(self) -> str:
        return self.ia3_targets or DEFAULT_IA3_TARGETS

    @property
    def loha(self) -> tuple[int, float, str]:
        """LoHa's (rank, alpha, targets), peft's defaults where not given."""
        r = self.loha_rank or DEFAULT_LOHA_RANK
        alpha = DEFAULT_LOHA_ALPHA if self.loha_alpha is None else self.loha_alpha
        return r, alpha, self.loha_targets or "q,v"

    @property
    def lokr(self) -> tuple[int, float, str, int, bool]:
        """LoKr's (rank, alpha, targets, decompose_factor, decompose_both), peft's
        defaults where not given (peft 0.21.2 tuners/lokr/config.py: r=8, alpha=8,
        decompose_factor=-1, decompose_both=False)."""
        r = self.lokr_rank or DEFAULT_LOHA_RANK
        alpha = DEFAULT_LOHA_ALPHA if self.lokr_alpha is None else self.lokr_alpha
        factor = self.lokr_factor or -1
        return r, alpha, self.lokr_targets or "q,v", factor, bool(self.lokr_decompose_both)

    @property
    def miss(self) -> tuple[int, str, int, str]:
        """MiSS's (r, init, mini_r, targets), peft's defaults where not given."""
        r = self.miss_rank or DEFAULT_MISS_RANK
        return r, self.miss_init or "default", self.miss_mini_r or 1, self.miss_targets or "q,v"

    @property
    def road(self) -> tuple[str, int, str]:
        """RoAd's (variant, group_size, targets), peft's defaults where not given."""
        group = self.road_group_size or DEFAULT_ROAD_GROUP
        return self.road_variant or "road_1", group, self.road_targets or "q,v"

    @property
    def boft(self) -> tuple[int, int, str]:
        """BOFT's (block size, block number, targets), one of the first two 0 as in
        peft (0.21.2 tuners/boft/config.py: boft_block_size=4, boft_block_num=0)."""
        if self.boft_block_num is not None:
            return 0, self.boft_block_num, self.boft_targets or "q,v"
        return self.boft_block_size or 4, 0, self.boft_targets or "q,v"

    @property
    def oft(self) -> tuple[int, int, str, bool, int]:
        """OFT's (r, block size, targets, block_share, Neumann terms; 0 terms: the exact
        solve), one of the first two 0 as in peft (0.21.2 tuners/oft/config.py: r=0,
        oft_block_size=32, block_share=False, use_cayley_neumann=True, 5 terms)."""
        terms = 5 if self.oft_neumann_terms is None else self.oft_neumann_terms
        share = bool(self.oft_block_share)
        if self.oft_r is not None:
            return self.oft_r, 0, self.oft_targets or "q,v", share, terms
        return 0, self.oft_block_size or 32, self.oft_targets or "q,v", share, terms

    @property
    def vera(self) -> tuple[int, str]:
        """VeRA's (rank, targets), peft's defaults where not given; PVeRA's for PVeRA (the
        same shared projections, adapters.vera)."""
        if self.method == "pvera":
            return self.pvera_rank or DEFAULT_PVERA_RANK, self.pvera_targets or "q,v"
        return self.vera_rank or DEFAULT_VERA_RANK, self.vera_targets or "q,v"

    @property
    def randlora(self) -> tuple[int, str]:
        """RandLoRA's (rank, targets), peft's defaults where not given."""
        return self.randlora_rank or DEFAULT_RANDLORA_RANK, self.randlora_targets or "q,v"

    @property
    def vblora(self) -> tuple[int, int, int, int, str]:
        """VB-LoRA's (rank, num_vectors, vector_length, topk, targets), peft's defaults
        where not given."""
        r, n, length, k = DEFAULT_VBLORA
        return (
            self.vblora_rank or r,
            self.vblora_vectors or n,
            self.vblora_vector_length or length,
            self.vblora_topk or k,
            self.vblora_targets or "q,v",
        )

    @property
    def tinylora(self) -> tuple[int, int, float, str]:
        """TinyLoRA's (rank, u, weight_tying, targets), peft's defaults where not given."""
        r, u, tying = DEFAULT_TINYLORA
        return (
            self.tinylora_rank or r,
            self.tinylora_u or u,
            tying if self.tinylora_weight_tying is None else self.tinylora_weight_tying,
            self.tinylora_targets or "q,v",
        )

    @property
    def adamss(self) -> tuple[int, int, int, str]:
        """AdaMSS's (r, num_subspaces, subspace_rank, targets), peft's defaults where not
        given."""
        r, k, sr = DEFAULT_ADAMSS
        return (
            self.adamss_rank or r,
            self.adamss_subspaces or k,
            self.adamss_subspace_rank or sr,
            self.adamss_targets or "q,v",
        )

    @property
    def unilora(self) -> tuple[int, int, str]:
        """UniLoRA's (rank, theta_d_length, targets), peft's defaults where not given."""
        r, length = DEFAULT_UNILORA
        return (
            self.unilora_rank or r,
            self.unilora_theta_length or length,
            self.unilora_targets or "q,v",
        )

    @property
    def lily(self) -> tuple[int, int, int, str]:
        """Lily's (rank, stride_A, num_B, targets), peft's defaults where not given."""
        r, stride, num_b = DEFAULT_LILY
        return (
            self.lily_rank or r,
            self.lily_stride_a or stride,
            self.lily_num_b or num_b,
            self.lily_targets or "q,v",
        )

    @property
    def fourierft(self) -> tuple[int, str]:
        """FourierFT's (n_frequency, targets), peft's defaults where not given."""
        n = self.fourierft_frequencies or DEFAULT_FOURIER_FREQUENCIES
        return n, self.fourierft_targets or "q,v"

    @property
    def hira(self) -> tuple[int, str]:
        """HiRA's (r, targets), peft's defaults where not given."""
        return self.hira_rank or DEFAULT_HIRA_RANK, self.hira_targets or "q,v"

    @property
    def psoft(self) -> tuple[int, str, int]:
        """PSOFT's (r, targets, Cayley-Neumann terms; 0: the exact solve), peft's defaults
        where not given."""
        r = self.psoft_rank or DEFAULT_PSOFT_RANK
        return r, self.psoft_targets or "q,v", self.psoft_neumann_terms or 0

    @property
    def hra(self) -> tuple[int, str]:
        """HRA's (r, targets), peft's defaults where not given."""
        return self.hra_rank or DEFAULT_HRA_RANK, self.hra_targets or "q,v"

    @property
    def supertuning(self) -> tuple[float, str]:
        """Super-Tuning's (sparsity, targets), peft's defaults where not given."""
        sparsity = self.supertuning_sparsity
        sparsity = DEFAULT_SUPERTUNING_SPARSITY if sparsity is None else sparsity
        return sparsity, self.supertuning_targets or "q,v"

    @property
    def shira(self) -> tuple[int, str]:
        """SHiRA's (r, targets), peft's defaults where not given."""
        return self.shira_rank or DEFAULT_SHIRA_RANK, self.shira_targets or "q,v"

    @property
    def waveft(self) -> tuple[int, str]:
        """WaveFT's (n_frequency, targets), peft's defaults where not given."""
        n = self.waveft_frequencies or DEFAULT_WAVE_FREQUENCIES
        return n, self.waveft_targets or "q,v"

    @property
    def c3a(self) -> tuple[int, str]:
        """C3A's (block_size, targets), peft's defaults where not given."""
        return self.c3a_block_size or DEFAULT_C3A_BLOCK, self.c3a_targets or "q,v"

    @property
    def glora(self) -> tuple[int, str]:
        """GLoRA's (r, targets), peft's defaults where not given (peft 0.21.2
        tuners/glora/config.py r=8; targets from the GLoRA mapping, a copy of LoRA's)."""
        return self.glora_rank or 8, self.glora_targets or "q,v"

    @property
    def peanut(self) -> tuple[int, str, int]:
        """Peanut's (r, targets, depth), peft's defaults where not given (peft 0.21.2
        tuners/peanut/config.py r=32, depth=0; targets from the Peanut mapping, a copy of
        LoRA's)."""
        return self.peanut_rank or 32, self.peanut_targets or "q,v", self.peanut_depth or 0

    @property
    def osf(self) -> str:
        """OSF's targets: peft's OSF mapping names all seven of Llama's linears and falls
        back to all linears (peft 0.21.2 tuners/osf/model.py _prepare_adapter_config)."""
        return self.osf_targets or "all-linear"

    @property
    def beft(self) -> str:
        """BEFT's targets: peft's BEFT mapping gives llama v_proj (peft 0.21.2
        utils/constants.py TRANSFORMERS_MODELS_TO_BEFT_TARGET_MODULES_MAPPING)."""
        return self.beft_targets or "v"

    @property
    def trainable_tokens(self) -> tuple[int, ...]:
        """peft's token_indices for --method trainable-tokens: the ids given, or ids 0 to
        N − 1 for a count N (which ids does not change the memory); 2 where not given, as
        PEFT's MetaMathQA run (bos and eos: trainable_tokens--llama-3.2-3B-sos+eos).
        Checked by _trainable_token_ids_given."""
        spec = self.trainable_token_ids or "2"
        items = [int(x) for x in spec.split(",") if x.strip()]
        return tuple(range(items[0])) if "," not in spec else tuple(items)

    @property
    def n_virtual(self) -> int:
        """Virtual tokens of a prompt method (0 for the others)."""
        if self.method not in PROMPT_METHODS:
            return 0
        return self.virtual_tokens or DEFAULT_VIRTUAL_TOKENS

    @property
    def positions(self) -> int:
        """Positions every block processes: prompt and P-tuning put their virtual tokens
        in front of the input (peft concatenates them and pads the labels)."""
        if self.method in ("prompt-tuning", "p-tuning"):
            return self.seq_len + self.n_virtual
        return self.seq_len

    @property
    def sequences(self) -> int:
        """Sequences one forward runs: a preference objective's chosen and rejected
        sequences go through the model concatenated, 2b of them (TRL's DPOTrainer
        _compute_loss, ORPO's and CPO's concatenated_forward); KTO's b unpaired
        completions, b (KTOTrainer _compute_loss)."""
        if self.objective in ("sft", "grpo") or self.objective in UNPAIRED_OBJECTIVES:
            return self.batch_size
        return 2 * self.batch_size

    @property
    def needs_reference(self) -> bool:
        """dpo, ipo, kto and apo-zero-unpaired compare with a reference's
        log-probabilities at train time."""
        if self.objective == "grpo" and self.framework == "torchtune":
            # the recipe loads and runs its reference whatever the loss's kl_coeff
            # (recipes/dev/grpo_full_finetune_distributed.py@bd2a0fc7c314 l. 146-157, 627)
            return True
        if self.objective == "grpo":  # GRPOTrainer loads a reference only when beta != 0
            return bool(self.kl_beta)
        return self.objective in REFERENCE_OBJECTIVES and not self.precompute_ref

    @property
    def completion(self) -> int:
        """grpo: tokens generated per completion (the positions the loss reads)."""
        return self.completion_len or DEFAULT_COMPLETION_LEN

    @property
    def generations(self) -> int:
        """grpo: completions sampled per prompt."""
        return self.num_generations or DEFAULT_NUM_GENERATIONS

    @property
    def generation_steps(self) -> int:
        """grpo: micro-batches one generation batch feeds (TRL: grad_accum by default)."""
        return self.steps_per_generation or self.grad_accum

    @property
    def iterations(self) -> int:
        """grpo: optimisation passes over one generation batch (TRL num_iterations, 1)."""
        return self.num_iterations or 1

    @property
    def gathers_for_generation(self) -> bool:
        """grpo under ZeRO-3: the whole policy gathered for generate() (TRL's default)."""
        return self.ds3_gather_for_generation is not False

    @property
    def generate_every(self) -> int:
        """grpo: micro-batches between two generations (TRL _prepare_inputs
        ``generate_every = steps_per_generation * num_iterations``)."""
        return self.generation_steps * self.iterations

    @property
    def generation_rows(self) -> int:
        """grpo: sequences one generate() call runs on one GPU (torchtune's recipe:
        forward_batch_size prompts' completions, at most the step's)."""
        if self.framework == "torchtune":
            prompts = self.batch_size // self.generations
            return min(self.generation_prompts or 1, prompts) * self.generations
        return self.batch_size * self.generation_steps

    @property
    def vllm_share(self) -> float:
        """grpo --vllm: the share of each of its GPUs vLLM reserves (TRL's default for a
        colocated engine, `trl vllm-serve`'s for a server)."""
        if self.vllm_memory_share is not None:
            return self.vllm_memory_share
        return DEFAULT_VLLM_SERVER_SHARE if self.vllm == "server" else DEFAULT_VLLM_SHARE

    @property
    def decoder_len(self) -> int:
        """An encoder-decoder's decoder positions (its labels)."""
        return self.target_len or self.seq_len

    @property
    def prefix_len(self) -> int:
        """Extra key/value positions every attention sees (prefix tuning's prefix)."""
        return self.n_virtual if self.method in KV_PREFIX_METHODS else 0

    @property
    def cartridge_frozen(self) -> int:
        """Cartridge's frozen leading tokens (peft 0.21.2 tuners/cartridge/config.py
        num_frozen_tokens: 1, the paper's attention sink)."""
        if self.method != "cartridge":
            return 0
        frozen = self.cartridge_frozen_tokens
        return 1 if frozen is None else frozen

    @property
    def encoder(self) -> str:
        return self.prompt_encoder or "mlp"

    @property
    def dropout(self) -> float:
        return self.lora_dropout or 0.0

    @property
    def quant_format(self) -> Quant | None:
        if self.method == "qlora":
            return self.quant or "nf4"
        if self.method in QUANTIZED_BASE_METHODS:
            return self.quant  # (an adapter's base is 16-bit unless --quant says otherwise)
        return None

    @property
    def uses_double_quant(self) -> bool:
        return self.quant_format is not None and (
            self.double_quant if self.double_quant is not None else True
        )

    @property
    def uses_autocast(self) -> bool:
        return self.autocast if self.autocast is not None else self.precision.endswith("-mixed")
