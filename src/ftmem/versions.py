"""Library releases whose code holds memory differently from the current one.

Each switch names the commit that changed the behaviour and the first release that
shipped it. A version the run does not give means the current release (the one ftmem is
measured with), so an estimate without versions is what it was before these switches.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from ftmem.run import RunConfig

if TYPE_CHECKING:
    from ftmem.arch import Architecture
    from ftmem.precision import Dtypes

# bitsandbytes MatMul4Bit.forward kept the activation it multiplies in `ctx.tensors =
# (A, B)` although backward never uses it (bitsandbytes-foundation/bitsandbytes@0.42.0
# bitsandbytes/autograd/_functions.py MatMul4Bit.forward, same at 0.41.0 and 0.43.1);
# commit 9e753741 "fix QLoRA mem bug: delete useless buffered activation (#1270)" keeps
# `(None, B)`, first released in 0.43.2 (`git tag --contains 9e753741`).
BNB_4BIT_DROPS_INPUT = (0, 43, 2)
# bitsandbytes MatMul8bitLt.forward quantised its input both row- and column-wise
# (`F.double_quant`) and kept the column-wise int8 copy CAt and its fp32 column
# statistics SCAt beside A whenever the input needed a gradient (@0.44.1
# bitsandbytes/autograd/_functions.py MatMul8bitLt.forward: `ctx.tensors = (CAt, subA,
# A)`); commit 81e6345d "LLM.int8() Refactoring: Part 1 (#1401)" computes CAt only when
# the weight needs a gradient (`if ctx.needs_input_grad[1]`), first released in 0.45.0.
BNB_INT8_DROPS_COLUMN_COPY = (0, 45, 0)
# torch AdamW, foreach: `denom = torch._foreach_add(exp_avg_sq_sqrt, eps)` out of place
# (pytorch/pytorch@c263bd43 = v2.0.0, also e9ebda29 = v2.0.1, torch/optim/adamw.py
# _multi_tensor_adamw); PR #104898 "[foreach][AdamW] Minimize intermediates to save
# peak memory" adds eps in place, first in v2.1.0 (@7bcf7da3, same function).
TORCH_ADAMW_INPLACE_DENOM = (2, 1)
# torch.compile of torchao's low-bit AdamW step (single_param_adam, one parameter a call):
# torch 2.5.1's inductor realises the fp32 update ``lr * exp_avg / bias_correction1 /
# denom`` (n values) as a buffer beside the two fp32 moments; torch 2.6.0's keeps it in
# registers. Measured on the CPU, one 2048x1024 bf16 parameter, second step, profiler
# peak: 2.5.1 with torchao 0.6.1 and 0.7.0, 8-bit 12n, 4-bit 32n, FP8 4n (+ the new
# scales); 2.6.0 with torchao 0.7.0, 8n, 28n and 0 (calibration/notes/torchtune.md,
# "Low-precision optimizers"). The inductor commit is not identified: the first release
# measured without the buffer is 2.6.0.
TORCH_INDUCTOR_ADAM_UPDATE_IN_REGISTERS = (2, 6)

# DeepSpeed ZeRO-3 checked the gradients for inf/nan at every step whatever the dtype
# (microsoft/DeepSpeed@e9503fe4 = v0.11.1 deepspeed/runtime/zero/stage3.py
# _overflow_check_and_loss_scale_update l.1843-1846: ``self.check_overflow()``; the same
# at v0.9.5 and v0.10.0); commit 244040c1 "Don't check overflow for bf16 data type
# (#4512)" checks fp16 only (``if self.dtype == torch.float16``), first released in
# v0.11.2 (@f0604078 l.1844-1848).
DEEPSPEED_ZERO3_BF16_SKIPS_OVERFLOW_CHECK = (0, 11, 2)

# DeepSpeed's bf16/fp16 modes cast the whole module, buffers too (``self.module.bfloat16()``,
# deepspeedai/DeepSpeed@7ad41089 deepspeed/runtime/engine.py l.1516-1523); commit b919284a
# "Mixed-precision: per-policy param/buffer dtype cast (preserve fp32 buffers) (#8066)" casts
# the floating parameters only and the buffers only where ``data_types.buffer_dtype`` is
# set (@edaa7221 engine.py _cast_module_mixed_precision l.1537-1550), first released in
# v0.19.2 (``git tag --contains b919284a``).
DEEPSPEED_KEEPS_BUFFER_DTYPE = (0, 19, 2)

# torchao NF4Tensor.double_quantize_scalers: `quantization_factor = 256 / (2 *
# scaler_absmax)` on a scaler_absmax expanded to (n_scaler_blocks, 256) is computed dense,
# one bf16 per block, and `quantization_factor[:, 0]` kept a view of that whole storage
# (pytorch/ao@ff288954 = v0.1 torchao/dtypes/nf4tensor.py, same at v0.2.0); commit
# 9dbc5542 "[NF4][FSDP] return contiguous `quantization_factor` (#298)" returns a
# `.contiguous()` copy of the n_scaler_blocks values, first released in v0.3.0.
TORCHAO_NF4_CONTIGUOUS_FACTOR = (0, 3, 0)

# transformers 4.x builds each MoE expert as its own module of nn.Linears (4.48.1
# models/mixtral/modeling_mixtral.py MixtralBlockSparseTop2MLP: w1, w2, w3 =
# nn.Linear(..., bias=False); MixtralSparseMoeBlock: gate = nn.Linear(hidden, experts),
# experts = nn.ModuleList) and loops over the experts in forward; transformers 5 stores
# them as fused 3-D parameters run by grouped matmuls (5.24 modeling_mixtral.py
# MixtralExperts, integrations/moe.py), which bitsandbytes, replacing nn.Linear modules
# only (4.48.1 integrations/bitsandbytes.py _replace_with_bnb_linear), leaves unquantised.
TRANSFORMERS_FUSED_EXPERTS = (5, 0, 0)

# transformers 5.24's FalconAttention ran its own attention (models/falcon/modeling_falcon.py
# l.323-400: its own q/k/v split and matmuls), measured here as q, k, v upcast to fp32 and
# fp32 probabilities kept; 5.25.0 calls the shared attention interface like Llama's
# (5.25.0 modeling_falcon.py FalconAttention.forward: ``ALL_ATTENTION_FUNCTIONS
# .get_interface(self.config._attn_implementation, eager_attention_forward)``, sdpa by
# default, q/k/v views of the fused projection's output).
TRANSFORMERS_FALCON_ATTENTION_INTERFACE = (5, 25, 0)

# transformers releases whose code registers something, as [first, first without) ranges;
# (0, 0, 0): every release before the second bound.
Releases = tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...]

# Each attention layer's own rotary module registered the cos and sin of every position
# as non-persistent buffers of (max_position_embeddings, rotary dims), computed in fp32
# and cast to torch.get_default_dtype() at construction (from_pretrained sets it to
# torch_dtype while the model is built): 4.37.2 models/llama/modeling_llama.py:134-146
# LlamaRotaryEmbedding._set_cos_sin_cache ``cos_cached``/``sin_cached``, built in
# LlamaAttention._init_rope (:321-323). 4.38.0 and 4.38.1 compute them per forward and
# register none (4.38.0 :94-131); 4.38.2 registers them again "For BC" as
# ``_cos_cached``/``_sin_cached`` (:110-111), as do 4.39.x (:112-113) and 4.40.x (4.40.2
# :112-113); 4.41.0 registers none (every wheel of those tags read for
# ``register_buffer("_cos_cached"``/``("cos_cached"``).
LLAMA_ROTARY_CACHE: Releases = (((0, 0, 0), (4, 38, 0)), ((4, 38, 2), (4, 41, 0)))
# The same tables from MistralRotaryEmbedding._set_cos_sin_cache (4.41.2
# models/mistral/modeling_mistral.py:114-115), absent from 4.42.0.
MISTRAL_ROTARY_CACHE: Releases = (((0, 0, 0), (4, 42, 0)),)
# The same tables in Qwen2 (4.44.2 models/qwen2/modeling_qwen2.py:149-161), StarCoder2
# (modeling_starcoder2.py:126-138), Phi (modeling_phi.py:126-138, over the partial
# rotary dims), StableLM (modeling_stablelm.py:126-138) and Falcon (modeling_falcon.py
# :124-136), every one absent from 4.45.0.
QWEN2_ROTARY_CACHE: Releases = (((0, 0, 0), (4, 45, 0)),)
# Mixtral's (4.47.1 models/mixtral/modeling_mixtral.py MixtralRotaryEmbedding
# ._set_cos_sin_cache), absent from 4.48.0.
MIXTRAL_ROTARY_CACHE: Releases = (((0, 0, 0), (4, 48, 0)),)
# LlamaModel.__init__ registered a (max_position_embeddings, max_position_embeddings)
# ``causal_mask`` buffer: ``torch.full(..., fill_value=1)``, an int64 tensor, in 4.38.0
# and 4.38.1 (models/llama/modeling_llama.py:922-923; GemmaModel the same,
# models/gemma/modeling_gemma.py:815-816), a bool one (``fill_value=True,
# dtype=torch.bool``) in 4.38.2 (:931-934; Gemma :822-825); model.to(dtype) casts
# floating buffers only. 4.39.0 builds the mask per forward instead (LlamaModel
# ._update_causal_mask), but CohereModel, new in 4.39.0, still registers the bool one
# (4.39.0 models/cohere/modeling_cohere.py:830-833), gone from 4.39.1.
LLAMA_CAUSAL_MASK_INT64: Releases = (((4, 38, 0), (4, 38, 2)),)
LLAMA_CAUSAL_MASK_BOOL: Releases = (((4, 38, 2), (4, 39, 0)),)
COHERE_CAUSAL_MASK_BOOL: Releases = (((4, 39, 0), (4, 39, 1)),)

# Each attention layer computed its own cos and sin in its forward, new (1, s, rotary
# dims) tensors in the hidden states' dtype that its rotary multiplies keep: 4.37.2
# models/llama/modeling_llama.py:403 LlamaAttention.forward ``cos, sin =
# self.rotary_emb(value_states, seq_len=kv_seq_len)``, :232 apply_rotary_pos_emb ``cos =
# cos[position_ids]``; 4.42.4 :334 ``self.rotary_emb(value_states, position_ids)``.
# LlamaModel.forward computes them once and passes them to every layer from 4.43.0
# (:918 ``position_embeddings = self.rotary_emb(hidden_states, position_ids)``).
LLAMA_ROTARY_PER_LAYER: Releases = (((0, 0, 0), (4, 43, 0)),)
# The same per layer in Qwen2 (4.44.2 models/qwen2/modeling_qwen2.py:204), StarCoder2, Phi,
# StableLM, Falcon and Cohere; their models compute them once from 4.45.0 (4.45.0
# modeling_qwen2.py:952, the same line in each).
QWEN2_ROTARY_PER_LAYER: Releases = (((0, 0, 0), (4, 45, 0)),)
# The same in Mistral (4.47.1 models/mistral/modeling_mistral.py:234), Mixtral and Gemma;
# once per model from 4.48.0 (4.48.0 modeling_mistral.py:538, modeling_mixtral.py:665).
MISTRAL_ROTARY_PER_LAYER: Releases = (((0, 0, 0), (4, 48, 0)),)


# peft's LoRA wrapper of a GPTQ QuantLinear (peft 0.5.0 src/peft/tuners/lora.py
# QuantLinear.forward, @4df9c5a2): without autocast it casts the adapter's output to the
# base output's dtype before scaling it (`.to(expected_dtype) * scaling`) and adds it in
# place (`result += output`), so no sum tensor exists beside the base output and the
# adapter's; 0.5.0 also clones the base output first (`result = result.clone()`), which
# keeps nothing: CloneBackward saves no tensor and the original is freed when `result` is
# rebound (removed by 6e783780 "MNT: Refactor tuner forward methods for simplicity (#833)",
# first in 0.6.0). Commit e34852f7 "ENH Support Quantization-Aware LoRA with GPTQ (#2571)"
# adds the adapter out of place, `result = result + lora_B(lora_A(dropout(x))) * scaling`,
# in the adapter's dtype (src/peft/tuners/lora/gptq.py GPTQLoraLinear.forward), first
# released in 0.16.0 (`git tag --contains e34852f7`).
PEFT_GPTQ_SUM_OUT_OF_PLACE = (0, 16, 0)
# peft's LoRA Linear adds the adapter's output in place, ``result += lora_B(lora_A(
# dropout(x))) * scaling`` (0.5.0 src/peft/tuners/lora.py Linear.forward, 0.8.0
# src/peft/tuners/lora/layer.py), until 34f3fba2 "Fix for 'leaf Variable that requires grad'
# Error in In-Place Operation (#1372)" writes ``result = result + ...``, first in 0.9.0
# (v0.8.0's layer.py has the in-place line, v0.9.0's the new one).
PEFT_LORA_SUM_OUT_OF_PLACE = (0, 9, 0)
# AdaLoRA's ``ranknum`` is made with requires_grad=False (peft 0.21.2
# src/peft/tuners/adalora/layer.py l.82), but moving the adapter to the base layer's device
# or dtype stores ``item.to(...)`` back into the ParameterDict, which wraps the new tensor
# in an nn.Parameter that requires a gradient (tuners/tuners_utils.py l.2210; torch
# ParameterDict.__setitem__). Until 4ddb88b4 "Refactor state dict handling (#3490)",
# first in 0.20.0, _mark_only_adapters_as_trainable froze every parameter whose name lacks
# "lora_" afterwards (@cea82131 tuners_utils.py l.480-486), ranknum included; since, it
# freezes by the tuner layers' state-dict keys, and ranknum stays trainable: its gradient
# makes the division keep the scaled output (measured, peft 0.21.2). The MetaMathQA
# AdaLoRA run (peft 0.19.2.dev0) counts 18,353,664 trainable of 3,231,103,544: ranknum
# is in the total, not in the trainable count.
PEFT_ADALORA_RANKNUM_TRAINS = (0, 20, 0)


# LlamaRotaryEmbedding.forward kept the cos and sin it last returned on the module "for
# backwards compatibility" (4.38.0 models/llama/modeling_llama.py:127-128 ``self._cos_cached
# = cos``, 4.38.1 the same; gone from 4.38.2, which registers the tables again): each
# layer's (1, s, rotary dims) pair in the value states' dtype stays alive between steps.
LLAMA_LAST_COS_SIN_KEPT: Releases = (((4, 38, 0), (4, 38, 2)),)

# transformers' ForCausalLMLoss of 4.46.0-4.48.x shifts the logits, not the labels:
# ``logits = logits.float()``, ``shift_logits = logits[..., :-1, :].contiguous()`` (an fp32
# copy of the T - b shifted rows), cross_entropy over them, while the model's forward still
# names its 16-bit logits (4.46.0 and 4.48.1, 4.48.3 loss/loss_utils.py:32-48
# ForCausalLMLoss; 4.48.1 models/mistral/modeling_mistral.py:848-860 passes ``logits`` to
# ``self.loss_function`` and returns it). 4.49.0 pads and shifts the labels instead and
# takes the unshifted logits (4.49.0 loss_utils.py ForCausalLMLoss: ``nn.functional.pad``).
TRANSFORMERS_SHIFTED_LOGITS_LOSS: Releases = (((4, 46, 0), (4, 49, 0)),)
# Not every causal LM calls it. GPT-2, Falcon, GPTBigCode and StableLM compute their own
# loss in every release before 4.48.3: ``shift_logits = lm_logits[..., :-1, :]
# .contiguous()`` (a copy of the shifted 16-bit logits, no upcast) into CrossEntropyLoss
# (models/gpt2/modeling_gpt2.py GPT2LMHeadModel.forward: 4.36.2 :1103-1107, 4.40.0
# :1334-1338, 4.45.2 :1345-1349, 4.46.0 :1300, 4.47.1 :1301, 4.48.2 :1090;
# falcon/modeling_falcon.py FalconForCausalLM: 4.36.2 :1308, 4.40.0 :1293, 4.45.2 :1381,
# 4.46.0 :1310, 4.47.1 :1316, 4.48.2 :1232; gpt_bigcode/modeling_gpt_bigcode.py: 4.36.2
# :1277, 4.40.0 :1265, 4.45.2 :1181, 4.46.0 :1183, 4.48.2 :1182; stablelm/modeling_stablelm
# .py StableLmForCausalLM, "No upscaling to float was ever done for StableLm": 4.40.0 :1176,
# 4.45.2 :1239, 4.46.0 :1241, 4.47.1 :1241, 4.48.2 :1161). 4.48.3 passes their logits to
# self.loss_function (gpt2 :1089, falcon :1235, gpt_bigcode :1182, stablelm :1163).
OWN_SHIFTED_LOSS: Releases = (((0, 0, 0), (4, 48, 3)),)
# GPT-NeoX the same (``shift_logits = lm_logits[:, :-1, :].contiguous()``,
# gpt_neox/modeling_gpt_neox.py: 4.36.2 :1053, 4.40.0 :1055, 4.45.2 :1200, 4.46.0 :1200,
# 4.47.1 :1195, 4.48.1 :1133, 4.48.3 :1137) until 4.49.0 moves it to self.loss_function.
GPT_NEOX_OWN_SHIFTED_LOSS: Releases = (((0, 0, 0), (4, 49, 0)),)
# Before 4.46 the Llama-like causal LMs compute their loss in their own forward: they
# upcast the logits (``logits = logits.float()``, every one of them in 4.36-4.44; from
# 4.45 the head's output ``.float()`` and, under labels, ``logits.float()`` again, a
# no-op) and shift an fp32 copy (``shift_logits = logits[..., :-1, :].contiguous()``)
# into CrossEntropyLoss: --loss upcast-shifted, the 16-bit logits dead at the upcast.
# models/<family>/modeling_<family>.py, the upcast and the shift: llama 4.36.2 :1200,
# :1205, 4.37.2 :1202, :1207, 4.40.0 :1228, :1233, 4.45.2 :1214, :1219, :1221; mistral
# 4.36.2 :1067, :1072, 4.40.0 :1172, :1177, 4.45.2 :1059, :1064, :1066; mixtral 4.36.2
# :1237, :1242, 4.40.0 :1374, :1379, 4.45.2 :1304, :1309, :1311; gemma 4.40.0 :1133, :1137,
# 4.45.2 :1089, :1094, :1096; gemma2 4.45.2 :1073, :1077, :1079 (soft-capped in 16 bits
# first, :1067-1070); phi 4.36.2 :1054, :1059, 4.40.0 :1183, :1188, 4.45.2 :1255, :1260,
# :1262; phi3 4.45.2 :1285, :1290, :1292; qwen2 4.40.0 :1183, :1188, 4.45.2 :1187, :1192,
# :1194; cohere 4.40.0 :1150, :1155 (scaled by logit_scale in 16 bits first, :1149),
# 4.45.2 :1178, :1184, :1186 (scaled after the upcast, :1179; the scale's own copy is not
# modelled in any release); starcoder2 4.40.0 :1163, :1168, 4.45.2 :1163, :1168, :1170;
# granite 4.45.2 :1103, :1108; olmoe 4.45.2 :1290, :1292 (under labels only, :1288).
# 4.46.0 passes them to self.loss_function (TRANSFORMERS_SHIFTED_LOGITS_LOSS), but for
# Granite and Mistral in 4.46-4.47 and StarCoder2 in 4.46.x, whose forwards keep the
# upcast and the shift (4.46.0 and 4.47.1 models/granite/modeling_granite.py:1108-1110;
# models/mistral/modeling_mistral.py 4.46.0 :1085-1087, 4.47.1 :1090-1092, 4.48.0 calls
# self.loss_function; models/starcoder2/modeling_starcoder2.py 4.46.0 :1159-1161, 4.46.3
# the same, 4.47.0 calls self.loss_function; granite 4.48.1 :866). OLMo 2 (4.47.0) and
# GLM (4.46.0) came with self.loss_function.
UPCAST_IN_FORWARD_LOSS: Releases = (((0, 0, 0), (4, 46, 0)),)
GRANITE_OWN_UPCAST_LOSS: Releases = (((0, 0, 0), (4, 48, 0)),)
MISTRAL_OWN_UPCAST_LOSS: Releases = (((0, 0, 0), (4, 48, 0)),)
STARCODER2_OWN_UPCAST_LOSS: Releases = (((0, 0, 0), (4, 47, 0)),)
# --loss upcast-shifted names the releases before 4.46 when no version is given: the last
# of them is where a family's own loss there is looked up (model_own_loss).
LAST_OWN_FORWARD_LOSS_RELEASE = "4.45.2"
# The image-text models compute their own loss until 4.52 (Mllama until 4.49), keyed by
# their projector (VisionTower.projector names the outer model: a LLaVA may hold a SigLIP
# encoder). LLaVA ("mlp") selects the attended rows: ``shift_logits = logits[..., :-1,
# :][shift_attention_mask != 0].contiguous()`` into CrossEntropyLoss
# (models/llava/modeling_llava.py 4.36.2 :450-459, 4.40.0 :494-503, 4.45.2 :539-548,
# 4.46.0 :562-571, 4.47.1 :567-576, 4.48.3 :510-519, 4.49.0 :455-464, 4.50.0 and 4.51.0
# :454-463; 4.52.1 :463 calls self.loss_function). Its language model is called without
# labels: before 4.46 the Llama-like ones upcast their logits whatever the labels (llama
# 4.36.2 :1200, 4.40.0 :1228, 4.45.2 :1214's ``lm_head(...).float()``; UPCAST_IN_FORWARD_
# LOSS), so the selection copies fp32 rows (the upcast-shifted loss; the 16-bit shifted one
# over a family that never upcast: OWN_SHIFTED_LOSS); from 4.46 the logits stay 16-bit (the
# shifted loss). Mistral 3 ("mistral3") is LLaVA's 4.46+ code (models/mistral3/
# modeling_mistral3.py 4.50.0 and 4.51.0 :497-501; 4.52.1 :498 self.loss_function).
# Qwen2-VL and Qwen2.5-VL ("merger") upcast, then shift (``logits = logits.float()``,
# ``logits[..., :-1, :].contiguous()``: qwen2_vl/modeling_qwen2_vl.py 4.45.2 :1720, :1725,
# 4.46.0 :1740-1742, 4.47.1 :1741-1743, 4.48.3 :1719-1721, 4.49.0 :1752-1754, 4.50.0
# :1750-1752, 4.51.0 :1722-1724; qwen2_5_vl 4.49.0 :1882-1884, 4.51.0 :1844-1846; 4.52.1
# self.loss_function, qwen2_vl :1803, qwen2_5_vl :1931). Mllama ("linear") upcasts in its
# head and shifts the fp32 logits (mllama/modeling_mllama.py 4.45.2 :1946, :1953), then
# hands ForCausalLMLoss those fp32 logits (4.46.0 :1949-1953, 4.48.3 :1953-1957): no 16-bit
# logits beside the copy, the upcast-shifted loss until 4.49's loss (no copy). Gemma 3
# ("pooled") upcasts and selects the attended rows as LLaVA does; from 4.52 its own
# ``self.lm_head`` output is rebound by ``logits = logits.float()``, so the 16-bit logits
# die at the upcast: the upcast-shifted loss (gemma3/modeling_gemma3.py 4.52.1 :1365-1377,
# 4.53.0 :1103-1116, 4.57.0 :1120-1133; 4.58 on not read; 5.25.0 calls
# self.loss_function). Not modelled: Gemma 3 in 4.50 and 4.51, where ``outputs`` (its
# language model's) still holds the 16-bit logits beside their fp32 copy and the fp32
# rows (4.50.0 :1365-1376, 4.51.0 :1339-1350). The selection copies even for one sequence
# (boolean indexing: masked_shift) and takes the attended rows only.
VisionLoss = tuple[tuple[Releases, Literal["shifted", "upcast-shifted"]], ...]
VISION_OWN_LOSS: dict[str, VisionLoss] = {
    "mlp": ((UPCAST_IN_FORWARD_LOSS, "upcast-shifted"), ((((4, 46, 0), (4, 52, 0)),), "shifted")),
    "mistral3": (((((4, 50, 0), (4, 52, 0)),), "shifted"),),
    "merger": (((((0, 0, 0), (4, 52, 0)),), "upcast-shifted"),),
    "linear": (((((0, 0, 0), (4, 49, 0)),), "upcast-shifted"),),
    "pooled": (((((4, 52, 0), (4, 58, 0)),), "upcast-shifted"),),
}

_RELEASE = re.compile(r"\s*(\d+)\.(\d+)(?:\.(\d+))?")


def release(version: str | None) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a version string such as "0.43.1" or "2.1.0+cu121";
    None when not given or unreadable."""
    match = _RELEASE.match(version or "")
    if not match:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


