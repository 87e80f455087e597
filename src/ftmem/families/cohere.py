"""Command R (CohereForCausalLM): a parallel block under one norm (attention and MLP read
the same normalised input), a gated MLP, tied embeddings and logits multiplied by
``logit_scale``. Its LayerNorm has no bias and is written out in fp32 (centre, variance,
rsqrt, scale by the weight, cast back), so it is modelled as an fp32-scaling RMSNorm (one
weight; the fp32 rstd, and the fp32 normalised tensor for the weight) that keeps the
centred input twice (measured: the mean is subtracted once for the variance and again
for the product). Command R+'s ``use_qk_norm`` puts the same fp32 LayerNorm on each query
and key head, with a weight per head (CohereLayerNorm((heads, head_dim))), on the
projections' (b, s, heads, head_dim) views before the transpose and the rotary: modelled
by ops.norm.QKNorm as this norm, on T·heads rows."""

from __future__ import annotations

from dataclasses import replace

from ftmem.families import SP_MODES, Family
from ftmem.families._config import Config, LlamaKeys, flag
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import (
    COHERE_CAUSAL_MASK_BOOL,
    COHERE_SDPA_FLOAT_MASK,
    QWEN2_ROTARY_PER_LAYER,
    TRANSFORMERS_SDPA_CONTIGUOUS,
    UPCAST_IN_FORWARD_LOSS,
)

QK_NORM_KEY = "use_qk_norm"


def _read(cfg: Config, out: Config) -> None:
    out.update(norms_per_block=1, parallel_attn_mlp=True, qk_norm=flag(cfg, QK_NORM_KEY, False))


FAMILY = Family(
    name="cohere",
    # ColossalAI shardformer: policies/command.py, modeling/command.py. Its list accepts
    # ring_attn (:28) but nothing runs it: the model forward splits the sequence for
    # split_gather, ring and all_to_all only (:499-506) and the attention calls
    # ColoAttention whatever the mode (:397-399), so every rank attends over the whole
    # sequence, labels unshifted (layer/loss.py:293-298 expects prepare_varlen_batch's):
    # not RingAttention, refused as the modes the family does not run
    colossalai_policy=SP_MODES - {"ring_attn"},
    # policies/command.py:79-84 always replaces CohereAttention.forward: repeat_kv then
    # ColoAttention, enable_flash_attention forced on (modeling/command.py:391-399); it
    # asserts the dict mask of the model forward that :86-98 installs under flash
    # attention or sequence parallelism (without either, transformers' mask fails it)
    colossalai_repeats_kv=frozenset({"flash", "sp"}),
    # the model forward installed under flash or sp forces flash on and builds
    # ColoAttention's mask (policies/command.py:86-98, modeling/command.py:483-492)
    colossalai_builds_mask=frozenset({"flash", "sp"}),
    model_types=("cohere",),
    decoder_layer="CohereDecoderLayer",
    config=llama_map("cohere", LlamaKeys(optional=("attention_bias",), tie=True), _read),
    names=replace(LLAMA_NAMES, norms={1: ("input_layernorm",)}),
    norm_scale_in_fp32=True,
    norm_centres_twice=True,
    qk_norm_switch=QK_NORM_KEY,
    qk_norm_weights="per_head",
    causal_mask_buffer=((COHERE_CAUSAL_MASK_BOOL, 1),),
    rotary_per_layer_releases=QWEN2_ROTARY_PER_LAYER,
    sdpa_float_mask_releases=COHERE_SDPA_FLOAT_MASK,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
    # its own upcast-shifted loss before 4.46 (versions.UPCAST_IN_FORWARD_LOSS)
    own_loss_releases=((UPCAST_IN_FORWARD_LOSS, "upcast-shifted"),),
)
