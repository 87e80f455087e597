"""ColossalChat's training command lines (``colossalai run ... train_sft.py --plugin zero2
...`` in a shell script or a text file) read as the scripts run them: the GPUs and nodes
the launcher starts, the booster plugin each ``--plugin`` builds, and the arguments that
change memory.

The file is read as text, never run: ``\\`` continuations are joined, a ``# comment`` after
one is dropped (ColossalChat's README writes them so), nothing is expanded. An argument
given as a shell variable (``--pretrain $PRETRAINED_MODEL_PATH``) is not read: the notes
say which ftmem flag to give instead.

Sources: hpcaitech/ColossalAI@4f9953be335e (COLOSSALCHAT below; ``version.txt`` 0.5.0),
applications/ColossalChat/examples/training_scripts/{train_sft,train_dpo,train_orpo,
train_kto,lora_finetune}.py (argparse, plugins, model loading), applications/ColossalChat/
coati/ (models/lora.py, dataset/loader.py, trainer/), colossalai/cli/launcher/{__init__,
run}.py, colossalai/booster/plugin/hybrid_parallel_plugin.py, colossalai/nn/optimizer/
hybrid_adam.py.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftmem.colossalai import GEMINI, HYBRID_AMP
from ftmem.errors import ConfigError
from ftmem.filekeys import Keys
from ftmem.frameworks.shared import MAX_CONFIG_BYTES, FrameworkConfig, assume
from ftmem.textfiles import parse_json, read_text

COLOSSALCHAT = "hpcaitech/ColossalAI@4f9953b"
SCRIPTS_DIR = "applications/ColossalChat/examples/training_scripts"
# files read as a command line (any other suffix is a YAML or JSON config)
SUFFIXES = frozenset({".sh", ".bash", ".txt", ".cmd"})

# -- the scripts' arguments ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arg:
    kind: str  # "int", "float", "str", "flag" (store_true) or "list" (nargs="+")
    default: Any
    line: str  # where the script's argparse declares it
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    args: dict[str, Arg]
    shorts: dict[str, str] = field(default_factory=dict)  # "-g" -> "--use_grad_checkpoint"

    def option(self, given: str, where: str) -> str:
        """The option ``given`` names: a short option, the long name, or (argparse's
        allow_abbrev) a unique prefix of one."""
        if given in self.shorts:
            return self.shorts[given]
        if given in self.args:
            return given
        matches = [name for name in self.args if given.startswith("--") and name.startswith(given)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ConfigError(
                f"{where}: {given} is ambiguous for {self.name} (argparse refuses it): one of "
                f"{', '.join(matches)}."
            )
        raise ConfigError(
            f"{where}: {self.name} takes no {given} (its argparse stops at unrecognized arguments)."
        )

    def said(self, option: str) -> str:
        """Where the script sets the default of ``option``."""
        arg = self.args[option]
        return f"{self.name}:{arg.line} at {COLOSSALCHAT}"


PLUGINS_CHAT = ("gemini", "gemini_auto", "3d", "ddp", "zero2_cpu", "zero2")
SP_MODES = ("split_gather", "ring", "all_to_all")
PRECISIONS = ("fp16", "bf16")


def _chat_args(
    lines: dict[str, str], defaults: dict[str, Any], plugins: tuple[str, ...]
) -> dict[str, Arg]:
    """The arguments of train_{sft,dpo,orpo,kto}.py, at the lines ``lines`` gives, with
    the defaults that differ between them and the script's --plugin choices."""
    kinds = {
        "--plugin": ("str", "gemini"),
        "--grad_clip": ("float", 1.0),
        "--weight_decay": ("float", 0.1),
        "--warmup_steps": ("int", None),
        "--tp": ("int", 1),
        "--pp": ("int", 1),
        "--sp": ("int", 1),
        "--disable_loss_mask": ("flag", False),
        "--enable_sequence_parallelism": ("flag", False),
        "--zero_stage": ("int", 0),
        "--zero_cpu_offload": ("flag", False),
        "--sp_mode": ("str", "split_gather"),
        "--pretrain": ("str", None),
        "--tokenizer_dir": ("str", None),
        "--dataset": ("list", []),
        "--eval_dataset": ("list", []),
        "--checkpoint_path": ("str", None),
        "--config_file": ("str", None),
        "--max_epochs": ("int", 3),
        "--batch_size": ("int", 4),
        "--mixed_precision": ("str", "fp16"),
        "--lora_config": ("str", None),
        "--save_interval": ("int", 1000),
        "--lr": ("float", 5e-6),
        "--accumulation_steps": ("int", 8),
        "--log_dir": ("str", None),
        "--use_wandb": ("flag", False),
        "--grad_checkpoint": ("flag", False),
        "--use_flash_attn": ("flag", False),
        # script-specific ones
        "--save_path": ("str", None),
        "--save_dir": ("str", None),
        "--max_len": ("int", 512),
        "--max_length": ("int", 2048),
        "--microbatch_size": ("int", 1),
        "--loss_type": ("str", "dpo_loss"),
        "--beta": ("float", 0.1),
        "--gamma": ("float", 0.0),
        "--length_normalization": ("flag", False),
        "--model_type": ("str", None),
        "--disable_reference_model": ("flag", False),
        "--ref_tp": ("int", 1),
        "--lam": ("float", 0.1),
        "--desirable_weight": ("float", 1.0),
        "--undesirable_weight": ("float", 1.0),
        "--auto_weight": ("flag", False),
    }
    choices = {
        "--plugin": plugins,
        "--zero_stage": (0, 1, 2),
        "--sp_mode": SP_MODES,
        "--mixed_precision": PRECISIONS,
    }
    args = {}
    for name, line in lines.items():
        kind, default = kinds[name]
        args[name] = Arg(kind, defaults.get(name, default), line, choices.get(name, ()))
    return args


_COMMON_SFT = {
    "--grad_clip": "316",
    "--weight_decay": "317",
    "--warmup_steps": "318",
    "--tp": "319",
    "--pp": "320",
    "--sp": "321",
}

