"""Loading and validating the presets: the shipped ones (``presets/models``,
``presets/gpus``) and the user's, from the folders in ``FTMEM_PRESETS`` (os.pathsep
separated) or ``~/.config/ftmem/presets``, each with ``models/`` and ``gpus/`` inside.
A user preset with the id of a shipped one replaces it; both are validated alike.

A model preset is a YAML mapping with ``id``, optional ``aliases`` and the fields of
:class:`~ftmem.arch.Architecture`; a GPU preset holds the fields of
:class:`~ftmem.hardware.Gpu`. Files are read through :mod:`ftmem.textfiles` only.

Speed: a lookup parses each file at most once per process (a cache keyed by the file's
modification time, so an edited file is read again), and the name of a shipped preset
is its file name, so ``get_model("llama2-13b")`` reads one shipped file, not all of
them. Every user file is still read, since any of them may take the name. The CLI
takes the values of a preset text it has parsed before from its store
(:mod:`ftmem.preset_values`), without importing PyYAML.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from ftmem import limits
from ftmem.arch import Architecture
from ftmem.errors import ConfigError, UnknownNameError, listed
from ftmem.hardware import Gpu
from ftmem.preset_values import parsed_preset
from ftmem.textfiles import home_expanded, read_text
from ftmem.validation import InvalidFields

MAX_PRESET_BYTES = 1 << 20  # a preset is a dozen lines
USER_PRESETS_ENV = "FTMEM_PRESETS"
# what a shipped preset's file name can be (tests/test_presets.py: file name = id)
_FILE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")  # well under any file-name limit

ModelEntry = tuple[str, tuple[str, ...], Architecture]


@lru_cache(maxsize=1)
def presets_dir() -> Path:
    """The presets folder: inside the installed wheel, or the repository's own."""
    packaged = Path(__file__).resolve().parent / "presets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "presets"


def user_preset_dirs() -> tuple[Path, ...]:
    """The user's preset folders that exist."""
    env = os.environ.get(USER_PRESETS_ENV)
    if env:
        named = [d for d in env.split(os.pathsep) if d.strip()]
        dirs = [home_expanded(d) for d in named]
        missing = [n for n, d in zip(named, dirs, strict=True) if d is None or not d.is_dir()]
        if missing:
            raise ConfigError(f"{USER_PRESETS_ENV} names {missing[0]}, which is not a folder.")
        return tuple(d for d in dirs if d is not None)
    default = home_expanded("~/.config/ftmem/presets")  # None: no home, no user presets
    return (default,) if default is not None and default.is_dir() else ()


def _shipped_files(kind: str) -> list[Path]:
    return sorted((presets_dir() / kind).glob("*.yaml"))


def _user_files(kind: str) -> list[Path]:
    """The user's preset files in the order they apply (later ones win on a shared id)."""
    return [f for folder in user_preset_dirs() for f in sorted((folder / kind).glob("*.y*ml"))]


def _where(path: Path) -> str:
    """A shipped preset by its file name, a user's by its full path."""
    return path.name if path.parent.parent == presets_dir() else str(path)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file does: the per-file caches' key. None when it cannot
    be read: reading it then gives the reason."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def _read_yaml(path: Path) -> dict[str, Any]:
    return _parsed(path, _stamp(path))


