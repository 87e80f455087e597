"""The router's load-balancing loss (RunConfig.router_aux_loss) as a framework config
states it: axolotl's ``model_config: {output_router_logits}``, TRL's
``router_aux_loss_coef`` and ``model_init_kwargs.output_router_logits``, LLaMA-Factory's
``moe_aux_loss_coef``.

Turning it off is always taken (every model trains without it). Turning it on is taken
only where the file's base model is one whose transformers model computes the loss
(Family.router_aux_loss): on a dense model the frameworks' switch does nothing, and
ftmem's ``--router-aux-loss`` would be refused there. When the model cannot be read
(not a preset, not in the local Hugging Face cache), the setting stays config.json's and
a note says so.
"""

from __future__ import annotations

from collections.abc import Collection

from ftmem.errors import FtmemError
from ftmem.frameworks.shared import FrameworkConfig


def _family(model: str | None) -> tuple[str, bool] | None:
    """The base model's family name and whether its model computes the loss; None when
    it cannot be read here."""
    if model is None:
        return None
    from ftmem.sources import resolve_model  # (loads presets; only when a file says so)

    try:
        arch = resolve_model(model)
    except FtmemError:
        return None
    return arch.traits.name, arch.is_moe and arch.traits.router_aux_loss


def moe_with_router_loss(model: str | None) -> bool:
    """The base model is one whose transformers model computes the loss (a framework's
    default that turns it on applies there, and says nothing elsewhere)."""
    found = _family(model)
    return found is not None and found[1]


def read_router_aux_loss(
    cfg: FrameworkConfig, on: bool, said: str, families: Collection[str] | None = None
) -> None:
    """``said`` (the key and its value) turns the loss on or off; ``families``, when given,
    are the model types for which the framework acts on it (LLaMA-Factory's list)."""
    if not on:
        cfg.settings["router_aux_loss"] = False
        return
    found = _family(cfg.model)
    if found is None:
        cfg.notes.append(
            f"{said}: cannot tell whether {cfg.model or 'the base model'} computes a router "
            "load-balancing loss (its config is not at hand); estimated as its config.json "
            "says (give --router-aux-loss to count it)."
        )
        return
    family, computes = found
    if families is not None and family not in families:
        cfg.notes.append(
            f"{said}: {cfg.framework} does not turn on output_router_logits for {family} "
            "models; estimated as config.json says."
        )
    elif not computes:
        cfg.notes.append(
            f"{said}: ftmem models the router load-balancing loss of Mixtral, Qwen3-MoE, "
            f"OLMoE and gpt-oss, not of {family} models; nothing added."
        )
    else:
        cfg.settings["router_aux_loss"] = True
