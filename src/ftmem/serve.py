"""Inference and serving memory: weights in a serving format, the KV cache, the prefill's
transient activations and logits, resident LoRA adapters.

* Weights: every tensor of the layout; linear layers in the chosen format (16-bit, fp8,
  LLM.int8, bitsandbytes nf4/fp4, or a GPTQ/AWQ-style int4 with one fp16 scale and one
  4-bit zero point per group of 128 inputs); embeddings, norms and the LM head 16-bit.
* KV cache: 2 (key and value) × layers × KV heads × head size × bytes × sequences ×
  tokens each, every token on every layer: what transformers 5's ``DynamicCache`` holds
  right after a prefill of the whole context, sliding-window layers included (GQA
  shrinks it; ``sliding_window_note`` says what decoding leaves on the sliding layers).
* The prefill of a chunk of tokens, without autograd: the residual stream, the block's
  largest intermediate (gate and up outputs and the activation of a gated MLP) and the
  logits of the last position of each sequence (``logits_to_keep=1``, fp32).
* Multi-LoRA serving: each resident adapter's A and B matrices in 16-bit, those of LoRA
  on the routed experts' 3-D parameters included (peft's target_parameters).
"""

from __future__ import annotations

from typing import Literal

from ftmem import limits
from ftmem.arch import Architecture, kv_sharing_refusal, layout, position_note
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32, INT4_GROUP, ceil_div, tensor_bytes
from ftmem.errors import InvalidInputError
from ftmem.hardware import Gpu
from ftmem.methods import lora_targets
from ftmem.ops import short_conv
from ftmem.ops.gated_deltanet import refuse_stack
from ftmem.run import RunConfig
from ftmem.units import format_bytes
from ftmem.validation import Field, Model, PositiveInt, model_validator

WeightFormat = Literal["bf16", "fp16", "fp32", "fp8", "int8", "nf4", "fp4", "int4", "ternary"]
KvDtype = Literal["bf16", "fp16", "fp32", "fp8"]


# The physical bound of each count a serving setup takes (ftmem.limits).
SERVE_BOUNDS: dict[str, limits.Bound] = {
    "sequences": limits.SEQUENCES,
    "context": limits.TOKENS,
    "prefill_chunk": limits.TOKENS,
    "lora_adapters": limits.ADAPTERS,
    "lora_r": limits.WIDTH,
}


class ServeConfig(limits.BoundedSettings):
    BOUNDS = SERVE_BOUNDS

    weights: WeightFormat = "bf16"
    kv_dtype: KvDtype = "bf16"
    sequences: PositiveInt = Field(1, description="Concurrent sequences (batch).")
    context: PositiveInt = Field(4096, description="Tokens per sequence: prompt + generated.")
    prefill_chunk: PositiveInt | None = Field(
        None,
        description="Tokens of one prefill forward, all sequences together (vLLM's "
        "max_num_batched_tokens); default: every sequence's whole context at once.",
    )
    lora_adapters: int = Field(0, ge=0, description="Resident LoRA adapters (multi-LoRA).")
    lora_r: PositiveInt = 16
    lora_targets: str = "all-linear"

    @model_validator(mode="after")
    def _targets_named(self) -> ServeConfig:
        # the adapters' size builds a RunConfig from these, which refuses no targets: an
        # empty --lora-targets raised there, past the settings' checks (a traceback)
        if not self.lora_targets.strip(" ,"):
            raise ValueError("--lora-targets is empty; give e.g. q,v, attention or all-linear")
        return self


class ServeEstimate(Model):
    model: str
    config: ServeConfig
    weights_bytes: int
    kv_cache_bytes: int
    kv_bytes_per_token: int  # one token of one sequence, all layers
    adapters_bytes: int
    prefill_bytes: int  # transient: residual, MLP intermediates, logits
    peak_allocated_bytes: int
    overhead_bytes: int
    total_bytes: int
    gpu: dict[str, object] | None
    fits: bool | None
    headroom_bytes: int | None
    notes: list[str]