# transformers 4.53 builds masks in masking_utils.py: a boolean (b, 1, s, s) mask that sdpa
# converts to an additive one per call, so each layer's kernel keeps its own
# (ops.attention.sliding_window_mask). Before, the model built one float 4-D mask
# (modeling_attn_mask_utils.py) passed to every layer as is: not modelled for the window.
BOOL_MASKS_PER_CALL = (4, 53)


def older_than(version: str | None, first_fixed: tuple[int, ...]) -> bool:
    """Whether a given version predates the release ``first_fixed``."""
    parsed = release(version)
    return parsed is not None and parsed < (*first_fixed, 0, 0)[:3]


def within(version: str | None, releases: Releases) -> bool:
    """Whether a given version lies in one of ``releases``' [first, first without) ranges;
    False when no version is given (the current release)."""
    parsed = release(version)
    return parsed is not None and any(lo <= parsed < hi for lo, hi in releases)


def shifted_logits_loss(run: RunConfig) -> bool:
    """transformers' own causal-LM loss (``--loss standard``, supervised finetuning) shifts
    an fp32 copy of the logits beside the 16-bit ones (transformers 4.46-4.48)."""
    return (
        run.loss == "standard"
        and run.objective == "sft"
        and within(run.transformers_version, TRANSFORMERS_SHIFTED_LOGITS_LOSS)
    )


