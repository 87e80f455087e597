"""axolotl configs as axolotl runs them (it drives HF Trainer over transformers + peft):
adapters and unfrozen parameters, attention, checkpointing and activation offloading,
the loss plugins (Cut Cross-Entropy, Liger), precision as axolotl resolves it, DeepSpeed
and FSDP, and its schema's defaults where the file is silent. What ftmem does not model
(preference and RL trainers, MoE kernels, parallel degrees, other plugins) becomes a note.

Every default and rule cites AXOLOTL: axolotl-ai-cloud/axolotl at commit 067b021c8b87
(src/axolotl/...); docs/frameworks/axolotl.md lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftmem.errors import ConfigError
from ftmem.filekeys import Keys
from ftmem.frameworks.distributed import LAUNCHER_NOTE, distributed_settings
from ftmem.frameworks.router_aux import read_router_aux_loss
from ftmem.frameworks.shared import (
    ATTENTION,
    FrameworkConfig,
    assume,
    attention,
    hf_optimizer,
    lora_numbers,
    peft_targets,
    settings_from,
    with_target_parameters,
)
from ftmem.run import ADAPTER_METHODS

AXOLOTL = "axolotl@067b021c8b87"  # the commit every source below is read at

# axolotl's own keys that do not change the memory of a step (beyond frameworks.shared's)
NO_MEMORY_EFFECT: frozenset[str] = frozenset(
    {
        # when to save, evaluate, stop, and the learning-rate schedule
        "saves_per_epoch",
        "eval_sample_packing",
        "eval_table_size",
        "eval_max_new_tokens",
        "do_causal_lm_eval",
        "eval_causal_lm_metrics",
        "early_stopping_patience",
        "loss_watchdog_patience",
        "loss_watchdog_threshold",
        "cosine_constant_lr_ratio",
        "cosine_min_lr_ratio",
        "eta_min",
        "lr_quadratic_warmup",
        "jagged_restart_steps",
        "jagged_restart_warmup_steps",
        "jagged_restart_anneal_steps",
        "save_only_model",
        "auto_resume_from_checkpoints",
        # ReLoRA's and LISA's schedules (the methods themselves are read or noted)
        "relora_prune_ratio",
        "relora_prune_method",
        "lisa_step_interval",
        "lisa_layers_attribute",
        # retired: axolotl refuses a value (utils/schemas/deprecated.py)
        "max_packed_sequence_len",
        # loss coefficients of the preference trainers (the trainer itself is noted: rl)
        "rl_beta",
        "orpo_alpha",
        "kto_desirable_weight",
        "center_rewards_coefficient",
        "eaft_alpha",
        "eaft_k",
        "adam_eps",
        # logging and tracking
        "debug",
        "use_wandb",
        "wandb_run_id",
        "use_tensorboard",
        "trackio_project_name",
        "trackio_run_name",
        "trackio_space_id",
        "use_swanlab",
        "swanlab_project",
        "swanlab_experiment_name",
        "swanlab_description",
        "swanlab_mode",
        "swanlab_workspace",
        "swanlab_log_model",
        "swanlab_log_completions",
        "swanlab_completion_log_interval",
        "swanlab_completion_max_buffer",
        "use_otel_metrics",
        "otel_metrics_host",
        "otel_metrics_port",
        # the data pipeline: which rows, tokens and templates; packing is read (sample_packing)
        "remove_unused_columns",
        "eot_tokens",
        "tokens",
        "processor_type",
        "skip_prepare_dataset",
        "push_dataset_to_hub",
        "shuffle_merged_datasets",
        "dataset_exact_deduplication",
        "min_sample_len",
        "group_by_length",
        "curriculum_sampling",
        "sample_packing_sequentially",
        "sample_packing_eff_est",
        "total_num_tokens",
        "streaming",
        "streaming_multipack_buffer_size",
        "pretraining_dataset",
        "tokenizer_config",
        "tokenizer_legacy",
        "tokenizer_use_fast",
        "tokenizer_use_mistral_common",
        # the launch, the download and loading (before the first step)
        "hf_use_auth_token",
        "revision_of_model",
        "base_model_ignore_patterns",
        "local_rank",
        "ddp",
        "ddp_find_unused_parameters",
        "torchdistx_path",
        "low_cpu_mem_usage",
        "experimental_skip_move_to_device",
        "relora_cpu_offload",  # where ReLoRA merges, between steps
        # layout flags of a weight format ftmem reads elsewhere (adapter, gptq)
        "lora_fan_in_fan_out",
        "gptq_model_v1",
        "gptq_disable_exllama",
        # flex_attention's torch.compile options (the backend is read: attn_implementation)
        "flex_attn_compile_kwargs",
        # dtype: axolotl sets the load dtype from bf16/fp16 (utils/config resolve_dtype)
        "torch_dtype",
        "tf32",
    }
)

AXOLOTL_NUMBERS = (
    ("sequence_len", "seq_len"),
    ("micro_batch_size", "batch_size"),
    ("gradient_accumulation_steps", "grad_accum"),
)
# the legacy attention switches and the backend each stands for, in the order axolotl
# ranks them when several are set (utils/schemas/enums.py LEGACY_ATTN_FLAG_TO_IMPL)
LEGACY_ATTENTION = {
    "xformers_attention": "xformers",
    "sage_attention": "sage",
    "flex_attention": "flex_attention",
    "flash_attention": "flash_attention_2",
    "sdp_attention": "sdpa",
    "eager_attention": "eager",
}
# ftmem's --attn for a backend name (shared.ATTENTION holds transformers' names; these are
# axolotl's own, utils/schemas/enums.py CANONICAL_ATTN_IMPLS, and the Hub's FlashAttention
# kernels its examples name)
AXOLOTL_ATTENTION = {
    "kernels-community/flash-attn2": "flash",
    "kernels-community/flash-attn3": "flash",
    "kernels-community/vllm-flash-attn3": "flash",
}

CCE_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
# plugins that change nothing in a step: logging, and lm_eval's benchmark after training
QUIET_PLUGINS = frozenset(
    {"axolotl.integrations.swanlab.SwanLabPlugin", "axolotl.integrations.lm_eval.LMEvalPlugin"}
)
# what each other plugin of integrations/ changes, for its note
PLUGIN_EFFECTS = {
    "KernelsPlugin": "swaps the MoE experts' forward for ScatterMoE or SonicMoE kernels",
    "ExpertParallelPlugin": "shards the MoE experts over expert_parallel_size GPUs",
    "DiffusionPlugin": "trains a masked-diffusion objective (noised copies of the inputs)",
    "LLMCompressorPlugin": "keeps llm-compressor's sparsity masks through training",
    "KDPlugin": "adds a distillation loss over the teacher's top-k log-probabilities",
    "SpectrumPlugin": "trains only the layers its SNR scan picks",
    "GrokfastPlugin": "keeps a moving average of every trainable gradient",
    "MoraPlugin": "trains MoRA's square high-rank adapters instead of LoRA",
    "DenseMixerPlugin": "computes every expert's output for the router's gradient",
    "HatcheryPlugin": "trains from a remote RL environment",
    "NemoGymPlugin": "trains from NeMo Gym RL environments",
}
LIGER_KERNELS = (
    "liger_rms_norm",
    "liger_rms_norm_gated",
    "liger_layer_norm",
    "liger_glu_activation",
    "liger_swiglu",
    "liger_rope",
)

# what an RL trainer ftmem does not model (rl:, utils/schemas/enums.py RLType) adds to
# one SFT step; {reference} is the reference model as axolotl sets it up (_rl_note)
_GENERATION = (
    "the completions generated per prompt (trl.num_generations, with a KV cache or a "
    "vLLM engine) and, when trl.beta > 0, {reference}"
)
RL_NOT_COUNTED = {
    "grpo": _GENERATION,
    "gdpo": _GENERATION,
    "ebft": "the generated completions and the frozen copy of the model that embeds them",
}
# the rl values ftmem estimates (--objective): DPOTrainer for dpo and ipo (loss_type
# ["ipo"]), ORPOTrainer, CPOTrainer with loss_type simpo (axolotl-ai-cloud/axolotl
# src/axolotl/core/builders/rl.py@067b021c8b87 _get_trainer_cls, _build_training_arguments;
# core/trainers/dpo/__init__.py@067b021c8b87 set_training_args_kwargs); KTOTrainer for kto
# (its default loss_type kto; precompute_ref_log_probs is passed to DPO only)
PREFERENCE_RL = ("dpo", "ipo", "orpo", "simpo", "kto")


# axolotl's own names for torchao's classes (schemas/enums.py CustomSupportedOptimizers),
# built with the class's own block size (core/builders/base.py: adam_kwargs only)
AO_OPTIMIZERS = {
    "ao_adamw_fp8": "ao-adamw-fp8",
    "ao_adamw_8bit": "ao-adamw-8bit",
    "ao_adamw_4bit": "ao-adamw-4bit",
}


def _optimizer(k: Keys, cfg: FrameworkConfig) -> None:
    """HF Trainer's names (``adamw_torch_4bit``: torchao's AdamW4bit with transformers'
    block size), or axolotl's ``ao_adamw_*``."""
    name = (k.text("optimizer") or "").lower()
    if name not in AO_OPTIMIZERS:
        hf_optimizer(k, "optimizer", cfg)
        return
    cfg.settings["optimizer"] = AO_OPTIMIZERS[name]
    if name != "ao_adamw_fp8":
        # builders/base.py has no branch for them since e3177c321 (2025-08): it raises
        # "Unhandled optimizer"; earlier releases built torchao's class
        cfg.notes.append(
            f"optimizer {name}: axolotl ({AXOLOTL}) raises 'Unhandled optimizer' for it "
            f"(releases before 2025-08 built torchao's class, as estimated); "
            f"adamw_torch_{name[-4:]} is its current name."
        )


