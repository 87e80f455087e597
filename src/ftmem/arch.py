"""Architecture schema and exact parameter counting for transformers (decoder-only, and
T5's encoder-decoder).

An :class:`Architecture` is plain data: a preset YAML, an HF ``config.json`` or
anything else becomes one of these, and nothing downstream knows where it came
from. :func:`layout` turns it into the list of parameter tensors the real model
holds (names, shapes, which ones are ``nn.Linear`` weights), one block as a
template repeated ``num_layers`` times, so counts are exact and fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from math import prod
from typing import TYPE_CHECKING, Literal

from ftmem import families, limits
from ftmem.errors import InvalidInputError
from ftmem.validation import (
    Field,
    FiniteFloat,
    Model,
    NonNegativeInt,
    PositiveInt,
    field_validator,
    model_validator,
)
from ftmem.vision import VisionTower, projector_count, text_extras_count, tower_count

if TYPE_CHECKING:  # (ops.saved imports this module)
    from ftmem.ops.gated_deltanet import DeltaNetShape

# "statistic": a parameter that never trains, stored in fp32 whatever the model's dtype
# (ERNIE 4.5 MoE's e_score_correction_bias); "delta_rule": a Gated DeltaNet layer's own
# tensors beside its linears (the depthwise conv1d's weight, dt_bias, A_log); "short_conv":
# an LFM2 short-convolution layer's depthwise conv weight and bias
ParamKind = Literal[
    "linear",
    "linear_bias",
    "expert",
    "embedding",
    "norm",
    "router",
    "position",
    "sink",
    "statistic",
    "activation",
    "delta_rule",
    "short_conv",
]
# Roles a linear layer can play; LoRA targets are chosen by role or by module name.
# "linear_attention": a Gated DeltaNet layer's projections (in_proj_*, out_proj), chosen by
# name or all-linear, never by q/k/v/o (peft matches module names: q_proj and v_proj are
# the full-attention layers' only); "short_conv": an LFM2 short-convolution layer's
# in_proj and out_proj, likewise
Role = Literal["q", "k", "v", "o", "gate", "up", "down", "router", "linear_attention", "short_conv"]
# Token embedding parameters, by family (T5's is shared by its encoder and decoder;
# GPT-NeoX's embed_in: its gradient too appears only after the blocks' backward).
TOKEN_EMBEDDINGS = (
    "embed_tokens.weight", "wte.weight", "word_embeddings.weight", "shared.weight",
    "embed_in.weight",
)  # fmt: skip
ATTENTION_ROLES: tuple[Role, ...] = ("q", "k", "v", "o")
MLP_ROLES: tuple[Role, ...] = ("gate", "up", "down")
# The LM head's module: transformers 5 names it so in every causal LM (GPT-NeoX's
# checkpoints say embed_out, renamed on loading: transformers' conversion_mapping.py).
HEAD = "lm_head"


class LinearAttention(Model, strict=True):
    """A stack's Gated DeltaNet linear-attention layers (Qwen3.5: transformers 5.25
    models/qwen3_5/modeling_qwen3_5.py Qwen3_5DecoderLayer builds Qwen3_5GatedDeltaNet
    where ``layer_types[i]`` is "linear_attention", the gated Qwen3_5Attention where it
    is "full_attention"). Their widths, as config.json names them (linear_num_key_heads,
    linear_num_value_heads, linear_key_head_dim, linear_value_head_dim,
    linear_conv_kernel_dim). ``layers`` counts them and ``indices`` places them, bottom to
    top, where config.json's ``layer_types`` does (by default every fourth layer full:
    three linear to one); without ``indices`` they are the lowest ``layers`` blocks. The
    top block attends in full (Architecture._fits_linear_attention), as in every Qwen3.5
    stack."""

    layers: PositiveInt
    key_heads: PositiveInt
    value_heads: PositiveInt
    key_head_dim: PositiveInt
    value_head_dim: PositiveInt
    conv_kernel: PositiveInt
    indices: tuple[NonNegativeInt, ...] = Field(
        (),
        exclude_if=lambda value: not value,
        description="The linear-attention layers' indices, bottom to top (config.json's "
        "layer_types); empty: the lowest `layers` blocks.",
    )
    fused: bool = Field(
        False,
        exclude_if=lambda value: not value,
        description="Qwen3-Next's two fused input projections (in_proj_qkvz, in_proj_ba) in "
        "place of Qwen3.5's four (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a).",
    )

    @field_validator("indices", mode="before")
    @classmethod
    def _listed(cls, value: object) -> object:
        # a preset's YAML (or JSON) gives the indices as a list
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _bounded(self) -> LinearAttention:
        for name in type(self).model_fields:
            if name in ("indices", "fused"):
                continue  # (checked against num_layers: Architecture._fits_linear_attention)
            bound = limits.LAYERS if name == "layers" else limits.WIDTH
            problem = bound.problem(f"linear_attention.{name}", getattr(self, name))
            if problem:
                raise ValueError(problem)
        return self

    def shape(self, hidden: int) -> DeltaNetShape:
        from ftmem.ops.gated_deltanet import DeltaNetShape

        return DeltaNetShape(
            hidden,
            self.key_heads,
            self.value_heads,
            self.key_head_dim,
            self.value_head_dim,
            self.conv_kernel,
            self.fused,
        )


class ShortConv(Model, strict=True):
    """A stack's short-convolution layers (LFM2: transformers 5.25
    models/lfm2/modeling_lfm2.py Lfm2DecoderLayer builds Lfm2ShortConv where
    ``layer_types[i]`` is "conv", Lfm2Attention elsewhere). Lfm2ShortConv.__init__
    (l.371-394): in_proj (hidden -> 3·hidden: B, C and x), a depthwise nn.Conv1d of
    ``kernel`` taps (config.json's conv_L_cache; weight (hidden, 1, kernel)), out_proj
    (hidden -> hidden), all three with biases where config.json's ``conv_bias`` says.
    ``indices``: the conv layers, bottom to top (any layer, the top one included)."""

    indices: tuple[NonNegativeInt, ...]
    kernel: PositiveInt
    bias: bool = False

    @field_validator("indices", mode="before")
    @classmethod
    def _listed(cls, value: object) -> object:
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _bounded(self) -> ShortConv:
        problem = limits.WIDTH.problem("short_conv.kernel", self.kernel)
        if problem:
            raise ValueError(problem)
        return self


class Architecture(Model, strict=True):
    """The shape of a transformer: everything memory depends on.

    An encoder-decoder (family ``t5``) has ``num_layers`` encoder blocks and as many
    decoder blocks; its layout treats each encoder/decoder pair as one block.
    """

    # strict: a preset's `tie_embeddings: "no"` or `num_layers: true` is refused, not read

    name: str
    family: str = Field(description="A module of ftmem.families (llama, gpt2, t5...).")
    source: str | None = Field(None, description="Where the numbers come from (config URL).")
    published_params: int | None = Field(
        None, description="Published total parameter count, to test the count against."
    )
    published_params_source: str | None = None
    vocab_size: PositiveInt
    hidden_size: PositiveInt
    num_layers: PositiveInt
    num_heads: PositiveInt
    num_kv_heads: PositiveInt | None = Field(
        None, description="KV heads (GQA/MQA); = heads if unset."
    )
    head_dim: PositiveInt | None = Field(None, description="= hidden_size / num_heads if unset.")
    rotary_dim: PositiveInt | None = Field(
        None,
        description="Dimensions of each head the rotary turns (Pythia, Phi); = head_dim if unset.",
    )
    intermediate_size: PositiveInt
    mlp: Literal["gated", "plain"] = "gated"
    activation: Literal["silu", "gelu", "gelu_tanh", "relu", "relu2", "xielu"] = "silu"
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norms_per_block: Literal[1, 2, 4] = Field(
        2, description="1: one shared input norm (Falcon-7B); 4: pre+post norms (Gemma-2)."
    )
    parallel_attn_mlp: bool = Field(False, description="Attention and MLP read the same input.")
    attention_qkv_bias: bool = False
    qk_norm: bool = Field(
        False,
        description="A norm over each query and key head before the rotary (Qwen3's RMSNorm; "
        "the LayerNorms Cohere's use_qk_norm and StableLM's and Phi's qk_layernorm switch on).",
    )
    attention_out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    position_embedding: Literal["rotary", "learned", "alibi", "relative"] = "rotary"
    max_position_embeddings: PositiveInt = 4096
    num_experts: PositiveInt = Field(1, description="MoE experts per layer (1 = dense MLP).")
    experts_per_token: PositiveInt = 1
    router_renormalises: bool = Field(
        True,
        description="MoE: the router divides its top-k softmax weights by their sum "
        "(config.json's norm_topk_prob where the family reads it; Mixtral always does).",
    )
    router_aux_loss: bool = Field(
        False,
        exclude_if=lambda value: not value,
        description="MoE: the causal LM adds the router's load-balancing loss "
        "(config.json's output_router_logits, where the family's model computes one).",
    )
    input_jitter: bool = Field(
        False,
        exclude_if=lambda value: not value,
        description="MoE: the block and its router multiply their input by uniform noise "
        "in training (config.json's input_jitter_noise > 0, PhiMoE).",
    )
    head_bias: bool = Field(
        False,
        exclude_if=lambda value: not value,
        description="The LM head has a bias (config.json's lm_head_bias, PhiMoE).",
    )
    qkv_clip: FiniteFloat | None = Field(
        None,
        gt=0,
        exclude_if=lambda value: value is None,
        description="Queries, keys and values clamped to ±qkv_clip after their projections "
        "(config.json's clip_qkv, OLMoE); None = no clamp.",
    )
    shared_experts_size: NonNegativeInt = Field(
        0,
        description="MoE: width of the dense MLP every token takes beside its routed experts "
        "(DeepSeek's shared_experts: moe_intermediate_size × n_shared_experts); 0 = none.",
    )
    dense_layers: NonNegativeInt = Field(
        0,
        description="MoE: the first blocks with a dense MLP instead of experts (DeepSeek's "
        "first_k_dense_replace).",
    )
    dense_intermediate_size: PositiveInt | None = Field(
        None, description="The dense blocks' MLP width (dense_layers > 0)."
    )
    kv_lora_rank: PositiveInt | None = Field(
        None,
        description="Multi-head latent attention (DeepSeek-V2/V3): the width of the "
        "compressed key/value latent; head_dim is then qk_nope + qk_rope, rotary_dim qk_rope.",
    )
    q_lora_rank: PositiveInt | None = Field(
        None, description="MLA: the compressed query's width (None: one q_proj)."
    )
    v_head_dim: PositiveInt | None = Field(
        None, description="MLA: each head's value width (= head_dim if unset)."
    )
    sliding_window: PositiveInt | None = None
    sliding_layers: NonNegativeInt = Field(
        0,
        description="Layers whose KV cache keeps only the sliding window (transformers 5's "
        "DynamicSlidingWindowLayer); 0 counts every layer's cache in full, the safe side.",
    )
    full_head_dim: PositiveInt | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="The full-attention (non-sliding) layers' head size where it is not "
        "head_dim (Family.attention_shape_per_layer_type; None: head_dim).",
    )
    full_kv_heads: PositiveInt | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="The full-attention layers' key/value heads where not num_kv_heads.",
    )
    full_values_are_keys: bool = Field(
        False,
        exclude_if=lambda value: not value,
        description="The full-attention layers have no v projection: their values are "
        "their k projection's output (Family.attention_shape_per_layer_type).",
    )
    sliding_indices: tuple[NonNegativeInt, ...] = Field(
        (),
        exclude_if=lambda value: not value,
        description="The sliding layers' indices, bottom to top, where they are not the "
        "lowest sliding_layers ones (Gemma 4 with key/value sharing: config.json's "
        "layer_types order; empty: the lowest).",
    )
    kv_shared_layers: NonNegativeInt = Field(
        0,
        exclude_if=lambda value: not value,
        description="The top layers that reuse the keys and values of the last lower layer "
        "of their type and have no k/v projections or key norm of their own (Gemma 4's "
        "num_kv_shared_layers; step._check_kv_sharing says which runs are estimated).",
    )
    kv_shared_double_mlp: bool = Field(
        False,
        exclude_if=lambda value: not value,
        description="The key/value reusing layers' MLP is twice intermediate_size wide "
        "(Gemma 4's use_double_wide_mlp).",
    )
    per_layer_input_size: NonNegativeInt = Field(
        0,
        exclude_if=lambda value: not value,
        description="Width of each layer's per-layer input (ModuleNames.per_layer): a token "
        "table of num_layers such inputs a token, a projection of the embeddings to them and "
        "its norm; in each block a gate to this width, a projection back and a norm. 0: none.",
    )
    per_layer_input_vocab: PositiveInt | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="Rows of the per-layer token table where not vocab_size.",
    )
    final_logit_softcapping: FiniteFloat | None = None
    attn_logit_softcapping: FiniteFloat | None = Field(
        None, description="Gemma-2: tanh soft-capping of the attention scores."
    )
    relative_attention_num_buckets: PositiveInt = Field(
        32, description="T5: buckets of the relative position bias (one table per stack)."
    )
    dropout_rate: FiniteFloat = Field(
        0.0, ge=0.0, lt=1.0, description="T5: dropout in training (its configs ship 0.1)."
    )
    residual_dropout: FiniteFloat = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Decoders: dropout on attention's and the MLP's outputs (GPT-2's resid_pdrop).",
    )
    embedding_dropout: FiniteFloat = Field(
        0.0, ge=0.0, lt=1.0, description="Decoders: dropout on the embeddings (GPT-2's embd_pdrop)."
    )
    embedding_extra_rows: NonNegativeInt = Field(
        0,
        description="Rows the token embedding holds beyond vocab_size (Llama-3.2-Vision's "
        "embed_tokens: vocab_size + 8, its LM head vocab_size).",
    )
    linear_attention: LinearAttention | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="Gated DeltaNet linear-attention layers beside the full-attention ones "
        "(Family.linear_attention_module: Qwen3.5); None: every layer attends in full.",
    )
    short_conv: ShortConv | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="LFM2's short-convolution layers beside its attention ones "
        "(Family.short_conv_module); None: every layer attends.",
    )
    vision: VisionTower | None = Field(
        None,
        description="Image-text models (LLaVA, Gemma 3): the vision tower and projector "
        "beside this language model (ftmem.vision).",
    )
    kv_repeated: bool = Field(
        False,
        exclude_if=lambda value: not value,
        description="The attention kernel is given keys and values copied to every query "
        "head (set on a parallel rank's slice where ColossalAI's shardformer attention "
        "runs repeat_kv before it: ftmem.sequence_parallel.shardformer_repeats_kv).",
    )
    coloattention_mask_positions: int = Field(
        0,
        exclude_if=lambda value: not value,
        description="The positions of the (b, 1, s, s) causal mask ColossalAI's shardformer "
        "model forward materialises for ColoAttention on a parallel rank, whose attention "
        "then calls ColoAttention (0: none; ftmem.sequence_parallel.shardformer_mask_positions).",
    )
    coloattention_mask_uninverted: bool = Field(
        False,
        exclude_if=lambda value: not value,
        description="That mask is left uninverted: the expand view of one (s, s) tensor for "
        "the whole batch, which the rank's attention (RingAttention) ignores (ring_attn on "
        "a pipeline's first stage; ftmem.sequence_parallel.coloattention_mask_bytes).",
    )

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if value not in families.names():
            known = ", ".join(families.names())
            raise ValueError(f"family {value[:40]!r} is not one ftmem knows ({known})")
        return value

    @field_validator("norms_per_block", mode="before")
    @classmethod
    def _count_not_flag(cls, value: object) -> object:
        if isinstance(value, bool):  # True == 1 would pass the Literal
            raise ValueError(f"norms_per_block must be 1, 2 or 4, not {value}")
        return value

    @field_validator("sliding_indices", mode="before")
    @classmethod
    def _indices_listed(cls, value: object) -> object:
        # a preset's YAML (or JSON) gives the indices as a list
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _within_bounds(self) -> Architecture:
        for name, bound in BOUNDS.items():
            value = getattr(self, name)
            problem = None if value is None else bound.problem(name, value)
            if problem:
                raise ValueError(problem)
        problem = limits.WIDTH.problem("num_heads × head_dim", self.q_size)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Architecture:
        kv = self.kv_heads
        if self.num_heads % kv:
            raise ValueError(f"num_kv_heads ({kv}) must divide num_heads ({self.num_heads})")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size}) "
                "when head_dim is not given"
            )
        self._fits_family()
        if self.activation in ("relu2", "xielu") and self.mlp != "plain":
            raise ValueError(f"activation {self.activation} is modelled on plain MLPs only")
        if self.activation == "xielu" and not self.traits.names.activation:
            raise ValueError(f"activation xielu: the {self.family} family has no xIELU module")
        self._fits_linear_attention()
        self._fits_short_conv()
        if self.rotary_dim is not None and (
            self.rotary_dim > self.head_size or self.position_embedding != "rotary"
        ):
            raise ValueError(
                f"rotary_dim ({self.rotary_dim}) is for rotary models, at most head_dim "
                f"({self.head_size})"
            )
        self._fits_latent_and_stack()
        self._fits_layer_types()
        if self.sliding_layers > self.num_layers or (
            self.sliding_layers and self.sliding_window is None
        ):
            raise ValueError(
                f"sliding_layers ({self.sliding_layers}) must be at most num_layers "
                f"({self.num_layers}), and needs a sliding_window"
            )
        self._fits_kv_sharing()
        if self.traits.top_layer_global and self.sliding_layers >= self.num_layers:
            raise ValueError(
                f"sliding_layers ({self.sliding_layers}): the {self.family} family's last "
                "layer attends globally, so at most num_layers - 1 slide"
            )
        if self.experts_per_token > self.num_experts:
            raise ValueError(
                f"experts_per_token ({self.experts_per_token}) exceeds num_experts "
                f"({self.num_experts})"
            )
        # counted once the layout is one the family builds (the count walks its modules)
        problem = limits.PARAMETERS.problem(f"{self.name}'s parameter count", count_params(self))
        if problem:
            raise ValueError(problem)
        return self

    def _fits_kv_sharing(self) -> None:
        """Sliding layers by index and key/value sharing (Gemma 4 only)."""
        idx = self.sliding_indices
        if idx and (
            len(idx) != self.sliding_layers
            or list(idx) != sorted(set(idx))
            or idx[-1] >= self.num_layers - 1
        ):
            raise ValueError(
                f"sliding_indices ({list(idx)}) must be the {self.sliding_layers} sliding "
                "layers' indices, ascending, below the top layer"
            )
        if not (self.kv_shared_layers or self.kv_shared_double_mlp):
            return
        if not self.traits.stores_last_kv_per_layer_type:  # (Gemma 4's KVSharingDict)
            raise ValueError(f"kv_shared_layers: the {self.family} family shares no keys")
        first = self.num_layers - self.kv_shared_layers
        stored = [
            first > 0 and any(b < first for b in self.type_blocks(f).indices) for f in (False, True)
        ]
        if (
            not self.kv_shared_layers
            or first < 1
            or not stored[1]
            or (self.sliding_layers and not stored[0])
        ):
            raise ValueError(
                f"kv_shared_layers ({self.kv_shared_layers}) must leave below the reusing "
                "layers a layer of each type they reuse (kv_shared_double_mlp needs them)"
            )

    def _fits_linear_attention(self) -> None:
        """Linear-attention layers are the family's, below at least one full-attention
        layer (ftmem's top block is a full-attention one, as in Qwen3.5's stacks)."""
        lin = self.linear_attention
        if lin is None:
            return
        if not self.traits.linear_attention_module:
            raise ValueError(f"linear_attention: the {self.family} family has none")
        if lin.layers >= self.num_layers:
            raise ValueError(
                f"linear_attention.layers ({lin.layers}) must leave full-attention layers "
                f"of the {self.num_layers}"
            )
        if lin.indices and (
            len(lin.indices) != lin.layers
            or list(lin.indices) != sorted(set(lin.indices))
            or lin.indices[-1] >= self.num_layers - 1
        ):
            raise ValueError(
                f"linear_attention.indices ({list(lin.indices)}) must be the "
                f"{lin.layers} linear-attention layers' indices, ascending, below the top "
                f"layer ({self.num_layers - 1}), which attends in full"
            )
        if lin.value_heads % lin.key_heads:
            raise ValueError(
                f"linear_attention.key_heads ({lin.key_heads}) must divide its value_heads "
                f"({lin.value_heads})"
            )

    def _fits_short_conv(self) -> None:
        """Short-convolution layers are the family's, at distinct layer indices; LFM2's
        stacks take any order (its top layer is often a conv one)."""
        conv = self.short_conv
        if conv is None:
            return
        if not self.traits.short_conv_module:
            raise ValueError(f"short_conv: the {self.family} family has none")
        if self.linear_attention is not None:
            raise ValueError("short_conv and linear_attention layers in one stack")
        if list(conv.indices) != sorted(set(conv.indices)) or (
            conv.indices and conv.indices[-1] >= self.num_layers
        ):
            raise ValueError(
                f"short_conv.indices ({list(conv.indices)}) must be distinct layer indices, "
                f"ascending, below {self.num_layers}"
            )

    def _fits_latent_and_stack(self) -> None:
        """Multi-head latent attention and a stack of dense then sparse blocks are what
        the family builds, with the widths they need."""
        names = self.traits.names
        if (self.kv_lora_rank is not None) != ("kv_a" in names.attention):
            raise ValueError(
                f"kv_lora_rank: the {self.family} family "
                + ("has" if "kv_a" in names.attention else "has no")
                + " multi-head latent attention"
            )
        if self.kv_lora_rank is None and (self.q_lora_rank or self.v_head_dim):
            raise ValueError("q_lora_rank and v_head_dim are for latent attention (kv_lora_rank)")
        if self.kv_lora_rank is not None and (
            self.rotary_dim is None or self.kv_heads != self.num_heads
        ):
            raise ValueError(
                "latent attention needs rotary_dim (qk_rope_head_dim) and as many key/value "
                "heads as heads"
            )
        if (self.shared_experts_size or self.dense_layers) and not self.is_moe:
            raise ValueError("shared_experts_size and dense_layers are for MoE models")
        if self.dense_layers >= self.num_layers:
            raise ValueError(
                f"dense_layers ({self.dense_layers}) must leave sparse blocks of the "
                f"{self.num_layers}"
            )
        if bool(self.dense_layers) != (self.dense_intermediate_size is not None):
            raise ValueError("dense_layers and dense_intermediate_size go together")

    def _fits_family_switches(self) -> None:
        """The switches only some families' config classes have (PhiMoE's)."""
        fam = self.traits
        if self.input_jitter and not (self.is_moe and fam.moe_input_jitter):
            raise ValueError(f"input_jitter: transformers' {fam.name} model adds no input noise")
        if self.head_bias and not fam.head_bias_switch:
            raise ValueError(f"head_bias: the {fam.name} family's LM head has no bias switch")

    def _fits_layer_types(self) -> None:
        """Full-attention layers of their own shape are the family's (Gemma 4's)."""
        own = self.full_head_dim or self.full_kv_heads or self.full_values_are_keys
        if own and not self.traits.attention_shape_per_layer_type:
            raise ValueError(
                "full_head_dim, full_kv_heads and full_values_are_keys are for families whose "
                f"full-attention layers have their own shape, not {self.family}"
            )
        if (self.per_layer_input_size or self.per_layer_input_vocab) and not (
            self.traits.names.per_layer
        ):
            raise ValueError(
                "per_layer_input_size and per_layer_input_vocab are for families with "
                f"per-layer inputs, not {self.family}"
            )
        if self.full_kv_heads and self.num_heads % self.full_kv_heads:
            raise ValueError(
                f"full_kv_heads ({self.full_kv_heads}) must divide num_heads ({self.num_heads})"
            )

    def _fits_family(self) -> None:
        """The layout asked for is one transformers builds for the family."""
        fam, names = self.traits, self.traits.names
        if not fam.encoder_decoder and self.norms_per_block not in names.norms:
            layouts = " or ".join(str(n) for n in sorted(names.norms))
            raise ValueError(
                f"norms_per_block {self.norms_per_block} is not a {fam.name} layout "
                f"(it has {layouts} norms per block)"
            )
        sequential = names.sequential_norms and not self.parallel_attn_mlp
        if sequential and self.norms_per_block != len(names.sequential_norms):
            raise ValueError(
                f"a sequential {fam.name} block (parallel_attn_mlp false) has "
                f"{len(names.sequential_norms)} norms, not {self.norms_per_block}"
            )
        if self.position_embedding == "learned" and not names.positions:
            raise ValueError(f"the {fam.name} family has no learned position embeddings")
        # the MLP's projections are the family's modules (a gated GPT-2, from a user preset
        # without `mlp`, looked for a gate projection GPT-2 does not have: a traceback)
        gated = bool({"gate", "gate_up"} & set(names.mlp))
        if not fam.encoder_decoder and (self.mlp == "gated") != gated:
            kind = "gated" if gated else "plain"
            raise ValueError(
                f"mlp {self.mlp} (gated is the default) is not the {fam.name} family's MLP, "
                f"which is {kind}: give mlp: {kind}"
            )
        if (self.position_embedding == "relative") != fam.encoder_decoder:
            raise ValueError("relative position buckets are for encoder-decoder (T5) families only")
        if fam.encoder_decoder and (self.norm != "rmsnorm" or self.kv_heads != self.num_heads):
            raise ValueError(f"{fam.name} has RMS norms and as many key/value heads as heads")
        # (a family whose config switches its norms onto q and k takes them as its norm is)
        layer_norms = self.norm != "rmsnorm" and fam.qk_norm_switch is None
        if self.qk_norm and (layer_norms or fam.encoder_decoder):
            raise ValueError("qk_norm (per-head RMS norms) needs a decoder-only rmsnorm model")
        if self.dropout_rate and not fam.encoder_decoder:
            raise ValueError("dropout_rate is supported for encoder-decoder (T5) families only")
        for site in ("residual_dropout", "embedding_dropout"):
            if getattr(self, site) and site not in fam.dropout_keys:
                raise ValueError(f"{site}: transformers' {fam.name} model has no such dropout")
        if self.is_moe and not fam.moe:
            raise ValueError(f"num_experts > 1: the {fam.name} family has no experts")
        self._fits_family_switches()
        if self.qkv_clip is not None and not fam.qkv_clip:
            raise ValueError(f"qkv_clip: transformers' {fam.name} model does not clamp q, k, v")
        if self.router_aux_loss and not (self.is_moe and fam.router_aux_loss):
            raise ValueError(
                f"router_aux_loss: transformers' {fam.name} model computes no router "
                "load-balancing loss"
            )
        if not self.router_renormalises and not fam.router_renormalisation_optional:
            raise ValueError(
                f"router_renormalises false: the {fam.name} router always divides its "
                "top-k weights by their sum"
            )

    @property
    def traits(self) -> families.Family:
        """The family's names and code-path flags (``ftmem.families``)."""
        return families.get(self.family)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def rotary_size(self) -> int:
        """The part of each head the rotary turns (cos and sin tables are this wide)."""
        return self.rotary_dim or self.head_size

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_size

    @property
    def v_size(self) -> int:
        """The attention output's width, o_proj's input (MLA: heads × v_head_dim)."""
        return self.num_heads * (self.v_head_dim or self.head_size)

    @property
    def latent_attention(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def cache_widths(self) -> tuple[int, int]:
        """What transformers' cache keeps per token and layer, as (key, value) widths: the
        keys and values of the kv heads, or under latent attention the compressed latent
        and the shared rotary key (transformers 5.24 DeepseekV3Attention.forward:
        ``cache.update(kv_nope, k_rot, ...)`` before kv_b_proj expands them)."""
        if self.kv_lora_rank is not None:
            return self.kv_lora_rank, self.rotary_size
        return self.kv_size, self.kv_size

    @property
    def linear_attention_blocks(self) -> Blocks | None:
        """The Gated DeltaNet blocks (LinearAttention.indices, else the lowest ones); None
        where every layer attends in full."""
        lin = self.linear_attention
        if lin is None:
            return None
        return Blocks(frozenset(lin.indices)) if lin.indices else Blocks.span(0, lin.layers)

    @property
    def short_conv_blocks(self) -> Blocks | None:
        """LFM2's short-convolution blocks (ShortConv.indices); None without them."""
        return None if self.short_conv is None else Blocks(frozenset(self.short_conv.indices))

    @property
    def full_attention_blocks(self) -> Blocks | None:
        """The full-attention blocks beside Gated DeltaNet or short-convolution ones
        (None: every block)."""
        other = self.linear_attention_blocks or self.short_conv_blocks
        if other is None:
            return None
        return Blocks(frozenset(range(self.num_layers)) - other.indices)

    def type_blocks(self, full: bool) -> Blocks:
        """The full-attention layers' blocks (``full``) or the sliding ones': the sliding
        ones at sliding_indices, else the lowest sliding_layers."""
        sliding = (
            Blocks(frozenset(self.sliding_indices))
            if self.sliding_indices
            else Blocks.span(0, self.sliding_layers)
        )
        if not full:
            return sliding
        return Blocks(frozenset(range(self.num_layers)) - sliding.indices)

    @property
    def kv_reusing_blocks(self) -> Blocks:
        """The top kv_shared_layers blocks (Gemma 4: Gemma4TextConfig's kv_sharing_modes,
        transformers 5.25 configuration_gemma4.py l.243-246)."""
        return Blocks.span(self.num_layers - self.kv_shared_layers, self.num_layers)

    @property
    def sparse_blocks(self) -> tuple[int, int]:
        """The blocks [first, last) with experts (DeepSeek: after its dense ones)."""
        return (self.dense_layers, self.num_layers)

    @property
    def full_layers(self) -> int:
        """The layers whose KV cache keeps every token (the others keep the window)."""
        return self.num_layers - self.sliding_layers

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_size

    @property
    def attention_per_layer_type(self) -> bool:
        """The full-attention layers' attention differs from the sliding ones' (their
        own head size, key/value heads, or values that are their keys)."""
        return self.of_layer_type(full=True) is not self

    def of_layer_type(self, full: bool) -> Architecture:
        """The architecture whose attention shape is that of the full-attention layers
        (``full``) or of the sliding ones: head_dim and num_kv_heads of that type, the
        per-type fields cleared (a full-attention copy keeps full_values_are_keys, whose
        blocks are those past sliding_layers). Itself where the types share one shape."""
        full_head = self.full_head_dim or self.head_size
        full_kv = self.full_kv_heads or self.kv_heads
        if (full_head, full_kv) == (self.head_size, self.kv_heads) and not (
            self.full_values_are_keys
        ):
            return self
        head, kv = (full_head, full_kv) if full else (self.head_size, self.kv_heads)
        return _layer_type_copy(self, head, kv, full and self.full_values_are_keys)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def encoder_decoder(self) -> bool:
        return self.traits.encoder_decoder

    @property
    def has_biases(self) -> bool:
        return (
            self.attention_qkv_bias
            or self.attention_out_bias
            or self.mlp_bias
            or self.norm == "layernorm"
        )


# The physical bound of each count (limits), checked before any arithmetic uses it.
BOUNDS: dict[str, limits.Bound] = {
    "vocab_size": limits.WIDTH,
    "hidden_size": limits.WIDTH,
    "num_layers": limits.LAYERS,
    "num_heads": limits.WIDTH,
    "num_kv_heads": limits.WIDTH,
    "head_dim": limits.WIDTH,
    "rotary_dim": limits.WIDTH,
    "intermediate_size": limits.WIDTH,
    "max_position_embeddings": limits.TOKENS,
    "num_experts": limits.EXPERTS,
    "shared_experts_size": limits.WIDTH,
    "dense_layers": limits.LAYERS,
    "dense_intermediate_size": limits.WIDTH,
    "kv_lora_rank": limits.WIDTH,
    "q_lora_rank": limits.WIDTH,
    "v_head_dim": limits.WIDTH,
    "full_head_dim": limits.WIDTH,
    "full_kv_heads": limits.WIDTH,
    "per_layer_input_size": limits.WIDTH,
    "per_layer_input_vocab": limits.WIDTH,
    "experts_per_token": limits.EXPERTS,
    "sliding_window": limits.TOKENS,
    "sliding_layers": limits.LAYERS,
    "kv_shared_layers": limits.LAYERS,
    "relative_attention_num_buckets": limits.WIDTH,
    "published_params": limits.PARAMETERS,
}


@lru_cache(maxsize=512)
def _layer_type_copy(arch: Architecture, head: int, kv: int, values_are_keys: bool) -> Architecture:
    update: dict[str, object] = {
        "head_dim": head,
        "num_kv_heads": kv,
        "full_head_dim": None,
        "full_kv_heads": None,
        "full_values_are_keys": values_are_keys,
    }
    return arch.model_copy(update=update)


@dataclass(frozen=True, slots=True)
class Blocks:
    """The blocks that hold a tensor, where not every block does: DeepSeek's dense MLP in
    its first blocks and its experts in the others, Gemma's sliding layers below its
    global ones (each an index range), Qwen3.5's Gated DeltaNet layers and its gated
    full-attention ones in config.json's ``layer_types`` order (any set of indices)."""

    indices: frozenset[int]

    @classmethod
    def span(cls, first: int, last: int) -> Blocks:
        """The blocks [first, last)."""
        return cls(frozenset(range(first, last)))

    def count(self) -> int:
        return len(self.indices)

    def holds(self, i: int) -> bool:
        return i in self.indices

    @property
    def lowest(self) -> int | None:
        """The lowest block that holds it (None: none does)."""
        return min(self.indices, default=None)

    @property
    def highest(self) -> int | None:
        return max(self.indices, default=None)


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter tensor of the model (in a block: one per block)."""

    name: str  # the module path as transformers names it, e.g. "self_attn.q_proj.weight"
    shape: tuple[int, ...]
    kind: ParamKind
    roles: tuple[Role, ...] = ()  # linear weights/biases: the projections this tensor serves
    # the blocks that hold it, where not every block does (None: every block)
    blocks: Blocks | None = None

    @property
    def numel(self) -> int:
        return prod(self.shape)

    def count(self, num_layers: int) -> int:
        """How many of the ``num_layers`` blocks hold this tensor."""
        return num_layers if self.blocks is None else self.blocks.count()

    def in_block(self, i: int) -> bool:
        return self.blocks is None or self.blocks.holds(i)

    @property
    def is_head(self) -> bool:
        """The LM head's weight or bias (the per-layer inputs' model projection is a
        linear outside the blocks too; block linears always have roles)."""
        return self.kind in ("linear", "linear_bias") and self.module == HEAD

    @property
    def module(self) -> str:
        """The owning module's path (the name without ``.weight``/``.bias``)."""
        return self.name.rsplit(".", 1)[0]


