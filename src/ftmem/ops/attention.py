"""Attention: the kernels (sdpa, FlashAttention-2, eager) with rotary, soft-capping,
GQA and prefix keys, as transformers 5 runs them."""

from __future__ import annotations

from ftmem.adapters import answer_dtype
from ftmem.arch import Architecture, Param, layout
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32, INDEX_BYTES, eager_score_bytes
from ftmem.ops.context import LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.precision import resolve_dtypes
from ftmem.profiles import batch_padding, pads_batches, profile_of
from ftmem.run import RunConfig
from ftmem.versions import (
    BOOL_MASKS_PER_CALL,
    SDPA_MASK_INDEXED_PER_LAYER,
    TRANSFORMERS_FALCON_ATTENTION_INTERFACE,
    TRANSFORMERS_SDPA_ENABLE_GQA,
    older_than,
    rotary_tables_per_layer,
    sdpa_float_causal_mask,
    sdpa_inputs_copied,
    sdpa_repeats_kv,
    within,
)


def attention_path(arch: Architecture, run: RunConfig) -> str:
    """The family's attention path under the run's framework and transformers release:
    Falcon's eager fp32 matmuls before 5.25 (versions.TRANSFORMERS_FALCON_ATTENTION_INTERFACE),
    SDPA from 5.25 on or where the framework calls it for every family that needs no
    soft-capping (profiles.Profile.sdpa_attention)."""
    path = arch.traits.attention
    if path == "eager-fp32" and (
        profile_of(run).sdpa_attention
        or not older_than(run.transformers_version, TRANSFORMERS_FALCON_ATTENTION_INTERFACE)
    ):
        return "sdpa"
    return path


def runs_eager(arch: Architecture, run: RunConfig) -> bool:
    """Eager attention: asked for, or the only path transformers 5 has for the family
    (Falcon computes its attention in fp32 matmuls; Gemma-2 has no sdpa path)."""
    return run.attn == "eager" or attention_path(arch, run) != "sdpa"


def padding_mask(arch: Architecture, run: RunConfig) -> bool:
    """sdpa gets an explicit 4-D mask because the batch has pad tokens (profiles.pads_batches).

    transformers 5.24 leaves sdpa its causal flag only when every position is attended
    (masking_utils.py l.292-293, _ignore_causal_mask_sdpa); otherwise sdpa_mask builds a
    (b, 1, s, s) boolean mask (l.525-549) and sdpa_attention_forward passes it, which
    turns GQA in the kernel off (integrations/sdpa_attention.py l.42-51: use_gqa_in_sdpa
    needs ``attention_mask is None`` on CUDA): keys and values are repeated per head
    (l.118-127). Not for eager (eager_mask builds its float mask with or without padding:
    masking_utils.py l.598-618), nor FlashAttention-2 (flash_attention_mask passes the
    2-D mask, l.621-662, and the varlen path unpads: modeling_flash_attention_utils.py
    l.837-842, the real tokens' copies of q, k and v no larger than the padded ones).
    A fused rotary projection (Phi-3's qkv_proj, GPT-NeoX's query_key_value) takes the
    same path (fused_rotary_mask_derived), and so does a projection whose views the
    kernel keeps (qkv_views_kept: GPT-2, GPTBigCode), which keeps the mask beside that
    output (Attention.fused_views_saved); a family's own explicit mask is not derived."""
    if not pads_batches(run) or runs_eager(arch, run) or run.attn != "sdpa":
        return False
    return fused_rotary_mask_derived(arch)


def fused_rotary_mask_derived(arch: Architecture) -> bool:
    """An explicit sdpa mask is derived for the family's attention: separate q, k and v
    projections, or one fused projection followed by rotary (which makes q and k new
    tensors). transformers 5.25 modeling_phi3.py l.219-230 slices qkv_proj's output and
    views each slice, and apply_rotary_pos_emb (l.184-185) makes new q and k; with a mask
    GQA's repeat_kv copies k and v (Attention.masked_sdpa_saved), and otherwise sdpa keeps
    v, a view, and with it the whole output (Attention.v_kept). modeling_gpt_neox.py
    l.195-199: the same with one view chunked in three. Measured (tests/test_padding.py):
    a padded batch moves saved bytes and both peaks by the mask alone where v stays a view
    (as many kv heads as heads, or one repeated as a stride-0 view), and by the mask plus
    the repeated k and v less the qkv output where GQA copies them. Learned positions
    (below): saved bytes by the mask alone."""
    if arch.traits.sdpa_explicit_mask:
        return False
    if not arch.traits.fused_qkv or arch.position_embedding == "rotary":
        return True
    # GPT-2's and GPTBigCode's c_attn (learned positions): q, k and v stay views of the
    # output the kernel keeps anyway, and one kv head repeats as a stride-0 view, so the
    # mask is all a padded batch saves (measured, tests/test_padding.py: gpt2,
    # bigcode-mqa). Its backward is the kernel's (Attention.kernel_gradients). Not a
    # grouped kv that repeat_kv would copy (no such family), nor ALiBi (the model's own
    # mask, materialized_mask).
    kv_views = arch.kv_heads in (1, arch.num_heads)
    return arch.position_embedding == "learned" and kv_views


def image_block_mask(arch: Architecture, run: RunConfig) -> bool:
    """sdpa gets an explicit 4-D mask because the batch has images whose tokens attend
    to one another both ways (Family.image_tokens_bidirectional: Gemma 3).

    Gemma3Processor returns token_type_ids, 1 at image tokens (transformers 5.24
    processing_gemma3.py l.34 ``return_mm_token_type_ids = True``, l.70-71), and
    Gemma3Model.forward then builds its masks with create_masks_for_vision_model
    (modeling_gemma3.py l.876-881; without token_type_ids, create_masks_for_generate,
    l.883: is_causal as for text). get_block_sequence_ids_for_mask numbers each image's
    run of tokens (l.671-679); the global layers' mask is create_causal_mask with those
    ids (l.704), the sliding layers' the same OR'd blockwise overlay AND the window
    (l.729-734). A block overlay forbids the causal skip (masking_utils.py l.980-983,
    l.997-1000), so sdpa_mask builds a (b, 1, s, s) boolean mask for each layer type
    (l.535-549): two masks made once per forward and passed to every layer, global or
    sliding. From there the mechanism is a padded batch's (padding_mask): with a mask
    sdpa_attention_forward repeats GQA keys and values per head (integrations/
    sdpa_attention.py l.42-51, l.118-127) and torch's kernel keeps its additive float
    copy of the mask (Attention.masked_sdpa_saved). Not for eager (eager_mask builds its
    float masks with or without images) nor FlashAttention-2, which both Gemma 3
    image-text classes refuse (``_supports_flash_attn = False``, l.751, l.906)."""
    if not (arch.traits.image_tokens_bidirectional and arch.vision is not None and run.images):
        return False
    return not runs_eager(arch, run) and run.attn == "sdpa"


def image_mask_notes(arch: Architecture, run: RunConfig) -> list[str]:
    """What the images change in the attention (image_block_mask), said once."""
    if not (arch.traits.image_tokens_bidirectional and arch.vision is not None and run.images):
        return []
    if run.attn == "flash":
        return [
            "Gemma 3 with images: transformers 5.24 refuses FlashAttention-2 for the "
            "image-text model (_supports_flash_attn = False: it would drop the image tokens' "
            "two-way mask); estimated as asked, --attn sdpa is what transformers runs."
        ]
    if image_block_mask(arch, run):
        return [
            "Gemma 3 with images: the processor's token_type_ids let each image's tokens "
            "attend to one another both ways, so every layer's sdpa call takes an explicit "
            "(b, 1, s, s) mask (kept per layer, with GQA keys and values repeated per head): "
            "counted."
        ]
    return []


