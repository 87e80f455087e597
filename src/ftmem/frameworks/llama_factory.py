"""LLaMA-Factory configs: finetuning_type (LoRA, freeze, full), quantisation, the fp32
upcast of trainable weights, GaLore, DeepSpeed; and the v1 format (``model:``,
``peft_config:``, ``dist_config:``) in llama_factory_v1.

Sources: hiyouga/LLaMA-Factory@ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30 (LF_HEAD below):
src/llamafactory/hparams/{model,data,finetuning}_args.py for the defaults,
model/adapter.py init_adapter for the upcast, model/model_utils/quantization.py.
"""

from __future__ import annotations

from pathlib import Path

from ftmem.errors import ConfigError
from ftmem.filekeys import Keys
from ftmem.frameworks.distributed import (
    LAUNCHER_NOTE,
    distributed_settings,
    strategy_from_deepspeed,
)
from ftmem.frameworks.router_aux import read_router_aux_loss
from ftmem.frameworks.shared import (
    FrameworkConfig,
    assume,
    attention,
    hf_optimizer,
    hf_trainer_precision,
    lora_numbers,
    peft_targets,
    settings_from,
)

LF_HEAD = "hiyouga/LLaMA-Factory@ff6d4d1"
FINETUNING = f"{LF_HEAD} hparams/finetuning_args.py"

# v0 keys that do not change memory (beyond frameworks.shared's)
V0_NO_MEMORY_EFFECT: frozenset[str] = frozenset(
    {
        "max_samples",  # how many samples are read, not how long they are
        "ddp_timeout",
        "save_only_model",  # what a checkpoint holds on disk
        "pref_beta",  # preference-loss coefficients (the stage is read)
        "pref_loss",
        "pref_ftx",
        "kto_chosen_weight",  # KTO's loss weights
        "kto_rejected_weight",
        "dataset_dir",
        "eval_dataset",  # what is evaluated; eval_strategy says whether (read)
        "val_size",
        "ray_run_name",
        "galore_scale",  # scales the projected update; no tensor of its own
        "galore_update_interval",
        # TrainingArguments' FSDP wrap unit, the decoder layer (ftmem's FSDP unit)
        "fsdp_transformer_layer_cls_to_wrap",
        # LoRA+ scales B's learning rate; PiSSA initialises the adapters from an SVD at
        # load time; DFT reweights each token's loss by its (detached) probability
        "loraplus_lr_ratio",
        "pissa_init",
        "pissa_iter",
        "pissa_convert",
        "use_dft_loss",
        "asft_alpha",  # ASFT's loss weight (use_asft_loss is noted)
        "tokenized_path",  # where the tokenized dataset is cached
        # v1's "auto" kernels, which are NPU-only (v1 kernels/interface.py _AUTO_KERNELS)
        "use_v1_kernels",
    }
)
# quantization_method values (extras/constants.py QuantizationMethod) whose checkpoint is
# shipped quantised: config.json's quantization_config says how (ftmem reads it there)
PREQUANTISED = ("gptq", "awq", "aqlm", "mxfp4", "fp8", "compressed-tensors")


def _lora(k: Keys, cfg: FrameworkConfig) -> None:
    """``finetuning_type: lora``: LoRA, DoRA, or QLoRA with bitsandbytes' 4 or 8 bits;
    LoraArguments' defaults (rank 8, alpha 2·rank, dropout 0, target all)."""
    s = cfg.settings
    s["method"] = "lora"
    lora_numbers(k, cfg, "lora_rank")
    said = f"LoraArguments default, {FINETUNING}"
    assume(cfg, "lora_r", 8, said)
    assume(cfg, "lora_alpha", 2 * s["lora_r"], said + " (lora_alpha: 2 x lora_rank)")
    if (targets := peft_targets(k.names("lora_target"))) is not None:
        s["lora_targets"] = targets
    assume(cfg, "lora_targets", "all-linear", said + " (lora_target all)")
    if k.flag("use_dora"):
        s["method"] = "dora"
    _quantization(k, cfg)


def _quantization(k: Keys, cfg: FrameworkConfig) -> None:
    """On-the-fly quantisation (quantization_bit): bitsandbytes' 4 / 8 bits are QLoRA;
    HQQ and EETQ are noted (model_utils/quantization.py configure_quantization)."""
    s = cfg.settings
    method = (k.text("quantization_method") or "bnb").lower()  # ModelArguments default
    bits = k.integer("quantization_bit")
    if bits is None:
        if method in PREQUANTISED:
            cfg.notes.append(
                f"quantization_method {method}: the checkpoint is shipped quantised; ftmem "
                "reads how from its config.json (a preset of the base is not quantised)."
            )
        return
    if method != "bnb":
        cfg.notes.append(
            f"quantization_bit {bits} with quantization_method {method} is not modelled "
            "(bitsandbytes' 4 and 8 bits are); estimated without quantisation."
        )
        return
    if bits not in (4, 8):
        raise ConfigError(
            f"{k.file}: quantization_bit {bits} with bitsandbytes is refused by LLaMA-Factory "
            "('Bitsandbytes only accepts 4-bit or 8-bit quantization')."
        )
    s["method"] = "qlora"
    if bits == 8:
        s["quant"] = "int8"
        return
    if (kind := k.choice("quantization_type", ("nf4", "fp4"))) is not None:
        s["quant"] = kind  # ModelArguments default nf4, ftmem's too
    if "double_quantization" in k:  # ModelArguments default True, ftmem's too
        s["double_quant"] = k.flag("double_quantization")


