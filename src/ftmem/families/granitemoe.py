"""Granite 3.x MoE (GraniteMoeForCausalLM, ``granitemoe``: granite-3.0-1b-a400m,
granite-3.0-3b-a800m, PowerMoE-3b): Granite's four scalar multipliers (embedding,
residual, attention scale, logits divisor; ``families.granite``) over Mixtral's 3-D
experts, with a router of its own (transformers 5.25 models/granitemoe/
modular_granitemoe.py: GraniteMoeTopKRouter, GraniteMoeMoE, GraniteMoeDecoderLayer).

The router is a bare (E, h) parameter, ``block_sparse_moe.router.weight``, in the model's
dtype: ``F.linear(h, w).float()``, top-k of the fp32 logits, a softmax over the k it
selected (as gpt-oss's, ``router_topk_softmax``; no renormalisation) kept in fp32, and the
routing weights cast to the hidden states' dtype (``.type_as``); the experts are
MixtralExperts (``gate_up_proj`` (E, 2F, h), ``down_proj`` (E, h, F)), which transformers'
conversion mapping fills from the checkpoints' ``input_linear`` / ``output_linear``
(conversion_mapping.py "granitemoe"). The block is ``block_sparse_moe``, not ``mlp``.
peft 0.21.2 converts no targets for it (transformers' _MODEL_TO_CONVERSION_PATTERN has no
"granitemoe"): LoRA reaches the attention's linears only, and bitsandbytes quantises no
expert or router weight (none is an nn.Linear).

The load-balancing loss (``output_router_logits``) is taken over fp32 router logits,
which ftmem's model of it (Mixtral's, in the router's dtype) does not measure: refused.

Measured (stop 49, torch CPU, peft 0.21.2, the tiny ``granitemoe`` and ``granitemoeshared``
of tests/conftest.py): 40 cases, weights, gradients and optimizer states exact,
activations within 64 B in fp32, bf16 and bf16-mixed (without router_topk_softmax_fp32
the bf16 full finetune was 1,264 B under: 2 blocks x 300 top-k x 2 B), peaks within 1 %
but the checkpointed LoRA cases, -4.6 % (1,457,336 / 1,528,104 B) and -2.4 %, below as
gpt-oss's (-3.3 %): the recomputed block's moment, not derived here."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, flag, opt_or
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

GRANITE_EXPERTS = {
    "router": "block_sparse_moe.router",
    "gate_up": "block_sparse_moe.experts.gate_up_proj",
    "down": "block_sparse_moe.experts.down_proj",
}

# transformers 5.25 models/granitemoe/configuration_granitemoe.py, GraniteMoeConfig
# (GraniteMoeSharedConfig's the same)
DEFAULTS: Config = {"num_local_experts": 8, "num_experts_per_tok": 2}


AUX_LOSS_UNMODELLED = (
    "the load-balancing loss GraniteMoE adds over fp32 router logits is not modelled."
)


def read_granite_experts(cfg: Config, out: Config) -> None:
    """The experts' counts, and the refusal of the load-balancing loss."""
    if flag(cfg, "output_router_logits", False):
        raise ConfigError(
            "config.json: output_router_logits true adds the load-balancing loss GraniteMoE "
            "takes over fp32 router logits, which ftmem does not model; set it false."
        )
    out.update(
        num_experts=opt_or(cfg, "num_local_experts", DEFAULTS, limits.EXPERTS),
        experts_per_token=opt_or(cfg, "num_experts_per_tok", DEFAULTS, limits.EXPERTS),
    )


def build_granite_experts(arch: Architecture, kw: Config) -> None:
    kw.update(
        num_local_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
        output_router_logits=False,
    )


FAMILY = Family(
    name="granitemoe",
    model_types=("granitemoe",),
    decoder_layer="GraniteMoeDecoderLayer",
    config=llama_map(
        "granitemoe",
        LlamaKeys(optional=("attention_bias",)),
        read_granite_experts,
        build_granite_experts,
    ),
    names=replace(LLAMA_NAMES, experts=GRANITE_EXPERTS),
    # GraniteMoeModel.forward: ``inputs_embeds = inputs_embeds * self.embedding_multiplier``
    embeddings_scaled_apart=True,
    router_topk_softmax=True,
    router_topk_softmax_fp32=True,
    routing_weights_in_hidden_dtype=True,
    router_aux_loss_unmodelled=AUX_LOSS_UNMODELLED,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