def model_own_loss(
    arch: Architecture, run: RunConfig
) -> Literal["shifted", "upcast-shifted"] | None:
    """The loss a model computes in its own forward where ftmem's loss for the run is not
    what that forward does (the family's ``own_loss_releases``: OWN_SHIFTED_LOSS,
    GPT_NEOX_OWN_SHIFTED_LOSS, UPCAST_IN_FORWARD_LOSS, ...; the image-text models'
    VISION_OWN_LOSS): for ``--loss standard`` at the run's release; for ``--loss
    upcast-shifted`` (transformers < 4.46's forward: 4.45.2 where no release is given),
    the 16-bit shifted loss of the families that never upcast. None elsewhere."""
    if run.objective != "sft":
        return None
    if run.loss == "upcast-shifted":
        version = run.transformers_version or LAST_OWN_FORWARD_LOSS_RELEASE
        own = _family_own_loss(arch, version)
        return "shifted" if arch.vision is None and own == "shifted" else None
    if run.loss != "standard" or run.transformers_version is None:
        return None
    if arch.vision is not None:
        return _vision_own_loss(arch, arch.vision.projector, run.transformers_version)
    return _family_own_loss(arch, run.transformers_version)


def _vision_own_loss(
    arch: Architecture, projector: str, version: str
) -> Literal["shifted", "upcast-shifted"] | None:
    """The image-text model's own loss at ``version`` (VISION_OWN_LOSS): LLaVA's fp32
    rows are 16-bit ones over a text family that never upcast (OWN_SHIFTED_LOSS)."""
    for releases, loss in VISION_OWN_LOSS.get(projector, ()):
        if within(version, releases):
            upcasts = _family_own_loss(arch, version) != "shifted"
            return loss if upcasts or projector != "mlp" else "shifted"
    return None