def _freeze(k: Keys, cfg: FrameworkConfig) -> None:
    """``finetuning_type: freeze``: the last ``freeze_trainable_layers`` blocks train
    (FreezeArguments default 2)."""
    cfg.settings["method"] = "freeze"
    layers = k.raw("freeze_trainable_layers")
    if isinstance(layers, int) and not isinstance(layers, bool) and layers < 0:
        raise ConfigError(
            f"{k.file}: freeze_trainable_layers {layers} trains the first blocks, which "
            "ftmem does not model (it trains the last N); give a positive number."
        )
    if (n := k.integer("freeze_trainable_layers")) is not None:
        cfg.settings["trainable_layers"] = n
    assume(cfg, "trainable_layers", 2, f"FreezeArguments.freeze_trainable_layers, {FINETUNING}")
    if k.flag("use_llama_pro"):
        cfg.notes.append(
            "use_llama_pro: the trainable blocks are spread over the model (every "
            "num_layers / N-th), estimated as the last N; the same count trains."
        )
    modules = k.names("freeze_trainable_modules") or ["all"]  # FreezeArguments default
    if modules != ["all"]:
        cfg.notes.append(
            f"freeze_trainable_modules {','.join(modules)}: only those modules of the trainable "
            "blocks train; estimated as whole blocks."
        )
    if k.names("freeze_extra_modules"):
        cfg.notes.append("freeze_extra_modules (embeddings or head training too) is not modelled.")


def _method(k: Keys, cfg: FrameworkConfig) -> str:
    """``finetuning_type``: LoRA (the default), freeze, full (OFT: refused)."""
    kind = (k.text("finetuning_type") or "").lower()
    if not kind:
        kind = "lora"
        cfg.assumed.append(f"finetuning_type lora (FinetuningArguments default, {FINETUNING})")
    if kind == "lora":
        _lora(k, cfg)
    elif kind == "freeze":
        _freeze(k, cfg)
    elif kind == "full":
        cfg.settings["method"] = "full"
    elif kind == "oft":
        raise ConfigError(
            f"{k.file}: finetuning_type oft (orthogonal finetuning) is not modelled by ftmem."
        )
    else:
        raise k.wrong("finetuning_type", "one of lora, freeze, full or oft")
    return kind


def _variants(k: Keys, cfg: FrameworkConfig) -> None:
    """rsLoRA over LoRA and GaLore over full finetuning (GaloreArguments: rank 16, every
    linear); APOLLO and BAdam noted."""
    s = cfg.settings
    if k.flag("use_rslora") and s.get("method") == "lora":
        s["method"] = "rslora"
    if k.flag("use_galore") and s.get("method") == "full":
        s["method"] = "galore"
        if (rank := k.integer("galore_rank")) is not None:
            s["galore_rank"] = rank
        assume(cfg, "galore_rank", 16, f"GaloreArguments default, {FINETUNING}")
        s["galore_targets"] = peft_targets(k.names("galore_target")) or "all-linear"
        if k.flag("galore_layerwise"):
            s["optimizer_in_backward"] = True
    for key, what in (
        ("use_apollo", "APOLLO's optimizer"),
        ("use_badam", "BAdam's optimizer"),
        ("use_adam_mini", "Adam-mini (one second moment per parameter block)"),
        ("use_muon", "Muon (one momentum buffer for the 2-D weights)"),
    ):
        if k.flag(key):
            cfg.notes.append(f"{key}: {what} is not modelled; estimated with AdamW.")


