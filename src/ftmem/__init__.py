"""ftmem: how much GPU memory an LLM finetuning step takes, before you rent the GPU."""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftmem.api import estimate, largest, plan
    from ftmem.arch import Architecture, count_params
    from ftmem.budget import check_budgets
    from ftmem.errors import ConfigError, FtmemError, InvalidInputError, UnknownNameError
    from ftmem.frameworks import read_framework_config
    from ftmem.result import Estimate
    from ftmem.run import RunConfig

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

# Each name is imported on first use, not with the package: the CLI (ftmem.cli) pauses
# the garbage collector before the modules load (ftmem.paused_gc), and `ftmem estimate`
# needs neither budgets nor training configs.
_LAZY = {
    "estimate": "ftmem.api",
    "largest": "ftmem.api",
    "plan": "ftmem.api",
    "Architecture": "ftmem.arch",
    "count_params": "ftmem.arch",
    "check_budgets": "ftmem.budget",
    "ConfigError": "ftmem.errors",
    "FtmemError": "ftmem.errors",
    "InvalidInputError": "ftmem.errors",
    "UnknownNameError": "ftmem.errors",
    "read_framework_config": "ftmem.frameworks",
    "Estimate": "ftmem.result",
    "RunConfig": "ftmem.run",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ftmem' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(ModuleType):
    """The package, whose ``estimate`` and ``plan`` stay the API's functions: the import
    system binds each submodule it loads on its package (``ftmem.estimate``, the step's
    arithmetic, and ``ftmem.plan``, the plan's levers, share the functions' names)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("estimate", "plan") and isinstance(value, ModuleType):
            return  # the module stays reachable as sys.modules["ftmem.estimate"]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