# the image-text models whose own loss selects the attended shifted rows with a boolean
# index (``logits[..., :-1, :][shift_attention_mask != 0]``: LLaVA's, Mistral 3's and
# Gemma 3's lines in VISION_OWN_LOSS's comment); Qwen2-VL and Mllama take a plain slice
MASKED_SHIFT_PROJECTORS = frozenset({"mlp", "mistral3", "pooled"})


def masked_shift(arch: Architecture, run: RunConfig) -> bool:
    """The run's shifted loss is the image-text model's own, which selects the attended
    shifted rows with a boolean index: a copy at any batch, one sequence's too (an
    advanced index always allocates; measured: tests/test_shifted_logits_loss.py). For
    ``--loss standard`` resolved at the run's release, and for ``--loss upcast-shifted``
    (transformers < 4.46's forward: 4.45.2 where no release is given)."""
    if arch.vision is None or arch.vision.projector not in MASKED_SHIFT_PROJECTORS:
        return False
    if run.objective != "sft" or run.loss not in ("shifted", "upcast-shifted"):
        return False
    version = run.transformers_version
    if version is None and run.loss == "upcast-shifted":
        version = LAST_OWN_FORWARD_LOSS_RELEASE
    own = None if version is None else _vision_own_loss(arch, arch.vision.projector, version)
    return own == run.loss


