"""Training-framework configs as ftmem settings: axolotl, torchtune, TRL / HF
TrainingArguments, LitGPT, LLaMA-Factory and ColossalChat's command lines.

Each reader maps the keys that change memory (base model, adapter, rank, targets,
sequence length, micro-batch, accumulation, checkpointing, optimizer, precision,
attention, DeepSpeed / FSDP) onto the settings of :func:`ftmem.estimate`; every other
key is listed as ignored, never silently dropped. The frameworks' own memory features
map onto ftmem's: chunked and fused losses (torchtune, Liger), activation offloading,
optimizer-in-backward, GaLore (HF ``galore_adamw*`` optimizers, LLaMA-Factory), rsLoRA
and ReLoRA; features ftmem does not model become notes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftmem.errors import ConfigError
from ftmem.filekeys import Keys
from ftmem.frameworks import axolotl, colossalai, hf_trainer, litgpt, llama_factory, torchtune
from ftmem.frameworks.distributed import launcher_kind, read_launcher_config, with_launcher
from ftmem.frameworks.shared import NO_MEMORY_EFFECT, FrameworkConfig, read_mapping
from ftmem.run import settings_for
from ftmem.textfiles import given_path

__all__ = [
    "TRL_TRAINER_OF",
    "FrameworkConfig",
    "detect",
    "read_framework_config",
    "read_launcher_config",
    "trl_defaults",
    "under_flags",
    "with_launcher",
]


def under_flags(cfg: FrameworkConfig, flags: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The file's settings with the command line's flags over them, and notes.

    A flag replaces its setting; the file's settings that belonged to what a flag
    replaced go with it (its LoRA rank under ``--method full``, its FSDP offload under
    ``--strategy zero2``), each named in a note, rather than be refused as if the user
    had combined them.
    """
    settings = dict(cfg.settings)
    dropped: list[str] = []
    method = flags.get("method")
    if method is not None and method != settings.get("method", "full"):
        kept = settings_for(method, settings)
        dropped += [k for k in settings if k not in kept and k not in flags]
        settings = kept
    strategy = flags.get("strategy")
    if strategy is not None and strategy != settings.get("strategy"):
        dropped += [k for k in ("offload_optimizer", "offload_params") if k in settings]
        dropped = [k for k in dropped if k not in flags]
    settings = {k: v for k, v in settings.items() if k not in dropped}
    notes = []
    if dropped:
        names = ", ".join(sorted(dropped))
        notes.append(f"Not taken from {cfg.path} (they went with what the flags replace): {names}.")
    return {**settings, **flags}, notes


# the code path (RunConfig.framework, ftmem.profiles) each reader's runs follow: TRL's
# and TrainingArguments' are HF Trainer's
PROFILE_OF_READER = {
    "axolotl": "axolotl",
    "torchtune": "torchtune",
    "trl": "hf",
    "litgpt": "litgpt",
    "llama-factory": "llama-factory",
    "colossalai": "hf",  # ColossalChat's own loop over a transformers model
}

# each reader module: read(keys, cfg, folder) -> the keys it read, and its
# NO_MEMORY_EFFECT, the framework's own keys that do not change memory
READERS: dict[str, Any] = {
    "axolotl": axolotl,
    "torchtune": torchtune,
    "trl": hf_trainer,
    "litgpt": litgpt,
    "llama-factory": llama_factory,
    "colossalai": colossalai,
}


def detect(data: dict[str, Any]) -> str | None:
    # torchtune names its models by builder; its PPO recipes have a policy and a value model
    for key in ("model", "policy_model"):
        model = data.get(key)
        if isinstance(model, dict) and "_component_" in model:
            return "torchtune"
    if "base_model" in data:
        return "axolotl"
    if "finetuning_type" in data or ("stage" in data and "model_name_or_path" in data):
        return "llama-factory"
    if any(key in data for key in llama_factory.NOT_TRAINING_KEYS):  # chat / export configs
        return "llama-factory"
    if llama_factory.is_v1(data):  # model: <name> with model_class, dist_config, peft_config...
        return "llama-factory"
    if "checkpoint_dir" in data or isinstance(data.get("train"), dict):
        return "litgpt"
    if any(
        k in data
        for k in ("per_device_train_batch_size", "model_name_or_path", "output_dir", "optim")
    ):
        return "trl"
    return None