@dataclass(frozen=True, slots=True)
class Linear:
    """One ``nn.Linear`` (or Conv1D) of a block: what LoRA adapts and 4-bit quantises."""

    module: str  # e.g. "self_attn.q_proj"
    roles: tuple[Role, ...]
    in_features: int
    out_features: int
    bias: bool
    copies: int = 1  # experts
    tokens_fraction: float = 1.0  # MoE: share of the tokens each copy sees on average
    # transformers 5 stores MoE experts as one 3-D parameter, not nn.Linear modules:
    # peft's "all-linear" skips them and the parameter has no ".weight" suffix.
    is_module: bool = True
    quantizable: bool = True  # T5's wo is in _keep_in_fp32_modules: bitsandbytes skips it
    blocks: Blocks | None = None  # as Param.blocks: where not in every block
    # Derived once (every estimate names saved tensors after them, hundreds of times):
    leaf: str = field(init=False, repr=False, compare=False)
    # how saved items name it: the leaf, with its parent where one block has the leaf
    # twice (GPT-2's attn.c_proj and mlp.c_proj)
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        leaf = self.module.rsplit(".", 1)[-1]
        label = ".".join(self.module.split(".")[-2:]) if leaf == "c_proj" else leaf
        object.__setattr__(self, "leaf", leaf)
        object.__setattr__(self, "label", label)

    def count(self, num_layers: int) -> int:
        """How many of the ``num_layers`` blocks hold this linear."""
        return num_layers if self.blocks is None else self.blocks.count()

    def in_block(self, i: int) -> bool:
        return self.blocks is None or self.blocks.holds(i)