def _packing_or_padding(k: Keys, cfg: FrameworkConfig) -> None:
    """Packed micro-batches, or pad tokens where the file says it does not pack. An SFT
    run without sample_packing pads with DataCollatorForSeq2Seq(padding=True), to the
    batch's longest rounded up to pad_to_multiple_of (64 unless given) or, with
    pad_to_sequence_len, to sequence_len (axolotl@067b021c src/axolotl/core/builders/
    causal.py l.383-394); tokenizer.pad pads the attention_mask with zeros. The rl
    trainers build their own collators: not read here."""
    if k.flag("sample_packing"):
        cfg.notes.append(
            "sample_packing: each micro-batch is packed to sequence_len tokens, as estimated."
        )
        return
    if k.text("rl"):
        return
    if k.flag("pad_to_sequence_len"):
        padding = "max-length"
    elif k.raw("sample_packing") is False:
        padding = "longest"
    else:  # silent: the default stays
        return
    cfg.settings["padding"] = padding
    cfg.notes.append(
        f"no sample_packing: batches padded (padding {padding}); under sdpa transformers "
        "gives the kernel a mask and repeats GQA keys and values (rounding to "
        "pad_to_multiple_of pads one sequence too: give --padding max-length at batch 1)."
    )


def read(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
    cfg.model = k.text("base_model")
    if (config := k.text("base_model_config")) and config != cfg.model:
        cfg.notes.append(
            f"base_model_config: axolotl takes the architecture from {config}; estimated "
            f"as {cfg.model}."
        )
    _method(k, cfg)
    _modules_to_save(k, cfg)
    settings_from(k, cfg, AXOLOTL_NUMBERS)
    _checkpointing(k, cfg)
    plugins = _plugins(k, cfg)
    _loss(k, cfg, plugins)
    _optimizer(k, cfg)
    _precision(k, cfg)
    _attention(k, cfg)
    _packing_or_padding(k, cfg)
    if k.flag_or_text("torch_compile", ("auto",)):  # "auto": on from torch 2.5.1
        cfg.settings["compile"] = True
    _training_objective(k, cfg)
    _kernels_and_formats(k, cfg)
    _parallel_degrees(k, cfg)
    # axolotl turns FSDP on for an fsdp_config alone, its version at the top or inside it
    # (axolotl-ai-cloud/axolotl src/axolotl/utils/schemas/validation.py
    # @067b021c8b87a9e5e380b9173c704cf7340e30f5 _resolve_fsdp_version)
    distributed_settings(k, base, cfg, fsdp_config_alone=True)
    _ray_workers(k, cfg)
    _defaults(k, cfg)
    return AXOLOTL_KEYS


def _method(k: Keys, cfg: FrameworkConfig) -> None:
    """axolotl's adapter (LoRA, QLoRA, DoRA, rsLoRA, ReLoRA) or unfrozen parameters."""
    s = cfg.settings
    adapter = (k.text("adapter") or "").lower()
    if adapter in ("lora", "qlora"):
        # a 4-bit base only for qlora (loaders/model.py ModelLoader._set_quantization_config
        # builds no quantisation config for lora + load_in_4bit)
        s["method"] = adapter
        if adapter == "lora" and k.flag("load_in_4bit"):
            cfg.notes.append(
                "load_in_4bit with adapter: lora: axolotl quantises to 4 bits only for "
                "adapter: qlora; estimated on a 16-bit base."
            )
        if k.flag("load_in_8bit") and adapter == "lora":
            s.update(method="qlora", quant="int8")
        if k.flag("gptq") and adapter == "lora":  # LoRA over a GPTQ checkpoint's int4 linears
            s.update(method="qlora", quant="int4")
        if k.flag("peft_use_dora"):
            s["method"] = "dora"
    elif adapter == "llama-adapter":
        _llama_adapter(k, s)
    elif adapter:
        # plugin adapters (MoRA) train other tensors, which full finetuning would overstate
        # many times over (utils/schemas/peft.py@067b021c8b87 validate_adapter)
        raise ConfigError(
            f"{k.file}: adapter: {adapter} is not modelled (ftmem models axolotl's lora, "
            "qlora and llama-adapter adapters, with peft_use_dora / peft_use_rslora / relora)."
        )
    elif patterns := k.patterns("unfrozen_parameters"):
        # full finetuning restricted to the parameters matching these regular expressions
        s.update(method="partial", trainable_modules=",".join(patterns))
    if "method" in s and s["method"] != "partial":
        if k.patterns("unfrozen_parameters"):
            cfg.notes.append(
                "unfrozen_parameters with an adapter: axolotl freezes every parameter the "
                "patterns do not match after adding the adapter (train.py "
                "setup_model_and_tokenizer, utils/freeze.py freeze_layers_except); estimated "
                "as the adapter alone training."
            )
        lora_numbers(k, cfg)
        if k.flag("lora_target_linear"):
            s["lora_targets"] = "all-linear"
        elif targets := peft_targets(k.names("lora_target_modules")):
            s["lora_targets"] = targets
        _quant_options(k, cfg)
        _adapter_notes(k, cfg)
    if k.flag("peft_use_rslora") and s.get("method") == "lora":
        s["method"] = "rslora"
    # ReLoRA: relora (utils/schemas/peft.py) or its older relora_steps
    if (k.flag("relora") or k.integer("relora_steps")) and s.get("method") == "lora":
        s["method"] = "relora"


def _llama_adapter(k: Keys, s: dict[str, Any]) -> None:
    """``adapter: llama-adapter``: peft's adaption prompt, built as
    ``AdaptionPromptConfig(adapter_layers=cfg.peft_adapter.layers,
    adapter_len=cfg.peft_adapter.len)`` (loaders/adapter.py load_llama_adapter); peft has no
    defaults for either, so a config without them does not run in axolotl."""
    section = k.section("peft_adapter")
    layers, length = section.integer("layers"), section.integer("len")
    if layers is None or length is None:
        raise ConfigError(
            f"{k.file}: adapter: llama-adapter needs peft_adapter.layers and peft_adapter.len "
            "(axolotl hands them to peft's AdaptionPromptConfig, which has no defaults)."
        )
    s.update(method="adaption-prompt", adapter_layers=layers, adapter_prompt_length=length)


def _quant_options(k: Keys, cfg: FrameworkConfig) -> None:
    """``bnb_config_kwargs`` over axolotl's 4-bit config (loaders/model.py
    ModelLoader._set_quantization_config: NF4, double quantisation, as ftmem's defaults)."""
    if cfg.settings.get("method") != "qlora" or "quant" in cfg.settings:
        return
    bnb = k.section("bnb_config_kwargs")
    if "bnb_4bit_use_double_quant" in bnb:
        cfg.settings["double_quant"] = bnb.flag("bnb_4bit_use_double_quant")
    if kind := bnb.choice("bnb_4bit_quant_type", ("nf4", "fp4")):
        cfg.settings["quant"] = kind


def _adapter_notes(k: Keys, cfg: FrameworkConfig) -> None:
    """What axolotl's adapter options change that ftmem does not model."""
    if k.text("lora_model_dir"):
        cfg.notes.append(
            "lora_model_dir: axolotl loads that adapter with its own rank and targets "
            "(its adapter_config.json); the estimate uses this file's lora_* keys."
        )
    # peft's target_parameters (axolotl utils/schemas/peft.py LoraConfig
    # lora_target_parameters, passed to peft's LoraConfig as they are)
    with_target_parameters(k, "lora_target_parameters", cfg)
    kernels = [x for x in ("lora_qkv_kernel", "lora_o_kernel", "lora_mlp_kernel") if k.flag(x)]
    if kernels:
        cfg.notes.append(
            f"{', '.join(kernels)}: axolotl's LoRA autograd functions (kernels/lora.py; the "
            "MLP's with a SwiGLU/GEGLU Triton kernel) replace peft's forward there and save "
            "other tensors; estimated with peft's."
        )
    # axolotl's schema refuses these since they were removed (axolotl-ai-cloud/axolotl
    # src/axolotl/utils/schemas/validation.py@067b021c8 check_deprecated_unsloth_fields);
    # older releases patched single Unsloth kernels into its own model code, a part of
    # Unsloth's path that ftmem.profiles.UNSLOTH (all of it) does not describe
    if removed := [x for x in UNSLOTH_KEYS if k.flag(x)]:
        cfg.notes.append(
            f"{', '.join(removed)}: removed from axolotl (its config validation refuses them; "
            "lora_qkv_kernel, lora_o_kernel, lora_mlp_kernel replace them); the Unsloth "
            "kernels older releases patched in are not modelled."
        )
    if k.raw("peft") is not None:
        cfg.notes.append("peft: its options (LoftQ initialisation and others) are not modelled.")


UNSLOTH_KEYS = (
    "unsloth_lora_qkv",
    "unsloth_lora_o",
    "unsloth_lora_mlp",
    "unsloth_cross_entropy_loss",
    "unsloth_rms_norm",
    "unsloth_rope",
)


def _modules_to_save(k: Keys, cfg: FrameworkConfig) -> None:
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


def _checkpointing(k: Keys, cfg: FrameworkConfig) -> None:
    """Checkpointing and activation offloading. ``gradient_checkpointing: offload`` is
    checkpointing with ``activation_offloading: true``, ``offload_disk`` with ``disk``
    (utils/schemas/validation.py check_gradient_checkpointing_w_offload); "unsloth" was
    its older releases' name for the first."""
    s = cfg.settings
    mode = k.flag_or_text("gradient_checkpointing", ("offload", "offload_disk", "unsloth"))
    offload = k.flag_or_text("activation_offloading", ("legacy", "disk", "hidden_states"))
    if mode:
        s["grad_ckpt"] = True
    if mode in ("offload", "unsloth"):
        offload = True
    elif mode == "offload_disk":
        offload = "disk"
    if offload:
        # the checkpointed blocks' inputs go to the host with every other saved tensor
        s["activation_offload"] = True
        if not mode:
            cfg.notes.append(
                "activation_offloading without gradient_checkpointing: axolotl refuses it "
                "(validation.py check_activation_offloading_wo_gc); estimated as offloading."
            )
    if offload == "disk":
        cfg.notes.append(
            "activation offloading to disk: the GPU holds what offloading to host RAM holds "
            "(estimated so); the files are not counted."
        )
    elif offload == "hidden_states":
        cfg.notes.append(
            "activation_offloading: hidden_states moves only the checkpointed blocks' inputs "
            "to the host; estimated as offloading every saved tensor, which counts the ones "
            "outside the blocks (the LM head's input) on the host too."
        )
    ckpt = k.section("gradient_checkpointing_kwargs")
    if ckpt.flag("use_reentrant"):
        cfg.notes.append(
            "gradient_checkpointing_kwargs use_reentrant: true: estimated as non-reentrant "
            "checkpointing (the variant ftmem measures)."
        )
    if others := sorted(x for x in ckpt if x != "use_reentrant"):
        cfg.notes.append(f"gradient_checkpointing_kwargs {', '.join(others)}: not read by ftmem.")


def _plugins(k: Keys, cfg: FrameworkConfig) -> frozenset[str]:
    """The plugins the file lists; the ones that change a step and are not the loss
    plugins (read by _loss) each get a note."""
    plugins = frozenset(k.names("plugins") or ())
    for name in sorted(plugins - {CCE_PLUGIN, LIGER_PLUGIN} - QUIET_PLUGINS):
        effect = PLUGIN_EFFECTS.get(name.rsplit(".", 1)[-1])
        what = f" ({effect})" if effect else ""
        cfg.notes.append(f"plugins: {name}{what} is not modelled; the estimate leaves it out.")
    return plugins


def _loss(k: Keys, cfg: FrameworkConfig, plugins: frozenset[str]) -> None:
    """Cut Cross-Entropy and Liger's kernels. axolotl acts on their keys only through
    their plugins (integrations/config.py merge_input_args adds the plugin's keys)."""
    if CCE_PLUGIN in plugins and k.raw("cut_cross_entropy") is not False:
        # integrations/cut_cross_entropy/args.py: cut_cross_entropy defaults to true
        cfg.settings["loss"] = "fused"
        cfg.notes.append(
            "Cut Cross-Entropy (CutCrossEntropyPlugin): estimated as Liger's fused linear "
            "cross-entropy, the closest loss ftmem models: neither keeps the logits. CCE "
            "keeps only a per-row fp32 log-sum-exp until backward (apple/ml-cross-entropy "
            "cce.py LinearCrossEntropyFunction), where Liger keeps the input's gradient "
            "(tokens × hidden) and a trainable head's weight gradient: the estimate is high "
            "by about that much."
        )
    elif k.flag("cut_cross_entropy"):
        cfg.notes.append(
            f"cut_cross_entropy: true does nothing without {CCE_PLUGIN} in plugins; not applied."
        )
    liger = LIGER_PLUGIN in plugins
    if k.flag("liger_fused_linear_cross_entropy"):
        cfg.settings["loss"] = "fused"
    if k.flag("liger_cross_entropy"):
        cfg.notes.append(
            "liger_cross_entropy: Liger's cross-entropy over full logits (its gradient "
            "written in place) is not modelled; estimated as the standard loss."
        )
    if kernels := [x for x in LIGER_KERNELS if k.flag(x)]:
        cfg.notes.append(
            f"{', '.join(kernels)}: Liger's fused kernels are not modelled; they save fewer "
            "tensors than transformers' modules, whose saved tensors the estimate counts."
        )
    given = [x for x in ("liger_fused_linear_cross_entropy", "liger_cross_entropy") if k.flag(x)]
    if (given or kernels) and not liger:
        cfg.notes.append(
            f"liger_* keys: axolotl applies them only with {LIGER_PLUGIN} in plugins, which "
            "this file does not list; estimated as the keys ask."
        )


def _precision(k: Keys, cfg: FrameworkConfig) -> None:
    """axolotl's dtypes (utils/config/__init__.py resolve_dtype): bf16 (or "auto", the
    default, on a GPU with bf16, unless fp16 is set) loads the weights in bf16 and turns on
    HF Trainer's bf16 autocast; fp16 loads them in fp16 with fp16 autocast; bfloat16 /
    float16 (or load_in_8bit) load them so with no autocast; else they load in fp32."""
    s = cfg.settings
    fp16 = k.flag("fp16")
    bf16 = k.flag_or_text("bf16", ("auto",))
    silent = k.raw("bf16") is None
    if silent or bf16 == "auto":
        bf16 = not fp16
    if bf16 and silent:
        said = f"bf16: auto, on a GPU with bf16; {AXOLOTL} utils/config resolve_dtype"
        assume(cfg, "precision", "bf16", said)
        assume(cfg, "autocast", True, said)
    elif bf16:
        s.update(precision="bf16", autocast=True)
    elif fp16:
        s.update(precision="fp16", autocast=True)
    elif k.flag("bfloat16"):
        s["precision"] = "bf16"
    elif k.flag("float16") or k.flag("load_in_8bit"):
        s["precision"] = "fp16"
    else:
        s["precision"] = "fp32"
    if k.flag("fp8"):
        cfg.notes.append("fp8: torchao's float8 training is not modelled; estimated without it.")


def _attention(k: Keys, cfg: FrameworkConfig) -> None:
    """``attn_implementation``, or the legacy switches axolotl maps onto it; it refuses
    both together (utils/schemas/config.py normalize_attn_implementation)."""
    legacy = [key for key in LEGACY_ATTENTION if k.flag(key)]
    name = k.text("attn_implementation")
    if name and legacy:
        raise ConfigError(
            f"{k.file}: attn_implementation cannot be combined with {', '.join(legacy)} "
            "(axolotl refuses both; keep attn_implementation)."
        )
    if name in AXOLOTL_ATTENTION:
        cfg.settings["attn"] = AXOLOTL_ATTENTION[name]
    elif name:
        cfg.settings["attn"] = attention(k, "attn_implementation", cfg)
    elif legacy:
        backend = LEGACY_ATTENTION[legacy[0]]
        if backend not in ATTENTION:
            cfg.notes.append(
                f"{legacy[0]}: {backend} is not modelled; estimated with sdpa's memory."
            )
        cfg.settings["attn"] = ATTENTION.get(backend, "sdpa")
    elif k.flag("gemma4_hybrid_attn_impl"):
        cfg.settings["attn"] = "flash"  # its sliding-window layers run FlashAttention-2


def _training_objective(k: Keys, cfg: FrameworkConfig) -> None:
    """Trainers other than SFT of one causal LM: estimated as SFT, with what they add."""
    if (rl := k.text("rl")) and rl.lower() in PREFERENCE_RL:
        _preference_rl(k, cfg, rl.lower())
    elif rl and rl.lower() == "grpo" and _grpo_rl(k, cfg):
        pass
    elif rl:
        cfg.notes.append(_rl_note(k, cfg, rl))
    elif k.raw("trl") is not None:
        cfg.notes.append("trl: options of axolotl's RL trainers; unused without rl.")
    if k.raw("vllm") is not None and cfg.settings.get("vllm") != "server":
        cfg.notes.append(
            "vllm: the vLLM engine that generates for the RL trainer is not counted (its "
            "gpu_memory_utilization share of a GPU when colocated)."
        )
    if k.flag("reward_model") or k.flag("process_reward_model"):
        cfg.notes.append(
            "reward_model: a classification head (num_labels outputs) replaces the LM head; "
            "estimated as a causal LM, with the vocabulary-wide logits it does not compute."
        )
    for key, what in (
        ("diffusion", "the masked-diffusion objective"),
        ("ebft", "energy-based finetuning's generation and feature model"),
        ("use_eaft", "EAFT's entropy-weighted loss (its top-k over the logits)"),
        ("llmcompressor", "llm-compressor's sparsity masks"),
        ("lisa_n_layers", "LISA's sampled trainable layers (estimated as the file's method)"),
        ("qat", "quantisation-aware training's fake-quantised weights and activations"),
        ("use_onebitllms", "1-bit (BitNet-style) linears"),
    ):
        if k.raw(key) not in (None, False):
            cfg.notes.append(f"{key}: {what} not modelled; the estimate leaves it out.")


def _preference_rl(k: Keys, cfg: FrameworkConfig, rl: str) -> None:
    """A preference trainer as --objective, and what axolotl adds that ftmem does not model:
    a reference loaded beside an adapter (rl_adapter_ref_model), the reference axolotl
    loads for simpo without an adapter though CPOTrainer takes none (train.py@067b021c8b87
    setup_reference_model loads one for every rl but orpo). simpo runs CPOTrainer with
    loss_type simpo and cpo_alpha only where the file gives it (core/builders/rl.py
    @067b021c8b87:137-140), else CPOConfig's 1.0: CPO then adds the chosen half's
    cross-entropy (trl 1.16.0 trl/experimental/cpo/cpo_trainer.py:842-845), the tensors
    ORPO's holds (orpo_trainer.py:800; measured equal on the real trainers,
    tests/test_integrations_hf.py): estimated as --objective orpo."""
    cfg.settings["objective"] = rl
    if rl in ("dpo", "ipo") and k.flag("precompute_ref_log_probs"):
        cfg.settings["precompute_ref"] = True
    adapter = cfg.settings.get("method") in ADAPTER_METHODS
    if rl in ("dpo", "ipo", "kto") and adapter and k.flag("rl_adapter_ref_model"):
        cfg.notes.append(
            "rl_adapter_ref_model: the separate reference model axolotl loads beside the "
            "adapter is not counted (estimated with the adapter disabled as the reference)."
        )
    if rl == "simpo":
        if not adapter:
            cfg.notes.append(
                "rl: simpo without an adapter: the reference copy axolotl loads (unused by "
                "CPOTrainer) is not counted."
            )
        alpha = k.number("cpo_alpha")
        if alpha is None or alpha != 0:
            said = (
                "cpo_alpha unset: TRL CPOConfig's 1.0" if alpha is None else f"cpo_alpha {alpha:g}"
            )
            cfg.settings["objective"] = "orpo"
            cfg.notes.append(
                f"rl: simpo with {said}: CPOTrainer adds the cross-entropy of the chosen "
                "sequences (its log-softmax over their logits), as ORPO does: estimated as "
                "--objective orpo (no reference either); cpo_alpha: 0 for SimPO alone."
            )


def _grpo_rl(k: Keys, cfg: FrameworkConfig) -> bool:
    """rl: grpo as --objective grpo (ftmem.grpo): axolotl's AxolotlGRPOTrainer is TRL's
    GRPOTrainer, its trl: section passed to GRPOConfig (axolotl-ai-cloud/axolotl
    src/axolotl/core/trainers/grpo/__init__.py GRPOStrategy.set_training_args_kwargs:
    num_generations, max_completion_length, num_iterations, use_vllm,
    vllm_gpu_memory_utilization; beta by the RL builder). False (the SFT estimate and its
    note) with a reference loaded beside the adapter (rl_adapter_ref_model)."""
    s = cfg.settings
    if k.flag("rl_adapter_ref_model"):
        return False
    trl = k.section("trl")
    s["objective"] = "grpo"
    if (n := trl.integer("num_generations")) is not None:
        s["num_generations"] = n
    if (c := trl.integer("max_completion_length")) is not None:
        s["completion_len"] = c
    else:
        cfg.notes.append(
            "trl.max_completion_length unset: axolotl passes None to GRPOConfig; estimated "
            "with TRL's default, 512 generated tokens."
        )
    completion = s.get("completion_len", 512)
    if s.get("seq_len", 0) <= completion:
        given = s.get("seq_len")
        s["seq_len"] = completion + (given or 512)
        cfg.notes.append(
            f"GRPO: a sequence is the prompt and the completion; "
            f"{'sequence_len ' + str(given) if given else 'no prompt length'} read as the "
            f"prompt: --seq-len {s['seq_len']}."
        )
    if (beta := trl.number("beta", low=0.0)) is not None:
        s["kl_beta"] = beta
    if (iterations := trl.integer("num_iterations")) is not None:
        s["num_iterations"] = iterations
    if trl.flag("use_vllm"):
        # axolotl's own `axolotl vllm-serve` runs the engine as a server; colocate when asked
        mode = trl.choice("vllm_mode", ("colocate", "server")) or "server"
        s["vllm"] = mode
        share = trl.number("vllm_gpu_memory_utilization", low=0.0, below=1.0)
        if mode == "colocate" and share is not None:
            s["vllm_memory_share"] = share
        if mode == "server":
            _vllm_server(k.section("vllm"), s)
    return True


def _vllm_server(vllm: Keys, s: dict[str, Any]) -> None:
    """The `vllm:` section `axolotl vllm-serve` starts the server with (axolotl@067b021c8b87
    src/axolotl/cli/vllm_serve.py: tensor_parallel_size and data_parallel_size, 1 when
    unset; gpu_memory_utilization, 0.9 in utils/schemas/vllm.py VllmConfig)."""
    if (tp := vllm.integer("tensor_parallel_size")) is not None:
        s["vllm_tensor_parallel"] = tp
    if (dp := vllm.integer("data_parallel_size")) is not None:
        s["vllm_data_parallel"] = dp
    if (share := vllm.number("gpu_memory_utilization", low=0.0, below=1.0)) is not None:
        s["vllm_memory_share"] = share


def _rl_note(k: Keys, cfg: FrameworkConfig, rl: str) -> str:
    """What ``rl`` adds beyond SFT. The reference: with an adapter, TRL's forward with the
    adapter off; else a second copy of the model (train.py setup_reference_model; not for
    ORPO, nor GRPO / EBFT with trl.beta 0)."""
    if cfg.settings.get("method") in ADAPTER_METHODS and not k.flag("rl_adapter_ref_model"):
        reference = "the reference log-probabilities (a no-grad forward with the adapter off)"
    else:
        reference = "the reference model (a second copy of the weights) and its no-grad forward"
    added = RL_NOT_COUNTED.get(rl.lower(), "what that trainer adds").format(reference=reference)
    return f"rl: {rl} is estimated as supervised finetuning of one model; not counted: {added}."


def _kernels_and_formats(k: Keys, cfg: FrameworkConfig) -> None:
    """Kernels and weight formats that change what a step keeps, which ftmem does not model."""
    switches = {
        "use_kernels": "Hub kernels replace transformers' modules",
        "use_scattermoe": "ScatterMoE's experts kernel",
        "use_sonicmoe": "SonicMoE's experts kernel",
        "llama4_linearized_experts": "Llama 4's experts as separate linears (quantisable)",
        "quantize_moe_experts": "the MoE experts quantised on load (ftmem keeps them 16-bit)",
        "tiled_mlp": "the MLP run in sequence tiles and recomputed (ALST)",
        "fused_attn_kernel": "the fused RMSNorm + RoPE kernel of Qwen3 / Gemma 4",
        "flash_attn_cross_entropy": "flash-attn's cross-entropy",
        "flash_attn_rms_norm": "flash-attn's RMSNorm",
        "flash_attn_fuse_mlp": "flash-attn's fused MLP",
        "flash_optimum": "BetterTransformer",
        "use_dsv4_kernels": "DeepSeek-V4's kernels",
        "use_glm_dsa_kernels": "GLM's sparse-attention kernels",
        "nvfp4_merge_aware": "NVFP4 merge-aware training",
        "reinit_weights": "re-initialised weights",
        "resize_token_embeddings_to_32x": "the vocabulary padded to a multiple of 32",
    }
    for key, what in switches.items():
        if k.flag(key):
            cfg.notes.append(f"{key}: {what}; not modelled.")
    if (impl := k.text("experts_implementation")) and impl != "grouped_mm":
        cfg.notes.append(
            f"experts_implementation: {impl} is not modelled; estimated as transformers' "
            "grouped experts (grouped_mm)."
        )
    for key in ("model_quantization_config", "dsv4_fp4_grouped_mode"):
        if value := k.text(key):
            dequantized = k.section("model_quantization_config_kwargs").flag("dequantize")
            if key == "model_quantization_config" and dequantized:
                continue  # dequantised to the load dtype, as estimated
            cfg.notes.append(f"{key}: {value} weights are not modelled; estimated in 16 bits.")
    # model_config overrides the loaded config's attributes one by one (axolotl@067b021c
    # src/axolotl/loaders/utils.py l.201-203, the schema's alias of overrides_of_model_config)
    overrides = k.section("model_config")
    if "output_router_logits" in overrides:
        on = overrides.flag("output_router_logits")
        read_router_aux_loss(cfg, on, f"model_config output_router_logits {str(on).lower()}")
    if (groups := k.integer("gptq_groupsize", minimum=-1)) is not None and groups != 128:
        cfg.notes.append(f"gptq_groupsize {groups}: estimated with int4's 128 inputs per scale.")
    if k.raw("device_map") == "auto":
        cfg.notes.append(
            "device_map: auto spreads the layers over every visible GPU; estimated on one."
        )


def _parallel_degrees(k: Keys, cfg: FrameworkConfig) -> None:
    """axolotl's N-D parallelism: the GPU count comes from the launcher, so the degrees
    are named for the command line rather than applied."""
    flags = {"context_parallel_size": "--cp", "sequence_parallel_degree": "--cp",
             "tensor_parallel_size": "--tp"}  # fmt: skip
    for key, flag in flags.items():
        if (n := k.integer(key)) and n > 1:
            cfg.notes.append(
                f"{key} {n}: not applied (the GPU count comes from the launcher); give "
                f"--gpus and {flag} {n}."
            )
    for key, what in (
        ("dp_shard_size", "FSDP shards over"),
        ("dp_replicate_size", "replicas of the sharded group (HSDP):"),
        ("expert_parallel_size", "the experts are split over"),
    ):
        if (n := k.integer(key)) and n > 1:
            cfg.notes.append(f"{key} {n}: {what} {n} GPUs; not modelled beyond --strategy.")


def _ray_workers(k: Keys, cfg: FrameworkConfig) -> None:
    """use_ray: axolotl launches itself, ray_num_workers workers of resources_per_worker
    ({"GPU": 1} by default) each (cli/train.py TorchTrainer ScalingConfig; utils/schemas/
    integrations.py RayConfig): the GPU count, so ZeRO-3 or FSDP shard over that many."""
    workers = k.integer("ray_num_workers") or 1
    if not k.flag("use_ray") or workers == 1:
        return
    per_worker = k.section("resources_per_worker").number("GPU", low=0.0)
    if per_worker not in (None, 1):
        cfg.notes.append(
            f"resources_per_worker GPU {per_worker:g}: not one GPU per Ray worker; give --gpus."
        )
        return
    cfg.settings["gpus"] = workers
    cfg.notes = [n for n in cfg.notes if n != LAUNCHER_NOTE]
    cfg.notes.append(
        f"use_ray with ray_num_workers {workers}: axolotl's Ray TorchTrainer runs {workers} "
        "workers of one GPU each: estimated per GPU on that many."
    )


def _defaults(k: Keys, cfg: FrameworkConfig) -> None:
    """axolotl's defaults where the file is silent, each with its source."""
    schema = f"{AXOLOTL} utils/schemas"
    assume(cfg, "seq_len", 512, f"sequence_len; {schema}/config.py AxolotlInputConfig")
    assume(cfg, "batch_size", 1, f"micro_batch_size; {schema}/training.py")
    if (total := k.integer("batch_size")) is not None and "grad_accum" not in cfg.settings:
        # utils/config normalize_config: batch_size // micro_batch_size (one GPU)
        accum = max(1, total // cfg.settings["batch_size"])
        assume(cfg, "grad_accum", accum, "batch_size // micro_batch_size; normalize_config")
    assume(cfg, "grad_accum", 1, f"gradient_accumulation_steps; {schema}/training.py")
    if "optimizer" not in cfg.settings and k.raw("optimizer") is None:
        said = f"adamw_torch_fused; {schema}/training.py HyperparametersConfig.optimizer"
        assume(cfg, "optimizer", "adamw", said)
        assume(cfg, "optimizer_impl", "fused", said)
    if cfg.settings.get("method") in ADAPTER_METHODS:
        assume(cfg, "lora_dropout", 0.0, f"lora_dropout; {schema}/peft.py LoraConfig")
    if _evaluates(k):
        if (batch := k.integer("eval_batch_size")) is not None:
            cfg.settings["eval_batch_size"] = batch
        micro = cfg.settings["batch_size"]
        assume(cfg, "eval_batch_size", micro, "micro_batch_size; utils/config normalize_config")


def _evaluates(k: Keys) -> bool:
    """Whether the run evaluates: on held-out data (val_set_size, test_datasets) every
    eval_steps, or evals_per_epoch times an epoch (normalize_config turns it into
    eval_steps when there is more than one evaluation in the run), or per eval_strategy
    (core/builders/base.py _configure_save_and_eval_strategy; HF's default is "no")."""
    held_out = (k.number("val_set_size", low=0.0) or 0.0) > 0 or bool(k.raw("test_datasets"))
    strategy = k.text("eval_strategy") or k.text("evaluation_strategy")
    if not held_out or strategy == "no":
        return False
    epochs = k.number("num_epochs", low=0.0) or 1.0  # utils/schemas/training.py default
    per_epoch = k.integer("evals_per_epoch")
    return bool(strategy or k.number("eval_steps") or (per_epoch and per_epoch * epochs > 1))


# the keys read above; read_framework_config lists every other one as ignored
AXOLOTL_KEYS = frozenset(
    {
        "base_model",
        "base_model_config",
        "adapter",
        "peft_adapter",
        "load_in_4bit",
        "load_in_8bit",
        "gptq",
        "gptq_groupsize",
        "bnb_config_kwargs",
        "peft_use_dora",
        "peft_use_rslora",
        "relora_steps",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_linear",
        "lora_target_modules",
        "lora_modules_to_save",
        "lora_model_dir",
        "lora_target_parameters",
        "lora_qkv_kernel",
        "lora_o_kernel",
        "lora_mlp_kernel",
        *UNSLOTH_KEYS,
        "peft",
        "unfrozen_parameters",
        "sequence_len",
        "micro_batch_size",
        "batch_size",
        "gradient_accumulation_steps",
        "gradient_checkpointing",
        "gradient_checkpointing_kwargs",
        "activation_offloading",
        "plugins",
        "cut_cross_entropy",
        "liger_fused_linear_cross_entropy",
        "liger_cross_entropy",
        *LIGER_KERNELS,
        "optimizer",
        "bf16",
        "fp16",
        "bfloat16",
        "float16",
        "fp8",
        "attn_implementation",
        *LEGACY_ATTENTION,
        "gemma4_hybrid_attn_impl",
        "sample_packing",
        "pad_to_sequence_len",
        "torch_compile",
        "rl",
        "rl_adapter_ref_model",
        "precompute_ref_log_probs",
        "cpo_alpha",
        "trl",
        "vllm",
        "relora",
        "num_labels",
        "val_set_size",
        "test_datasets",
        "num_epochs",
        "evals_per_epoch",
        "eval_steps",
        "eval_strategy",
        "evaluation_strategy",
        "eval_batch_size",
        "reward_model",
        "process_reward_model",
        "diffusion",
        "ebft",
        "use_eaft",
        "llmcompressor",
        "lisa_n_layers",
        "qat",
        "use_onebitllms",
        "use_kernels",
        "use_scattermoe",
        "use_sonicmoe",
        "llama4_linearized_experts",
        "quantize_moe_experts",
        "tiled_mlp",
        "fused_attn_kernel",
        "flash_attn_cross_entropy",
        "flash_attn_rms_norm",
        "flash_attn_fuse_mlp",
        "flash_optimum",
        "use_dsv4_kernels",
        "use_glm_dsa_kernels",
        "nvfp4_merge_aware",
        "reinit_weights",
        "resize_token_embeddings_to_32x",
        "experts_implementation",
        "model_quantization_config",
        "model_quantization_config_kwargs",
        "dsv4_fp4_grouped_mode",
        "model_config",
        "device_map",
        "use_ray",
        "ray_num_workers",
        "resources_per_worker",
        "context_parallel_size",
        "sequence_parallel_degree",
        "tensor_parallel_size",
        "dp_shard_size",
        "dp_replicate_size",
        "expert_parallel_size",
        "deepspeed",
        "fsdp",
        "fsdp_config",
        "fsdp_version",
    }
)
