"""A LitGPT ``GPT`` (litgpt.model.GPT, or litgpt.lora.GPT) read from its live ``config``:
the architecture as the transformers family with the same weights
(:func:`ftmem.frameworks.litgpt.model_config_json`), LitGPT's own LoRA
switches, the dtypes and the device. The Lightning callback and Fabric's ``check`` use
it where the module holds a LitGPT model instead of a transformers one.

Read by attribute (imports neither torch nor litgpt). The attributes are those of
litgpt 0.5.13's ``litgpt/config.py`` ``Config`` (n_layer, n_embd, n_head,
n_query_groups, head_size, intermediate_size, padded_vocab_size, mlp_class_name,
norm_class_name, bias, attn_bias, ...) and ``litgpt/lora.py`` ``Config`` (lora_r,
lora_alpha, lora_dropout, lora_query ... lora_head).
"""

from __future__ import annotations

from typing import Any

from ftmem.errors import InvalidInputError
from ftmem.frameworks.litgpt import LORA_SWITCHES, model_config_json, with_head_target
from ftmem.integrations.live import LiveRun, _read_dtypes, numel
from ftmem.sources import architecture_from_config

# a LitGPT Config has these (and a transformers config none of them)
CONFIG_KEYS = ("n_layer", "n_embd", "n_head", "mlp_class_name", "norm_class_name")
# a LitGPT model runs its own code; the estimate is the transformers layout's
LITGPT_NOTE = (
    "LitGPT's own model code (one fused qkv Linear, its own untied LM head, SDPA with "
    "k/v expanded to every head under grouped queries): estimated with the transformers "
    "layout of the same weights, whose activations are smaller (a tiny model measured "
    "up to 11 % more; docs/integrations.md, Known gaps)."
)


def is_litgpt_config(config: Any) -> bool:
    return all(hasattr(config, key) for key in CONFIG_KEYS)


def litgpt_model_in(module: Any) -> Any:
    """The first submodule (in order) with a LitGPT config, or None."""
    for sub in module.modules():
        if is_litgpt_config(getattr(sub, "config", None)):
            return sub
    return None


def read_litgpt_model(model: Any, *, autocast: str, autocast_said: str) -> LiveRun:
    """What a live LitGPT GPT says: its architecture, its method (LitGPT's LoRA, or every
    parameter training), the dtypes, the attention and the device."""
    config = model.config
    cfg = model_config_json(config)
    name = str(config.name or type(model).__name__)
    said = f"the live LitGPT model's config ({type(config).__module__}.{type(config).__name__})"
    live = LiveRun(architecture_from_config(cfg, name, said))
    params = list(model.named_parameters())
    live.n_params = sum(numel(p) for _, p in params)
    live.n_trainable = sum(numel(p) for _, p in params if p.requires_grad)
    _method(config, params, live, said)
    _read_dtypes(model, autocast, autocast_said, live)
    live.set("grad_ckpt", False, "LitGPT's GPT (no checkpointing of its own)")
    live.set("attn", "sdpa", "litgpt/model.py CausalSelfAttention (SDPA)")
    device = next((str(p.device) for _, p in params), "cuda")
    live.set("device", "cpu" if device.startswith("cpu") else "cuda", "the parameters' device")
    live.notes.append(LITGPT_NOTE)
    return live


def _method(config: Any, params: list[tuple[str, Any]], live: LiveRun, said: str) -> None:
    """LitGPT's LoRA (litgpt.lora.Config lora_r > 0, its lora_A / lora_B trainable) by
    its switches, or full when every parameter trains; another trainable set is refused
    (its names are LitGPT's, not the layout's)."""
    trainable = [n for n, p in params if p.requires_grad]
    if not trainable:
        raise InvalidInputError("No parameter of the model requires grad: nothing would train.")
    r = int(getattr(config, "lora_r", 0) or 0)
    adapters = [n for n in trainable if ".lora_" in n]
    if r > 0 and adapters:
        live.set("method", "lora", said)
        live.set("lora_r", r, said)
        live.set("lora_alpha", float(config.lora_alpha), said)
        if config.lora_dropout:
            live.set("lora_dropout", float(config.lora_dropout), said)
        roles = [role for key, role in LORA_SWITCHES if getattr(config, key, False)]
        roles += with_head_target(roles, getattr(config, "lora_head", False), live.notes)
        live.set("lora_targets", ",".join(roles), f"{said} lora_* switches")
        others = len(trainable) - len(adapters)
        if others:
            live.notes.append(
                f"{others} trainable parameter tensors besides LitGPT's LoRA ones (biases?): "
                "not in the estimate."
            )
        return
    if len(trainable) == len(params):
        live.set("method", "full", "the parameters' requires_grad")
        return
    raise InvalidInputError(
        "A LitGPT model with some parameters frozen and no LoRA: ftmem reads LitGPT's LoRA "
        "or full finetuning from a live LitGPT model."
    )