# the TRL trainer of each objective (trl/trainer/{sft,dpo,kto,grpo}_trainer.py; ORPO and
# CPO, which runs SimPO, in trl/experimental at huggingface/trl@f2cd57710ae3)
TRL_TRAINER_OF = {
    "sft": "SFT",
    "dpo": "DPO",
    "ipo": "DPO",
    "kto": "KTO",
    "apo-zero-unpaired": "KTO",
    "grpo": "GRPO",
    "orpo": "ORPO",
    "simpo": "CPO",
}


def trl_defaults(model: str, objective: str) -> FrameworkConfig:
    """``--framework trl`` without a config file: the run as TRL's trainer for the
    objective takes it when told only the model (``trl sft --model_name_or_path M``):
    the defaults a TRL config silent on everything gets, each listed as assumed."""
    trainer = TRL_TRAINER_OF[objective]
    cfg = FrameworkConfig("trl", "--framework trl", model)
    data = {"model_name_or_path": model}
    why = f"--framework trl --objective {objective}"
    known = hf_trainer.read(Keys(data, cfg.path), cfg, Path.cwd(), (trainer, why))
    return _finished(cfg, "trl", data, known, silent="the command line")


def read_framework_config(path: str, framework: str | None = None) -> FrameworkConfig:
    """The ftmem settings of a training-framework config file (or of a command line:
    ColossalChat's ``colossalai run ... train_sft.py ...`` in a .sh or .txt file)."""
    p = given_path(path, "training config")
    if colossalai.is_command_file(p) and framework in (None, "colossalai"):
        data = colossalai.command_line(p)
        name: str | None = "colossalai"
    else:
        data = read_mapping(p)
        name = framework or detect(data)
    if name is None and (launcher := launcher_kind(data)) is not None:
        what = "an Accelerate launcher" if launcher == "accelerate" else "a DeepSpeed"
        also = "" if launcher == "accelerate" else ", or name it in its deepspeed: key"
        raise ConfigError(
            f"{path} is {what} config, not a training config: give it as --launcher {path} "
            f"beside --from TRAINING_CONFIG (or a model){also}."
        )
    if name is None:
        raise ConfigError(
            f"{path}: cannot tell which framework it is for; expected axolotl (base_model), "
            "torchtune (model._component_), TRL/TrainingArguments (per_device_train_batch_size), "
            "LitGPT (checkpoint_dir) or LLaMA-Factory (finetuning_type)."
        )
    if name not in READERS:
        raise ConfigError(f"Unknown framework '{name}'; one of {', '.join(READERS)}.")
    cfg = FrameworkConfig(name, str(p), None)
    known = READERS[name].read(Keys(data, str(p)), cfg, p.parent)
    return _finished(cfg, name, data, known)


def _finished(
    cfg: FrameworkConfig,
    name: str,
    data: dict[str, Any],
    known: frozenset[str],
    silent: str = "the file",
) -> FrameworkConfig:
    """What every reader leaves to do: the profile its runs follow, the defaults it
    assumed and the keys it did not read, in notes."""
    reader = READERS[name]
    cfg.settings = {k: v for k, v in cfg.settings.items() if v is not None}
    cfg.settings.setdefault("framework", PROFILE_OF_READER[name])
    if cfg.assumed:
        cfg.notes.append(f"{name} defaults where {silent} is silent: {'; '.join(cfg.assumed)}.")
    cfg.ignored = sorted(str(k) for k in data if k not in known)
    # a nested DeepSpeed config's or fsdp_config's values, by dotted path (list_unread)
    cfg.ignored += cfg.nested_no_effect + cfg.nested_not_read
    if cfg.ignored:
        no_effect = NO_MEMORY_EFFECT | reader.NO_MEMORY_EFFECT | set(cfg.nested_no_effect)
        unknown = cfg.not_read = [k for k in cfg.ignored if k not in no_effect]
        quiet = [k for k in cfg.ignored if k in no_effect]
        parts = []
        if quiet:
            parts.append(f"no effect on memory: {', '.join(quiet)}")
        if unknown:
            parts.append(f"not read by ftmem: {', '.join(unknown)}")
        cfg.notes.append(f"{name} keys ignored ({'; '.join(parts)}).")
    return cfg
