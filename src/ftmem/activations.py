"""The block walk: which ops a decoder block runs, in order, and what each needs a
gradient for; what the embedding side and the head side keep. Each op answers for its
own tensors (ftmem.ops, ftmem.adapters).

A tensor is saved only when something upstream or the op's own weight needs a
gradient: a frozen linear whose input needs no gradient saves nothing, and blocks below
the lowest trainable parameter keep nothing at all. Checked against autograd's
saved-tensor hooks in ``tests/accuracy``. Korthikanti et al. 2022 (arXiv:2205.05198) give
``s·b·h·(34 + 5·a·s/h)`` bytes per GPT-3 layer with dropout, for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ftmem.adapters import trainable_tokens
from ftmem.adapters.adalora import AdaLoRA
from ftmem.adapters.adaption_prompt import AdaptionPrompt
from ftmem.adapters.head_lora import HeadLoRA
from ftmem.adapters.llama_adapter import LlamaAdapter
from ftmem.adapters.prompt import PromptEncoder
from ftmem.arch import Architecture, Linear, layout
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.errors import InvalidInputError
from ftmem.methods import MethodPlan
from ftmem.ops.attention import Attention, layer_mask, runs_eager, sdpa_output_copied
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.dropout import Dropout
from ftmem.ops.embedding import Embedding
from ftmem.ops.gated_deltanet import GatedDeltaNet
from ftmem.ops.latent_attention import LatentAttention
from ftmem.ops.linear import LinearOp
from ftmem.ops.loss import Loss, PreferenceLoss, head_weight_casts
from ftmem.ops.mlp import MLP
from ftmem.ops.norm import Norm, QKNorm
from ftmem.ops.output_gate import OutputGate
from ftmem.ops.per_layer_input import PerLayerInput
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.profiles import compiled_chunked_loss, head_chunk_tokens
from ftmem.run import RunConfig
from ftmem.versions import sdpa_repeats_kv


@lru_cache(maxsize=512)  # the same for every estimate of the model
def _block_linears(
    arch: Architecture, i: int
) -> tuple[tuple[Linear, ...], tuple[Linear, ...], tuple[Linear, ...]]:
    """Block ``i``'s linears: those reading the attention input (q, k, v), o, the MLP's
    (DeepSeek's first blocks have a dense MLP, the others experts)."""
    linears = tuple(lin for lin in layout(arch).linears if lin.in_block(i))
    qkv = tuple(lin for lin in linears if set(lin.roles) & {"q", "k", "v"})
    o = tuple(lin for lin in linears if lin.roles == ("o",))
    mlp = tuple(lin for lin in linears if lin not in qkv and lin not in o)
    return qkv, o, mlp


def _block_index(arch: Architecture, dense: bool, linear: bool, block: int | None) -> int:
    """The block whose linears block_saved reads: the given one, else the lowest Gated
    DeltaNet block, the first (dense) one or the top one."""
    if block is not None:
        return block
    if linear:
        linear_blocks = arch.linear_attention_blocks
        assert linear_blocks is not None and linear_blocks.lowest is not None
        return linear_blocks.lowest
    return 0 if dense else arch.num_layers - 1


def block_saved(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    state: BlockState,
    tokens: int,
    dense: bool = False,
    sliding: bool = False,
    linear: bool = False,
    block: int | None = None,
) -> list[Saved]:
    """Tensors one decoder block saves for backward. ``dense``: one of the first blocks of
    a stack whose others have experts (``arch.dense_layers``); by default the top block.
    ``sliding``: a sliding-window layer (its sdpa mask: ops.attention.sliding_window_mask).
    ``linear``: a Gated DeltaNet block (Architecture.linear_attention_blocks). ``block``:
    the block's index, where blocks differ by it (Gemma 4's key/value sharing)."""
    i = _block_index(arch, dense, linear, block)
    reusing = arch.kv_shared_layers > 0 and arch.kv_reusing_blocks.holds(i)
    ctx = LayerContext(arch, run, plan, tokens, sliding, reusing)
    qkv, o, mlp = (list(group) for group in _block_linears(arch, i))
    # (a Gated DeltaNet block's projections: Architecture._two_kind_attention)
    mixer = [lin for lin in mlp if lin.roles == ("linear_attention",)]
    mlp = [lin for lin in mlp if lin not in mixer]
    x = state.input_requires_grad
    w = state.weights_trainable
    wn = attention_side_norms_train(arch, state)  # a norm's own parameters train
    # outputs that need a gradient for something other than an adapter
    biased = state.own_output_grad
    adapted_attn = any(lin.module in state.adapted for lin in qkv)
    bias_attn = any(lin.module in biased for lin in qkv) or state.qk_norms_trained
    h = arch.hidden_size
    out: list[Saved] = []
    parallel_norms = arch.parallel_attn_mlp and arch.norms_per_block == 2
    post_norms = arch.traits.norms_after_sublayers  # q/k/v read the block input itself
    if not post_norms:
        out += Norm.saved(ctx, "ln_attn" if parallel_norms else "input norm", x, wn)
    if parallel_norms:
        out += Norm.saved(ctx, "ln_mlp", x, wn, Side.MLP, input_kept=True)
    qkv_in_grad = x if post_norms else x or wn
    if mixer:
        out += _gated_deltanet(ctx, state, mixer, qkv_in_grad)
        after_mixer = x or w or wn or any(lin.module in state.output_grad for lin in mixer)
        out += _mlp_side(ctx, state, mlp, x, after_mixer)
        return [s for s in out if s.nbytes or s.graph_held]
    prefix = run.prefix_len > 0  # the layer's key/value prefix trains
    gate = state.gated_prompt  # LLaMA-Adapter's gate: the attention output needs a gradient
    # (LitGPT's gate sits before the output projection, peft's adds after it: o_proj's
    # input needs no gradient for peft's)
    litgpt_gate = gate and run.method != "adaption-prompt"
    q_grad = x or w or adapted_attn or bias_attn or wn or prefix or litgpt_gate
    # the attention output is the o_proj input: one storage, kept by the fused kernels
    # (unless transformers 4.48-4.55 copies the kernel's output first)
    # (Qwen3.5's output gate makes o_proj's input: ops.output_gate)
    kernel_keeps_o_input = (
        not runs_eager(arch, run)
        and not arch.traits.attention_output_gate
        and arch.traits.o_proj_reads_kernel_output
        and not sdpa_output_copied(arch, run, ctx.e)
    )
    if arch.latent_attention:
        out += LatentAttention.saved(ctx, state, tuple(qkv), qkv_in_grad, q_grad, wn)
        kernel_keeps_o_input = LatentAttention.o_reads_kernel_output(ctx)
    else:
        out += _attention(ctx, state, qkv, qkv_in_grad, adapted_attn, bias_attn, prefix)
    out += LinearOp.saved(ctx, o, state, q_grad, "o_proj", arch.v_size, ctx.e, kernel_keeps_o_input)
    after_attn = (
        x or w or adapted_attn or bias_attn or wn or prefix or gate
        or any(lin.module in state.adapted | biased for lin in o)
    )  # fmt: skip
    if after_attn:  # GPT-2's resid_pdrop on attention's output
        elements, oe = ctx.tokens * h, ctx.projection_out_bytes
        out += Dropout.saved(
            ctx, "attention output", elements, oe, Side.ATTENTION, arch.residual_dropout,
            Kind.RESIDUAL_DROPOUT,
        )  # fmt: skip
    out += _mlp_side(ctx, state, mlp, x, after_attn)
    out += _per_layer_side(ctx, state, mlp, after_attn)
    return [s for s in out if s.nbytes or s.graph_held]


def _per_layer_side(
    ctx: LayerContext, state: BlockState, mlp: list[Linear], after_attn: bool
) -> list[Saved]:
    """The block's per-layer input after its MLP (ops.per_layer_input); the residual
    stream there needs a gradient where the attention's output or the MLP side does."""
    if not ctx.arch.per_layer_input_size:
        return []
    h_grad = (
        after_attn or state.weights_trainable or state.norms_trained
        or any(lin.module in state.adapted | state.output_grad for lin in mlp)
    )  # fmt: skip
    return PerLayerInput.saved(ctx, state, h_grad, PerLayerInput.inputs_grad(ctx.run, ctx.plan))


def attention_side_norms_train(arch: Architecture, state: BlockState) -> bool:
    """Whether a norm at or below the attention trains (its weight or bias), so that the
    attention side needs a gradient: not when every trained norm comes after it."""
    norms = state.norms_trained and not state.after_attention_norms_only
    if arch.traits.norms_without_parameters:  # (OLMo 1's: nothing of theirs trains)
        return False
    return state.weights_trainable or state.norm_bias or norms


@dataclass(frozen=True, slots=True)
class StoredKV:
    """What Gemma 4's stored keys and values hold under checkpointing (stored_kv_held):
    ``held`` from the storing layers' forward to the end of the blocks' backward, and
    ``during``, per block (bottom to top), what their recomputed history adds to that
    block's backward (negative at a storing block, whose recompute keeps the same key and
    value for its kernel)."""

    held: int = 0
    during: tuple[int, ...] = ()


def stored_kv_held(
    arch: Architecture, run: RunConfig, plan: MethodPlan, states: list[BlockState], tokens: int
) -> StoredKV:
    """What the checkpoints hold of the keys and values Gemma 4's last layer of each
    layer type stores in the model's KVSharingDict (Family.stores_last_kv_per_layer_type;
    configuration_gemma4.py kv_sharing_modes l.243-246, modeling_gemma4.py l.1228-1229).

    The dict is a keyword argument of every decoder layer, which torch.utils.checkpoint's
    non-reentrant frame keeps with the layer's function until that layer's backward is
    done: from the storing layer's forward to the end of the blocks' backward it holds a
    key (the rotary's product) and a value (the v norm's output). The storing layer's
    recompute stores its own over them, and those carry their autograd history: the nodes
    that made them keep what they saved, and no backward runs through them (the recompute
    hands its saved tensors to the first graph's nodes). Once that layer's backward is
    done, they hold what the input norm, the k and v projections (their input, adapters,
    autocast's copies) and the k and v norms saved. At the storing layer's own backward the
    recompute's kernel keeps the same key and value, unless it keeps copies (keys and
    values repeated per head, an fp32 key cast under autocast). A storing layer with
    nothing to recompute (frozen, its input needing no gradient) holds its key and value.
    ``states``: every block's; the storing layers are the highest of each type
    (Architecture.type_blocks: the sliding ones the lowest, as step._sliding_blocks
    takes them, unless given by index) below the layers that reuse their keys and
    values (kv_shared_layers: measured on the tiny gemma4 with two reusing, checkpointed
    peaks at the same offsets as without sharing, families/gemma4.py)."""
    if not (run.grad_ckpt and arch.traits.stores_last_kv_per_layer_type):
        return StoredKV()
    # (with key/value sharing: the highest layer of each type below the reusing ones)
    below = arch.num_layers - arch.kv_shared_layers
    full = arch.type_blocks(full=True)
    stores = [
        j
        for kind in (full, arch.type_blocks(full=False))
        if (j := max((i for i in kind.indices if i < below), default=-1)) >= 0
    ]
    held, during = 0, [0] * arch.num_layers
    for j in stores:
        state = states[j]
        # (each type with its own attention shape: Architecture.of_layer_type)
        shape = arch.of_layer_type(full=full.holds(j))
        qkv = [lin for lin in _block_linears(shape, j)[0] if {"k", "v"} & set(lin.roles)]
        ctx = LayerContext(shape, run, plan, tokens, sliding=not full.holds(j))
        oe = ctx.projection_out_bytes
        kv_size = shape.kv_size
        key = tokens * kv_size * max(oe, plan.dtypes.first_input_bytes)  # (the tables')
        value = tokens * kv_size * oe
        held += key + value
        x, w = state.input_requires_grad, state.weights_trainable
        wn = attention_side_norms_train(arch, state)
        items = Norm.saved(ctx, "input norm", x, wn)
        items += LinearOp.saved(ctx, qkv, state, x or wn, "k/v", arch.hidden_size, ctx.residual)
        qk = QKNorm.saved(ctx, state, qkv, x or w or wn, wn or state.qk_norms_trained)
        items += [item for item in qk if item.linears]  # (the q norm's is no ancestor)
        history = sum(item.nbytes for item in items)
        if not history:  # (no recompute: the forward's key and value stay)
            continue
        for i in range(j):
            during[i] += history
        if not _kv_copied(ctx):
            during[j] -= value + (key if key == tokens * kv_size * ctx.e else 0)
    return StoredKV(held, tuple(during))


def _kv_copied(ctx: LayerContext) -> bool:
    """The kernel keeps copies of the layer's keys and values, not them: repeated per head
    for eager matmuls or a masked sdpa call (Attention.saved, masked_sdpa_saved)."""
    arch = ctx.arch
    if not 1 < arch.kv_heads < arch.num_heads:
        return runs_eager(arch, ctx.run) and arch.kv_heads < arch.num_heads
    return runs_eager(arch, ctx.run) or layer_mask(ctx) or sdpa_repeats_kv(arch, ctx.run)


# Qwen3.5's four input projections of a Gated DeltaNet layer
QWEN35_INPUT_PROJECTIONS = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")


def _gated_deltanet(
    ctx: LayerContext, state: BlockState, mixer: list[Linear], in_grad: bool
) -> list[Saved]:
    """A Gated DeltaNet layer from its input projections to out_proj (transformers 5.25
    modeling_qwen3_5.py Qwen3_5GatedDeltaNet.forward, l.603-738; ops.gated_deltanet). The
    op keeps its set where every input stream (in_proj_qkv, _z, _b, _a's outputs) needs a
    gradient, nothing where none does; where only some do (a method that trains only some
    of the four on the lowest trained block) it is refused, not measured."""
    arch, run = ctx.arch, ctx.run
    lin_attn = arch.linear_attention
    assert lin_attn is not None
    by_leaf = {lin.leaf: lin for lin in mixer}
    h, shape = arch.hidden_size, lin_attn.shape(arch.hidden_size)
    # (Qwen3-Next's two fused projections: arch._two_kind_attention)
    leaves = ("in_proj_qkvz", "in_proj_ba") if shape.fused else QWEN35_INPUT_PROJECTIONS
    ins = [by_leaf[leaf] for leaf in leaves]
    out_proj = by_leaf["out_proj"]
    out = LinearOp.saved(ctx, ins, state, in_grad, "linear-attention projections", h, ctx.residual)
    streams = [
        in_grad or state.weight_trains(lin) or lin.module in state.output_grad for lin in ins
    ]
    if any(streams) and not all(streams):
        raise InvalidInputError(
            f"{arch.name}: a Gated DeltaNet layer whose input projections need a gradient "
            "only in part (some of in_proj_qkv, in_proj_z, in_proj_b, in_proj_a trained or "
            "adapted, nothing below) is not modelled; adapt all four or none."
        )
    op_grad = all(streams)
    if op_grad:
        batch = run.batch_size
        seq, rest = divmod(ctx.tokens, batch)
        assert not rest
        autocast = ctx.plan.dtypes.autocast
        out += GatedDeltaNet.saved(shape, batch, seq, ctx.e, state.weights_trainable, autocast)
    out += LinearOp.saved(ctx, [out_proj], state, op_grad, "out_proj", shape.value_dim, ctx.e)
    return out


def _attention(
    ctx: LayerContext,
    state: BlockState,
    qkv: list[Linear],
    in_grad: bool,
    adapted_attn: bool,
    bias_attn: bool,
    prefix: bool,
) -> list[Saved]:
    """Multi-head attention from its q/k/v projections to the kernel's saved tensors."""
    x, w = state.input_requires_grad, state.weights_trainable
    wn = attention_side_norms_train(ctx.arch, state)
    biased = state.own_output_grad
    h = ctx.arch.hidden_size
    out = LinearOp.saved(ctx, qkv, state, in_grad, "q/k/v projections", h, ctx.residual)
    if x or w or wn:
        attn_grads = frozenset({"q", "k", "v"})
        own = attn_grads
    else:
        own = frozenset(r for lin in qkv if lin.module in state.adapted | biased for r in lin.roles)
        own |= frozenset({"q", "k"}) if state.qk_norms_trained else frozenset()
        attn_grads = own | (frozenset({"k", "v"}) if prefix else frozenset())
    out += QKNorm.saved(ctx, state, qkv, x or w or wn, wn or state.qk_norms_trained)
    out += Attention.clamp_saved(ctx, attn_grads)
    # (a prefix's keys need a gradient after the rotary: the layer's own q and k, which
    # the rotary turns, need none in a block whose input and projections need none)
    out += Attention.saved(ctx, attn_grads, rotary_grad=bool(own & {"q", "k"}))
    if ctx.arch.traits.attention_output_gate:  # (Qwen3.5's full-attention layers)
        # the gate is q_proj's output: it needs a gradient where q's does
        query = [lin for lin in qkv if "q" in lin.roles]
        gate_grad = x or w or wn or any(lin.module in state.output_grad for lin in query)
        arch = ctx.arch
        heads, width = arch.num_heads, arch.head_size
        out += OutputGate.saved(ctx.tokens, heads, width, ctx.e, gate_grad, bool(attn_grads))
    if state.gated_prompt and ctx.run.method == "adaption-prompt":
        out += AdaptionPrompt.saved(ctx, "q" in attn_grads)
    elif state.gated_prompt:
        out += LlamaAdapter.gate_saved(ctx, "q" in attn_grads)
    return out


def _mlp_side(
    ctx: LayerContext, state: BlockState, mlp: list[Linear], x: bool, after_attn: bool
) -> list[Saved]:
    """The block above its attention: the MLP's norms (Gemma-2's four), the MLP.
    ``after_attn``: the attention output needs a gradient."""
    arch = ctx.arch
    wn = state.weights_trainable or state.norm_bias or state.norms_trained
    wn = wn and not arch.traits.norms_without_parameters  # (OLMo 1's have none)
    out: list[Saved] = []
    post_norms = arch.traits.norms_after_sublayers  # (OLMo 2's acts on attention's output)
    if arch.norms_per_block == 4:
        out += Norm.saved(ctx, "post-attention norm", after_attn, wn, Side.MLP, of_sublayer=True)
        out += Norm.saved(ctx, "pre-feedforward norm", after_attn, wn, Side.MLP)
    elif not arch.parallel_attn_mlp:
        label = "post-attention norm"
        out += Norm.saved(ctx, label, after_attn, wn, Side.MLP, of_sublayer=post_norms)
    # with a shared input norm, its trainable parameters (BitFit: LayerNorm bias) need the
    # MLP branch's gradient too
    mlp_in_grad = (x or wn) if arch.parallel_attn_mlp else after_attn
    # Falcon-7B: attention and MLP read one norm output, saved once (q/k/v input)
    out += MLP.saved(ctx, state, mlp_in_grad or wn, mlp, arch.norms_per_block == 1)
    mlp_out_grad = (
        mlp_in_grad or state.weights_trainable
        or any(lin.module in state.output_grad for lin in mlp)
    )  # fmt: skip
    if mlp_out_grad:  # GPT-2's resid_pdrop on the MLP's output
        elements, oe = ctx.tokens * arch.hidden_size, ctx.projection_out_bytes
        rate = arch.residual_dropout
        out += Dropout.saved(ctx, "MLP output", elements, oe, Side.MLP, rate, Kind.RESIDUAL_DROPOUT)
    if arch.norms_per_block == 4 or arch.traits.norms_after_sublayers:
        label = "post-feedforward norm"
        out += Norm.saved(ctx, label, mlp_out_grad, wn, Side.MLP, of_sublayer=True)
    return out


def _shared_rotary_saved(
    arch: Architecture, run: RunConfig, plan: MethodPlan, T: int
) -> list[Saved]:
    """The model's shared rotary tables as the blocks' rotary multiplies keep them: where
    only the top blocks train (nothing below them needs a gradient), a stack with one pair
    per layer type keeps only the pairs of those blocks' types."""
    every = (
        plan.outer_trainable
        or plan.embed_trainable
        or run.n_virtual > 0
        or run.method == "trainable-tokens"
    )
    grad_blocks = None if every else plan.trainable_blocks
    return Embedding.rotary_saved(arch, run, T, plan.dtypes.first_input_bytes, grad_blocks)


def outer_saved(
    arch: Architecture, run: RunConfig, plan: MethodPlan, tokens: int
) -> tuple[list[Saved], list[Saved]]:
    """What the embedding side and the head side keep: (below the blocks, above them).

    The head side (final norm, LM head, loss) is freed at the start of backward; the
    embedding side (token ids, shared rotary tables) lives until the last block is done.
    """
    ctx = LayerContext(arch, run, plan, tokens)
    T = tokens
    train, tokens_trained = plan.outer_trainable, run.method == "trainable-tokens"  # (its rows)
    # does anything below the final norm train? (else the blocks keep nothing and the
    # final norm's input needs no gradient: only the LM head or the final norm trains)
    blocks_grad = (
        train
        or plan.trainable_blocks > 0
        or plan.embed_trainable
        or run.n_virtual > 0
        or tokens_trained
        or run.grad_ckpt  # transformers then makes the embedding output require grad
    )
    below = _embedding_side(ctx, plan, blocks_grad)
    above = Norm.saved(
        ctx,
        "final norm",
        blocks_grad,
        train or plan.norm_bias_trainable or plan.final_norm_trainable,
        Side.OUTER,
    )
    if run.loss == "fused":
        return below, above + Loss.fused_saved(arch, run, plan, ctx, train)
    if run.loss == "logprob-tiles":  # TRL's SFTTrainer since 1.15.0: no logits kept
        return below, above + Loss.logprob_tiles_saved(arch, run, ctx.residual)
    # LitGPT's chunked head skips the final logit soft-capping (litgpt@00af8b0d
    # litgpt/lora.py GPT.forward returns the pieces before it; calibration/notes/litgpt.md M6)
    softcaps = head_chunk_tokens(run) is None
    # torchtune's LinearCrossEntropyLoss keeps only the rows with a label
    masked_rows = Loss.rows(run) if run.loss == "linear-chunked" else None
    shifted = run.loss == "shifted"  # the model's own loss on a shifted 16-bit copy
    # transformers < 4.46: the cross-entropy over the shifted rows of fp32 logits
    rows = Loss.rows(run) if Loss.kind(run) in ("shifted", "upcast-shifted") else None
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    saved = Loss.saved(
        arch,
        plan,
        T,
        train,
        Loss.shifted_log_softmax_bytes(run, e) if shifted else FP32,
        compiled_chunks=compiled_chunked_loss(run),
        softcaps=softcaps,
        masked_rows=masked_rows,
        cross_entropy=run.objective == "sft",
        loss_rows=rows,
        labels=None if rows is None else Loss.shifted_labels(run),
        nll_cast=shifted and Loss.shifted_nll_cast(run, e),
        weight_casts=head_weight_casts(run, train or plan.head_trainable),
    )
    if plan.head_lora:  # (the standard loss only: methods._check_head_lora)
        saved += HeadLoRA.saved(ctx, train or plan.head_trainable)
    if plan.head_scaled:
        saved += LlamaAdapter.head_saved(ctx)
    if run.objective != "sft":  # the pairs' log-probabilities instead of the cross-entropy
        ids_kept = train or plan.embed_trainable  # the embedding's backward keeps them
        saved += PreferenceLoss.saved(arch, run, e, T, ids_kept)
    saved += AdaLoRA.orth_saved(plan, run)  # added to the loss after the model's forward
    return below, above + saved + trainable_tokens.head_saved(arch, run, plan, T)


def _embedding_side(ctx: LayerContext, plan: MethodPlan, blocks_grad: bool) -> list[Saved]:
    """What :func:`outer_saved` counts below the blocks: the embedding's and its
    dropout's tensors, the prompt encoders', the trainable tokens', and the shared
    rotary tables where a block needs them."""
    arch, run, T = ctx.arch, ctx.run, ctx.tokens
    train, tokens_trained = plan.outer_trainable, run.method == "trainable-tokens"
    below: list[Saved] = []
    if train or plan.embed_trainable or tokens_trained:
        below += Embedding.saved(arch, run, T, train)
    if train or plan.embed_trainable or run.n_virtual > 0 or run.grad_ckpt or tokens_trained:
        # the embeddings' dropout keeps its mask where its input needs a gradient
        elements = T * arch.hidden_size
        # (the embedding output's dtype, the residual's unless TRL cast the embedding)
        e_in = plan.dtypes.first_input_bytes
        below += Dropout.saved(
            ctx, "embeddings", elements, e_in, Side.OUTER, arch.embedding_dropout
        )
    if arch.per_layer_input_size:
        # (every block's multiply keeps the per-layer inputs where a block needs a
        # gradient; an fp32 first block's input norm keeps the embeddings themselves, a
        # checkpointed first block its input)
        embeds_kept = (ctx.residual == FP32 or run.grad_ckpt) and (train or plan.embed_trainable)
        embeds_grad = PerLayerInput.inputs_grad(run, plan)
        below += PerLayerInput.model_saved(ctx, train, embeds_grad, blocks_grad, embeds_kept)
    below += PromptEncoder.saved(arch, run, plan.dtypes)
    below += trainable_tokens.saved(arch, run, plan)
    # peft's adaption prompt in the top block alone: the rotary runs only on a q that needs
    # no gradient there (its input needs none), so no block keeps the tables (measured)
    lone_prompt = run.method == "adaption-prompt" and plan.trainable_blocks == 1
    if blocks_grad and not (lone_prompt and not run.grad_ckpt):
        below += _shared_rotary_saved(arch, run, plan, T)
    return below