def _upcast(k: Keys, cfg: FrameworkConfig, kind: str) -> None:
    """init_adapter casts every trainable parameter to fp32 unless pure_bf16 or use_badam,
    or ZeRO-3 without quantisation (model/adapter.py, cast_trainable_params_to_fp32); the
    model is loaded in its checkpoint's dtype (model/loader.py torch_dtype="auto"). Under
    DeepSpeed the engine casts the model to 16 bits again (ftmem's zero* strategies)."""
    s = cfg.settings
    quantised = s.get("method") == "qlora"
    strategy = str(s.get("strategy", ""))
    zero3 = strategy == "zero3" and not quantised
    if k.flag("pure_bf16") and zero3:
        raise ConfigError(
            f"{k.file}: pure_bf16 with DeepSpeed ZeRO-3 is refused by LLaMA-Factory "
            "(hparams/parser.py: '`pure_bf16` is incompatible with DeepSpeed ZeRO-3')."
        )
    if k.flag("pure_bf16"):  # the checkpoint's 16 bits throughout, no autocast
        s.pop("autocast", None)
        s["precision"] = "bf16"
    if k.flag("pure_bf16") or k.flag("use_badam") or zero3:
        if s["method"] in ("lora", "rslora", "dora", "qlora") and s["precision"] in (
            "bf16",
            "fp16",
        ):
            s["adapter_dtype"] = s["precision"]  # peft autocast_adapter_dtype=False
        return
    if kind == "full" and not strategy.startswith("zero"):
        # fp32 trainable weights; bf16 / fp16 is then HF Trainer's autocast over them
        if s.pop("autocast", None):
            s["precision"] = "bf16-mixed"
        elif s["precision"] != "fp16-mixed":
            s["precision"] = "fp32"
    elif kind == "freeze" and not strategy.startswith("zero"):
        cfg.notes.append(
            "freeze: LLaMA-Factory casts the trainable blocks to fp32 (their gradients and "
            "Adam states too) and keeps the frozen ones in the checkpoint's dtype; ftmem has "
            "one weight dtype and counts the trainable blocks in it (8 bytes per trainable "
            "parameter fewer than the run holds)."
        )


def _stage(k: Keys, cfg: FrameworkConfig) -> str:
    """``stage`` (FinetuningArguments default sft): pt and sft are one model's
    next-token loss; the preference and RL stages are noted."""
    stage = (k.text("stage") or "sft").lower()
    if "stage" not in k:
        cfg.assumed.append(f"stage sft (FinetuningArguments default, {FINETUNING})")
    if stage == "dpo":
        _preference_loss(k, cfg)
    elif stage == "kto":
        # CustomKTOTrainer: loss_type kto, the KL sequences' forwards, the reference (the
        # adapter disabled under LoRA, else a copy: train/kto/workflow.py create_ref_model)
        cfg.settings["objective"] = "kto"
    elif stage in ("rm", "ppo"):
        cfg.notes.append(
            f"stage {stage}: estimated as supervised finetuning of one model; a reference or "
            "reward model, a value head and pairwise batches are not counted."
        )
    elif stage not in ("pt", "sft"):
        raise k.wrong("stage", "one of pt, sft, rm, ppo, dpo or kto")
    return stage


# stage dpo's pref_loss (FinetuningArguments, default sigmoid) as --objective: every loss
# but orpo and simpo compares with the reference (use_ref_model), and all of them run
# chosen and rejected as one batch (train/dpo/trainer.py concatenated_forward)
PREF_LOSSES = {
    "sigmoid": "dpo",
    "hinge": "dpo",
    "kto_pair": "dpo",
    "ipo": "ipo",
    "orpo": "orpo",
    "simpo": "simpo",
}


def _preference_loss(k: Keys, cfg: FrameworkConfig) -> None:
    """stage dpo: the objective its pref_loss names (the reference: the adapter disabled
    under LoRA, else a copy of the model, train/trainer_utils.py create_ref_model)."""
    loss = k.choice("pref_loss", tuple(PREF_LOSSES))
    if loss is None:
        assume(cfg, "objective", "dpo", f"pref_loss sigmoid; {FINETUNING} RLHFArguments")
    else:
        cfg.settings["objective"] = PREF_LOSSES[loss]
        if loss in ("hinge", "kto_pair"):
            cfg.notes.append(
                f"pref_loss {loss}: estimated as dpo (the same pair forward and reference "
                "log-probabilities)."
            )


# the methods LLaMA-Factory hands to Unsloth's get_peft_model (model/adapter.py
# _setup_lora_tuning: finetuning_type lora, with or without quantization_bit)
UNSLOTH_METHODS = frozenset({"lora", "rslora", "qlora", "dora"})


