"""TRL configs (SFTConfig, DPOConfig, KTOConfig, GRPOConfig, with the ModelConfig and
ScriptArguments of ``trl <command> --config``) and HF TrainingArguments, in JSON or YAML.

The two share their keys but not their defaults: TRL checkpoints, trains in bf16 and
truncates to 1024 tokens where the file is silent, TrainingArguments does none of it.
A file is read as TRL's when it has a key only TRL has (max_length, packing, use_peft,
...) or is a YAML file without the keys of transformers' example scripts: TRL's CLI
takes YAML (``trl sft --config FILE``), transformers' scripts mostly flags or JSON.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ftmem.errors import ConfigError
from ftmem.filekeys import Keys
from ftmem.frameworks.distributed import (
    LAUNCHER_NOTE,
    distributed_settings,
    framework_path,
    read_launcher_config,
)
from ftmem.frameworks.router_aux import moe_with_router_loss, read_router_aux_loss
from ftmem.frameworks.shared import (
    MAX_CONFIG_BYTES,
    FrameworkConfig,
    assume,
    attention,
    galore_args,
    hf_optimizer,
    hf_trainer_precision,
    lora_numbers,
    peft_targets,
    settings_from,
    with_target_parameters,
)
from ftmem.textfiles import read_text

# the sources of the defaults (the TRL mirror's HEAD; transformers as installed)
TRL_AT = "huggingface/trl {}@f2cd57710ae345ea6428ae95363267fcf38a3dc8"
HF_ARGS = "transformers src/transformers/training_args.py@5.24.0 TrainingArguments"

# keys of TRL's configs (SFTConfig, DPOConfig, ..., ModelConfig) that neither
# TrainingArguments nor transformers' example scripts have
TRL_ONLY_KEYS = frozenset(
    {
        "max_length",
        "max_seq_length",
        "dataset_text_field",
        "packing",
        "packing_strategy",
        "padding_free",
        "completion_only_loss",
        "assistant_only_loss",
        "loss_type",
        "activation_offloading",
        "model_init_kwargs",
        "dataset_kwargs",
        "eval_packing",
        "use_peft",
        "lora_r",
        "lora_target_modules",
        "load_in_4bit",
        "load_in_8bit",
        "use_bnb_nested_quant",
        "bnb_4bit_quant_type",
        "model_revision",
        "disable_dropout",
        "beta",
        "accelerate_config",
        "num_processes",
    }
)
# transformers' example scripts' own arguments (run_clm, run_summarization,
# run_translation DataTrainingArguments; Seq2SeqTrainingArguments)
HF_SCRIPT_KEYS = frozenset(
    {
        "max_source_length",
        "max_target_length",
        "block_size",
        "source_prefix",
        "predict_with_generate",
        "pad_to_max_length",
        "text_column",
        "summary_column",
        "source_lang",
        "target_lang",
        "generation_max_length",
        "generation_num_beams",
        "train_file",
        "validation_file",
    }
)
# the keys that tell TRL's trainers apart (trl/trainer/*_config.py), the first match wins
TRL_TRAINERS = (
    (
        "GRPO",
        {
            "num_generations",
            "max_completion_length",
            "use_vllm",
            "vllm_mode",
            "reward_weights",
            "reward_funcs",
        },
    ),
    ("KTO", {"desirable_weight", "undesirable_weight"}),
    ("CPO", {"cpo_alpha", "simpo_gamma"}),  # trl/experimental/cpo/cpo_config.py
    ("DPO", {"precompute_ref_log_probs", "rpo_alpha", "ref_model_init_kwargs", "beta"}),
)

# this framework's keys that do not change memory (beyond frameworks.shared's)
NO_MEMORY_EFFECT: frozenset[str] = frozenset(
    {
        # CPOConfig's SimPO margin and AlphaPO's reward shape: scalars of the loss over the
        # (2b,) sequence log-probabilities (trl/experimental/cpo/cpo_trainer.py cpo_loss)
        "simpo_gamma",
        "alpha",
        # GRPOConfig's, read for colocate only (trl 1.16.0 grpo_config.py): a colocated
        # engine reserves its share of each GPU whatever its tensor-parallel size (what
        # fills the share changes, not its size); a server's comes from `trl vllm-serve`
        "vllm_tensor_parallel_size",
        "dataset_name",
        "dataset_config",
        "dataset_train_split",
        "dataset_test_split",
        "dataset_streaming",
        "dataset_num_proc",
        "dataset_kwargs",
        "model_revision",
        "lora_task_type",
        "env",  # trl's CLI: environment variables of the run
        "chat_template_path",
        "eos_token",
        "pad_token",
        "truncation_mode",
        "shuffle_dataset",
        "eval_packing",
        "pad_to_multiple_of",  # rounds lengths up, never past max_length's multiple
        "lr_scheduler_kwargs",
        "logging_strategy",
        "save_only_model",
        "do_eval",
        "do_predict",
        "hub_strategy",
        "hub_private_repo",
        "remove_unused_columns",
        "label_names",
        "ddp_find_unused_parameters",
        "ddp_timeout",
        "dataloader_pin_memory",
        "dataloader_drop_last",
        "average_tokens_across_devices",
        "ignore_bias_buffers",
        "desirable_weight",  # KTOConfig's loss weights
        "undesirable_weight",
        "use_cpu",
        # TrainingArguments (transformers 5.24) that change no GPU memory of the run
        "accelerator_config",
        "batch_eval_metrics",
        "data_seed",
        "dataloader_in_order",
        "dataloader_multiprocessing_context",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "ddp_backend",
        "ddp_broadcast_buffers",
        "ddp_static_graph",
        "ddp_bucket_cap_mb",  # DDP's buckets hold every gradient, whatever their size
        "debug",
        "disable_tqdm",
        "enable_jit_checkpoint",
        "eval_delay",
        "eval_do_concat_batches",
        "eval_on_start",
        "eval_use_gather_object",
        # predictions gathered on the GPU only with a compute_metrics function (code)
        "eval_accumulation_steps",
        "prediction_loss_only",
        "include_for_metrics",
        "full_determinism",
        "greater_is_better",
        "hub_always_push",
        "hub_revision",
        "hub_token",
        "ignore_data_skip",
        "include_num_input_tokens_seen",
        "length_column_name",
        "load_best_model_at_end",
        "local_rank",
        "log_level",
        "log_level_replica",
        "log_on_each_node",
        "logging_nan_inf_filter",
        "metric_for_best_model",
        "project",
        "restore_callback_states_from_checkpoint",
        "save_on_each_node",
        "skip_memory_metrics",
        "trackio_bucket_id",
        "trackio_space_id",
        "trackio_static_space_id",
        "train_sampling_strategy",
        "use_cache",  # transformers turns it off under checkpointing; else the saved K/V
        "streaming",
        "test_split_size",
    }
)


def _hf_trainer_method(k: Keys, cfg: FrameworkConfig, trl: bool) -> None:
    """TRL's peft switches (ModelConfig): LoRA, QLoRA (4- or 8-bit), DoRA, rsLoRA."""
    s = cfg.settings
    if not (k.flag("use_peft") or k.raw("lora_r") is not None):
        return
    s["method"] = "qlora" if k.flag("load_in_4bit") else "lora"
    if k.flag("load_in_8bit"):
        s.update(method="qlora", quant="int8")
    if k.flag("use_dora"):
        s["method"] = "dora"
    elif k.flag("use_rslora") and s["method"] == "lora":
        s["method"] = "rslora"
    lora_numbers(k, cfg)
    if targets := peft_targets(k.names("lora_target_modules")):
        s["lora_targets"] = targets
    _modules_to_save(k, cfg)
    # TRL's ModelConfig.lora_target_parameters, peft's target_parameters
    with_target_parameters(k, "lora_target_parameters", cfg)
    if trl:
        model_config = TRL_AT.format("trl/trainer/model_config.py") + " ModelConfig"
        assume(cfg, "lora_r", 16, f"ModelConfig.lora_r; {model_config}")
        assume(cfg, "lora_alpha", 32, f"ModelConfig.lora_alpha; {model_config}")
        assume(cfg, "lora_dropout", 0.05, f"ModelConfig.lora_dropout; {model_config}")
    if s["method"] == "qlora" and s.get("quant") != "int8":
        _quantisation(k, cfg)