# Mllama's language model (MllamaForCausalLM) upcasts in its head, ``logits =
# self.lm_head(...).float()``, and from 4.49 hands those fp32 logits to ForCausalLMLoss,
# whose ``logits.float()`` then copies nothing (mllama/modeling_mllama.py 4.49.0
# :1963-1967 and 4.50.0 :1973-1977, MllamaForConditionalGeneration passing the labels
# down; 4.51.0 :1947 and :2148, the loss in the outer class on the same fp32 logits).
# 4.52.1 gives MllamaForConditionalGeneration its own 16-bit ``self.lm_head`` (:1918-1922):
# the standard loss again.
MLLAMA_FP32_HEAD_LOSS: Releases = (((4, 49, 0), (4, 52, 0)),)


def head_upcasts(arch: Architecture, run: RunConfig) -> bool:
    """The standard loss runs on logits the model's head already made fp32 (Mllama in
    MLLAMA_FP32_HEAD_LOSS's releases): no 16-bit logits beside the loss's fp32 ones."""
    if arch.vision is None or arch.vision.projector != "linear":
        return False
    standard = run.loss == "standard" and run.objective == "sft"
    return standard and within(run.transformers_version, MLLAMA_FP32_HEAD_LOSS)


def _family_own_loss(
    arch: Architecture, version: str
) -> Literal["shifted", "upcast-shifted"] | None:
    """The family's own loss at ``version`` (Family.own_loss_releases)."""
    for releases, loss in arch.traits.own_loss_releases:
        if within(version, releases):
            return loss
    return None


