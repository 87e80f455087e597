"""Encoder-decoder training steps (T5, Flan-T5): what each stack keeps for backward.

transformers' T5ForConditionalGeneration runs the encoder over the input (``seq_len``
positions, bidirectional) and the decoder over the shifted labels (``target_len``),
whose cross-attention reads the encoder's output in every block. The pieces that
differ from a decoder-only block, as transformers 5 writes them (measured on the CPU
in tests/accuracy):

* T5's RMS norm squares an fp32 copy of its input but multiplies the input itself by
  the fp32 rstd: a 16-bit input is kept twice (fp32 copy and itself).
* The relative position bias is added to the scores: sdpa gets it as a float mask,
  made contiguous in every self-attention layer (the decoder's also causal) and kept
  by the kernel; the cross-attention's zero bias is one tensor for every layer. When
  the bias table trains (full finetuning) the mask needs a gradient: CUDA's
  memory-efficient kernel computes it, the CPU's flash kernel cannot and the CPU falls
  back to the math path (fp32 copies of q, k, v and the s² probabilities). So does
  the CPU with attention dropout.
* Dropout (``dropout_rate``, 0.1 in every T5 config) after the embeddings, each
  sub-layer, inside the feed-forward and on the attention probabilities: each keeps
  its mask when its input needs a gradient, a bool on CUDA, the input's dtype on the
  CPU (which multiplies by a scaled mask).
* The loss takes the log-softmax in the logits' dtype (no fp32 upcast outside
  autocast).

Each pair block (one encoder and one decoder block) becomes two entries of the step's
timeline: encoder blocks first, decoder blocks above them, so that backward frees
them in the real order (decoder from the top, then encoder).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

from ftmem.adapters.lora import LoRA
from ftmem.arch import Architecture, Linear, layout
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32, INDEX_BYTES
from ftmem.errors import InvalidInputError
from ftmem.methods import MethodPlan
from ftmem.ops.biased_attention import BiasedAttention
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.dropout import Dropout
from ftmem.ops.linear import LinearOp
from ftmem.ops.loss import Loss
from ftmem.ops.mlp import MLP, T5FeedForward
from ftmem.ops.norm import T5Norm
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

# What the encoder-decoder path models and measures; the rest refuses in one sentence.
SEQ2SEQ_METHODS = ("full", "freeze", "galore", "lora", "rslora", "dora", "qlora")


def check_supported(arch: Architecture, run: RunConfig) -> None:
    """Refuse what the encoder-decoder path does not model (and --target-len elsewhere)."""
    if not arch.encoder_decoder:
        if run.target_len is not None:
            raise InvalidInputError(
                f"--target-len is for encoder-decoder models (T5); {arch.name} is "
                "decoder-only: give the whole sequence as --seq-len."
            )
        return
    name = f"{arch.name} is an encoder-decoder"
    methods = ", ".join(SEQ2SEQ_METHODS)
    refusals = [
        (
            run.method not in SEQ2SEQ_METHODS,
            f"method {run.method} for it yet (methods for it: {methods})",
        ),
        (run.loss != "standard", f"the {run.loss} loss for it yet"),
        (run.activation_offload, "activation offloading for it yet"),
        (run.optimizer_in_backward, "the optimizer step in backward for it yet"),
        (run.lora_modules_to_save is not None, "--lora-modules-to-save for it yet"),
        (run.quant == "int4", "a GPTQ/AWQ int4 base for it yet"),
    ]
    for refused, what in refusals:
        if refused:
            raise InvalidInputError(f"{name}: ftmem does not model {what}.")
    if run.attn == "flash":
        raise InvalidInputError(
            f"{name}: transformers' T5 has no FlashAttention path; use --attn sdpa or eager."
        )
    if _pure_fp16(run):
        raise InvalidInputError(
            f"{name}: in pure fp16 transformers keeps T5's wo in fp32, which turns the "
            "residual stream fp32; ftmem does not model that, use bf16, fp16-mixed or fp32."
        )


def _pure_fp16(run: RunConfig) -> bool:
    from ftmem.precision import resolve_dtypes

    dt = resolve_dtypes(run)
    return dt.base == "fp16" and not dt.autocast


@dataclasses.dataclass(frozen=True, slots=True)
class _Stack:
    """One stack's shapes: its tokens, positions, and the keys its attention sees."""

    ctx: LayerContext
    s_q: int
    s_k: int

    @property
    def T(self) -> int:
        return self.ctx.tokens


