"""Loading and validating the presets: the shipped ones (``presets/models``,
``presets/gpus``) and the user's, from the folders in ``FTMEM_PRESETS`` (os.pathsep
separated) or ``~/.config/ftmem/presets``, each with ``models/`` and ``gpus/`` inside.
A user preset with the id of a shipped one replaces it; both are validated alike.

A model preset is a YAML mapping with ``id``, optional ``aliases`` and the fields of
:class:`~ftmem.arch.Architecture`; a GPU preset holds the fields of
:class:`~ftmem.hardware.Gpu`. Files are read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ftmem.arch import Architecture
from ftmem.errors import ConfigError, UnknownNameError
from ftmem.hardware import Gpu
from ftmem.textfiles import parse_yaml, read_text

MAX_PRESET_BYTES = 1 << 20  # a preset is a dozen lines


def presets_dir() -> Path:
    """The presets folder: inside the installed wheel, or the repository's own."""
    packaged = Path(str(resources.files("ftmem"))) / "presets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "presets"


USER_PRESETS_ENV = "FTMEM_PRESETS"


def _user_files_key() -> tuple[tuple[str, float], ...]:
    """The user's preset files with their modification times: the caches' key, so an
    edited or added file is read again."""
    return tuple(
        (str(f), f.stat().st_mtime)
        for folder in user_preset_dirs()
        for f in sorted(folder.glob("*/*.y*ml"))
    )


def user_preset_dirs() -> tuple[Path, ...]:
    """The user's preset folders that exist."""
    env = os.environ.get(USER_PRESETS_ENV)
    if env:
        dirs = [Path(d).expanduser() for d in env.split(os.pathsep) if d.strip()]
        missing = [d for d in dirs if not d.is_dir()]
        if missing:
            raise ConfigError(f"{USER_PRESETS_ENV} names {missing[0]}, which is not a folder.")
        return tuple(dirs)
    default = Path("~/.config/ftmem/presets").expanduser()
    return (default,) if default.is_dir() else ()


def _preset_files(kind: str) -> list[Path]:
    """Shipped preset files first, then the user's (later ones win on a shared id)."""
    files = sorted((presets_dir() / kind).glob("*.yaml"))
    for folder in user_preset_dirs():
        files += sorted((folder / kind).glob("*.y*ml"))
    return files


def _where(path: Path) -> str:
    """A shipped preset by its file name, a user's by its full path."""
    return path.name if path.parent.parent == presets_dir() else str(path)


def _read_yaml(path: Path) -> dict[str, Any]:
    data = parse_yaml(read_text(path, "preset", MAX_PRESET_BYTES), _where(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(path)} must hold a YAML mapping.")
    return data


def validation_message(exc: ValidationError, where: str) -> str:
    """A pydantic error as one sentence naming each bad field."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    if not any(err["loc"] for err in exc.errors()):  # a check of the whole: its own sentence
        return f"{where}: {'; '.join(parts)}."
    return f"{where} is invalid ({'; '.join(parts)})."


def model_from_mapping(
    data: dict[str, Any], where: str
) -> tuple[str, tuple[str, ...], Architecture]:
    data = dict(data)
    preset_id = str(data.pop("id", "")).strip()
    aliases = tuple(str(a) for a in data.pop("aliases", ()) or ())
    if not preset_id:
        raise ConfigError(f"{where} has no 'id'.")
    try:
        arch = Architecture(**data)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, where)) from None
    return preset_id, aliases, arch


def model_presets() -> dict[str, Architecture]:
    """All model presets by id."""
    return _model_presets(_user_files_key())


@lru_cache(maxsize=8)
def _model_presets(_key: tuple[tuple[str, float], ...]) -> dict[str, Architecture]:
    out: dict[str, Architecture] = {}
    for path in _preset_files("models"):
        preset_id, _, arch = model_from_mapping(_read_yaml(path), _where(path))
        out[preset_id] = arch
    return out


def _model_aliases() -> dict[str, str]:
    return _aliases(_user_files_key())


@lru_cache(maxsize=8)
def _aliases(_key: tuple[tuple[str, float], ...]) -> dict[str, str]:
    table: dict[str, str] = {}
    for path in _preset_files("models"):
        data = _read_yaml(path)
        for alias in [data["id"], *(data.get("aliases") or ())]:
            table[str(alias).lower()] = str(data["id"])
    return table


def gpu_presets() -> dict[str, Gpu]:
    return _gpu_presets(_user_files_key())


@lru_cache(maxsize=8)
def _gpu_presets(_key: tuple[tuple[str, float], ...]) -> dict[str, Gpu]:
    out: dict[str, Gpu] = {}
    for path in _preset_files("gpus"):
        try:
            gpu = Gpu(**_read_yaml(path))
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, _where(path))) from None
        out[gpu.id] = gpu
    return out


def get_model(name: str) -> Architecture:
    """A model preset by id or alias (case-insensitive)."""
    key = _model_aliases().get(name.strip().lower())
    if key is None:
        raise UnknownNameError("model", name, _model_aliases().keys())
    return model_presets()[key]


def get_gpu(name: str) -> Gpu:
    """A GPU preset by id or alias (case-insensitive)."""
    wanted = name.strip().lower()
    for gpu in gpu_presets().values():
        if wanted == gpu.id or wanted in (a.lower() for a in gpu.aliases):
            return gpu
    known = [g.id for g in gpu_presets().values()]
    raise UnknownNameError("gpu", name, known)