def bnb_runs_quantised_linears(run: RunConfig) -> bool:
    """bitsandbytes runs the quantised linears, except under torchtune, whose NF4 base is
    torchao's NF4Tensor (pytorch/torchtune torchtune/modules/peft/lora.py LoRALinear)."""
    return run.framework != "torchtune"


def bnb_4bit_keeps_input(run: RunConfig) -> bool:
    """A 4-bit linear keeps its input until backward (bitsandbytes < 0.43.2)."""
    return bnb_runs_quantised_linears(run) and older_than(run.bnb_version, BNB_4BIT_DROPS_INPUT)


def bnb_int8_keeps_column_copy(run: RunConfig) -> bool:
    """An int8 linear keeps a column-wise int8 copy of its input (bitsandbytes < 0.45)."""
    return bnb_runs_quantised_linears(run) and older_than(
        run.bnb_version, BNB_INT8_DROPS_COLUMN_COPY
    )


def nf4_layout(run: RunConfig) -> str:
    """Whose NF4 storage the quantised weights have: bitsandbytes' (dtypes.py), torchao's
    NF4Tensor under torchtune, or torchao < 0.3's, which keeps a scale factor per block."""
    if bnb_runs_quantised_linears(run):
        return "bitsandbytes"
    if older_than(run.torchao_version, TORCHAO_NF4_CONTIGUOUS_FACTOR):
        return "torchao-factor-per-block"
    return "torchao"


def torch_adamw_denom_out_of_place(run: RunConfig) -> bool:
    """foreach AdamW allocates its denominator beside the square root (torch < 2.1)."""
    return older_than(run.torch_version, TORCH_ADAMW_INPLACE_DENOM)


def torchao_step_keeps_update(run: RunConfig) -> bool:
    """torchao's compiled low-bit AdamW step keeps its fp32 update as an n-value buffer
    (torch < 2.6)."""
    return older_than(run.torch_version, TORCH_INDUCTOR_ADAM_UPDATE_IN_REGISTERS)


def zero3_checks_overflow(run: RunConfig, model_dtype: str) -> bool:
    """DeepSpeed ZeRO-3 checks its flat gradient buffer for inf/nan at each step: an fp16
    model in every release, any other before 0.11.2."""
    return model_dtype == "fp16" or older_than(
        run.deepspeed_version, DEEPSPEED_ZERO3_BF16_SKIPS_OVERFLOW_CHECK
    )


def deepspeed_keeps_buffer_dtype(run: RunConfig) -> bool:
    """DeepSpeed's 16-bit modes cast the parameters and keep the buffers' dtype (0.19.2 on;
    earlier releases cast both)."""
    return not older_than(run.deepspeed_version, DEEPSPEED_KEEPS_BUFFER_DTYPE)


def per_expert_linears(run: RunConfig) -> bool:
    """MoE experts are nn.Linear modules, one per expert (transformers < 5)."""
    return older_than(run.transformers_version, TRANSFORMERS_FUSED_EXPERTS)


def rotary_tables_per_layer(arch: Architecture, run: RunConfig) -> bool:
    """Every layer builds and keeps its own cos and sin, and the model shares none: the
    family's code in every release (GLM-4's interleaved tables), or the run's transformers
    release for this family (Family.rotary_per_layer_releases)."""
    if arch.position_embedding != "rotary":
        return False
    traits = arch.traits
    return traits.rotary_tables_per_layer or within(
        run.transformers_version, traits.rotary_per_layer_releases
    )


def adalora_ranknum_trains(run: RunConfig, dtypes: Dtypes) -> bool:
    """Whether AdaLoRA's ranknum requires a gradient: from peft 0.20 where the adapter was
    moved to another device (a GPU: peft makes it on the CPU) or cast to the base's
    16-bit dtype (PEFT_ADALORA_RANKNUM_TRAINS)."""
    if run.method != "adalora" or older_than(run.peft_version, PEFT_ADALORA_RANKNUM_TRAINS):
        return False
    return run.device != "cpu" or dtypes.base != "fp32"


def peft_gptq_adds_in_place(run: RunConfig) -> bool:
    """peft's LoRA on an int4 (GPTQ) base casts the adapter's output to the base's dtype
    and adds it in place (peft < 0.16)."""
    return run.quant_format == "int4" and older_than(run.peft_version, PEFT_GPTQ_SUM_OUT_OF_PLACE)


