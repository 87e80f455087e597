"""torchtune recipe configs: the model builder names the model and the method; dtype, loss,
optimizer, offloading, compile and FSDP2 sharding as the recipe applies them.

Sources (pytorch/torchtune at bd2a0fc7c31430972728494fa01aaeeb0ebf1ba1): the recipes
(recipes/lora_finetune_single_device.py, recipes/full_finetune_distributed.py, ...), the
loss (torchtune/modules/loss/cross_entropy_loss.py), the sharding
(torchtune/training/_distributed.py shard_model) and the datasets
(torchtune/datasets/_alpaca.py, torchtune/modules/transforms/tokenizers/_utils.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ftmem.errors import ConfigError
from ftmem.filekeys import Keys
from ftmem.frameworks.distributed import LAUNCHER_NOTE
from ftmem.frameworks.shared import (
    MAX_CONFIG_BYTES,
    FrameworkConfig,
    assume,
    bnb_class,
    lora_numbers,
    settings_from,
    torchao_optimizer,
)
from ftmem.presets import model_presets
from ftmem.textfiles import read_text

TORCHTUNE_MODEL = re.compile(
    r"(?:q?lora_)?(llama3_[123]|llama3|llama2|mistral|qwen3|qwen2_5|qwen2|gemma2|gemma|phi3|phi4)_"
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
    "phi4": "phi4",
}
# builders whose size is not in the preset's id: phi3_mini is Phi-3-mini-4k, phi4_14b is
# microsoft/phi-4 (torchtune/models/phi4/_model_builders.py@bd2a0fc7 phi4_14b)
TORCHTUNE_NAMED = {("phi3", "mini"): "phi3-mini", ("phi4", "14b"): "phi-4"}
TORCHTUNE_MODULES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "output_proj": "o"}
TORCHTUNE_DTYPES = {"bf16": "bf16", "fp32": "fp32", "fp16": "fp16"}

# the config's header names the recipe it runs under ("tune run --nproc_per_node 2
# full_finetune_distributed --config ...", or "... in full_finetune_distributed.py")
RECIPE_RUN = re.compile(r"tune run(?:\s+--\w+\s+\d+)*\s+([\w/]+)")
RECIPE_FILE = re.compile(r"\bin\s+([\w/]+)\.py\b")
# recipes that train nothing: the config is for evaluation, generation or quantisation
NOT_TRAINING = ("eleuther_eval", "generate", "quantize", "dev/generate_v2")
# keys of the evaluation and generation configs (recipes/eleuther_eval.py, generate.py)
NOT_TRAINING_KEYS = ("tasks", "prompt", "max_new_tokens", "enable_kv_cache")
# keys only the distributed recipes read (recipes/full_finetune_distributed.py __init__)
DISTRIBUTED_KEYS = (
    "fsdp_cpu_offload",
    "fsdp_reshard_after_forward",
    "data_parallel_shard_dim",
    "data_parallel_replicate_dim",
    "tensor_parallel_dim",
    "tensor_parallel_plan",
    "custom_sharded_layers",
)
# recipes and losses that are not supervised finetuning of one model
NOT_SFT = {
    "dpo": "DPO with a loss other than DPOLoss or RSOLoss",
    "ppo": "PPO (reference, reward and value models, and generation)",
    # recipes/dev/async_grpo_full_finetune_distributed.py: vLLM inference workers, Ray
    # actors; the synchronous recipe is --objective grpo (ftmem.torchtune_grpo)
    "grpo": "GRPO (the asynchronous recipe, dev/async_grpo_full_finetune_distributed: vLLM "
    "inference workers and training workers as Ray actors on separate GPUs; only the synchronous "
    "recipe, dev/grpo_full_finetune_distributed, is modelled as --objective grpo)",
    "knowledge_distillation": "knowledge distillation (the teacher model and its logits)",
}

# this framework's keys that do not change memory (beyond frameworks.shared's)
NO_MEMORY_EFFECT: frozenset[str] = frozenset(
    {
        "log_level",
        "log_peak_memory_stats",
        "max_steps_per_epoch",
        "save_adapter_weights_only",
        "checkpointer",
        "enable_async_checkpointing",
        # host RAM of a QLoRA checkpoint save (torchtune/modules/common_utils.py
        # _register_reparametrize_state_dict_hooks)
        "low_cpu_ram",
        "collate_fn",
        "save_every_n_epochs",
        "name",  # a run name other keys interpolate (dev/3B_sft_for_grpo.yaml)
        # the GRPO recipe's (recipes/dev/grpo_full_finetune_distributed.py@bd2a0fc7c314):
        # a path other keys interpolate, sampling settings (top_k's top-k values are
        # R x k), the step count, the rewards computed on the CPU from decoded text
        "base_model_path",
        "temperature",
        "top_k",
        "num_steps",
        "reward_functions",
        "stop_token_ids",
        "fsdp",  # an older spelling no recipe reads any more (recipes/*.py at bd2a0fc)
    }
)

# the keys read() reads; read_framework_config lists every other one as ignored
TORCHTUNE_KEYS = frozenset(
    {
        "model",
        "dtype",
        "tokenizer",
        "dataset",
        "batch_size",
        "gradient_accumulation_steps",
        "enable_activation_checkpointing",
        "enable_activation_offloading",
        "optimizer",
        "optimizer_in_bwd",
        "loss",
        "compile",
        "run_val_every_n_steps",
        "batch_size_val",
        "dataset_val",
        "quantizer",
        "teacher_model",
        "kd_loss",
        *DISTRIBUTED_KEYS,
    }
)
# the synchronous GRPO recipe's keys (recipes/dev/grpo_full_finetune_distributed.py
# setup, l. 146-157 and 216-225)
GRPO_RECIPE = "dev/grpo_full_finetune_distributed"
GRPO_KEYS = frozenset(
    {"grpo_samples", "forward_batch_size", "max_generated_tokens", "ppo_epochs", "ref_checkpointer"}
)


def read(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
    k = Keys(resolved({key: k.raw(key) for key in k}, k.file), k.file)
    _unresolved(k)
    recipe = _recipe(cfg.path)
    if not _trains(k, recipe):
        raise ConfigError(
            f"{cfg.path}: this is a torchtune {recipe or 'evaluation or generation'} config, "
            "not a training one; ftmem estimates training runs."
        )
    if "policy_model" in k and "model" not in k:
        raise ConfigError(
            f"{cfg.path}: this is a torchtune PPO config (policy, value, reward and reference "
            "models in one run), which ftmem does not model; it estimates one model's training."
        )
    s = cfg.settings
    _torchtune_model(k.section("model"), cfg)
    cfg.notes.append(
        "torchtune runs its own model code: estimated with the transformers layout of the "
        "same model, whose weights match; saved activations may differ a little."
    )
    _precision(k, cfg)
    if s.get("method") in ("lora", "dora", "qlora") and s["precision"] != "fp32":
        s["adapter_dtype"] = s["precision"]
    grpo = recipe == GRPO_RECIPE
    if not grpo:
        _sequence_length(k, cfg)
    settings_from(
        k, cfg, (("batch_size", "batch_size"), ("gradient_accumulation_steps", "grad_accum"))
    )
    if k.flag("enable_activation_checkpointing"):
        s["grad_ckpt"] = True
    _torchtune_optimizer(k.section("optimizer"), cfg)
    _loss(k.section("loss"), cfg)
    for key, setting in (
        ("enable_activation_offloading", "activation_offload"),
        ("optimizer_in_bwd", "optimizer_in_backward"),
        ("compile", "compile"),
    ):
        if k.flag(key):
            s[setting] = True
    if s.get("activation_offload") and not s.get("grad_ckpt"):
        # recipes/lora_finetune_single_device.py __init__ raises RuntimeError on this
        cfg.notes.append(
            "enable_activation_offloading without enable_activation_checkpointing: "
            "torchtune's recipes refuse to start; estimated as written."
        )
    _validation(k, cfg)
    _not_sft(k, cfg, recipe)
    if k.raw("quantizer") is not None:
        cfg.notes.append(
            "quantizer: quantisation-aware training's fake-quantised weights and "
            "activations are not modelled; estimated as the same run without it."
        )
    if (recipe or "").endswith("_distributed") or any(key in k for key in DISTRIBUTED_KEYS):
        _fsdp2(k, cfg)
    if grpo:
        _grpo(k, cfg)
        return TORCHTUNE_KEYS | GRPO_KEYS
    return TORCHTUNE_KEYS


INTERPOLATION = re.compile(r"\$\{([^${}]*)\}")
PLAIN_REFERENCE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def resolved(data: dict[str, Any], file: str) -> dict[str, Any]:
    """The file with its OmegaConf ``${a.b}`` references to its own keys replaced by their
    values, as torchtune's config.instantiate sees them (a reference that is the whole
    value takes the referenced value's type); a resolver (``${oc.env:X}``, ``${eval:...}``)
    or a missing key stays as written, and a key ftmem reads that holds one is refused
    by :func:`_unresolved`."""

    def lookup(path: str, seen: tuple[str, ...]) -> Any:
        if path in seen:
            raise ConfigError(f"{file}: ${{{path}}} refers to itself.")
        node: Any = data
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return walk(node, (*seen, path))

    def walk(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            return {key: walk(value, seen) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value, seen) for value in node]
        if not isinstance(node, str) or "${" not in node:
            return node
        whole = INTERPOLATION.fullmatch(node)
        if whole and PLAIN_REFERENCE.fullmatch(whole.group(1)):
            value = lookup(whole.group(1), seen)
            return node if value is None else value

        def text(m: re.Match[str]) -> str:
            if not PLAIN_REFERENCE.fullmatch(m.group(1)):
                return m.group(0)
            value = lookup(m.group(1), seen)
            return m.group(0) if value is None else str(value)

        return INTERPOLATION.sub(text, node)

    return {key: walk(value, ()) for key, value in data.items()}


# the values read() takes, dotted (the model section's, all of them)
READ_VALUES = (
    "dtype",
    "batch_size",
    "gradient_accumulation_steps",
    "enable_activation_checkpointing",
    "enable_activation_offloading",
    "optimizer_in_bwd",
    "compile",
    "run_val_every_n_steps",
    "batch_size_val",
    "fsdp_cpu_offload",
    "fsdp_reshard_after_forward",
    "tensor_parallel_dim",
    "data_parallel_replicate_dim",
    "tokenizer.max_seq_len",
    "dataset.packed",
    "optimizer._component_",
    "optimizer.fused",
    "optimizer.momentum",
    "loss._component_",
    *sorted(GRPO_KEYS - {"ref_checkpointer"}),
)


def _unresolved(k: Keys) -> None:
    """A value ftmem reads that still holds an interpolation (a resolver, or a key the
    file does not have): one sentence naming its key."""
    model = k.raw("model")
    paths = [*READ_VALUES, *(f"model.{m}" for m in (model if isinstance(model, dict) else {}))]
    for path in paths:
        section, _, key = path.rpartition(".")
        value = k.raw(section or key)
        if section and isinstance(value, dict):
            value = value.get(key)
        elif section:  # the section itself may be an interpolation
            path = section
        if isinstance(value, str) and "${" in value:
            raise ConfigError(
                f"{k.file}: {path} is {value!r}, an OmegaConf interpolation ftmem does not "
                "resolve (only ${key} references to the file's own keys); write the value."
            )


def _precision(k: Keys, cfg: FrameworkConfig) -> None:
    """The recipes build the model, adapters too, under set_default_dtype(dtype), with no
    autocast (recipes/lora_finetune_single_device.py _setup_model); ``dtype: null`` is
    fp32 (torchtune/training/precision.py get_dtype), an absent one stops the recipe
    (``cfg.dtype``: OmegaConf raises on a missing key)."""
    if "dtype" not in k:
        cfg.settings["precision"] = "bf16"
        cfg.notes.append(
            "dtype is absent: torchtune's recipes stop without it (cfg.dtype); estimated "
            "in bf16, the dtype of every shipped recipe."
        )
        return
    name = k.choice("dtype", TORCHTUNE_DTYPES)
    if name is None:
        assume(cfg, "precision", "fp32", "dtype null: training.get_dtype(None) is fp32")
        return
    cfg.settings["precision"] = TORCHTUNE_DTYPES[name]


def _trains(k: Keys, recipe: str | None) -> bool:
    """Whether the config is for a training recipe: its header says so, or, where it
    names none, it has an optimizer or a loss, or none of the evaluation and generation
    recipes' own keys."""
    if recipe is not None:
        return not recipe.startswith(NOT_TRAINING)
    return "optimizer" in k or "loss" in k or not any(key in k for key in NOT_TRAINING_KEYS)


