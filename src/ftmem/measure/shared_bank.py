"""peft's shared-bank adapters built on a measured model: PVeRA (VeRA's shared projections
with a sampled code), RandLoRA (shared random bases), VB-LoRA (a shared trained vector
bank), TinyLoRA, UniLoRA and Lily (one trained vector or shared factors), in the dtype
asked for. Imports peft; import it lazily."""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

from torch import nn

from ftmem.arch import Architecture
from ftmem.measure.build import _DTYPES, _peft_in_dtype
from ftmem.methods import banked_linears, vera_linears
from ftmem.run import RunConfig


def peft_shared_bank(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """peft's PVeRA, RandLoRA, VB-LoRA, TinyLoRA, UniLoRA or Lily on the linears the
    estimate names."""
    if run.method == "pvera":
        return _pvera(model, arch, run)
    if run.method == "tinylora":
        return _tinylora(model, arch, run)
    if run.method == "adamss":
        return _adamss(model, arch, run)
    if run.method in ("lily", "unilora"):
        return _lily_unilora(model, arch, run)
    from peft import PeftConfig, RandLoraConfig, VBLoRAConfig

    targets = [lin.module for lin in banked_linears(arch, run)]
    cfg: PeftConfig
    if run.method == "randlora":
        # (16-bit scalings are refused: RunConfig; the bases stay fp32, peft's cast)
        cfg = RandLoraConfig(r=run.randlora[0], target_modules=targets)
        return _peft_in_dtype(model, cfg, run, "randlora_")
    r, vectors, length, k, _ = run.vblora
    cfg = VBLoRAConfig(
        r=r, num_vectors=vectors, vector_length=length, topk=k, target_modules=targets
    )
    return _peft_in_dtype(model, cfg, run, "vblora_")


def _lily_unilora(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """Lily or UniLoRA with peft's autocast (--adapter-dtype is refused for both)."""
    from peft import LilyConfig, PeftConfig, UniLoraConfig

    targets = [lin.module for lin in banked_linears(arch, run)]
    cfg: PeftConfig
    if run.method == "lily":
        r, stride, num_b, _ = run.lily
        cfg = LilyConfig(r=r, stride_A=stride, num_B=num_b, target_modules=targets)
        return _peft_in_dtype(model, cfg, run, "lily_")
    r, length, _ = run.unilora
    cfg = UniLoraConfig(r=r, theta_d_length=length, target_modules=targets)
    return _peft_in_dtype(model, cfg, run, "unilora_theta_d")


def _tinylora(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """TinyLoRA with its vectors drawn uniformly (peft's zeros would train nothing but
    change no memory); the adapter dtype follows peft's autocast (--adapter-dtype is
    refused: its buffers and vectors must share one dtype)."""
    from peft import TinyLoraConfig

    r, u, tying, _ = run.tinylora
    targets = [lin.module for lin in banked_linears(arch, run)]
    cfg = TinyLoraConfig(
        r=r, u=u, weight_tying=tying, target_modules=targets, init_weights="uniform"
    )
    return _peft_in_dtype(model, cfg, run, "tinylora_v")


def _adamss(model: nn.Module, arch: Architecture, run: RunConfig) -> nn.Module:
    """AdaMSS with peft's autocast (fp32 factors and projection on a 16-bit base; no
    --adapter-dtype). Its B_i start at zero (init_weights "orthogonal"), which changes no
    memory. Needs scikit-learn (peft's KMeans: tuners/adamss/utils.py clustering_Z)."""
    if find_spec("sklearn") is None:
        raise RuntimeError("AdaMSS measurement needs scikit-learn (pip install scikit-learn).")
    from peft import AdamssConfig

    r, k, rank, _ = run.adamss
    targets = [lin.module for lin in banked_linears(arch, run)]
    cfg = AdamssConfig(r=r, num_subspaces=k, subspace_rank=rank, target_modules=targets)
    if run.adamss_asa:
        # ASA from the first step (init_warmup 1) and no pruning in the steps measured
        # (mask_interval above them): its importance state at its largest
        cfg = AdamssConfig(
            r=r,
            num_subspaces=k,
            subspace_rank=rank,
            target_modules=targets,
            use_asa=True,
            init_warmup=1,
            final_warmup=1000,
            mask_interval=100,
        )
    return _peft_in_dtype(model, cfg, run, "adamss_")


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
