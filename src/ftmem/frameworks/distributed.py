"""DeepSpeed and FSDP settings as HF-Trainer-based frameworks give them (a DeepSpeed
JSON, TrainingArguments' ``fsdp`` / ``fsdp_config``, Accelerate's spellings) as ftmem's
strategy and offload settings; the launcher's configs (Accelerate's ``accelerate config``
file, a DeepSpeed JSON on its own) as the GPUs, nodes and sharding of the run, under the
training config's (``--launcher``)."""

from __future__ import annotations

import re
from pathlib import Path

from ftmem.errors import ConfigError
from ftmem.filekeys import Keys, shown
from ftmem.frameworks.shared import FrameworkConfig, assume, read_mapping
from ftmem.textfiles import given_path

LAUNCHER_NOTE = (
    "The GPU count comes from the launcher, not the config: give --gpus (per node) "
    "and --nodes for per-GPU memory."
)
# DeepSpeed's own choices (deepspeed.runtime.zero.config: ZeroStageEnum, OffloadDeviceEnum)
ZERO_STAGES = {"0": 0, "1": 1, "2": 2, "3": 3}
OFFLOAD_DEVICES = ("none", "cpu", "nvme")


def _not_auto(k: Keys, key: str, choices: str) -> None:
    """DeepSpeed "auto" values are filled by HF Trainer for batch sizes, buckets and the
    like (transformers.integrations.deepspeed); the stage and the offload devices only
    Accelerate's launcher fills, from its own config, which ftmem does not see."""
    if k.raw(key) == "auto":
        raise ConfigError(
            f"{k.file}: {k.name(key)} is 'auto', which only Accelerate's launcher config fills "
            f"in (HF Trainer leaves it to DeepSpeed, which refuses it); write {choices} there."
        )


def _deepspeed_config(ds: Keys, cfg: FrameworkConfig) -> None:
    zero = ds.section("zero_optimization")
    _not_auto(zero, "stage", "0, 1, 2 or 3")
    stage = zero.raw("stage")
    if stage is not None:
        spelled = str(stage).strip() if isinstance(stage, (int, str)) else ""
        if isinstance(stage, bool) or spelled not in ZERO_STAGES:
            raise zero.wrong("stage", "0, 1, 2 or 3")
        if ZERO_STAGES[spelled]:
            cfg.settings["strategy"] = f"zero{ZERO_STAGES[spelled]}"
        _zero_buckets(zero, ZERO_STAGES[spelled], cfg)
    for key, setting in (
        ("offload_optimizer", "offload_optimizer"),
        ("offload_param", "offload_params"),
    ):
        offload = zero.section(key)
        _not_auto(offload, "device", "none, cpu or nvme")
        device = offload.choice("device", OFFLOAD_DEVICES)
        if device in ("cpu", "nvme"):
            cfg.settings[setting] = device
    # DeepSpeed's check of a client optimizer under ZeRO-Offload (ftmem.paged_ranks
    # check_zero_offload); only its false changes what ftmem does
    forced = ds.raw("zero_force_ds_cpu_optimizer") is None
    if not forced and not ds.flag("zero_force_ds_cpu_optimizer"):
        cfg.settings["zero_force_ds_cpu_optimizer"] = False
    autotp = ds.section("tensor_parallel").integer("autotp_size")
    if autotp is not None and autotp > 1:
        cfg.notes.append(
            f"tensor_parallel.autotp_size {autotp}: DeepSpeed's AutoTP is not modelled; "
            "estimated without it."
        )


# DeepSpeed's own default where the JSON has no reduce_bucket_size (deepspeed/runtime/zero/
# config.py@edaa7221267243c7be7fb49c5d5f5c4fb97b4641 DeepSpeedZeroConfig.reduce_bucket_size,
# pp_int(5e8)); transformers fills only the keys spelled "auto" (integrations/deepspeed.py
# HfTrainerDeepSpeedConfig.fill_only), so hidden² (ftmem's default) is the "auto" value only
DS_REDUCE_BUCKET = 500_000_000
DS_SOURCE = "deepspeed/runtime/zero/config.py@edaa722 DeepSpeedZeroConfig"
# the ZeRO-3 sizes ftmem derives from hidden_size as transformers' "auto" fills them
STAGE3_SIZES = ("stage3_prefetch_bucket_size", "stage3_param_persistence_threshold")