@dataclass(frozen=True, slots=True)
class Layout:
    """All parameter tensors: the outer ones, and one block's (repeated num_layers times)."""

    outer: tuple[Param, ...]
    block: tuple[Param, ...]
    linears: tuple[Linear, ...]
    num_layers: int

    @property
    def block_params(self) -> int:
        """One block's parameters (the top block's, where blocks differ)."""
        return sum(p.numel for p in self.block if p.in_block(self.num_layers - 1))

    @property
    def outer_params(self) -> int:
        return sum(p.numel for p in self.outer)

    @property
    def total_params(self) -> int:
        return self.outer_params + sum(p.numel * p.count(self.num_layers) for p in self.block)


def block_prefix(arch: Architecture) -> str:
    """Where transformers keeps the decoder blocks: parameter names are
    ``{prefix}.{i}.{name in the block}`` (T5: see :func:`param_path`)."""
    return arch.traits.names.blocks


def param_path(arch: Architecture, i: int, name: str) -> str:
    """The real name of block ``i``'s parameter ``name``. A T5 pair block's names start
    with their stack (``decoder.layer.1.EncDecAttention.q.weight`` is
    ``decoder.block.{i}.layer.1.EncDecAttention.q.weight``)."""
    if arch.encoder_decoder:
        stack, _, rest = name.partition(".")
        return f"{stack}.block.{i}.{rest}"
    return f"{block_prefix(arch)}.{i}.{name}"