def _quantisation(k: Keys, cfg: FrameworkConfig) -> None:
    """TRL's get_quantization_config (trl/trainer/utils.py): nested quantisation off
    unless use_bnb_nested_quant, nf4 unless bnb_4bit_quant_type says fp4."""
    said = TRL_AT.format("trl/trainer/model_config.py") + " ModelConfig"
    if (kind := k.choice("bnb_4bit_quant_type", ("nf4", "fp4"))) is not None:
        cfg.settings["quant"] = kind
    if k.raw("use_bnb_nested_quant") is not None:
        cfg.settings["double_quant"] = k.flag("use_bnb_nested_quant")
    assume(cfg, "quant", "nf4", f"ModelConfig.bnb_4bit_quant_type; {said}")
    assume(cfg, "double_quant", False, f"ModelConfig.use_bnb_nested_quant; {said}")
    if k.raw("bnb_4bit_quant_storage") is not None:
        cfg.notes.append("bnb_4bit_quant_storage: the 4-bit storage dtype is not modelled.")


def _modules_to_save(k: Keys, cfg: FrameworkConfig) -> None:
    """peft ``modules_to_save``: the token embedding and the LM head are trained in full."""
    names = k.names("lora_modules_to_save")
    if not names:
        return
    kinds = {"embed" if "embed" in n else "head" if "lm_head" in n else "" for n in names}
    if "" in kinds:
        cfg.notes.append(
            f"lora_modules_to_save: only the token embedding and the LM head are modelled "
            f"({', '.join(names)} given)."
        )
    if kinds - {""}:
        cfg.settings["lora_modules_to_save"] = ",".join(sorted(kinds - {""}))


# the sequence length's names across TRL's and transformers' scripts, the first one given wins
HF_SEQ_LEN_KEYS = ("max_seq_length", "max_length", "max_source_length")
# transformers' seq2seq example scripts (run_summarization, run_translation): the
# decoder's length; an encoder-decoder takes it as --target-len
HF_NUMBERS = (
    ("max_target_length", "target_len"),
    ("per_device_train_batch_size", "batch_size"),
    ("gradient_accumulation_steps", "grad_accum"),
)
# `accelerate launch` arguments a TRL CLI config may carry (trl/cli/commands/training.py
# passes the keys no dataclass takes on to accelerate launch)
TRL_LAUNCH_KEYS = ("accelerate_config", "num_processes", "num_machines")
# TRL's own Accelerate profiles (`accelerate_config: zero2`), huggingface/trl
# trl/accelerate_configs/<name>.yaml@f2cd57710ae345ea6428ae95363267fcf38a3dc8: each
# launches 8 processes on one machine in bf16 (single_gpu: one), DeepSpeed without offload,
# FSDP resharding after forward without offload or activation checkpointing, fsdp1.yaml
# and fsdp2.yaml with fsdp_version 1 and 2
TRL_PROFILES: dict[str, dict[str, Any]] = {
    "zero1": {"strategy": "zero1", "gpus": 8},
    "zero2": {"strategy": "zero2", "gpus": 8},
    "zero3": {"strategy": "zero3", "gpus": 8},
    "fsdp1": {"strategy": "fsdp", "gpus": 8, "fsdp_version": 1},
    "fsdp2": {"strategy": "fsdp", "gpus": 8, "fsdp_version": 2},
    "multi_gpu": {"gpus": 8},
    "single_gpu": {"gpus": 1},
}
# the keys read() reads; read_framework_config lists every other one as ignored
# GRPOConfig's keys ftmem.grpo reads
GRPO_KEYS = frozenset(
    {
        "beta",  # grpo: a reference when non-zero (DPO's and KTO's changes nothing)
        "num_generations",
        "max_completion_length",
        "steps_per_generation",
        "generation_batch_size",
        "use_vllm",
        "vllm_mode",
        "vllm_gpu_memory_utilization",
        "num_iterations",
        "cast_lm_head_to_fp32",
        "entropy_coef",
        "use_adaptive_entropy",
        "ds3_gather_for_generation",
        # `trl grpo` (trl/scripts/grpo.py@f2cd57710ae3 main): reward_funcs are Python
        # functions (TRL's registry or an import path), no GPU memory; a reward model comes
        # from reward_model_name_or_path (noted by _grpo_unmodelled)
        "reward_funcs",
        "reward_model_name_or_path",
    }
)