TRAIN_SFT = Script(
    "train_sft.py",
    _chat_args(
        {
            **_COMMON_SFT,
            "--plugin": "309-315",
            "--disable_loss_mask": "322",
            "--enable_sequence_parallelism": "323",
            "--zero_stage": "324",
            "--zero_cpu_offload": "325",
            "--sp_mode": "326",
            "--pretrain": "327",
            "--tokenizer_dir": "328",
            "--dataset": "329",
            "--eval_dataset": "330",
            "--checkpoint_path": "331-333",
            "--save_path": "334",
            "--max_epochs": "335",
            "--batch_size": "336",
            "--max_len": "337",
            "--mixed_precision": "338",
            "--lora_config": "339",
            "--save_interval": "340",
            "--lr": "341",
            "--config_file": "342",
            "--accumulation_steps": "343",
            "--log_dir": "344",
            "--use_wandb": "345",
            "--grad_checkpoint": "346",
            "--use_flash_attn": "347",
            "--microbatch_size": "348",
        },
        {"--mixed_precision": "bf16"},
        PLUGINS_CHAT,
    ),
)
TRAIN_DPO = Script(
    "train_dpo.py",
    _chat_args(
        {
            **_COMMON_SFT,
            "--plugin": "309-315",
            "--loss_type": "322",
            "--beta": "323",
            "--gamma": "324",
            "--length_normalization": "325",
            "--enable_sequence_parallelism": "326",
            "--zero_stage": "327",
            "--zero_cpu_offload": "328",
            "--sp_mode": "329",
            "--pretrain": "330",
            "--model_type": "331",
            "--tokenizer_dir": "332",
            "--dataset": "333",
            "--eval_dataset": "334",
            "--checkpoint_path": "335-337",
            "--config_file": "338",
            "--save_dir": "339",
            "--max_length": "340",
            "--max_epochs": "341",
            "--batch_size": "342",
            "--disable_loss_mask": "343",
            "--mixed_precision": "344",
            "--lora_config": "345",
            "--save_interval": "346",
            "--lr": "347",
            "--accumulation_steps": "348",
            "--log_dir": "349",
            "--use_wandb": "350",
            "--grad_checkpoint": "351",
            "--use_flash_attn": "352",
            "--microbatch_size": "353-358",
            "--disable_reference_model": "360-365",
            "--ref_tp": "366-371",
        },
        {"--accumulation_steps": 1, "--microbatch_size": 2},
        ("gemini", "zero2", "zero2_cpu", "3d", "ddp"),
    ),
)
TRAIN_ORPO = Script(
    "train_orpo.py",
    _chat_args(
        {
            "--plugin": "292-298",
            "--grad_clip": "299",
            "--weight_decay": "300",
            "--warmup_steps": "301",
            "--tp": "302",
            "--pp": "303",
            "--sp": "304",
            "--lam": "305",
            "--disable_loss_mask": "306",
            "--enable_sequence_parallelism": "307",
            "--zero_stage": "308",
            "--zero_cpu_offload": "309",
            "--sp_mode": "310",
            "--pretrain": "311",
            "--model_type": "312",
            "--tokenizer_dir": "313",
            "--dataset": "314",
            "--eval_dataset": "315",
            "--checkpoint_path": "316-318",
            "--config_file": "319",
            "--save_dir": "320",
            "--max_length": "321",
            "--max_epochs": "322",
            "--batch_size": "323",
            "--disable_reference_model": "324-329",
            "--mixed_precision": "330",
            "--lora_config": "331",
            "--save_interval": "332",
            "--lr": "333",
            "--accumulation_steps": "334",
            "--log_dir": "335",
            "--use_wandb": "336",
            "--grad_checkpoint": "337",
            "--use_flash_attn": "338",
        },
        {},
        ("gemini", "gemini_auto", "zero2", "zero2_cpu", "3d"),
    ),
)
TRAIN_KTO = Script(
    "train_kto.py",
    _chat_args(
        {
            "--plugin": "330-336",
            "--grad_clip": "337",
            "--weight_decay": "338",
            "--warmup_steps": "339",
            "--tp": "340",
            "--pp": "341",
            "--sp": "342",
            "--beta": "343",
            "--desirable_weight": "344",
            "--undesirable_weight": "345",
            "--disable_loss_mask": "346",
            "--enable_sequence_parallelism": "347",
            "--zero_stage": "348",
            "--zero_cpu_offload": "349",
            "--sp_mode": "350",
            "--pretrain": "351",
            "--tokenizer_dir": "352",
            "--dataset": "353",
            "--eval_dataset": "354",
            "--checkpoint_path": "355-357",
            "--config_file": "358",
            "--save_dir": "359",
            "--max_length": "360",
            "--max_epochs": "361",
            "--batch_size": "362",
            "--mixed_precision": "364",
            "--lora_config": "365",
            "--save_interval": "366",
            "--auto_weight": "367",
            "--lr": "368",
            "--accumulation_steps": "369",
            "--log_dir": "370",
            "--use_wandb": "371",
            "--grad_checkpoint": "372",
            "--use_flash_attn": "373",
        },
        {},
        ("gemini", "gemini_auto", "zero2", "zero2_cpu", "3d"),
    ),
)
LORA_FINETUNE = Script(
    "lora_finetune.py",
    {
        "--pretrained": Arg("str", None, "372-378"),
        "--dataset": Arg("str", None, "379"),
        "--plugin": Arg(
            "str",
            "zero2",
            "380-387",
            ("gemini", "gemini_auto", "zero2", "zero2_cpu", "3d", "ddp", "moe"),
        ),
        "--save_dir": Arg("str", "checkpoint_dir", "388"),
        "--tensorboard_dir": Arg("str", None, "389"),
        "--config_file": Arg("str", "training_config.json", "390"),
        "--num_epochs": Arg("int", 1, "392"),
        "--accumulation_steps": Arg("int", 1, "393"),
        "--batch_size": Arg("int", 2, "394"),
        "--lr": Arg("float", 3e-4, "395"),
        "--max_length": Arg("int", 8192, "396"),
        "--mixed_precision": Arg("str", "bf16", "397-403", PRECISIONS),
        "--grad_clip": Arg("float", 1.0, "404"),
        "--weight_decay": Arg("float", 0.1, "405"),
        "--warmup_steps": Arg("int", None, "406"),
        "--use_grad_checkpoint": Arg("flag", False, "407-413"),
        "--use_flash_attn": Arg("flag", False, "414-420"),
        "--tp": Arg("int", 1, "423"),
        "--pp": Arg("int", 1, "424"),
        "--sp": Arg("int", 1, "425"),
        "--ep": Arg("int", 1, "426"),
        "--zero_stage": Arg("int", 1, "427", (0, 1, 2)),
        "--sp_mode": Arg("str", "split_gather", "428-434", SP_MODES),
        "--enable_sequence_parallelism": Arg("flag", False, "435-440"),
        "--zero_cpu_offload": Arg("flag", False, "441-443"),
        "--microbatch_size": Arg("int", 1, "444-446"),
        "--lora_rank": Arg("int", 0, "447"),
        "--lora_alpha": Arg("int", 8, "448"),
    },
    {
        "-m": "--pretrained",
        "-d": "--dataset",
        "-p": "--plugin",
        "-n": "--num_epochs",
        "-g": "--use_grad_checkpoint",
        "-f": "--use_flash_attn",
    },
)
SCRIPTS = {s.name: s for s in (TRAIN_SFT, TRAIN_DPO, TRAIN_ORPO, TRAIN_KTO, LORA_FINETUNE)}
# ColossalChat scripts ftmem does not read, each with why
NOT_READ = {
    "train_rm.py": "trains a reward model (coati RewardModel: the base model with a value "
    "head, chosen and rejected scored against each other), which ftmem does not model",
    "train_ppo.py": "runs PPO with four models (actor, critic, reference, reward) and "
    "generation, which ftmem does not model",
    "train_grpo.py": "runs ColossalChat's GRPO (actor, reference, reward functions and "
    "generation); ftmem's --objective grpo models TRL's GRPOTrainer, not this loop",
}