def _sublayer_out(ctx: LayerContext, label: str, needs_grad: bool, side: Side) -> list[Saved]:
    """The dropout on a sub-layer's output (o or wo, in the compute dtype)."""
    if not needs_grad:
        return []
    return Dropout.saved(ctx, label, ctx.tokens * ctx.arch.hidden_size, ctx.e, side)


@lru_cache(maxsize=64)
def _sublayer(arch: Architecture, stack: str, index: int) -> list[Linear]:
    """The linears of one sub-layer (``encoder.layer.1.``: the encoder's feed-forward)."""
    prefix = f"{stack}.layer.{index}."
    return [lin for lin in layout(arch).linears if lin.module.startswith(prefix)]


def _self_attention_layer(
    st: _Stack, state: BlockState, linears: list[Linear], x: bool, mask_grad: bool
) -> tuple[list[Saved], bool]:
    """layer.0: norm, q/k/v, attention, o, dropout. Returns (saved, output needs grad)."""
    ctx, arch = st.ctx, st.ctx.arch
    w = state.weights_trainable
    qkv = [lin for lin in linears if lin.roles[0] in ("q", "k", "v")]
    o = [lin for lin in linears if lin.roles == ("o",)]
    out = T5Norm.saved(ctx, "self-attention norm", x, w, Side.ATTENTION)
    out += LinearOp.saved(ctx, qkv, state, x or w, "q/k/v", arch.hidden_size, ctx.residual)
    if x or w:
        needs = frozenset({"q", "k", "v"})
    else:
        needs = frozenset(lin.roles[0] for lin in qkv if lin.module in state.output_grad)
    out += BiasedAttention.saved(
        ctx, st.s_q, st.s_k, st.T, needs, mask_layer=True, mask_grad=mask_grad
    )
    projected, after = _attention_output(ctx, state, o, bool(needs), mask_grad, "o", "self")
    return out + projected, after


def _attention_output(
    ctx: LayerContext,
    state: BlockState,
    o: list[Linear],
    q_grad: bool,
    mask_grad: bool,
    label: str,
    kind: str,
) -> tuple[list[Saved], bool]:
    """o (whose input is the kernel's own output, unless the path copies it first) and
    the dropout on the sub-layer's output. Returns (saved, output needs a gradient)."""
    kept = BiasedAttention.o_input_is_kernel_output(ctx, mask_grad)
    saved = LinearOp.saved(ctx, o, state, q_grad, label, ctx.arch.q_size, ctx.e, kept)
    after = q_grad or any(lin.module in state.output_grad for lin in o)
    return saved + _sublayer_out(ctx, f"{kind}-attention output", after, Side.ATTENTION), after


def _ff_layer(st: _Stack, state: BlockState, linears: list[Linear], x_grad: bool) -> list[Saved]:
    """The feed-forward sub-layer: norm, feed-forward, dropout on its output."""
    out = T5Norm.saved(st.ctx, "feed-forward norm", x_grad, state.weights_trainable, Side.MLP)
    ff, ff_grad = T5FeedForward.saved(st.ctx, state, linears, x_grad)
    return out + ff + _sublayer_out(st.ctx, "feed-forward output", ff_grad, Side.MLP)


