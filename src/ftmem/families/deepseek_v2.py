"""DeepSeek-V2 (DeepseekV2ForCausalLM: DeepSeek-V2, V2-Lite, DeepSeek-Coder-V2): the
tensors of DeepSeek-V3 (``families.deepseek_v3``: latent attention, shared and routed
experts, dense first blocks) with its own config defaults and ``mlp_bias``
(transformers 5.24 models/deepseek_v2/modeling_deepseek_v2.py). Its router takes a
softmax and its rotary runs in complex fp32 (``apply_rotary_emb``), where V3's takes a
sigmoid and rotates in the compute dtype."""

from __future__ import annotations

from dataclasses import replace

from ftmem.families._config import Config, LlamaKeys
from ftmem.families._llama import llama_map
from ftmem.families.deepseek_v3 import FAMILY as V3
from ftmem.families.deepseek_v3 import build_deepseek, read_deepseek

# transformers 5.24 models/deepseek_v2/configuration_deepseek_v2.py, DeepseekV2Config
V2_DEFAULTS: Config = {
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "n_routed_experts": 64,
    "num_experts_per_tok": None,
    "n_shared_experts": 2,
    "first_k_dense_replace": 0,
    "moe_intermediate_size": 1407,
}


def _read(cfg: Config, out: Config) -> None:
    read_deepseek(cfg, out, V2_DEFAULTS)
    # its router scales the top-k softmax weights and never divides them by their sum,
    # whatever norm_topk_prob says (modeling_deepseek_v2.py DeepseekV2TopkRouter.forward)
    out["router_renormalises"] = False


FAMILY = replace(
    V3,
    name="deepseek_v2",
    model_types=("deepseek_v2",),
    decoder_layer="DeepseekV2DecoderLayer",
    config=llama_map(
        "deepseek_v2", LlamaKeys(optional=("attention_bias", "mlp_bias")), _read, build_deepseek
    ),
    router_renormalisation_optional=True,
)