# -- the launchers ---------------------------------------------------------------------------

# colossalai run (colossalai/cli/launcher/__init__.py:8-69): options taking a value, by
# every spelling click accepts, as the name they are stored under
COLOSSALAI_RUN = {
    "-H": "--host",
    "-host": "--host",
    "--host": "--host",
    "--hostfile": "--hostfile",
    "--include": "--include",
    "--exclude": "--exclude",
    "--num_nodes": "--num_nodes",
    "--nproc_per_node": "--nproc_per_node",
    "--master_port": "--master_port",
    "--master_addr": "--master_addr",
    "--extra_launch_args": "--extra_launch_args",
    "--ssh-port": "--ssh-port",
}
# torchrun (torch/distributed/run.py get_args_parser): options taking a value, stored with
# underscores; and its switches
TORCHRUN_VALUES = frozenset(
    {
        "--nproc_per_node",
        "--nnodes",
        "--node_rank",
        "--master_addr",
        "--master_port",
        "--rdzv_backend",
        "--rdzv_endpoint",
        "--rdzv_id",
        "--rdzv_conf",
        "--max_restarts",
        "--monitor_interval",
        "--start_method",
        "--role",
        "--log_dir",
        "--redirects",
        "--tee",
        "--local_addr",
        "--logs_specs",
        "--local_ranks_filter",
    }
)
TORCHRUN_SWITCHES = frozenset({"--standalone", "--no_python", "--run_path", "--use_env"})

# the keys read (launcher and script); read_framework_config lists every other one
READ_KEYS = frozenset(
    {
        "launcher",
        "script",
        "--nproc_per_node",
        "--num_nodes",
        "--nnodes",
        "--hostfile",
        "--host",
        "--include",
        "--exclude",
        "--plugin",
        "--tp",
        "--pp",
        "--sp",
        "--ep",
        "--zero_stage",
        "--zero_cpu_offload",
        "--sp_mode",
        "--enable_sequence_parallelism",
        "--microbatch_size",
        "--pretrain",
        "--pretrained",
        "--batch_size",
        "--max_len",
        "--max_length",
        "--accumulation_steps",
        "--mixed_precision",
        "--grad_checkpoint",
        "--use_grad_checkpoint",
        "--use_flash_attn",
        "--lora_config",
        "--lora_rank",
        "--lora_alpha",
        "--loss_type",
        "--disable_reference_model",
        "--ref_tp",
    }
)
# this framework's arguments that do not change the memory of a step
NO_MEMORY_EFFECT: frozenset[str] = frozenset(
    {
        "--master_port",
        "--master_addr",
        "--extra_launch_args",
        "--ssh-port",
        "--node_rank",
        "--rdzv_backend",
        "--rdzv_endpoint",
        "--rdzv_id",
        "--rdzv_conf",
        "--max_restarts",
        "--monitor_interval",
        "--start_method",
        "--role",
        "--redirects",
        "--tee",
        "--local_addr",
        "--logs_specs",
        "--local_ranks_filter",
        "--standalone",
        "--no_python",
        "--run_path",
        "--use_env",
        "--grad_clip",
        "--weight_decay",
        "--warmup_steps",
        "--lr",
        "--max_epochs",
        "--num_epochs",
        "--save_interval",
        "--save_path",
        "--save_dir",
        "--config_file",
        "--log_dir",
        "--tensorboard_dir",
        "--use_wandb",
        "--dataset",
        "--eval_dataset",
        "--checkpoint_path",
        "--tokenizer_dir",
        "--model_type",
        "--disable_loss_mask",
        "--beta",
        "--gamma",
        "--length_normalization",
        "--lam",
        "--desirable_weight",
        "--undesirable_weight",
        "--auto_weight",
    }
)

# -- the command line ------------------------------------------------------------------------