def encoder_block_parts(st: _Stack, state: BlockState, bias_grad: bool) -> list[list[Saved]]:
    """What one encoder block keeps, per sub-layer (self-attention, feed-forward)."""
    arch = st.ctx.arch
    attn, after = _self_attention_layer(
        st, state, _sublayer(arch, "encoder", 0), state.input_requires_grad, bias_grad
    )
    ff = _ff_layer(st, state, _sublayer(arch, "encoder", 1), after)
    return [_nonzero(attn), _nonzero(ff)]


def _cross_layer(
    st: _Stack, enc: _Stack, state: BlockState, linears: list[Linear], x: bool, enc_grad: bool
) -> tuple[list[Saved], list[Saved], bool]:
    """layer.1 of a decoder block: q from the decoder, k and v from the encoder's output.
    Returns (kept, kept of the encoder's output by every block alike, output needs grad)."""
    ctx, arch = st.ctx, st.ctx.arch
    w = state.weights_trainable
    q = [lin for lin in linears if lin.roles == ("q",)]
    kv = [lin for lin in linears if lin.roles[0] in ("k", "v")]
    o = [lin for lin in linears if lin.roles == ("o",)]
    out = T5Norm.saved(ctx, "cross-attention norm", x, w, Side.ATTENTION)
    out += _cross_named(
        LinearOp.saved(ctx, q, state, x or w, "cross q", arch.hidden_size, ctx.residual)
    )
    kv_saved = LinearOp.saved(
        enc.ctx, kv, state, enc_grad, "cross k/v", arch.hidden_size, ctx.residual
    )
    # one storage for every layer, unless autocast casts it per call
    casts = ctx.plan.dtypes.autocast and ctx.residual != ctx.e
    shared, own = [], kv_saved
    if not casts:
        shared = [s for s in kv_saved if s.kind is Kind.LINEAR_INPUT]
        own = [s for s in kv_saved if s.kind is not Kind.LINEAR_INPUT]
    out += _cross_named(own)
    needs = set()
    if x or w or any(lin.module in state.output_grad for lin in q):
        needs.add("q")
    if enc_grad or w or x:
        needs |= {"k", "v"}
    needs |= {lin.roles[0] for lin in kv if lin.module in state.output_grad}
    # the cross-attention's zero bias needs a gradient only under checkpointing
    zero_grad = ctx.run.grad_ckpt
    core = BiasedAttention.saved(
        ctx, st.s_q, enc.s_q, enc.T, frozenset(needs), mask_layer=False, mask_grad=zero_grad
    )
    out += [item.relabelled(_CROSS) for item in core]
    projected, after = _attention_output(ctx, state, o, bool(needs), zero_grad, "cross o", "cross")
    out += _cross_named(projected)
    return out, shared, after


_CROSS = "cross-attention "


def _cross_named(items: list[Saved]) -> list[Saved]:
    """The cross-attention's linears' own items (adapters, weight copies), named apart
    from the self-attention's (both have q, k, v and o)."""
    return [
        item.relabelled(_CROSS) if item.linears and item.kind is not Kind.LINEAR_INPUT else item
        for item in items
    ]


def decoder_block_parts(
    st: _Stack, enc: _Stack, state: BlockState, bias_grad: bool, enc_grad: bool
) -> tuple[list[list[Saved]], list[Saved]]:
    """What one decoder block keeps, per sub-layer (self-attention, cross-attention,
    feed-forward), and what it keeps of the encoder's output, which every decoder block
    shares: one storage, counted once by the caller."""
    arch = st.ctx.arch
    attn, after_self = _self_attention_layer(
        st, state, _sublayer(arch, "decoder", 0), state.input_requires_grad, bias_grad
    )
    if bias_grad and st.ctx.run.attn != "eager":
        # torch.where(causal, bias, min) keeps its bool condition per layer
        attn.append(
            Saved("causal condition (bool)", st.s_q * st.s_q, Kind.ATTN_MASK, Side.ATTENTION)
        )
    cross, shared, after_cross = _cross_layer(
        st, enc, state, _sublayer(arch, "decoder", 1), after_self, enc_grad
    )
    ff = _ff_layer(st, state, _sublayer(arch, "decoder", 2), after_cross)
    return [_nonzero(attn), _nonzero(cross), _nonzero(ff)], _nonzero(shared)