def _zero_buckets(zero: Keys, stage: int, cfg: FrameworkConfig, where: str = "") -> None:
    """``reduce_bucket_size``: the flat gradient buffer ZeRO-1/2 allocates, twice with
    ``overlap_comm`` (stage_1_and_2.py setup_buckets: ``torch.empty(reduce_bucket_size)``
    per buffer). A number is applied; "auto" is transformers' hidden² (ftmem's default);
    absent, DeepSpeed's 5e8. ZeRO-3 derives its prefetch and persistence sizes from the
    same hidden² in ftmem, so a number or DeepSpeed's default there is named, not applied.
    ``where``: the DeepSpeed config the keys are absent from (default: ``zero.file``)."""
    if stage == 0:
        cfg.notes.append(
            f"{zero.name('stage')} 0: DeepSpeed's engine without ZeRO (its bf16 optimizer keeps "
            "fp32 master weights and gradients beside the 16-bit model) is not modelled; "
            "estimated as the framework's own step."
        )
        return
    value = zero.raw("reduce_bucket_size")
    auto = value == "auto"
    elements = None if auto else zero.integer("reduce_bucket_size")
    if stage in (1, 2):
        if elements is not None:
            cfg.settings["bucket_elements"] = elements
        elif not auto:
            cfg.settings["bucket_elements"] = DS_REDUCE_BUCKET
            cfg.notes.append(
                f"{zero.name('reduce_bucket_size')} is absent from {where or zero.file}: DeepSpeed's "
                f"default, 5e8 elements ({DS_SOURCE}), as the reduce bucket."
            )
        if stage == 2 and zero.raw("overlap_comm") is not True:
            cfg.notes.append(
                f"{zero.name('overlap_comm')} is not true: ZeRO-2 then keeps one reduce "
                "buffer, not the two ftmem counts (over by one bucket)."
            )
        return
    given = [k for k in ("reduce_bucket_size", *STAGE3_SIZES) if zero.raw(k) != "auto"]
    if given:
        cfg.notes.append(
            f"{', '.join(zero.name(k) for k in given)}: not 'auto' (a number, or DeepSpeed's "
            "default when absent: 5e8, 5e7 and 1e5 elements); ZeRO-3's buckets are estimated "
            "at transformers' 'auto' sizes (hidden², 0.9·hidden², 10·hidden)."
        )


def framework_path(value: str, base: Path, key: str, cfg: FrameworkConfig) -> Path | None:
    """A file a config names, where the framework opens it: as given, relative to the
    working directory (transformers integrations/deepspeed.py HfDeepSpeedConfig and
    training_args.py ``open(self.fsdp_config)``, which axolotl and LLaMA-Factory pass the
    path on to, @5.24.0); the config's own folder only as a fallback, said in a note."""
    path, beside = Path(value), base / value
    try:
        here, there = path.is_file(), not path.is_absolute() and beside.is_file()
    except OSError as exc:  # a name too long for the file system
        raise ConfigError(f"{cfg.path}: {key} {shown(value)}: {exc.strerror}.") from None
    if here:
        return path
    if there:
        cfg.notes.append(
            f"{key}: {value} is not found from the working directory, where the framework "
            f"opens it; read from the config's folder ({beside}) instead."
        )
        return beside
    return None


