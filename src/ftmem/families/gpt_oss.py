"""gpt-oss (GptOssForCausalLM, OpenAI's gpt-oss-20b and gpt-oss-120b), as transformers 5.24
builds it (models/gpt_oss/modeling_gpt_oss.py): Llama's block with biased q/k/v/o, GQA and
attention sinks (a learned logit per head joined to the softmax), layers alternating
between a 128-token sliding window and full attention, YaRN rotary, and a routed mixture
of experts: a biased router linear whose softmax covers the top-k logits it selected, and
3-D experts stored (experts, in, out) with biases, running a clamped SwiGLU.

transformers has no sdpa path for it (``_supports_sdpa = False``: the sinks need the
eager softmax), so every run's attention is eager here. The checkpoints ship the experts
in MXFP4 (``quantization_config.quant_method: mxfp4``); without the triton kernels
(and for training) transformers dequantises them to bf16 on loading, which is what the
estimate assumes."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, alternating, flag, need, opt
from ftmem.families._llama import LLAMA_NAMES, llama_map

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# transformers 5.24 GptOssMLP: `router` (GptOssTopKRouter: weight [E, H], bias [E]) and
# `experts` (GptOssExperts: gate_up_proj [E, H, 2F] + gate_up_proj_bias, down_proj
# [E, F, H] + down_proj_bias)
GPT_OSS_EXPERTS = {
    "router": "mlp.router",
    "gate_up": "mlp.experts.gate_up_proj",
    "down": "mlp.experts.down_proj",
}


def _read(cfg: Config, out: Config) -> None:
    # GptOssConfig.attention_bias defaults to true (configuration_gpt_oss.py)
    bias = flag(cfg, "attention_bias", True)
    out.update(attention_qkv_bias=bias, attention_out_bias=bias)
    if "sliding_window" not in cfg:  # GptOssConfig.sliding_window defaults to 128
        types = cfg.get("layer_types")
        if not (isinstance(types, list) and types and "sliding_attention" not in types):
            out["sliding_window"] = 128
    out.update(
        num_experts=need(cfg, "num_local_experts", "num_experts", bound=limits.EXPERTS),
        experts_per_token=need(cfg, "num_experts_per_tok", bound=limits.EXPERTS),
        head_dim=opt(cfg, "head_dim") or out["hidden_size"] // out["num_heads"],
    )


def _build(arch: Architecture, kw: Config) -> None:
    # GptOssConfig.__post_init__ alternates sliding and full layers when layer_types is
    # None; a model without a window attends globally in every layer (GptOssModel.forward
    # builds the sliding mask whatever the layers, so the config keeps its default window)
    if arch.sliding_window is None:
        kw.update(layer_types=["full_attention"] * arch.num_layers, sliding_window=128)
    kw.update(
        num_local_experts=arch.num_experts,
        num_experts_per_tok=arch.experts_per_token,
    )


FAMILY = Family(
    name="gpt_oss",
    model_types=("gpt_oss",),
    decoder_layer="GptOssDecoderLayer",
    config=llama_map(
        "gpt_oss",
        LlamaKeys(optional=("attention_bias",), window="always", sliding=alternating),
        _read,
        _build,
    ),
    names=replace(LLAMA_NAMES, experts=GPT_OSS_EXPERTS),
    attention="eager",
    # eager_attention_forward: F.softmax(combined_logits, dtype=combined_logits.dtype)
    softmax_in_compute_dtype=True,
    # GptOssRMSNorm: (self.weight * hidden_states).to(input_dtype), the product in fp32
    norm_scale_in_fp32=True,
    # GptOssRotaryEmbedding.forward: emb = freqs (head_dim / 2 wide), no cat
    rotary_tables_half=True,
    router_topk_softmax=True,
    experts_transposed_with_bias=True,
    clamped_swiglu=True,
    attention_sinks=True,
    notes={
        "attention": (
            "gpt-oss has no sdpa path in transformers 5 (its attention sinks need the eager "
            "softmax): the estimate assumes eager attention, which keeps the s × (s + 1) "
            "probabilities; FlashAttention kernels with sinks (vllm-flash-attn3) are not "
            "modelled."
        ),
        "qlora": (
            "gpt-oss's checkpoints ship MXFP4 experts; the estimate assumes transformers "
            "dequantises them to bf16 on loading (what it does without the triton kernels "
            "and for training), and bitsandbytes leaves the 3-D experts unquantised."
        ),
    },
    router_aux_loss=True,
)