def _nonzero(items: list[Saved]) -> list[Saved]:
    return [s for s in items if s.nbytes]


def stack(arch: Architecture, run: RunConfig, plan: MethodPlan, decoder: bool) -> _Stack:
    s = run.decoder_len if decoder else run.seq_len
    return _Stack(LayerContext(arch, run, plan, run.batch_size * s), s, s)


def _trains_in(st: BlockState, stack: str) -> bool:
    """Does the block hold a trainable tensor in this stack's half?"""
    return (
        st.weights_trainable
        or st.norms_trained
        or any(m.startswith(f"{stack}.") for m in st.output_grad)
    )


def stack_states(
    states: list[BlockState],
) -> tuple[list[BlockState], list[BlockState], bool]:
    """(the encoder blocks' states, the decoder blocks', does the encoder's output need a
    gradient). A block's input needs one once anything below it in its stack trains;
    above the decoder's first block, also once the encoder's output needs one (every
    cross-attention reads it). Consecutive blocks keep sharing one state object."""
    first = states[0].input_requires_grad  # the embeddings' output needs a gradient
    enc_grad = first or any(_trains_in(st, "encoder") for st in states)
    out: list[list[BlockState]] = []
    for stack, carried in (("encoder", False), ("decoder", enc_grad)):
        below, made, blocks = first, {}, []
        for i, st in enumerate(states):
            grad = below or (carried and i > 0)
            if st.input_requires_grad != grad:
                key = (id(st), grad)
                if key not in made:
                    made[key] = dataclasses.replace(st, input_requires_grad=grad)
                st = made[key]
            blocks.append(st)
            below = below or _trains_in(st, stack)
        out.append(blocks)
    return out[0], out[1], enc_grad


def _checkpoint_inputs(enc: _Stack, dec: _Stack, kv_kept: bool) -> list[Saved]:
    """What checkpointed blocks keep as inputs besides their hidden states: eager
    attention's causal mask and the encoder's output (every decoder block); what the
    first block of each stack hands the blocks above it: the position biases (in the
    parameters' dtype) and the cross-attention's zero bias (which checkpointing makes
    require a gradient)."""
    arch, run, r = enc.ctx.arch, enc.ctx.run, enc.ctx.residual
    nh = arch.num_heads
    held = []
    if run.attn == "eager":  # every decoder block gets the float causal mask (b, 1, t, t)
        held.append(Saved("causal mask (kept by checkpointing)", dec.T * dec.s_q * r))
    if not kv_kept:  # every decoder block's input
        held.append(Saved("encoder output (kept by checkpointing)", enc.T * arch.hidden_size * r))
    if arch.num_layers > 1:
        held += [
            Saved("position biases (kept by checkpointing)", nh * (enc.s_q**2 + dec.s_q**2) * r),
            Saved(
                "cross-attention zero bias (kept by checkpointing)",
                nh * dec.s_q * enc.s_q * BiasedAttention.bias_bytes(enc.ctx, False),
            ),
        ]
    return held


