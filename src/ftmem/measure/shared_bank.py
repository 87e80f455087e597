"""peft's shared-bank adapters built on a measured model: PVeRA (VeRA's shared projections
with a sampled code), in the dtype asked for. Imports peft; import it lazily."""

from __future__ import annotations

from typing import Any

from torch import nn

from ftmem.arch import Architecture
from ftmem.measure.build import _DTYPES, _peft_in_dtype
from ftmem.methods import vera_linears
from ftmem.run import RunConfig


def peft_shared_bank(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's PVeRA on the linears the estimate names."""
    return _pvera(model, arch, run)


def _pvera(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """PVeRA's vectors and its one shared pair of projections (a BufferDict every layer
    holds) in the dtype asked for; peft samples the code whenever the module trains."""
    from peft import PveraConfig

    r, _ = run.vera
    targets = [lin.module for lin in vera_linears(arch, run)]
    model = _peft_in_dtype(model, PveraConfig(r=r, target_modules=targets), run, "pvera_lambda_")
    if run.adapter_dtype != "auto":
        base: Any = model.base_model
        for projections in (base.pvera_A, base.pvera_B):
            projections["default"] = projections["default"].to(_DTYPES[run.adapter_dtype])
    return model