def weight_bytes(arch: Architecture, fmt: WeightFormat) -> int:
    lay = layout(arch)
    total = sum(tensor_bytes(p.numel, "bf16") for p in lay.outer)
    lin_in = {lin.module: lin.in_features for lin in lay.linears}
    for p in lay.block:
        quantizable = p.kind in ("linear", "expert") and fmt not in ("bf16", "fp16", "fp32")
        if not quantizable:
            base = fmt if fmt in ("fp16", "fp32") else "bf16"
            total += p.count(arch.num_layers) * tensor_bytes(p.numel, base)
            continue
        out_features = p.shape[-2] if len(p.shape) >= 2 else p.shape[0]
        if fmt == "int4":
            # per expert for 3-D expert tensors: groups run along each one's inputs
            in_features = lin_in.get(p.module, p.shape[-1])
            rows = p.numel // in_features
            b = tensor_bytes(p.numel, "int4", rows)
        elif fmt == "ternary":
            # BitNet b1.58 (transformers' BitLinear): four 2-bit values per byte and one
            # bf16 scale per tensor
            b = ceil_div(p.numel, 4) + 2
        elif fmt == "fp8":
            b = p.numel + FP32  # one fp32 scale per tensor
        else:
            b = tensor_bytes(p.numel, fmt, out_features)
        total += p.count(arch.num_layers) * b
    return total


def kv_bytes_per_token(arch: Architecture, kv_dtype: KvDtype) -> int:
    if arch.latent_attention:
        # MLA caches one compressed latent and the shared rotary key per token, not keys
        # and values per head (vLLM's MLA: head size kv_lora_rank + qk_rope_head_dim, one
        # KV head, one cache tensor; transformers 5.24 DeepseekV3Attention caches the same)
        width = (arch.kv_lora_rank or 0) + arch.rotary_size
        return arch.num_layers * width * BYTES_PER_ELEMENT[kv_dtype]
    return 2 * arch.num_layers * arch.kv_heads * arch.head_size * BYTES_PER_ELEMENT[kv_dtype]


def adapter_bytes(arch: Architecture, cfg: ServeConfig) -> int:
    """Each resident adapter's A and B matrices in 16-bit, as peft saves them: r·(in +
    out) per adapted linear in each block that has it, and for LoRA on a routed expert
    parameter (peft's target_parameters, ParamWrapper) lora_A (rank·E × in) and lora_B
    (out × rank·E), at the rank peft gives it (a converted gate_up: 2r)."""
    if not cfg.lora_adapters:
        return 0
    run = RunConfig(method="lora", lora_r=cfg.lora_r, lora_targets=cfg.lora_targets)
    linears, experts = lora_targets(arch, run)
    per = sum(
        cfg.lora_r * (lin.in_features + lin.out_features) * lin.count(arch.num_layers)
        for lin in linears
    )
    per += sum(
        ex.rank
        * ex.linear.copies
        * (ex.linear.in_features + ex.linear.out_features)
        * ex.blocks(arch)
        for ex in experts
    )
    return cfg.lora_adapters * per * 2


def expert_adapter_note(arch: Architecture, cfg: ServeConfig) -> str | None:
    """What serving LoRA on the experts holds beyond the adapters' own matrices."""
    if not cfg.lora_adapters:
        return None
    run = RunConfig(method="lora", lora_r=cfg.lora_r, lora_targets=cfg.lora_targets)
    if not lora_targets(arch, run)[1]:
        return None
    return (
        "LoRA on the routed experts: the adapters count as peft saves them (lora_A rank·E × "
        "in, lora_B out × rank·E per expert parameter). Unmerged in transformers + peft, "
        "each MoE forward also rebuilds every adapted expert stack whole (W + s·B·A, "
        "E·in·out, peft 0.21.2 ParamWrapper), a transient not counted here; merged "
        "(merge_and_unload) the adapters cost nothing. vLLM's FusedMoEWithLoRA instead "
        "allocates per adapter slot gate, up and down LoRA for every expert at "
        "--max-lora-rank (rank·E·(3h + 3F) per layer) and refuses expert parallelism."
    )