HF_TRAINER_KEYS = frozenset(
    {
        "precompute_ref_log_probs",
        "cpo_alpha",  # CPOConfig: orpo's tensors unless 0 (_cpo_objective)
        "model_name_or_path",
        "model_name",
        "model_init_kwargs",
        "router_aux_loss_coef",
        "use_peft",
        "load_in_4bit",
        "load_in_8bit",
        "use_bnb_nested_quant",
        "bnb_4bit_quant_type",
        "bnb_4bit_quant_storage",
        "use_dora",
        "use_rslora",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "lora_target_parameters",
        "lora_modules_to_save",
        *HF_SEQ_LEN_KEYS,
        "max_target_length",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "eval_strategy",
        "evaluation_strategy",
        "gradient_accumulation_steps",
        "gradient_checkpointing",
        "gradient_checkpointing_kwargs",
        "optim",
        "optim_args",
        "optim_target_modules",
        "bf16",
        "fp16",
        "tf32",
        "dtype",
        "torch_dtype",
        "attn_implementation",
        "packing",
        "packing_strategy",
        "padding_free",
        "group_by_length",
        "dataset_text_field",
        "completion_only_loss",
        "assistant_only_loss",
        "loss_type",
        "use_liger_kernel",
        "activation_offloading",
        "torch_compile",
        "torch_compile_backend",
        "torch_compile_mode",
        "activation_checkpointing",
        "activation_checkpointing_kwargs",
        "liger_kernel_config",
        "auto_find_batch_size",
        "bf16_full_eval",
        "fp16_full_eval",
        "label_smoothing_factor",
        "parallelism_config",
        "neftune_noise_alpha",
        "torch_empty_cache_steps",
        "disable_dropout",
        "deepspeed",
        "fsdp",
        "fsdp_config",
        *TRL_LAUNCH_KEYS,
        *GRPO_KEYS,
    }
)


# TRL's CLI docs name each file by its command: `trl dpo --config dpo_config.yaml`
# (huggingface/trl docs/source/clis.md@f2cd57710ae3, whose blocks open with "# dpo_config.yaml")
TRL_CONFIG_NAME = re.compile(r"(?<![a-z])(sft|dpo|kto|grpo|rloo|reward|orpo|cpo)_config\.ya?ml\b")
# (orpo and cpo: TRL's example scripts take their configs, trl.experimental in TRL 1.16)
TRL_COMMAND = {"sft": "SFT", "dpo": "DPO", "kto": "KTO", "grpo": "GRPO", "rloo": "GRPO",
               "orpo": "ORPO", "cpo": "CPO"}  # fmt: skip


def _named_trainer(path: Path) -> str | None:
    """The trainer the file's name, or its first comment line, names (dpo_config.yaml)."""
    first = ""
    try:
        lines = read_text(path, "training config", MAX_CONFIG_BYTES).splitlines()
        first = next((line for line in lines if line.strip()), "")
    except (ConfigError, OSError):
        pass
    comment = first if first.lstrip().startswith("#") else ""
    match = TRL_CONFIG_NAME.search(path.name.lower()) or TRL_CONFIG_NAME.search(comment.lower())
    return match.group(1) if match else None


def trl_trainer(k: Keys, path: Path) -> tuple[str | None, str]:
    """Which TRL trainer's config the file is (SFT, DPO, KTO, GRPO, ORPO, CPO), None for
    plain TrainingArguments, and why, in words for the note. Keys only one trainer takes
    decide; then the name the file goes by in TRL's docs (``# dpo_config.yaml``), which
    comes first for ORPO and CPO (their beta is DPO's mark too)."""
    keys = set(k)
    trl_keys = sorted(keys & TRL_ONLY_KEYS)
    if keys & HF_SCRIPT_KEYS and not trl_keys:
        return None, ""
    named = _named_trainer(path)
    if named in ("orpo", "cpo"):
        return TRL_COMMAND[named], f"it is named {named}_config.yaml"
    for trainer, marks in TRL_TRAINERS:
        if found := sorted(keys & marks):
            return trainer, f"it has {', '.join(found)}"
    if named is not None:
        why = f"it is named {named}_config.yaml, the file `trl {named} --config` takes"
        if named == "reward":
            why += "; RewardTrainer's classification head over chosen and rejected is not modelled"
        return TRL_COMMAND.get(named, "SFT"), why
    if trl_keys:
        return "SFT", f"it has {', '.join(trl_keys[:3])}"
    if path.suffix in (".yaml", ".yml"):
        return "SFT", "a YAML file, as `trl sft --config` takes; `trl dpo` or `grpo` would say"
    return None, ""


def read(
    k: Keys, cfg: FrameworkConfig, base: Path, trainer_of: tuple[str, str] | None = None
) -> frozenset[str]:
    """TRL's configs or HF TrainingArguments (JSON or YAML), each with its own defaults;
    ``trainer_of``: the TRL trainer and why, when the caller knows it (--framework trl)."""
    s = cfg.settings
    trainer, why = trainer_of or trl_trainer(k, Path(cfg.path))
    cfg.model = k.text("model_name_or_path") or k.text("model_name")
    _hf_trainer_method(k, cfg, trl=trainer is not None)
    for key in HF_SEQ_LEN_KEYS:
        if (seq := k.integer(key)) is not None:
            s["seq_len"] = seq
            break
    settings_from(k, cfg, HF_NUMBERS)
    # transformers 5.24 renamed gradient_checkpointing activation_checkpointing (the old
    # name an alias): either turns it on
    if k.flag("gradient_checkpointing") or k.flag("activation_checkpointing"):
        s["grad_ckpt"] = True
    if k.text("optim"):
        hf_optimizer(k, "optim", cfg)
        galore_args(k, cfg)
    _precision(k, cfg, trainer)
    init = k.section("model_init_kwargs")
    for keys, key in ((init, "attn_implementation"), (k, "attn_implementation")):
        if (attn := attention(keys, key, cfg)) is not None:
            s["attn"] = attn
            break
    _memory_features(k, cfg, trainer)
    _router_aux(k, cfg, trainer)
    _evaluation(k, cfg)
    if k.flag("packing"):
        cfg.notes.append(
            "packing: each micro-batch is packed to the sequence length, as estimated."
        )
    _hf_lengths(k, cfg, trainer)
    distributed_settings(k, base, cfg)
    _trl_launch(k, base, cfg)
    if trainer is None:
        cfg.notes.append(
            "Read as HF TrainingArguments (no key only TRL has); TrainingArguments' defaults "
            "where it is silent."
        )
        _hf_defaults(k, cfg)
    else:
        cfg.notes.append(
            f"{why}: TRL's {trainer}Trainer with its defaults where the command line is silent."
            if trainer_of
            else f"Read as a TRL {trainer}Config ({why}); TRL's defaults, not "
            "TrainingArguments', where it is silent."
        )
        _trl_defaults(k, cfg, trainer)
    return HF_TRAINER_KEYS


