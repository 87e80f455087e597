"""ERNIE 4.5 MoE (Ernie4_5_MoeForCausalLM: baidu/ERNIE-4.5-21B-A3B-PT, ERNIE-4.5-300B-A47B-PT):
ERNIE 4.5's attention (the per-layer interleaved fp32 rotary, ernie4_5.py) over routed 3-D
experts with shared experts beside them, an fp32 softmax router run with autocast off, and
dense MLPs in the blocks before ``moe_layer_start_index``.

What transformers 5.25 does (models/ernie4_5_moe/modeling_ernie4_5_moe.py), against the
MoE families ftmem has:
- Ernie4_5_MoeTopKRouter.forward (l.345-357): under ``maybe_autocast(enabled=False)``
  ``F.linear(hidden_states.float(), self.weight.float())`` (its weight fp32 whatever the
  model's dtype, ``_keep_in_fp32_modules_strict`` ["gate.weight",
  "e_score_correction_bias"], l.462: DeepSeek's Family.router_fp32, but autocast cannot
  cast it back to 16 bits: Family.router_autocast_off), an fp32 softmax over every
  expert, top-k of the softmax plus ``e_score_correction_bias`` (selection only), the
  softmax's top-k gathered and divided by ``clamp(sum, min=moe_norm_min)`` (always: the
  clamp keeps its fp32 input, one more T × 1 than Qwen3-MoE's in-place division;
  Family.router_renormalises_clamped), then cast to the hidden states' dtype (the
  residual's: fp32 under autocast over fp32 weights, Family.routing_weights_in_hidden_dtype).
- Ernie4_5_MoeStatics (l.269-295): ``e_score_correction_bias`` is an fp32
  ``nn.Parameter(torch.zeros(1, E), requires_grad=False)``: counted by transformers'
  parameter count and stored in fp32, never trained (Param kind "statistic").
- Ernie4_5_MoeSparseMoeBlock (l.360-387): the shared experts, one SwiGLU MLP of
  moe_intermediate_size × moe_num_shared_experts, run before the router; the experts are
  Qwen3-MoE's 3-D gate_up/down (no biases).
- Ernie4_5_MoeDecoderLayer.__init__ (l.391-405): sparse where ``(i + 1) %
  moe_layer_interval == 0 and moe_layer_start_index <= i <= moe_layer_end_index``; ftmem
  models the pattern every published config has (interval 1, the end the last layer):
  the first ``moe_layer_start_index`` blocks dense (DeepSeek's dense_layers), others
  refused.
Refused: ``use_bias`` (it also biases the LM head, Ernie4_5_MoeForCausalLM.__init__ l.636,
not modelled), ``output_router_logits`` (its loss reads the fp32 router logits, not
measured). The multi-token-prediction layer of the checkpoints is not built
(``_keys_to_ignore_on_load_unexpected`` ["mtp"]).

Measured (CPU, peft 0.21.2, transformers 5.25; tiny model: 3 layers, the first dense, 8
experts of 48, top 2, one shared, 3 × 50 tokens): the router alone against torch's saved
tensors in six regimes (tests/test_ernie_router.py: 6,400 B of routing tensors, the
clamp's 400 B among them; no 16-bit weight copy under autocast, where the 16-bit router
families keep one: +1,536 B per sparse block before); tests/accuracy's 20 cases
(the matrix with LoRA on attention, QLoRA in two regimes, checkpointed LoRA): weights
(the fp32 correction biases included), gradients and states exact, activations within
the MoE families' 64 B (IA³ +320 B), peaks within 0.3 % but QLoRA under autocast
-1.2 % and checkpointed LoRA -2.3 % (-2.8 % before the held fp32 rotary pair)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, flag, opt, opt_or, shown
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.families.deepseek_v3 import SHARED_EXPERTS
from ftmem.families.mixtral import EXPERT_NAMES
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# transformers 5.25 configuration_ernie4_5_moe.py, Ernie4_5_MoeConfig's defaults
DEFAULTS: Config = {
    "num_key_value_heads": 4,
    "max_position_embeddings": 131_072,
    "moe_intermediate_size": 1536,
    "moe_k": 6,
    "moe_num_experts": 64,
    "moe_num_shared_experts": 2,
    "moe_layer_start_index": 1,
    "moe_layer_interval": 1,
}


def _index(cfg: Config, key: str, default: int) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config.json: {key} must be an integer, not {shown(value)}.")
    return value


def _sparse_from(cfg: Config, layers: int) -> int:
    """The first sparse block, where the pattern is "every block from one on"; else a
    refusal."""
    start = _index(cfg, "moe_layer_start_index", DEFAULTS["moe_layer_start_index"])
    end = _index(cfg, "moe_layer_end_index", -1)
    interval = _index(cfg, "moe_layer_interval", DEFAULTS["moe_layer_interval"])
    last = layers - 1 if end == -1 else end
    if interval != 1 or last < layers - 1 or not 0 <= start < layers:
        raise ConfigError(
            "config.json: ERNIE 4.5 MoE stacks are modelled with experts in every block "
            f"from moe_layer_start_index to the last (interval 1), not start {shown(start)}, "
            f"end {shown(end)}, interval {shown(interval)}."
        )
    return start


def _read(cfg: Config, out: Config) -> None:
    if flag(cfg, "use_bias", False):
        raise ConfigError(
            "config.json: use_bias is not supported for ernie4_5_moe (it biases the LM "
            "head too, which ftmem does not model)."
        )
    if flag(cfg, "output_router_logits", False):
        raise ConfigError(
            "config.json: output_router_logits is not supported for ernie4_5_moe (its "
            "load-balancing loss reads fp32 router logits, not measured)."
        )
    if "num_key_value_heads" not in cfg:  # (null: as many as heads, read_llama_like's)
        out["num_kv_heads"] = DEFAULTS["num_key_value_heads"]
    if "max_position_embeddings" not in cfg:
        out["max_position_embeddings"] = DEFAULTS["max_position_embeddings"]
    moe = opt_or(cfg, "moe_intermediate_size", DEFAULTS)
    first_sparse = _sparse_from(cfg, out["num_layers"])
    if first_sparse:
        out.update(dense_layers=first_sparse, dense_intermediate_size=out["intermediate_size"])
    shared = opt(cfg, "moe_num_shared_experts", limits.EXPERTS)
    if "moe_num_shared_experts" not in cfg:
        shared = DEFAULTS["moe_num_shared_experts"]
    out.update(
        intermediate_size=moe,
        num_experts=opt_or(cfg, "moe_num_experts", DEFAULTS, limits.EXPERTS),
        experts_per_token=opt_or(cfg, "moe_k", DEFAULTS, limits.EXPERTS),
        shared_experts_size=moe * (shared or 0),
    )


def _build(arch: Architecture, kw: Config) -> None:
    moe = arch.intermediate_size
    if arch.shared_experts_size % moe:
        raise ValueError(
            f"{arch.name}: shared_experts_size {arch.shared_experts_size} is not a whole number "
            f"of experts {moe} wide (transformers builds moe_num_shared_experts x "
            "moe_intermediate_size)"
        )
    kw.update(
        intermediate_size=arch.dense_intermediate_size or moe,
        moe_intermediate_size=moe,
        moe_num_experts=arch.num_experts,
        moe_k=arch.experts_per_token,
        moe_num_shared_experts=arch.shared_experts_size // moe,
        moe_layer_start_index=arch.dense_layers,
        moe_layer_end_index=-1,
        moe_layer_interval=1,
        use_bias=False,
        tie_word_embeddings=arch.tie_embeddings,
    )


FAMILY = Family(
    name="ernie4_5_moe",
    model_types=("ernie4_5_moe",),
    decoder_layer="Ernie4_5_MoeDecoderLayer",
    config=llama_map("ernie4_5_moe", LlamaKeys(tie=True), _read, _build),
    names=replace(LLAMA_NAMES, experts=EXPERT_NAMES, shared_experts=SHARED_EXPERTS),
    rotary_tables_per_layer=True,
    rotary_tables_fp32=True,
    router_fp32=True,
    router_autocast_off=True,
    router_statistics=True,
    router_renormalises_clamped=True,
    routing_weights_in_router_dtype=True,
    routing_weights_in_hidden_dtype=True,
    peft_converts_expert_targets=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