def prefill_bytes(arch: Architecture, cfg: ServeConfig) -> int:
    """Transient bytes of the largest moment of one block's forward over a prefill chunk,
    plus the logits of the last positions.

    Three moments, the largest wins: the RMSNorm (the residual, its fp32 copy and the
    fp32 normalised product), attention (residual, normalised input, q, k, v, rotated q
    and k, the attention output) and the MLP (residual, normalised input, gate and up
    outputs and the activation); the embedding output and rotary tables stay alive
    throughout (measured with transformers 5 on the CPU, tests/test_serve.py).
    """
    everything = cfg.sequences * cfg.context
    tokens = min(cfg.prefill_chunk or everything, everything)
    h, f, e = arch.hidden_size, arch.intermediate_size, 2
    if arch.is_moe:
        f *= arch.experts_per_token
    q, kv = arch.q_size, arch.kv_size
    fused_gate_up = any(
        lin.roles == ("gate", "up") and lin.is_module for lin in layout(arch).linears
    )
    # a fused gate_up projection keeps its 2f output while the activation and product exist
    width = (4 if fused_gate_up else 3) * f if arch.mlp == "gated" else 2 * f
    norm = tokens * h * (e + 2 * FP32)
    attention = tokens * e * (2 * h + 2 * q + 2 * kv + kv + q)
    mlp = tokens * e * (2 * h + width)
    logits = cfg.sequences * arch.vocab_size * FP32
    # the model's forward keeps the embedding output (its inputs_embeds) through all
    # blocks, and the rotary cos/sin tables of the chunk
    held = tokens * h * e if arch.num_layers > 1 else 0
    if arch.position_embedding == "rotary":
        held += 2 * min(cfg.prefill_chunk or cfg.context, cfg.context) * arch.head_size * e
    return max(norm, attention, mlp) + held + logits


DEFAULT_CONTEXT = 4096
LONGEST_SEARCHED = 2**24
"""The longest context ``--max-context`` tries for a model without a position table."""


def default_context(arch: Architecture) -> int:
    """Tokens per sequence when none are given: 4,096, or all of a learned position table
    when it is smaller (GPT-2 has 1,024 positions and nothing beyond)."""
    if arch.position_embedding == "learned":
        return min(DEFAULT_CONTEXT, arch.max_position_embeddings)
    return DEFAULT_CONTEXT


def context_limit(arch: Architecture) -> int:
    """The longest context a model can serve: its learned positions, else (rotary and
    relative positions extend, with scaling) :data:`LONGEST_SEARCHED`."""
    if arch.position_embedding == "learned":
        return arch.max_position_embeddings
    return LONGEST_SEARCHED


def serving_overhead(gpu: Gpu | None) -> int:
    """What a generating process holds beyond its tensors: the CUDA context and the BLAS
    workspaces of its one thread (gpu.runtime's cited sizes, PyTorch's default version)."""
    from ftmem.gpu.device import cuda_runtime

    rt = cuda_runtime(gpu, None)
    kept = rt.cublas_workspace_bytes * bool(rt.cublas_workspaces)
    kept += rt.cublaslt_workspace_bytes * bool(rt.cublaslt_workspaces)
    return rt.context_bytes + (kept if rt.through_allocator else rt.cublas_workspace_bytes)


