"""MiniMax-M2 (MiniMaxM2ForCausalLM: MiniMaxAI's MiniMax-M2): a GQA attention without
biases whose queries and keys pass RMSNorms across the whole projection (``q_norm`` of
heads × head_dim, ``k_norm`` of kv_heads × head_dim, before the view into heads: OLMoE's
and OLMo 2's layout), the rotary on the first ``rotary_dim`` dims of each head, and routed
experts only: no shared expert, no dense layer, no window (transformers 5.25
models/minimax_m2/modeling_minimax_m2.py: MiniMaxM2Attention, MiniMaxM2TopKRouter,
MiniMaxM2SparseMoeBlock, MiniMaxM2Model.forward "No sliding window opposed to mixtral").

Against the families ftmem has: the router is a linear in the model's dtype
(``F.linear(hidden_states.to(self.weight.dtype), self.weight)``; no
``_keep_in_fp32_modules``, unlike DeepSeek-V3's), then ``sigmoid`` of the logits in fp32,
top-k of the sigmoid plus the ``e_score_correction_bias`` buffer (no groups), a gather of
the selected sigmoid values and their renormalisation in place, always, left fp32. For
memory that is Mixtral's router: one fp32 (T × experts) result kept (the sigmoid's where
Mixtral keeps its softmax's), the top-k indices (kept by the gather; the top-k's own
values are discarded), and the renormalisation's quotient and sum; the routing weights
fp32 like Mixtral's. The load-balancing loss when ``output_router_logits``
(MiniMaxM2ForCausalLM.forward). The rotary slices each head and joins the turned part to
the rest with ``torch.cat`` (GLM-4.5's apply_rotary_pos_emb), so o_proj reads a copy of
the kernel's output. The released configs give the rotary's share as the legacy
``rotary_dim`` (MiniMaxM2Config.convert_rope_params_to_dict turns it into
``partial_rotary_factor``). peft converts gate/up/down targets to the 3-D experts for this
model type (transformers 5.25 conversion_mapping.py: ``"minimax_m2": "mixtral"``).
``router_jitter_noise`` above 0 multiplies the MLP input in place in training: refused."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, number, opt, rotary_dim, shown
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.families.mixtral import EXPERT_NAMES
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# transformers 5.25 models/minimax_m2/configuration_minimax_m2.py, MiniMaxM2Config
DEFAULTS: Config = {
    "head_dim": 128,
    "num_local_experts": 256,
    "num_experts_per_tok": 8,
}


def _read(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True
    out.pop("sliding_window", None)
    jitter = number(cfg, "router_jitter_noise") or 0.0
    if jitter:
        raise ConfigError(
            f"config.json: router_jitter_noise {shown(jitter)} is not supported for "
            "minimax_m2 (it rescales the MLP input in place in training); ftmem models 0."
        )
    head_dim = opt(cfg, "head_dim") or DEFAULTS["head_dim"]
    legacy = opt(cfg, "rotary_dim")
    out.update(
        head_dim=head_dim,
        rotary_dim=rotary_dim(
            cfg, head_dim, ("partial_rotary_factor",), legacy / head_dim if legacy else 1.0
        ),
        num_experts=opt(cfg, "num_local_experts", limits.EXPERTS) or DEFAULTS["num_local_experts"],
        experts_per_token=opt(cfg, "num_experts_per_tok", limits.EXPERTS)
        or DEFAULTS["num_experts_per_tok"],
    )


def _build(arch: Architecture, kw: Config) -> None:
    kw.update(
        num_local_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
        partial_rotary_factor=arch.rotary_size / arch.head_size,
        router_jitter_noise=0.0,
    )


FAMILY = Family(
    name="minimax_m2",
    model_types=("minimax_m2",),
    decoder_layer="MiniMaxM2DecoderLayer",
    config=llama_map("minimax_m2", LlamaKeys(), _read, _build),
    names=replace(LLAMA_NAMES, experts=EXPERT_NAMES),
    qk_norm=True,
    qk_norm_per_head=False,
    o_proj_reads_kernel_output=False,
    peft_converts_expert_targets=True,
    router_aux_loss=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