def materialized_mask(arch: Architecture, run: RunConfig) -> bool:
    """The model always gives sdpa a (b, 1, s, s) boolean mask (Family
    .causal_mask_materialized_from). transformers 5.25's FalconModel.forward calls
    create_causal_mask with ``allow_is_causal_skip=False`` ("Always materialize the mask
    so alibi can be added onto it below"), so sdpa_mask builds the mask with or without
    padding and sdpa_attention_forward passes it to every layer: torch's kernel keeps its
    additive copy per layer and GQA keys and values are repeated per head, as for a
    padded batch (Attention.masked_sdpa_saved). Not where the framework runs its own
    attention (profiles.Profile.sdpa_attention) nor under FlashAttention-2 or eager."""
    first = arch.traits.causal_mask_materialized_from
    if first is None or older_than(run.transformers_version, first):
        return False
    if profile_of(run).sdpa_attention or arch.position_embedding == "alibi":
        return False
    return run.attn == "sdpa" and not runs_eager(arch, run)


def alibi_model_mask(arch: Architecture, run: RunConfig) -> bool:
    """An ALiBi model (falcon-rw) from transformers 5.25 builds one float (b, heads, s, s)
    mask that holds the position bias, whichever of sdpa and eager runs. FalconModel.forward
    (5.25.0 modeling_falcon.py l.552-598) builds the alibi tensor (build_alibi_tensor,
    (b·heads, 1, s) in the embeddings' dtype), materialises the boolean causal mask
    (``allow_is_causal_skip=False``), turns it into a float one with torch.where and
    ``torch.masked_fill``s ``alibi / sqrt(head_dim)`` where it masks: the broadcast makes
    one (b, heads, s, s) tensor in the embeddings' dtype, passed to every block
    (Attention.alibi_mask_bytes). FalconAttention takes no rotary then (l.313-315: q, k
    and v stay views of query_key_value's output, qkv_views_kept). Not under
    FlashAttention-2, which 5.25 refuses for ALiBi (l.567-571)."""
    first = arch.traits.causal_mask_materialized_from
    if first is None or arch.position_embedding != "alibi":
        return False
    if older_than(run.transformers_version, first) or profile_of(run).sdpa_attention:
        return False
    return run.attn != "flash"


def alibi_mask(arch: Architecture, run: RunConfig) -> bool:
    """The model's ALiBi mask (alibi_model_mask) goes to every layer's sdpa kernel, which
    keeps it (or its copy: alibi_mask_copied). Under eager it is added to the scores,
    which no op saves (eager_attention_forward, modeling_falcon.py l.225-226)."""
    return alibi_model_mask(arch, run) and run.attn == "sdpa" and not runs_eager(arch, run)


def alibi_notes(arch: Architecture, run: RunConfig) -> list[str]:
    """What an ALiBi model's attention does that the estimate does not follow, said once
    (alibi_mask)."""
    first = arch.traits.causal_mask_materialized_from
    if arch.position_embedding != "alibi" or first is None:
        return []
    if run.attn == "flash":
        return [
            "ALiBi: transformers refuses FlashAttention-2 for this model (the position bias "
            "is in the attention mask, which flash does not take); estimated as asked, "
            "--attn sdpa is what runs."
        ]
    return []


def alibi_mask_copied(arch: Architecture, run: RunConfig) -> bool:
    """Each layer's sdpa call makes and keeps its own copy of the ALiBi mask
    (alibi_mask): autocast casts the fp32 mask of an fp32 model to the compute dtype
    (sdpa is on autocast's lower-precision list; measured on the CPU), and CUDA's
    memory-efficient kernel pads a last dimension that is not a multiple of 8
    (aligned_mask). Otherwise every layer's kernel keeps the model's one tensor."""
    if not alibi_mask(arch, run):
        return False
    dt = resolve_dtypes(run)
    padded = run.device == "cuda" and run.positions % 8 != 0
    return padded or dt.residual_bytes != BYTES_PER_ELEMENT[dt.compute]


def explicit_mask(arch: Architecture, run: RunConfig) -> bool:
    """sdpa is given a (b, 1, s, s) mask, not is_causal, in every layer: a padded batch,
    images whose tokens attend both ways, or a model that always builds it (the mask is
    one either way)."""
    return padding_mask(arch, run) or image_block_mask(arch, run) or materialized_mask(arch, run)


def sliding_window_mask(arch: Architecture, run: RunConfig) -> bool:
    """sdpa is given a (b, 1, s, s) mask in the sliding-window layers only: the sequence
    reaches the window, and no mask is made for every layer anyway (explicit_mask).

    transformers 5.24 builds a sliding layer's mask with create_sliding_window_causal_mask
    (masking_utils.py l.1120; LAYER_PATTERN_TO_MASK_FUNCTION, l.1529), which passes
    ``local_size=sliding_window`` to sdpa_mask (l.1248); _ignore_causal_mask_sdpa then
    refuses the causal skip when ``kv_length >= local_attention_size`` (l.285-286: the
    window's band must be written out), and without a cache kv_length is s. So every
    sliding layer's sdpa call takes a boolean (b, 1, s, s) mask (l.535-549), with GQA keys
    and values repeated per head (Attention.masked_sdpa_saved), as for a padded batch;
    the full-attention layers keep is_causal. Eager builds its float masks either way,
    and FlashAttention-2 takes the window as an argument (no mask). The same skip rule is
    in 4.53-4.54 (masking_utils.py ``kv_length < local_attention_size``, l.214 and l.230)
    and before (modeling_attn_mask_utils.py 4.41 l.273, l.276), but before 4.53 the
    model's float mask is one storage shared by every layer: that is not modelled here
    (versions.BOOL_MASKS_PER_CALL). Phi-3 slides on every layer once config.json sets
    sliding_window (Phi-3-mini-4k: 2047): transformers 5.25 Phi3Model.forward picks
    create_sliding_window_causal_mask then (modeling_phi3.py l.386), behind its fused
    qkv_proj (fused_rotary_mask_derived; measured: tests/accuracy's phi3 sliding cases)."""
    if not (arch.sliding_layers and arch.sliding_window) or explicit_mask(arch, run):
        return False
    if older_than(run.transformers_version, BOOL_MASKS_PER_CALL):
        return False
    if run.positions < arch.sliding_window or runs_eager(arch, run) or run.attn != "sdpa":
        return False
    return not packed_rows(run) and fused_rotary_mask_derived(arch)


def layer_mask(ctx: LayerContext) -> bool:
    """This layer's sdpa call takes an explicit mask: every layer's (explicit_mask), or
    the layer slides and its window's band is written out (sliding_window_mask)."""
    every = explicit_mask(ctx.arch, ctx.run)
    return every or (ctx.sliding and sliding_window_mask(ctx.arch, ctx.run))


def sliding_mask_notes(arch: Architecture, run: RunConfig) -> list[str]:
    """What the sliding layers' mask changes (sliding_window_mask), said once."""
    if not sliding_window_mask(arch, run):
        return []
    return [
        f"sequence of {run.positions} tokens reaches the sliding window "
        f"({arch.sliding_window}): transformers gives sdpa an explicit (b, 1, s, s) mask in "
        f"the {arch.sliding_layers} sliding layers (kept per layer, with GQA keys and values "
        "repeated per head): counted."
    ]


def packed_rows(run: RunConfig) -> bool:
    """The batch reaches the model as one row of b·s tokens holding several sequences,
    told apart by position_ids and with no attention_mask (--padding packed): TRL's
    padding_free collator flattens the batch (trl@f2cd5771 sft_trainer.py l.481-486, and
    padding_free is on for packing_strategy bfd, l.1143), as does transformers'
    DataCollatorWithFlattening (data/data_collator.py l.1261). transformers 5.24 looks for packed sequences only then
    (masking_utils.py l.865: ``position_ids is not None and attention_mask is None and
    cache is None``): find_packed_sequence_indices (l.735-764) numbers the sequences where
    a position does not follow the one before, create_causal_mask then forbids the causal
    skip (l.991-996) and ANDs a same-sequence function into the causal one (l.1001-1002),
    and sdpa_mask builds the boolean mask (l.535-539) at (1, 1, T, T). The padding
    mechanism (padding_mask, Attention.masked_sdpa_saved) then applies to that one row."""
    return batch_padding(run) == "packed"