# the values of a DeepSpeed config that change no step's GPU memory, by dotted path in the
# JSON (a mapping's name covers what it holds): what HF Trainer fills (DEEPSPEED_NO_EFFECT,
# below), pinned host memory of the offloads (deepspeed/runtime/zero/offload_config.py
# @edaa722 pin_memory: page-locked CPU buffers), the NVMe folder, the 16-bit gather that
# runs at a checkpoint's save only (stage3_gather_16bit_weights_on_model_save), and the
# order of CPU-offloaded gradients (round_robin_gradients)
DEEPSPEED_NESTED_NO_EFFECT = frozenset(
    {
        "zero_optimization.offload_optimizer.pin_memory",
        "zero_optimization.offload_param.pin_memory",
        "zero_optimization.offload_optimizer.nvme_path",
        "zero_optimization.offload_param.nvme_path",
        "zero_optimization.stage3_gather_16bit_weights_on_model_save",
        "zero_optimization.gather_16bit_weights_on_model_save",
        "zero_optimization.round_robin_gradients",
    }
)
# fsdp_config values (without Accelerate's fsdp_ prefix) that change no step's GPU memory:
# the checkpoint's format (state_dict_type, at a save), the loading path and the first
# broadcast (cpu_ram_efficient_loading, sync_module_states: before step 1), TPU-only keys
FSDP_NESTED_NO_EFFECT = frozenset(
    {
        "state_dict_type",
        "cpu_ram_efficient_loading",
        "sync_module_states",
        "xla",
        "xla_fsdp_v2",
        "xla_fsdp_grad_ckpt",
        "xla_fsdp_settings",
    }
)


def _no_effect(name: str, quiet: frozenset[str]) -> bool:
    """``name`` (dotted, from the section's top) or a mapping above it is in ``quiet``."""
    parts = name.split(".")
    return any(".".join(parts[: i + 1]) in quiet for i in range(len(parts)))


def list_unread(
    section: Keys, prefix: str, quiet: frozenset[str], cfg: FrameworkConfig, spelled: str = ""
) -> None:
    """A nested config's values no reader looked at, by dotted path from the training
    config's key (``prefix``: the key where the section is a file of its own, else ""),
    as ignored keys: with no effect on memory (``quiet``, named without the prefix
    ``spelled``: Accelerate's fsdp_), or not read by ftmem."""
    top = len(section.where)
    for name in section.unread_leaves():
        inner = name[top:].removeprefix(spelled) if spelled else name[top:]
        dotted = f"{prefix}{name}"
        if _no_effect(inner, quiet):
            cfg.nested_no_effect.append(dotted)
        else:
            cfg.nested_not_read.append(dotted)


def strategy_from_deepspeed(k: Keys, key: str, base: Path, cfg: FrameworkConfig) -> None:
    """A DeepSpeed config: a mapping, or a file name opened as the framework opens it
    (:func:`framework_path`); a file not found is read from its name (zero3_offload).
    Its values no reader looked at are listed by dotted path (list_unread)."""
    value = k.raw(key)
    quiet = DEEPSPEED_NO_EFFECT | DEEPSPEED_NESTED_NO_EFFECT
    if isinstance(value, dict):
        section = k.section(key)
        _deepspeed_config(section, cfg)
        list_unread(section, "", quiet, cfg)
    elif isinstance(value, str):
        path = framework_path(value, base, k.name(key), cfg)
        if path is not None:
            section = Keys(read_mapping(path), str(path))
            _deepspeed_config(section, cfg)
            list_unread(section, f"{k.name(key)}.", quiet, cfg)
        else:
            # axolotl's zero3_bf16_cpuoffload_all.json, LLaMA-Factory's ds_z3_offload_config.json
            match = re.search(r"(?:zero|(?<![a-z])z)[_-]?([123])", Path(value).name.lower())
            if not match:
                cfg.notes.append(f"deepspeed: {value} not found; ZeRO stage unknown, not applied.")
                return
            cfg.settings["strategy"] = f"zero{match.group(1)}"
            if "offload" in value:
                cfg.settings["offload_optimizer"] = "cpu"
                if match.group(1) == "3":
                    cfg.settings["offload_params"] = "cpu"
            cfg.notes.append(f"deepspeed: {value} not found; stage and offload read from its name.")
    else:
        raise k.wrong(key, "a DeepSpeed config file name or a mapping")
    if "strategy" in cfg.settings:
        cfg.notes.append(LAUNCHER_NOTE)


