"""GLM-4.7-Flash (Glm4MoeLiteForCausalLM, ``glm4_moe_lite``): DeepSeek-V3 line for line
but for its config class (transformers 5.25 models/glm4_moe_lite/modular_glm4_moe_lite.py:
the attention is ``DeepseekV3Attention``; the router, experts, MoE and MLP are GLM-4.5's,
themselves DeepseekV3's but for names). Multi-head latent attention, an fp32 sigmoid
router with a correction bias (``_keep_in_fp32_modules_strict``), routed experts as 3-D
parameters and one shared dense MLP beside them.

What differs is read here: which blocks are dense is ``mlp_layer_types``
(Glm4MoeLiteDecoderLayer.__init__: ``config.mlp_layer_types[layer_idx] == "sparse"``),
``["dense"] + ["sparse"] * (layers - 1)`` when config.json leaves it out
(configuration_glm4_moe_lite.py ``__post_init__``); ``first_k_dense_replace``, which the
published config.json still carries, is read by nothing. The rotary table is
``int(qk_rope_head_dim x partial_rotary_factor)`` wide (the class maps head_dim to
qk_rope_head_dim), which the rotated slice matches only at 1.0. The multi-token-prediction
layer (``model.layers.47``) is not built and not counted.

Measured (stop 49, torch CPU, peft 0.21.2, the tiny ``glm4_moe_lite`` of tests/conftest.py):
19 cases, weights, gradients and optimizer states exact; activations within 64 B but under
autocast (+7,736 B, 0.3 %: DeepSeek-V3's own gap there), peaks within 0.2 %, the
checkpointed LoRA case +3.2 % (2,270,296 / 2,200,032 B, as glm4_moe's +3.4 %)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.errors import ConfigError
from ftmem.families._config import Config, LlamaKeys, dense_prefix, flag, number, shown
from ftmem.families._llama import llama_map
from ftmem.families.deepseek_v3 import FAMILY as V3
from ftmem.families.deepseek_v3 import build_deepseek, read_deepseek

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# transformers 5.25 models/glm4_moe_lite/configuration_glm4_moe_lite.py, Glm4MoeLiteConfig
# (first_k_dense_replace: what its __post_init__'s mlp_layer_types default makes dense)
DEFAULTS: Config = {
    "qk_nope_head_dim": 192,
    "qk_rope_head_dim": 64,
    "v_head_dim": 256,
    "kv_lora_rank": 512,
    "q_lora_rank": 768,
    "n_routed_experts": 64,
    "num_experts_per_tok": 4,
    "n_shared_experts": 1,
    "first_k_dense_replace": 1,
    "moe_intermediate_size": 1536,
}


def _read(cfg: Config, out: Config) -> None:
    rope = cfg.get("rope_parameters")
    for source in (cfg, rope if isinstance(rope, dict) else {}):
        factor = number(source, "partial_rotary_factor")
        if factor is not None and factor != 1:
            raise ConfigError(
                f"config.json: partial_rotary_factor {shown(factor)} makes the rotary table "
                "narrower than the rotated part of each head, which transformers' "
                "Glm4MoeLite cannot run; only 1.0 is modelled."
            )
    given = {k: v for k, v in cfg.items() if k != "first_k_dense_replace"}
    defaults = {**DEFAULTS, "first_k_dense_replace": dense_prefix(cfg, out["num_layers"], 1)}
    read_deepseek(given, out, defaults)
    # (the router divides its top-k weights by their sum only when norm_topk_prob says so)
    out["router_renormalises"] = flag(cfg, "norm_topk_prob", True)


def _build(arch: Architecture, kw: Config) -> None:
    build_deepseek(arch, kw)
    dense = kw.pop("first_k_dense_replace")
    kw.update(
        mlp_layer_types=["dense"] * dense + ["sparse"] * (arch.num_layers - dense),
        norm_topk_prob=arch.router_renormalises,
    )


FAMILY = replace(
    V3,
    name="glm4_moe_lite",
    model_types=("glm4_moe_lite",),
    decoder_layer="Glm4MoeLiteDecoderLayer",
    config=llama_map("glm4_moe_lite", LlamaKeys(optional=("attention_bias",)), _read, _build),
    router_renormalisation_optional=True,
)
