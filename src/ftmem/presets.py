"""Loading and validating the shipped presets (``presets/models``, ``presets/gpus``).

A model preset is a YAML mapping with ``id``, optional ``aliases`` and the fields of
:class:`~ftmem.arch.Architecture`; a GPU preset holds the fields of
:class:`~ftmem.hardware.Gpu`. Files are read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ftmem.arch import Architecture
from ftmem.errors import ConfigError, UnknownNameError
from ftmem.hardware import Gpu


def presets_dir() -> Path:
    """The presets folder: inside the installed wheel, or the repository's own."""
    packaged = Path(str(resources.files("ftmem"))) / "presets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "presets"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name} must hold a YAML mapping.")
    return data


def validation_message(exc: ValidationError, where: str) -> str:
    """A pydantic error as one sentence naming each bad field."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "value"
        parts.append(f"{loc}: {err['msg']}")
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


@lru_cache(maxsize=1)
def model_presets() -> dict[str, Architecture]:
    """All model presets by id."""
    out: dict[str, Architecture] = {}
    for path in sorted((presets_dir() / "models").glob("*.yaml")):
        preset_id, _, arch = model_from_mapping(_read_yaml(path), path.name)
        out[preset_id] = arch
    return out


@lru_cache(maxsize=1)
def _model_aliases() -> dict[str, str]:
    table: dict[str, str] = {}
    for path in sorted((presets_dir() / "models").glob("*.yaml")):
        data = _read_yaml(path)
        for alias in [data["id"], *(data.get("aliases") or ())]:
            table[str(alias).lower()] = str(data["id"])
    return table


@lru_cache(maxsize=1)
def gpu_presets() -> dict[str, Gpu]:
    out: dict[str, Gpu] = {}
    for path in sorted((presets_dir() / "gpus").glob("*.yaml")):
        try:
            gpu = Gpu(**_read_yaml(path))
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, path.name)) from None
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
