"""ftmem: how much GPU memory an LLM finetuning step takes, before you rent the GPU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Imported here, not on first use: ftmem.estimate and ftmem.plan are also modules, and
# the import system rebinds a package attribute to its submodule when that loads, so
# the functions must be bound after api has loaded both modules.
from ftmem.api import estimate, largest, plan
from ftmem.arch import Architecture, count_params
from ftmem.errors import ConfigError, FtmemError, InvalidInputError, UnknownNameError
from ftmem.result import Estimate
from ftmem.run import RunConfig

if TYPE_CHECKING:
    from ftmem.budget import check_budgets
    from ftmem.frameworks import read_framework_config

__version__ = "0.1.0"
__all__ = [
    "Architecture",
    "ConfigError",
    "Estimate",
    "FtmemError",
    "InvalidInputError",
    "RunConfig",
    "UnknownNameError",
    "__version__",
    "check_budgets",
    "count_params",
    "estimate",
    "largest",
    "plan",
    "read_framework_config",
]

# Imported on first use: `ftmem estimate` needs neither budgets nor training configs.
_LAZY = {"check_budgets": "ftmem.budget", "read_framework_config": "ftmem.frameworks"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ftmem' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
