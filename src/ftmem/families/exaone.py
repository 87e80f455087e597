"""EXAONE 3.0 / 3.5 (model_type "exaone"): transformers 5.24 builds Llama itself
(models/auto/modeling_auto.py lines 176 and 829 map "exaone" to LlamaModel and
LlamaForCausalLM), so the block, the module names and the saved tensors are Llama's.
The published checkpoints' GPT-2-style names (transformer.h.N.attn.attention.q_proj,
mlp.c_fc_0, ln_1, ...) are renamed to Llama's on load (conversion_mapping.py lines
1315-1326), so LoRA targets and the named modules are Llama's too.

Only config.json differs: ExaoneConfig (models/exaone/configuration_exaone.py lines
83-87) reads ``num_layers``, ``layer_norm_epsilon`` and ``activation_function`` as
aliases of Llama's ``num_hidden_layers``, ``rms_norm_eps`` and ``hidden_act``; its
other fields, ``tie_word_embeddings`` (default false, line 77) and the rotary
included, are Llama's."""

from __future__ import annotations

from ftmem.families import ConfigMap, Family
from ftmem.families._config import Config, LlamaKeys
from ftmem.families._llama import LLAMA_NAMES, llama_map

# ExaoneConfig.attribute_map (configuration_exaone.py lines 83-87): config.json's key
# -> the Llama key it stands for
ALIASES = {
    "num_layers": "num_hidden_layers",
    "layer_norm_epsilon": "rms_norm_eps",
    "activation_function": "hidden_act",
}

_LLAMA = llama_map("exaone", LlamaKeys(optional=("attention_bias", "mlp_bias")))


def _read(cfg: Config) -> Config:
    """Llama's reading of config.json with EXAONE's key names put back to Llama's (a
    Llama name config.json gives as well wins, as transformers' own field would)."""
    renamed = {ALIASES.get(key, key): value for key, value in cfg.items()}
    renamed.update({key: cfg[key] for key in ALIASES.values() if key in cfg})
    return _LLAMA.read(renamed)


FAMILY = Family(
    name="exaone",
    model_types=("exaone",),
    decoder_layer="LlamaDecoderLayer",
    config=ConfigMap(_read, _LLAMA.build),
    names=LLAMA_NAMES,
)
