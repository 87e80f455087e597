"""Qwen3-Next (Qwen3NextForCausalLM, model_type qwen3_next; transformers 5.25
models/qwen3_next/): the stack Qwen3.5's MoE text model copies (families
qwen3_5_moe_text: configuration_qwen3_5_moe.py's Qwen3_5MoeTextConfig subclasses
Qwen3NextConfig, modular_qwen3_5_moe.py builds its attention, experts, sparse block and
decoder layer from Qwen3-Next's). Line by line against qwen3_5_moe_text
(modeling_qwen3_next.py):

- Qwen3NextAttention is Qwen3_5MoeAttention (the gated q_proj, q/k RMSNorms); the
  RMSNorms are the same zero-centred ``x·(1 + w)`` in fp32; Qwen3NextRMSNormGated is
  Qwen3.5's gated norm.
- Qwen3NextGatedDeltaNet fuses the input projections: ``in_proj_qkvz`` (hidden ->
  2·key_dim + 2·value_dim) and ``in_proj_ba`` (hidden -> 2·value heads) in place of
  in_proj_qkv, in_proj_z, in_proj_b and in_proj_a, split per key head by
  ``fix_query_key_value_ordering`` (LinearAttention.fused, ops.gated_deltanet
  DeltaNetShape.fused); the conv, dt_bias, A_log, norm and out_proj are the same.
- Qwen3NextSparseMoeBlock and Qwen3NextExperts are Qwen3.5-MoE's; Qwen3NextTopKRouter
  divides the top-k by its sum only where ``norm_topk_prob`` (default true).
- Qwen3NextDecoderLayer builds a dense Qwen3NextMLP of ``intermediate_size`` in the
  layers of ``mlp_only_layers`` or off the ``decoder_sparse_step`` grid (refused here:
  every published config has all layers sparse).
- Qwen3NextModel.forward's position ids are ``arange(s)[None]`` (one row, not Qwen3.5's
  M-RoPE rows expanded over the batch), and Qwen3NextRotaryEmbedding is the plain one.

Counted exactly (tests/test_qwen3_next.py against transformers on the meta device);
training steps are estimated for what Qwen3.5's layers were measured with
(ops.gated_deltanet.refuse_training), serving refused. The multi-token-prediction weights
(``mtp.*``) are ignored on loading (``_keys_to_ignore_on_load_unexpected``) and left out.

Notes (stop 51, helper q35moe). Measured (tests/accuracy/cases.py ``_qwen3_next``: 4
layers LLLF, hidden 64, 4 experts of 32, 2 a token, shared 48; b 3, s 50; CPU, torch 2.13,
peft 0.21.2), peak estimate / measured B: full fp32 10,838,984 / 10,806,904 (+0.30 %, as
Qwen3.5-MoE's: calibration/notes/peft.md); full bf16 8,067,956 / 8,066,840;
checkpointed 3,816,272 / 3,816,280; LoRA q,v bf16 1,617,312 / 1,617,312, bf16-mixed
2,143,712 / 2,143,712, checkpointed 2,627,864 / 2,627,872, b 2 checkpointed 1,895,440 /
1,895,448; LoRA on the attention and fused projections 6,815,388 / 6,815,472; on the
experts 5,222,344 / 5,222,428; freeze 2 bf16-mixed 4,828,604 / 4,830,324 (phase backward
/ forward); one value head per key head, fp32, s 130 4,757,344 / 4,757,344; LoRA
q,v,gate,up,down bf16-mixed 6,249,196 / 6,269,256 (-0.32 %, not found; EXAONE-MoE's
same case is +0.1 %). Left: dense
layers (mlp_only_layers, decoder_sparse_step), QLoRA (the shared_expert_gate in 4-bit, as
Qwen2-MoE), the flash-linear-attention kernels, serving.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import ConfigMap
from ftmem.families._config import Config, LlamaKeys, flag, opt, opt_or, shown
from ftmem.families._llama import llama_map
from ftmem.families.qwen3_5_moe_text import FAMILY as QWEN35_MOE
from ftmem.families.qwen3_5_moe_text import _build as _moe_build
from ftmem.families.qwen3_5_moe_text import _read as _moe_read

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# Qwen3NextConfig's class defaults (transformers 5.25 configuration_qwen3_next.py) for the
# keys this family reads beyond Qwen3.5-MoE's
DEFAULTS: Config = {"intermediate_size": 5632, "num_experts_per_tok": 10, "num_experts": 512}


def _read(cfg: Config, out: Config) -> None:
    dense_layers = cfg.get("mlp_only_layers") or []
    step = opt(cfg, "decoder_sparse_step", limits.LAYERS) or 1
    # (num_experts 0, every layer dense, is refused by the read: it must be positive)
    if dense_layers or step != 1:
        raise ConfigError(
            "config.json: a Qwen3-Next stack with dense layers (mlp_only_layers "
            f"{shown(dense_layers)}, decoder_sparse_step {step}) is not supported yet; ftmem "
            "models stacks whose every layer has the same experts."
        )
    defaults = {k: v for k, v in DEFAULTS.items() if k not in cfg}
    _moe_read({**defaults, **cfg}, out)
    if "linear_attention" in out:
        out["linear_attention"]["fused"] = True
    out["router_renormalises"] = flag(cfg, "norm_topk_prob", True)


def _build(arch: Architecture, kw: Config) -> None:
    _moe_build(arch, kw)
    kw.update(
        intermediate_size=arch.intermediate_size,  # (no dense layer reads it)
        norm_topk_prob=arch.router_renormalises,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )


_MAP = llama_map("qwen3_next", LlamaKeys(optional=("attention_bias",)), _read, _build)


def _read_next(cfg: Config) -> Config:
    # (read_llama_like needs intermediate_size: the config class's default where left out)
    return _MAP.read({**cfg, "intermediate_size": opt_or(cfg, "intermediate_size", DEFAULTS)})


FAMILY = replace(
    QWEN35_MOE,
    name="qwen3_next",
    model_types=("qwen3_next",),
    decoder_layer="Qwen3NextDecoderLayer",
    config=ConfigMap(_read_next, _MAP.build),
    rotary_tables_per_sequence=False,
    router_renormalisation_optional=True,
)
