"""Model families as data: one module per family, each defining ``FAMILY``.

A :class:`Family` says how transformers builds the family (its module names, block
class, the config.json keys it reads) and which of the kernels' and code paths'
peculiarities it has, as named flags. The estimator's core reads those flags, never a
family's name, so a family that only recombines existing ops is one small file here
(see docs/architecture.md, "How to add a family").

Family modules are imported on first use: an estimate from a preset imports one.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ftmem.arch import Architecture
    from ftmem.gpu.program import Requests
    from ftmem.methods import MethodPlan
    from ftmem.run import RunConfig
    from ftmem.versions import Releases

Config = dict[str, Any]
# a block's no-grad forward for a run: its requests and the number of its output, or None
BlockForward = Callable[["Architecture", "RunConfig", "MethodPlan"], "tuple[Requests, int] | None"]

# Situations in which a family carries a note for the user (a known gap, a path that
# differs from what the estimate assumes); the core asks for them by these keys.
NoteKey = Literal["attention", "qlora", "bitfit-recompute", "model"]


# ColossalAI's sequence parallelism modes (shardformer/shard/shard_config.py:13)
SP_MODES: frozenset[str] = frozenset({"split_gather", "ring", "all_to_all", "ring_attn"})


@dataclass(frozen=True, slots=True)
class ModuleNames:
    """Where transformers keeps each module, as parameter-name prefixes.

    ``attention`` and ``mlp`` map a projection key to its module path in a block:
    ``q``/``k``/``v``/``o`` (or ``qkv`` when one fused linear computes all three),
    ``gate``/``up``/``down`` (or ``gate_up``), and for mixture-of-experts ``router``
    with the experts' ``gate_up`` and ``down``; multi-head latent attention has ``q_a``,
    ``q_b``, ``kv_a`` and ``kv_b`` for q/k/v. ``norms`` gives the block's norm modules
    for each norms-per-block layout the family has."""

    blocks: str  # the ModuleList of decoder blocks: "model.layers"
    attention: Mapping[str, str]
    mlp: Mapping[str, str]
    norms: Mapping[int, tuple[str, ...]]
    embedding: str
    final_norm: str
    positions: str = ""  # a learned position table (GPT-2's wpe), if any
    experts: Mapping[str, str] = field(default_factory=dict)
    # the dense MLP every token takes beside its routed experts (DeepSeek), gate/up/down
    shared_experts: Mapping[str, str] = field(default_factory=dict)
    # a sequential block's two norms where the family's two-norm layout is a parallel
    # block's (Falcon: falcon-rw's input_layernorm and post_attention_layernorm, 40B's
    # ln_attn and ln_mlp); empty: ``norms`` serves both
    sequential_norms: tuple[str, ...] = ()
    # the MLP's activation module where it has parameters (Apertus's xIELU: mlp.act_fn)
    activation: str = ""
    # the per-layer inputs' modules (Architecture.per_layer_input_size): the model's
    # ``table``, ``model_projection`` and ``model_norm`` (full paths), each block's
    # ``gate``, ``projection`` and ``norm``; empty: the family has none
    per_layer: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConfigMap:
    """The family's config.json, both ways: ``read`` turns a parsed config into
    Architecture fields (typed and bounded, ``ftmem.families._config``); ``build`` gives
    the kwargs of the transformers config that ``ftmem measure`` builds for an
    Architecture (with ``model_types[0]``)."""

    read: Callable[[Config], Config]
    build: Callable[[Architecture], Config]


@dataclass(frozen=True, slots=True)
class Family:
    """One model family: transformers' names for it and its code paths' peculiarities.

    Every flag names a mechanism the estimator models, with the default being what
    the Llama code in transformers 5 does."""

    name: str
    model_types: tuple[str, ...]  # config.json model_type values read as this family
    decoder_layer: str  # transformers' block class (FSDP's auto-wrap policy names it)
    names: ModuleNames
    config: ConfigMap
    # A T5-style encoder-decoder: two stacks, relative position buckets, dropout.
    encoder_decoder: bool = False
    # The attention transformers 5 runs: "sdpa" unless asked for eager; "eager" is the
    # only path (Gemma-2: no sdpa for soft-capped scores); "eager-fp32" upcasts q, k, v
    # and takes both matmuls in fp32 (Falcon).
    attention: Literal["sdpa", "eager", "eager-fp32"] = "sdpa"
    # The eager softmax runs in the compute dtype (GPT-2), not in fp32 then cast back.
    softmax_in_compute_dtype: bool = False
    # The eager path builds a float (b, 1, s, s) causal mask and passes it to every block
    # (GPT-2): checkpointing keeps it as a block input.
    eager_float_mask: bool = False
    # Linear weights are Conv1D, stored (in, out) (GPT-2): DoRA transposes them.
    conv1d: bool = False
    # tanh-GELU written out op by op (GPT-2's NewGELU) rather than one fused kernel.
    gelu_written_out: bool = False
    # Per-head RMSNorms on queries and keys (Qwen3): transformers has no switch for them,
    # the model type decides (Architecture.qk_norm must say the same to be measured).
    qk_norm: bool = False
    # Every layer rebuilds the cos and sin tables interleaved (GLM-4's repeat_interleave)
    # and keeps its own copies; the shared tables are kept by nothing.
    rotary_tables_per_layer: bool = False
    # The rotary's cos and sin stay fp32 (OLMo 2), not cast to the hidden states' dtype.
    rotary_tables_fp32: bool = False
    # The cos and sin tables are half the rotary's width: each turns one half of the head
    # against the other (gpt-oss's _apply_rotary_emb), not the doubled table rotate_half reads.
    rotary_tables_half: bool = False
    # The cos and sin tables are slices of a cache of max(2·s, 16) positions that every
    # layer's multiply keeps (Qwen-1's RotaryEmbedding.update_rotary_pos_emb_cache), not
    # tables of the s positions. Checkpointed blocks keep none of it for backward; the cache
    # itself stays on the module (2·max(2s, 16)·rotary_dim·4 bytes) and is not counted then.
    rotary_tables_cached: bool = False
    # One cos and sin pair per layer type the stack has (Gemma 3: its sliding layers turn
    # by another base; transformers 5.25 modeling_gemma3.py l.532-534 builds a pair for
    # each type in ``set(config.layer_types)``).
    rotary_tables_per_layer_type: bool = False
    # One cos and sin table per sequence (batch × s × rotary_dim), not one for the batch:
    # Qwen3.5's text model expands its position ids to (4, batch, s) and its M-RoPE
    # (transformers 5.25 modeling_qwen3_5.py l.1326 and Qwen3_5TextRotaryEmbedding.forward,
    # l.173-183) returns tables of the batch, as Qwen-VL's do.
    rotary_tables_per_sequence: bool = False
    # Only the sliding layers apply the rotary; the global ones hand q and k to the kernel
    # as projected (Cohere2Attention: ``if self.sliding_window is not None:
    # apply_rotary_pos_emb``, transformers 5.25 modeling_cohere2.py l.222-223): where only
    # the top (global) blocks need gradients, no multiply keeps the tables. K-EXAONE's
    # full-attention layers likewise (modeling_exaone_moe.py ExaoneMoeAttention.forward
    # ``if self.sliding_window is None or self.is_sliding``, its config's window never None).
    rotary_on_sliding_layers_only: bool = False
    # The full-attention layers may have an attention shape of their own (Architecture
    # full_head_dim, full_kv_heads, full_values_are_keys: Gemma 4's global layers,
    # transformers 5.25 modeling_gemma4.py l.1152-1185 reading ``per_layer_config``).
    attention_shape_per_layer_type: bool = False
    # The rotated queries are multiplied by a per-position factor before the kernel
    # (Ministral 3's Llama-4 attention scaling, transformers 5.25 modeling_ministral3.py
    # l.104-107, l.146-150: ``query_states * get_llama_4_attn_scale(position_ids, ...)``,
    # a (1, 1, s, 1) tensor in the queries' dtype), which the multiply keeps for the
    # queries' gradient; its product is what the kernel keeps instead of the rotary's.
    query_position_scale: bool = False
    # Without FlashAttention the attention passes sdpa an explicit (1, 1, s, s) bool causal
    # mask (Qwen-1's QWenAttention.forward), which sdpa turns into a float mask in the
    # compute dtype per call and keeps for backward; transformers 5 passes is_causal.
    sdpa_explicit_mask: bool = False
    # The first transformers release whose model builds its causal mask with
    # ``allow_is_causal_skip=False``, so every layer's sdpa call gets a (b, 1, s, s) mask
    # even without padding (Falcon from 5.25, to add ALiBi onto it: ops.attention
    # .materialized_mask); None: the mask is skipped where is_causal serves.
    causal_mask_materialized_from: tuple[int, int, int] | None = None
    # A checkpointed block's no-grad forward request by request for a run, or None where
    # this run's block is not derived (ops.nograd_requests.llama_block_forward,
    # ops.nograd_fused_qkv.fused_qkv_block_forward; each checked against torch); None: the
    # replay keeps the timeline's one moment for the block.
    block_forward: BlockForward | None = None
    # The linears add their bias after the matmul (transformers 5.25 modeling_falcon.py
    # FalconLinear.forward: ``hidden_states = input @ self.weight.T`` then ``+ self.bias``),
    # where nn.Linear's addmm takes it in: under autocast the fp32 bias promotes the 16-bit
    # product, so a biased projection answers in fp32 (LayerContext.projection_out_bytes).
    bias_added_after_matmul: bool = False
    # The block's linears multiply by a transposed view of their weight (transformers 5.25
    # modeling_falcon.py l.58-63, FalconLinear.forward ``input @ self.weight.T``), not
    # through F.linear: autocast's cast cache takes no views, so every matmul casts the
    # weight anew and nothing keeps the 16-bit copy past the op that saves it
    # (LinearOp.autocast_cache).
    linear_weight_transposed: bool = False
    # The model computes the rotary cos and sin whatever its position embedding and passes
    # them to every block (transformers 5.25 modeling_falcon.py l.597, 5.24 l.780:
    # FalconModel.forward calls self.rotary_emb unconditionally): an ALiBi model's blocks
    # read them nowhere, but checkpointing holds them as block inputs.
    rotary_tables_with_alibi: bool = False
    # The layer's forward keeps its attention's output in a local until the block ends
    # (transformers 5.25 FalconDecoderLayer.forward ``attention_output``, GPT2Block.forward
    # ``attn_output``), where Llama's rebinds its one name at the residual add: alive
    # through the MLP, saved by no op (transients.recompute_end_moment).
    layer_holds_attention_output: bool = False
    # The layer's forward keeps its attention norm's output in a local through the MLP
    # (FalconDecoderLayer.forward ``attention_layernorm_out``): beside the MLP's input
    # where the MLP has a norm of its own (falcon-rw's sequential block, Falcon-40B's ln_mlp).
    layer_holds_attention_norm_output: bool = False
    # The model multiplies the token embeddings' output by a scalar outside the embedding
    # module (GraniteModel.forward ``inputs_embeds * self.embedding_multiplier``): a new
    # tensor beside the module's output, which checkpointing makes a graph leaf
    # (step.embedding_leaf_apart). Gemma's scale is inside its embedding module, whose
    # output is then the leaf itself.
    embeddings_scaled_apart: bool = False
    # With images, the image-text model gives the processor's token_type_ids to its mask
    # builder, and each image's tokens attend to one another both ways (Gemma 3:
    # transformers 5.24 Gemma3Model.forward, create_masks_for_vision_model): sdpa gets an
    # explicit (b, 1, s, s) boolean mask in every layer, global and sliding
    # (ops.attention.image_block_mask), not is_causal.
    image_tokens_bidirectional: bool = False
    # Elements of the registered buffers each block keeps, cast with the model to its dtype
    # and live for the whole run (Qwen-1's QWenAttention: logn_tensor, 32,767 entries, and
    # masked_bias, 1); transformers 5's blocks register none.
    block_buffers: int = 0
    # transformers 4 releases whose code for this family registers, in each attention
    # layer's rotary module, the cos and sin of every position: two (max_position_embeddings,
    # rotary dims) buffers per layer in the default dtype at construction, live for the
    # whole run (ftmem.versions: LLAMA_ROTARY_CACHE...); empty: none of its releases does.
    rotary_cache_releases: Releases = ()
    # transformers 4 releases whose code for this family computes the cos and sin in each
    # attention layer's forward (kept by that layer's multiplies, in the hidden states'
    # dtype), not once per model (ftmem.versions: LLAMA_ROTARY_PER_LAYER...).
    rotary_per_layer_releases: Releases = ()
    # transformers releases whose model registers a (max_position_embeddings,
    # max_position_embeddings) causal_mask buffer, with its element bytes in each
    # (ftmem.versions: LLAMA_CAUSAL_MASK_INT64...); empty: none does.
    causal_mask_buffer: tuple[tuple[Releases, int], ...] = ()
    # transformers releases whose model gives sdpa an explicit float causal mask in every
    # forward, padded or not (ftmem.versions: LLAMA_SDPA_FLOAT_MASK...).
    sdpa_float_mask_releases: Releases = ()
    # transformers releases whose rotary modules keep the cos and sin of their last forward
    # as attributes between steps (ftmem.versions: LLAMA_LAST_COS_SIN_KEPT).
    last_cos_sin_releases: Releases = ()
    # transformers releases whose model loop gives each block it checkpoints the config's
    # use_cache and collects the key/value cache the block returns into the model's output
    # (ftmem.returned_cache; ftmem.versions: GPT_BIGCODE_CHECKPOINTED_CACHE).
    checkpointed_cache_releases: Releases = ()
    # transformers releases whose attention for this family calls the shared
    # sdpa_attention_forward (picked from ALL_ATTENTION_FUNCTIONS) while it still made q, k
    # and v contiguous before the kernel (ftmem.versions: TRANSFORMERS_SDPA_CONTIGUOUS...);
    # empty: its sdpa path never did (its own attention, or GPT-2's kept views: not derived).
    sdpa_contiguous_releases: Releases = ()
    # The model's forward computes its own loss from the labels (remote code: Qwen-1's
    # QWenLMHeadModel.forward), which a run whose loss is transformers' default takes
    # instead (profiles.framework_run); None: transformers' loss.
    own_loss: Literal["shifted"] | None = None
    # transformers releases whose causal LM computes its own loss rather than the shared
    # ForCausalLMLoss, and which of ftmem's losses that is (ftmem.versions.model_own_loss:
    # GPT-2's shifted 16-bit copy before 4.48.3, the Llama-like families' upcast-shifted
    # loss before 4.46, Granite's and Mistral's until 4.48); empty: the shared loss
    # wherever the run's release has one.
    own_loss_releases: tuple[tuple[Releases, Literal["shifted", "upcast-shifted"]], ...] = ()
    # The q/k norms span the whole projection (OLMo 2), not one head each.
    qk_norm_per_head: bool = True
    # The config.json key that switches per-head q/k norms on (Cohere's use_qk_norm,
    # StableLM's and Phi's qk_layernorm): they are then the family's own norm (Cohere's
    # fp32 LayerNorm, nn.LayerNorm); None: the model type decides (qk_norm above).
    qk_norm_switch: str | None = None
    # How the per-head q/k norms hold their weights: "shared", one head-wide vector all
    # heads use (Qwen3's RMSNorm(head_dim), Phi's nn.LayerNorm(head_dim)); "per_head", one
    # (heads, head_dim) tensor (Cohere's CohereLayerNorm((heads, head_dim))); "modules",
    # one LayerNorm module per head, each its own tensor (StableLM's
    # StableLmLayerNormPerHead: ``norms.{i}``).
    qk_norm_weights: Literal["shared", "per_head", "modules"] = "shared"
    # The q/k norms' names in the attention module, and whether they have a bias (Phi's
    # nn.LayerNorm default; StableLM's per-head LayerNorms are built with bias=False).
    qk_norm_names: tuple[str, str] = ("q_norm", "k_norm")
    qk_norm_bias: bool = False
    # The per-head q/k norms act on the rotated q and k (Hunyuan-V1-Dense, transformers
    # 5.25 modeling_hunyuan_v1_dense.py l.196-198), not on the projection's output: their
    # input is in the rotary's dtype (the promotion of the projection's output and the
    # cos/sin tables': fp32 under autocast), and so is the normalised tensor they keep
    # for a trained weight (``hidden_states.to(input_dtype)``).
    qk_norm_after_rotary: bool = False
    # The block's two norms act on each sublayer's output before the residual add, and
    # nothing normalises its input (OLMo 2): attention and MLP read the residual stream.
    norms_after_sublayers: bool = False
    # RMSNorm scales by (1 + w) in fp32 (Gemma), not by w after a cast back.
    norm_scale_in_fp32: bool = False
    # The scale is a new fp32 vector each call, ``1.0 + self.weight.float()``, which the
    # multiply keeps when the norm's input needs a gradient (Gemma's RMSNorms: transformers
    # 5.25 modeling_gemma.py l.77, modeling_gemma2.py l.62, modeling_gemma3.py l.132).
    norm_scale_plus_one: bool = False
    # The residual LayerNorms scale by ``weight + 1.0``, a new tensor in the weight's dtype
    # per call, which native_layer_norm keeps beside its input whether the input or the
    # weight needs the gradient (Nemotron's NemotronLayerNorm1P, transformers 5.25
    # modeling_nemotron.py l.60-80: ``F.layer_norm(input, shape, self.weight + 1.0,
    # self.bias, eps)``). Under CUDA's autocast it casts its arguments to 16-bit first
    # (``_cast_if_autocast_enabled`` asks torch.is_autocast_enabled(), CUDA's state: the
    # CPU's autocast leaves it in fp32, measured), which is not measured: refused there.
    layer_norm_plus_one: bool = False
    # The residual norms are LayerNorms without weight or bias run on an fp32 copy of
    # their input (OLMo 1's OlmoLayerNorm, transformers 5.25 modeling_olmo.py l.48-60:
    # ``F.layer_norm(x.to(torch.float32), shape, None, None, eps=1e-5).to(orig_dtype)``):
    # no parameters, and native_layer_norm keeps that fp32 copy (the input itself when it
    # is fp32) with fp32 mean and rstd, only where the input needs a gradient.
    norms_without_parameters: bool = False
    # The RMSNorms take their statistic as ``torch.pow(mean_squared, -0.5)`` (Gemma 4:
    # transformers 5.25 modeling_gemma4.py Gemma4RMSNorm._norm l.205-208), whose backward
    # reads its input: the fp32 mean square is kept beside its power, two fp32 values a
    # row where rsqrt's backward keeps one (its result).
    norm_rstd_by_pow: bool = False
    # The values pass a weightless per-head RMSNorm before the kernel (Gemma 4's v_norm,
    # Gemma4RMSNorm(head_dim, with_scale=False), modeling_gemma4.py l.1173 and l.1222):
    # where v needs a gradient it keeps its fp32 input and statistics, and the kernel
    # keeps its output, a new tensor in the projection's dtype (``type_as``).
    values_normed: bool = False
    # The last layer of each layer type puts its keys and values into the model's
    # KVSharingDict whether or not a later layer reuses them (Gemma 4:
    # configuration_gemma4.py kv_sharing_modes l.243-246, modeling_gemma4.py l.1228-1229
    # ``shared_kv_states[self.layer_type] = key_states, value_states``). The dict is a
    # keyword argument of every decoder layer: checkpointed, the checkpoints hold it, and
    # those keys and values, from that layer's forward until the backward has passed the
    # layers (activations.stored_kv_held).
    stores_last_kv_per_layer_type: bool = False
    # The config class makes the last layer attend globally whatever layer_types says
    # (Gemma 4: configuration_gemma4.py l.172-176): at most num_layers - 1 layers slide.
    top_layer_global: bool = False
    # The first transformers release whose code for the family ftmem read (Gemma 4: 5.25,
    # the release installed when it was added); an older transformers_version is refused,
    # not estimated with another release's mechanisms. None: every release it models.
    since_transformers: tuple[int, int, int] | None = None
    # Whole-model configs (their model_type) whose encoders ftmem does not model, where a
    # text-only estimate would leave out what the model builds, each with what to do
    # instead (Gemma 4's image and audio encoders: its text_config is this family's)
    unmodelled_wrappers: tuple[tuple[str, str], ...] = ()
    # The residual norms are bias-free LayerNorms written out in fp32 (Cohere), modelled
    # with arch.norm "rmsnorm" (one weight): they keep the centred fp32 input twice (two
    # subtractions of the mean) beside the rstd.
    norm_centres_twice: bool = False
    # The RMSNorms scale by an fp32 copy of their weight, in fp32, before casting back
    # (Helium: ``(self.weight.to(torch.float32) * hidden_states).to(input_dtype)``,
    # transformers 5.25 modeling_helium.py HeliumRMSNorm): the product keeps that copy
    # for its input's gradient (16-bit weights only; an fp32 weight is not copied) and
    # the fp32 normalised tensor for the weight's.
    norm_weight_cast_fp32: bool = False
    # o_proj reads the attention kernel's output storage itself (no copy in between).
    o_proj_reads_kernel_output: bool = True
    # The MoE router's linear runs on an fp32 copy of its input, with its weight kept in
    # fp32 whatever the model's dtype (DeepSeek: F.linear(h.type(float32), w.type(float32)),
    # _keep_in_fp32_modules_strict ["gate.weight"]).
    router_fp32: bool = False
    # The router runs with autocast disabled (ERNIE 4.5 MoE: ``maybe_autocast(enabled=
    # False)`` around F.linear(h.float(), w.float())): its fp32 input stays fp32 under
    # autocast, and on an fp32 residual it is the MLP input itself.
    router_autocast_off: bool = False
    # The router keeps a frozen fp32 correction bias per sparse block as a parameter
    # (ERNIE 4.5 MoE's moe_statics.e_score_correction_bias; DeepSeek's is a buffer).
    router_statistics: bool = False
    # The router divides its top-k by ``clamp(sum, min=...)`` out of place (ERNIE 4.5
    # MoE): the clamp keeps its input (T fp32) beside the division's operands.
    router_renormalises_clamped: bool = False
    # The routing weights are cast to the MoE block's input dtype (the residual's: fp32
    # under autocast over fp32 weights), not the router's output dtype (ERNIE 4.5 MoE:
    # ``routing_weights.to(hidden_states.dtype)``).
    routing_weights_in_hidden_dtype: bool = False
    # Why bitsandbytes' quantised model of this family is not modelled (refused), where
    # it quantises a module the layout keeps in full precision (Hunyuan-V1-MoE's fp32
    # router wg is an nn.Linear: a Linear4bit under QLoRA); empty where it is modelled.
    quantisation_unmodelled: str = ""
    # The shared experts' output is scaled per token by sigmoid(shared_expert_gate(x)), a
    # bias-free nn.Linear(hidden, 1) beside them (Qwen2-MoE: transformers 5.25
    # modeling_qwen2_moe.py Qwen2MoeSparseMoeBlock.forward); ModuleNames.shared_experts
    # names it "scale". Not a Linear of the layout: no adapter or quantisation reaches it
    # in what ftmem models (ops.mlp.shared_expert_gate_saved).
    shared_expert_gate: bool = False
    # The router is a linear with a bias and takes its softmax over the top-k logits it
    # selected, not over every expert's (gpt-oss: GptOssTopKRouter, transformers 5.24
    # models/gpt_oss/modeling_gpt_oss.py).
    router_topk_softmax: bool = False
    # That top-k softmax runs on the router's logits cast to fp32 (GraniteMoE: transformers
    # 5.25 modeling_granitemoe.py GraniteMoeTopKRouter.forward, ``F.linear(h, w).float()``,
    # topk, softmax, ``.type_as(h)``): it keeps its fp32 output whatever dtype the routing
    # weights are cast to after it (routing_weights_in_hidden_dtype).
    router_topk_softmax_fp32: bool = False
    # The router is PhiMoE's sparsemixer in training (transformers 5.25 modeling_phimoe.py
    # sparsemixer, PhimoeMultiplier): two experts a token, each picked by Gumbel sampling
    # over a masked softmax of the logits; per pick it keeps the (T, E) bool mask of
    # masked_fill, the (T, E) softmax in the logits' dtype, the (T, 1) int64 pick and the
    # (T, 1) multiplier (MoE.router_saved).
    router_sparsemixer: bool = False
    # The MoE block multiplies its input in place by uniform noise in training, then its
    # router does again (PhiMoE's input_jitter_noise > 0: PhimoeSparseMoeBlock.forward,
    # PhimoeTopKRouter.forward ``hidden_states *= torch.empty_like(...).uniform_(...)``):
    # each multiply keeps its (T, h) noise (Architecture.input_jitter).
    moe_input_jitter: bool = False
    # Whether the router divides its top-k softmax weights by their sum is config.json's
    # norm_topk_prob (Qwen3-MoE, OLMoE: ``if self.norm_topk_prob: router_top_value /=
    # router_top_value.sum(...)``), read into Architecture.router_renormalises; Mixtral's
    # always does (transformers 5.24 MixtralTopKRouter).
    router_renormalisation_optional: bool = False
    # The routing weights are cast back to the router's output dtype after the fp32
    # softmax (Qwen3-MoE, OLMoE: ``router_top_value.to(router_logits.dtype)``, transformers
    # 5.24 Qwen3MoeTopKRouter / OlmoeTopKRouter), not left fp32 (Mixtral): the weighted
    # expert outputs and their gradients are in the experts' dtype.
    routing_weights_in_router_dtype: bool = False
    # The causal LM adds the router's load-balancing loss when config.json's
    # output_router_logits is true (transformers 5.24 MixtralForCausalLM.forward and its
    # copies in Qwen3-MoE, OLMoE, gpt-oss: load_balancing_loss_func over every layer's
    # router logits), read into Architecture.router_aux_loss; DeepSeek-V2/V3 have none.
    router_aux_loss: bool = False
    # Why the load-balancing loss its causal LM does add is not modelled (GraniteMoE's over
    # fp32 router logits, unmeasured): the refusal of --router-aux-loss says so; empty
    # where the model computes none or ftmem models it.
    router_aux_loss_unmodelled: str = ""
    # config.json's clip_qkv (Architecture.qkv_clip) clamps the query (after its norm),
    # key and value projections in place (OLMoE: transformers 5.24 OlmoeAttention.forward,
    # ``query_states.clamp_(min=-clip_qkv, max=clip_qkv)``).
    qkv_clip: bool = False
    # The 3-D experts are stored (experts, in, out), each with a bias (experts, out) named
    # `<proj>_bias` (gpt-oss: gate_up_proj [E, H, 2F], down_proj [E, F, H]), and the gate and
    # up halves interleave; transformers 5 Mixtral's are (experts, out, in) without biases.
    experts_transposed_with_bias: bool = False
    # peft rewrites transformers-4 expert targets for this model type (peft 0.21.2
    # utils/transformers_weight_conversion.py _convert_peft_config_moe, through
    # transformers' conversion mapping): gate/up/down (Mixtral's w1/w3/w2) become
    # target_parameters on the 3-D experts, gate_up at twice the rank, and no longer
    # adapt the dense or shared MLPs' linears of those names. gpt-oss has no mapping.
    peft_converts_expert_targets: bool = False
    # Why peft's LoRA on all-linear fails for this model type (PhiMoE: its router is an
    # nn.Linear subclass whose forward returns the routing, which peft wraps like any
    # linear and whose tuple its LoRA layer then cannot add to); empty where it runs.
    peft_all_linear_fails: str = ""
    # The attention module peft's adaption prompt wraps in this model type (peft 0.21.2
    # tuners/adaption_prompt/config.py TRANSFORMERS_MODEL_CONFIG: Llama's and Mistral's
    # self_attn, GPT-2's attn); empty where peft's prepare_config refuses the model type.
    adaption_prompt_target: str = ""
    # peft's default LN-tuning targets for the model type (peft 0.21.2 utils/constants.py
    # l.155-192 TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING, the same at
    # huggingface/peft@5d602fdbff04); () where peft has none
    ln_tuning_targets: tuple[str, ...] = ()
    # The experts' SwiGLU clamps gate and up and computes (up + 1)·gate·sigmoid(α·gate)
    # (gpt-oss, GptOssExperts._apply_gate): five intermediates kept, not silu's one.
    clamped_swiglu: bool = False
    # A learned logit per head joined to every row of scores before the softmax and
    # dropped after it (gpt-oss's `sinks`; eager_attention_forward keeps the s × (s + 1)
    # probabilities and the row maxima's indices).
    attention_sinks: bool = False
    # The LM head has a bias (Phi-1.5/2).
    head_bias: bool = False
    # The config.json key that gives the LM head a bias (PhiMoE's lm_head_bias, read into
    # Architecture.head_bias); None: the family decides (head_bias above).
    head_bias_switch: str | None = None
    # The module of the linear-attention layers (Architecture.linear_attention: Qwen3.5's
    # "linear_attn", transformers 5.25 modeling_qwen3_5.py Qwen3_5DecoderLayer l.942-946);
    # "" where every layer attends in full.
    linear_attention_module: str = ""
    # The module of LFM2's short-convolution layers (Lfm2DecoderLayer.conv, transformers 5.25
    # models/lfm2/modeling_lfm2.py l.426; Architecture.short_conv); "": the family has none.
    short_conv_module: str = ""
    # q_proj computes the query and a gate of the same width, sigmoid(gate) scaling the
    # attention output before o_proj (Qwen3.5: Qwen3_5Attention l.837-839, ops.output_gate).
    attention_output_gate: bool = False
    # peft's prefix tuning runs (peft 0.21 sizes the prefix per query head, which a
    # multi-query cache rejects: Falcon).
    prefix_tuning: bool = True
    # ColossalAI shardformer's policy for the model (shardformer/policies/auto_policy.py
    # at hpcaitech/ColossalAI 4f9953be335e; HybridParallelPlugin needs one): None where it
    # has none, else the sequence parallelism modes that policy runs (empty: it warns and
    # ignores them).
    colossalai_policy: frozenset[str] | None = None
    # What makes that policy replace the attention's forward with its own, which repeats
    # keys and values to every query head (transformers' repeat_kv, a copy with more than
    # one kv head) before the kernel: "flash" (enable_flash_attention), "sp" (sequence
    # parallelism, any mode); empty where it keeps transformers' attention
    colossalai_repeats_kv: frozenset[str] = frozenset()
    # Under sequence parallelism without flash attention that forward computes attention
    # with eager matmuls and an fp32 softmax, whatever the model's attn_implementation
    colossalai_sp_eager: bool = False
    # Where ColossalAI's shardformer replaces the model forward with one that builds
    # ColoAttention's materialised (b, 1, s, s) causal mask (ColoAttention.prepare_attn_kwargs,
    # sequence_parallel.shardformer_mask_positions): "flash", "sp" as above
    colossalai_builds_mask: frozenset[str] = frozenset()
    # The dropouts its transformers model applies in training, as Architecture fields
    # (residual_dropout, embedding_dropout) -> the config.json key that sets each.
    dropout_keys: Mapping[str, str] = field(default_factory=dict)
    # The dropouts its config class trains with where config.json leaves the key out
    # (Seed-OSS: SeedOssConfig's attention_dropout and residual_dropout 0.1), by key:
    # read as if given (dropout_keys) and said in the dropout note (the rest).
    dropout_defaults: Mapping[str, float] = field(default_factory=dict)
    notes: Mapping[NoteKey, str] = field(default_factory=dict)

    def notes_for(self, key: NoteKey) -> list[str]:
        """The family's note for a situation, as a list to add to the estimate's."""
        return [self.notes[key]] if key in self.notes else []

    @property
    def fused_qkv(self) -> bool:
        return "qkv" in self.names.attention

    @property
    def moe(self) -> bool:
        return bool(self.names.experts)


@cache
def names() -> tuple[str, ...]:
    """Every family ftmem knows, from the modules of this package."""
    modules = pkgutil.iter_modules(__path__)
    return tuple(sorted(m.name for m in modules if not m.ispkg and not m.name.startswith("_")))


@cache
def get(name: str) -> Family:
    """The family called ``name`` (a KeyError for an unknown one: callers check
    :func:`names` first, where the user's text is)."""
    if name not in names():
        raise KeyError(name)
    family: Family = importlib.import_module(f"{__name__}.{name}").FAMILY
    if family.name != name:
        raise RuntimeError(f"{__name__}.{name} defines family {family.name!r}")
    return family


@cache
def by_model_type() -> dict[str, Family]:
    """config.json's ``model_type`` -> family; a model_type claimed twice is an error."""
    out: dict[str, Family] = {}
    for name in names():
        family = get(name)
        for model_type in family.model_types:
            if model_type in out:
                raise RuntimeError(
                    f"model_type {model_type!r} is claimed by {out[model_type].name} and {name}"
                )
            out[model_type] = family
    return out


@cache
def unmodelled_wrappers() -> dict[str, str]:
    """Whole-model ``model_type`` -> why it is refused (Family.unmodelled_wrappers)."""
    return {kind: why for name in names() for kind, why in get(name).unmodelled_wrappers}