def outer_saved(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    inputs_grad: bool,
    enc_grad: bool,
    bias_grad: bool,
    shared_kv: list[Saved],
) -> tuple[list[Saved], list[Saved]]:
    """(below the blocks, above them): the embeddings' side, the encoder's final norm and
    output, what every decoder block shares; the decoder's final norm, head and loss."""
    enc, dec = stack(arch, run, plan, False), stack(arch, run, plan, True)
    train = plan.outer_trainable
    h, r, e = arch.hidden_size, enc.ctx.residual, enc.ctx.e
    below: list[Saved] = []
    if train:
        below.append(Saved("token ids (input and labels)", (enc.T + dec.T) * INDEX_BYTES))
    if bias_grad and not run.grad_ckpt:  # (checkpointed: inside the first blocks)
        # the relative position buckets (s × s per stack) index the bias tables
        below.append(Saved("position buckets", (enc.s_q**2 + dec.s_q**2) * INDEX_BYTES))
    if inputs_grad:
        below += Dropout.saved(enc.ctx, "embeddings", (enc.T + dec.T) * h, r, Side.OUTER)
    below += T5Norm.saved(enc.ctx, "encoder final norm", enc_grad, train, Side.OUTER)
    if enc_grad:
        below += Dropout.saved(enc.ctx, "encoder output", enc.T * h, r, Side.OUTER)
    below += shared_kv
    blocks_grad = inputs_grad or plan.trainable_blocks > 0
    if run.grad_ckpt and blocks_grad:
        below += _checkpoint_inputs(enc, dec, bool(shared_kv))
    cross_fused = (
        blocks_grad
        and run.attn != "eager"
        and BiasedAttention.bias_bytes(enc.ctx, False) == e
        and not BiasedAttention.math_path(arch, run, run.grad_ckpt)
    )
    if cross_fused:
        # the cross-attention's zero bias, one tensor kept by every decoder layer's kernel
        below.append(Saved("cross-attention zero bias", arch.num_heads * dec.s_q * enc.s_q * e))
    above = T5Norm.saved(dec.ctx, "decoder final norm", blocks_grad, train, Side.OUTER)
    if blocks_grad:
        above += Dropout.saved(dec.ctx, "decoder output", dec.T * h, r, Side.OUTER)
    log_softmax = FP32 if plan.dtypes.autocast else e
    above += Loss.saved(arch, plan, dec.T, train, log_softmax)
    return below, above


def attention_moment(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    parts: list[list[Saved]],
    decoder: bool,
    bias_grad: bool,
) -> int:
    """The largest attention backward of a block, relative to all it keeps: the
    gradients of q, k, v and of the s² scores, while the sub-layers above are freed.

    The CPU's math path (fp32 copies) and eager attention take two s² gradients; the
    fused kernels none, but a mask that needs a gradient (the trained bias; under
    checkpointing the cross-attention's zeros) gets one, expanded over the batch. The
    cross-attention's keys and values have the encoder's length."""
    enc, dec = stack(arch, run, plan, False), stack(arch, run, plan, True)
    e = enc.ctx.e
    own = dec if decoder else enc
    attentions = [(own.s_q, bias_grad)] + ([(enc.s_q, run.grad_ckpt)] if decoder else [])
    worst = 0
    for i, (s_k, mask_grad) in enumerate(attentions):
        size = BiasedAttention.backward_workspace(arch, run, e, own.T, own.s_q, s_k, mask_grad)
        if decoder:  # the encoder output's gradient, summed over the decoder's blocks
            size += enc.T * arch.hidden_size * enc.ctx.residual
        freed = sum(x.nbytes for later in parts[i + 1 :] for x in later)
        worst = max(worst, size - freed)
    return worst


def block_workspace(arch: Architecture, run: RunConfig, plan: MethodPlan, T: int) -> int:
    """Transient gradients of a block's feed-forward or norm backward (T tokens): the
    MLP's as for decoder-only models; T5's norm holds two fp32 T·h gradients and one in
    the compute dtype (it keeps its input in that dtype, not upcast). An adapter whose
    input peft casts adds that cast's gradient."""
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    mlp = MLP.backward_workspace(arch, run, plan, e, T)
    norm = T5Norm.backward_workspace(arch, e, T)
    cast_grad = LoRA.cast_gradient(arch, plan, T)
    return (mlp if run.grad_ckpt else max(mlp, norm)) + cast_grad