@lru_cache(maxsize=1024)
def _parsed(path: Path, _stamp: tuple[int, int, int] | None) -> dict[str, Any]:
    """One preset file's mapping, parsed once per version of the file (errors, not
    cached, are raised again on each call). Callers must not change it."""
    data = parsed_preset(read_text(path, "preset", MAX_PRESET_BYTES), _where(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(path)} must hold a YAML mapping.")
    return data


def validation_message(exc: InvalidFields, where: str) -> str:
    """A validation error as one sentence naming each bad field."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    if not any(err["loc"] for err in exc.errors()):  # a check of the whole: its own sentence
        return f"{where}: {listed(parts)}."
    return f"{where} is invalid ({listed(parts)})."


def _name(value: Any) -> str | None:
    """A preset name from YAML: text or a plain number (``id: 7``), nothing else."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value).strip() or None
    return None


def _check_names(where: str, preset_id: str, aliases: tuple[str, ...]) -> None:
    """Names within :data:`~ftmem.limits.PRESET_NAME` (a 5,000-character id printed
    645 kB in `ftmem models`, whose id column is never cut)."""
    for what, name in (("id", preset_id), *(("an alias", a) for a in aliases)):
        problem = limits.PRESET_NAME.problem(f"its {what}", len(name))
        if problem:
            raise ConfigError(f"{where}: {problem}.")


def model_from_mapping(data: dict[str, Any], where: str) -> ModelEntry:
    data = dict(data)
    raw_id = data.pop("id", None)
    preset_id = _name(raw_id)
    if preset_id is None:
        got = "" if raw_id is None else f" ({type(raw_id).__name__} given)"
        raise ConfigError(f"{where} has no 'id'{got}: give the model the name to call it by.")
    raw_aliases = data.pop("aliases", None) or []
    aliases = tuple(map(_name, raw_aliases)) if isinstance(raw_aliases, list) else (None,)
    if None in aliases:
        raise ConfigError(f"{where}: 'aliases' must be a list of names, as in [name-1, name-2].")
    _check_names(where, preset_id, aliases)  # type: ignore[arg-type]  # None refused above
    try:
        arch = Architecture.model_validate(data)
    except InvalidFields as exc:
        raise ConfigError(validation_message(exc, where)) from None
    return preset_id, aliases, arch  # type: ignore[return-value]  # None refused above


def _model_file(path: Path) -> ModelEntry:
    return _model_entry(path, _stamp(path))


@lru_cache(maxsize=1024)
def _model_entry(path: Path, _stamp: tuple[int, int, int] | None) -> ModelEntry:
    return model_from_mapping(_read_yaml(path), _where(path))


def _names(entry: ModelEntry) -> list[str]:
    return [entry[0].lower(), *(a.lower() for a in entry[1])]


def _user_models() -> tuple[dict[str, str], dict[str, Architecture]]:
    """The user's model presets (every file validated): names to ids, ids to models."""
    names: dict[str, str] = {}
    models: dict[str, Architecture] = {}
    for entry in map(_model_file, _user_files("models")):
        names.update(dict.fromkeys(_names(entry), entry[0]))
        models[entry[0]] = entry[2]
    return names, models


def _shipped_model(wanted: str) -> tuple[str, Architecture] | None:
    """The shipped preset named ``wanted`` (id or alias, lower case): the file of that
    name when its id matches, else the one whose aliases hold it."""
    if _FILE_NAME.fullmatch(wanted):
        path = presets_dir() / "models" / f"{wanted}.yaml"
        if path.is_file():
            preset_id, _, arch = _model_file(path)
            if preset_id.lower() == wanted:
                return preset_id, arch
    found = None
    for entry in map(_model_file, _shipped_files("models")):
        if wanted in _names(entry):
            found = entry[0], entry[2]
    return found


def model_presets() -> dict[str, Architecture]:
    """All model presets by id."""
    out = {entry[0]: entry[2] for entry in map(_model_file, _shipped_files("models"))}
    return {**out, **_user_models()[1]}


def preset_aliases() -> dict[str, tuple[str, ...]]:
    """Every model preset's aliases by id (the user's presets over the shipped ones)."""
    files = [*_shipped_files("models"), *_user_files("models")]
    return {entry[0]: entry[1] for entry in map(_model_file, files)}


def get_model(name: str) -> Architecture:
    """A model preset by id or alias (case-insensitive)."""
    wanted = name.strip().lower()
    user_names, user_models = _user_models()
    if wanted in user_names:  # a user's name wins over a shipped one
        return user_models[user_names[wanted]]
    shipped = _shipped_model(wanted)
    if shipped is None:
        known = {n for f in _shipped_files("models") for n in _names(_model_file(f))}
        raise UnknownNameError("model", name, known | set(user_names))
    preset_id, arch = shipped
    return user_models.get(preset_id, arch)  # a user's preset of the same id replaces it


def _gpu_file(path: Path) -> Gpu:
    return _gpu_entry(path, _stamp(path))


@lru_cache(maxsize=1024)
def _gpu_entry(path: Path, _stamp: tuple[int, int, int] | None) -> Gpu:
    try:
        gpu = Gpu.model_validate(_read_yaml(path))
    except InvalidFields as exc:
        raise ConfigError(validation_message(exc, _where(path))) from None
    _check_names(_where(path), gpu.id, gpu.aliases)
    return gpu


def gpu_presets() -> dict[str, Gpu]:
    out: dict[str, Gpu] = {}
    for gpu in map(_gpu_file, _shipped_files("gpus") + _user_files("gpus")):
        out[gpu.id] = gpu
    return out


def get_gpu(name: str) -> Gpu:
    """A GPU preset by id or alias (case-insensitive)."""
    wanted = name.strip().lower()
    user = _user_files("gpus")
    if not user and _FILE_NAME.fullmatch(wanted):  # the shipped file of that name
        path = presets_dir() / "gpus" / f"{wanted}.yaml"
        if path.is_file() and (gpu := _gpu_file(path)).id == wanted:
            return gpu
    presets = gpu_presets()
    for gpu in presets.values():
        if wanted == gpu.id or wanted in (a.lower() for a in gpu.aliases):
            return gpu
    raise UnknownNameError("gpu", name, [g.id for g in presets.values()])