def _t5_block(arch: Architecture) -> tuple[list[Linear], list[str]]:
    """One encoder block and one decoder block of T5 (transformers' T5Block): self-
    attention, the decoder's cross-attention (EncDecAttention, keys and values from the
    encoder's output), and the feed-forward (wi_0/wi_1/wo gated, or wi/wo)."""
    h, inner, ffn = arch.hidden_size, arch.q_size, arch.intermediate_size
    linears: list[Linear] = []
    norms: list[str] = []
    for stack, attentions in (
        ("encoder", ("SelfAttention",)),
        ("decoder", ("SelfAttention", "EncDecAttention")),
    ):
        for j, attn in enumerate(attentions):
            base = f"{stack}.layer.{j}.{attn}"
            linears += [Linear(f"{base}.{r}", (r,), h, inner, False) for r in ("q", "k", "v")]
            linears.append(Linear(f"{base}.o", ("o",), inner, h, False))
            norms.append(f"{stack}.layer.{j}.layer_norm")
        ff = f"{stack}.layer.{len(attentions)}"
        if arch.mlp == "gated":
            linears += [
                Linear(f"{ff}.DenseReluDense.wi_0", ("gate",), h, ffn, False),
                Linear(f"{ff}.DenseReluDense.wi_1", ("up",), h, ffn, False),
            ]
        else:
            linears.append(Linear(f"{ff}.DenseReluDense.wi", ("up",), h, ffn, False))
        linears.append(
            Linear(f"{ff}.DenseReluDense.wo", ("down",), ffn, h, False, quantizable=False)
        )
        norms.append(f"{ff}.layer_norm")
    return linears, norms