def packed_flex(run: RunConfig) -> bool:
    """torchtune's packed batches (--padding packed-flex): b rows of s tokens, each row
    several samples. padded_collate_packed (torchtune/data/_collate.py@1814feb17a90) adds
    ``input_pos``, each token's position in its own sample, and a block-causal mask that
    packed_block_causal_mask (torchtune/modules/attention_utils.py@1814feb17a90) makes a
    BlockMask where flex attention is supported (CUDA sm >= 7.5,
    torchtune/utils/_import_guard.py@1814feb17a90); _attention_call then runs
    flex_attention, whose autograd function keeps q, k, v, its output and an fp32
    log-sum-exp (torch/_higher_order_ops/flex_attention.py FlexAttentionAutogradOp): what
    flash keeps, no s² tensor. The positions index the rotary cache
    (Attention.indexed_rotary_saved)."""
    return batch_padding(run) == "packed-flex"


def padding_notes(arch: Architecture, run: RunConfig) -> list[str]:
    """What --padding, when the run gives it, changes here (and what it does not)."""
    if run.padding is None or run.padding == "none":
        return []
    said = f"--padding {run.padding}"
    if packed_flex(run):
        compiled = " (not counted in compiled layers: inductor recomputes the index)"
        return [
            f"{said}: torchtune's BlockMask and flex attention keep what flash keeps (no s² "
            "mask; GPUs below sm 7.5 take an s² bool mask with sdpa instead, not modelled); "
            "each rotary call indexes the fp32 cache by position, a copy kept for backward"
            + (compiled if run.compile else "")
            + "."
        ]
    if not pads_batches(run):
        return [
            f"{said}: one sequence per batch has no pad tokens, so transformers leaves sdpa "
            "its causal flag: nothing added."
        ]
    if run.attn == "flash" and packed_rows(run):
        return [
            f"{said}: FlashAttention-2 takes the packed sequences' bounds from position_ids "
            "(varlen kernel, no mask): nothing added."
        ]
    if run.attn == "flash":
        return [
            f"{said}: FlashAttention-2 unpads the batch (varlen kernel, no mask); estimated "
            "as a batch without padding at its padded length, which bounds it."
        ]
    if runs_eager(arch, run) and packed_rows(run):
        return [
            f"{said}: eager attention over one flattened row computes T×T scores (b times "
            "b·s² per head); estimated as b rows of s: not counted."
        ]
    if runs_eager(arch, run):
        return [f"{said}: eager attention builds its float mask with or without padding."]
    if arch.latent_attention or not fused_rotary_mask_derived(arch):
        return [f"{said}: sdpa's padding mask is not modelled for this attention; not counted."]
    return []


def kernel_output_follows_query(run: RunConfig, e: int) -> bool:
    """sdpa's kernel lays its output out as its query (a contiguous (b, heads, s, d) query
    gets a contiguous output, whose transpose the caller copies): CUDA's flash kernel,
    16-bit sdpa's without a mask (pytorch@03b7c19d aten/src/ATen/native/transformers/cuda/
    flash_attn/flash_api.cpp mha_fwd ``out = at::empty_like(q_padded)``, q being the
    query's (b, s, heads, d) transpose; Dao-AILab/flash-attention v2.5.6 the same line,
    l.404-406), and the CPU's flash kernel under torch 2.13 (measured:
    tests/test_nograd_requests.py; torch 2.4.1's allocates (b, s, heads, d) whatever the
    query). CUDA's memory-efficient kernel, fp32's, allocates (b, s, heads, d)
    (aten/src/ATen/native/transformers/cuda/attention.cu _efficient_attention_forward
    ``res = at::empty({B, M, num_heads, Kv}, ...)``)."""
    return run.device == "cpu" or e == 2


def sdpa_output_copied(arch: Architecture, run: RunConfig, e: int) -> bool:
    """transformers 4.48-4.55 hands the kernel a contiguous query (versions.
    sdpa_inputs_copied), so where the kernel lays its output out as its query,
    sdpa_attention_forward's ``attn_output.transpose(1, 2).contiguous()`` (4.48.0
    integrations/sdpa_attention.py:57) copies it: what o_proj reads is that copy, not the
    output the kernel keeps (5.25's rotary query keeps the (b, s, heads, d) layout, and the
    transpose is a view). Measured on the CPU, tests/test_nograd_requests.py."""
    copied = sdpa_inputs_copied(arch, run) and not runs_eager(arch, run)
    return copied and kernel_output_follows_query(run, e)


def rotary_head_major(arch: Architecture) -> bool:
    """The rotary's ``torch.cat`` leaves q and k laid out head-major, (b, heads, s, d)
    contiguous: the partial rotary of GPT-NeoX, Phi, Phi-3, StableLM and GLM, whose kernel
    output follows that layout and reaches o_proj as a copy (Family.
    o_proj_reads_kernel_output False, measured); ``.contiguous()`` of them is no copy."""
    return arch.position_embedding == "rotary" and not arch.traits.o_proj_reads_kernel_output


def qkv_views_kept(arch: Architecture) -> bool:
    """q, k and v are views of one fused projection's output that the kernel keeps,
    so the whole output stays alive (GPT-2); rotary would make new q and k tensors."""
    return arch.traits.fused_qkv and arch.position_embedding != "rotary"


