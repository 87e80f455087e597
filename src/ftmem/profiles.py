"""The training frameworks' own code paths, where they differ from HF Trainer + PEFT
over transformers (the path ftmem's defaults describe).

A profile is data, like a model family (families/): each field names one mechanism by
which the framework's step holds memory differently, with the source it comes from
(repository, file, commit). The core reads ``profile_of(run)`` and never names a
framework. ``RunConfig.framework`` chooses the profile; ``--from`` sets it from the
config it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ftmem.arch import Architecture, as_trained
from ftmem.run import Padding, RunConfig
from ftmem.versions import model_own_loss
from ftmem.vision import for_image_size

# How a framework puts the checkpoint on the GPU (ftmem.run_phases.quantise_transient)
Loading = Literal["hf", "fabric-bnb", "torchao-nf4"]


@dataclass(frozen=True, slots=True)
class Profile:
    """One framework's code path; the defaults are HF Trainer's."""

    name: str
    notes: tuple[str, ...] = ()  # what the estimate says of this path
    # What the framework's own memory figure covers when --peak-of is not given: "run"
    # (no reset_peak_memory_stats before training: loading, evaluation... are in it) or
    # "step". HF Trainer: its memory metrics span the whole trainer.train()
    # (transformers src/transformers/trainer_utils.py TrainerMemoryTracker; the
    # ``train_mem_gpu_peaked_delta`` telescopes, calibration/notes/fms.md) and
    # nvidia-smi the whole job; peft's method_comparison reads max_memory_reserved once at
    # the end (peft@5d602fdb method_comparison/MetaMathQA/run.py main).
    peak_of: Literal["step", "run"] = "run"
    loading: Loading = "hf"
    # the checkpoint is loaded into parameters quantised at init: each quantised again
    # and replaced (ftmem.gpu.trace replays the second pass)
    requantises_on_load: bool = False
    # runs validate() / generates a sample inside the measured window by default
    evaluates: bool = False  # HF TrainingArguments.eval_strategy defaults to "no"
    generates: bool = False
    # compile=True compiles each decoder layer on its own graph, nothing around it: what
    # a layer keeps is then inductor's min-cut partitioner's choice (ops/norm.py,
    # ops/mlp.py); the embedding, final norm, LM head and loss stay eager
    compiles_layers: bool = False
    # the model is loaded onto the GPU (device_map) and never moved after get_peft_model:
    # buffers peft's layers register then stay on the host (BOFT's boft_P: peft
    # tuners_utils.py _replace_module moves only modules named with the adapter prefix)
    peft_buffers_on_host: bool = False
    # LoRA-FA's lora_A gets its requires_grad back before training (the loop runs a pass
    # under peft's disable_adapter(), whose exit re-enables every active adapter layer)
    lora_fa_a_regains_grad: bool = False
    # compile=True with the chunked loss compiles only one chunk's upcast + cross-entropy
    # (ops/loss.py): the chunk's 16-bit logits are kept instead of a fp32 log-softmax
    compiles_chunked_loss: bool = False
    # activation offload covers the model's forward but not its LM head nor the loss:
    # their saved tensors stay on the GPU, nothing of them is brought back (step.py)
    offload_keeps_head: bool = False
    # The LM head runs over pieces of this many positions, each piece's logits a tensor
    # of its own, and the cross-entropy takes one piece at a time (None: one matmul)
    lm_head_chunk_tokens: int | None = None
    # methods whose training script calls the model without chunking the head
    unchunked_methods: tuple[str, ...] = ()
    # the rows one cross-entropy call takes when the head was not chunked
    loss_chunk_rows: int | None = None
    # the model's output is cast to fp32 and the training loop holds it (the variable
    # it is assigned to) from the forward's return until the next forward returns
    logits_fp32_held: bool = False
    # the loop's ``loss`` keeps the last pass's graph (its root node) until the next
    # pass's loss is assigned: what ctx attributes hold lives through that forward
    loss_held_into_next_forward: bool = False
    # the upcast-shifted loss is the loop's own (the model returns fp32 logits): the
    # loop's ``logits`` keeps the shifted fp32 copy until its next forward returns, and
    # hands it to CrossEntropyLoss transposed to (b, V, s - 1), whose log_softmax on CUDA
    # copies its non-contiguous input first (Loss.loop_shifted_copy, ops.loss_requests)
    loop_shifted_loss: bool = False
    # the loop keeps the model's output (its logits: Loss.output_logits) from the forward
    # through the backward and the optimizer step, and drops it before the next forward
    output_held_through_step: bool = False
    # the loop keeps the model's whole output (``outputs = model(...)``) until the next
    # forward has returned: its logits and, without checkpointing, the DynamicCache
    # transformers builds in a training forward (step.loop_output)
    output_held_into_next_forward: bool = False
    # how the framework's batches are padded when the run does not say (RunConfig.padding):
    # "longest" pads each batch of several sequences to its longest and passes the
    # attention mask, so sdpa gets an explicit mask (ops/attention.padding_mask)
    padding: Padding = "none"
    # None: as config.json says (tie_word_embeddings); False: a separate LM head
    ties_lm_head: bool | None = None
    # QLoRA quantises the LM head as well (every nn.Linear), not only the blocks'
    quantizes_lm_head: bool = False
    # the framework's own MLP takes the tanh-GELU in one kernel, where transformers writes
    # it out op by op for some families (ops/mlp.written_out_gelu)
    gelu_one_kernel: bool = False
    # bytes per weight element alive while a 4-bit matmul runs (its dequantised copy and
    # the copy's cast to the compute dtype); 0: bitsandbytes' own Linear4bit on CUDA, the
    # copy in the 4-bit compute dtype (ops/linear.py bnb_dequant_bytes)
    dequant_copy_bytes: int = 0
    # the framework's rotary module registers an fp32 cos/sin cache for every position,
    # a buffer beside the weights (release_buffers.framework_rotary_cache_bytes)
    rotary_cache_buffer: bool = False
    # k and v are expanded to every query head (a copy) before the attention kernel
    expands_kv: bool = False
    # the framework's own attention computes q, k and v in one Linear, whose output k and v
    # are views of (ops.attention Attention.expanded_kv_saved)
    fuses_qkv: bool = False
    # one LoRA dropout of the block input serves all adapted q/k/v slices
    one_qkv_lora_dropout: bool = False
    # LoRA on some of q, k, v of a fused qkv is zero-padded to the full width with
    # index_copy_, whose backward keeps lora_B's output (adapters/lora.py zero_pad_source)
    qkv_lora_zero_pad_keeps_source: bool = False
    # the framework's own gated MLP has separate gate and up linears, each with its own
    # LoRA (dropout, lora_A), where the family's checkpoint fuses them into gate_up
    splits_gate_up: bool = False
    # the framework's own RMSNorm scales by the weight in fp32 (x_normed * weight.float()):
    # with a trainable weight it keeps the normalised tensor in fp32 (ops/norm.py)
    rms_norm_scales_in_fp32: bool = False
    # every family's attention runs through F.scaled_dot_product_attention
    sdpa_attention: bool = False
    # zero_grad runs after the training step's forward, before its backward, so the
    # previous step's gradients live through the forward (HF Trainer: after the step)
    zero_grad_after_forward: bool = False
    # LoRA on q, k and v, on o, on gate, up and down (each group whole, lora_dropout 0, no
    # bias, no DoRA) runs as one autograd Function per group: q/k/v and o keep their
    # input only (no lora_A output), a gated MLP its input and the gate and up outputs
    # (ops/linear.py fused_lora_group, ops/mlp.py MLP.fused_lora)
    fused_lora: bool = False
    # RMSNorm as one kernel that keeps its input and an fp32 rstd per row and writes its
    # input gradient over the incoming one (ops/norm.py)
    kernel_rms_norm: bool = False
    # gradient checkpointing copies each checkpointed block's input to host memory (the
    # last block's stays) and brings it back into one GPU buffer for the recompute
    offloads_checkpoint_inputs: bool = False
    # the causal-LM forward takes the loss fused whenever it is given labels: chunks of
    # the head's matmul and cross-entropy, each chunk's fp32 logits at most this many
    # bytes, the input gradient made in forward (ops/loss.py); None: as run.loss says
    fused_loss_chunk_bytes: int | None = None
    # each 4-bit matmul in forward dequantises into one buffer kept for the whole run,
    # the size of the largest 4-bit weight (ops/linear.py dequant_buffer)
    dequant_buffer: bool = False
    # the caching allocator's options the framework sets at import when the user set
    # none (RunConfig.alloc_conf)
    alloc_conf: str | None = None
    # under FSDP the model is built on rank 0's CPU and wrapped with
    # sync_module_states=True, each unit moved to the GPU whole, broadcast, flattened and
    # sharded, with no empty_cache after: the cache it leaves is replayed before the step
    # window (ftmem.fsdp_init)
    fsdp_wraps_from_cpu: bool = False
    # which torch FSDP the framework shards with: 1 ``FullyShardedDataParallel``, 2
    # ``fully_shard``; None: HF Trainer's, by the run's transformers release
    # (versions.hf_trainer_fsdp_version). FSDP1 gathers one unit at a time in forward,
    # FSDP2 two (parallel.fsdp1_forward); FSDP1's CPUOffload keeps each gradient's GPU
    # copy until backward ends, FSDP2's ``fully_shard`` moves it to the CPU in its reduce
    # (foreach_reduce) and keeps none (parallel._offload_params)
    fsdp_version: Literal[1, 2] | None = None
    # the framework's own FSDP auto-wrap policy makes every trainable leaf module (each
    # LoRA matrix) a unit of its own, whatever the method and release: each has its own
    # flat parameter, so its own gradient shard (gpu.trace leaf_grad_shards) and optimizer
    # states (leaf_units), where a decoder-layer unit would reduce one flat gradient
    fsdp_unit_per_trainable_leaf: bool = False
    # under FSDP1 a peft model is wrapped with peft's auto-wrap policy, each trainable
    # leaf (every LoRA matrix) a unit beside the decoder-layer units: HF Trainer's
    # update_fsdp_plugin_peft (transformers 5.25 trainer.py:1774-1777,
    # distributed/fsdp.py:267-279; peft 0.21.2 utils/other.py:1271-1308
    # fsdp_auto_wrap_policy) from transformers 4.39 (versions.hf_trainer_wraps_peft_leaves),
    # and fsdp_qlora's own policy (parallel.wraps_each_trainable_leaf); FSDP1
    # BACKWARD_PRE then prefetches a decoder unit's own LoRA leaf, not the unit below
    # (parallel.fsdp1_lora_backward)
    fsdp_wraps_peft_leaves: bool = True
    # QLoRA builds the model from its config with no torch_dtype, so what its modules
    # register at construction (transformers 4's rotary tables: ftmem.release_buffers)
    # is fp32 whatever dtype the weights are loaded in afterwards
    builds_quantised_model_fp32: bool = False
    # an image-text model's vision tower and projector stay frozen unless the config says
    # otherwise, whatever the method (LLaMA-Factory's freeze_vision_tower and
    # freeze_multi_modal_projector default true: hparams/model_args.py@ff6d4d12eeb0); HF
    # Trainer and TRL train every parameter under full finetuning (ftmem.vision_step)
    freezes_vision: bool = False
    # gradient checkpointing goes through transformers' gradient_checkpointing_enable,
    # which calls enable_input_require_grads: every submodule's input embeddings hooked,
    # an image-text model's vision tower among them (vision_step.input_hooked).
    # LLaMA-Factory swaps in its own _gradient_checkpointing_enable, which does not
    # (hiyouga/LLaMA-Factory@ff6d4d12 src/llamafactory/model/model_utils/checkpointing.py
    # l.126-154); peft's PeftModel still calls it for a non-quantised model
    # (peft 0.21.2 peft_model.py l.184-185, l.728-735)
    checkpointing_hooks_embeddings: bool = True
    # under native autocast (no DeepSpeed) the trainer's accelerate prepare_model wraps
    # the model's forward so that every 16-bit tensor of its output is cast to fp32 after
    # the autocast context exits (huggingface/accelerate@8d1479def0bb3e3321f4a5be39a9479f73f5d66c
    # = v0.24.1 src/accelerate/accelerator.py l.1389-1398, native_amp l.441-448 (not
    # under DeepSpeed), utils/operations.py
    # convert_to_fp32 l.608-626; @16cb6eb8 accelerator.py l.1824-1829 still): the logits' fp32
    # copy beside the 16-bit logits and what the loss saved (ops.loss.Loss.fp32_output_moment)
    converts_outputs_to_fp32: bool = True
    # gradient checkpointing runs through transformers' decoder loop (its
    # gradient_checkpointing_enable), whose release decides where the checkpoint sits
    # (versions.checkpoint_wraps_decoder_unit); False: the framework's own blocks and
    # checkpoint wrapper
    checkpoints_in_transformers_loop: bool = True
    # the loss runs inside the causal LM's forward, given the labels: that forward names
    # the LM head's input (``hidden_states = outputs[0]``) until the loss returns
    # (step._named_head_input); False where the loop calls the model for its logits and
    # computes the loss after the forward has returned
    loss_in_model_forward: bool = True


HF = Profile("hf")

# pytorch/torchtune @1814feb17a9038e1a8053ce93111bd26774a8db6 (Nov 2024):
# torchtune/training/_compile.py compile_model calls m.compile() on every
# TransformerSelfAttentionLayer / TransformerCrossAttentionLayer; compile_loss compiles
# only CEWithChunkedOutputLoss.compute_cross_entropy (logits.float() + F.cross_entropy)
# and the whole module for any other loss (calibration/notes/torchtune.md)
# OffloadActivations is entered around `self._model(**batch)` only, the loss is computed
# after it (recipes/full_finetune_single_device.py @1814feb17a90 _loss_step), and
# get_act_offloading_ctx_manager wraps model.output (or TiedLinear.linear) in a
# NoOpManager whose pack/unpack return the tensor itself
# (torchtune/training/_activation_offloading.py @1814feb17a90)
# torchtune 0.1's LoRA recipe (Apr 2024) computes the loss in its loop: `logits =
# self._model(input_ids)` (fp32: modules/transformer.py `self.output(h).float()`), then
# `logits = logits[..., :-1, :].contiguous()`, `logits = logits.transpose(1, 2)`,
# `self._loss_fn(logits, labels)` with nn.CrossEntropyLoss
# (recipes/lora_finetune_single_device.py@ff594c231 train; the same @0914d5cfb): the
# name keeps the shifted copy until the next `logits = self._model(...)` (loss:
# upcast-shifted under this profile; later recipes shift the labels instead).
# get_memory_stats / memory_stats_log reset the peaks after model init and at every
# logged step: a figure is one step's (torchtune@1814feb1
# torchtune/training/memory.py get_memory_stats; @ff594c231 torchtune/utils/memory.py
# memory_stats_log); reserved keeps the cache loading left (no empty_cache).
# LoRALinear quantises its bf16 nn.Linear at init, then load_state_dict's NF4 copy_
# quantises the checkpoint tensor on the GPU and swaps the buffers in
# (torchtune@0914d5cfb torchtune/modules/peft/lora.py _create_weight_and_bias;
# torchtune/utils/_register_nf4_dispatch_ops.py inplace_copy).
TORCHTUNE = Profile(
    "torchtune",
    fsdp_wraps_peft_leaves=False,  # its own modules and fully_shard, no peft
    peak_of="step",
    loading="torchao-nf4",
    requantises_on_load=True,
    compiles_layers=True,
    compiles_chunked_loss=True,
    offload_keeps_head=True,
    # MultiHeadAttention.forward expands k and v to every query head before the kernel:
    # k.unsqueeze(2).expand(b, n_kv, q_per_kv, s, h_d).flatten(1, 2), a copy (a stride-0
    # dim cannot merge into a view) (torchtune/modules/attention.py@1814feb17a90 l.284-290;
    # expand then reshape at @30b8519e86d2 l.275-283 and @ff594c231 l.180-184; the same at
    # bd2a0fc7c314, the last commit), so the kernel keeps and differentiates full-width k, v
    expands_kv=True,
    # RotaryPositionalEmbeddings / Llama3ScaledRoPE.build_rope_cache: a non-persistent fp32
    # (max_seq_len, head_dim / 2, 2) buffer (torchtune/modules/position_embeddings.py@1814feb17a90)
    rotary_cache_buffer=True,
    converts_outputs_to_fp32=False,  # its own loop, no accelerate
    checkpoints_in_transformers_loop=False,  # its own modules' checkpoint wrapper
    loop_shifted_loss=True,
    fsdp_version=2,  # the distributed recipes' fully_shard (frameworks/torchtune.py _fsdp2)
    # _loss_step: ``logits = self._model(**batch)``, then ``self._loss_fn(logits, labels)``
    # (recipes/full_finetune_single_device.py@1814feb17a90 l.625-647)
    loss_in_model_forward=False,
)

# LitGPT 0.4.x (Lightning-AI/litgpt@00af8b0d) and lit-gpt 2023 (@8641822b) under
# Lightning Fabric (pytorch-lightning@527d071f, @71aed751); calibration/notes/litgpt.md.
LITGPT = Profile(
    "litgpt",
    fsdp_wraps_peft_leaves=False,  # FSDPStrategy(auto_wrap_policy={Block}), no peft
    notes=(
        "LitGPT: LM head and cross-entropy in 128-position chunks, fp32 logits held by "
        "the training loop, no weight tying, k/v expanded to every head before SDPA; "
        "under QLoRA every Linear (the LM head too) is 4-bit and each 4-bit matmul holds "
        "an fp16 and a bf16 copy of its weight.",
    ),
    # litgpt/finetune/lora.py fit(): model(input_ids, lm_head_chunk_size=128); litgpt/lora.py
    # GPT.forward: [self.lm_head(x_i) for x_i in x.split(lm_head_chunk_size, dim=1)]
    lm_head_chunk_tokens=128,
    # litgpt/finetune/full.py fit(): logits = model(input_ids) (no chunk size)
    unchunked_methods=("full",),
    # litgpt/utils.py chunked_cross_entropy(chunk_size=128): logits.reshape(-1, V).split(128)
    loss_chunk_rows=128,
    # lightning/fabric/wrappers.py _FabricModule.forward: precision.convert_output(output)
    # casts floating outputs to torch.get_default_dtype() (fp32); fit()'s `logits` keeps them
    logits_fp32_held=True,
    converts_outputs_to_fp32=False,  # Fabric's own conversion: logits_fp32_held
    # fit(): `loss = chunked_cross_entropy(...)` is rebound after the next iteration's
    # forward and loss, so `loss.grad_fn` keeps the last graph alive until then
    # (litgpt@00af8b0d litgpt/finetune/lora.py fit; lit-gpt@8641822b finetune/lora.py train)
    loss_held_into_next_forward=True,
    # litgpt/model.py GPT.__init__ builds its own lm_head; scripts/convert_hf_checkpoint.py
    # copies transformer.wte.weight into lm_head.weight when the checkpoint has none
    ties_lm_head=False,
    # lightning/fabric/plugins/precision/bitsandbytes.py init_context(): nn.Linear replaced
    # for the whole model (BitsandbytesPrecision built without ignore_modules in
    # litgpt/finetune/lora.py setup)
    quantizes_lm_head=True,
    gelu_one_kernel=True,
    # _Linear4bit.quantize: weight.to("cuda", torch.half) -> quant_state.dtype fp16;
    # bitsandbytes@0.42.0 autograd/_functions.py MatMul4Bit.forward/backward:
    # F.dequantize_4bit(B, state).to(A.dtype): a 2-byte fp16 tensor and its 2-byte bf16 copy
    dequant_copy_bytes=4,
    # litgpt/model.py CausalSelfAttention.forward: k.expand(...), v.expand(...) then
    # reshape (a copy) when n_query_groups != n_head
    expands_kv=True,
    # litgpt/model.py CausalSelfAttention: one `attn` Linear, its output viewed as
    # (B, n_query_groups, q_per_kv + 2, T, head_size) and split into q, k, v
    fuses_qkv=True,
    # litgpt/lora.py LoRAQKVLinear.forward: F.linear(self.lora_dropout(x), self.lora_A)
    one_qkv_lora_dropout=True,
    # litgpt/lora.py LoRAQKVLinear.zero_pad (00af8b0d): result.index_copy_(dim=-1,
    # index=self.lora_ind, source=x) unless all of q, k, v are enabled; lit-gpt@8641822b
    # lit_gpt/lora.py zero_pad: result.index_copy(1, ..., x.reshape(-1, sum(qkv_shapes)))
    qkv_lora_zero_pad_keeps_source=True,
    # litgpt/model.py LLaMAMLP (fc_1, fc_2, proj; litgpt/lora.py wraps each in a
    # LoRALinear when lora_mlp) for Phi-3 (litgpt/config.py Phi-3-mini-4k-instruct:
    # mlp_class_name="LLaMAMLP"), whose HF checkpoint has one gate_up_proj
    splits_gate_up=True,
    # litgpt/model.py RMSNorm.forward: x = x.float(); x_normed = x * torch.rsqrt(...);
    # return (x_normed * weight.float()).to(dtype=dtype)
    rms_norm_scales_in_fp32=True,
    # litgpt/model.py CausalSelfAttention.scaled_dot_product_attention: SDPA for every
    # family without logit soft-capping (Falcon included)
    sdpa_attention=True,
    # max_memory_allocated printed after fit(), never reset: loading, the sanity
    # validate(), every validate() and generate_example() are inside
    # (litgpt@00af8b0d litgpt/finetune/lora.py main, fit; notes/litgpt.md M0, M9, M10)
    peak_of="run",
    loading="fabric-bnb",
    evaluates=True,
    generates=True,
    checkpoints_in_transformers_loop=False,  # its own model code
    # fit(): ``logits = model(input_ids, lm_head_chunk_size=128)``, then
    # ``chunked_cross_entropy(logits, ...)`` (litgpt@00af8b0d litgpt/finetune/lora.py l.304-307)
    loss_in_model_forward=False,
)

# Unsloth (unslothai/unsloth@015bdef0d94a, unslothai/unsloth-zoo@ce232d6cef9c);
# docs/frameworks/unsloth.md, tests/test_profile_unsloth.py.
UNSLOTH = Profile(
    "unsloth",
    notes=(
        "Unsloth: LoRA_QKV, LoRA_W and LoRA_MLP autograd Functions where lora_dropout is 0 "
        "and a group (q/k/v, o, gate/up/down) is adapted whole; Triton RMSNorm (input + "
        "fp32 rstd); the loss fused in chunks of at most 4 GiB of fp32 logits; 4-bit "
        "weights dequantised into one persistent buffer in forward, a fresh 16-bit copy in "
        "backward. Attention as flash-attn or SDPA with GQA (the xformers fallback's "
        "expanded k/v and the Triton kernels' own scratch are not modelled).",
    ),
    # unsloth/kernels/fast_lora.py LoRA_QKV.forward save_for_backward(X, QA, QB, KA, KB,
    # VA, VB); LoRA_W.forward save_for_backward(A, B, X); LoRA_MLP.forward
    # save_for_backward(gateA, ..., downB, X, e, g); patched in unsloth/models/llama.py
    # FastLlamaModel.patch_peft_model only `if lora_dropout == 0 and bias == "none"`, per
    # group when every linear of it has lora_A, no bias and no lora_magnitude_vector
    fused_lora=True,
    # unsloth/kernels/rms_layernorm.py Fast_RMS_Layernorm.forward save_for_backward(X, W,
    # r), r fp32 per row; backward `dX = dY` (in place, Gemma's excepted)
    kernel_rms_norm=True,
    # unsloth-zoo unsloth_zoo/gradient_checkpointing.py UnslothCheckpointFunction.forward:
    # the first tensor argument copied into a pinned CPU buffer, except at LAST_GC_INDEX
    # (the last checkpointed layer); backward copies it into GPU_BUFFERS[device]
    offloads_checkpoint_inputs=True,
    # unsloth/models/llama.py CausalLM_fast_forward -> unsloth_zoo
    # fused_losses/cross_entropy_loss.py unsloth_fused_ce_loss, _get_chunk_multiplier:
    # target_gb = min(free_gb * 0.5, 4.0)
    fused_loss_chunk_bytes=4 * 1024**3,
    # unsloth/kernels/utils.py matmul_lora: fast_dequantize(W, W_quant,
    # use_global_buffer=True) in forward; fast_dequantize(W.t(), W_quant) (a fresh tensor
    # in quant_state.dtype, the 2-byte compute dtype) in backward
    dequant_buffer=True,
    dequant_copy_bytes=2,
    # unsloth-zoo unsloth_zoo/__init__.py: PYTORCH_ALLOC_CONF = "expandable_segments:True"
    # unless set (torch >= 2.10; older: PYTORCH_CUDA_ALLOC_CONF with
    # roundup_power2_divisions too), off under UNSLOTH_VLLM_STANDBY=1
    alloc_conf="expandable_segments:True",
    checkpoints_in_transformers_loop=False,  # UnslothCheckpointFunction (unsloth-zoo)
)

# Lightning-AI/pytorch-lightning @2.6.6 src/lightning/pytorch/loops/optimization/automatic.py
# Closure.closure: the training step, then zero_grad, then backward; measured on the CPU
# (tests/test_integrations_lightning.py: full finetuning's peak is the forward with
# every gradient, within 0.1 %). Manual optimization zeroes where the user's code does.
LIGHTNING = Profile(
    "lightning",
    fsdp_wraps_peft_leaves=False,  # its FSDPStrategy's policy, not HF Trainer's (not derived)
    notes=(
        "Lightning (automatic optimization): zero_grad runs after the forward, so the "
        "previous step's gradients live through it.",
    ),
    zero_grad_after_forward=True,
    converts_outputs_to_fp32=False,  # not accelerate's prepare_model (not derived)
)

# Answer.AI's fsdp_qlora train.py (AnswerDotAI/fsdp_qlora@50efa1e fsdp_main;
# calibration/notes/fsdp_qlora.md): low_memory loading keeps rank 0's weights on its CPU
# (the others on meta), then FSDP(sync_module_states=True, param_init_fn=to_empty on ranks
# != 0, use_orig_params=False) wraps each LoRA matrix, each decoder layer and the root;
# torch.cuda.reset_peak_memory_stats right before the epoch loop, which frees nothing.
FSDP_QLORA = Profile(
    "fsdp_qlora",
    notes=(
        "fsdp_qlora: FSDP wraps the model from rank 0's CPU unit by unit (moved whole, "
        "broadcast, flattened, sharded); the cache that leaves is in the reserved peak "
        "(the peaks are reset before the loop, the cache is not emptied); the loop holds "
        "the model's output (its logits) through the backward and the optimizer step.",
    ),
    peak_of="step",
    fsdp_wraps_from_cpu=True,
    # ``FSDP(model, ..., cpu_offload=CPUOffload(offload_params=True) if
    # args["use_cpu_offload"] else None, ...)``: FSDP1 (@50efa1e train.py fsdp_main)
    fsdp_version=1,
    # get_wrapping_policy's lambda_policy_fn: ``len(list(module.named_children())) == 0
    # and getattr(module, "weight", None) is not None and module.weight.requires_grad``
    # (@50efa1e train.py), beside the decoder layers' transformer policy
    fsdp_unit_per_trainable_leaf=True,
    # fsdp_main's loop: ``output = model(..., labels=...)`` and ``loss = output.loss``,
    # ``loss.backward()``, ``optimizer.step()``, then ``output = None`` "so more memory
    # frees up before the next forward pass" (@3616227 train.py:803-848; @50efa1e
    # :821-874): the model's logits live through the backward and the step
    output_held_through_step=True,
    # QLoRA: ``with init_empty_weights(): model = AutoModelForCausalLM.from_config(cfg)``,
    # no torch_dtype (init_empty_weights leaves buffers real, on the CPU; FSDP then moves
    # and broadcasts them); LoRA: from_pretrained(torch_dtype=...) then model.to(dtype)
    # (@50efa1e train.py fsdp_main:556-579)
    builds_quantised_model_fp32=True,
    converts_outputs_to_fp32=False,  # its own loop, no accelerate
    # torch's apply_activation_checkpointing with checkpoint_wrapper on the decoder layers
    # (calibration/notes/fsdp_qlora.md F5), not transformers' loop
    checkpoints_in_transformers_loop=False,
)

# PEFT's method_comparison benchmark (peft@5d602fdb method_comparison/MetaMathQA/run.py
# train): ``outputs = model(**batch, ...)`` and ``loss = outputs.loss``, backward, clip,
# step; ``outputs`` is rebound only when the next step's forward returns. It carries the
# logits and, as transformers creates a DynamicCache whenever ``use_cache`` (config.json's
# default True) and no cache is passed, the cache of every layer's keys and values
# (transformers 5.13.1, the results' version: models/llama/modeling_llama.py:391-392
# LlamaModel.forward; cache_utils.py:166 DynamicLayer.update ``torch.cat``);
# checkpointing turns use_cache off (modeling_layers.py GradientCheckpointingLayer).
PEFT_MC = Profile(
    "peft-mc",
    fsdp_wraps_peft_leaves=False,  # one GPU, its own loop
    notes=(
        "peft-mc: PEFT's method_comparison loop keeps the model's output (its logits and "
        "the KV cache a training forward builds without checkpointing) until the next "
        "forward has returned; its batches are padded, so sdpa gets a mask and GQA keys "
        "and values are repeated per head.",
    ),
    output_held_into_next_forward=True,
    # ``batch = tokenizer.pad(batch, return_tensors="pt")`` (right padding to the longest
    # of the batch) and ``model(**batch, ...)`` passes its attention_mask (run.py train)
    padding="longest",
    converts_outputs_to_fp32=False,  # its own loop, no accelerate
    # from_pretrained(device_map=device), get_peft_model, no .to() (MetaMathQA/utils.py
    # get_base_model, get_model)
    peft_buffers_on_host=True,
    # run.py train: the wiki loss before training runs ``with model.disable_adapter()``
    # after get_optimizer_and_scheduler (create_lorafa_optimizer froze lora_A); on exit
    # peft's enable_adapter_layers -> BaseTunerLayer.set_adapter calls requires_grad_(True)
    # on every active adapter layer (peft 0.21.2 tuners/tuners_utils.py; measured on the
    # CPU, tests/test_ln_tuning_lorafa.py): A gets a gradient (and keeps its input), the
    # optimizer keeps states for B only
    lora_fa_a_regains_grad=True,
)

PROFILES: dict[str, Profile] = {
    "hf": HF,
    # axolotl and LLaMA-Factory drive HF Trainer over transformers + peft
    "axolotl": Profile("axolotl"),
    "llama-factory": Profile(
        "llama-factory", freezes_vision=True, checkpointing_hooks_embeddings=False
    ),
    "litgpt": LITGPT,
    # a LightningModule over transformers + peft, stepped by Lightning's Trainer
    "lightning": LIGHTNING,
    "torchtune": TORCHTUNE,
    # Unsloth's notebooks print max_memory_reserved once after trainer.train()
    "unsloth": UNSLOTH,
    "fsdp_qlora": FSDP_QLORA,
    "peft-mc": PEFT_MC,
}


def profile_of(run: RunConfig) -> Profile:
    return PROFILES[run.framework]


def batch_padding(run: RunConfig) -> Padding:
    """How the run's batches are padded: as it says, else its framework's way."""
    return run.padding if run.padding is not None else profile_of(run).padding


def pads_batches(run: RunConfig) -> bool:
    """The model is given an attention_mask with pad tokens in it: every sequence padded
    to seq_len (max-length), or batches of several sequences padded to their longest.
    One sequence padded to its own longest has none, and transformers then leaves sdpa
    its causal flag (masking_utils.py _ignore_causal_mask_sdpa: no mask when every
    position is attended, 5.24 l.292-293). A packed row has no pad tokens but gets a mask
    all the same (ops.attention.packed_rows)."""
    padding = batch_padding(run)
    return padding in ("max-length", "packed") or (padding == "longest" and run.batch_size > 1)


def compiled_layers(run: RunConfig) -> bool:
    """Each decoder layer runs as its own compiled graph (``run.compile`` on a framework
    that compiles per layer)."""
    return run.compile and profile_of(run).compiles_layers


def compiled_chunked_loss(run: RunConfig) -> bool:
    """The chunked loss's upcast + cross-entropy runs compiled, one chunk per call;
    LinearCrossEntropyLoss's compiled call takes the LM head's matmul in too, whose
    16-bit output is what the partitioner saves (pytorch/torchtune
    torchtune/modules/loss/cross_entropy_loss.py@bd2a0fc7c314 apply_compile_strategy
    compiles compute_cross_entropy; torchtune/training/_compile.py@bd2a0fc7c314
    compile_loss calls it)."""
    chunked = run.loss in ("chunked", "linear-chunked")
    return run.compile and chunked and profile_of(run).compiles_chunked_loss


def offload_keeps_head(run: RunConfig) -> bool:
    """Activations are offloaded, the LM head's and the loss's saved tensors excepted."""
    return run.activation_offload and profile_of(run).offload_keeps_head


# the methods whose adapters are peft LoRA layers the fused Functions read (lora_A,
# lora_B, scaling): not DoRA (lora_magnitude_vector)
_FUSED_LORA_METHODS = frozenset({"lora", "rslora", "qlora", "longlora", "relora"})


def fused_lora_applies(run: RunConfig) -> bool:
    """The framework's fused LoRA Functions can run: a LoRA method with lora_dropout 0
    (Unsloth's patch_peft_model: ``if lora_dropout == 0 and bias == "none"``)."""
    return profile_of(run).fused_lora and run.method in _FUSED_LORA_METHODS and run.dropout == 0


def framework_run(arch: Architecture, run: RunConfig) -> RunConfig:
    """The run as the framework's step takes it: a framework whose causal-LM forward fuses
    the loss whenever it gets labels (Profile.fused_loss_chunk_bytes) runs the "fused"
    loss for supervised finetuning, whatever --loss says of the default path, and a model
    whose own forward computes the loss (Family.own_loss; in the run's transformers
    release the models that do not call ForCausalLMLoss, and under --loss upcast-shifted
    those whose forward never upcast: versions.model_own_loss) runs that one; a framework
    that sets the allocator's options (Profile.alloc_conf) runs with them unless the run
    sets its own."""
    profile = profile_of(run)
    changes: dict[str, object] = {}
    fuses = profile.fused_loss_chunk_bytes is not None and run.objective == "sft"
    fuses = fuses and not arch.encoder_decoder  # (a causal LM's forward)
    if fuses and run.loss == "standard":
        changes["loss"] = "fused"
    # a remote-code model computes its loss in its own forward from the labels it is given
    # (Qwen-1: Family.own_loss); a preference or GRPO loss reads the logits instead; a
    # loop's own upcast-shifted loss (torchtune 0.1's) is not the model's
    family_own = arch.traits.own_loss if run.loss == "standard" else None
    own = family_own or model_own_loss(arch, run)
    loop_loss = run.loss == "upcast-shifted" and profile.loop_shifted_loss
    if own is not None and not fuses and not loop_loss and run.objective == "sft":
        changes["loss"] = own
    if profile.alloc_conf is not None and run.alloc_conf is None:
        changes["alloc_conf"] = profile.alloc_conf
    return run.model_copy(update=changes) if changes else run


def offloads_checkpoint_inputs(run: RunConfig) -> bool:
    """Checkpointed blocks' inputs live in host memory (Profile.offloads_checkpoint_inputs)."""
    return run.grad_ckpt and profile_of(run).offloads_checkpoint_inputs


def _fused_path_notes(run: RunConfig) -> list[str]:
    """What the run turns off of a framework's fused LoRA path and its checkpointing."""
    profile, notes = profile_of(run), []
    if profile.fused_lora and run.method in _FUSED_LORA_METHODS and run.dropout:
        notes.append(
            f"{run.framework}: lora_dropout {run.dropout} turns the fused LoRA Functions off; "
            "every adapted linear runs as peft's LoRA layer."
        )
    if profile.fused_lora and run.precision.endswith("-mixed"):
        # unsloth-zoo unsloth_zoo/training_utils.py@ce232d6cef9c prepare_model_for_training
        # upcasts the LoRA weights only (float32_mixed_precision)
        notes.append(
            f"{run.framework} keeps the weights it does not train in 16 bits (only the LoRA "
            f"weights fp32): --precision {run.precision.removesuffix('-mixed')} describes "
            f"that; {run.precision} is estimated with fp32 non-quantised weights."
        )
    if profile.fused_lora and run.method == "dora":
        notes.append(f"{run.framework}: DoRA runs as peft's layers (no fused Function).")
    if profile.offloads_checkpoint_inputs and not run.grad_ckpt and not run.activation_offload:
        notes.append(
            f"{run.framework}: without --grad-ckpt (its get_peft_model defaults to "
            'use_gradient_checkpointing="unsloth": --grad-ckpt models that).'
        )
    if offloads_checkpoint_inputs(run):
        notes.append(
            f"{run.framework} gradient checkpointing: every checkpointed block's input but "
            "the last lives in pinned host memory; one GPU buffer of a block input takes "
            "it back for the recompute (a second one, for overlap, is allocated only with "
            "more than 512 MiB free after the first step: not counted)."
        )
    if profile.fused_loss_chunk_bytes is not None and run.objective == "sft":
        notes.append(
            f"{run.framework} fused loss: chunks of at most "
            f"{profile.fused_loss_chunk_bytes / 1024**3:g} GiB of fp32 logits (the cap; "
            "half the free memory at the first call when that is less: not modelled)."
        )
    return notes


def profile_notes(run: RunConfig) -> list[str]:
    """What the estimate says of the framework's path for this run."""
    notes = list(profile_of(run).notes) + _fused_path_notes(run)
    if not run.compile:
        return notes
    if compiled_layers(run):
        notes.append(
            f"compile ({run.framework}: each decoder layer compiled on its own): a layer "
            "keeps each RMSNorm's input and fp32 rstd instead of its fp32 copy and "
            "normalised output, and the gated MLP's activation is recomputed in backward "
            "(inductor's partitioner); its fused backward kernels are not modelled."
        )
        if compiled_chunked_loss(run):
            notes.append(
                "compile + chunked loss: each chunk keeps its 16-bit logits and per-row "
                "max and log-sum-exp instead of a fp32 log-softmax, and its backward is one "
                "fused kernel writing the chunk's 16-bit gradient."
            )
        elif run.loss == "standard":
            notes.append(
                "compile + standard loss: the compiled cross-entropy keeps its fp32 input "
                "logits instead of the log-softmax, the same size."
            )
    else:
        notes.append(
            f"compile: how {run.framework} applies torch.compile is not modelled; the "
            "estimate is of the eager step."
        )
    return notes


def head_chunk_tokens(run: RunConfig) -> int | None:
    """Positions per LM head piece in this run (None: the head is one matmul)."""
    profile = profile_of(run)
    if run.method in profile.unchunked_methods:
        return None
    return profile.lm_head_chunk_tokens


def framework_arch(arch: Architecture, run: RunConfig) -> Architecture:
    """The architecture as the run builds it: without the config's dropout where the run
    turns it off, and the framework's own LM head where it never ties (the attention path
    is ops.attention.attention_path's)."""
    profile = profile_of(run)
    arch = as_trained(arch, run.model_dropout, run.router_aux_loss)
    changes: dict[str, object] = {}
    vision = for_image_size(arch.vision, run.image_size)  # (Qwen-VL's dynamic resolution)
    if vision is not arch.vision:
        changes["vision"] = vision
    if profile.ties_lm_head is not None and arch.tie_embeddings != profile.ties_lm_head:
        changes["tie_embeddings"] = profile.ties_lm_head
    return arch.model_copy(update=changes) if changes else arch