def _t5_outer(arch: Architecture) -> list[Param]:
    """The shared embedding (both stacks read it), each stack's relative position bias
    (kept by its first block) and final norm, and the LM head unless tied (T5 v1.0)."""
    h, bias_shape = arch.hidden_size, (arch.relative_attention_num_buckets, arch.num_heads)
    outer = [Param("shared.weight", (arch.vocab_size, h), "embedding")]
    for stack in ("encoder", "decoder"):
        outer.append(
            Param(
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                bias_shape,
                "position",
            )
        )
    outer += [Param(f"{s}.final_layer_norm.weight", (h,), "norm") for s in ("encoder", "decoder")]
    if not arch.tie_embeddings:
        outer.append(Param("lm_head.weight", (arch.vocab_size, h), "linear"))
    return outer


def _linears(arch: Architecture) -> list[Linear]:
    out = _block_linears(arch)
    return _kv_shared_linears(arch, out) if arch.kv_shared_layers else out


def _without(blocks: Blocks | None, arch: Architecture, drop: Blocks) -> Blocks:
    held = frozenset(range(arch.num_layers)) if blocks is None else blocks.indices
    return Blocks(held - drop.indices)


def _kv_shared_linears(arch: Architecture, linears: list[Linear]) -> list[Linear]:
    """Gemma 4's key/value reusing layers (Architecture.kv_reusing_blocks): no k or v
    projection (transformers 5.25 modeling_gemma4.py Gemma4TextAttention.__init__,
    l.1172-1185: "Layers sharing kv states don't need any weight matrices"), and with
    use_double_wide_mlp an MLP of twice intermediate_size (Gemma4TextMLP.__init__,
    l.1054-1059)."""
    reusing = arch.kv_reusing_blocks
    out: list[Linear] = []
    for lin in linears:
        if lin.roles in (("k",), ("v",)):
            kept = _without(lin.blocks, arch, reusing)
            if kept.count():
                out.append(replace(lin, blocks=kept))
        elif arch.kv_shared_double_mlp and lin.roles in (("gate",), ("up",), ("down",)):
            out.append(replace(lin, blocks=_without(lin.blocks, arch, reusing)))
            wide = (
                replace(lin, in_features=2 * lin.in_features)
                if lin.roles == ("down",)
                else replace(lin, out_features=2 * lin.out_features)
            )
            out.append(replace(wide, blocks=reusing))
        else:
            out.append(lin)
    return out


def _block_linears(arch: Architecture) -> list[Linear]:
    if arch.encoder_decoder:
        return _t5_block(arch)[0]
    if arch.linear_attention is not None or arch.traits.attention_output_gate:
        return _two_kind_attention(arch) + _mlp_linears(arch)
    if arch.short_conv is not None:
        return _short_conv_stack(arch) + _mlp_linears(arch)
    h, q, kv = arch.hidden_size, arch.q_size, arch.kv_size
    qkv_b, out_b = arch.attention_qkv_bias, arch.attention_out_bias
    attn = arch.traits.names.attention
    out: list[Linear] = []
    if arch.attention_per_layer_type:
        out += _attention_per_layer_type(arch)
    elif arch.latent_attention:
        out += _latent_attention(arch)
    elif "qkv" in attn:
        out.append(Linear(attn["qkv"], ("q", "k", "v"), h, q + 2 * kv, qkv_b))
    else:
        out += [
            Linear(attn["q"], ("q",), h, q, qkv_b),
            Linear(attn["k"], ("k",), h, kv, qkv_b),
            Linear(attn["v"], ("v",), h, kv, qkv_b),
        ]
    if not arch.attention_per_layer_type:
        out.append(Linear(attn["o"], ("o",), arch.v_size, h, out_b))
    return out + _mlp_linears(arch)