def _kernels(k: Keys, cfg: FrameworkConfig, stage: str) -> None:
    s = cfg.settings
    flash = k.raw("flash_attn")
    if isinstance(flash, bool):  # older LLaMA-Factory: a switch for FlashAttention-2
        if flash:
            s["attn"] = "flash"
    elif (attn := attention(k, "flash_attn", cfg)) is not None:
        s["attn"] = attn
    # Liger's fused linear cross-entropy only where the stage needs no logits
    # (model/loader.py apply_liger_kernel(require_logits=stage not in ["pt", "sft"]))
    if k.flag("enable_liger_kernel"):
        if stage in ("pt", "sft"):
            s["loss"] = "fused"
        cfg.notes.append(
            "enable_liger_kernel: Liger's other kernels (RMSNorm, SwiGLU) are not modelled."
        )
    # (quantization_bit 8: Unsloth is given load_in_4bit False only, a 16-bit base)
    unsloth_path = (
        stage in ("pt", "sft") and s.get("method") in UNSLOTH_METHODS and s.get("quant") != "int8"
    )
    if k.flag("use_unsloth") and unsloth_path:
        # model/loader.py: FastLanguageModel.from_pretrained, then model/adapter.py
        # get_unsloth_peft_model, both with use_gradient_checkpointing="unsloth" whatever
        # disable_gradient_checkpointing says (model/model_utils/unsloth.py@ff6d4d12eeb0)
        s["framework"] = "unsloth"
        s["grad_ckpt"] = True
        cfg.notes.append(
            "use_unsloth: Unsloth's path (ftmem.profiles.UNSLOTH), with its offloaded "
            "gradient checkpointing (FastLanguageModel.get_peft_model "
            'use_gradient_checkpointing="unsloth").'
        )
    for key, what in (
        ("use_unsloth", "Unsloth's kernels outside LoRA SFT / pre-training"),
        ("use_unsloth_gc", "Unsloth's offloaded gradient checkpointing"),
        ("neat_packing", "neat_packing's block-diagonal attention mask"),
        ("upcast_lmhead_output", "upcast_lmhead_output's fp32 logits"),
        ("shift_attn", "LongLoRA's shifted short attention (shift_attn)"),
    ):
        if k.flag(key) and not (key == "use_unsloth" and unsloth_path):
            cfg.notes.append(f"{key}: {what} not modelled; the estimate is without.")
    _vision(k, cfg)


def _vision(k: Keys, cfg: FrameworkConfig) -> None:
    """freeze_vision_tower and freeze_multi_modal_projector, both true by default
    (hparams/model_args.py@ff6d4d12eeb0): an image-text model's tower and projector stay
    frozen under every finetuning_type unless they say otherwise (the profile's default,
    profiles.Profile.freezes_vision); with LoRA, an unfrozen
    tower takes adapters (model/model_utils/visual.py get_forbidden_modules), which ftmem
    does not model."""
    s = cfg.settings
    tower = "freeze_vision_tower" in k and not k.flag("freeze_vision_tower")
    projector = "freeze_multi_modal_projector" in k and not k.flag("freeze_multi_modal_projector")
    lora = s.get("method") in ("lora", "dora", "qlora")
    if tower and lora:
        cfg.notes.append(
            "freeze_vision_tower false: LoRA in the vision tower is not modelled; the "
            "estimate keeps the tower frozen."
        )
    # (left unset, both stay frozen: profiles.Profile.freezes_vision)
    if tower and not lora:
        s["vision_tower"] = "full"
    if projector or (tower and not lora):
        s["projector"] = "full"
    for key in ("image_max_pixels", "video_max_pixels"):
        if key in k:
            cfg.notes.append(
                f"{key}: images per sample come from the dataset (give --images N); "
                "dynamic-resolution towers (Qwen2-VL) and video are not modelled."
            )
            break


def _other_engines(k: Keys, cfg: FrameworkConfig) -> None:
    """Megatron-Core (examples/megatron: tensor / pipeline / expert parallel keys) and
    KTransformers (use_kt: MoE experts on the CPU) replace HF Trainer's step."""
    megatron = ("tensor_model_parallel_size", "pipeline_model_parallel_size")
    if any(key in k for key in megatron):
        cfg.notes.append(
            "Megatron-Core training (its tensor, pipeline and expert parallel keys) is not "
            "modelled; estimated as HF Trainer's step on one GPU."
        )
    if k.flag("use_kt"):
        cfg.notes.append("use_kt: KTransformers' CPU-side experts are not modelled.")
    # under USE_RAY=1 (extras/misc.py use_ray), ray_num_workers data-parallel workers of
    # one device each (train/tuner.py _ray_training_function; hparams/training_args.py
    # RayArguments, whose example says "Number of GPUs to use")
    workers = k.integer("ray_num_workers")
    if workers is not None and workers > 1:
        cfg.settings["gpus"] = workers
        cfg.notes = [n for n in cfg.notes if n != LAUNCHER_NOTE]
        cfg.notes.append(
            f"ray_num_workers {workers}: with USE_RAY=1, Ray runs {workers} data-parallel "
            "workers of one GPU each: estimated per GPU on that many (without USE_RAY the "
            "launcher decides: give --gpus)."
        )
    _training_extras(k, cfg)


# training_args.py fp8 (Accelerate's FP8 recipes), model_args.py mixture_of_depths,
# finetuning_args.py use_asft_loss / use_eaft_loss (train/sft/workflow.py creates ASFT's
# reference with create_ref_model), all at hiyouga/LLaMA-Factory@ff6d4d1
EXTRAS_NOT_MODELLED = {
    "fp8": "FP8 training through Accelerate (fp8_backend; FP8 matmuls and, with "
    "fp8_enable_fsdp_float8_all_gather, FP8 all-gathers) is not modelled; estimated in bf16",
    "mixture_of_depths": "mixture-of-depths (blocks skipped by a router) is not modelled; "
    "estimated with every block",
    "use_asft_loss": "ASFT's reference model (a frozen second copy, create_ref_model) and its "
    "forward are not counted",
    "use_eaft_loss": "EAFT's entropy over the vocabulary (a logits-sized softmax) is not counted",
}