def _recipe(path: str) -> str | None:
    """The recipe the config's header comment runs it with, if it names one."""
    try:
        text = read_text(Path(path), "training config", MAX_CONFIG_BYTES)
    except (ConfigError, OSError):
        return None
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    match = RECIPE_RUN.search(comments) or RECIPE_FILE.search(comments)
    return match.group(1) if match else None


def _sequence_length(k: Keys, cfg: FrameworkConfig) -> None:
    """tokenizer.max_seq_len truncates each sample (a batch is padded to its longest
    sample); ``dataset.packed`` packs samples to exactly that length. null (the
    tokenizers' default, torchtune/models/llama3/_model_builders.py llama3_tokenizer)
    truncates nothing (torchtune/modules/transforms/tokenizers/_utils.py
    tokenize_messages_no_special_tokens): the dataset's longest sample decides."""
    tokenizer = k.section("tokenizer")
    seq = tokenizer.integer("max_seq_len")
    packed = _packed(k)
    if packed:
        _packed_rows(cfg)
    else:
        _padded_lengths(cfg)
    if seq is not None:
        cfg.settings["seq_len"] = seq
        if not packed:
            cfg.notes.append(
                f"tokenizer.max_seq_len {seq}: an upper bound (a batch is padded to its "
                "longest sample, cut at this length); give --seq-len for shorter data."
            )
        return
    if packed:  # torchtune/datasets/_alpaca.py alpaca_dataset raises the same
        raise ConfigError(
            f"{k.file}: dataset.packed needs tokenizer.max_seq_len, the length torchtune "
            "packs to; set it."
        )
    cfg.notes.append(
        "tokenizer.max_seq_len is null or absent: torchtune truncates nothing, so the "
        "dataset's longest sample sets the length; without --seq-len the estimate assumes "
        "ftmem's default, 512 tokens: give your longest sample's length in tokens."
    )