def _mlp_linears(arch: Architecture) -> list[Linear]:
    """The block's MLP side: the dense MLP, or the router, the 3-D experts, the dense
    first blocks' MLPs and the shared experts."""
    h, ffn, mlp_b = arch.hidden_size, arch.intermediate_size, arch.mlp_bias
    names = arch.traits.names
    out: list[Linear] = []
    if arch.is_moe:
        experts = names.experts
        share = arch.experts_per_token / arch.num_experts
        e = arch.num_experts
        sparse = Blocks.span(*arch.sparse_blocks) if arch.dense_layers else None
        # transformers 5's 3-D experts have biases in gpt-oss only (its router's linear
        # too), whatever mlp_bias says (DeepSeek-V2's applies to its dense MLPs)
        biased = arch.traits.experts_transposed_with_bias
        if arch.dense_layers:
            dense = _dense_mlp(arch, names.mlp, arch.dense_intermediate_size or ffn, mlp_b)
            out += [replace(lin, blocks=Blocks.span(0, arch.dense_layers)) for lin in dense]
        out += [
            Linear(experts["router"], ("router",), h, e, biased, is_module=False, blocks=sparse),
            Linear(
                experts["gate_up"],
                ("gate", "up"),
                h,
                2 * ffn,
                biased,
                copies=e,
                tokens_fraction=share,
                is_module=False,
                blocks=sparse,
            ),
            Linear(
                experts["down"],
                ("down",),
                ffn,
                h,
                biased,
                copies=e,
                tokens_fraction=share,
                is_module=False,
                blocks=sparse,
            ),
        ]
        if arch.shared_experts_size:
            shared = _dense_mlp(arch, names.shared_experts, arch.shared_experts_size, mlp_b)
            out += [replace(lin, blocks=sparse) for lin in shared]
        return out
    return out + _dense_mlp(arch, names.mlp, ffn, mlp_b)


def _attention_per_layer_type(arch: Architecture) -> list[Linear]:
    """q, k, v and o of the sliding layers (Architecture.type_blocks: the lowest
    sliding_layers blocks, as step._sliding_blocks takes them, or sliding_indices) and of
    the full-attention ones (the others), each
    type with its own widths; the full ones without v where their values are their keys
    (Gemma 4: transformers 5.25 modeling_gemma4.py Gemma4TextAttention.__init__,
    l.1152-1185, reads head_dim and num_key_value_heads from ``per_layer_config``, and
    builds no v_proj where ``attention_k_eq_v`` and the layer does not slide)."""
    attn, h, bias = arch.traits.names.attention, arch.hidden_size, arch.attention_qkv_bias
    out: list[Linear] = []
    for full in (False, True):
        blocks = arch.type_blocks(full)
        if not blocks.count():
            continue
        shape = arch.of_layer_type(full)
        q, kv = shape.q_size, shape.kv_size
        out += [
            Linear(attn["q"], ("q",), h, q, bias, blocks=blocks),
            Linear(attn["k"], ("k",), h, kv, bias, blocks=blocks),
        ]
        if not (full and arch.full_values_are_keys):
            out.append(Linear(attn["v"], ("v",), h, kv, bias, blocks=blocks))
        out.append(
            Linear(attn["o"], ("o",), shape.v_size, h, arch.attention_out_bias, blocks=blocks)
        )
    return out


def _dense_mlp(arch: Architecture, mlp: Mapping[str, str], ffn: int, bias: bool) -> list[Linear]:
    """A dense MLP's linears (gated or plain) of width ``ffn``: the block's own, or beside
    the experts (DeepSeek's shared experts)."""
    h = arch.hidden_size
    out: list[Linear] = []
    if arch.mlp == "gated":
        if "gate_up" in mlp:
            out.append(Linear(mlp["gate_up"], ("gate", "up"), h, 2 * ffn, bias))
        else:
            out += [
                Linear(mlp["gate"], ("gate",), h, ffn, bias),
                Linear(mlp["up"], ("up",), h, ffn, bias),
            ]
    else:
        out.append(Linear(mlp["up"], ("up",), h, ffn, bias))
    out.append(Linear(mlp["down"], ("down",), ffn, h, bias))
    return out


def _two_kind_attention(arch: Architecture) -> list[Linear]:
    """The projections of a stack with linear-attention layers
    (Architecture.linear_attention_blocks, see LinearAttention) and full-attention ones (the
    others): Qwen3.5's Qwen3_5GatedDeltaNet (transformers 5.25 modeling_qwen3_5.py
    l.555-601: bias-free in_proj_qkv to q, k and v side by side, in_proj_z to the gate,
    in_proj_b and in_proj_a to one value per value head, out_proj back) and
    Qwen3_5Attention (l.824-850: q_proj doubled for the output gate where the family says,
    ``attention_bias`` on all four; in every block where no layer is a linear one)."""
    lin_attn, h = arch.linear_attention, arch.hidden_size
    out: list[Linear] = []
    below, above = arch.linear_attention_blocks, arch.full_attention_blocks
    if lin_attn is not None:
        shape = lin_attn.shape(h)
        mixer = arch.traits.linear_attention_module
        role: tuple[Role, ...] = ("linear_attention",)
        v = lin_attn.value_heads
        if shape.fused:  # (Qwen3-Next: modeling_qwen3_next.py Qwen3NextGatedDeltaNet.__init__)
            qkvz = shape.conv_dim + shape.value_dim
            out += [
                Linear(f"{mixer}.in_proj_qkvz", role, h, qkvz, False, blocks=below),
                Linear(f"{mixer}.in_proj_ba", role, h, 2 * v, False, blocks=below),
            ]
        else:
            out += [
                Linear(f"{mixer}.in_proj_qkv", role, h, shape.conv_dim, False, blocks=below),
                Linear(f"{mixer}.in_proj_z", role, h, shape.value_dim, False, blocks=below),
                Linear(f"{mixer}.in_proj_b", role, h, v, False, blocks=below),
                Linear(f"{mixer}.in_proj_a", role, h, v, False, blocks=below),
            ]
        out.append(Linear(f"{mixer}.out_proj", role, shape.value_dim, h, False, blocks=below))
    attn, bias = arch.traits.names.attention, arch.attention_qkv_bias
    q = arch.q_size * (2 if arch.traits.attention_output_gate else 1)
    return [
        *out,
        Linear(attn["q"], ("q",), h, q, bias, blocks=above),
        Linear(attn["k"], ("k",), h, arch.kv_size, bias, blocks=above),
        Linear(attn["v"], ("v",), h, arch.kv_size, bias, blocks=above),
        Linear(attn["o"], ("o",), arch.v_size, h, arch.attention_out_bias, blocks=above),
    ]


def _short_conv_stack(arch: Architecture) -> list[Linear]:
    """The mixers of a stack with short-convolution layers (Architecture.short_conv_blocks):
    Lfm2ShortConv's in_proj and out_proj (see ShortConv) there, Lfm2Attention's bias-free
    q_proj, k_proj, v_proj and out_proj in the other blocks (modeling_lfm2.py l.213-216)."""
    conv, h = arch.short_conv, arch.hidden_size
    assert conv is not None
    mixer = arch.traits.short_conv_module
    role: tuple[Role, ...] = ("short_conv",)
    below, above = arch.short_conv_blocks, arch.full_attention_blocks
    attn = arch.traits.names.attention
    out = [
        Linear(f"{mixer}.in_proj", role, h, 3 * h, conv.bias, blocks=below),
        Linear(f"{mixer}.out_proj", role, h, h, conv.bias, blocks=below),
    ]
    if above is not None and above.count():
        out += [
            Linear(attn["q"], ("q",), h, arch.q_size, False, blocks=above),
            Linear(attn["k"], ("k",), h, arch.kv_size, False, blocks=above),
            Linear(attn["v"], ("v",), h, arch.kv_size, False, blocks=above),
            Linear(attn["o"], ("o",), arch.v_size, h, False, blocks=above),
        ]
    return out