FSDP_NAMES = {
    "full_shard": "fsdp",
    "shard_grad_op": "fsdp-grad-op",
    "hybrid_shard": "fsdp-hybrid",
    "no_shard": "fsdp-no-shard",
}
HYBRID_ZERO2_NOTE = (
    "{key}: HYBRID_SHARD_ZERO2 keeps the weights gathered between forward and backward "
    "within a node; estimated as hybrid_shard, which frees them."
)
# Accelerate's fsdp_sharding_strategy may be the 1-based index of these names
# (accelerate.utils.constants.FSDP_SHARDING_STRATEGY)
FSDP_BY_INDEX = ("full_shard", "shard_grad_op", "no_shard", "hybrid_shard")


# transformers' FSDPOption (trainer_utils.py): TrainingArguments refuses any other word
FSDP_OPTIONS = (*FSDP_NAMES, "hybrid_shard_zero2", "offload", "auto_wrap")


def _fsdp_options(k: Keys) -> tuple[bool, list[str]]:
    """HF's ``fsdp``: true (transformers 5), or the legacy options as one string
    ("full_shard auto_wrap offload") or a list of them."""
    value = k.raw("fsdp")
    if value is None:
        return False, []
    if isinstance(value, bool):
        return value, []
    if isinstance(value, str):
        words = value.lower().split()
    elif isinstance(value, list) and all(isinstance(x, str) for x in value):
        words = [w.lower() for x in value for w in x.split()]
    else:
        raise k.wrong("fsdp", "true, an option string (full_shard auto_wrap) or a list of options")
    unknown = [w for w in words if w not in FSDP_OPTIONS]
    if unknown:  # a typo ("ful_shard") was read as FSDP with full sharding
        raise k.wrong("fsdp", f"true or options among {', '.join(FSDP_OPTIONS)}")
    return bool(words), words


def _fsdp_settings(k: Keys, base: Path, cfg: FrameworkConfig) -> Keys:
    """``fsdp_config``: a mapping or a JSON file name (as transformers takes it)."""
    value = k.raw("fsdp_config")
    if isinstance(value, str):
        path = framework_path(value, base, k.name("fsdp_config"), cfg)
        if path is None:
            raise ConfigError(
                f"{k.file}: fsdp_config {value} is not found (from the working directory "
                "or the config's folder)."
            )
        return Keys(read_mapping(path), str(path))
    return k.section("fsdp_config")


def _fsdp_key(fc: Keys, name: str) -> str:
    """transformers strips the ``fsdp_`` prefix of Accelerate's keys: either spelling."""
    return f"fsdp_{name}" if f"fsdp_{name}" in fc else name


def _strategy_from_fsdp(k: Keys, base: Path, cfg: FrameworkConfig, config_alone: bool) -> None:
    on, words = _fsdp_options(k)
    # fsdp_version with fsdp_config, without the legacy option list (axolotl 0.8+)
    on = on or (k.raw("fsdp_version") is not None and bool(k.raw("fsdp_config")))
    on = on or (config_alone and bool(k.raw("fsdp_config")))
    if on:
        fc = _fsdp_settings(k, base, cfg)
        fsdp_from_config(fc, words, cfg)
        fsdp_version(k, "fsdp_version", cfg)  # axolotl's, beside its fsdp_config
        prefix = "" if fc.where else f"{k.name('fsdp_config')}."
        list_unread(fc, prefix, FSDP_NESTED_NO_EFFECT, cfg, spelled="fsdp_")
        cfg.notes.append(LAUNCHER_NOTE)