def _padded_lengths(cfg: FrameworkConfig) -> None:
    """Unpacked, every batch is padded to its own longest sample: the recipes' default
    collate, ``padded_collate_sft``, pads "to the longest sequence length in the batch"
    (torchtune/data/_collate.py@bd2a0fc7c314; ``padded_collate`` in 0.1,
    torchtune/utils/collate.py@ff594c231), over a sampler that shuffles by default
    (``shuffle: True`` in the shipped configs; StatefulDistributedSampler,
    recipes/lora_finetune_single_device.py@bd2a0fc7c314 _setup_data), and only the GRPO
    recipe (not read here) calls empty_cache between steps: the cache keeps the segments of every record length
    (ftmem.lengths)."""
    cfg.settings["lengths"] = "padded"
    cfg.notes.append(
        "lengths padded: torchtune pads each batch to its longest sample (padded_collate_sft), "
        "so the reserved peak keeps the cache of the shorter batches before the longest "
        "(give --lengths padded:MIN when the shortest is known)."
    )


def _packed_rows(cfg: FrameworkConfig) -> None:
    """Packed, each row holds several samples: padded_collate_packed gives the model
    ``input_pos`` and a block-causal mask, a BlockMask for flex attention on GPUs of sm
    7.5 and later (torchtune/data/_collate.py, torchtune/modules/attention_utils.py,
    torchtune/utils/_import_guard.py @1814feb17a90): ftmem.ops.attention.packed_flex."""
    cfg.settings["padding"] = "packed-flex"
    cfg.notes.append(
        "dataset.packed: rows packed to tokenizer.max_seq_len with a BlockMask for flex "
        "attention (CUDA sm 7.5 and later; older GPUs get an s² mask, not modelled) and "
        "positions that index the rotary cache (padding packed-flex)."
    )


