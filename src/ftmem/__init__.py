"""ftmem: how much GPU memory an LLM finetuning step takes, before you rent the GPU."""

from ftmem.api import estimate
from ftmem.arch import Architecture, count_params
from ftmem.errors import ConfigError, FtmemError, InvalidInputError, UnknownNameError
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
    "count_params",
    "estimate",
]