def fsdp_from_config(fc: Keys, words: list[str], cfg: FrameworkConfig) -> None:
    """FSDP's sharding, offload and checkpointing from an ``fsdp_config`` (transformers',
    axolotl's or Accelerate's spelling, FSDP1 or FSDP2) and HF's ``fsdp`` options."""
    strategy = "fsdp"
    for w in words:
        strategy = FSDP_NAMES.get(w, strategy)
    if "hybrid_shard_zero2" in words:  # was read as full_shard
        strategy = "fsdp-hybrid"
        cfg.notes.append(HYBRID_ZERO2_NOTE.format(key="fsdp"))
    key = _fsdp_key(fc, "sharding_strategy")
    sharding = fc.raw(key)
    if isinstance(sharding, int) and not isinstance(sharding, bool):
        if not 1 <= sharding <= len(FSDP_BY_INDEX):
            raise fc.wrong(key, f"1 to {len(FSDP_BY_INDEX)} or a strategy name")
        strategy = FSDP_NAMES[FSDP_BY_INDEX[sharding - 1]]
    elif isinstance(sharding, str) and sharding.lower() == "hybrid_shard_zero2":
        strategy = "fsdp-hybrid"
        cfg.notes.append(HYBRID_ZERO2_NOTE.format(key=fc.name(key)))
    elif sharding is not None:
        strategy = FSDP_NAMES[fc.choice(key, FSDP_NAMES) or "full_shard"]
    key = _fsdp_key(fc, "reshard_after_forward")
    reshard = fc.raw(key)
    if isinstance(reshard, str) and reshard.lower() in FSDP_NAMES:
        strategy = FSDP_NAMES[reshard.lower()]  # FSDP1 spells the strategy here
    elif reshard is not None and not fc.flag(key, spelled=True):
        strategy = "fsdp-grad-op"  # FSDP2: weights stay gathered until backward
    cfg.settings["strategy"] = strategy
    offload = "offload" in words
    for name in ("offload_params", "cpu_offload"):
        offload |= fc.flag(_fsdp_key(fc, name), spelled=True)
    if offload:
        cfg.settings.update(offload_params="cpu", offload_optimizer="cpu")
    if fc.flag(_fsdp_key(fc, "activation_checkpointing"), spelled=True):
        cfg.settings["grad_ckpt"] = True
    fsdp_version(fc, _fsdp_key(fc, "version"), cfg)


def fsdp_version(k: Keys, key: str, cfg: FrameworkConfig) -> None:
    """Which torch FSDP runs: Accelerate's ``fsdp_version``, TrainingArguments'
    ``fsdp_config.version`` (5.25.0 training_args.py:2826 ``int(...get("version", 2))``: a
    digit string counts) or axolotl's top-level ``fsdp_version``."""
    value = k.raw(key)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value is None:
        return
    if value not in (1, 2) or isinstance(value, bool):
        raise k.wrong(key, "1 (FullyShardedDataParallel) or 2 (fully_shard)")
    cfg.settings["fsdp_version"] = value


def distributed_settings(
    k: Keys, base: Path, cfg: FrameworkConfig, *, fsdp_config_alone: bool = False
) -> None:
    """The DeepSpeed / FSDP keys HF-Trainer-based frameworks share; ``fsdp_config_alone``:
    an ``fsdp_config`` without other FSDP keys turns FSDP on (axolotl's rule)."""
    if k.raw("deepspeed"):
        strategy_from_deepspeed(k, "deepspeed", base, cfg)
    if any(k.raw(key) is not None for key in ("fsdp", "fsdp_version", "fsdp_config")):
        _strategy_from_fsdp(k, base, cfg, fsdp_config_alone)


# -- launcher configs: Accelerate's `accelerate config` file, a DeepSpeed JSON ------------

# accelerate.utils.dataclasses.DistributedType (accelerate 1.15): the data-parallel ones
# are ftmem's default on several GPUs (ddp), "NO" its single GPU
ACCELERATE_TYPES = (
    "no",
    "multi_gpu",
    "multi_npu",
    "multi_xpu",
    "multi_mlu",
    "multi_musa",
    "multi_hpu",
    "multi_sdaa",
    "deepspeed",
    "fsdp",
    "megatron_lm",
)
ACCELERATE_KEYS = frozenset(
    {
        "distributed_type",
        "num_processes",
        "num_machines",
        "deepspeed_config",
        "fsdp_config",
        "mixed_precision",
        "parallelism_config",
    }
)
# keys of the launch itself (addresses, ranks, TPU and CPU-affinity settings, the
# debug switch): no effect on a GPU's memory
ACCELERATE_NO_EFFECT = frozenset(
    {
        "compute_environment",
        "debug",
        "downcast_bf16",  # TPU only (accelerate's XLA bf16 downcast)
        "machine_rank",
        "main_training_function",
        "main_process_ip",
        "main_process_port",
        "rdzv_backend",
        "same_network",
        "tpu_env",
        "tpu_use_cluster",
        "tpu_use_sudo",
        "tpu_name",
        "tpu_zone",
        "use_cpu",
        "gpu_ids",
        "enable_cpu_affinity",
        "num_cpu_threads_per_process",
    }
)
DEEPSPEED_KEYS = frozenset({"zero_optimization", "tensor_parallel", "zero_force_ds_cpu_optimizer"})
# HF Trainer fills these "auto" values from the training config
# (transformers integrations/deepspeed.py HfTrainerDeepSpeedConfig.trainer_config_process)
DEEPSPEED_NO_EFFECT = frozenset(
    {
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "fp16",
        "bf16",
        "steps_per_print",
        "wall_clock_breakdown",
        "zero_allow_untested_optimizer",
        "scheduler",
    }
)
MIXED_PRECISION = ("no", "fp16", "bf16", "fp8")