def _packed(k: Keys) -> bool:
    """``dataset.packed``; a list of datasets is the recipes' ConcatDataset
    (recipes/lora_finetune_single_device.py _setup_data), packed when every one is and
    refused by torchtune for a mix (torchtune/datasets/_concat.py ConcatDataset)."""
    value = k.raw("dataset")
    if not isinstance(value, list):
        return k.section("dataset").flag("packed")
    if not all(isinstance(item, dict) for item in value):
        raise k.wrong("dataset", "a mapping of settings or a list of them")
    flags = [Keys(item, k.file, f"dataset[{i}].").flag("packed") for i, item in enumerate(value)]
    if any(flags) and not all(flags):
        raise ConfigError(
            f"{k.file}: dataset mixes packed and unpacked datasets, which torchtune's "
            "ConcatDataset refuses; pack all or none."
        )
    return all(flags) and bool(flags)


def _torchtune_model(model: Keys, cfg: FrameworkConfig) -> None:
    """The model builder's name (``lora_llama3_1_8b``) as a preset and a method, and its
    LoRA switches."""
    s = cfg.settings
    builder = model.text("_component_") or ""
    leaf = builder.rsplit(".", 1)[-1]
    match = TORCHTUNE_MODEL.match(leaf)
    if match:
        family, size = match.groups()
        size = size.replace("_", ".")
        model_id = TORCHTUNE_NAMED.get((family, size), f"{TORCHTUNE_FAMILY[family]}-{size}")
        if model_id in model_presets():
            cfg.model = model_id
    if cfg.model is None:
        cfg.notes.append(
            f"model builder {leaf or builder}: ftmem has no preset for it; give the model "
            "(a config.json of the same weights) before --from."
        )
    quantized = leaf.startswith("qlora_") or model.flag("quantize_base")
    if not leaf.startswith(("lora_", "qlora_")):
        return
    s["method"] = "qlora" if quantized else "lora"
    if model.flag("use_dora"):
        if quantized:
            raise ConfigError(
                f"{model.file}: model.use_dora on a 4-bit base (QDoRA) is not modelled by "
                "ftmem; estimate DoRA on the 16-bit base or QLoRA without use_dora."
            )
        s["method"] = "dora"
    targets = [TORCHTUNE_MODULES.get(m, m) for m in model.names("lora_attn_modules") or []]
    if model.flag("apply_lora_to_mlp"):
        targets += ["gate", "up", "down"]
    if model.flag("apply_lora_to_output"):
        # the output projection becomes a LoRALinear (torchtune/modules/peft/lora.py@ff594c231
        # LoRALinear.forward): peft's LoRA on lm_head, modelled on the standard loss (the
        # chunked cross-entropy with it is refused by the estimate, with its reason)
        targets.append("lm_head")
    if targets:
        s["lora_targets"] = ",".join(targets)
    lora_numbers(model, cfg, "lora_rank")
    if not s.get("lora_dropout"):
        s.pop("lora_dropout", None)  # torchtune's 0.0 is ftmem's default


