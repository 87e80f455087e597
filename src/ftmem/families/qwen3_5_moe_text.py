"""Qwen3.5's MoE text model (Qwen3_5MoeForCausalLM, model_type qwen3_5_moe_text;
transformers 5.25 models/qwen3_5_moe/): Qwen3.5's two layer kinds (family qwen3_5_text:
Gated DeltaNet or gated full attention by ``layer_types``, zero-centred fp32 RMSNorms, a
quarter of each head rotated) over Qwen2-MoE's sparse block (family qwen2_moe: the 3-D
routed experts of width ``moe_intermediate_size`` and one dense SwiGLU ``shared_expert``
of width ``shared_expert_intermediate_size`` scaled per token by
``sigmoid(shared_expert_gate(x))``) in every layer.

Line by line against what ftmem has (modeling_qwen3_5_moe.py, transformers 5.25):
Qwen3_5MoeGatedDeltaNet, Qwen3_5MoeRMSNormGated, Qwen3_5MoeRMSNorm,
Qwen3_5MoeTextRotaryEmbedding and Qwen3_5MoeTextModel.forward are Qwen3.5's own (the
attention differs only in a line break); Qwen3_5MoeSparseMoeBlock (l.994-1014) and
Qwen3_5MoeExperts (l.935-972) are Qwen2-MoE's; Qwen3_5MoeTopKRouter (l.975-991) is
Qwen2-MoE's router with the top-k always divided by its sum (no ``norm_topk_prob``:
Qwen3_5MoeTextConfig deletes the key, configuration_qwen3_5_moe.py) and cast back to the
logits' dtype. The decoder layer builds the sparse block in every layer (no
``mlp_only_layers``, no ``decoder_sparse_step``, no dense ``intermediate_size``).
Qwen3_5MoeForCausalLM adds the load-balancing loss when ``output_router_logits``
(l.1995-2004). The multi-token-prediction weights (``mtp.*``) are ignored on loading
(``_keys_to_ignore_on_load_unexpected``, l.1923) and left out of the count, as for
qwen3_5_text. transformers converts gate/up/down LoRA targets to the 3-D experts for this
model type (conversion_mapping.py l.2466-2467: qwen3_5_text's mapping plus qwen2_moe's).

Training steps: what qwen3_5_text was measured for (ops.gated_deltanet.refuse_training)
and what tests/accuracy/cases.py ``_qwen3_5_moe_text`` measures; QLoRA is refused as for
Qwen2-MoE (bitsandbytes quantises the one-output shared_expert_gate, not modelled), and so
is LoRA on all-linear or the MLP names (peft turns them into LoRA on the 3-D experts).

Notes (stop 51, helper q35moe). Measured: every tensor's name and size in its layer
equals transformers 5.25's Qwen3_5MoeForCausalLM on the meta device
(tests/test_qwen35_moe_text.py: the default pattern, a given order, one expert a token
with biases and tied embeddings, every layer full; tiny 8-layer model; the config
class's defaults, 40 layers at 2048 wide with 256 experts). Tiny accuracy cases (4 layers
LLLF, hidden 64, 4 experts of 32, 2 a token, shared 48; b 3, s 50; CPU, torch 2.13,
peft 0.21.2), peak estimate / measured B: full fp32 10,842,208 / 10,810,128 (+0.30 %,
the top block's MoE moment counts the experts' down gradient before it is made:
calibration/notes/peft.md); LoRA on the attention and Gated DeltaNet
projections bf16 7,080,268 / 7,080,352; LoRA on the experts bf16 5,223,944 / 5,224,028;
LoRA q,v bf16-mixed 2,106,112 / 2,106,112; checkpointed LoRA q,v bf16 2,629,464 /
2,629,472; freeze 2 bf16-mixed 4,870,212 / 4,871,932 (the phase: backward / forward,
1,720 B apart); checkpointed full bf16 3,817,896 / 3,817,904 (was 3,768,232, -1.3 %:
the router's and experts' gradients made before the Gated DeltaNet layer's backward,
transients._mlp_side_gradients); with the load-balancing loss, LoRA q,v bf16 1,582,912 /
1,580,512 (+0.15 %; activations 557,680 / 554,112, +0.6 %: the three frozen Gated
DeltaNet blocks below the lowest trained one keep router logits without a graph, which
ops.router_aux counts as kept for backward) and full fp32 +0.30 % as without it;
checkpointed LoRA on the experts 2,811,784 / 2,811,792 (was -0.5 %: the experts'
adapters' gradients, made before the layer's backward); freeze 2 checkpointed bf16
3,229,132 / 3,229,140; LoRA q,v FLLF 5,121,364 / 5,121,448; LoRA q,v,gate,up,down (q and v
beside the routed experts) bf16 5,434,072 / 5,434,156 (was 1,848,512, -66 %: the lowest
trained block was taken from q_proj's layers only, methods._plan_method), checkpointed
2,951,576 / 2,951,584. Refused after measuring: LoRA on the shared expert's linears by
name (q_proj,v_proj,gate_proj,up_proj,down_proj bf16: weights exact, activations
4,658,516 / 4,600,980, +1.3 %, not found). Left: those gaps; QLoRA (a measured
shared_expert_gate in 4-bit); the flash-linear-attention kernels; serving.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import ConfigMap
from ftmem.families._config import Config, LlamaKeys, opt, opt_or, shown
from ftmem.families._llama import llama_map
from ftmem.families.mixtral import EXPERT_NAMES
from ftmem.families.qwen2_moe import SHARED_EXPERT
from ftmem.families.qwen3_5_text import FAMILY as DENSE
from ftmem.families.qwen3_5_text import _build as _dense_build
from ftmem.families.qwen3_5_text import _read as _dense_read

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# Qwen3_5MoeTextConfig's class defaults (transformers 5.25 configuration_qwen3_5_moe.py
# l.103-106) for the MoE keys a config.json may leave out
DEFAULTS: Config = {
    "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512,
    "num_experts_per_tok": 8,
    "num_experts": 256,
}


def _read(cfg: Config, out: Config) -> None:
    _dense_read(cfg, out)
    shared = opt_or(cfg, "shared_expert_intermediate_size", DEFAULTS)
    if not shared:
        raise ConfigError(
            "config.json: shared_expert_intermediate_size must be positive for "
            "qwen3_5_moe_text (transformers builds the shared expert in every layer)."
        )
    experts = (
        opt(cfg, "num_experts", limits.EXPERTS)
        or opt(cfg, "num_local_experts", limits.EXPERTS)
        or DEFAULTS["num_experts"]
    )
    top_k = opt_or(cfg, "num_experts_per_tok", DEFAULTS, limits.EXPERTS)
    if top_k > experts:
        raise ConfigError(
            f"config.json: num_experts_per_tok {shown(top_k)} is more than num_experts "
            f"{shown(experts)}."
        )
    out.update(
        intermediate_size=opt_or(cfg, "moe_intermediate_size", DEFAULTS),
        shared_experts_size=shared,
        num_experts=experts,
        experts_per_token=top_k,
        # (Qwen3_5MoeTopKRouter always divides the top-k by its sum)
        router_renormalises=True,
    )


def _build(arch: Architecture, kw: Config) -> None:
    _dense_build(arch, kw)
    # (Qwen3_5MoeTextConfig has no dense intermediate_size)
    kw.pop("intermediate_size", None)
    kw.update(
        moe_intermediate_size=arch.intermediate_size,
        shared_expert_intermediate_size=arch.shared_experts_size,
        num_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
    )


_KEYS = LlamaKeys(optional=("attention_bias",))
_MAP = llama_map("qwen3_5_moe_text", _KEYS, read_extra=_read, build_extra=_build)


def _read_moe(cfg: Config) -> Config:
    # read_llama_like needs intermediate_size, which this config class does not have:
    # the experts' width stands in for it (and _read sets it from the same key)
    width = {"intermediate_size": opt_or(cfg, "moe_intermediate_size", DEFAULTS)}
    return _MAP.read({**cfg, **width})


FAMILY = replace(
    DENSE,
    name="qwen3_5_moe_text",
    model_types=("qwen3_5_moe_text",),
    decoder_layer="Qwen3_5MoeDecoderLayer",
    config=ConfigMap(_read_moe, _MAP.build),
    names=replace(DENSE.names, experts=EXPERT_NAMES, shared_experts=SHARED_EXPERT),
    shared_expert_gate=True,
    peft_converts_expert_targets=True,
    routing_weights_in_router_dtype=True,
    router_aux_loss=True,
)