# transformers' sdpa path copies GQA keys and values to every query head before the kernel
# (which keeps the copies for backward) in every 4.x release before 4.54.0: 4.37.2
# models/llama/modeling_llama.py:711-712 LlamaSdpaAttention.forward ``key_states =
# repeat_kv(key_states, self.num_key_value_groups)`` (4.39.3 :655-656), and from 4.48.0
# integrations/sdpa_attention.py:30-31 sdpa_attention_forward (same at 4.53.0 :41-42),
# which every sdpa family of 4.48+ calls through ALL_ATTENTION_FUNCTIONS. 4.54.0
# integrations/sdpa_attention.py:27-32,53-57 passes ``enable_gqa=True`` instead when
# use_gqa_in_sdpa (torch >= 2.5 and ``attention_mask is None``): the unpadded training case.
TRANSFORMERS_SDPA_ENABLE_GQA = (4, 54, 0)
# The releases whose GQA sdpa path ops.nograd_requests derives, repeat included:
# LlamaSdpaAttention.forward of 4.36-4.47 (4.37.2 models/llama/modeling_llama.py:667-743;
# Mistral's the same, models/mistral/modeling_mistral.py:648-700): q, k, v, the rotary,
# ``repeat_kv`` of the keys, then of the values (:712-713: expand, reshape, a copy as wide
# as q), ``.contiguous()`` only under an explicit mask on CUDA (:723-726), sdpa, the
# output's ``transpose(1, 2).contiguous()`` (:738, a view of the kernels' (b, s, h, d)
# output), o_proj; 4.40.0 (:655-667), 4.44.2 (:642-654) and 4.47.1 (:548-560) the same
# lines. From 4.48.0 to 4.53 integrations/sdpa_attention.py sdpa_attention_forward repeats
# them in its own frame (the caller keeps the unrepeated ones) and copies the query
# (TRANSFORMERS_SDPA_CONTIGUOUS). Not derived: 4.38-4.39's float mask
# (LLAMA_SDPA_FLOAT_MASK; Mistral's 4.38-4.39 not read).
SDPA_REPEAT_KV_DERIVED: Releases = (((4, 36, 0), (4, 38, 0)), ((4, 40, 0), (4, 54, 0)))
# transformers' sdpa_attention_forward makes the kernel's inputs contiguous whatever the
# mask: ``query = query.contiguous()``, ``key = ...``, ``value = ...`` (4.48.0
# integrations/sdpa_attention.py:39-41, "SDPA with memory-efficient backend is bugged with
# non-contiguous inputs and custom attn_mask for some torch versions"; 4.51.3 :39-41,
# 4.53.0 :49-51, 4.54.0 :64-66, 4.55.4 :72-74), which the attention of Llama, Mistral,
# Mixtral, Qwen2, Gemma, Gemma-2, Cohere, GLM, Granite, OLMo-2, Phi, Phi-3 and StarCoder2
# picks from ALL_ATTENTION_FUNCTIONS from 4.48.0 on (models/*/modeling_*.py), as do Qwen3,
# Qwen3-MoE, Gemma 3, GLM-4, SmolLM3 and EXAONE 4 from their first release
# (Family.sdpa_contiguous_releases; GPT-2's and GPTBigCode's kept views are not derived,
# Falcon, OLMoE and StableLM keep their own attention). The rotary q and k (laid out (b, s, h, d)
# under their (b, h, s, d) view: the products follow the projection's view) and v (a
# transposed view) are not contiguous, so each is copied; ``.contiguous()`` of repeat_kv's
# output returns it. huggingface/transformers#40315 "Remove unnecessary contiguous calls
# for modern torch" drops the three lines, first released in 4.56.0 (4.56.0 :93 keeps only
# the output's). Before 4.48 the copies were made only under a mask on CUDA (4.47.1
# models/llama/modeling_llama.py:557-560 ``if query_states.device.type == "cuda" and
# causal_mask is not None``; mistral, qwen2 the same).
TRANSFORMERS_SDPA_CONTIGUOUS: Releases = (((4, 48, 0), (4, 56, 0)),)
# Families whose attention picked sdpa_attention_forward from ALL_ATTENTION_FUNCTIONS only
# from a later release (the 4.48.0, 4.49.0, 4.50.0, 4.51.3, 4.52.0, 4.53.0, 4.54.0 and
# 4.55.4 wheels read): GPT-NeoX from 4.49.0 (4.48.0 models/gpt_neox/modeling_gpt_neox.py
# has its own sdpa class), Mllama's text model from 4.52.0 (4.51.3 its own).
GPT_NEOX_SDPA_CONTIGUOUS: Releases = (((4, 49, 0), (4, 56, 0)),)
MLLAMA_SDPA_CONTIGUOUS: Releases = (((4, 52, 0), (4, 56, 0)),)
# LlamaModel._update_causal_mask gives sdpa an explicit float causal mask in every forward,
# padded or not: 4.38.x builds it from the (max_pos, max_pos) causal_mask buffer
# (4.38.2 models/llama/modeling_llama.py:1074 ``self.causal_mask[None, None, :, :].repeat(
# batch_size, 1, 1, 1).to(dtype) * min_dtype``, dtype = inputs_embeds') and each layer
# indexes it with cache_position (:662 ``causal_mask[:, :, cache_position, :
# key_states.shape[-2]]``, advanced indexing: a new (b, 1, s, s) tensor per layer); 4.39.x
# builds an (s, s) one (4.39.3 :1074-1078 torch.full + triu, expanded to the batch and
# ``clone()``d when an attention_mask is passed) that each layer slices as a view (:661).
# 4.40.0 leaves the mask to sdpa's causal flag when nothing is padded (:1076
# AttentionMaskConverter._ignore_causal_mask_sdpa). Gemma the same (4.38.0
# models/gemma/modeling_gemma.py:546, 4.39.3 :564); Cohere from 4.39.0 (:562).
LLAMA_SDPA_FLOAT_MASK: Releases = (((4, 38, 0), (4, 40, 0)),)
COHERE_SDPA_FLOAT_MASK: Releases = (((4, 39, 0), (4, 40, 0)),)
# 4.38.x: the per-layer mask is an advanced-indexing copy of the model-level one.
SDPA_MASK_INDEXED_PER_LAYER: Releases = (((4, 38, 0), (4, 39, 0)),)


def sdpa_repeats_kv(arch: Architecture, run: RunConfig) -> bool:
    """transformers < 4.54 copies GQA keys and values per head before sdpa (one kv head
    repeats as a stride-0 view, no copy; as many kv heads as heads need no repeat)."""
    gqa = 1 < arch.kv_heads < arch.num_heads
    return (
        gqa
        and run.attn == "sdpa"
        and older_than(run.transformers_version, TRANSFORMERS_SDPA_ENABLE_GQA)
    )


def sdpa_inputs_copied(arch: Architecture, run: RunConfig) -> bool:
    """transformers 4.48-4.55 copies the query, keys and values to contiguous tensors
    before sdpa, in the releases whose attention for this family calls the shared
    sdpa_attention_forward (Family.sdpa_contiguous_releases; TRANSFORMERS_SDPA_CONTIGUOUS)."""
    releases = arch.traits.sdpa_contiguous_releases
    return run.attn == "sdpa" and within(run.transformers_version, releases)


def sdpa_float_causal_mask(arch: Architecture, run: RunConfig) -> bool:
    """transformers 4.38-4.39 passes sdpa an explicit float causal mask (Llama, Gemma,
    Cohere: Family.sdpa_float_mask_releases), so the kernel keeps a mask and the flash
    backend is not eligible."""
    releases = arch.traits.sdpa_float_mask_releases
    return run.attn == "sdpa" and within(run.transformers_version, releases)