def _torchtune_optimizer(optimizer: Keys, cfg: FrameworkConfig) -> None:
    s = cfg.settings
    opt = optimizer.text("_component_") or "torch.optim.AdamW"
    if torchao_optimizer(opt, optimizer, cfg):
        return
    if bnb := bnb_class(opt, optimizer):  # its optim_bits / is_paged beside _component_
        s["optimizer"] = bnb
    elif opt.endswith(("AdamW", "Adam")):
        s["optimizer"] = "adamw"
        if optimizer.flag("fused"):
            s["optimizer_impl"] = "fused"
    elif opt.endswith("SGD"):
        s["optimizer"] = "sgd-momentum" if optimizer.number("momentum") else "sgd"
    else:
        cfg.notes.append(f"optimizer {opt} is not modelled; the estimate assumes AdamW.")


# torchtune.modules.loss's cross-entropies as ftmem's loss kinds
LOSSES = {
    "LinearCrossEntropyLoss": "linear-chunked",
    "CEWithChunkedOutputLoss": "chunked",
    "CrossEntropyLoss": "standard",
}


def _loss(loss: Keys, cfg: FrameworkConfig) -> None:
    component = loss.text("_component_")
    if component is None:
        return
    leaf = component.rsplit(".", 1)[-1]
    if leaf in LOSSES:
        cfg.settings["loss"] = LOSSES[leaf]
    elif ".rlhf." not in component and ".rl." not in component and "grpo" not in component:
        cfg.notes.append(f"loss {component} is not modelled; estimated with the standard loss.")
    if leaf == "LinearCrossEntropyLoss":
        cfg.notes.append(
            "LinearCrossEntropyLoss: every position is counted as labelled; masked prompt "
            "and padding tokens are dropped before its LM head, so the loss takes less."
        )