# the TRL configs with router_aux_loss_coef (default 0.001): sft_config.py l.156,
# dpo_config.py l.170, grpo_config.py l.439, kto_config.py l.145
TRL_AUX_TRAINERS = ("SFT", "DPO", "GRPO", "KTO")


def _router_aux(k: Keys, cfg: FrameworkConfig, trainer: str | None) -> None:
    """The router's load-balancing loss. TRL's trainers turn it on for every MoE model
    (a config with output_router_logits) unless router_aux_loss_coef is 0: SFTTrainer
    writes that into the config (sft_trainer.py l.1357-1366), the others pass
    output_router_logits=True to the forward (dpo_trainer.py l.880-884, l.1338-1339), so
    with coef 0 they keep the config's, which model_init_kwargs may set (from_pretrained
    hands unknown keywords to the config). Silence on both keys is the default 0.001: on
    for a MoE model whose loss ftmem models, nothing said for any other."""
    coef = k.number("router_aux_loss_coef")
    stated = k.section("model_init_kwargs").raw("output_router_logits")
    if stated is not None:
        stated = k.section("model_init_kwargs").flag("output_router_logits")
    said = TRL_AT.format(f"trl/trainer/{str(trainer).lower()}_trainer.py")
    if trainer in TRL_AUX_TRAINERS and coef is not None:
        if coef != 0:
            read_router_aux_loss(cfg, True, f"router_aux_loss_coef {coef:g} ({said})")
        elif trainer == "SFT" or stated is not None:
            on = trainer != "SFT" and bool(stated)
            read_router_aux_loss(cfg, on, f"router_aux_loss_coef 0 ({said})")
    elif trainer in TRL_AUX_TRAINERS and stated is not None:
        cfg.assumed.append(f"router_aux_loss_coef 0.001 ({trainer}Config default, {said})")
        read_router_aux_loss(cfg, True, "model_init_kwargs output_router_logits with TRL's coef")
    elif stated is not None:
        key = f"model_init_kwargs output_router_logits {str(stated).lower()}"
        read_router_aux_loss(cfg, bool(stated), key)
    elif trainer in TRL_AUX_TRAINERS and moe_with_router_loss(cfg.model):
        # silence on both keys: the default coefficient turns the loss on for a MoE model
        cfg.assumed.append(f"router_aux_loss_coef 0.001 ({trainer}Config default, {said})")
        cfg.settings["router_aux_loss"] = True