# "\ # comment" at the end of a line: ColossalChat's README comments its continued lines so
_CONTINUED_COMMENT = re.compile(r"\\[ \t]+#.*$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_LAUNCHERS = re.compile(r"\b(colossalai|torchrun|python3?)\b")


def is_command_file(path: Path) -> bool:
    """A file read as a command line rather than as a YAML or JSON mapping."""
    return path.suffix.lower() in SUFFIXES


def _logical_lines(text: str) -> list[str]:
    """The file's lines with ``\\`` continuations joined (a comment after one dropped)."""
    out: list[str] = []
    current = ""
    for raw in text.splitlines():
        if not current and raw.lstrip().startswith("#"):
            continue  # a comment line: a backslash at its end continues nothing
        line = _CONTINUED_COMMENT.sub(r"\\", raw.rstrip())
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    if current:
        out.append(current)
    return out


def _launch(tokens: list[str]) -> tuple[str, list[str]] | None:
    """The launcher and what follows it, when the line launches a Python script."""
    while tokens and _ASSIGNMENT.match(tokens[0]):  # CUDA_VISIBLE_DEVICES=0,1 colossalai run
        tokens = tokens[1:]
    if tokens[:2] == ["colossalai", "run"]:
        return "colossalai run", tokens[2:]
    head = Path(tokens[0]).name if tokens else ""
    if head == "torchrun":
        return "torchrun", tokens[1:]
    if head in ("python", "python3"):
        if tokens[1:3] in (["-m", "torch.distributed.run"], ["-m", "torch.distributed.launch"]):
            return "torchrun", tokens[3:]
        return "python", tokens[1:]
    return None


def _launcher_options(launcher: str, tokens: list[str], where: str) -> tuple[dict[str, Any], int]:
    """The launcher's options (stored under their long names) and where the script is."""
    options: dict[str, Any] = {}
    i = 0
    while i < len(tokens) and tokens[i].startswith("-"):
        given, eq, inline = tokens[i].partition("=")
        if launcher == "colossalai run":
            if given == "-m":
                raise ConfigError(
                    f"{where}: colossalai run -m runs a module, not a ColossalChat training "
                    "script; ftmem reads train_sft.py, train_dpo.py, train_orpo.py, "
                    "train_kto.py and lora_finetune.py command lines."
                )
            name = COLOSSALAI_RUN.get(given)
            switch = False
        elif launcher == "torchrun":
            name = "--" + given.lstrip("-").replace("-", "_")
            switch = name in TORCHRUN_SWITCHES
            if not switch and name not in TORCHRUN_VALUES:
                name = None
        else:  # python's own options (-u, -O...) take no value
            i += 1
            continue
        if name is None:
            raise ConfigError(f"{where}: {given} is not an option of {launcher}.")
        if switch:
            options[name] = True
            i += 1
            continue
        if eq:
            options[name] = inline
            i += 1
        elif i + 1 < len(tokens):
            options[name] = tokens[i + 1]
            i += 2
        else:
            raise ConfigError(f"{where}: {launcher} {given} has no value.")
    return options, i


def _typed(script: Script, option: str, value: str, where: str) -> Any:
    """``value`` as the script's argparse reads it; a shell variable stays text."""
    arg = script.args[option]
    if "$" in value or "`" in value:
        return value
    if arg.kind in ("int", "float"):
        try:
            typed: Any = int(value) if arg.kind == "int" else float(value)
        except ValueError:
            what = "a whole number" if arg.kind == "int" else "a number"
            raise ConfigError(
                f"{where}: {option} must be {what} ({script.name}'s argparse refuses "
                f"{value[:40]!r})."
            ) from None
    else:
        typed = value
    if arg.choices and typed not in arg.choices:
        listed = ", ".join(str(c) for c in arg.choices)
        raise ConfigError(
            f"{where}: {option} {value[:40]!r} is not one of {script.name}'s choices ({listed})."
        )
    return typed


def _script_args(script: Script, tokens: list[str], where: str) -> dict[str, Any]:
    """The script's arguments, parsed as its argparse parses them."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("-") or token == "-":
            raise ConfigError(
                f"{where}: {script.name} takes no positional argument ({token[:40]!r}); its "
                "argparse refuses it."
            )
        given, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        option = script.option(given, where)
        kind = script.args[option].kind
        i += 1
        if kind == "flag":
            if eq:
                raise ConfigError(f"{where}: {option} is a switch and takes no value.")
            out[option] = True
        elif kind == "list":
            values = [inline] if eq else []
            while i < len(tokens) and not tokens[i].startswith("-"):
                values.append(tokens[i])
                i += 1
            if not values:
                raise ConfigError(f"{where}: {option} needs at least one value.")
            out[option] = values
        else:
            if eq:
                value = inline
            elif i < len(tokens) and not tokens[i].startswith("--"):
                value = tokens[i]
                i += 1
            else:
                raise ConfigError(f"{where}: {option} needs a value.")
            out[option] = _typed(script, option, value, where)
    return out


def command_line(path: Path) -> dict[str, Any]:
    """The launch command of ``path`` as a mapping: ``launcher``, ``script`` and each
    option given (the launcher's and the script's) under its long name."""
    where = str(path)
    text = read_text(path, "training command line", MAX_CONFIG_BYTES)
    found: list[tuple[str, list[str]]] = []
    for line in _logical_lines(text):
        if not _LAUNCHERS.search(line):
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            if ".py" not in line:  # (an echo, a heredoc: not the launch)
                continue
            raise ConfigError(
                f"{where}: a command line does not parse as shell words ({exc})."
            ) from None
        launch = _launch(tokens)
        if launch is not None:
            found.append(launch)
    if not found:
        raise ConfigError(
            f"{where}: no `colossalai run ... SCRIPT.py`, `torchrun ... SCRIPT.py` or "
            "`python SCRIPT.py` command line found."
        )
    launcher, rest = found[0]
    options, at = _launcher_options(launcher, rest, where)
    if at >= len(rest) or not rest[at].endswith(".py"):
        raise ConfigError(f"{where}: {launcher} is not followed by a Python script.")
    name = Path(rest[at]).name
    if name in NOT_READ:
        raise ConfigError(f"{where}: {name} {NOT_READ[name]}.")
    if name not in SCRIPTS:
        raise ConfigError(
            f"{where}: {name} is not a ColossalChat training script ftmem reads; it reads "
            f"{', '.join(SCRIPTS)}."
        )
    data: dict[str, Any] = {"launcher": launcher, "script": name, **options}
    data.update(_script_args(SCRIPTS[name], rest[at + 1 :], where))
    if len(found) > 1:
        data["commands"] = len(found)
    return data


# -- the mapping -----------------------------------------------------------------------------


class _Run:
    """One command line's arguments, read with the script's defaults."""

    def __init__(self, k: Keys, cfg: FrameworkConfig, base: Path) -> None:
        self.k = k
        self.cfg = cfg
        self.base = base
        self.script = SCRIPTS[str(k.raw("script"))]

    def given(self, option: str) -> bool:
        return option in self.k

    def value(self, option: str, flag: str | None = None) -> Any:
        """The option's value, the script's default when absent; None (noted) when a
        shell variable stands for it."""
        if option not in self.k:
            return self.script.args[option].default
        value = self.k.raw(option)
        kind = self.script.args[option].kind if option in self.script.args else "str"
        if isinstance(value, str) and ("$" in value or "`" in value) and kind != "list":
            give = f": give {flag}" if flag else ""
            note = f"{option} {value} is a shell variable ftmem does not expand{give}."
            if note not in self.cfg.notes:  # (several mappings may ask for one option)
                self.cfg.notes.append(note)
            return None
        return value

    def chosen(self, option: str, flag: str) -> Any:
        """The option's value; the script's default (listed as assumed) when absent."""
        value = self.value(option, flag)
        if value is not None and not self.given(option):
            self.cfg.assumed.append(f"{option} {value} ({self.script.said(option)})")
        return value

    def setting(self, option: str, setting: str, flag: str, convert: Any = None) -> Any:
        """Map ``option`` onto ``setting``: given, or the script's default (assumed)."""
        value = self.value(option, flag)
        if value is None:
            return None
        mapped = convert(value) if convert else value
        if self.given(option):
            self.cfg.settings[setting] = mapped
        else:
            assume(self.cfg, setting, mapped, f"{option} {value}, {self.script.said(option)}")
        return value


def _world(k: Keys, cfg: FrameworkConfig, base: Path) -> int | None:
    """GPUs per node and nodes: ``colossalai run`` starts --nproc_per_node processes on
    each host (--host, or the hostfile's lines filtered by --include / --exclude and cut
    to --num_nodes; the local machine without either, cli/launcher/run.py:234-275)."""
    launcher = k.raw("launcher")
    s = cfg.settings
    if launcher == "python":
        s.update(gpus=1, nodes=1)
        return 1
    gpus_raw = k.raw("--nproc_per_node")
    if gpus_raw is None:
        if launcher == "colossalai run":
            raise ConfigError(
                f"{k.file}: colossalai run needs --nproc_per_node (cli/launcher/run.py:234-236)."
            )
        gpus_raw = "1"  # torchrun's default
    try:
        gpus = int(gpus_raw)
    except ValueError:
        cfg.notes.append(
            f"--nproc_per_node {gpus_raw} is not a number ftmem can read: give --gpus N."
        )
        return None
    if gpus < 1:
        raise ConfigError(f"{k.file}: --nproc_per_node must be at least 1, not {gpus}.")
    s["gpus"] = gpus
    nodes = _nodes(k, cfg, base, str(launcher))
    if nodes is None:
        return None
    s["nodes"] = nodes
    return gpus * nodes


def _count(k: Keys, option: str) -> int | None:
    raw = k.raw(option)
    if raw is None:
        return None
    text = str(raw).rsplit(":", 1)[-1]  # torchrun's --nnodes MIN:MAX: at most MAX
    if not text.isdigit():
        return -1
    return int(text)


def _nodes(k: Keys, cfg: FrameworkConfig, base: Path, launcher: str) -> int | None:
    if launcher == "torchrun":
        nodes = _count(k, "--nnodes")
        if nodes == -1:
            cfg.notes.append(f"--nnodes {k.raw('--nnodes')} is not read: give --nodes N.")
            return None
        return nodes or 1
    wanted = _count(k, "--num_nodes")
    if wanted == -1:
        cfg.notes.append(f"--num_nodes {k.raw('--num_nodes')} is not read: give --nodes N.")
        return None
    host, hostfile = k.raw("--host"), k.raw("--hostfile")
    if host is not None and hostfile is not None:
        raise ConfigError(
            f"{k.file}: colossalai run refuses --host with --hostfile (cli/launcher/run.py:"
            "239-241)."
        )
    if host is not None:
        hosts = [h for h in str(host).split(",") if h.strip()]
    elif hostfile is not None:
        found = _hostfile(k, cfg, base, str(hostfile))
        if found is None:
            nodes = wanted if wanted and wanted > 0 else 1
            cfg.notes.append(
                f"--hostfile {hostfile} is not beside the command file, so its hosts are not "
                f"counted: estimated on {nodes} node(s); give --nodes N."
            )
            return nodes
        hosts = found
    else:
        return 1  # the local machine (run.py:269-273); --num_nodes needs a hostfile
    if wanted is not None and wanted > 0 and hostfile is not None:
        hosts = hosts[:wanted]  # run.py:247-258
    if not hosts:
        raise ConfigError(f"{k.file}: no host is left to run on ({hostfile or host}).")
    return len(hosts)


def _hostfile(k: Keys, cfg: FrameworkConfig, base: Path, name: str) -> list[str] | None:
    """The hostfile's hosts (one per non-empty line, run.py:18-55) after --include or
    --exclude, when the file is there to read."""
    if "$" in name:
        return None
    path = Path(name) if Path(name).is_absolute() else base / name
    if not path.is_file():
        return None
    hosts = [line.strip() for line in read_text(path, "hostfile", MAX_CONFIG_BYTES).splitlines()]
    hosts = [h for h in hosts if h]
    include, exclude = k.raw("--include"), k.raw("--exclude")
    if include is not None:
        keep = {h.split(":")[0] for h in str(include).split(",")}
        hosts = [h for h in hosts if h in keep]
    elif exclude is not None:
        drop = {h.split(":")[0] for h in str(exclude).split(",")}
        hosts = [h for h in hosts if h not in drop]
    return hosts


def _model(run: _Run) -> None:
    option = "--pretrained" if run.script is LORA_FINETUNE else "--pretrain"
    name = run.value(option, "the model as the estimate's MODEL argument")
    if not name:
        return
    local = Path(name) if Path(name).is_absolute() else run.base / name
    run.cfg.model = str(local) if (local / "config.json").is_file() else name


def _precision(run: _Run, plugin: str | None) -> None:
    """``--mixed_precision``: the dtype the model is loaded in and the plugin's precision.
    Every ColossalAI plugin casts the model to it; TorchDDPPlugin keeps the loaded dtype,
    which train_dpo/orpo/kto.py without --use_flash_attn leave at from_pretrained's fp32
    (transformers 4.51.3, ColossalAI's pin)."""
    name = run.setting("--mixed_precision", "precision", "--precision")
    if name is None:
        return
    preference = run.script in (TRAIN_DPO, TRAIN_ORPO, TRAIN_KTO)
    if plugin == "ddp" and preference and not run.value("--use_flash_attn"):
        run.cfg.settings["precision"] = "fp32"
        run.cfg.notes.append(
            f"--plugin ddp without --use_flash_attn: {run.script.name} loads the model with "
            "from_pretrained(pretrain) alone (train_dpo.py:114), fp32 in transformers 4.51, "
            "and TorchDDPPlugin does not cast it: the step runs in fp32, --mixed_precision "
            "is not applied."
        )


def _attention(run: _Run) -> None:
    """flash_attention_2 with --use_flash_attn (train_sft.py:46-52, train_dpo.py:106-112);
    lora_finetune.py always (``attn_impl``, :182; eager on Ascend NPUs only); else
    transformers' default, sdpa."""
    if run.script is LORA_FINETUNE:
        run.cfg.settings["attn"] = "flash"
        run.cfg.notes.append(
            "lora_finetune.py builds the model with attn_implementation flash_attention_2 "
            "whatever -f says (lora_finetune.py:182; -f switches the plugins' own flash "
            "attention)."
        )
        return
    if run.value("--use_flash_attn"):
        run.cfg.settings["attn"] = "flash"
    else:
        said = (
            "from_pretrained without attn_implementation: transformers' default where torch has it"
        )
        assume(run.cfg, "attn", "sdpa", said)


def _pipeline(run: _Run, pp: int) -> None:
    """With pp > 1 the trainers run one execute_pipeline per dataloader batch and step
    after it (coati/trainer/sft.py:100-123, dpo.py:216-261): --batch_size is cut into
    micro-batches of --microbatch_size (num_microbatches, pipeline/schedule/one_f_one_b.py:
    85-95) and --accumulation_steps is not used."""
    s = run.cfg.settings
    where = run.k.file
    if run.script in (TRAIN_ORPO, TRAIN_KTO):
        raise ConfigError(
            f"{where}: {run.script.name} --pp {pp} is refused by HybridParallelPlugin: the script "
            "gives it neither microbatch_size nor num_microbatches (hybrid_parallel_plugin.py:"
            "1131-1133)."
        )
    micro = run.value("--microbatch_size", "--batch-size and --grad-accum")
    batch = s.get("batch_size")
    if micro is None or batch is None:
        return
    if micro < 1:
        raise ConfigError(f"{where}: --microbatch_size must be at least 1, not {micro}.")
    sequences = batch
    if run.script is TRAIN_DPO:
        # chosen and rejected interleaved into 2b sequences (coati/trainer/dpo.py:174-190)
        sequences = 2 * batch
        if micro % 2:
            raise ConfigError(
                f"{where}: train_dpo.py with --pp needs an even --microbatch_size (a chosen "
                f"and a rejected sequence each), not {micro} (train_dpo.py:353-358)."
            )
    if sequences % micro:
        raise ConfigError(
            f"{where}: a batch of {sequences} sequences is not a whole number of "
            f"--microbatch_size {micro} micro-batches (one_f_one_b.py:86)."
        )
    count = sequences // micro
    if count < pp:
        raise ConfigError(
            f"{where}: {count} micro-batches is fewer than the {pp} pipeline stages, which "
            "ColossalAI refuses (one_f_one_b.py:93-95): raise --batch_size."
        )
    s["batch_size"] = micro // 2 if run.script is TRAIN_DPO else micro
    s["grad_accum"] = count
    if run.script is LORA_FINETUNE and (run.value("--accumulation_steps") or 1) > 1:
        raise ConfigError(
            f"{where}: lora_finetune.py refuses --accumulation_steps above 1 with --pp "
            "('Accumulation steps should be 1 when using PP', lora_finetune.py:452-453)."
        )
    run.cfg.notes.append(
        f"--pp {pp}: each batch of {sequences} sequences runs as {count} micro-batches of "
        f"{micro} through the 1F1B pipeline and the optimizer steps after it; "
        "--accumulation_steps is not used under the pipeline."
    )


def _sequence_parallel(run: _Run, tp: int) -> int:
    """--sp under --enable_sequence_parallelism (hybrid_parallel_plugin.py:1059-1087):
    all_to_all splits the sequence over sp ranks (ftmem's --cp); split_gather and ring
    are Megatron's sequence parallelism inside the TP group (sp_size forced to 1): the
    mode goes to ftmem's --sp-mode."""
    where = run.k.file
    sp = run.value("--sp", "--cp") or 1
    if run.script is LORA_FINETUNE and run.value("--plugin") == "moe":
        return sp
    enabled = run.value("--enable_sequence_parallelism")
    mode = run.value("--sp_mode") or "split_gather"
    if not enabled:
        if sp != 1:
            raise ConfigError(
                f"{where}: --sp {sp} without --enable_sequence_parallelism is refused by "
                "HybridParallelPlugin ('You should not set sp_size when sequence parallelism "
                "is not enabled', hybrid_parallel_plugin.py:1084-1086)."
            )
        return 1
    run.cfg.settings["sp_mode"] = mode
    if mode == "all_to_all":
        return sp
    if tp < 2:
        raise ConfigError(
            f"{where}: --sp_mode {mode} needs tensor parallelism (--tp 2 or more): "
            "HybridParallelPlugin refuses it without (hybrid_parallel_plugin.py:1066-1069)."
        )
    if sp != 1:
        run.cfg.notes.append(
            f"--sp {sp} is ignored under --sp_mode {mode}: the sequence is split over the "
            f"{tp} TP ranks (sp_size follows tp, hybrid_parallel_plugin.py:1070-1075)."
        )
    return 1


def _hybrid(run: _Run) -> None:
    """--plugin 3d: HybridParallelPlugin(tp, pp, sp, zero_stage, cpu_offload=zero_stage >= 1
    and --zero_cpu_offload) (train_sft.py:104-118, lora_finetune.py:93-107)."""
    s = run.cfg.settings
    where = run.k.file
    stage = run.chosen("--zero_stage", "--strategy")
    tp, pp = run.value("--tp", "--tp"), run.value("--pp", "--pp")
    tp, pp = 1 if tp is None else tp, 1 if pp is None else pp
    if tp < 1 or pp < 1 or (run.value("--sp") or 1) < 1:
        raise ConfigError(f"{where}: --tp, --pp and --sp must be at least 1.")
    cp = _sequence_parallel(run, tp)
    if run.given("--ep") and run.value("--plugin") == "3d":
        run.cfg.notes.append(
            "--ep: read by --plugin moe only; with --plugin 3d it changes nothing."
        )
    if stage is None:
        return
    if stage == 2 and pp > 1:
        raise ConfigError(
            f"{where}: --zero_stage 2 with --pp {pp} is refused by HybridParallelPlugin "
            "('zero stage must be 0 or 1 when using pipeline parallelism', "
            "hybrid_parallel_plugin.py:1134-1136)."
        )
    s["strategy"] = {0: HYBRID_AMP, 1: "colossalai-zero1", 2: "colossalai-zero2"}[stage]
    s.update(tp=tp, pp=pp, cp=cp)
    world = s.get("gpus", 1) * s.get("nodes", 1) if "gpus" in s and "nodes" in s else None
    if world is not None and world % (tp * pp * cp):
        raise ConfigError(
            f"{where}: {world} GPUs are not a whole number of tp {tp} x pp {pp} x sp {cp} "
            "groups (hybrid_parallel_plugin.py:1052-1054, 1078-1079)."
        )
    if run.value("--zero_cpu_offload"):
        if stage >= 1:
            s["offload_optimizer"] = "cpu"
        else:
            run.cfg.notes.append(
                "--zero_cpu_offload with --zero_stage 0 offloads nothing (cpu_offload needs "
                "zero_stage >= 1, train_sft.py:113)."
            )
    if pp > 1:
        _pipeline(run, pp)


# arguments only --plugin 3d (and moe) reads, with their ftmem flag
_HYBRID_ONLY = (
    "--tp",
    "--pp",
    "--sp",
    "--ep",
    "--zero_stage",
    "--zero_cpu_offload",
    "--sp_mode",
    "--enable_sequence_parallelism",
    "--microbatch_size",
)


def _plugin(run: _Run) -> str | None:
    """--plugin as the booster plugin the script builds, and ftmem's strategy for it."""
    s = run.cfg.settings
    plugin = run.chosen("--plugin", "--strategy")
    if plugin is None:
        return None
    if plugin not in ("3d", "moe"):
        given = [o for o in _HYBRID_ONLY if run.given(o) and o in run.script.args]
        if given:
            run.cfg.notes.append(
                f"{', '.join(given)}: read by --plugin 3d only; with --plugin {plugin} they "
                "change nothing."
            )
    if plugin == "ddp":
        s["strategy"] = "ddp"  # TorchDDPPlugin (torch_ddp_plugin.py: torch DDP, 25 MB buckets)
    elif plugin in ("gemini", "gemini_auto"):
        s["strategy"] = GEMINI
        if plugin == "gemini_auto":
            s["gemini_placement"] = "auto"  # GeminiPlugin(placement_policy="auto")
            if (run.value("--accumulation_steps") or 1) > 1 and run.script is not LORA_FINETUNE:
                raise ConfigError(
                    f"{run.k.file}: {run.script.name} refuses gemini_auto with "
                    "--accumulation_steps above 1 ('Gradient accumulation is not supported in "
                    "GeminiPlugin', train_sft.py:33-34)."
                )
    elif plugin in ("zero2", "zero2_cpu"):
        s["strategy"] = "colossalai-zero2"  # LowLevelZeroPlugin(stage=2)
        if plugin == "zero2_cpu":
            s["offload_optimizer"] = "cpu"  # cpu_offload=True (train_sft.py:96-103)
    elif plugin == "3d":
        _hybrid(run)
    elif plugin == "moe":
        # MoeHybridParallelPlugin(ep_size=ep, tp, pp, zero_stage, ...) (lora_finetune.py:108-122)
        _hybrid(run)
        ep = run.value("--ep", "--ep")
        if ep is not None and ep > 1:
            s["ep"] = ep
    return str(plugin)


def _batch(run: _Run) -> None:
    """Per-process batch, padded length and accumulation. Every collator pads each batch
    to the maximum length (coati/dataset/loader.py:115-118, 222-223, 388-394)."""
    run.setting("--batch_size", "batch_size", "--batch-size")
    length = "--max_len" if run.script is TRAIN_SFT else "--max_length"
    run.setting(length, "seq_len", "--seq-len")
    run.setting("--accumulation_steps", "grad_accum", "--grad-accum")
    for setting in ("batch_size", "seq_len", "grad_accum"):
        value = run.cfg.settings.get(setting)
        if value is not None and value < 1:
            raise ConfigError(f"{run.k.file}: {setting} must be at least 1, not {value}.")


def _grad_checkpoint(run: _Run) -> None:
    option = "--use_grad_checkpoint" if run.script is LORA_FINETUNE else "--grad_checkpoint"
    if run.value(option):
        run.cfg.settings["grad_ckpt"] = True


# coati's LoraConfig fields (coati/models/lora.py:29-37)
COATI_LORA_FIELDS = frozenset(
    {
        "r",
        "lora_alpha",
        "linear_lora_dropout",
        "embedding_lora_dropout",
        "lora_train_bias",
        "lora_initialization_method",
        "target_modules",
    }
)
# module names coati wraps that are not linears of the blocks
_OUTSIDE_BLOCKS = ("embed", "lm_head", "wte", "wpe", "embed_out")


def _coati_lora(run: _Run, plugin: str | None) -> None:
    """--lora_config FILE: coati's own LoRA (convert_to_lora_module, not peft)."""
    name = run.value("--lora_config", "--method lora --lora-r R --lora-targets ...")
    if name is None:
        return
    path = Path(name) if Path(name).is_absolute() else run.base / name
    if not path.is_file():
        run.cfg.notes.append(
            f"--lora_config {name} is not beside the command file, so its LoRA settings are "
            "not read and the estimate is of full finetuning: give --method lora --lora-r R "
            "--lora-targets ... (coati's LoRA: alpha 32, no dropout on the linears)."
        )
        return
    data = parse_json(read_text(path, "coati LoRA config", MAX_CONFIG_BYTES), str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of coati LoraConfig fields.")
    unknown = sorted(set(data) - COATI_LORA_FIELDS)
    if unknown:
        raise ConfigError(
            f"{path}: {', '.join(unknown)} is not a field of coati's LoraConfig "
            "(LoraConfig.from_file passes every key to it, coati/models/lora.py:29-45)."
        )
    k = Keys(data, str(path))
    r = k.integer("r", minimum=0) or 0
    if r == 0:
        run.cfg.notes.append(
            f"{path.name}: r 0 leaves the model as it is (convert_to_lora_module, "
            "coati/models/lora.py:349-350): full finetuning."
        )
        return
    if plugin in ("gemini", "gemini_auto"):
        raise ConfigError(
            f"{run.k.file}: {run.script.name} refuses LoRA with --plugin {plugin} ('LoRA is not "
            "supported in GeminiPlugin', train_sft.py:31-32)."
        )
    s = run.cfg.settings
    # _lora_linear_wrapper passes only r to LoraLinear (lora.py:281-283): every linear
    # adapter has LoraLinear's own lora_alpha 32 and lora_dropout 0.0 (:131-133)
    s.update(method="lora", lora_r=r, lora_alpha=32, lora_dropout=0.0)
    notes = [
        "coati's LoRA passes only r to each linear's adapter (coati/models/lora.py:281-283): "
        "lora_alpha 32 and no dropout there whatever the file says; estimated with peft's "
        "LoRA forward"
    ]
    s["lora_targets"] = _coati_targets(k, path, notes)
    bias = k.choice("lora_train_bias", ("none", "all", "lora")) or "none"
    if bias != "none":
        notes.append(
            f"lora_train_bias {bias}: every wrapped linear trains a bias, a new one of "
            "out_features zeros where it had none (lora.py:276-283, 141-144); not counted"
        )
    init = k.choice("lora_initialization_method", ("kaiming_uniform", "pissa"))
    if init == "pissa":
        notes.append("PiSSA initialisation (an SVD of each wrapped weight) runs before training")
    if plugin == "ddp":
        s["adapter_dtype"] = "fp32"
        notes.append(
            "under --plugin ddp the adapters stay fp32 as created (lora.py:153-154) and every "
            f"module named *norm* or *gate* (gate_proj too) is cast to fp32 ({run.script.name} "
            "after convert_to_lora_module); the fp32 gate_proj weights are not counted"
        )
    run.cfg.notes.append(f"--lora_config {path.name}: " + "; ".join(notes) + ".")


def _coati_targets(k: Keys, path: Path, notes: list[str]) -> str:
    """coati's target_modules as ftmem's --lora-targets (the blocks' linears)."""
    targets = k.names("target_modules")
    if targets is None:
        notes.append(
            "no target_modules: coati wraps every nn.Linear, the LM head included, and every "
            "nn.Embedding (lora.py:301-317); the LM head's and embeddings' adapters are not "
            "counted"
        )
        return "all-linear"
    outside = [t for t in targets if any(word in t.lower() for word in _OUTSIDE_BLOCKS)]
    inside = [t for t in targets if t not in outside]
    if not inside:
        raise ConfigError(
            f"{path}: target_modules {targets} names no linear of the blocks; ftmem models "
            "LoRA on the blocks' linears only."
        )
    if outside:
        notes.append(
            f"LoRA on {', '.join(outside)} (coati's LoraEmbedding / LoraLinear outside the "
            "blocks) is not counted"
        )
    return ",".join(inside)


def _peft_lora(run: _Run) -> None:
    """lora_finetune.py --lora_rank: peft's LoraConfig(task_type, r, lora_alpha)
    through booster.enable_lora (lora_finetune.py:201-211)."""
    rank = run.chosen("--lora_rank", "--method lora --lora-r R")
    if rank is None or rank <= 0:  # `if args.lora_rank > 0` (:201): full finetuning
        return
    s = run.cfg.settings
    s.update(method="lora", lora_r=rank)
    run.setting("--lora_alpha", "lora_alpha", "--lora-alpha")
    assume(run.cfg, "lora_dropout", 0.0, "peft LoraConfig's lora_dropout default")
    run.cfg.notes.append(
        "lora_finetune.py gives peft no target_modules: peft's default targets for the model "
        "type (q and v for Llama, Mistral and Qwen: ftmem's default); for DeepseekV3 models "
        "the script names gate, up and down (lora_finetune.py:202-208): give "
        "--lora-targets gate,up,down."
    )


def _objective(run: _Run) -> None:
    """The objective of the preference scripts, and their reference model."""
    s = run.cfg.settings
    script = run.script
    lora = s.get("method") == "lora"
    if script is TRAIN_ORPO:
        s["objective"] = "orpo"
        if run.given("--disable_reference_model"):
            run.cfg.notes.append("--disable_reference_model: ORPO has no reference model anyway.")
        return
    if script is TRAIN_KTO:
        s["objective"] = "kto"
        run.cfg.notes.append(
            "train_kto.py: coati's KTOTrainer, estimated with TRL's KTOTrainer step (ftmem's "
            "kto); the reference is a second model boosted with the same plugin "
            "(train_kto.py:100, 122-129)"
            + (
                ", a full frozen copy, not the adapter disabled as ftmem counts it."
                if lora
                else "."
            )
        )
        return
    if script is not TRAIN_DPO:
        return
    loss = run.value("--loss_type") or "dpo_loss"
    if loss not in ("dpo_loss", "simpo_loss"):
        run.cfg.notes.append(f"--loss_type {loss}: train_dpo.py runs the DPO loss for it.")
    if run.value("--disable_reference_model"):
        s["objective"] = "simpo"
        run.cfg.notes.append(
            "--disable_reference_model: the chosen and rejected pair forward without a "
            "reference (train_dpo.py:116-126), ftmem's simpo objective whatever the loss."
        )
        return
    s["objective"] = "dpo"
    if loss == "simpo_loss":
        run.cfg.notes.append(
            "--loss_type simpo_loss keeps the reference model loaded and run "
            "(train_dpo.py:116-126): estimated as dpo."
        )
    ref_tp = run.value("--ref_tp") or 1
    run.cfg.notes.append(
        "train_dpo.py's reference is a second model boosted with HybridParallelPlugin("
        f"tp_size=ref_tp {ref_tp}, pp_size=1) (train_dpo.py:92-102, 220): frozen 16-bit weights"
        + (f" split over {ref_tp} ranks" if ref_tp > 1 else "")
        + (
            "; ftmem counts it as the adapter disabled, not as this full copy."
            if lora
            else "; ftmem counts a whole frozen copy."
        )
    )


def read(k: Keys, cfg: FrameworkConfig, base: Path) -> frozenset[str]:
    if "script" not in k or str(k.raw("script")) not in SCRIPTS:
        raise ConfigError(f"{k.file}: not a ColossalChat training command line.")
    run = _Run(k, cfg, base)
    if k.raw("commands"):
        cfg.notes.append(
            f"{k.file} launches {k.raw('commands')} training scripts: the first one is read."
        )
    _world(k, cfg, base)
    _model(run)
    _batch(run)
    plugin = _plugin(run)
    _precision(run, plugin)
    _attention(run)
    _grad_checkpoint(run)
    if run.script is LORA_FINETUNE:
        _peft_lora(run)
    else:
        _coati_lora(run, plugin)
    _objective(run)
    # HybridAdam on GPU tensors: states zeros_like(p), one multi-tensor kernel for all
    # (colossalai/nn/optimizer/hybrid_adam.py:113-115, 161-189)
    cfg.settings.update(optimizer="adamw", optimizer_impl="fused")
    cfg.notes.append(
        "ColossalChat steps with HybridAdam (adamw_mode; one fused kernel over the GPU "
        "tensors) and runs its own training loop over a transformers model: estimated with "
        "HF's model code and loss."
    )
    return READ_KEYS | {"commands"}