def launcher_kind(data: dict) -> str | None:
    """accelerate (the file ``accelerate config`` writes) or deepspeed (a DeepSpeed
    JSON, as ``deepspeed --deepspeed_config`` or TrainingArguments' ``deepspeed`` take it)."""
    if "distributed_type" in data and ("num_processes" in data or "compute_environment" in data):
        return "accelerate"
    if isinstance(data.get("zero_optimization"), dict) or "train_micro_batch_size_per_gpu" in data:
        return "deepspeed"
    return None


def read_launcher_config(path: str) -> FrameworkConfig:
    """The parallel settings of a launcher config: GPUs, nodes, ZeRO / FSDP, offload."""
    p = given_path(path, "launcher config")
    data = read_mapping(p, "launcher config")
    kind = launcher_kind(data)
    if kind is None:
        raise ConfigError(
            f"{path}: not a launcher config; expected an Accelerate config (distributed_type, "
            "num_processes) or a DeepSpeed JSON (zero_optimization)."
        )
    cfg = FrameworkConfig(kind, str(p), None)
    k = Keys(data, str(p))
    if kind == "deepspeed":
        _deepspeed_config(k, cfg)
        if "optimizer" in data:
            cfg.notes.append(
                "optimizer: DeepSpeed's own optimizer replaces HF Trainer's; estimated as the "
                "training config's (AdamW keeps the same states)."
            )
        cfg.notes.append(LAUNCHER_NOTE)
        known, quiet = DEEPSPEED_KEYS | {"optimizer"}, DEEPSPEED_NO_EFFECT
    else:
        _accelerate_config(k, cfg)
        known, quiet = ACCELERATE_KEYS, ACCELERATE_NO_EFFECT
    _ignored(cfg, [str(key) for key in data if key not in known], quiet)
    return cfg


def _ignored(cfg: FrameworkConfig, keys: list[str], quiet: frozenset[str]) -> None:
    cfg.ignored = sorted(keys)
    unknown = [key for key in cfg.ignored if key not in quiet]
    if unknown:
        cfg.notes.append(f"{cfg.framework} keys not read by ftmem: {', '.join(unknown)}.")