def _trl_launch(k: Keys, base: Path, cfg: FrameworkConfig) -> None:
    """The launch a TRL CLI config names (trl/cli/accelerate_config.py
    resolve_accelerate_config_argument: a file first, else one of TRL's profiles), and
    its process counts; the training keys' own DeepSpeed / FSDP win, as in HF Trainer."""
    name = k.text("accelerate_config")
    launch: dict[str, Any] = {}
    if name:
        path = framework_path(name, base, "accelerate_config", cfg)
        if path is not None:
            launcher = read_launcher_config(str(path))
            launch = launcher.settings
            cfg.notes += launcher.notes
        elif name in TRL_PROFILES:
            launch = {**TRL_PROFILES[name], "nodes": 1}
        else:
            raise ConfigError(
                f"{k.file}: accelerate_config {name} is neither a file nor one of TRL's "
                f"profiles ({', '.join(TRL_PROFILES)})."
            )
    processes, machines = k.integer("num_processes"), k.integer("num_machines")
    if processes is not None or machines is not None:
        nodes = machines or launch.get("nodes", 1)
        total = processes or launch.get("gpus", 1) * nodes
        if total % nodes:
            raise ConfigError(
                f"{k.file}: num_processes ({total}) counts the GPUs of all num_machines "
                f"({nodes}); it must be a multiple of it."
            )
        launch.update(gpus=total // nodes, nodes=nodes)
    skipped = {"precision", "autocast"}  # TRL's bf16 decides
    if "strategy" in cfg.settings:  # the file's deepspeed / fsdp, offload with it
        # (and its FSDP version: transformers 5 passes TrainingArguments' own to the
        # plugin, versions.TRANSFORMERS_FSDP_PLUGIN_ARGS)
        skipped |= {"strategy", "offload_optimizer", "offload_params", "fsdp_version"}
    for key, value in launch.items():
        if key not in skipped:
            cfg.settings.setdefault(key, value)
    if launch.get("grad_ckpt"):  # FSDP's activation checkpointing, whatever the file says
        cfg.settings["grad_ckpt"] = True
    if "gpus" in launch:
        cfg.notes[:] = [n for n in cfg.notes if n != LAUNCHER_NOTE]


def _precision(k: Keys, cfg: FrameworkConfig, trainer: str | None) -> None:
    """The weights' dtype (model_init_kwargs, TRL ModelConfig's dtype) and autocast."""
    init = k.section("model_init_kwargs")
    dtype = init.text("dtype") or init.text("torch_dtype")
    dtype = dtype or k.text("dtype") or k.text("torch_dtype")
    if trainer is None:
        given = k.raw("bf16") is not None or k.raw("fp16") is not None
        hf_trainer_precision(k, cfg, dtype)
        if not given:  # an Accelerate launcher's mixed_precision replaces this one
            precision = cfg.settings.pop("precision")
            said = "bf16 and fp16 false: no autocast, the step in the dtype the weights load in"
            assume(cfg, "precision", precision, f"{said}; {HF_ARGS}")
        return
    if dtype is None:
        dtype = "float32"
        cfg.assumed.append(
            "dtype float32 (TRL >= 0.27: the model loads in float32 unless dtype is given; "
            f"{TRL_AT.format('trl/trainer/utils.py')} create_model_from_path and "
            "ModelConfig.dtype; earlier: the checkpoint's dtype)"
        )
    bf16 = k.raw("bf16") == "auto" or k.flag("bf16")
    if k.raw("bf16") is None:
        bf16 = not k.flag("fp16")
        cfg.assumed.append(
            f"bf16 {str(bf16).lower()} (TRL >= 0.19: bf16 unless fp16; "
            f"{TRL_AT.format('trl/trainer/base_config.py')} _BaseConfig.__post_init__)"
        )
    hf_trainer_precision(k, cfg, dtype, bf16=bf16)
    quantised = cfg.settings.get("method") == "qlora" and cfg.settings.get("quant") != "int8"
    compute = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    if quantised and dtype.lower().removeprefix("torch.") in compute:
        # get_quantization_config: bnb_4bit_compute_dtype=model_args.dtype
        cfg.settings["compute_dtype"] = compute[dtype.lower().removeprefix("torch.")]


def _memory_features(k: Keys, cfg: FrameworkConfig, trainer: str | None) -> None:
    """Liger, TRL's chunked loss, activation offloading, torch.compile, dropout; the
    keys ftmem does not model become notes."""
    s = cfg.settings
    liger = k.section("liger_kernel_config")
    if trainer == "SFT":
        _sft_loss(k, cfg)
    elif k.flag("use_liger_kernel"):
        if liger.raw("fused_linear_cross_entropy") is False:
            cfg.notes.append(
                "liger_kernel_config: Liger's kernels without its fused linear cross-entropy "
                "are not modelled; estimated with the standard loss."
            )
        else:
            s["loss"] = "fused"  # Liger's fused linear cross-entropy: LM head + loss
    if k.flag("activation_offloading"):
        s["activation_offload"] = True
    # TrainingArguments.__post_init__: a compile mode or backend turns torch_compile on
    if k.flag("torch_compile") or k.text("torch_compile_mode") or k.text("torch_compile_backend"):
        s["compile"] = True
    _checkpointing_kwargs(k, cfg, trainer)
    for key, said in LIMITS_NOTED.items():
        if k.raw(key) not in (None, False, 0, 0.0):
            cfg.notes.append(f"{key}: {said}")
    if k.raw("disable_dropout") is not None:
        s["model_dropout"] = not k.flag("disable_dropout")
    if k.number("neftune_noise_alpha") is not None:
        cfg.notes.append("neftune_noise_alpha: the embeddings' noise tensor is not modelled.")
    if k.integer("torch_empty_cache_steps") is not None:
        cfg.notes.append(
            "torch_empty_cache_steps: emptying the allocator's cache is not modelled; the "
            "reserved peak is that of a run that keeps it."
        )
    if k.flag("completion_only_loss") or k.flag("assistant_only_loss"):
        cfg.notes.append(
            "loss on completions / assistant turns only: the masked positions' logits are "
            "still estimated (an upper bound under TRL's chunked loss, which drops them)."
        )


# SFTTrainer since TRL 1.15.0 (trl 1.16.0 trl/trainer/sft_trainer.py:1144, utils.py:1548)
TRL_TILES = "TRL >= 1.15: SFTTrainer's add_fused_lm_head, the LM head in log-probability tiles"
TRL_TILES_BEFORE = (
    "before TRL 1.15 nll took the full logits (--loss standard) and chunked_nll "
    "checkpointed chunks of 256 rows"
)


def _sft_loss(k: Keys, cfg: FrameworkConfig) -> None:
    """SFTTrainer's loss as TRL >= 1.15 computes it: every loss_type (nll, dft, the
    deprecated chunked_nll) through the patched forward's log-probability tiles
    (--loss logprob-tiles), Liger's fused linear cross-entropy turned off
    (sft_trainer.py:1140); label_smoothing_factor > 0 with loss_type nll takes the
    standard loss over the full logits (SFTTrainer.compute_loss, sft_trainer.py:1601)."""
    loss = k.text("loss_type")
    if (k.number("label_smoothing_factor") or 0) > 0 and loss in (None, "nll", "chunked_nll"):
        cfg.settings["loss"] = "standard"
        cfg.notes.append(
            "label_smoothing_factor > 0: TRL >= 1.15's SFTTrainer takes the standard loss over "
            "the full logits; its no-grad forward through the tiles for the metrics is not "
            "modelled."
        )
        return
    if loss is not None:
        cfg.settings["loss"] = "logprob-tiles"
        cfg.notes.append(f"loss_type {loss}: {TRL_TILES} ({TRL_TILES_BEFORE}).")
        if loss == "dft":
            cfg.notes.append("loss_type dft: DFT's per-token weights are not modelled.")
    if k.flag("use_liger_kernel"):
        cfg.settings["loss"] = "logprob-tiles"
        cfg.notes.append(
            "use_liger_kernel: TRL >= 1.15's SFTTrainer turns Liger's fused linear "
            "cross-entropy off; the loss is TRL's log-probability tiles."
        )


# TrainingArguments ftmem does not model, each noted when set
LIMITS_NOTED = {
    "auto_find_batch_size": "the Trainer halves the batch after an out-of-memory error; "
    "estimated at the batch given.",
    "bf16_full_eval": "evaluation with the weights cast to bf16 is not modelled.",
    "fp16_full_eval": "evaluation with the weights cast to fp16 is not modelled.",
    "label_smoothing_factor": "the label smoother's own log-softmax over the logits is not "
    "modelled.",
    "parallelism_config": "TrainingArguments' parallelism (tp / cp sizes) is not read; give "
    "--tp / --cp, or the launcher's config with --launcher.",
}


def _checkpointing_unset(k: Keys) -> bool:
    return k.raw("gradient_checkpointing") is None and k.raw("activation_checkpointing") is None


def _checkpointing_kwargs(k: Keys, cfg: FrameworkConfig, trainer: str | None) -> None:
    """activation_checkpointing_kwargs (transformers 5.24), applied when checkpointing is
    on: ``offload`` keeps the checkpointed inputs in host memory; ``every_n_layers`` > 1
    checkpoints some layers only."""
    kwargs = k.section("activation_checkpointing_kwargs")
    on = k.flag("gradient_checkpointing") or k.flag("activation_checkpointing")
    if not (on or (trainer is not None and _checkpointing_unset(k))):
        return
    if kwargs.flag("offload"):
        cfg.settings["activation_offload"] = True
        cfg.notes.append(
            "activation_checkpointing_kwargs.offload: the checkpointed blocks' inputs go to "
            "host memory; estimated as offloading every saved tensor."
        )
    every = kwargs.integer("every_n_layers")
    if every is not None and every > 1:
        cfg.notes.append(
            f"activation_checkpointing_kwargs.every_n_layers {every}: checkpointing one "
            "layer in N is not modelled; estimated with every layer checkpointed."
        )


def _evaluation(k: Keys, cfg: FrameworkConfig) -> None:
    """Evaluation inside the run (eval_strategy steps or epoch) at the eval batch size."""
    strategy = k.text("eval_strategy") or k.text("evaluation_strategy") or "no"
    if strategy == "no":
        return
    if (batch := k.integer("per_device_eval_batch_size")) is not None:
        cfg.settings["eval_batch_size"] = batch
    assume(cfg, "eval_batch_size", 8, f"per_device_eval_batch_size; {HF_ARGS}")


def _hf_defaults(k: Keys, cfg: FrameworkConfig) -> None:
    """TrainingArguments' own defaults (transformers as installed)."""
    assume(cfg, "batch_size", 8, f"per_device_train_batch_size; {HF_ARGS}")
    if _checkpointing_unset(k):
        assume(cfg, "grad_ckpt", False, f"gradient_checkpointing; {HF_ARGS}")
    _default_optimizer(cfg)
    if "seq_len" not in cfg.settings:
        cfg.notes.append(
            "No sequence length in the file (TrainingArguments has none; the script's "
            "tokenizer sets it): estimated at ftmem's 512 tokens; give --seq-len."
        )


def _default_optimizer(cfg: FrameworkConfig) -> None:
    if "optimizer" not in cfg.settings and cfg.settings.get("method") != "galore":
        said = f"optim adamw_torch_fused with torch >= 2.8; {HF_ARGS}"
        assume(cfg, "optimizer", "adamw", said)
        assume(cfg, "optimizer_impl", "fused", said)


# DPOTrainer, KTOTrainer and GRPOTrainer since TRL 1.16.0: the policy's and the reference's
# log-probabilities through the fused LM head (trl 1.16.0 trl/trainer/dpo_trainer.py:960,
# kto_trainer.py:967, grpo_trainer.py:1068); up to 1.15 through full logits
TRL_PREFERENCE_FILES = {"DPO": "dpo_trainer.py:960", "KTO": "kto_trainer.py:967",
                        "GRPO": "grpo_trainer.py:1068"}  # fmt: skip
TRL_PREFERENCE_BEFORE = "TRL <= 1.15 took the full logits: give --loss standard"


def _preference_tiles(cfg: FrameworkConfig, trainer: str) -> None:
    """A DPO, KTO or GRPO config read as the newest TRL runs it (as SFT's loss is): the
    fused LM head's tiles, listed as assumed with how to ask for TRL <= 1.15's path."""
    said = f"huggingface/trl trl/trainer/{TRL_PREFERENCE_FILES[trainer]}@v1.16.0"
    tiles = f"TRL >= 1.16: {trainer}Trainer's add_fused_lm_head, log-probabilities in tiles"
    assume(cfg, "loss", "logprob-tiles", f"{tiles}; {said}; {TRL_PREFERENCE_BEFORE}")


def _trl_defaults(k: Keys, cfg: FrameworkConfig, trainer: str) -> None:
    """TRL's defaults for the newest release (the source says from which one on)."""
    base = TRL_AT.format("trl/trainer/base_config.py") + " _BaseConfig"
    assume(cfg, "batch_size", 8, f"per_device_train_batch_size; {HF_ARGS}")
    if _checkpointing_unset(k):
        assume(cfg, "grad_ckpt", True, f"TRL >= 0.22: gradient_checkpointing; {base}")
    _default_optimizer(cfg)
    config = trainer.lower()
    folder = f"experimental/{config}" if trainer in PAIR_TRAINERS else "trainer"
    source = TRL_AT.format(f"trl/{folder}/{config}_config.py") + f" {trainer}Config"
    if trainer in PAIR_TRAINERS and "max_length" in k and k.raw("max_length") is None:
        said = TRL_EXPERIMENTAL.format(f"{config}/{config}_trainer.py") + " __init__"
        assume(cfg, "seq_len", 512, f"max_length null: the trainer's 512; {said}")
    elif "max_length" in k and k.raw("max_length") is None and "seq_len" not in cfg.settings:
        cfg.notes.append(
            "max_length null: TRL does not truncate, the longest example sets the length; "
            "estimated at ftmem's 512 tokens; give --seq-len."
        )
    elif trainer != "GRPO":
        assume(cfg, "seq_len", 1024, f"TRL >= 0.16: max_length (0.15: max_seq_length); {source}")
    if trainer == "SFT":
        said = "huggingface/trl trl/trainer/sft_config.py@v1.16.0:284 SFTConfig.loss_type"
        assume(cfg, "loss", "logprob-tiles", f"{TRL_TILES}; loss_type nll; {said}")
    else:
        if trainer != "GRPO":  # GRPOConfig keeps the model's dropout (disable_dropout False)
            assume(cfg, "model_dropout", False, f"disable_dropout true; {source}")
        if trainer in PAIR_TRAINERS:  # on the full logits: no fused LM head
            PAIR_TRAINERS[trainer](k, cfg, source)
            return
        if trainer == "DPO":
            _dpo_objective(k, cfg, source)
        elif trainer == "KTO":
            _kto_objective(k, cfg, source)
        else:
            _grpo_objective(k, cfg, source)
        _preference_tiles(cfg, trainer)


# DPOConfig's loss_type values (trl/trainer/dpo_trainer.py@f2cd57710ae3 _compute_loss):
# every one reads the pair forward's and the reference's sequence log-probabilities, so
# each is estimated as dpo; ipo has its own name
_DPO_LOSSES = frozenset(
    {
        "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
        "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
    }
)  # fmt: skip


def _reference_and_liger(k: Keys, cfg: FrameworkConfig, trainer: str) -> None:
    """A preference trainer's precomputed reference, and use_liger_kernel: TRL >= 1.16
    turns Liger's fused loss off and keeps its fused LM head (dpo_trainer.py:939,
    kto_trainer.py:950, grpo_trainer.py:1051); TRL <= 1.15's Liger losses are not
    modelled."""
    if k.flag("precompute_ref_log_probs"):
        cfg.settings["precompute_ref"] = True
    _liger_off(cfg, trainer)


def _liger_off(cfg: FrameworkConfig, trainer: str) -> None:
    """use_liger_kernel in a DPO, KTO or GRPO config (read as --loss fused): the fused
    LM head's tiles instead, noted."""
    if cfg.settings.get("loss") != "fused":
        return
    cfg.settings["loss"] = "logprob-tiles"
    cfg.notes.append(
        f"use_liger_kernel: TRL >= 1.16's {trainer}Trainer turns Liger's fused linear "
        "cross-entropy off and keeps its fused LM head (log-probabilities in tiles); "
        f"TRL <= 1.15's Liger {trainer} loss is not modelled ({TRL_PREFERENCE_BEFORE})."
    )


def _dpo_objective(k: Keys, cfg: FrameworkConfig, source: str) -> None:
    """A DPOConfig: the pair objective (loss_type, sigmoid by default) and its reference
    (precompute_ref_log_probs); Liger's fused DPO loss is not modelled."""
    losses = k.names("loss_type")
    if losses is None:
        assume(cfg, "objective", "dpo", f"loss_type ['sigmoid']; {source}")
    else:
        unknown = sorted(set(losses) - _DPO_LOSSES)
        if unknown:
            raise k.wrong("loss_type", f"DPO loss types ({', '.join(sorted(_DPO_LOSSES))})")
        cfg.settings["objective"] = "ipo" if losses == ["ipo"] else "dpo"
        if "sft" in losses:
            cfg.notes.append(
                "loss_type sft: the chosen sequences' cross-entropy beside the DPO loss (its "
                "log-softmax over the chosen logits) is not counted."
            )
    _reference_and_liger(k, cfg, "DPO")


# GRPOConfig's loss_type values (trl/trainer/grpo_trainer.py@f2cd57710ae3 _compute_loss):
# each reads the same per-token log-probabilities; their per-token tensors are b x C
_GRPO_LOSSES = frozenset({"grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo"})


def _grpo_objective(k: Keys, cfg: FrameworkConfig, source: str) -> None:
    """A GRPOConfig: --objective grpo (ftmem.grpo) with its generation settings."""
    s = cfg.settings
    s["objective"] = "grpo"
    if (loss := k.text("loss_type")) is not None and loss not in _GRPO_LOSSES:
        raise k.wrong("loss_type", f"GRPO loss types ({', '.join(sorted(_GRPO_LOSSES))})")
    if (n := k.integer("num_generations")) is not None:
        s["num_generations"] = n
    else:
        assume(cfg, "num_generations", 8, f"num_generations; {source}")
    if (c := k.integer("max_completion_length")) is not None:
        s["completion_len"] = c
    else:
        assume(cfg, "completion_len", 512, f"max_completion_length; {source}")
    if "seq_len" not in s:
        # the prompts' length is the dataset's (GRPOConfig has no max_prompt_length)
        s["seq_len"] = s["completion_len"] + 512
        cfg.notes.append(
            f"GRPO: no prompt length in the file (the dataset sets it): estimated with "
            f"512-token prompts, --seq-len {s['seq_len']} (prompt + completion); give "
            "--seq-len."
        )
    _grpo_generation(k, cfg)
    _grpo_unmodelled(k, cfg)
    _liger_off(cfg, "GRPO")


def _grpo_generation(k: Keys, cfg: FrameworkConfig) -> None:
    """GRPOConfig's generation batch (steps_per_generation or generation_batch_size,
    __post_init__), the passes over it (num_iterations), how ZeRO-3 gathers the policy to
    generate (ds3_gather_for_generation), its reference (beta) and vLLM."""
    s = cfg.settings
    steps = k.integer("steps_per_generation")
    generation = k.integer("generation_batch_size")
    if steps is not None and generation is not None:
        raise k.wrong("generation_batch_size", "unset when steps_per_generation is set")
    if generation is not None:
        # per_device_train_batch_size x num_processes (GRPOConfig.__post_init__)
        b = s.get("batch_size", 8) * s.get("gpus", 1) * s.get("nodes", 1)
        if generation % b:
            raise k.wrong("generation_batch_size", f"a multiple of the global batch size ({b})")
        steps = generation // b
    if steps is not None:
        s["steps_per_generation"] = steps
    if (iterations := k.integer("num_iterations")) is not None:
        s["num_iterations"] = iterations  # generate_every = steps x iterations (ftmem.grpo)
    if k.raw("ds3_gather_for_generation") is not None:
        s["ds3_gather_for_generation"] = k.flag("ds3_gather_for_generation")
    if (beta := k.number("beta", low=0.0)) is not None:
        s["kl_beta"] = beta
    if k.flag("use_vllm"):
        mode = k.choice("vllm_mode", ("colocate", "server")) or "colocate"
        s["vllm"] = mode
        if mode == "colocate":
            share = k.number("vllm_gpu_memory_utilization", low=0.0, below=1.0)
            s["vllm_memory_share"] = share if share is not None else 0.3
        else:
            # GRPOConfig's vllm_gpu_memory_utilization and vllm_tensor_parallel_size apply
            # to colocate only (trl 1.16.0 trl/trainer/grpo_config.py docstring): the
            # server's come from `trl vllm-serve`'s own flags
            cfg.notes.append(
                "vllm_mode server: the server's GPUs are `trl vllm-serve`'s settings, not "
                "this config's (TRL reads vllm_gpu_memory_utilization and "
                "vllm_tensor_parallel_size for colocate only): estimated with vllm-serve's "
                "defaults (1 GPU, --gpu-memory-utilization 0.9) unless given "
                "--vllm-tensor-parallel, --vllm-data-parallel, --vllm-memory-share."
            )


def _grpo_unmodelled(k: Keys, cfg: FrameworkConfig) -> None:
    """GRPOConfig settings that change memory in ways ftmem.grpo leaves out, in one note."""
    notes = []
    if k.flag("cast_lm_head_to_fp32"):
        notes.append("cast_lm_head_to_fp32 (an fp32 LM head; with the tiles, fp32 tiles)")
    if reward_model := k.text("reward_model_name_or_path"):
        notes.append(
            f"the reward model {reward_model} (its weights on every GPU and its no-grad "
            "forward over the completions)"
        )
    if (k.number("entropy_coef") or 0.0) != 0.0 or k.flag("use_adaptive_entropy"):
        notes.append("an entropy bonus (the entropies then keep their graph)")
    if notes:
        cfg.notes.append("GRPO, not modelled: " + "; ".join(notes) + ".")


# KTOConfig's loss_type values (trl/trainer/kto_trainer.py@f2cd57710ae3 _compute_loss)
_KTO_LOSSES = {"kto": "kto", "apo_zero_unpaired": "apo-zero-unpaired"}


def _kto_objective(k: Keys, cfg: FrameworkConfig, source: str) -> None:
    """A KTOConfig: b unpaired completions (loss_type kto, the default, adds the KL
    sequences' forwards; apo_zero_unpaired has none) and the reference
    (precompute_ref_log_probs); Liger's fused KTO loss is not modelled."""
    loss = k.text("loss_type")
    if loss is None:
        assume(cfg, "objective", "kto", f"loss_type kto; {source}")
    elif loss in _KTO_LOSSES:
        cfg.settings["objective"] = _KTO_LOSSES[loss]
    else:
        raise k.wrong("loss_type", f"KTO loss types ({', '.join(_KTO_LOSSES)})")
    _reference_and_liger(k, cfg, "KTO")


# trl 1.16.0 trl/experimental/cpo/cpo_config.py:121-125 CPOConfig.loss_type's choices
# ("alphapo" becomes simpo with cpo_alpha 0 in __post_init__, :175-179); each reads the
# pair forward's sequence log-probabilities, none a reference (cpo_loss, cpo_trainer.py:678)
_CPO_LOSSES = frozenset({"sigmoid", "hinge", "ipo", "simpo", "alphapo"})
TRL_EXPERIMENTAL = "huggingface/trl trl/experimental/{}@v1.16.0"


def _orpo_objective(k: Keys, cfg: FrameworkConfig, source: str) -> None:
    """An ORPOConfig (trl.experimental.orpo in TRL 1.16): --objective orpo, chosen and
    rejected in one forward on the full logits, the chosen half's cross-entropy beside
    the odds ratio, no reference (orpo_trainer.py:745-822 concatenated_forward)."""
    cfg.settings["objective"] = "orpo"


def _cpo_objective(k: Keys, cfg: FrameworkConfig, source: str) -> None:
    """A CPOConfig (trl.experimental.cpo in TRL 1.16): the pair forward on the full
    logits without a reference, whatever the loss_type. cpo_alpha (1.0 by default) is
    the weight of the chosen half's cross-entropy, which TRL computes only when it is not
    0 (cpo_trainer.py:842-845): with it the step holds what ORPO's does (the same
    cross_entropy_loss over all_logits[:len_chosen], orpo_trainer.py:800), so it is
    estimated as --objective orpo; without it (SimPO as its paper runs it, AlphaPO) as
    --objective simpo."""
    loss = k.text("loss_type") or "sigmoid"
    if loss not in _CPO_LOSSES:
        raise k.wrong("loss_type", f"CPO loss types ({', '.join(sorted(_CPO_LOSSES))})")
    alpha = 0.0 if loss == "alphapo" else k.number("cpo_alpha")
    alpha = 1.0 if alpha is None else alpha
    said = f"cpo_alpha {alpha:g}, loss_type {loss}; {source}"
    if alpha:
        assume(cfg, "objective", "orpo", f"the chosen half's cross-entropy, as ORPO's; {said}")
    else:
        assume(cfg, "objective", "simpo", f"no cross-entropy term; {said}")


# TRL's trainers of chosen and rejected without a reference, in trl.experimental
PAIR_TRAINERS = {"ORPO": _orpo_objective, "CPO": _cpo_objective}


def _flattened(k: Keys, cfg: FrameworkConfig) -> None:
    """TRL's padding-free collator flattens the batch into one row with position_ids and
    no attention_mask (trl@f2cd5771 sft_trainer.py l.471-486); padding_free is on when
    asked, or with packing under packing_strategy bfd (the default) or bfd_split
    (l.1143). Under sdpa transformers then builds a block-diagonal mask over the row
    (ops.attention.packed_rows). packing_strategy wrapped keeps rows of max_length with
    an attention_mask of ones: no mask."""
    strategy = k.text("packing_strategy") or "bfd"
    if not (k.flag("padding_free") or strategy in ("bfd", "bfd_split")):
        return
    cfg.settings["padding"] = "packed"
    cfg.notes.append(
        "padding_free: each batch flattened into one row of several sequences (padding "
        "packed); under sdpa transformers gives the kernel a T×T block-diagonal mask and "
        "repeats GQA keys and values (FlashAttention-2 takes the bounds from position_ids)."
    )


def _hf_lengths(k: Keys, cfg: FrameworkConfig, trainer: str | None) -> None:
    """Batches padded to their longest: group_by_length (LengthGroupedSampler, the
    longest batch first: transformers src/transformers/trainer_pt_utils.py
    @010a915ce62bd1a3adb61d0eab2f0acca436b1c0 get_length_grouped_indices), or TRL's
    packing: false without padding_free (DataCollatorForLanguageModeling: "Inputs are
    dynamically padded to the maximum length of a batch", huggingface/trl
    trl/trainer/sft_trainer.py @00313f21920d37c3876c4021b51430224c06c936), which is
    SFTConfig's default (packing False, padding_free False: trl/trainer/sft_config.py
    @f2cd57710ae3)."""
    if k.flag("packing") or k.flag("padding_free"):
        _flattened(k, cfg)
        return
    silent = trainer == "SFT" and all(k.raw(key) is None for key in ("packing", "padding_free"))
    if k.flag("group_by_length"):
        cfg.settings["lengths"] = "grouped"
    elif k.raw("packing") is False or silent:
        cfg.settings["lengths"] = "padded"
        if silent:
            cfg.assumed.append(
                f"packing False (SFTConfig default, {TRL_AT.format('trl/trainer/sft_config.py')})"
            )
    else:
        return
    cfg.notes.append(
        f"lengths {cfg.settings['lengths']}: each batch is padded to its longest, up to the "
        "sequence length; the reserved peak keeps the cache of the other lengths "
        "(give --lengths padded:MIN when the shortest is known)."
    )
    # the same collators pass the batch's attention_mask with its pad tokens
    # (DataCollatorForLanguageModeling.torch_call, trl@f2cd5771 sft_trainer.py l.504-506;
    # group_by_length groups samples "to minimize padding": transformers 5.24
    # training_args.py l.643-644)
    cfg.settings["padding"] = "longest"
    cfg.notes.append(
        "padding longest: the attention_mask marks each batch's pad tokens; under sdpa "
        "transformers then gives the kernel a mask and repeats GQA keys and values."
    )