def short_conv_params(arch: Architecture) -> list[Param]:
    """A short-convolution layer's depthwise nn.Conv1d beside its linears: its weight
    (hidden, 1, kernel) and, with ``conv_bias``, its bias (hidden) (Lfm2ShortConv.__init__,
    modeling_lfm2.py l.383-390: groups=hidden_size)."""
    conv = arch.short_conv
    if conv is None:
        return []
    mixer, h, blocks = arch.traits.short_conv_module, arch.hidden_size, arch.short_conv_blocks
    out = [Param(f"{mixer}.conv.weight", (h, 1, conv.kernel), "short_conv", blocks=blocks)]
    if conv.bias:
        out.append(Param(f"{mixer}.conv.bias", (h,), "short_conv", blocks=blocks))
    return out


def linear_attention_params(arch: Architecture) -> list[Param]:
    """A Gated DeltaNet layer's tensors beside its linears, in its blocks
    (modeling_qwen3_5.py l.574-592): the depthwise conv1d's bias-free weight (conv_dim, 1,
    K), dt_bias and A_log (one per value head), the gated RMSNorm's weight (one value
    head wide)."""
    lin_attn = arch.linear_attention
    if lin_attn is None:
        return []
    shape, blocks = lin_attn.shape(arch.hidden_size), arch.linear_attention_blocks
    mixer, v = arch.traits.linear_attention_module, lin_attn.value_heads
    return [
        Param(
            f"{mixer}.conv1d.weight",
            (shape.conv_dim, 1, shape.conv_kernel),
            "delta_rule",
            blocks=blocks,
        ),
        Param(f"{mixer}.dt_bias", (v,), "delta_rule", blocks=blocks),
        Param(f"{mixer}.A_log", (v,), "delta_rule", blocks=blocks),
        Param(f"{mixer}.norm.weight", (shape.v_dim,), "norm", blocks=blocks),
    ]


def _in_full_attention_layers(arch: Architecture, params: list[Param]) -> list[Param]:
    """The attention module's own tensors (its q and k norms) held by the full-attention
    blocks only, where linear-attention ones are beside them."""
    full = arch.full_attention_blocks
    if full is None:
        return params
    return [replace(p, blocks=full) for p in params]


def _latent_attention(arch: Architecture) -> list[Linear]:
    """Multi-head latent attention's projections (transformers 5.24
    models/deepseek_v3/modeling_deepseek_v3.py DeepseekV3Attention.__init__): the query
    through a rank-q_lora_rank bottleneck (q_a_proj, its norm, q_b_proj) or one q_proj;
    keys and values from one latent of width kv_lora_rank plus the shared rotary key
    (kv_a_proj_with_mqa), expanded per head by kv_b_proj to qk_nope + v_head_dim. Only
    q_a_proj and kv_a_proj_with_mqa take ``attention_bias``; o_proj reads heads × v_head_dim
    (added by the caller)."""
    attn, h = arch.traits.names.attention, arch.hidden_size
    rank, kv_rank, bias = arch.q_lora_rank, arch.kv_lora_rank or 0, arch.attention_qkv_bias
    rope = arch.rotary_size
    nope = arch.head_size - rope
    out: list[Linear] = []
    if rank is None:
        out.append(Linear(attn["q"], ("q",), h, arch.q_size, False))
    else:
        out += [
            Linear(attn["q_a"], ("q",), h, rank, bias),
            Linear(attn["q_b"], ("q",), rank, arch.q_size, False),
        ]
    v_width = arch.v_size // arch.num_heads
    out += [
        Linear(attn["kv_a"], ("k", "v"), h, kv_rank + rope, bias),
        Linear(attn["kv_b"], ("k", "v"), kv_rank, arch.num_heads * (nope + v_width), False),
    ]
    return out


def latent_norm_params(arch: Architecture) -> list[Param]:
    """MLA's RMSNorms on its latents: q_a_layernorm (q_lora_rank) and kv_a_layernorm
    (kv_lora_rank), kept by the attention module."""
    if not arch.latent_attention:
        return []
    attention = arch.traits.names.attention["o"].rsplit(".", 1)[0]
    widths = {"q_a_layernorm": arch.q_lora_rank, "kv_a_layernorm": arch.kv_lora_rank}
    return [Param(f"{attention}.{n}.weight", (w,), "norm") for n, w in widths.items() if w]


def router_statistic_params(arch: Architecture) -> list[Param]:
    """ERNIE 4.5 MoE's router correction bias (Family.router_statistics): an fp32
    ``nn.Parameter(torch.zeros(1, E), requires_grad=False)`` in every sparse block
    (transformers 5.25 modeling_ernie4_5_moe.py Ernie4_5_MoeStatics, l.276-285)."""
    if not (arch.is_moe and arch.traits.router_statistics):
        return []
    module = f"{arch.traits.names.experts['router']}.moe_statics"
    sparse = Blocks.span(*arch.sparse_blocks) if arch.dense_layers else None
    shape = (1, arch.num_experts)
    return [Param(f"{module}.e_score_correction_bias", shape, "statistic", blocks=sparse)]


def sink_params(arch: Architecture) -> list[Param]:
    """gpt-oss's attention sinks: one learned logit per query head, kept by the attention
    module (GptOssAttention.sinks)."""
    if not arch.traits.attention_sinks:
        return []
    attention = arch.traits.names.attention["o"].rsplit(".", 1)[0]
    return [Param(f"{attention}.sinks", (arch.num_heads,), "sink")]


def shared_expert_gate_params(arch: Architecture) -> list[Param]:
    """Qwen2-MoE's shared_expert_gate, an nn.Linear(hidden, 1) without bias in every sparse
    block (Family.shared_expert_gate): a (1, hidden) weight."""
    if not (arch.traits.shared_expert_gate and arch.shared_experts_size):
        return []
    sparse = Blocks.span(*arch.sparse_blocks) if arch.dense_layers else None
    name = f"{arch.traits.names.shared_experts['scale']}.weight"
    return [Param(name, (1, arch.hidden_size), "linear", blocks=sparse)]


def activation_params(arch: Architecture) -> list[Param]:
    """xIELU's two trainable scalars per MLP (transformers 5.25 activations.py
    XIELUActivation: ``alpha_p`` and ``alpha_n``, each ``unsqueeze(0)``: shape (1,)); its
    0-dim ``beta`` and ``eps`` are buffers."""
    if arch.activation != "xielu":
        return []
    act = arch.traits.names.activation
    return [Param(f"{act}.{name}", (1,), "activation") for name in ("alpha_p", "alpha_n")]


def per_layer_outer_params(arch: Architecture) -> list[Param]:
    """The model's side of the per-layer inputs (Architecture.per_layer_input_size;
    transformers 5.25 modeling_gemma4.py Gemma4TextModel.__init__, l.1565-1580): the token
    table ``embed_tokens_per_layer`` (per_layer_input_vocab rows of num_layers × width),
    the bias-free ``per_layer_model_projection`` (hidden → num_layers × width) and the
    ``per_layer_projection_norm`` RMSNorm (one width-wide weight)."""
    width = arch.per_layer_input_size
    if not width:
        return []
    names, h, n = arch.traits.names.per_layer, arch.hidden_size, arch.num_layers
    rows = arch.per_layer_input_vocab or arch.vocab_size
    return [
        Param(f"{names['table']}.weight", (rows, n * width), "embedding"),
        Param(f"{names['model_projection']}.weight", (n * width, h), "linear"),
        Param(f"{names['model_norm']}.weight", (width,), "norm"),
    ]


def per_layer_params(arch: Architecture) -> list[Param]:
    """Each block's side of the per-layer inputs (modeling_gemma4.py
    Gemma4TextDecoderLayer.__init__, l.1345-1350): the bias-free ``per_layer_input_gate``
    (hidden → width) and ``per_layer_projection`` (width → hidden) and the
    ``post_per_layer_input_norm`` RMSNorm (hidden). Their nn.Linear modules are not in the
    layout's linears (no role: no adapter targets them, methods refuses what would)."""
    width = arch.per_layer_input_size
    if not width:
        return []
    names, h = arch.traits.names.per_layer, arch.hidden_size
    return [
        Param(f"{names['gate']}.weight", (width, h), "linear"),
        Param(f"{names['projection']}.weight", (h, width), "linear"),
        Param(f"{names['norm']}.weight", (h,), "norm"),
    ]


def _norm_params(prefix: str, arch: Architecture) -> list[Param]:
    if arch.traits.norms_without_parameters:  # (OLMo 1's OlmoLayerNorm)
        return []
    params = [Param(f"{prefix}.weight", (arch.hidden_size,), "norm")]
    if arch.norm == "layernorm":
        params.append(Param(f"{prefix}.bias", (arch.hidden_size,), "norm"))
    return params


