"""torchtune: :func:`check` estimates a recipe's run from its config (the ``cfg`` the
recipe receives, command-line overrides applied) before the recipe sets anything up,
through the reader of ``ftmem estimate --from`` and the same core, and stops the run
when asked and it will not fit.

    # in a recipe's recipe_main(cfg), before recipe.setup(cfg=cfg)
    from ftmem.integrations.torchtune import check
    check(cfg, recipe="lora_finetune_single_device", fail_if_not_fits=True)

torchtune builds its models with its own code, not transformers: there is no live model
to read, so this is an estimate only (no measured step). docs/integrations.md.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftmem.errors import InvalidInputError
from ftmem.integrations.live import LiveRun, take_given
from ftmem.integrations.preflight import Preflight
from ftmem.integrations.report import RunWillNotFitError

__all__ = ["RunWillNotFitError", "check", "read_torchtune_run"]


def check(
    cfg: Any,
    *,
    recipe: str | None = None,
    gpu: str | None = None,
    gpu_memory: str | int | None = None,
    overhead: str | int | None = None,
    fail_if_not_fits: bool = False,
    quiet: bool = False,
    **settings: Any,
) -> Preflight:
    """Estimate a torchtune run from its config: an OmegaConf ``DictConfig`` (the
    recipe's ``cfg``), a mapping, or a config file's path. ``recipe`` names the recipe
    (``lora_finetune_single_device``; a config file's header comment names it too).
    The budget is ``gpu`` / ``gpu_memory``, else the CUDA device's memory; ``settings``
    are ftmem.estimate's and win. Raises :class:`RunWillNotFitError` with
    ``fail_if_not_fits`` when it will not fit. The returned object has ``.estimate``,
    ``.live`` and ``.record()``."""
    if gpu is None and gpu_memory is None:
        gpu_memory = _cuda_memory()
    preflight = Preflight(
        gpu=gpu,
        gpu_memory=gpu_memory,
        overhead=overhead,
        fail_if_not_fits=fail_if_not_fits,
        quiet=quiet,
        **settings,
    )
    preflight.source = "torchtune"
    preflight.begin(lambda: read_torchtune_run(cfg, recipe, preflight.given))
    return preflight


def read_torchtune_run(cfg: Any, recipe: str | None, given: dict[str, Any] | None) -> LiveRun:
    """The run as ``ftmem estimate --from`` reads the config (the model its builder
    names, method, precision, batch, length, checkpointing, optimizer, loss...)."""
    from ftmem.frameworks import read_framework_config
    from ftmem.sources import resolve_model

    if isinstance(cfg, str | Path):
        fw = read_framework_config(str(cfg), "torchtune")
    else:
        fw = _read_mapping(_container(cfg), recipe)
    if fw.model is None:
        raise InvalidInputError("The torchtune config's model builder names no model ftmem knows.")
    live = LiveRun(resolve_model(fw.model))
    for key, value in fw.settings.items():
        live.set(key, value, "the torchtune config")
    live.notes += fw.notes
    take_given(live, given, "check()'s own settings")
    return live


def _container(cfg: Any) -> dict[str, Any]:
    """A plain dict of the config, OmegaConf's interpolations resolved."""
    if type(cfg).__module__.startswith("omegaconf"):
        # torchtune's own dependency, not ftmem's (imported by name: no stubs needed)
        omegaconf = importlib.import_module("omegaconf")
        data = omegaconf.OmegaConf.to_container(cfg, resolve=True)
    else:
        data = cfg
    if not isinstance(data, Mapping):
        raise InvalidInputError(
            f"check() takes the recipe's cfg (a DictConfig), a mapping or a config file's "
            f"path, not {type(cfg).__name__}."
        )
    return dict(data)


def _read_mapping(data: dict[str, Any], recipe: str | None) -> Any:
    """The reader of ``ftmem estimate --from`` over a config held in memory: written to
    a file whose header names the recipe, as torchtune's shipped configs do."""
    import yaml

    from ftmem.frameworks import read_framework_config

    header = f"# tune run {recipe} --config in-memory\n" if recipe else ""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "torchtune_config.yaml"
        path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        fw = read_framework_config(str(path), "torchtune")
    fw.notes = [n.replace(str(path), "the recipe's config") for n in fw.notes]
    return fw


def _cuda_memory() -> int | None:
    import torch  # noqa: TID251 - a torchtune recipe has torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