def _validation(k: Keys, cfg: FrameworkConfig) -> None:
    """The distributed recipes validate every run_val_every_n_steps steps under no_grad
    at batch_size_val, the training batch size by default
    (recipes/full_finetune_distributed.py _setup_data, validate)."""
    if k.raw("run_val_every_n_steps") is None or k.raw("dataset_val") is None:
        return
    cfg.settings["eval_batch_size"] = k.integer("batch_size_val") or k.integer("batch_size") or 1


# the preference losses of torchtune's DPO recipes (torchtune/rlhf/loss/dpo.py@bd2a0fc7c314:
# DPOLoss, RSOLoss, both against the reference's log-probabilities): --objective dpo
PREFERENCE_LOSSES = ("DPOLoss", "RSOLoss")


def _not_sft(k: Keys, cfg: FrameworkConfig, recipe: str | None) -> None:
    """Preference tuning (--objective dpo: the LoRA recipe's reference is the model with
    its adapters disabled, recipes/lora_dpo_single_device.py train; the full recipe's a
    second copy, recipes/full_dpo_distributed.py _setup_reference_model); RL and
    distillation recipes are estimated as the supervised finetuning of the model being
    trained, which they are not."""
    loss = k.section("loss").text("_component_") or ""
    if loss.rsplit(".", 1)[-1] in PREFERENCE_LOSSES:
        cfg.settings["objective"] = "dpo"
        return
    if recipe == GRPO_RECIPE:
        return  # --objective grpo (_grpo)
    words = f"{recipe or ''} {loss.lower()}"
    if k.raw("teacher_model") is not None or k.raw("kd_loss") is not None:
        words += " knowledge_distillation"
    for word, what in NOT_SFT.items():
        if word in words:
            cfg.notes.append(
                f"This is a {what} config: estimated as supervised finetuning of one model; "
                "the other models and their activations are not counted."
            )
            return


# the launch command of a shipped config's header ("tune run --nnodes 1 --nproc_per_node 4
# full_finetune_distributed --config qwen3/8B_full")
LAUNCH_GPUS = re.compile(r"tune run\b[^\n]*?--nproc_per_node[ =](\d+)")
LAUNCH_NODES = re.compile(r"tune run\b[^\n]*?--nnodes[ =](\d+)")


def _launched_gpus(cfg: FrameworkConfig) -> None:
    """The GPUs per node (and nodes) of the header's ``tune run`` command, which the
    distributed recipes shard over; without one, the launcher's count is asked for."""
    try:
        text = read_text(Path(cfg.path), "training config", MAX_CONFIG_BYTES)
    except (ConfigError, OSError):
        text = ""
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    gpus = LAUNCH_GPUS.search(comments)
    if gpus is None or int(gpus.group(1)) < 1:
        cfg.notes.append(LAUNCHER_NOTE)
        return
    said = f"the header's `{gpus.group(0).strip()}`; give --gpus for another count"
    assume(cfg, "gpus", int(gpus.group(1)), said)
    nodes = LAUNCH_NODES.search(comments)
    if nodes is not None and int(nodes.group(1)) > 1:
        assume(cfg, "nodes", int(nodes.group(1)), f"the header's `{nodes.group(0).strip()}`")