def _accelerate_config(k: Keys, cfg: FrameworkConfig) -> None:
    """Accelerate's launcher config: ``num_processes`` counts the processes of all
    ``num_machines`` (accelerate commands/launch.py: "total number of processes")."""
    kind = k.choice("distributed_type", ACCELERATE_TYPES)
    processes = k.integer("num_processes") or 1
    machines = k.integer("num_machines") or 1
    if processes % machines:
        raise ConfigError(
            f"{k.file}: num_processes ({processes}) counts the GPUs of all num_machines "
            f"({machines}); it must be a multiple of it."
        )
    cfg.settings.update(gpus=processes // machines, nodes=machines)
    if kind == "deepspeed":
        _accelerate_deepspeed(k.section("deepspeed_config"), cfg)
    elif kind == "fsdp":
        fsdp_from_config(k.section("fsdp_config"), [], cfg)
        # accelerate launch's --fsdp_version defaults to "1" where the config names none
        # (accelerate 1.16 commands/launch.py:517-523, the config's keys copied over it
        # at :1313-1326), exported as FSDP_VERSION (utils/launch.py:281), which the plugin
        # reads when built without one (utils/dataclasses.py:1709-1710)
        assume(cfg, "fsdp_version", 1, "accelerate launch's --fsdp_version default")
    elif kind == "megatron_lm":
        cfg.notes.append(
            "distributed_type MEGATRON_LM: Megatron-LM's parallelism is not read; give "
            "--tp / --pp / --strategy."
        )
    mixed = k.choice("mixed_precision", MIXED_PRECISION)
    if mixed == "bf16":
        cfg.settings.update(precision="bf16", autocast=True)
    elif mixed == "fp16":
        cfg.settings["precision"] = "fp16-mixed"
    elif mixed == "fp8":
        cfg.notes.append("mixed_precision fp8: FP8 training is not modelled; estimated in bf16.")
        cfg.settings.update(precision="bf16", autocast=True)
    _parallelism(k.section("parallelism_config"), cfg)


def _accelerate_deepspeed(ds: Keys, cfg: FrameworkConfig) -> None:
    """Accelerate's ``deepspeed_config``: its own keys, or a DeepSpeed JSON it names."""
    file = ds.text("deepspeed_config_file")
    if file:
        path = framework_path(file, Path(ds.file).parent, ds.name("deepspeed_config_file"), cfg)
        if path is None:
            raise ConfigError(f"{ds.file}: deepspeed_config_file {file} is not found.")
        _deepspeed_config(Keys(read_mapping(path), str(path)), cfg)
        return
    stage = ds.integer("zero_stage", minimum=0)
    if stage is not None:
        if stage > 3:
            raise ds.wrong("zero_stage", "0, 1, 2 or 3")
        if stage:
            cfg.settings["strategy"] = f"zero{stage}"
        # accelerate.utils.dataclasses DeepSpeedPlugin.__post_init__ (accelerate 1.16) builds a
        # zero_optimization of stage, offload and save flags only: DeepSpeed's bucket defaults
        built = Keys({}, ds.file, "zero_optimization.")
        _zero_buckets(built, stage, cfg, "the DeepSpeed config Accelerate builds")
    for key, setting in (
        ("offload_optimizer_device", "offload_optimizer"),
        ("offload_param_device", "offload_params"),
    ):
        device = ds.choice(key, OFFLOAD_DEVICES)
        if device in ("cpu", "nvme"):
            cfg.settings[setting] = device


def _parallelism(pc: Keys, cfg: FrameworkConfig) -> None:
    """Accelerate's ParallelismConfig (accelerate.parallelism_config): tensor and
    context parallel degrees as ftmem's; sequence parallelism (ALST / Ulysses) noted."""
    for name, setting in (("tp_size", "tp"), ("cp_size", "cp")):
        degree = pc.integer(f"parallelism_config_{name}")
        if degree is not None and degree > 1:
            cfg.settings[setting] = degree
    sp = pc.integer("parallelism_config_sp_size")
    if sp is not None and sp > 1:
        cfg.notes.append(
            f"parallelism_config_sp_size {sp}: Ulysses sequence parallelism is not modelled; "
            "estimated without it (--cp splits the sequence the same way for activations)."
        )
    replicate = pc.integer("parallelism_config_dp_replicate_size")
    if replicate is not None and replicate > 1:
        cfg.notes.append(
            f"parallelism_config_dp_replicate_size {replicate}: replicated shard groups "
            "(HSDP) are not read; give --strategy fsdp-hybrid."
        )


def _launcher_fsdp_version(
    merged: dict,
    train: FrameworkConfig,
    launcher: FrameworkConfig,
    transformers_version: str | None,
    notes: list[str],
) -> bool:
    """Keeps the launcher's FSDP version in ``merged`` where it is the one that runs,
    and says whether it holds over the training config's own. It does not where the
    training config turns FSDP on itself under transformers >= 5 (its ``fsdp_config``
    version or TrainingArguments' default is given to the plugin:
    versions.TRANSFORMERS_FSDP_PLUGIN_ARGS), where the training framework shards with its
    own version (Profile.fsdp_version), or where the training config's strategy is not
    FSDP. Under 4.x it holds over TrainingArguments' ``fsdp_config``, whose version 4.x
    does not read."""
    from ftmem.profiles import PROFILES
    from ftmem.versions import (
        TRANSFORMERS_FSDP2_DEFAULT,
        older_than,
        training_args_name_fsdp_version,
    )

    if "fsdp_version" not in merged:
        return False
    own = train.settings.get("fsdp_version")
    own_fsdp = str(train.settings.get("strategy", "")).startswith("fsdp")
    profile = PROFILES.get(train.framework)
    if (own_fsdp and training_args_name_fsdp_version(transformers_version)) or (
        profile is not None and profile.fsdp_version is not None
    ):
        launched = merged.pop("fsdp_version")
        stated = not any(a.startswith("fsdp_version ") for a in launcher.assumed)
        runs: int
        if profile is not None and profile.fsdp_version is not None:
            runs, whose = profile.fsdp_version, f"{train.framework}'s own"
        elif own is not None:
            runs, whose = own, f"{train.path}'s"
        else:
            default = 1 if older_than(transformers_version, TRANSFORMERS_FSDP2_DEFAULT) else 2
            runs, whose = default, "TrainingArguments' default"
        if stated and runs != launched:
            notes.append(f"fsdp_version: {whose} {runs} over the launcher's {launched}.")
        return False
    if "strategy" in train.settings and not own_fsdp:
        merged.pop("fsdp_version")  # the training config's DeepSpeed or DDP runs
        return False
    if own is not None and own != merged["fsdp_version"]:
        notes.append(
            f"fsdp_version: the launcher's {merged['fsdp_version']} over {train.path}'s "
            f"{own} (transformers before 5.0 reads the launcher's FSDP_VERSION)."
        )
    return True


def with_launcher(
    train: FrameworkConfig, launcher: FrameworkConfig, transformers_version: str | None = None
) -> FrameworkConfig:
    """The training config's settings over the launcher's (HF Trainer builds its
    DeepSpeed / FSDP plugin from TrainingArguments' keys when they are set), each one
    replaced named in a note; FSDP's activation checkpointing holds whatever the
    training config says, and the launcher's mixed precision replaces a precision that
    only TrainingArguments' defaults gave (transformers training_args.py @5.24.0 reads
    ACCELERATE_MIXED_PRECISION when neither bf16 nor fp16 is set). The FSDP version as
    _launcher_fsdp_version says (``transformers_version``: the run's release, None the
    current one)."""
    merged = dict(launcher.settings)
    notes = [n for n in train.notes if n != LAUNCHER_NOTE]
    launched = _launcher_fsdp_version(merged, train, launcher, transformers_version, notes)
    assumed = {entry.split(" ", 1)[0] for entry in train.assumed}
    own_precision = "precision" not in assumed or "precision" not in merged
    for key in ("precision", "autocast"):
        if own_precision:
            merged.pop(key, None)  # HF Trainer's bf16 / fp16 decide, not the launcher
    for key, value in train.settings.items():
        if key in ("precision", "autocast") and not own_precision:
            continue
        if key == "grad_ckpt" and merged.get(key):
            continue
        if key == "fsdp_version" and launched:
            continue
        if key in merged and merged[key] != value:
            notes.append(f"{key}: {train.path}'s {value} over the launcher's {merged[key]}.")
        merged[key] = value
    if not own_precision:
        notes.append(
            f"precision {merged['precision']}: the launcher's mixed_precision, which HF "
            "Trainer takes when the training config sets neither bf16 nor fp16."
        )
    fp32_weights = train.settings.get("precision") == "fp32"
    if not own_precision and fp32_weights and merged["precision"] == "bf16":
        merged.pop("autocast", None)  # fp32 weights under bf16 autocast
        merged["precision"] = "bf16-mixed"
    said = f"Read the {launcher.framework} launcher config {launcher.path}."
    # the launcher's defaults that still hold (not replaced by the training config's)
    kept = [
        a
        for a in launcher.assumed
        if (key := a.split(" ", 1)[0]) in merged
        and merged[key] == launcher.settings[key]
        and key not in train.settings
    ]
    return FrameworkConfig(
        train.framework,
        train.path,
        train.model,
        merged,
        train.ignored,
        [said, *launcher.notes, *notes],
        [*train.assumed, *kept],
    )
