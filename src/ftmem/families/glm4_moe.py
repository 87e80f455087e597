"""GLM-4.5 / GLM-4.6 (Glm4MoeForCausalLM: GLM-4.5, GLM-4.5-Air, GLM-4.6): Llama's
attention with q/k/v biases (``attention_bias``; o_proj has none), the rotary on part of
each head (``partial_rotary_factor``, 0.5 unless the config says otherwise:
configuration_glm4_moe.py ``__post_init__``), optional per-head RMSNorms on queries and
keys (``use_qk_norm``, on the (b, s, heads, head_dim) views before the transpose, as
Qwen3's), and DeepSeek-V3's mixture of experts line for line: an fp32 sigmoid router with a
correction bias and group-limited top-k, routed experts as 3-D parameters, a shared dense
MLP beside them, and dense MLPs in the first ``first_k_dense_replace`` blocks
(transformers 5.25 models/glm4_moe/modeling_glm4_moe.py: Glm4MoeAttention, Glm4MoeTopkRouter,
Glm4MoeMoE, Glm4MoeDecoderLayer.__init__; the router, experts and MoE classes are
DeepseekV3's but for names).

The rotary slices the head (``q[..., :rotary_dim]``) and joins the turned part to the rest
with ``torch.cat``, which makes q and k head-major, so o_proj reads a copy of the kernel's
output (as StableLM and Phi). The multi-token-prediction layer of the published
checkpoints is not built by transformers (``_keys_to_ignore_on_load_unexpected``) and is
not counted; the router's weight and correction bias stay fp32
(``_keep_in_fp32_modules_strict``)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, flag
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.families.deepseek_v3 import (
    SHARED_EXPERTS,
    build_deepseek_experts,
    read_deepseek_experts,
)
from ftmem.families.glm import build_glm_keys, read_glm_keys
from ftmem.families.mixtral import EXPERT_NAMES
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS

if TYPE_CHECKING:
    from ftmem.arch import Architecture

QK_NORM_KEY = "use_qk_norm"

# transformers 5.25 models/glm4_moe/configuration_glm4_moe.py, Glm4MoeConfig
DEFAULTS: Config = {
    "n_routed_experts": 128,
    "num_experts_per_tok": 8,
    "n_shared_experts": 1,
    "first_k_dense_replace": 1,
    "moe_intermediate_size": 1408,
}


def _read(cfg: Config, out: Config) -> None:
    read_glm_keys(cfg, out)
    out["qk_norm"] = flag(cfg, QK_NORM_KEY, False)
    read_deepseek_experts(cfg, out, DEFAULTS)
    # (the router divides its top-k weights by their sum only when norm_topk_prob says so)
    out["router_renormalises"] = flag(cfg, "norm_topk_prob", True)


def _build(arch: Architecture, kw: Config) -> None:
    build_glm_keys(arch, kw)
    build_deepseek_experts(arch, kw)
    kw["norm_topk_prob"] = arch.router_renormalises


FAMILY = Family(
    name="glm4_moe",
    model_types=("glm4_moe",),
    decoder_layer="Glm4MoeDecoderLayer",
    config=llama_map("glm4_moe", LlamaKeys(optional=("attention_bias",)), _read, _build),
    names=replace(LLAMA_NAMES, experts=EXPERT_NAMES, shared_experts=SHARED_EXPERTS),
    qk_norm_switch=QK_NORM_KEY,
    o_proj_reads_kernel_output=False,
    router_fp32=True,
    router_renormalisation_optional=True,
    peft_converts_expert_targets=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
)