# transformers before 4.52 checkpoints each decoder layer from the model's loop, around
# the layer's whole call: 4.48.1 models/llama/modeling_llama.py:577
# ``self._gradient_checkpointing_func(decoder_layer.__call__, hidden_states, ...)``, with
# ``{"use_reentrant": True}`` unless the run passes other kwargs (modeling_utils.py:2539);
# 4.51.3 the same (:559). 4.52.0 makes the layer a GradientCheckpointingLayer
# (modeling_layers.py) that checkpoints inside its own __call__ (modeling_llama.py:281),
# the loop calling ``decoder_layer(...)``. Under FSDP1 the decoder layer is the unit, so
# before 4.52 the reentrant checkpoint wraps the unit's forward (FSDP's hooks run under
# its no_grad, then again in the recompute); from 4.52 it runs inside the unit.
TRANSFORMERS_CHECKPOINT_INSIDE_LAYER = (4, 52, 0)


# GPTBigCode before transformers 4.53 ran its checkpointed blocks with the config's
# use_cache (True by default, and in SantaCoder's and StarCoder's config.json): 4.48.1
# models/gpt_bigcode/modeling_gpt_bigcode.py GPTBigCodeModel.forward l.849 takes
# ``self.config.use_cache``, passes it to ``self._gradient_checkpointing_func(block.__call__,
# ..., use_cache, ...)`` (l.980-990) and keeps ``presents.append(outputs[1])`` (l.1005-1006);
# each present is ``key_value``, a view of c_attn's output (GPTBigCodeAttention.forward
# l.247-253, the flash path l.322-328), returned in the model's output. Neither the model
# nor HF Trainer turns it off (4.48.1 trainer.py sets use_cache False for XLA's FSDP only,
# l.1991-1995); 4.52.1 and 4.52.4 the same. 4.53.0 sets ``use_cache = False`` under
# gradient checkpointing in GPTBigCodeModel.forward and makes the block a
# GradientCheckpointingLayer (the 4.48.1, 4.52.1, 4.52.4, 4.53.0 and 4.53.3 wheels read).
GPT_BIGCODE_CHECKPOINTED_CACHE: Releases = (((0, 0, 0), (4, 53, 0)),)


def checkpointed_blocks_return_cache(arch: Architecture, run: RunConfig) -> bool:
    """Each block checkpointed by transformers' own loop returns its key/value cache, a
    view that keeps its fused projection's whole output until the model's output is
    dropped (Family.checkpointed_cache_releases)."""
    return run.grad_ckpt and within(
        run.transformers_version, arch.traits.checkpointed_cache_releases
    )


# HF Trainer's FSDP when the run's fsdp_config names no version: FSDP1 before transformers
# 5.10 (5.9.0 training_args.py:2812 ``int(self.fsdp_config.get("version", 1))``; 4.x hands
# FSDP to accelerate, whose plugin defaults to ``fsdp_version`` 1: accelerate 1.16
# utils/dataclasses.py:1709-1710; 1.0.1 has no fsdp_version, FSDP1 alone), FSDP2 from it (5.10.1
# training_args.py:2736 ``get("version", 2)``, huggingface/transformers#45640; 5.25.0 :2826)
TRANSFORMERS_FSDP2_DEFAULT = (5, 10, 0)


# Where TrainingArguments turns FSDP on (``fsdp``) and the script is started by ``accelerate
# launch`` with an FSDP config, which one names the FSDP version: transformers 4.x sets
# the plugin's FSDP_* environment variables from ``fsdp_config``, no version among them
# (4.57.6 training_args.py:2003-2043), so the plugin takes the launcher's FSDP_VERSION
# (accelerate 1.16 utils/dataclasses.py:1709-1710, utils/launch.py:281); 5.0.0 passes
# ``fsdp_version`` among its fsdp_plugin_args (5.0.0 training_args.py:2753-2754, the
# Trainer's ``FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)``
# trainer.py:5059-5062; 5.25.0 training_args.py:2826-2827, trainer.py:852-855), so its
# own version or default wins over the launcher's.
TRANSFORMERS_FSDP_PLUGIN_ARGS = (5, 0, 0)


def training_args_name_fsdp_version(transformers_version: str | None) -> bool:
    """TrainingArguments' ``fsdp_config`` names the FSDP version over the launcher's."""
    return not older_than(transformers_version, TRANSFORMERS_FSDP_PLUGIN_ARGS)


def hf_trainer_fsdp_version(run: RunConfig) -> int:
    """The torch FSDP HF Trainer shards with by default at the run's transformers release."""
    return 1 if older_than(run.transformers_version, TRANSFORMERS_FSDP2_DEFAULT) else 2


# HF Trainer hands a peft model's FSDP plugin peft's auto-wrap policy before accelerate
# wraps it (peft 0.21.2 utils/other.py:1271-1308 fsdp_auto_wrap_policy: each leaf module
# with a trainable weight a unit of its own, beside the _no_split_modules layers):
# Trainer._fsdp_qlora_plugin_updates, first in 4.39.0 (4.38.2's trainer.py has none;
# 4.39.0 trainer.py:1920-1922 under delay_optimizer_creation, :4310-4317 for a
# LoraConfig, any PeftConfig from 4.50.0 :5208), in 5.x update_fsdp_plugin_peft (5.25.0
# distributed/fsdp.py:267-279, called at trainer.py:1774-1777). Under FSDP2 it is not
# called from 4.51.0 (4.51.0 trainer.py:2317-2319, 5.25.0 :1735-1737: ``is_fsdp2`` turns
# delay_optimizer_creation off), so FSDP2 keeps each adapter in its decoder layer's unit
# (accelerate 1.16 utils/fsdp_utils.py:940-995 fsdp2_prepare_auto_wrap_policy).
TRANSFORMERS_FSDP_PEFT_POLICY = (4, 39, 0)


def hf_trainer_wraps_peft_leaves(run: RunConfig) -> bool:
    """HF Trainer at the run's transformers release gives FSDP1 peft's auto-wrap policy."""
    return not older_than(run.transformers_version, TRANSFORMERS_FSDP_PEFT_POLICY)


def checkpoint_wraps_decoder_unit(run: RunConfig) -> bool:
    """The decoder loop checkpoints each layer's whole call with torch's reentrant
    checkpoint (transformers < 4.52, the run's framework checkpointing through it)."""
    return (
        run.grad_ckpt
        and not run.activation_offload
        and older_than(run.transformers_version, TRANSFORMERS_CHECKPOINT_INSIDE_LAYER)
    )
