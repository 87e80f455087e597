"""DeepSpeed and FSDP settings as HF-Trainer-based frameworks give them (a DeepSpeed
JSON, TrainingArguments' ``fsdp`` / ``fsdp_config``, Accelerate's spellings) as ftmem's
strategy and offload settings."""

from __future__ import annotations

import re
from pathlib import Path

from ftmem.errors import ConfigError
from ftmem.filekeys import Keys
from ftmem.frameworks.shared import FrameworkConfig, read_mapping

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
    for key, setting in (
        ("offload_optimizer", "offload_optimizer"),
        ("offload_param", "offload_params"),
    ):
        offload = zero.section(key)
        _not_auto(offload, "device", "none, cpu or nvme")
        device = offload.choice("device", OFFLOAD_DEVICES)
        if device in ("cpu", "nvme"):
            cfg.settings[setting] = device


def strategy_from_deepspeed(k: Keys, key: str, base: Path, cfg: FrameworkConfig) -> None:
    """A DeepSpeed config (a mapping, or a path relative to the framework config)."""
    value = k.raw(key)
    if isinstance(value, dict):
        _deepspeed_config(k.section(key), cfg)
    elif isinstance(value, str):
        path = (base / value) if not Path(value).is_absolute() else Path(value)
        if path.is_file():
            _deepspeed_config(Keys(read_mapping(path), str(path)), cfg)
        else:
            match = re.search(r"zero[_-]?([123])", value)
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


def _fsdp_settings(k: Keys, base: Path) -> Keys:
    """``fsdp_config``: a mapping or a JSON file name (as transformers takes it)."""
    value = k.raw("fsdp_config")
    if isinstance(value, str):
        path = (base / value) if not Path(value).is_absolute() else Path(value)
        return Keys(read_mapping(path), str(path))
    return k.section("fsdp_config")


def _fsdp_key(fc: Keys, name: str) -> str:
    """transformers strips the ``fsdp_`` prefix of Accelerate's keys: either spelling."""
    return f"fsdp_{name}" if f"fsdp_{name}" in fc else name


def _strategy_from_fsdp(k: Keys, base: Path, cfg: FrameworkConfig) -> None:
    on, words = _fsdp_options(k)
    # axolotl 0.8+: fsdp_version and fsdp_config, without the legacy option list
    on = on or (k.raw("fsdp_version") is not None and bool(k.raw("fsdp_config")))
    if not on:
        return
    fc = _fsdp_settings(k, base)
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
        cfg.notes.append(HYBRID_ZERO2_NOTE.format(key=key))
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
    cfg.notes.append(LAUNCHER_NOTE)


def distributed_settings(k: Keys, base: Path, cfg: FrameworkConfig) -> None:
    """The DeepSpeed / FSDP keys HF-Trainer-based frameworks share."""
    if k.raw("deepspeed"):
        strategy_from_deepspeed(k, "deepspeed", base, cfg)
    if k.raw("fsdp") is not None or k.raw("fsdp_version") is not None:
        _strategy_from_fsdp(k, base, cfg)
