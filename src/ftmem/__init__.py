"""ftmem: how much GPU memory an LLM finetuning step takes, before you rent the GPU."""

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
