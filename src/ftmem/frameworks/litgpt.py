"""LitGPT finetune configs (config_hub/finetune/<model>/{lora,qlora,full}.yaml): the
script the file belongs to, precision, quantisation, LoRA switches, the train section and
the multi-GPU strategy LitGPT picks for ``devices`` > 1.

Sources: Lightning-AI/litgpt@26857050fe3ff627cd714fe92f5838f51a3d5efa (LITGPT_HEAD below),
litgpt/finetune/{lora,full,adapter,adapter_v2}.py ``setup()``, litgpt/args.py, litgpt/utils.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftmem.errors import ConfigError, InvalidInputError
from ftmem.filekeys import Keys
from ftmem.frameworks.shared import (
    FrameworkConfig,
    assume,
    bnb_class,
    lora_numbers,
    torchao_optimizer,
)
from ftmem.methods import HEAD_TARGET

LITGPT_HEAD = "Lightning-AI/litgpt@2685705"

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
LORA_SWITCHES = (
    ("lora_query", "q"),
    ("lora_key", "k"),
    ("lora_value", "v"),
    ("lora_projection", "o"),
    ("lora_mlp", "gate,up,down"),
)

# this framework's keys that do not change memory (beyond frameworks.shared's)
NO_MEMORY_EFFECT: frozenset[str] = frozenset(
    {
        "out_dir",
        "logger_name",
        "resume",  # where the weights come from, not what the step holds
        "access_token",
        "log",  # LogArgs: the logger's project and run names
        "data",  # the dataset; its lengths are capped by train.max_seq_length
    }
)
# train.* (litgpt/args.py TrainArgs) that do not change memory; max_seq_length,
# micro_batch_size and global_batch_size are read
TRAIN_NO_EFFECT = frozenset(
    {"save_interval", "log_interval", "lr_warmup_steps", "epochs", "max_steps", "max_time"}
    | {"min_lr"}
)
# TrainArgs fields the finetune scripts refuse when set (lora.py / full.py validate_args)
TRAIN_REFUSED = ("max_tokens", "max_norm", "tie_embeddings", "lr_warmup_fraction")
# eval.* (EvalArgs): LitGPT validates at the micro-batch and generates a sample with a
# KV cache of max_seq_length whatever these say (the litgpt profile models both)
EVAL_KEYS = frozenset(
    {
        "interval",
        "max_new_tokens",
        "max_iters",
        "initial_validation",
        "final_validation",
        "evaluate_example",
    }
)

# the keys read; read_framework_config lists every other one as ignored
LITGPT_KEYS = frozenset(
    {
        "checkpoint_dir",
        "precision",
        "quantize",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        *(key for key, _ in LORA_SWITCHES),
        "lora_head",
        "train",
        "eval",
        "optimizer",
        "devices",
        "num_nodes",
    }
)


def _litgpt_precision(k: Keys, cfg: FrameworkConfig) -> None:
    """LitGPT's (Lightning's) precision name; YAML reads ``precision: 32`` as a number.
    Silent: get_default_supported_precision(training=True), bf16-mixed on a GPU with bf16
    (litgpt/utils.py; every finetune script's setup())."""
    value = k.raw("precision")
    if isinstance(value, int) and not isinstance(value, bool) and str(value) in LITGPT_PRECISION:
        name: str | None = str(value)
    else:
        name = k.choice("precision", LITGPT_PRECISION)
    if name is None:
        said = f"LitGPT's get_default_supported_precision(training=True), {LITGPT_HEAD} utils.py"
        assume(cfg, "precision", "bf16-mixed", said)
        return
    cfg.settings["precision"] = LITGPT_PRECISION[name]


def _script(k: Keys, cfg: FrameworkConfig, path: Path) -> str:
    """Which finetune script the file is for (LitGPT's configs do not say): lora.py's
    when it has lora_* keys or quantize (full.py takes no quantize), adapter.py's or
    adapter_v2.py's when named so (config_hub/finetune/<model>/<script>.yaml), else
    full.py's."""
    if any(key in k for key in ("lora_r", "lora_alpha", *(s for s, _ in LORA_SWITCHES))):
        return "lora"
    stem = path.stem.lower().replace("-", "_")
    if stem.startswith("adapter"):
        # (finetune_adapter / finetune_adapter_v2 take no adapter options: the prompt
        # length and start layer are the model Config's, LitGPT's defaults 10 and 2)
        v2 = stem.startswith("adapter_v2")
        cfg.settings["method"] = "llama-adapter-v2" if v2 else "llama-adapter"
        return "adapter_v2" if v2 else "adapter"
    if k.raw("quantize") is not None:
        cfg.notes.append(
            f"{path.name} has quantize but no lora_* keys: read as `litgpt finetune lora` "
            "with its defaults (adapter / adapter_v2 files are named adapter*.yaml)."
        )
        return "lora"
    cfg.notes.append(
        f"{path.name} has no lora_* keys: read as `litgpt finetune full` (LitGPT's "
        "configs do not name their script; adapter ones are named adapter*.yaml)."
    )
    return "full"


def with_head_target(switches: list[str], lora_head: bool, notes: list[str]) -> list[str]:
    """``lora_head: true`` as ftmem's ``lm_head`` target (litgpt@00af8b0d litgpt/lora.py
    GPT.__init__: ``LoRALinear(n_embd, padded_vocab_size, r=(lora_r if lora_head else
    0))``, modelled on the chunked head by adapters.head_lora.chunked_head_lora); with no
    block switch on, nothing below the head needs a gradient, which is not modelled."""
    if not lora_head:
        return []
    if not switches:
        notes.append(
            "lora_head without any block switch (LoRA on the LM head alone) is not modelled."
        )
        return []
    return [HEAD_TARGET]


def _lora(k: Keys, cfg: FrameworkConfig) -> None:
    """lora.py's LoRA switches; the defaults are setup()'s (r 8, alpha 16, dropout 0.05,
    query and value only)."""
    s = cfg.settings
    s["method"] = "lora"
    lora_numbers(k, cfg)
    said = f"litgpt finetune lora setup() default, {LITGPT_HEAD} finetune/lora.py"
    for setting, value in (("lora_r", 8), ("lora_alpha", 16), ("lora_dropout", 0.05)):
        assume(cfg, setting, value, said)
    # setup()'s switch defaults: lora_query True, lora_value True, the others False
    on = [
        role
        for key, role in LORA_SWITCHES
        if (
            k.flag(key)
            if key in k and k.raw(key) is not None
            else key in ("lora_query", "lora_value")
        )
    ]
    on += with_head_target(on, k.flag("lora_head"), cfg.notes)
    if len(on) == len(LORA_SWITCHES) + 1 and HEAD_TARGET in on:
        s["lora_targets"] = f"all-linear,{HEAD_TARGET}"
    elif len(on) == len(LORA_SWITCHES):
        # every switch: every linear of the blocks, whatever the MLP's layout (phi-2's
        # fc1 / fc2 have no gate; LitGPT's GptNeoxMLP has no gate either, litgpt/model.py)
        s["lora_targets"] = "all-linear"
    elif on:
        s["lora_targets"] = ",".join(on)
    if s.get("precision") in ("bf16", "fp16"):
        s["adapter_dtype"] = s["precision"]  # Fabric's init_module builds them in the model dtype


def _quantize(k: Keys, cfg: FrameworkConfig) -> None:
    """bitsandbytes through Lightning's BitsandbytesPrecision; LitGPT then trains with
    bitsandbytes' 32-bit PagedAdamW (utils.py instantiate_bnb_optimizer)."""
    quant = k.choice("quantize", LITGPT_QUANT)
    if not quant:
        return
    s = cfg.settings
    if str(s.get("precision", "")).endswith("-mixed"):
        given = "precision" in k and k.raw("precision") is not None
        which = "the file's precision" if given else "LitGPT's default precision, bf16-mixed,"
        raise ConfigError(
            f"{k.file}: quantize {quant} with {which} is refused by LitGPT ('Quantization and "
            "mixed precision is not supported'); give precision: bf16-true."
        )
    if s.get("method") == "lora":  # (adapter.py / adapter_v2.py keep their method)
        s["method"] = "qlora"
    s["quant"] = LITGPT_QUANT[quant]
    if s["quant"] != "int8":  # double quantisation is bitsandbytes 4-bit's
        s["double_quant"] = quant.endswith("-dq")
    # PagedAdamW (optim_bits 32): fp32 states whatever the adapters' dtype, one kernel
    # per tensor (no foreach temporaries); the states of tensors of 1e5+ values in managed
    # memory (ftmem.gpu.managed)
    s["optimizer"] = "paged-adamw"
    cfg.notes.append(
        "quantize: LitGPT trains with bitsandbytes' PagedAdamW (fp32 states; those of "
        "tensors of 1e5+ values in CUDA managed memory, outside the allocator)."
    )


def _devices(k: Keys, cfg: FrameworkConfig, script: str) -> int | None:
    """GPUs per node (None: ``auto``, the machine's count) and, past one GPU in all,
    the strategy LitGPT builds: full.py / adapter.py an FSDPStrategy(auto_wrap_policy=
    {Block}, activation_checkpointing_policy={Block}, cpu_offload=False), FULL_SHARD by
    Lightning's default; lora.py a ModelParallelStrategy whose parallelize_fn wraps every
    Block in checkpoint_wrapper and fully_shard()s each Block and trainable Linear."""
    value = k.raw("devices")
    if value in ("auto", -1):  # litgpt/utils.py parse_devices: torch.cuda.device_count()
        cfg.notes.append(
            "devices: auto takes every GPU of the machine: give --gpus N; past one GPU "
            "LitGPT shards with FSDP and checkpoints every block (add --strategy fsdp "
            "--grad-ckpt)."
        )
        return None
    devices = k.integer("devices") if "devices" in k else None
    if devices is None:
        devices = 1  # setup(devices=1)
    nodes = k.integer("num_nodes") or 1
    if devices * nodes == 1:
        return 1
    if cfg.settings.get("quant"):
        raise ConfigError(
            f"{k.file}: quantize with devices x num_nodes = {devices * nodes} is refused by "
            "LitGPT ('Quantization is currently not supported for multi-GPU training')."
        )
    s = cfg.settings
    s.update(gpus=devices, nodes=nodes, strategy="fsdp", grad_ckpt=True)
    engine = "FSDP2 fully_shard (ModelParallelStrategy)" if script == "lora" else "FSDPStrategy"
    cfg.notes.append(
        f"devices {devices} x num_nodes {nodes}: LitGPT's {engine} shards weights, gradients "
        "and optimizer states over the GPUs and checkpoints every block; memory is per GPU."
    )
    return devices


def _train(k: Keys, cfg: FrameworkConfig, script: str, devices: int | None) -> None:
    """train.*: the micro-batch, the sequence cap and the accumulation
    (TrainArgs.gradient_accumulation_iters: global // (devices · nodes) // micro)."""
    train = k.section("train")
    said = f"litgpt finetune {script} setup()'s TrainArgs, {LITGPT_HEAD} finetune/{script}.py"
    for key in TRAIN_REFUSED:
        if train.raw(key) is not None:
            raise ConfigError(
                f"{k.file}: train.{key} is refused by LitGPT's finetune scripts (validate_args: "
                f"'doesn't support the {key!r} argument'); remove it."
            )
    micro = train.integer("micro_batch_size")
    if micro is None:
        micro = 1
        assume(cfg, "batch_size", 1, said)
    cfg.settings["batch_size"] = micro
    total = train.integer("global_batch_size") or 16  # setup()'s TrainArgs
    ranks = (devices or 1) * (k.integer("num_nodes") or 1)
    if total // ranks // micro < 1:
        raise ConfigError(
            f"{k.file}: train.global_batch_size {total} is less than micro_batch_size {micro} "
            f"on each of {ranks} GPU(s); LitGPT refuses it (TrainArgs asserts at least one "
            "micro-batch per step)."
        )
    if train.raw("global_batch_size") is None:
        assume(cfg, "grad_accum", total // ranks // micro, said + " (global_batch_size 16)")
    else:
        cfg.settings["grad_accum"] = total // ranks // micro
    if (seq := train.integer("max_seq_length")) is not None:
        cfg.settings["seq_len"] = seq
    else:
        cfg.notes.append(
            "train.max_seq_length is not set: LitGPT trains on the samples untruncated (fit() "
            "sets the longest sample's length); estimated at ftmem's 512 tokens: give --seq-len."
        )
    read_train = TRAIN_NO_EFFECT | {"micro_batch_size", "global_batch_size", "max_seq_length"}
    unknown = [f"train.{x}" for x in train if x not in read_train | set(TRAIN_REFUSED)]
    unknown += [f"eval.{x}" for x in k.section("eval") if x not in EVAL_KEYS]
    if unknown:
        cfg.notes.append(f"litgpt keys not read by ftmem: {', '.join(sorted(unknown))}.")


def _optimizer(k: Keys, cfg: FrameworkConfig) -> None:
    """A name (torch.optim.<name>) or class_path + init_args (instantiate_torch_optimizer);
    under quantize LitGPT takes bitsandbytes' PagedAdamW instead (_quantize)."""
    s = cfg.settings
    if isinstance(k.raw("optimizer"), dict):
        section = k.section("optimizer")
        name = section.text("class_path") or ""
        init = section.section("init_args")
    else:
        name = k.text("optimizer") or "AdamW"  # setup(optimizer="AdamW")
        init = Keys({}, k.file, "optimizer.init_args.")
    leaf = name.rsplit(".", 1)[-1]
    if s.get("quant"):
        if "AdamW" not in name:
            raise ConfigError(
                f"{k.file}: optimizer {name} with quantize is refused by LitGPT (instantiate_"
                "bnb_optimizer: 'only supports the AdamW optimizer')."
            )
        return
    if torchao_optimizer(name, init, cfg):
        return
    if bnb := bnb_class(name, init):  # before torch's: bitsandbytes.optim.AdamW
        s["optimizer"] = bnb
    elif leaf in ("AdamW", "Adam"):  # ftmem's default optimizer, torch's foreach AdamW
        if init.flag("fused"):
            s["optimizer_impl"] = "fused"
    elif leaf == "SGD":
        s["optimizer"] = "sgd-momentum" if init.number("momentum") else "sgd"
    else:
        cfg.notes.append(f"optimizer {name} is not modelled; the estimate assumes AdamW.")


def _not_pretraining(k: Keys) -> None:
    """config_hub/pretrain: ``litgpt pretrain`` (model_name, no checkpoint_dir) trains a
    LitGPT config from a random init (pretrain.py setup(): HYBRID_SHARD FSDP without
    activation checkpointing, torch.compile, sequences of the model's block_size)."""
    if "model_name" in k and "checkpoint_dir" not in k:
        raise ConfigError(
            f"{k.file}: a `litgpt pretrain` config (model_name {k.raw('model_name')!r}, no "
            "checkpoint_dir), which ftmem does not read; estimate its model with --method "
            "full and the file's micro_batch_size, max_seq_length and precision as flags."
        )


def read(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
    _not_pretraining(k)
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
    script = _script(k, cfg, Path(k.file))
    _litgpt_precision(k, cfg)
    if script == "lora":
        _lora(k, cfg)
    if script != "full":
        _quantize(k, cfg)
    devices = _devices(k, cfg, script)
    _train(k, cfg, script, devices)
    _optimizer(k, cfg)
    return LITGPT_KEYS


# what litgpt/model.py builds, that the transformers families read here do not
UNMODELLED = {
    "parallel_residual": "a parallel residual (GPT-NeoX style blocks)",
    "shared_attention_norm": "one norm shared by attention and MLP",
    "post_attention_norm": "post-attention norms (Gemma 2 / 3 style)",
    "post_mlp_norm": "post-MLP norms",
    "scale_embeddings": "scaled embeddings (Gemma style)",
    "latent_attention": "multi-head latent attention",
    "attention_logit_softcapping": "attention logit soft-capping",
    "final_logit_softcapping": "final logit soft-capping",
    "sliding_window_size": "sliding-window attention",
    "lm_head_bias": "a bias on the LM head",
}


def model_config_json(config: Any) -> dict[str, Any]:
    """The config.json of the transformers family whose weights are LitGPT's for a live
    LitGPT ``Config`` (litgpt 0.5.13 litgpt/config.py; read by attribute) (litgpt's scripts/convert_lit_checkpoint.py maps the same weights): Llama, or
    Qwen2 (bias on q/k/v only), or Qwen3 (a norm on each query and key head). Other
    LitGPT blocks are refused in one sentence."""
    off = [what for key, what in UNMODELLED.items() if getattr(config, key, None)]
    mlp, norm = config.mlp_class_name, config.norm_class_name
    if mlp != "LLaMAMLP" or norm != "RMSNorm":
        off.insert(0, f"{mlp} with {norm} (ftmem reads LLaMAMLP with RMSNorm)")
    if getattr(config, "n_expert", 0):
        off.append("mixture-of-experts blocks")
    if float(getattr(config, "rotary_percentage", 1.0)) != 1.0:
        off.append("a partial rotary")
    if off:
        raise InvalidInputError(
            f"LitGPT config {config.name or 'GPT'!r} has {', '.join(off)}: not read from a "
            "live LitGPT model yet; estimate it with `ftmem estimate` on its transformers "
            "config.json."
        )
    bias, attn_bias = bool(config.bias), bool(getattr(config, "attn_bias", False))
    model_type = "qwen3" if config.norm_qk else "qwen2" if attn_bias and not bias else "llama"
    out: dict[str, Any] = {
        "model_type": model_type,
        # the embedding and the LM head have padded_vocab_size rows (litgpt/model.py GPT)
        "vocab_size": int(config.padded_vocab_size),
        "hidden_size": int(config.n_embd),
        "num_hidden_layers": int(config.n_layer),
        "num_attention_heads": int(config.n_head),
        "num_key_value_heads": int(config.n_query_groups),
        "head_dim": int(config.head_size),
        "intermediate_size": int(config.intermediate_size),
        "max_position_embeddings": int(config.block_size),
        "rms_norm_eps": float(config.norm_eps),
        "hidden_act": "silu",
        "tie_word_embeddings": False,  # GPT builds its own lm_head
    }
    if model_type == "llama":  # config.bias: every Linear of the block has one
        out.update(attention_bias=bias, mlp_bias=bias)
    return out