def _fsdp2(k: Keys, cfg: FrameworkConfig) -> None:
    """The distributed recipes shard with FSDP2's fully_shard: each block, then the root
    (torchtune/training/_distributed.py shard_model); fsdp_reshard_after_forward False
    keeps the weights gathered until backward (SHARD_GRAD_OP); fsdp_cpu_offload's
    CPUOffloadPolicy keeps parameters, gradients and optimizer states on the CPU."""
    s = cfg.settings
    reshard = k.raw("fsdp_reshard_after_forward")
    s["strategy"] = (
        "fsdp" if reshard is None or k.flag("fsdp_reshard_after_forward") else ("fsdp-grad-op")
    )
    if k.flag("fsdp_cpu_offload"):
        s.update(offload_params="cpu", offload_optimizer="cpu")
    _launched_gpus(cfg)
    tp = k.integer("tensor_parallel_dim")
    if tp is not None and tp > 1:
        # the world size is a multiple of it (torchtune/training/_distributed.py
        # ParallelDims._validate): at least tp GPUs
        s.update(tp=tp, gpus=max(tp, s.get("gpus") or 1))
        cfg.notes.append(
            f"tensor_parallel_dim {tp}: estimated with ftmem's tensor parallelism over "
            f"the blocks' linears on {tp} GPUs (give --gpus for more); torchtune's "
            "tensor_parallel_plan may split other layers."
        )
    replicate = k.integer("data_parallel_replicate_dim")
    if replicate is not None and replicate > 1:
        cfg.notes.append(
            f"data_parallel_replicate_dim {replicate} (HSDP) is not modelled: estimated "
            "with FSDP sharding over every data-parallel GPU."
        )
    # custom_sharded_layers: FSDP units of their own, resharded after forward rather than
    # kept gathered with the root (recipes/full_finetune_distributed.py @30b8519e
    # _setup_model; the 8B and 70B full configs name the embedding and the head)
    layers = set(k.names("custom_sharded_layers") or ())
    if {"tok_embeddings", "output"} <= layers:
        s["fsdp_sharded_ends"] = True
    if layers - {"tok_embeddings", "output"} or len(layers) == 1:
        cfg.notes.append(
            f"custom_sharded_layers {sorted(layers)}: modelled only as the pair "
            "tok_embeddings and output (FSDP units of their own, resharded after forward "
            "rather than kept gathered with the root); estimated without the others."
        )


# the prompt length ftmem assumes where tokenizer.max_seq_len is null (ftmem's default
# --seq-len); the GRPO recipe's prompts are the dataset's questions, truncated at
# max_seq_len when it is set
ASSUMED_PROMPT = 512


def _grpo(k: Keys, cfg: FrameworkConfig) -> None:
    """The synchronous GRPO recipe (ftmem.torchtune_grpo): batch_size prompts, each with
    grpo_samples completions of up to max_generated_tokens, all trained at once
    (grpo_step); generation forward_batch_size prompts at a time; the policy under FSDP2
    with reshard_after_forward=False whatever fsdp_reshard_after_forward says (l. 143);
    the reference from ref_checkpointer, always loaded and run (l. 146-157, 627)."""
    s = cfg.settings
    s["objective"] = "grpo"
    samples = _required(k, cfg, "grpo_samples", 16)
    generated = _required(k, cfg, "max_generated_tokens", 512)
    prompts = k.integer("batch_size") or 1
    s["num_generations"] = samples
    s["completion_len"] = generated
    s["batch_size"] = prompts * samples
    s["generation_prompts"] = k.integer("forward_batch_size") or 1
    s["strategy"] = "fsdp-grad-op"
    prompt = k.section("tokenizer").integer("max_seq_len")
    if prompt is None:
        prompt = ASSUMED_PROMPT
        cfg.notes.append(
            f"tokenizer.max_seq_len is null: the prompts are not truncated, so the longest "
            f"question sets their length; the estimate assumes {ASSUMED_PROMPT} prompt tokens "
            f"+ {generated} generated: give --seq-len (prompt + max_generated_tokens)."
        )
    else:
        cfg.notes.append(
            f"GRPO: prompts of up to tokenizer.max_seq_len {prompt} tokens (the longest "
            f"batch is estimated) + max_generated_tokens {generated}, every completion "
            "assumed to run to the end; give --seq-len (prompt + completion) for shorter data."
        )
    s["seq_len"] = prompt + generated
    epochs = k.integer("ppo_epochs") or 1
    if epochs > 1:
        cfg.notes.append(
            f"ppo_epochs {epochs}: each epoch repeats the training step and the optimizer "
            "step on the same trajectories (the same moments)."
        )
    if k.flag("fsdp_reshard_after_forward"):
        cfg.notes.append(
            "fsdp_reshard_after_forward is not read by the GRPO recipe: its policy keeps "
            "its weights gathered after forward (reshard_after_forward=False)."
        )


def _required(k: Keys, cfg: FrameworkConfig, key: str, default: int) -> int:
    """A key the recipe reads as ``cfg.<key>`` (absent: the recipe stops)."""
    value = k.integer(key)
    if value is None:
        cfg.notes.append(
            f"{key} is absent: the GRPO recipe stops without it (cfg.{key}); estimated with "
            f"{default}, the shipped configs' value."
        )
        return default
    return value