@register("attention")
class Attention:
    """The attention core between the q/k/v projections and o (their linears are the
    linear op's): what the kernel keeps, and the s² tensors of the eager path."""

    @staticmethod
    def parameters(arch: Architecture) -> tuple[Param, ...]:
        """The attention core's own tensors: gpt-oss's sinks (the projections are the
        linear op's)."""
        return tuple(p for p in layout(arch).block if p.kind == "sink")

    @staticmethod
    def saved(
        ctx: LayerContext, needs_grad: frozenset[str], rotary_grad: bool = True
    ) -> list[Saved]:
        """Attention core: rotary outputs, the kernel's saved inputs/outputs.

        ``needs_grad`` holds which of q, k, v need a gradient. The fused kernels save all
        their inputs as soon as one does; eager matmuls save an operand only when the
        other one needs a gradient (q for k's gradient, k for q's). ``rotary_grad``: the
        q or k the rotary turns needs one (not where only a prefix's keys do, which join
        after it: a layer's own tables are then kept by no multiply).
        """
        if not needs_grad:
            return []
        arch, run = ctx.arch, ctx.run
        T, e = ctx.tokens, ctx.e
        b, s = run.batch_size, ctx.tokens // run.batch_size
        nh, q, kv = arch.num_heads, arch.q_size, arch.kv_size
        out: list[Saved] = Attention.layer_rotary_tables(ctx) if rotary_grad else []
        out += Attention.indexed_rotary_saved(ctx, needs_grad)
        out += Attention.query_scale_saved(ctx, needs_grad)

        def keep(what: str, size: int, kind: Kind) -> None:
            out.append(Saved(what, size, kind, Side.ATTENTION))

        eager = runs_eager(arch, run)
        if run.prefix_len and not eager:
            return out + Attention.prefix_saved(ctx)
        if attention_path(arch, run) == "eager-fp32":
            # transformers 5 Falcon: q, k, v upcast to fp32 and k, v repeated per head (MQA/GQA)
            # for the score and PV matmuls; the fp32 probabilities are the only s² tensor
            keep("q, k, v in fp32 (repeated per head)", 3 * T * q * FP32, Kind.ATTN_COPY)
            keep("softmax output (fp32, s²)", b * nh * s * s * FP32, Kind.ATTN_PROBS)
            return out
        P = run.prefix_len
        if qkv_views_kept(arch):
            out += Attention.fused_views_saved(ctx, needs_grad)
        elif eager:
            # repeat_kv copies k and v to every query head (GQA). One KV head repeats as a
            # stride-0 view, and matmul's fold of (batch, heads) into one dim stays a view
            # only for one sequence: otherwise bmm keeps a copy (measured, Gemma's MQA, and
            # one KV head per TP rank under ColossalAI, tests/test_sequence_parallel)
            one_view = arch.kv_heads == 1 and run.batch_size == 1
            kv_saved = kv if kv == q or one_view else q
            Tk = T + b * P  # keys and values include a prefix
            if "k" in needs_grad:
                keep("rotary q", T * q * e, Kind.ATTN_QK)
            if "q" in needs_grad:
                keep("rotary k (repeated per head)", Tk * kv_saved * e, Kind.ATTN_QK)
            keep("v (repeated per head)", Tk * kv_saved * e, Kind.ATTN_V)
        elif Attention.kv_expanded(arch, run):
            out += Attention.expanded_kv_saved(ctx)
        elif sdpa_inputs_copied(arch, run):
            out += Attention.copied_sdpa_saved(ctx)
        elif layer_mask(ctx) or sdpa_repeats_kv(arch, run):
            out += Attention.masked_sdpa_saved(ctx, with_mask=layer_mask(ctx))
        elif ctx.reusing:
            out += Attention.reused_kv_saved(ctx)
        else:
            keep("rotary q and k", T * (q + kv) * e, Kind.ATTN_QK)
            keep(*Attention.v_kept(ctx))
        if not eager:
            out += Attention.float_causal_mask_saved(ctx)
            if arch.traits.sdpa_explicit_mask and run.attn != "flash":
                # one (1, 1, s, s) mask for the batch, made float in the compute dtype
                keep("attention mask (s², float)", s * s * e, Kind.ATTN_MASK)
            keep("attention output + logsumexp", T * q * e + b * nh * s * FP32, Kind.ATTN_OUTPUT)
            return out
        return out + Attention.eager_scores_saved(ctx, b * nh * s, s + P, needs_grad)

    @staticmethod
    def query_scale_saved(ctx: LayerContext, needs_grad: frozenset[str]) -> list[Saved]:
        """Ministral 3's per-position query factor (Family.query_position_scale): one
        sequence's s factors, (1, 1, s, 1), cast to the rotated queries' dtype (the
        promotion of the projection's output and the rotary tables': fp32 under autocast
        with fp32 tables), kept by the multiply for the queries' gradient."""
        if not (ctx.arch.traits.query_position_scale and "q" in needs_grad):
            return []
        tables = FP32 if ctx.arch.traits.rotary_tables_fp32 else ctx.residual
        s = ctx.tokens // ctx.run.batch_size
        size = s * max(ctx.projection_out_bytes, tables)
        return [Saved("query position scale (Llama 4 scaling)", size, Kind.ATTN_QK, Side.ATTENTION)]

    @staticmethod
    def clamp_saved(ctx: LayerContext, needs_grad: frozenset[str]) -> list[Saved]:
        """config.json's clip_qkv (``arch.qkv_clip``, OLMoE): ``clamp_`` in place on the
        query (its norm's output), the key (its norm's) and the value projection. An
        in-place op whose derivative reads its input keeps a copy of it (torch's autograd
        codegen saves ``original_self``; clamp's backward masks by it, derivatives.yaml
        clamp_backward), one per tensor that needs a gradient. A norm's output is
        ``weight * x.to(input_dtype)``: the promotion of the norm weight's dtype (fp32
        under autocast) and the projection's."""
        arch = ctx.arch
        if arch.qkv_clip is None:
            return []
        oe = ctx.projection_out_bytes
        normed = max(ctx.residual, oe) if arch.qk_norm else oe
        widths = {"q": (arch.q_size, normed), "k": (arch.kv_size, normed), "v": (arch.kv_size, oe)}
        return [
            Saved(f"{role}: copy kept by clamp_ (clip_qkv)", ctx.tokens * width * size,
                  Kind.ATTN_COPY, Side.ATTENTION)
            for role, (width, size) in widths.items()
            if role in needs_grad
        ]  # fmt: skip

    @staticmethod
    def fused_views_saved(ctx: LayerContext, needs_grad: frozenset[str]) -> list[Saved]:
        """q, k and v as views of one fused projection's output (qkv_views_kept): the
        kernel keeps that whole output, with the masks it is given; eager attention over
        more than one sequence keeps matmul's copies instead (eager_fold_copies)."""
        arch, run, T, e = ctx.arch, ctx.run, ctx.tokens, ctx.e
        b, s = run.batch_size, ctx.tokens // run.batch_size
        if runs_eager(arch, run) and b > 1:
            return Attention.eager_fold_copies(ctx, needs_grad)
        width = arch.q_size + 2 * arch.kv_size
        items = [("c_attn output (q, k, v views)", T * width * e, Kind.ATTN_QKV)]
        if alibi_mask_copied(arch, run):
            mask = aligned_mask(b * arch.num_heads, s, e, run.device)
            items.append(
                ("this layer's copy of the ALiBi mask (b, heads, s, s)", mask, Kind.ATTN_MASK)
            )
        if explicit_mask(arch, run):  # GPT-2 with a padded batch: the mask is all it adds
            rows, length = (1, T) if packed_rows(run) else (b, s)
            mask = aligned_mask(rows, length, e, run.device)
            items.append(("additive mask (last dim padded to 8)", mask, Kind.ATTN_MASK))
        return [Saved(what, size, kind, Side.ATTENTION) for what, size, kind in items]

    @staticmethod
    def eager_fold_copies(ctx: LayerContext, needs_grad: frozenset[str]) -> list[Saved]:
        """Eager attention over views of a fused projection's output (qkv_views_kept),
        more than one sequence: torch.matmul folds (batch, heads) into bmm's batch with a
        reshape, which a strided view of that output cannot take without a copy, so bmm
        keeps copies, each b·heads·s·head_dim: q (for k's gradient), k and v repeated per
        head (repeat_kv's expand of one key/value head is a stride-0 view, copied by the
        same fold), not the projection's output. transformers 5.25 eager_attention_forward
        (falcon l.222-231, gpt_bigcode l.100-110). With as many key/value heads as heads
        the three copies weigh what the output does (GPT-2, falcon-rw); one sequence folds
        as views, and the output stays whole (fused_views_saved). Measured on the tiny
        multi-query ALiBi Falcon (tests/accuracy: attn=eager)."""
        run, width = ctx.run, ctx.arch.q_size * ctx.e
        keys = ctx.tokens + run.batch_size * run.prefix_len  # a prefix's keys and values too
        items = []
        if "k" in needs_grad:
            items.append(("q copied by matmul's fold", ctx.tokens * width))
        if "q" in needs_grad:
            items.append(("k repeated per head, copied by matmul's fold", keys * width))
        if "q" in needs_grad or "k" in needs_grad:
            items.append(("v repeated per head, copied by matmul's fold", keys * width))
        return [Saved(what, size, Kind.ATTN_COPY, Side.ATTENTION) for what, size in items]

    @staticmethod
    def eager_scores_saved(
        ctx: LayerContext, rows: int, keys: int, needs_grad: frozenset[str]
    ) -> list[Saved]:
        """The eager path's s² tensors (``rows``: b·heads·s query rows, ``keys`` each)."""
        arch, e, scores = ctx.arch, ctx.e, rows * keys
        if arch.traits.attention_sinks:
            return Attention.sinks_saved(ctx, rows, keys, "v" in needs_grad)
        out: list[Saved] = []

        def keep(what: str, size: int, kind: Kind) -> None:
            out.append(Saved(what, size, kind, Side.ATTENTION))

        if arch.traits.softmax_in_compute_dtype:
            # GPT-2's eager path takes the softmax in the compute dtype: one s² tensor
            keep("softmax output (s²)", scores * e, Kind.ATTN_PROBS)
            return out
        if arch.attn_logit_softcapping:
            # scores / cap -> tanh -> * cap: the tanh output is kept
            keep("soft-capped scores tanh (s²)", scores * e, Kind.ATTN_SOFTCAP)
        keep("softmax output (fp32, s²)", scores * FP32, Kind.ATTN_PROBS)
        if "v" in needs_grad and e != FP32:
            keep("attention probabilities cast (s²)", scores * e, Kind.ATTN_PROBS)
        return out

    @staticmethod
    def sinks_saved(ctx: LayerContext, rows: int, keys: int, v_grad: bool) -> list[Saved]:
        """gpt-oss's eager softmax (transformers 5.24 eager_attention_forward): each row's
        scores joined by its head's sink logit (torch.cat promotes them to the sink
        parameter's dtype: fp32 under autocast), less the row's maximum (max keeps its
        indices), softmax in that dtype; the PV matmul reads the probabilities without the
        sink column as a view, or a 16-bit copy of them. ``rows``: b·heads·s."""
        pe, e, scores = ctx.residual, ctx.e, rows * keys
        items = [
            ("softmax output with the sink (s × (s + 1))", (scores + rows) * pe),
            ("row maxima's indices", rows * INDEX_BYTES),
        ]
        if v_grad and pe != e:
            items.append(("attention probabilities cast (s²)", scores * e))
        return [Saved(what, size, Kind.ATTN_PROBS, Side.ATTENTION) for what, size in items]

    @staticmethod
    def layer_rotary_tables(ctx: LayerContext) -> list[Saved]:
        """The layer's own cos and sin (one sequence's positions, whatever the batch),
        which its rotary multiplies keep: GLM-4's interleaved ones in the residual dtype
        (Family.rotary_tables_per_layer), ERNIE 4.5's in fp32 (rotary_tables_fp32: the
        model's tables are fp32, interleaved per layer), or a transformers 4 layer's in
        its value states' dtype (versions.LLAMA_ROTARY_PER_LAYER: ``.to(dtype=x.dtype)``,
        x = value_states)."""
        if not rotary_tables_per_layer(ctx.arch, ctx.run):
            return []
        s = ctx.tokens // ctx.run.batch_size
        glm = ctx.arch.traits.rotary_tables_per_layer
        table = FP32 if ctx.arch.traits.rotary_tables_fp32 else ctx.residual
        size = 2 * s * ctx.arch.rotary_size * (table if glm else ctx.e)
        what = "this layer's interleaved cos/sin" if glm else "this layer's cos/sin"
        return [Saved(what, size, Kind.ATTN_QK, Side.ATTENTION)]

    @staticmethod
    def kv_expanded(arch: Architecture, run: RunConfig) -> bool:
        """The fused kernel is given keys and values copied to every query head by the
        attention's own code: the framework's (Profile.expands_kv; with as many kv heads
        as heads only LitGPT's fused qkv differs, Profile.fuses_qkv) or ColossalAI's
        shardformer forward on this rank (Architecture.kv_repeated)."""
        profile = profile_of(run)
        own = profile.expands_kv and (arch.kv_size != arch.q_size or profile.fuses_qkv)
        return own or arch.kv_repeated

    @staticmethod
    def indexed_rotary_saved(ctx: LayerContext, needs_grad: frozenset[str]) -> list[Saved]:
        """torchtune's rotary over packed rows (packed_flex): ``self.cache[input_pos]`` is
        an fp32 (b, s, rotary/2, 2) copy of the cache's rows, where an unpacked batch takes
        the view ``self.cache[:seq_len]`` (torchtune/modules/position_embeddings.py
        @1814feb17a90 RotaryPositionalEmbeddings.forward; llama3_1/_position_embeddings.py
        Llama3ScaledRoPE.forward the same). Its four multiplies with the fp32 upcast of x
        keep views of it for x's gradient, so each rotary call whose input needs a
        gradient keeps its own copy: q's and k's. Compiled layers keep none: aten.index
        is one of the partitioner's recomputable ops (torch 2.13
        torch/_functorch/partitioners.py l.2956, "we should allow recomputing indexing"),
        so backward gathers again from the cache and input_pos (graph inputs) instead."""
        arch = ctx.arch
        if not packed_flex(ctx.run) or arch.position_embedding != "rotary" or ctx.compiled:
            return []
        calls = len(needs_grad & {"q", "k"})
        size = ctx.tokens * arch.rotary_size * FP32
        what = "rotary cache rows indexed by input_pos (fp32)"
        return [Saved(what, size, Kind.ATTN_QK, Side.ATTENTION) for _ in range(calls)]

    @staticmethod
    def expanded_kv_saved(ctx: LayerContext) -> list[Saved]:
        """LitGPT (Lightning-AI/litgpt@00af8b0d litgpt/model.py CausalSelfAttention.forward):
        the fused qkv output is viewed as (B, ng, q_per_kv + 2, T, hs); with fewer kv heads
        k and v are ``expand``ed to every query head and ``reshape``d (a copy), so the
        kernel keeps q, k and v at the full width (+4·N·(nh − ng)·hs bytes against a
        GQA-aware kernel). With as many kv heads as heads the reshape of v is a view of the
        qkv output, whose whole storage the kernel then keeps (Profile.fuses_qkv). q and k
        are new tensors (``torch.cat`` after the rotary). torchtune expands the same way
        after its separate projections and rotary (torchtune/modules/attention.py@1814feb1
        l.284-290: ``unsqueeze(2).expand(...).flatten(1, 2)``, a copy with several kv heads; nothing with as
        many kv heads as heads); measured on the CPU in tests/test_profile_torchtune.py.
        ColossalAI's shardformer attention (Architecture.kv_repeated) runs transformers'
        ``repeat_kv`` (expand, then reshape: a copy) after the rotary, its ColoAttention
        and RingAttention keeping q, k, v and the output (hpcaitech/ColossalAI@4f9953be
        shardformer/modeling/llama.py l.551-567, layer/attn.py l.925): the same tensors,
        measured on the CPU in tests/test_sequence_parallel.py.

        One kv head (multi-query; under ColossalAI only ring_attn's copy gets here): the
        expanded dim merges with the size-1 kv-head dim, so torchtune's ``flatten`` and
        LitGPT's ``reshape`` are stride-0 views, which the kernel keeps as given (measured
        on the CPU, tests/test_profile_torchtune.py and tests/test_profile_litgpt.py).
        torchtune's k and v are then the rotary k and the v projection at the kv width;
        LitGPT's rotary runs on the expanded k (full width, as before), and its v is a
        view of the qkv output."""
        arch, T, e = ctx.arch, ctx.tokens, ctx.e
        q, kv = arch.q_size, arch.kv_size
        fused = profile_of(ctx.run).fuses_qkv
        view = arch.kv_heads == 1 and not arch.kv_repeated
        if view and not fused:
            items = [
                ("rotary q and k", T * (q + kv) * e, Kind.ATTN_QK),
                ("v (expanded as a view)", T * kv * e, Kind.ATTN_V),
            ]
            return [Saved(what, size, kind, Side.ATTENTION) for what, size, kind in items]
        items = [("rotary q and k (k at every head)", T * 2 * q * e, Kind.ATTN_QK)]
        if kv != q and not view:
            items.append(("v expanded to every head", T * q * e, Kind.ATTN_V))
        else:
            items.append(("qkv output (v is a view)", T * (q + 2 * kv) * e, Kind.ATTN_QKV))
        return [Saved(what, size, kind, Side.ATTENTION) for what, size, kind in items]

    @staticmethod
    def reused_kv_saved(ctx: LayerContext) -> list[Saved]:
        """An unmasked sdpa call of a layer that reuses a lower layer's key and value
        (Gemma 4's key/value sharing, modeling_gemma4.py l.1213-1214): the rotated query,
        and of the key and value only the copies autocast's cast makes for this call (the
        rotated key is fp32 where fp32 cos and sin promote it; the values where they are
        fp32); the tensors themselves are the storing layer's, kept there."""
        T, e, kv = ctx.tokens, ctx.e, ctx.arch.kv_size
        out = [Saved("rotary q", T * ctx.arch.q_size * e, Kind.ATTN_QK, Side.ATTENTION)]
        if max(ctx.residual, ctx.projection_out_bytes) != e:
            out.append(Saved("k (autocast's copy)", T * kv * e, Kind.ATTN_QK, Side.ATTENTION))
        if ctx.quantized_outputs_in_input_dtype or answer_dtype.values_in_input_dtype(ctx):
            out.append(Saved("v (autocast's copy)", T * kv * e, Kind.ATTN_V, Side.ATTENTION))
        return out

    @staticmethod
    def keys_cast_per_head(ctx: LayerContext) -> bool:
        """One KV head repeated for a masked sdpa call: repeat_kv's expand is a stride-0
        view, but under autocast the rotary keys are in the residual's dtype (fp32 cos
        and sin promote them) and autocast's cast for sdpa copies the expanded view, one
        key row per query head (measured: Falcon's multi-query under bf16-mixed)."""
        arch = ctx.arch
        if not (arch.kv_heads == 1 < arch.num_heads and arch.position_embedding == "rotary"):
            return False
        return max(ctx.residual, ctx.projection_out_bytes) != ctx.e

    @staticmethod
    def v_kept(ctx: LayerContext) -> tuple[str, int, Kind]:
        """The values sdpa keeps when they are not repeated per head: a view of a fused
        projection's output keeps that whole output (rotary made new q and k), unless
        the values are fp32 under autocast (sdpa's cast copies them)."""
        arch, T, e = ctx.arch, ctx.tokens, ctx.e
        cast = ctx.quantized_outputs_in_input_dtype or answer_dtype.values_in_input_dtype(ctx)
        if arch.traits.fused_qkv and not cast:
            size = T * (arch.q_size + 2 * arch.kv_size) * e
            return ("qkv_proj output (v is a view)", size, Kind.ATTN_QKV)
        return ("v", T * arch.kv_size * e, Kind.ATTN_V)

    @staticmethod
    def masked_sdpa_saved(ctx: LayerContext, with_mask: bool = True) -> list[Saved]:
        """sdpa with a padding or image mask (explicit_mask), or any GQA sdpa call of transformers
        < 4.54 (versions.sdpa_repeats_kv; ``with_mask`` False: no padding). With GQA,
        transformers repeats keys and values to every query head before the kernel, which
        keeps the copies (transformers 5.24 integrations/sdpa_attention.py l.118-127
        ``repeat_kv``: expand, then reshape, a copy; one kv head repeats as a stride-0 view
        and as many as the heads need none). torch converts the boolean mask to an additive
        one in the query's dtype per call, and CUDA's memory-efficient kernel (flash takes
        no mask) pads its last dimension to a multiple of 8 and keeps it (aligned_mask); the
        CPU's kernel keeps it unpadded (b·s·s·e per layer, measured: tests/test_padding.py).
        The training forward's DynamicCache, made whenever use_cache (config.json's
        default) and checkpointing is off, keeps the unrepeated keys and values too
        (cache_utils.py DynamicLayer.update ``torch.cat``) while the model's output lives:
        where the loop holds that output into the next forward
        (Profile.output_held_into_next_forward), and under transformers 4, whose
        Trainer left use_cache on (measured against the 4.x wheels: tests/
        test_transformers4_sdpa.py). transformers 5.24's HF Trainer sets config.use_cache
        from TrainingArguments.use_cache, False by default (trainer.py l.645-646,
        training_args.py l.971-976), and TRL's SFTTrainer passes use_cache=False
        (trl@f2cd5771 sft_trainer.py compute_loss). (The kernel's output and logsumexp:
        Attention.saved, as for every fused kernel.)"""
        arch, run = ctx.arch, ctx.run
        T, e = ctx.tokens, ctx.e
        b, s = run.batch_size, ctx.tokens // run.batch_size
        q, kv = arch.q_size, arch.kv_size
        if 1 < arch.kv_heads < arch.num_heads:
            items = [("rotary q", T * q * e, Kind.ATTN_QK)]
            items.append(("k and v repeated per head (repeat_kv)", 2 * T * q * e, Kind.ATTN_COPY))
            holds = profile_of(run).output_held_into_next_forward or sdpa_repeats_kv(arch, run)
            if holds and not run.grad_ckpt:
                cache = ("the cache's keys and values (DynamicCache)", 2 * T * kv * e, Kind.ATTN_QK)
                items.append(cache)
        elif Attention.keys_cast_per_head(ctx):
            items = [
                ("rotary q, and k cast per head", T * 2 * q * e, Kind.ATTN_QK),
                Attention.v_kept(ctx),
            ]
        else:
            items = [("rotary q and k", T * (q + kv) * e, Kind.ATTN_QK), Attention.v_kept(ctx)]
        if with_mask:
            rows, length = (1, T) if packed_rows(run) else (b, s)  # packed: one row of T tokens
            mask = aligned_mask(rows, length, e, run.device)
            items.append(("additive mask (last dim padded to 8)", mask, Kind.ATTN_MASK))
        return [Saved(what, size, kind, Side.ATTENTION) for what, size, kind in items]

    @staticmethod
    def copied_per_head(arch: Architecture, run: RunConfig, masked: bool) -> bool:
        """transformers 4.48-4.55 gives the kernel keys and values as wide as q: repeat_kv
        runs for grouped kv heads before 4.54 or under a mask (4.54.0 integrations/
        sdpa_attention.py:50-57, use_gqa_in_sdpa), and one kv head's stride-0 repeat is
        then copied per head by ``key.contiguous()``."""
        if arch.kv_heads == arch.num_heads:
            return False
        return masked or older_than(run.transformers_version, TRANSFORMERS_SDPA_ENABLE_GQA)

    @staticmethod
    def copied_sdpa_saved(ctx: LayerContext) -> list[Saved]:
        """transformers 4.48-4.55's sdpa_attention_forward (versions.sdpa_inputs_copied):
        the kernel keeps the contiguous copies it is given, not the caller's tensors
        (4.48.0 integrations/sdpa_attention.py:29-41): the query's copy (one already
        contiguous, as a partial rotary's cat makes it, is its own: rotary_head_major), the
        keys and values repeated per head where they are (copied_per_head), else their
        copies. The caller's rotary k and its v (a view of the v projection's output, or of
        a fused projection's whole output: v_kept) stay beside them where the training
        forward's DynamicCache holds them: without checkpointing, transformers 4's model
        makes one whenever config.use_cache (4.48.0 models/llama/modeling_llama.py:532, 547)
        and its first update stores the tensors themselves (cache_utils.py:441-442; 4.55.4
        DynamicLayer.update :99-100), as masked_sdpa_saved says of the GQA copies. With a
        padding or image mask, the additive mask as there. (The kernel's output and
        logsumexp: Attention.saved.)"""
        arch, run = ctx.arch, ctx.run
        T, e = ctx.tokens, ctx.e
        b, s = run.batch_size, ctx.tokens // run.batch_size
        q, kv = arch.q_size, arch.kv_size
        masked = layer_mask(ctx)
        if not Attention.copied_per_head(arch, run, masked):
            kept = ("k and v (contiguous copies)", 2 * T * kv * e)
        elif arch.kv_heads > 1:
            kept = ("k and v repeated per head (repeat_kv)", 2 * T * q * e)
        else:
            kept = ("k and v copied per head (repeat_kv's view made contiguous)", 2 * T * q * e)
        items = [("rotary q", T * q * e, Kind.ATTN_QK), (*kept, Kind.ATTN_COPY)]
        if not run.grad_ckpt:
            what, v_bytes, _ = Attention.v_kept(ctx)
            # a head-major rotary k is its own contiguous copy: the kernel keeps it too
            k_bytes = 0 if rotary_head_major(arch) and kept[1] == 2 * T * kv * e else T * kv * e
            cache = "the cache's keys and values (DynamicCache)"
            if v_bytes != T * kv * e or not k_bytes:
                cache = f"the cache's keys and values (DynamicCache; {what}{', k shared' if not k_bytes else ''})"
            items.append((cache, k_bytes + v_bytes, Kind.ATTN_QK))
        if masked:
            rows, length = (1, T) if packed_rows(run) else (b, s)
            mask = aligned_mask(rows, length, e, run.device)
            items.append(("additive mask (last dim padded to 8)", mask, Kind.ATTN_MASK))
        return [Saved(what, size, kind, Side.ATTENTION) for what, size, kind in items]

    @staticmethod
    def float_causal_mask_saved(ctx: LayerContext) -> list[Saved]:
        """transformers 4.38-4.39's explicit float causal mask (versions.sdpa_float_causal_mask),
        which the memory-efficient kernel (flash takes no mask) keeps per layer: in 4.38 a
        new (b, 1, s, s) tensor indexed out of the model's mask; in 4.39 a view of the
        model's (b, 1, s, s) mask, which costs the layer nothing unless autocast casts it to
        the compute dtype or the kernel pads its last dimension to a multiple of 8 (both
        new tensors; attention.cpp preprocess_mask, see masked_sdpa_saved). A padded batch's
        mask is already counted there (padding_mask)."""
        arch, run = ctx.arch, ctx.run
        if not sdpa_float_causal_mask(arch, run) or layer_mask(ctx):
            return []
        b, s, e = run.batch_size, ctx.tokens // run.batch_size, ctx.e
        copied = within(run.transformers_version, SDPA_MASK_INDEXED_PER_LAYER)
        if not (copied or ctx.residual != e or (s % 8 and run.device == "cuda")):
            return []
        return [
            Saved(
                "float causal mask (s², padded to 8)",
                aligned_mask(b, s, e, run.device),
                Kind.ATTN_MASK,
                Side.ATTENTION,
            )
        ]

    @staticmethod
    def prefix_saved(ctx: LayerContext) -> list[Saved]:
        """sdpa or FlashAttention-2 with prefix tuning: every layer's keys and values are its
        prefix concatenated with its own (new tensors, held by the cache and kept by the
        kernel). The offset causal pattern needs an explicit mask, which sdpa converts to
        the compute dtype per call and keeps; with a mask transformers repeats GQA keys and
        values per head. FlashAttention-2 takes neither."""
        arch, run = ctx.arch, ctx.run
        T, e, P = ctx.tokens, ctx.e, run.prefix_len
        b, s = run.batch_size, ctx.tokens // run.batch_size
        nh, q, kv = arch.num_heads, arch.q_size, arch.kv_size
        flash = run.attn == "flash"
        # (one KV head repeats as a stride-0 view, no copy)
        width = kv if flash or arch.kv_heads in (1, arch.num_heads) else q
        items: list[tuple[str, int, Kind]] = []
        if qkv_views_kept(arch):  # q is a view of c_attn's whole output
            items.append(("c_attn output (q view)", T * (q + 2 * kv) * e, Kind.ATTN_QKV))
        else:
            items.append(("rotary q", T * q * e, Kind.ATTN_QK))
        items.append(
            ("keys and values with the prefix", 2 * (T + b * P) * width * e, Kind.ATTN_COPY)
        )
        if not flash:
            items.append(("attention mask (s × (s + prefix))", b * s * (s + P) * e, Kind.ATTN_MASK))
        size = T * q * e + b * nh * s * FP32
        items.append(("attention output + logsumexp", size, Kind.ATTN_OUTPUT))
        return [Saved(what, size, kind, Side.ATTENTION) for what, size, kind in items]

    @staticmethod
    def eager_workspace(arch: Architecture, run: RunConfig, keys: int | None = None) -> int:
        """Eager attention's fp32 scores and their softmax (b·heads·s·keys each): the
        backward's score gradients, and a forward's largest moment in a block that keeps
        nothing. 0 for the fused kernels. ``keys`` defaults to s + prefix (the offload
        moment passes s: as measured, without a prefix)."""
        if not runs_eager(arch, run):
            return 0
        s = run.positions
        keys = s + run.prefix_len if keys is None else keys
        return 2 * run.batch_size * arch.num_heads * s * keys * Attention.score_bytes(arch, run)

    @staticmethod
    def eager_forward_scores(arch: Architecture, run: RunConfig, e: int) -> int:
        """Eager attention's largest moment in a forward that keeps nothing (a frozen or
        checkpointed block): two score-sized tensors at once. GPT-2's eager path never
        upcasts (transformers 5.25 models/gpt2/modeling_gpt2.py l.55-73: the scores'
        matmul times the scale, the mask added, softmax in that dtype), so without
        autocast the two are in the compute dtype (measured: 1 × 512 tokens, bf16,
        checkpointed, 4,194,304 B below two fp32 ones). Elsewhere, 16-bit scores without
        autocast: softmax(scores, dtype=torch.float32) converts them first
        (dtypes.eager_score_bytes: the 16-bit scores, their fp32 copy and the fp32
        softmax, e + 8 B per score on the CPU and for bf16 on CUDA; measured: the tiny
        Llama-3.2-Vision's checkpointed text block, LoRA bf16 eager, -7.8 % without the
        16-bit scores), beside GQA's repeat_kv copies of k and v (transformers 5.25
        models/llama/modeling_llama.py eager_attention_forward: expand then reshape) and,
        where larger, the output's contiguous copy beside the output and the probabilities;
        under autocast (the fp32 mask promotes the scores; not measured) and with attention
        sinks (gpt-oss's dtype): :meth:`eager_workspace`'s pair."""
        if (
            arch.traits.softmax_in_compute_dtype
            and not arch.traits.attention_sinks
            and not resolve_dtypes(run).autocast
            and runs_eager(arch, run)
        ):
            s = run.positions
            return 2 * run.batch_size * arch.num_heads * s * (s + run.prefix_len) * e
        dt = resolve_dtypes(run)
        upcast = attention_path(arch, run) == "eager-fp32"  # (fp32 scores whatever e is)
        if runs_eager(arch, run) and not (arch.traits.attention_sinks or dt.autocast or upcast):
            s = run.positions
            fp16_cuda = dt.compute == "fp16" and run.device != "cpu"
            # ``softmax(...).to(query.dtype)``: at the cast the scores, the fp32 softmax
            # and its 16-bit copy (fp16 on CUDA's largest moment)
            cast = 2 * e + FP32 if e != FP32 else 0
            per_score = max(eager_score_bytes(e, fp16_cuda), cast)
            # repeat_kv's copies of k and v, one per query head, referenced by the
            # function's locals through the softmax (one kv head repeats as a view)
            T = run.batch_size * s
            repeated = 2 * T * arch.q_size * e if 1 < arch.kv_heads < arch.num_heads else 0
            scores = run.batch_size * arch.num_heads * s * (s + run.prefix_len)
            # the output's ``transpose(1, 2).contiguous()``: the probabilities, the output
            # and its copy (larger only while s is short beside head_dim)
            output = scores * e + 2 * T * arch.q_size * e
            return max(scores * per_score, output) + repeated
        return Attention.eager_workspace(arch, run)

    @staticmethod
    def layer_type_masks(arch: Architecture, run: RunConfig, e: int) -> int:
        """gpt-oss's eager path: GptOssModel.forward builds a float (b, 1, s, s) mask per
        layer type (full, and sliding where a window is set) and passes each block its
        own; no op saves them (scores + mask), but they live through the blocks' forward,
        and checkpointing keeps them as block inputs until the backward ends. Gemma 3 with
        images (image_block_mask): the two boolean (b, 1, s, s) masks, global and sliding,
        that create_masks_for_vision_model builds whichever layer types the stack has
        (transformers 5.24 modeling_gemma3.py l.704, l.729-739), one byte per element."""
        if sdpa_float_causal_mask(arch, run):
            return model_causal_mask(arch, run)
        if alibi_model_mask(arch, run):  # (unless sdpa's kernels keep it: alibi_mask_saved)
            held = Attention.held_layer_masks(arch, run) + Attention.alibi_mask_saved(arch, run)
            return Attention.alibi_mask_bytes(arch, run) - held
        if image_block_mask(arch, run):  # (those checkpointing keeps: held_layer_masks)
            masks = 2 * run.batch_size * run.positions**2
            return masks - Attention.held_layer_masks(arch, run)
        if sliding_window_mask(arch, run):  # the sliding layers' one boolean mask
            return run.batch_size * run.positions**2 - Attention.held_layer_masks(arch, run)
        if not arch.traits.attention_sinks:
            return 0
        s = run.positions
        return (2 if arch.sliding_window else 1) * run.batch_size * s * s * e

    @staticmethod
    def held_layer_masks(arch: Architecture, run: RunConfig) -> int:
        """Checkpointed, each layer's recompute needs the boolean mask of its layer type,
        so the checkpoints hold those masks (b·s² bytes each) from the forward until the
        backward has passed the layers; saved by no node. Gemma 3 with images: one per
        layer type the stack has (measured on the tiny Gemma 3, two global layers: one
        mask, 12,800 B, beside the peak); a sequence that reaches the window
        (sliding_window_mask): the sliding layers' one. A model that always builds its
        causal mask (materialized_mask: rotary Falcon) holds it too: without pad tokens
        sdpa_mask's causal function reads no batch index, so its one (1, 1, s, s) tensor
        is expanded to the batch as a view (transformers 5.25 masking_utils.py
        l.535-540), s² bytes (traced: Falcon full bf16 with checkpointing at 4 × 256
        tokens, 65,536 B live through the backward)."""
        if not run.grad_ckpt:
            return 0
        if alibi_model_mask(arch, run):  # the model's one ALiBi mask
            return Attention.alibi_mask_bytes(arch, run)
        if image_block_mask(arch, run):
            types = (1 if arch.full_layers else 0) + (1 if arch.sliding_layers else 0)
            return types * run.batch_size * run.positions**2
        if materialized_mask(arch, run):
            return (run.batch_size if pads_batches(run) else 1) * run.positions**2
        return run.batch_size * run.positions**2 if sliding_window_mask(arch, run) else 0

    @staticmethod
    def alibi_mask_bytes(arch: Architecture, run: RunConfig) -> int:
        """The model's ALiBi mask (alibi_model_mask): b·heads·s² in the embeddings' dtype
        (the residual's: fp32 under autocast over fp32 weights)."""
        if not alibi_model_mask(arch, run):
            return 0
        er = resolve_dtypes(run).first_input_bytes
        return run.batch_size * arch.num_heads * run.positions**2 * er

    @staticmethod
    def alibi_mask_saved(arch: Architecture, run: RunConfig) -> int:
        """The model's ALiBi mask as the layers' sdpa kernels keep it, one storage for
        all of them: when no layer copies it (alibi_mask_copied) and the blocks are not
        checkpointed (then the checkpoints hold it: held_layer_masks). Eager keeps none."""
        if run.grad_ckpt or not alibi_mask(arch, run) or alibi_mask_copied(arch, run):
            return 0
        return Attention.alibi_mask_bytes(arch, run)

    @staticmethod
    def score_bytes(arch: Architecture, run: RunConfig) -> int:
        """The element size of the eager scores' gradients: fp32, or with attention sinks
        the sink parameter's dtype, to which torch.cat promotes the scores (gpt-oss: bf16
        in a bf16 model; derived, not the peak of any measured case)."""
        return resolve_dtypes(run).residual_bytes if arch.traits.attention_sinks else FP32

    @staticmethod
    def recomputed_softmax_backward(arch: Architecture, run: RunConfig, e: int) -> int:
        """Eager attention's softmax backward in a recomputed block: the probabilities'
        gradient and its fp32 result (e + 4 bytes per score; fp32 scores: 8; measured)."""
        s = run.positions
        if arch.traits.attention_sinks:
            per_score = 2 * Attention.score_bytes(arch, run)
        elif attention_path(arch, run) == "eager-fp32" or e == FP32:
            per_score = 2 * FP32
        elif arch.traits.softmax_in_compute_dtype:
            per_score = 2 * e  # GPT-2 takes its softmax in the compute dtype
        else:
            per_score = e + FP32
        return run.batch_size * arch.num_heads * s * (s + run.prefix_len) * per_score

    @staticmethod
    def kernel_gradients(arch: Architecture, run: RunConfig, e: int, T: int) -> int:
        """The q, k and v gradients of one fused kernel's backward as it returns them:
        q's, and k's and v's at every query head where the kernel was given them so (0
        for eager attention, whose score gradients are eager_workspace's, and for latent
        attention, not derived).

        transformers repeats grouped keys and values to every query head before the call
        where sdpa takes a mask (explicit_mask, sliding_window_mask, a prefix's):
        use_gqa_in_sdpa is then False (transformers 5.25 integrations/sdpa_attention.py
        l.42-52) and repeat_kv runs (l.127-128); so does transformers < 4.54
        (versions.sdpa_repeats_kv), LitGPT's and torchtune's expand (Profile.expands_kv)
        and ColossalAI's shardformer attention (Architecture.kv_repeated). The kernel's
        backward writes k's and v's gradients at the shape it was given, one kv head's
        expand included (a stride-0 view in forward, a gradient at every head in
        backward), and the expand's backward sums them after it: measured on the CPU,
        torch 2.13 _scaled_dot_product_flash_attention_for_cpu_backward, the tiny
        multi-query GPTBigCode and a grouped Llama with a padded batch
        (tests/test_padding.py). CUDA's memory-efficient kernel, the one that takes a
        mask, requires as many key heads as query heads (aten/src/ATen/native/
        transformers/cuda/attention_backward.cu _efficient_attention_backward:
        ``query.size(2) == key.size(2)``): the same gradients. Without a mask sdpa gets
        ``enable_gqa``, and the CPU's kernel writes them at the kv heads (measured);
        CUDA's flash backward writes them per query head first and sums them into
        kv-sized ones (aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp
        mha_bwd: dk_expanded, dv_expanded, ``at::sum_out``; flash-attn's own mha_bwd is
        the same code), so on CUDA both are alive at once. (That kernel's fp32 dq_accum
        and softmax_d, b·s·heads·head_dim and b·heads·s with s rounded up to 128, are not
        counted.)"""
        if runs_eager(arch, run) or arch.latent_attention:
            return 0
        q, kv = arch.q_size, arch.kv_size
        keys = T + run.batch_size * run.prefix_len  # a prefix's keys and values too
        masked = explicit_mask(arch, run) or sliding_window_mask(arch, run) or run.prefix_len
        repeated = (run.attn == "sdpa" and masked) or sdpa_repeats_kv(arch, run)
        # transformers 4.48-4.55 copies one kv head's stride-0 repeat per head
        repeated |= sdpa_inputs_copied(arch, run) and Attention.copied_per_head(
            arch, run, bool(masked)
        )
        # ColossalAI's ColoAttention (the rank whose model forward builds its mask) is given
        # repeat_kv's output; one kv head's is a stride-0 view, kept as it is, but
        # flash-attn's backward writes dk and dv with ``torch.empty_like`` (dense, at
        # every head: Dao-AILab/flash-attention@0251105a flash_attn/flash_attn_interface.py
        # l.883, FlashAttnFunc.backward); ring_attn's first stage builds an uninverted mask
        # for RingAttention, which copies k and v itself (kv_repeated)
        coloattention = (
            arch.coloattention_mask_positions > 0 and not arch.coloattention_mask_uninverted
        )
        if kv == q or repeated or profile_of(run).expands_kv or arch.kv_repeated or coloattention:
            width = q
        elif run.device == "cuda":
            width = q + kv  # flash's gradients per query head, and their sums
        else:
            width = kv
        return T * q * e + 2 * keys * width * e

    @staticmethod
    def offloaded_backward(arch: Architecture, run: RunConfig, block: list[Saved]) -> int:
        """With activations offloaded: the kernel's saved inputs and output back on the
        GPU, with eager attention's score gradients."""
        back = sum(x.nbytes for x in block if x.kind in OFFLOAD_KINDS)
        return back + Attention.eager_workspace(arch, run, run.positions)