def sliding_window_note(arch: Architecture, cfg: ServeConfig, per_token: int) -> str | None:
    """What the KV cache figure counts on a model whose window is shorter than the
    context: every token on every layer, transformers 5's cache right after a prefill of
    the whole context (cache_utils.py DynamicSlidingWindowLayer.update keeps a view of
    the last w - 1 tokens of its cat, the whole cat's storage alive under it); once
    decoding starts, each step's cat is at most w tokens, so a sliding layer holds w
    tokens' storage and a run that generates most of its context ends with the full
    layers at the context and the sliding ones at the window."""
    w = arch.sliding_window
    if not w or cfg.context <= w:
        return None
    counted = (
        "The KV cache is counted at every token on every layer, what transformers 5's "
        "DynamicCache holds right after a prefill of the whole context (a sliding layer "
        "keeps a view of its whole cat); once decoding starts it keeps only the window's "
        "last tokens on the sliding layers (DynamicSlidingWindowLayer), so a run that "
        "generates most of its context holds less"
    )
    if not arch.sliding_layers:
        return (
            f"{arch.name} attends within a {w:,}-token window on some or all layers, which "
            f"ones not known here. {counted}."
        )
    per_layer = per_token // arch.num_layers * cfg.sequences
    decoded = per_layer * (arch.full_layers * cfg.context + arch.sliding_layers * w)
    return (
        f"{arch.name} attends within a {w:,}-token window on {arch.sliding_layers} of its "
        f"{arch.num_layers} layers. {counted}: {format_bytes(decoded)} at the end, "
        f"{w:,} tokens on each sliding layer."
    )


def estimate_serving(
    arch: Architecture, cfg: ServeConfig, gpu: Gpu | None = None, overhead_bytes: int | None = None
) -> ServeEstimate:
    refuse_stack(arch, "serving")  # (its recurrent and conv states: no KV cache)
    short_conv.refuse(arch, "serving")  # (its conv state: no KV cache)
    if arch.encoder_decoder:
        raise InvalidInputError(
            f"{arch.name} is an encoder-decoder: `ftmem serve` models decoder-only generation "
            "(one KV cache); estimate its training instead."
        )
    if arch.kv_shared_layers:
        raise InvalidInputError(kv_sharing_refusal(arch, "`ftmem serve`"))
    if arch.attention_per_layer_type:
        raise InvalidInputError(
            f"{arch.name}: `ftmem serve` with full-attention layers of their own attention "
            "shape (full_head_dim, full_kv_heads, full_values_are_keys: one KV cache width "
            "a layer type) is not modelled yet."
        )
    if arch.per_layer_input_size:
        raise InvalidInputError(
            f"{arch.name}: `ftmem serve` with per-layer inputs (per_layer_input_size: the "
            "prefill's per-layer input tensor) is not modelled yet."
        )
    beyond = position_note(arch, cfg.context, f"--context {cfg.context}")
    weights = weight_bytes(arch, cfg.weights)
    per_token = kv_bytes_per_token(arch, cfg.kv_dtype)
    kv = per_token * cfg.sequences * cfg.context
    adapters = adapter_bytes(arch, cfg)
    prefill = prefill_bytes(arch, cfg)
    peak = weights + kv + adapters + prefill
    overhead = serving_overhead(gpu) if overhead_bytes is None else overhead_bytes
    total = peak + overhead
    notes = [beyond] if beyond else []
    if overhead_bytes is None:
        notes.append(
            "Beyond the tensors: the CUDA context and one thread's BLAS workspaces. The "
            "caching allocator's cache is not modelled for generation: a KV cache that grows "
            "by concatenation (transformers' DynamicCache) leaves freed blocks it cannot reuse "
            "in place, so nvidia-smi can show more."
        )
    experts = expert_adapter_note(arch, cfg)
    if experts:
        notes.append(experts)
    window = sliding_window_note(arch, cfg, per_token)
    if window:
        notes.append(window)
    if cfg.weights == "int4":
        notes.append(
            f"int4: GPTQ/AWQ-style, groups of {INT4_GROUP} inputs with an fp16 scale and a 4-bit "
            "zero point each; embeddings, norms and the LM head stay 16-bit."
        )
    return ServeEstimate(
        model=arch.name,
        config=cfg,
        weights_bytes=weights,
        kv_cache_bytes=kv,
        kv_bytes_per_token=per_token,
        adapters_bytes=adapters,
        prefill_bytes=prefill,
        peak_allocated_bytes=peak,
        overhead_bytes=overhead,
        total_bytes=total,
        gpu=None
        if gpu is None
        else {"name": gpu.name, "id": gpu.id, "memory_bytes": gpu.memory_bytes},
        fits=None if gpu is None else total <= gpu.memory_bytes,
        headroom_bytes=None if gpu is None else gpu.memory_bytes - total,
        notes=notes,
    )