def _training_extras(k: Keys, cfg: FrameworkConfig) -> None:
    """Switches of LLaMA-Factory's that change the step and that ftmem does not model;
    the checkpointing variant it uses (use_reentrant_gc, ModelArguments default true)."""
    for key, what in EXTRAS_NOT_MODELLED.items():
        if k.raw(key) not in (None, False):
            cfg.notes.append(f"{key}: {what}.")
    reentrant = k.flag("use_reentrant_gc") if "use_reentrant_gc" in k else True
    if cfg.settings.get("grad_ckpt") and reentrant:
        cfg.notes.append(
            "use_reentrant_gc true (ModelArguments' default, model_utils/checkpointing.py): "
            "estimated as non-reentrant checkpointing (the variant ftmem measures)."
        )


def _evaluation(k: Keys, cfg: FrameworkConfig) -> None:
    """HF Trainer evaluates when eval_strategy is steps or epoch, a no-grad forward at
    per_device_eval_batch_size (transformers TrainingArguments default 8)."""
    strategy = k.text("eval_strategy") or k.text("evaluation_strategy") or "no"
    if strategy.lower() == "no":
        return
    if (batch := k.integer("per_device_eval_batch_size")) is not None:
        cfg.settings["eval_batch_size"] = batch
    assume(cfg, "eval_batch_size", 8, "transformers TrainingArguments.per_device_eval_batch_size")


LLAMA_FACTORY_NUMBERS = (
    ("cutoff_len", "seq_len"),
    ("per_device_train_batch_size", "batch_size"),
    ("gradient_accumulation_steps", "grad_accum"),
)
# the keys read; read_framework_config lists every other one as ignored
LLAMA_FACTORY_KEYS = frozenset(
    {
        *(key for key, _ in LLAMA_FACTORY_NUMBERS),
        "model_name_or_path",
        "finetuning_type",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_target",
        "use_dora",
        "use_rslora",
        "quantization_bit",
        "quantization_method",
        "quantization_type",
        "double_quantization",
        "freeze_trainable_layers",
        "freeze_trainable_modules",
        "freeze_extra_modules",
        "use_llama_pro",
        "use_kt",
        "eval_strategy",
        "evaluation_strategy",
        "per_device_eval_batch_size",
        "disable_gradient_checkpointing",
        "optim",
        "bf16",
        "fp16",
        "pure_bf16",
        "flash_attn",
        "deepspeed",
        "fsdp",
        "fsdp_config",
        "stage",
        "use_unsloth",
        "use_unsloth_gc",
        "enable_liger_kernel",
        "neat_packing",
        "upcast_lmhead_output",
        "shift_attn",
        "image_max_pixels",
        "video_max_pixels",
        "freeze_vision_tower",
        "freeze_multi_modal_projector",
        "use_galore",
        "galore_rank",
        "galore_target",
        "galore_layerwise",
        "use_apollo",
        "use_badam",
        "packing",
        "moe_aux_loss_coef",
        # read with their switch: APOLLO's and BAdam's settings, noted with it
        *("apollo_rank", "apollo_target", "apollo_scale", "apollo_scale_type"),
        *("apollo_layerwise", "apollo_update_interval", "apollo_proj", "apollo_proj_type"),
        *("badam_mode", "badam_switch_mode", "badam_switch_interval", "badam_start_block"),
        *("badam_update_ratio", "badam_mask_mode", "badam_verbose"),
        "use_adam_mini",
        "use_muon",
        "ray_num_workers",
        *EXTRAS_NOT_MODELLED,
        "fp8_backend",  # with fp8, noted
        "fp8_enable_fsdp_float8_all_gather",
        "use_reentrant_gc",
    }
)


# keys of `llamafactory-cli chat / webchat / api` (hparams/generating_args.py, model_args.py
# infer_backend) and `llamafactory-cli export` (model_args.py ExportArguments) configs,
# which train nothing (examples/inference, examples/merge_lora)
NOT_TRAINING_KEYS = ("infer_backend", "export_dir")


def _trains(k: Keys) -> None:
    """An inference, export or prediction-only config is refused, not estimated as a
    training run: run_sft trains only under do_train (train/sft/workflow.py)."""
    what = None
    if k.raw("infer_backend") is not None:
        what = "an inference config (`llamafactory-cli chat`: infer_backend)"
    elif k.raw("export_dir") is not None:
        what = "an export config (`llamafactory-cli export`: export_dir)"
    elif k.flag("do_predict") and not k.flag("do_train"):
        what = "a prediction config (do_predict without do_train)"
    if what:
        raise ConfigError(f"{k.file}: {what}, not a training one; ftmem estimates training runs.")