def qk_norm_params(arch: Architecture) -> list[Param]:
    """Query and key norms, kept by the attention module beside its projections: per head
    with one head-wide weight each (Qwen3; Phi's LayerNorm with its bias), a weight per
    head (Cohere: one (heads, head_dim) tensor; StableLM: a bias-free LayerNorm module
    per head), or across the projection (OLMo 2)."""
    if not arch.qk_norm:
        return []
    out: list[Param] = []
    if not arch.attention_per_layer_type:
        out = _qk_norm_params(arch, arch.kv_heads, arch.head_size, None)
    else:
        for full in (False, True):
            if (blocks := arch.type_blocks(full)).count():
                shape = arch.of_layer_type(full)  # (Gemma 4: q_norm and k_norm head_dim wide)
                out += _qk_norm_params(arch, shape.kv_heads, shape.head_size, blocks)
    if not arch.kv_shared_layers:
        return out
    # Gemma 4's reusing layers keep q_norm only (modeling_gemma4.py l.1168-1175)
    key_norm = arch.traits.qk_norm_names[1]
    return [
        replace(p, blocks=_without(p.blocks, arch, arch.kv_reusing_blocks))
        if f".{key_norm}." in f".{p.name}"
        else p
        for p in out
    ]


def _qk_norm_params(
    arch: Architecture, kv_heads: int, head_size: int, blocks: Blocks | None
) -> list[Param]:
    fam = arch.traits
    attention = fam.names.attention["o"].rsplit(".", 1)[0]
    out: list[Param] = []
    for name, heads in zip(fam.qk_norm_names, (arch.num_heads, kv_heads), strict=True):
        prefix = f"{attention}.{name}"
        shapes: dict[str, tuple[int, ...]]
        if not fam.qk_norm_per_head:  # OLMo 2: one weight across the whole projection
            shapes = {prefix: (heads * head_size,)}
        elif fam.qk_norm_weights == "per_head":
            shapes = {prefix: (heads, head_size)}
        elif fam.qk_norm_weights == "modules":
            shapes = {f"{prefix}.norms.{i}": (head_size,) for i in range(heads)}
        else:
            shapes = {prefix: (head_size,)}
        for module, shape in shapes.items():
            out.append(Param(f"{module}.weight", shape, "norm", blocks=blocks))
            if fam.qk_norm_bias:
                out.append(Param(f"{module}.bias", shape, "norm", blocks=blocks))
    return out


@lru_cache(maxsize=512)
def layout(arch: Architecture) -> Layout:
    """Every parameter tensor of the model, exactly as transformers allocates them."""
    linears = _linears(arch)
    names = arch.traits.names
    block: list[Param] = []
    for lin in linears:
        kind: ParamKind = (
            "router" if lin.roles == ("router",) else "linear" if lin.is_module else "expert"
        )
        # MoE experts are one (experts, out, in) tensor in transformers 5.
        experts = (lin.copies,) if lin.copies > 1 else ()
        weight_name = f"{lin.module}.weight" if lin.is_module or kind == "router" else lin.module
        # GPT-2's Conv1D stores its weight as (in, out), and so do gpt-oss's experts;
        # nn.Linear as (out, in)
        transposed = kind == "expert" and arch.traits.experts_transposed_with_bias
        dims = (
            (lin.in_features, lin.out_features)
            if arch.traits.conv1d or transposed
            else (lin.out_features, lin.in_features)
        )
        block.append(Param(weight_name, (*experts, *dims), kind, lin.roles, lin.blocks))
        if lin.bias:
            shape = (*experts, lin.out_features)
            # (a 3-D expert parameter's bias is its sibling `<proj>_bias`, an expert tensor)
            if kind == "expert":
                bias = Param(f"{lin.module}_bias", shape, "expert", lin.roles, lin.blocks)
            else:
                bias = Param(f"{lin.module}.bias", shape, "linear_bias", lin.roles, lin.blocks)
            block.append(bias)
    if arch.encoder_decoder:
        norm_names = tuple(_t5_block(arch)[1])
    elif names.sequential_norms and not arch.parallel_attn_mlp:
        norm_names = names.sequential_norms
    else:
        norm_names = names.norms[arch.norms_per_block]
    block += shared_expert_gate_params(arch)
    block += router_statistic_params(arch)
    block += _in_full_attention_layers(arch, qk_norm_params(arch))
    block += linear_attention_params(arch)
    block += short_conv_params(arch)
    block += sink_params(arch)
    block += activation_params(arch)
    block += per_layer_params(arch)
    block += latent_norm_params(arch)
    for norm_name in norm_names:
        block += _norm_params(norm_name, arch)

    if arch.encoder_decoder:
        return Layout(tuple(_t5_outer(arch)), tuple(block), tuple(linears), arch.num_layers)
    rows = arch.vocab_size + arch.embedding_extra_rows
    outer = [Param(f"{names.embedding}.weight", (rows, arch.hidden_size), "embedding")]
    if arch.position_embedding == "learned":
        outer.append(
            Param(
                f"{names.positions}.weight",
                (arch.max_position_embeddings, arch.hidden_size),
                "position",
            )
        )
    outer += per_layer_outer_params(arch)
    outer += _norm_params(names.final_norm, arch)
    if not arch.tie_embeddings:
        outer.append(Param(f"{HEAD}.weight", (arch.vocab_size, arch.hidden_size), "linear"))
    if arch.traits.head_bias or arch.head_bias:
        outer.append(Param(f"{HEAD}.bias", (arch.vocab_size,), "linear_bias"))
    return Layout(tuple(outer), tuple(block), tuple(linears), arch.num_layers)


def as_trained(
    arch: Architecture, model_dropout: bool, router_aux_loss: bool | None = None
) -> Architecture:
    """The architecture a run trains: without its config's dropout when the run turns
    it off (RunConfig.model_dropout), with or without the router's load-balancing loss
    where the run says (RunConfig.router_aux_loss; None: as config.json says)."""
    changes: dict[str, object] = {}
    if not model_dropout and (arch.dropout_rate or arch.residual_dropout or arch.embedding_dropout):
        changes.update(dropout_rate=0.0, residual_dropout=0.0, embedding_dropout=0.0)
    if router_aux_loss is not None and router_aux_loss != arch.router_aux_loss:
        if router_aux_loss and arch.traits.router_aux_loss_unmodelled:
            raise InvalidInputError(f"--router-aux-loss: {arch.traits.router_aux_loss_unmodelled}")
        if router_aux_loss and not (arch.is_moe and arch.traits.router_aux_loss):
            raise InvalidInputError(
                f"--router-aux-loss: transformers' {arch.traits.name} model computes no "
                "router load-balancing loss (Mixtral, Qwen3-MoE, OLMoE and gpt-oss do)."
            )
        changes["router_aux_loss"] = router_aux_loss
    return arch.model_copy(update=changes) if changes else arch


def buffer_numel(arch: Architecture) -> int:
    """Elements of the registered buffers the blocks keep beside their parameters
    (Family.block_buffers: Qwen-1's logn tables), in the model's dtype."""
    return arch.traits.block_buffers * arch.num_layers


def kv_sharing_refusal(arch: Architecture, what: str) -> str:
    """The one sentence for what Gemma 4's key/value sharing was not measured with
    (step._check_kv_sharing, serve, estimate._check_parallel_arch)."""
    return (
        f"{arch.name}: {what} with key/value sharing (kv_shared_layers "
        f"{arch.kv_shared_layers}: layers that reuse a lower layer's keys and values) is not "
        "modelled (full finetuning and LoRA on one GPU are)."
    )


@lru_cache(maxsize=512)  # every estimate reports it
def count_params(arch: Architecture) -> int:
    """Total parameters (tied embeddings counted once), an image-text model's vision
    tower and projector included."""
    total = layout(arch).total_params
    if arch.vision is not None:
        total += tower_count(arch.vision) + projector_count(arch.vision, arch.hidden_size)
        total += text_extras_count(arch.vision, arch.hidden_size)
    return total


def position_note(arch: Architecture, positions: int, what: str) -> str | None:
    """The one check of a sequence against the model's positions, for training and
    serving alike: past a learned table (GPT-2's 1,024) there is no embedding for the
    position, an error; past a rotary or relative model's trained length it runs, with
    RoPE scaling or a context-extension method, a note. ``what`` names the setting."""
    if positions <= arch.max_position_embeddings:
        return None
    if arch.position_embedding == "learned":
        raise InvalidInputError(
            f"{what} exceeds {arch.name}'s {arch.max_position_embeddings} learned positions."
        )
    return (
        f"{what} exceeds {arch.name}'s {arch.max_position_embeddings} "
        "positions: the run needs RoPE scaling or a context-extension method."
    )