def aligned_mask(b: int, s: int, e: int, device: str = "cuda") -> int:
    """A (b, 1, s, s) additive mask as sdpa's kernel keeps it: CUDA's memory-efficient
    kernel pads its last dimension to a multiple of 8 (aten/src/ATen/native/transformers/
    attention.cpp scaled_dot_product_attention: convert_boolean_attn_mask, preprocess_mask
    with mem_eff_alignment = 8; read in the code index, commit not pinned); the CPU's keeps
    it as it is."""
    keys = -(-s // 8) * 8 if device == "cuda" else s
    return b * s * keys * e


def model_causal_mask(arch: Architecture, run: RunConfig) -> int:
    """transformers 4.38-4.39's model-level float causal mask, in the input embeddings'
    dtype, alive through the blocks' forward (versions.sdpa_float_causal_mask): 4.38's is
    the whole (max_pos, max_pos) buffer repeated per sequence (the buffer doubles when a
    sequence is longer); 4.39's is (b, 1, s, s), cloned because the collator passes an
    attention mask."""
    b, s = run.batch_size, run.positions
    er = resolve_dtypes(run).first_input_bytes  # (inputs_embeds.dtype)
    if within(run.transformers_version, SDPA_MASK_INDEXED_PER_LAYER):
        m = arch.max_position_embeddings or s
        side = m if s <= m else 2 * m
        return b * side * side * er
    return b * s * s * er


# what offloaded attention brings back for its backward: the kernel's q, k, v, mask,
# probabilities and output. (A fused projection's whole output, Falcon's fp32 copies,
# the prefix-concatenated keys and Gemma-2's soft-capping tanh are left out, as the
# label rule left them: adding them changes none of tests/accuracy's offload cases.)
OFFLOAD_KINDS = frozenset(
    {Kind.ATTN_QK, Kind.ATTN_V, Kind.ATTN_MASK, Kind.ATTN_PROBS, Kind.ATTN_OUTPUT}
)