def read(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
    if is_v1({key: k.raw(key) for key in k}):
        return read_v1(k, cfg, base)
    _trains(k)
    s = cfg.settings
    cfg.model = k.text("model_name_or_path")
    kind = _method(k, cfg)
    settings_from(k, cfg, LLAMA_FACTORY_NUMBERS)
    assume(cfg, "seq_len", 2048, f"DataArguments.cutoff_len, {LF_HEAD} hparams/data_args.py")
    assume(
        cfg,
        "batch_size",
        8,
        "transformers TrainingArguments.per_device_train_batch_size, which LLaMA-Factory's "
        "TrainingArguments extend",
    )
    # checkpointing is on unless disable_gradient_checkpointing (ModelArguments default
    # False; model/model_utils/checkpointing.py prepare_model_for_training)
    s["grad_ckpt"] = not k.flag("disable_gradient_checkpointing")
    hf_optimizer(k, "optim", cfg)
    hf_trainer_precision(k, cfg)
    # LLaMA-Factory's TrainingArguments are HF Seq2SeqTrainingArguments: a DeepSpeed JSON,
    # or TrainingArguments' own fsdp / fsdp_config (examples/extras/fp8/llama3_fp8_fsdp_sft.yaml)
    distributed_settings(k, base, cfg)
    _upcast(k, cfg, kind)
    _variants(k, cfg)
    stage = _stage(k, cfg)
    _kernels(k, cfg, stage)
    _evaluation(k, cfg)
    _other_engines(k, cfg)
    _packing_or_padding(k, cfg, stage)
    _moe_aux_loss(k, cfg)
    return LLAMA_FACTORY_KEYS


def _packing_or_padding(k: Keys, cfg: FrameworkConfig, stage: str) -> None:
    """packing (default: on for stage pt, hparams/parser.py l.645) fills every sequence to
    cutoff_len, the length ftmem estimates at either way. ``packing: false`` in SFT: the
    collator (SFTDataCollatorWith4DAttentionMask, a transformers DataCollatorForSeq2Seq
    whose padding defaults to longest) pads each batch to its longest sequence, rounded
    up to a multiple of 8 while training (train/sft/workflow.py l.62-65; the block-diagonal
    mask only with neat_packing, data/collator.py l.535-543). Silence keeps ftmem's
    default (explicit statements only, as for TRL and axolotl)."""
    packing = k.flag("packing")
    if stage != "sft" or "packing" not in k or packing or k.flag("neat_packing"):
        return
    batch = cfg.settings.get("batch_size", 1)
    if batch > 1:
        cfg.settings["padding"] = "longest"
    else:
        cfg.notes.append(
            "packing false at per_device_train_batch_size 1: the collator rounds the one "
            "sequence up to a multiple of 8 (pad_to_multiple_of=8, train/sft/workflow.py), "
            "whose padding mask is not counted (give --padding max-length to count it)."
        )


# model types whose config LLaMA-Factory sets output_router_logits on when moe_aux_loss_coef
# is given and non-zero (model/model_utils/moe.py configure_moe l.160-186 @ff6d4d1; a
# multimodal model's text_config for qwen3_moe and glm4v_moe_text)
LF_ROUTER_LOGITS_TYPES = frozenset(
    {
        *("dbrx", "ernie4_5_moe", "granitemoe", "jamba", "jetmoe", "llama4", "mixtral"),
        *("olmoe", "phimoe", "qwen2_moe", "qwen3_moe", "glm4v_moe_text"),
    }
)


def _moe_aux_loss(k: Keys, cfg: FrameworkConfig) -> None:
    """moe_aux_loss_coef (ModelArguments default None, hparams/model_args.py l.141):
    configure_moe returns at once when it is None or 0 (moe.py l.161)."""
    coef = k.number("moe_aux_loss_coef")
    if coef:
        said = f"moe_aux_loss_coef {coef:g}"
        read_router_aux_loss(cfg, True, said, LF_ROUTER_LOGITS_TYPES)


# -- LLaMA-Factory v1 (llamafactory-cli v1 sft|dpo|rm; src/llamafactory/v1) ----------------

V1 = f"{LF_HEAD} v1"
V1_TRAINING = f"{V1}/config/training_args.py TrainingArguments"
# v1 keys that do not change memory
V1_NO_MEMORY_EFFECT = frozenset(
    {
        "train_dataset",
        "eval_dataset",
        "sample_backend",  # the sampler of `llamafactory-cli chat`, not the training step
        "max_new_tokens",
        "init_config",  # how the weights are first put in place (meta, CPU, GPU)
        "dist_timeout",
        "batching_workers",
        "full_determinism",
        "save_epochs",
        "save_ckpt_as_hf",
        "custom_chat_template",
        "lr_scheduler_config",
        "simpo_gamma",
        "dpo_label_smoothing",
        "ld_alpha",
        "dp_size",
        "cp_mode",
    }
)
V1_KEYS = frozenset(
    {
        "model",
        "model_class",
        "peft_config",
        "quant_config",
        "kernel_config",
        "dist_config",
        "micro_batch_size",
        "global_batch_size",
        "cutoff_len",
        "bf16",
        "enable_activation_checkpointing",
        "flash_attn",
        "optim_config",
        "cp_size",
        "batching_strategy",
        "mp_replicate_size",
    }
)


def is_v1(data: dict[str, object]) -> bool:
    """The v1 format: ``model`` a name beside v1-only keys (its hparams are v0's
    ``model_name_or_path``, ``finetuning_type``...)."""
    v1_only = ("model_class", "dist_config", "peft_config", "kernel_config", "quant_config")
    return isinstance(data.get("model"), str) and any(key in data for key in v1_only)


def _v1_peft(k: Keys, cfg: FrameworkConfig) -> str:
    """peft_config (plugins/model_plugins/peft.py LoraParams: r 8, alpha 16, dropout 0.05,
    target all; FreezeParams: the last 2 blocks); none: full tuning."""
    s = cfg.settings
    peft = k.section("peft_config")
    name = (peft.text("name") or "full").lower() if "peft_config" in k else "full"
    said = f"{V1}/plugins/model_plugins/peft.py"
    if name == "lora":
        s["method"] = "lora"
        lora_numbers(peft, cfg, "r")
        for setting, value in (("lora_r", 8), ("lora_alpha", 16), ("lora_dropout", 0.05)):
            assume(cfg, setting, value, f"LoraParams default, {said}")
        if (targets := peft_targets(peft.names("target_modules"))) is not None:
            s["lora_targets"] = targets
        assume(cfg, "lora_targets", "all-linear", f"LoraParams.target_modules all, {said}")
        if peft.flag("use_dora"):
            s["method"] = "dora"
        elif peft.flag("use_rslora"):
            s["method"] = "rslora"
    elif name == "freeze":
        _freeze(peft, cfg)
    elif name != "full":
        raise peft.wrong("name", "lora or freeze (or no peft_config: full tuning)")
    return name


def _v1_quant(k: Keys, cfg: FrameworkConfig) -> None:
    """quant_config (plugins/model_plugins/quantization.py BnbParams: 4 bits by default,
    nf4, double quantisation, compute in float16)."""
    quant = k.section("quant_config")
    if "quant_config" not in k or k.raw("quant_config") is None:
        return
    name = (quant.text("name") or "auto").lower()
    if name not in ("bnb", "auto"):
        cfg.notes.append(f"quant_config {name} is not modelled; estimated without quantisation.")
        return
    bits = quant.integer("quantization_bit") or 4
    if bits not in (4, 8):
        raise quant.wrong("quantization_bit", "4 or 8")
    s = cfg.settings
    if s.get("method") not in ("lora", "dora", "rslora"):
        raise ConfigError(
            f"{k.file}: quant_config trains LoRA adapters only; give peft_config lora."
        )
    s["method"] = "qlora"
    if bits == 8:
        s["quant"] = "int8"
        return
    if (kind := quant.choice("quantization_type", ("nf4", "fp4"))) is not None:
        s["quant"] = kind
    if "double_quantization" in quant:
        s["double_quant"] = quant.flag("double_quantization")
    dtypes = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
    compute = quant.choice("compute_dtype", dtypes)
    s["compute_dtype"] = dtypes[compute] if compute else "fp16"
    if compute is None:
        cfg.assumed.append(
            f"compute_dtype fp16 (BnbParams.compute_dtype float16, {V1}/plugins/model_plugins/"
            "quantization.py)"
        )


def _v1_dist(k: Keys, cfg: FrameworkConfig, base: Path) -> None:
    """dist_config: fsdp2 (plugins/trainer_plugins/distributed/fsdp2.py FSDP2Engine: one
    unit per decoder layer, reshard_after_forward True, offload_params False) or deepspeed
    (its config_file)."""
    if k.raw("dist_config") is None:
        return
    dist = k.section("dist_config")
    name = (dist.text("name") or "").lower()
    s = cfg.settings
    if name == "fsdp2":
        resharded = dist.raw("reshard_after_forward") is not False
        s["strategy"] = "fsdp" if resharded else "fsdp-grad-op"
        if dist.flag("offload_params"):
            s["offload_params"] = s["offload_optimizer"] = "cpu"  # CPUOffloadPolicy
        if (k.integer("mp_replicate_size") or 1) > 1:
            s["strategy"] = "fsdp-hybrid"
        cfg.notes.append(LAUNCHER_NOTE)
    elif name == "deepspeed":
        strategy_from_deepspeed(dist, "config_file", base, cfg)
    else:
        cfg.notes.append(f"dist_config {name} is not modelled; estimated on one GPU.")


def _v1_precision(k: Keys, cfg: FrameworkConfig, peft: str) -> None:
    """v1 runs no autocast: full tuning casts the model to fp32 (core/model_engine.py) and
    FSDP2's MixedPrecisionPolicy(param_dtype=bf16) when bf16 (default true) computes in
    bf16; DeepSpeed casts to 16 bits itself. LoRA and freeze keep the checkpoint's dtype
    (bf16), adapters and unfrozen blocks fp32 (peft's autocast_adapter_dtype; FreezeParams
    cast_trainable_params_to_fp32)."""
    s = cfg.settings
    bf16 = k.flag("bf16") if "bf16" in k else True
    if "bf16" not in k:
        cfg.assumed.append(f"bf16 true ({V1_TRAINING})")
    strategy = str(s.get("strategy", ""))
    sharded_16 = bf16 and (strategy.startswith("fsdp") or strategy.startswith("zero"))
    if peft == "full":
        s["precision"] = "bf16-mixed" if sharded_16 else "fp32"
        return
    s["precision"] = "bf16"
    if sharded_16:
        s["autocast"] = True  # the fp32 adapters computed in bf16 by the FSDP2 policy
    if peft == "freeze" and not strategy.startswith("zero"):
        cfg.notes.append(
            "freeze: LLaMA-Factory casts the trainable blocks to fp32 (their gradients and "
            "Adam states too) and keeps the frozen ones in the checkpoint's dtype; ftmem has "
            "one weight dtype and counts the trainable blocks in it (8 bytes per trainable "
            "parameter fewer than the run holds)."
        )


def _v1_numbers(k: Keys, cfg: FrameworkConfig) -> None:
    s = cfg.settings
    settings_from(k, cfg, (("micro_batch_size", "batch_size"), ("cutoff_len", "seq_len")))
    assume(cfg, "batch_size", 1, f"micro_batch_size 1, {V1_TRAINING}")
    assume(cfg, "seq_len", 2048, f"cutoff_len 2048, {V1_TRAINING}")
    ckpt = (
        k.flag("enable_activation_checkpointing")
        if "enable_activation_checkpointing" in k
        else None
    )
    if ckpt is None:
        assume(cfg, "grad_ckpt", True, f"enable_activation_checkpointing true, {V1_TRAINING}")
    else:
        s["grad_ckpt"] = ckpt
    if (cp := k.integer("cp_size")) is not None and cp > 1:
        s["cp"] = cp
        cfg.notes.append(
            f"cp_size {cp}: each GPU holds cutoff_len / {cp} tokens (DeepSpeed-Ulysses "
            "all-to-alls around attention are not counted)."
        )
    if k.integer("global_batch_size") is not None:
        cfg.notes.append(
            "global_batch_size: the accumulation depends on the GPU count; not applied."
        )
    strategy = (k.text("batching_strategy") or "normal").lower()
    if strategy != "normal":
        cfg.notes.append(
            f"batching_strategy {strategy}: sequences packed or batched by tokens; estimated "
            f"as micro_batch_size x cutoff_len padded batches."
        )
    if (attn := attention(k, "flash_attn", cfg)) is not None:
        s["attn"] = attn


def _v1_extras(k: Keys, cfg: FrameworkConfig) -> None:
    kernels = (k.section("kernel_config").text("name") or "auto").lower()
    if "liger_kernel" in kernels:
        cfg.settings["loss"] = "fused"  # Liger's fused linear cross-entropy
    optim = k.section("optim_config").text("name") if k.raw("optim_config") else None
    if optim:
        cfg.notes.append(f"optim_config {optim} is not modelled; the estimate assumes AdamW.")
    model_class = (k.text("model_class") or "llm").lower()
    if model_class != "llm":
        cfg.notes.append(f"model_class {model_class}: estimated as a causal LM.")


def read_v1(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
    """The v1 format: no HF Trainer; BaseTrainer with torch AdamW
    (core/base_trainer.py: torch.optim.AdamW when optim_config is none)."""
    cfg.model = k.text("model")
    cfg.notes.append(
        "LLaMA-Factory v1: the stage is the command (llamafactory-cli v1 sft, dpo or rm), "
        "not in the file; estimated as supervised finetuning of one model."
    )
    peft = _v1_peft(k, cfg)
    _v1_quant(k, cfg)
    _v1_dist(k, cfg, base)
    _v1_precision(k, cfg, peft)
    _v1_numbers(k, cfg)
    _v1_extras(k, cfg)
    return V1_KEYS


# this framework's keys that do not change memory (beyond frameworks.shared's), both formats
NO_MEMORY_EFFECT: frozenset[str] = V0_NO_MEMORY_EFFECT | V1_NO_MEMORY_EFFECT
