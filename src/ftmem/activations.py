"""Bytes that autograd keeps for backward, derived op by op.

Each block is described as the list of tensors its ops save (norm inputs and
rstd, linear inputs, rotary outputs, attention inputs/outputs, MLP intermediates),
as transformers 5 implements the family, in the dtypes of the run. A tensor is
saved only when something upstream or the op's own weight needs a gradient: a
frozen linear whose input needs no gradient saves nothing, and blocks below the
lowest trainable parameter keep nothing at all.

Checked against autograd's saved-tensor hooks in ``tests/accuracy``. Korthikanti et al.
2022 (arXiv:2205.05198) give ``s·b·h·(34 + 5·a·s/h)`` bytes per GPT-3 layer with
dropout; ``tests/test_activations.py`` reproduces its terms for reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from itertools import pairwise
from typing import NamedTuple

from ftmem.arch import ATTENTION_ROLES, Architecture, Linear, layout
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32, INDEX_BYTES
from ftmem.methods import MethodPlan, prefix_token_dim
from ftmem.run import RunConfig


class Side(Enum):
    """Where a saved tensor belongs: a block's attention side (its input norm, q/k/v, the
    kernel, o), its MLP side (the MLP's norms, linears, intermediates, experts), or
    outside the blocks."""

    ATTENTION = "attention"
    MLP = "mlp"
    OUTER = "outer"


class Kind(Enum):
    """The op, or its role in the op, that saved a tensor: what rules select items by
    (``Saved.what`` is for display only)."""

    NORM_INPUT = "norm input"  # a norm's input (and its statistics)
    NORM_OUTPUT = "norm output"  # the normalised tensor, for the norm weight's gradient
    LINEAR_INPUT = "linear input"  # linears' shared input (weight gradient or lora_A)
    WEIGHT_COPY = "weight copy"  # autocast's 16-bit copy of a base weight
    LORA = "lora"  # a LoRA branch: dropout, input casts, lora_A output, weight copies
    DORA = "dora"  # DoRA's rescale of the base and LoRA outputs
    IA3 = "ia3"
    BOTTLENECK = "bottleneck"
    ATTN_QK = "attention q/k"  # the query and key the kernel reads (rotary outputs)
    ATTN_V = "attention v"  # the value it reads
    ATTN_QKV = "attention q, k and v"  # one tensor holding all three (fused projections)
    ATTN_COPY = "attention copy"  # q/k/v copied for the kernel: fp32, prefix concatenated
    ATTN_MASK = "attention mask"
    ATTN_SOFTCAP = "attention soft-capping"
    ATTN_PROBS = "attention probabilities"  # the softmax output and its casts
    ATTN_OUTPUT = "attention output"
    MLP_HIDDEN = "MLP intermediates"  # gate/up outputs and the activation's
    MOE = "mixture of experts"  # router and experts
    DROPOUT = "dropout mask"
    OTHER = "other"  # outside the blocks: ids, rotary tables, prompt encoders, head, loss


class Saved(NamedTuple):
    """One tensor (or group of same-size tensors) saved for backward: ``what`` names it
    for display; ``kind``, ``side`` and ``linears`` (the block linears it belongs to)
    are what the rules that select items read. (A named tuple: a block makes dozens per
    estimate, and a frozen dataclass of five fields was a tenth of the estimate's time.)"""

    what: str
    nbytes: int
    kind: Kind = Kind.OTHER
    side: Side = Side.OUTER
    linears: tuple[Linear, ...] = ()

    def relabelled(self, prefix: str) -> Saved:
        """The same item, its display name prefixed."""
        return Saved(f"{prefix}{self.what}", self.nbytes, self.kind, self.side, self.linears)


_ATTENTION_ROLES = frozenset(ATTENTION_ROLES)


def _side_of(linears: list[Linear]) -> Side:
    """The attention side for q, k, v and o; the MLP side for the MLP's linears (the
    linears reading one tensor are all on one side)."""
    return Side.ATTENTION if linears[0].roles[0] in _ATTENTION_ROLES else Side.MLP


@dataclass(frozen=True, slots=True)
class BlockState:
    """What needs a gradient in one block."""

    input_requires_grad: bool
    weights_trainable: bool  # the block's own base weights train (full / freeze)
    adapted: frozenset[str]  # module paths of linears with adapters
    # BitFit: linears whose bias trains (their output needs a gradient; they keep nothing)
    biased: frozenset[str] = frozenset()
    norm_bias: bool = False  # LayerNorm biases train: each LayerNorm keeps its input
    # IA³: linears whose output (scaled) or input (scaled_in, feed-forward) is rescaled
    scaled: frozenset[str] = frozenset()
    scaled_in: frozenset[str] = frozenset()
    # partial: linears (module paths) whose own weight trains, and whether norms train
    trained: frozenset[str] = frozenset()
    norms_trained: bool = False
    # partial: the per-head query/key norms train (arch.qk_norm): q and k need a gradient
    qk_norms_trained: bool = False
    # bottleneck adapters: linears whose output goes through one
    bottleneck: frozenset[str] = frozenset()

    @property
    def output_grad(self) -> frozenset[str]:
        """Linears whose output needs a gradient for a parameter of their own."""
        return self.adapted | self.biased | self.scaled | self.trained | self.bottleneck

    def weight_trains(self, lin: Linear) -> bool:
        return self.weights_trainable or lin.module in self.trained


@dataclass(frozen=True, slots=True)
class LayerContext:
    """The shapes and dtypes one layer's saved tensors are derived from (T tokens)."""

    arch: Architecture
    run: RunConfig
    plan: MethodPlan
    tokens: int  # b·s (+ virtual tokens later)

    @property
    def e(self) -> int:
        return BYTES_PER_ELEMENT[self.plan.dtypes.compute]

    @property
    def quantized_outputs_in_input_dtype(self) -> bool:
        """bitsandbytes' 4-bit linears return their output in their input's dtype: under
        autocast with fp32 non-quantised weights the q/k/v and MLP outputs stay fp32."""
        return self.plan.dtypes.four_bit_outputs_fp32

    @property
    def residual(self) -> int:
        """Bytes per element of the residual stream (fp32 params under autocast)."""
        return self.plan.dtypes.residual_bytes


def _norm(
    ctx: LayerContext, label: str, x_grad: bool, w_grad: bool, side: Side = Side.ATTENTION
) -> list[Saved]:
    """RMSNorm (fp32 math) or LayerNorm."""
    T, h = ctx.tokens, ctx.arch.hidden_size
    out: list[Saved] = []
    if ctx.arch.norm == "layernorm":
        # native_layer_norm saves its input and per-token mean and rstd (input dtype)
        if x_grad or w_grad:
            size = T * h * ctx.residual + 2 * T * ctx.residual
            out.append(Saved(f"{label}: input, mean, rstd", size, Kind.NORM_INPUT, side))
        return out
    gemma = ctx.arch.traits.norm_scale_in_fp32
    if x_grad:
        # x.float() and rsqrt(mean(x²)+eps): the fp32 input and the fp32 rstd
        size = T * h * FP32 + T * FP32
        out.append(Saved(f"{label}: fp32 input + rstd", size, Kind.NORM_INPUT, side))
    if w_grad:
        # Llama: weight * normed.to(dtype) saves the cast; Gemma: normed * (1 + w) in fp32
        normed_bytes = FP32 if gemma else ctx.residual
        out.append(Saved(f"{label}: normalised", T * h * normed_bytes, Kind.NORM_OUTPUT, side))
    return out


def linear_inputs(
    ctx: LayerContext,
    linears: list[Linear],
    state: BlockState,
    in_grad: bool,
    label: str,
    in_features: int,
    in_bytes: int,
    input_kept_elsewhere: bool = False,
) -> list[Saved]:
    """Saved inputs (and autocast weight copies) of linears that read one tensor.

    ``in_bytes`` is the element size of the incoming tensor: the residual dtype for norm
    outputs (fp32 under autocast with fp32 weights), the compute dtype otherwise. When
    autocast must cast it, every linear call casts, and keeps, a copy of its own.
    ``input_kept_elsewhere``: another op keeps this very tensor (the attention kernel its
    output, o's input; the norm output q/k/v read too), so the linears' keeping it
    adds nothing.
    """
    if not linears:
        return []
    group, side = tuple(linears), _side_of(linears)
    input_bytes = _base_input_bytes(ctx, linears, state, in_grad, in_features, in_bytes)
    out: list[Saved] = []
    if input_bytes and not input_kept_elsewhere:
        out.append(Saved(f"{label}: input", input_bytes, Kind.LINEAR_INPUT, side, group))
    shared_input = False
    for lin in linears if state.adapted else ():
        if lin.module in state.adapted:
            items, reads_input = _lora_saved(ctx, lin, side, in_grad, in_features, in_bytes)
            out += items
            shared_input = shared_input or reads_input
    if shared_input and not input_bytes and not input_kept_elsewhere:
        size = ctx.tokens * in_features * in_bytes
        out.append(Saved(f"{label}: input (for lora_A)", size, Kind.LINEAR_INPUT, side, group))
    if state.scaled or state.scaled_in:
        out += _ia3_saved(ctx, linears, state, side)
    if state.bottleneck:
        out += _bottleneck_saved(ctx, linears, state, in_grad, side)
    if ctx.plan.dtypes.autocast and in_grad:
        out += _weight_copies(ctx, linears, side)
    return out


def _base_input_bytes(
    ctx: LayerContext,
    linears: list[Linear],
    state: BlockState,
    in_grad: bool,
    in_features: int,
    in_bytes: int,
) -> int:
    """What the base matmuls keep of their input to form their weight gradients (0 when
    none trains)."""
    dt = ctx.plan.dtypes
    e = ctx.e
    # bitsandbytes' int8 matmul keeps its input whenever that input needs a gradient
    # (measured on its CPU path, MatMul8bitFp)
    int8_keeps = dt.quantized == "int8" and in_grad
    if state.weights_trainable:
        training = linears
    else:
        training = [lin for lin in linears if lin.module in state.trained]
    if not (training or int8_keeps):
        return 0
    ac_casts = dt.autocast and in_bytes != e
    copies = len(training or linears) if ac_casts else 1
    return copies * ctx.tokens * in_features * (e if dt.autocast else in_bytes)


def _lora_saved(
    ctx: LayerContext, lin: Linear, side: Side, in_grad: bool, in_features: int, in_bytes: int
) -> tuple[list[Saved], bool]:
    """What one peft LoRA (or DoRA) adapter keeps, and whether its lora_A reads the
    linear's input itself (nothing cast or dropped in between)."""
    T, e = ctx.tokens, ctx.e
    dt = ctx.plan.dtypes
    ae = BYTES_PER_ELEMENT[dt.adapter]
    r = ctx.run.r
    own = (lin,)
    out: list[Saved] = []
    # without autocast peft casts the input to the adapter dtype: one copy per adapter
    peft_casts = not dt.autocast and ae != in_bytes
    reads_input = False
    if ctx.run.dropout > 0:
        # peft casts the input to the adapter dtype before the dropout. lora_A keeps
        # the dropped copy (autocast: its 16-bit cast of it); the mask is kept only
        # when the input needs a gradient. CUDA's fused dropout keeps a bool mask,
        # the CPU path a scaled mask in the adapter dtype (measured under autocast:
        # fp32, activations -3.8 % when taken as 16-bit)
        dropped = e if dt.autocast else ae
        size = T * in_features * dropped
        out.append(Saved(f"{lin.label} lora dropout output", size, Kind.LORA, side, own))
        if in_grad:
            mask = 1 if ctx.run.device == "cuda" else ae
            size = T * in_features * mask
            out.append(Saved(f"{lin.label} lora dropout mask", size, Kind.LORA, side, own))
    elif peft_casts:
        what = f"{lin.label} lora_A input cast to {dt.adapter}"
        out.append(Saved(what, T * in_features * ae, Kind.LORA, side, own))
    elif dt.autocast:
        # peft casts the input to the adapter dtype, autocast casts it back for the
        # matmul: each adapter keeps a 16-bit copy of its own, even of a 16-bit input
        what = f"{lin.label} lora_A input autocast to {dt.compute}"
        out.append(Saved(what, T * in_features * e, Kind.LORA, side, own))
    else:
        reads_input = True
    a_out = e if dt.autocast else ae
    out.append(Saved(f"{lin.label} lora_A output (r={r})", T * r * a_out, Kind.LORA, side, own))
    if ctx.run.method == "dora":
        out += _dora_saved(ctx, lin, side, T, peft_casts, in_grad)
    if dt.autocast:
        copies = r * lin.out_features + (r * in_features if in_grad else 0)
        what = f"{lin.label} lora 16-bit weight copies"
        out.append(Saved(what, 2 * copies, Kind.LORA, side, own))
    return out, reads_input


def _weight_copies(ctx: LayerContext, linears: list[Linear], side: Side) -> list[Saved]:
    """Autocast keeps a 16-bit copy of each weight a matmul whose input needs a gradient
    uses; bitsandbytes' quantised matmuls dequantise inside and keep none."""
    quantized = ctx.plan.dtypes.quantized is not None and ctx.run.method == "qlora"
    return [
        Saved(
            f"{lin.label} 16-bit weight copy",
            lin.in_features * lin.out_features * lin.copies * 2,
            Kind.WEIGHT_COPY,
            side,
            (lin,),
        )
        for lin in linears
        if not (quantized and lin.is_module and lin.quantizable)
    ]


def _ia3_saved(
    ctx: LayerContext, linears: list[Linear], state: BlockState, side: Side
) -> list[Saved]:
    """peft's IA³ (0.21): ``base(x) * l`` keeps the base output (compute dtype) for the
    vector's gradient; a feed-forward linear scales its input instead, cast to the
    vector's dtype first (``x.to(l.dtype) * l``), and keeps that cast. Each forward also
    keeps the vector times one (``scaling = 1; scaling *= l``)."""
    T, e = ctx.tokens, ctx.e
    ae = BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter]
    out: list[Saved] = []
    for lin in linears:
        if lin.module in state.scaled_in:
            size = T * lin.in_features * ae + lin.in_features * ae
            what = f"{lin.label} IA³: input cast to {ctx.plan.dtypes.adapter}"
            out.append(Saved(what, size, Kind.IA3, side, (lin,)))
        elif lin.module in state.scaled:
            size = T * lin.out_features * e + lin.out_features * ae
            out.append(Saved(f"{lin.label} IA³: base output", size, Kind.IA3, side, (lin,)))
    return out


def _bottleneck_saved(
    ctx: LayerContext, linears: list[Linear], state: BlockState, in_grad: bool, side: Side
) -> list[Saved]:
    """A bottleneck adapter on a linear's output y: ``y + up(act(down(y)))`` (ftmem's
    reference implementation in ``ftmem.measure.build``, as AdapterHub places them).

    ``down`` keeps its input: y cast to the adapter dtype (or, under autocast, to 16 bits);
    the activation keeps its input (SiLU, Houlsby) or output (ReLU, Pfeiffer); ``up`` keeps
    the activation's output. Under autocast both Linears keep 16-bit weight copies, the
    down one only when y needs a gradient (something below trains).
    """
    T, e = ctx.tokens, ctx.e
    dt = ctx.plan.dtypes
    width, placement = ctx.run.bottleneck
    ae = e if dt.autocast else BYTES_PER_ELEMENT[dt.adapter]
    out: list[Saved] = []
    for lin in linears:
        if lin.module not in state.bottleneck:
            continue
        h = lin.out_features
        acts = 2 if placement == "houlsby" else 1  # SiLU keeps its input, ReLU its output
        size = T * h * ae + acts * T * width * ae
        if dt.autocast:
            size += 2 * h * width * (2 if in_grad else 1)
        what = f"{lin.label} adapter: input, activation"
        out.append(Saved(what, size, Kind.BOTTLENECK, side, (lin,)))
    return out


def runs_eager(arch: Architecture, run: RunConfig) -> bool:
    """Eager attention: asked for, or the only path transformers 5 has for the family
    (Falcon computes its attention in fp32 matmuls; Gemma-2 has no sdpa path)."""
    return run.attn == "eager" or arch.traits.attention != "sdpa"


def _dora_saved(
    ctx: LayerContext, lin: Linear, side: Side, T: int, peft_casts: bool, in_grad: bool
) -> list[Saved]:
    """What peft's DoRA keeps per adapted linear (peft 0.21, measured).

    It rescales the base and the LoRA outputs by magnitude / ‖W + BA‖: both outputs
    are kept (a third output-sized cast when peft casts the input), with the fp32
    norm and the scale per output (and the scale − 1 when the input needs a gradient). With a bias under autocast the base output minus the fp32
    bias is kept in fp32. GPT-2's Conv1D path with fp32 weights also keeps a
    transposed copy of the weight.
    """
    e, out_f = ctx.e, lin.out_features
    dt = ctx.plan.dtypes
    ae = BYTES_PER_ELEMENT[dt.adapter]
    outputs = (3 if peft_casts else 2) * T * out_f * e
    weight_copy = 0
    if ctx.run.dropout > 0:
        # with dropout peft's DoRA computes the base output again from the dropped
        # input, in the adapter dtype (autocast: 16-bit): both outputs are in it, and
        # the matmul keeps the (dequantised) weight cast to it when the input needs a
        # gradient (measured: Llama DoRA bf16 and bf16-mixed, activations -10 % and
        # -2 % without)
        if dt.autocast:
            weight_copy = lin.in_features * out_f * e
            if ctx.arch.traits.conv1d:
                # GPT-2's Conv1D path also keeps a second 16-bit copy of the dropped
                # input for that matmul, in every block (measured, bf16-mixed: -6.8 %)
                outputs += T * lin.in_features * e
        else:
            outputs = 2 * T * out_f * ae
            if dt.quantized or BYTES_PER_ELEMENT[dt.base] != ae:
                weight_copy = lin.in_features * out_f * ae
        weight_copy *= in_grad
    # the norm (kept by magnitude / norm) and the scale (kept by scale · lora); the
    # scale − 1 too when the base output needs a gradient (its input does)
    scales = 3 if in_grad else 2
    sizes = [(f"{lin.label} DoRA base/LoRA outputs and rescale", outputs + scales * out_f * FP32)]
    if weight_copy:
        sizes.append((f"{lin.label} DoRA weight in the adapter dtype", weight_copy))
    if lin.bias and dt.autocast and not ctx.run.dropout:  # (dropout: no bias to remove)
        sizes.append((f"{lin.label} DoRA fp32 base output (bias removed)", T * out_f * (FP32 - e)))
    if ctx.arch.traits.conv1d and ctx.plan.dtypes.base == "fp32":
        copy_bytes = lin.in_features * out_f * FP32
        sizes.append((f"{lin.label} DoRA transposed Conv1D weight (fp32)", copy_bytes))
    return [Saved(what, size, Kind.DORA, side, (lin,)) for what, size in sizes]


def qk_norms_saved(
    ctx: LayerContext, state: BlockState, qkv: list[Linear], all_grad: bool, w_grad: bool
) -> list[Saved]:
    """The per-head query and key RMSNorms (``arch.qk_norm``), on T·heads rows of
    head_dim: each is the residual norm's ops (x.float(), pow, mean, rsqrt, mul) on the
    projection's output. Where that output needs a gradient the norm keeps its fp32 copy
    (the output itself when it is fp32 already) and the fp32 rstd per row; where the
    norm's weight trains, the normalised cast back to the projection's dtype.
    ``all_grad``: every projection's output needs a gradient (something below or a
    weight of the block trains), else only the adapted / trained ones do."""
    arch = ctx.arch
    if not arch.qk_norm:
        return []
    # the projections' output dtype (fp32 from 4-bit linears under autocast)
    oe = ctx.residual if ctx.quantized_outputs_in_input_dtype else ctx.e
    own = state.output_grad
    out: list[Saved] = []
    for role, heads in (("q", arch.num_heads), ("k", arch.kv_heads)):
        rows, width = ctx.tokens * heads, arch.head_size
        if all_grad or any(lin.module in own for lin in qkv if role in lin.roles):
            out.append(Saved(f"{role} norm: fp32 input + rstd", rows * (width + 1) * FP32))
        if w_grad:
            out.append(Saved(f"{role} norm: normalised", rows * width * oe))
    return out


def _attention(ctx: LayerContext, needs_grad: frozenset[str]) -> list[Saved]:
    """Attention core: rotary outputs, the kernel's saved inputs/outputs.

    ``needs_grad`` holds which of q, k, v need a gradient. The fused kernels save all
    their inputs as soon as one does; eager matmuls save an operand only when the
    other one needs a gradient (q for k's gradient, k for q's).
    """
    if not needs_grad:
        return []
    arch, run = ctx.arch, ctx.run
    T, e = ctx.tokens, ctx.e
    b, s = run.batch_size, ctx.tokens // run.batch_size
    nh, q, kv = arch.num_heads, arch.q_size, arch.kv_size
    out: list[Saved] = []

    def keep(what: str, size: int, kind: Kind) -> None:
        out.append(Saved(what, size, kind, Side.ATTENTION))

    eager = runs_eager(arch, run)
    if run.prefix_len and not eager:
        return _prefix_attention(ctx)
    if arch.traits.attention == "eager-fp32":
        # transformers 5 Falcon: q, k, v upcast to fp32 and k, v repeated per head (MQA/GQA)
        # for the score and PV matmuls; the fp32 probabilities are the only s² tensor
        keep("q, k, v in fp32 (repeated per head)", 3 * T * q * FP32, Kind.ATTN_COPY)
        keep("softmax output (fp32, s²)", b * nh * s * s * FP32, Kind.ATTN_PROBS)
        return out
    P = run.prefix_len
    if _qkv_views_kept(arch):
        # q, k, v are views of c_attn's output: its whole storage stays alive
        keep("c_attn output (q, k, v views)", T * (q + 2 * kv) * e, Kind.ATTN_QKV)
    elif eager:
        # repeat_kv copies k and v to every query head (GQA/MQA)
        kv_saved = q if kv != q else kv
        Tk = T + b * P  # keys and values include a prefix
        if "k" in needs_grad:
            keep("rotary q", T * q * e, Kind.ATTN_QK)
        if "q" in needs_grad:
            keep("rotary k (repeated per head)", Tk * kv_saved * e, Kind.ATTN_QK)
        keep("v (repeated per head)", Tk * kv_saved * e, Kind.ATTN_V)
    else:
        keep("rotary q and k", T * (q + kv) * e, Kind.ATTN_QK)
        if arch.traits.fused_qkv and not ctx.quantized_outputs_in_input_dtype:
            keep("qkv_proj output (v is a view)", T * (q + 2 * kv) * e, Kind.ATTN_QKV)
        else:
            keep("v", T * kv * e, Kind.ATTN_V)
    if not eager:
        keep("attention output + logsumexp", T * q * e + b * nh * s * FP32, Kind.ATTN_OUTPUT)
        return out
    scores = b * nh * s * (s + P)
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


def _qkv_views_kept(arch: Architecture) -> bool:
    """q, k and v are views of one fused projection's output that the kernel keeps,
    so the whole output stays alive (GPT-2); rotary would make new q and k tensors."""
    return arch.traits.fused_qkv and arch.position_embedding != "rotary"


def _prefix_attention(ctx: LayerContext) -> list[Saved]:
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
    if _qkv_views_kept(arch):  # q is a view of c_attn's whole output
        items.append(("c_attn output (q view)", T * (q + 2 * kv) * e, Kind.ATTN_QKV))
    else:
        items.append(("rotary q", T * q * e, Kind.ATTN_QK))
    items.append(("keys and values with the prefix", 2 * (T + b * P) * width * e, Kind.ATTN_COPY))
    if not flash:
        items.append(("attention mask (s × (s + prefix))", b * s * (s + P) * e, Kind.ATTN_MASK))
    size = T * q * e + b * nh * s * FP32
    items.append(("attention output + logsumexp", size, Kind.ATTN_OUTPUT))
    return [Saved(what, size, kind, Side.ATTENTION) for what, size, kind in items]


def _mlp(
    ctx: LayerContext, state: BlockState, x_grad: bool, linears: list[Linear], shared_input: bool
) -> list[Saved]:
    """The MLP's (or the experts') saved tensors. ``shared_input``: its input is the
    norm output q/k/v read too, already kept (Falcon-7B's one norm)."""
    arch = ctx.arch
    T, e, f, h = ctx.tokens, ctx.e, arch.intermediate_size, arch.hidden_size
    if arch.is_moe:
        return _moe(ctx, state, x_grad)
    ups = [lin for lin in linears if set(lin.roles) & {"gate", "up"}]
    downs = [lin for lin in linears if "down" in lin.roles]
    any_grad = (
        x_grad or state.weights_trainable or any(lin.module in state.output_grad for lin in ups)
    )
    out = linear_inputs(ctx, ups, state, x_grad, "MLP", h, ctx.residual, shared_input)
    if any_grad:
        if arch.mlp == "gated":
            oe = ctx.residual if ctx.quantized_outputs_in_input_dtype else e
            what, size = "gate, up and activation outputs", 3 * T * f * oe
        elif arch.traits.gelu_written_out and arch.activation == "gelu_tanh":
            # GPT-2's NewGELU is written out: x, 0.5x, tanh(...) and 1 + tanh(...), in
            # c_fc's output dtype (fp32 from a 4-bit c_fc under autocast)
            oe = ctx.residual if ctx.quantized_outputs_in_input_dtype else e
            what, size = "up output + tanh-GELU intermediates", 4 * T * f * oe
        else:
            what, size = "up output (activation input)", T * f * e
        out.append(Saved(what, size, Kind.MLP_HIDDEN, Side.MLP))
    out += linear_inputs(ctx, downs, state, any_grad, "down_proj", f, e)
    return out


def _moe(ctx: LayerContext, state: BlockState, x_grad: bool) -> list[Saved]:
    """transformers 5 Mixtral: router softmax/top-k, grouped matmuls over routed tokens.

    Autocast does not cover grouped matmuls: the experts compute in their parameters'
    dtype (fp32 under *-mixed), only the router linear runs in 16-bit.
    """
    arch = ctx.arch
    T, f, h = ctx.tokens, arch.intermediate_size, arch.hidden_size
    ee = ctx.residual  # expert compute dtype = parameter dtype
    k, E = arch.experts_per_token, arch.num_experts
    Tk = T * k
    experts_train = state.weights_trainable or any(
        m.startswith("mlp.experts") for m in state.trained
    )
    router_trains = state.weights_trainable or "mlp.gate" in state.trained
    routing_grad = x_grad or router_trains  # the routing weights need a gradient
    if not (routing_grad or experts_train):
        return []
    sizes = [("expert gate_up output and activation", Tk * 3 * f * ee)]
    if routing_grad:
        sizes += [
            ("router softmax (fp32) + top-k", T * E * FP32 + Tk * (INDEX_BYTES + FP32) + T * FP32),
            ("routed token indices", 3 * Tk * INDEX_BYTES + Tk * FP32),
            ("expert outputs (for routing-weight grad)", Tk * h * ee),
        ]
        if ctx.plan.dtypes.autocast:
            sizes.append(("router 16-bit weight copy", h * E * 2))
    else:
        # only the experts train: the token order and the (constant) routing weights
        sizes.append(("routed token indices and routing weights", Tk * (INDEX_BYTES + FP32)))
    if experts_train:
        # grouped matmuls keep their inputs only to form the expert weights' gradients
        sizes.append(("routed expert inputs and down input", Tk * (h + f) * ee))
    if router_trains:
        sizes.append(("router input", T * h * ctx.e))
    return [Saved(what, size, Kind.MOE, Side.MLP) for what, size in sizes]


@lru_cache(maxsize=512)  # the same for every estimate of the model
def _block_linears(
    arch: Architecture,
) -> tuple[tuple[Linear, ...], tuple[Linear, ...], tuple[Linear, ...]]:
    """A block's linears: those reading the attention input (q, k, v), o, the MLP's."""
    linears = layout(arch).linears
    qkv = tuple(lin for lin in linears if set(lin.roles) & {"q", "k", "v"})
    o = tuple(lin for lin in linears if lin.roles == ("o",))
    mlp = tuple(lin for lin in linears if lin not in qkv and lin not in o)
    return qkv, o, mlp


def block_saved(
    arch: Architecture, run: RunConfig, plan: MethodPlan, state: BlockState, tokens: int
) -> list[Saved]:
    """Tensors one decoder block saves for backward."""
    ctx = LayerContext(arch, run, plan, tokens)
    qkv, o, mlp = (list(group) for group in _block_linears(arch))
    x = state.input_requires_grad
    w = state.weights_trainable
    wn = w or state.norm_bias or state.norms_trained  # a norm's own parameters train
    # outputs that need a gradient for something other than an adapter
    biased = state.biased | state.scaled | state.trained | state.bottleneck
    adapted_attn = any(lin.module in state.adapted for lin in qkv)
    bias_attn = any(lin.module in biased for lin in qkv) or state.qk_norms_trained
    h = arch.hidden_size
    out: list[Saved] = []
    parallel_norms = arch.parallel_attn_mlp and arch.norms_per_block == 2
    out += _norm(ctx, "ln_attn" if parallel_norms else "input norm", x, wn)
    if parallel_norms:
        out += _norm(ctx, "ln_mlp", x, wn, Side.MLP)
    out += linear_inputs(ctx, qkv, state, x or wn, "q/k/v projections", h, ctx.residual)
    prefix = run.prefix_len > 0  # the layer's key/value prefix trains
    q_grad = x or w or adapted_attn or bias_attn or wn or prefix
    if x or w or state.norm_bias or state.norms_trained:
        attn_grads = frozenset({"q", "k", "v"})
    else:
        attn_grads = frozenset(
            r for lin in qkv if lin.module in state.adapted | biased for r in lin.roles
        ) | (frozenset({"k", "v"}) if prefix else frozenset())
        attn_grads |= frozenset({"q", "k"}) if state.qk_norms_trained else frozenset()
    out += qk_norms_saved(ctx, state, qkv, x or w or wn, wn or state.qk_norms_trained)
    out += _attention(ctx, attn_grads)
    # the attention output is the o_proj input: one storage, kept by the fused kernels
    kernel_keeps_o_input = not runs_eager(arch, run) and arch.traits.o_proj_reads_kernel_output
    out += linear_inputs(ctx, o, state, q_grad, "o_proj", arch.q_size, ctx.e, kernel_keeps_o_input)
    after_attn = (
        x or w or adapted_attn or bias_attn or wn or prefix
        or any(lin.module in state.adapted | biased for lin in o)
    )  # fmt: skip
    out += _mlp_side(ctx, state, mlp, x, after_attn)
    return [s for s in out if s.nbytes]


def _mlp_side(
    ctx: LayerContext, state: BlockState, mlp: list[Linear], x: bool, after_attn: bool
) -> list[Saved]:
    """The block above its attention: the MLP's norms (Gemma-2's four), the MLP.
    ``after_attn``: the attention output needs a gradient."""
    arch = ctx.arch
    wn = state.weights_trainable or state.norm_bias or state.norms_trained
    out: list[Saved] = []
    if arch.norms_per_block == 4:
        out += _norm(ctx, "post-attention norm", after_attn, wn, Side.MLP)
        out += _norm(ctx, "pre-feedforward norm", after_attn, wn, Side.MLP)
    elif not arch.parallel_attn_mlp:
        out += _norm(ctx, "post-attention norm", after_attn, wn, Side.MLP)
    # with a shared input norm, its trainable parameters (BitFit: LayerNorm bias) need the
    # MLP branch's gradient too
    mlp_in_grad = (x or wn) if arch.parallel_attn_mlp else after_attn
    # Falcon-7B: attention and MLP read one norm output, saved once (q/k/v input)
    out += _mlp(ctx, state, mlp_in_grad or wn, mlp, arch.norms_per_block == 1)
    if arch.norms_per_block == 4:
        mlp_out_grad = (
            mlp_in_grad or state.weights_trainable
            or any(lin.module in state.output_grad for lin in mlp)
        )  # fmt: skip
        out += _norm(ctx, "post-feedforward norm", mlp_out_grad, wn, Side.MLP)
    return out


def prompt_encoder_saved(arch: Architecture, run: RunConfig, autocast: bool) -> list[Saved]:
    """What peft's prompt encoders keep. peft runs the encoder on one copy of the virtual
    tokens and repeats its output over the batch (peft#2043). The encoder is fp32; under
    autocast its Linears keep 16-bit copies of their inputs and weights instead."""
    n, h = run.n_virtual, arch.hidden_size
    if not n:
        return []
    out = [Saved("virtual token ids", n * INDEX_BYTES)]
    act = 2 if autocast else FP32

    def mlp(label: str, widths: list[int], rows: int = n) -> Saved:
        # (in, hidden, ..., out): each Linear keeps its input (the embedding output or
        # the previous activation's output); under autocast also its 16-bit weight
        size = rows * sum(widths[:-1]) * act
        if autocast:
            size += 2 * sum(a * b for a, b in pairwise(widths))
        return Saved(label, size)

    if run.method == "p-tuning":
        H = run.encoder_hidden or h
        if run.encoder == "mlp":
            out.append(mlp("prompt MLP: Linear inputs (ReLU outputs)", [h, H, H, h]))
        else:
            out.append(Saved("prompt LSTM", _lstm_saved(n, h, H)))
            out.append(mlp("prompt LSTM head: Linear inputs", [2 * H, 2 * H, h]))
    if run.method == "prefix-tuning" and run.prefix_projection:
        td = prefix_token_dim(arch)
        H = run.encoder_hidden or td
        # the prefix is computed for every sequence of the batch (no repeat trick here)
        widths = [td, H, 2 * arch.num_layers * td]
        out.append(mlp("prefix MLP: Linear inputs (tanh output)", widths, run.batch_size * n))
    return out


def _lstm_saved(n: int, h: int, H: int, layers: int = 2) -> int:
    """A bidirectional LSTM over n steps: each layer keeps its input; each direction its
    outputs, final states and the four gate activations of every step (what cuDNN's
    reserve space holds; the CPU's oneDNN keeps a larger workspace, see docs/accuracy.md)."""
    total = 2 * H * FP32  # initial hidden and cell states (zeros, shared)
    width = h
    for _ in range(layers):
        total += n * width * FP32
        total += 2 * (n * H * FP32 + 2 * H * FP32 + n * 4 * H * FP32)
        width = 2 * H
    return total


def loss_rows(run: RunConfig) -> int:
    """Rows the loss sees: transformers' loss takes every position (the last label is
    padded); a fused loss (Liger) takes the shifted b·(s − 1)."""
    rows = run.batch_size * run.positions
    return rows - run.batch_size if run.loss == "fused" else rows


def _fused_loss_saved(
    arch: Architecture, run: RunConfig, plan: MethodPlan, ctx: LayerContext, train: bool
) -> list[Saved]:
    """Liger's fused linear cross-entropy computes the gradients of its input and of the
    LM head weight in forward and keeps them for backward; no logits are kept. The input
    gradient has the input's dtype (``zeros_like``): the final norm's output, fp32 under
    autocast with fp32 weights (measured: the bf16 count was one T·h·2 short)."""
    rows, h = loss_rows(run), arch.hidden_size
    out = [Saved("fused loss: input gradient", rows * h * ctx.residual)]
    if train or plan.head_trainable:
        w = BYTES_PER_ELEMENT[plan.dtypes.base]
        out.append(Saved("fused loss: LM head weight gradient", arch.vocab_size * h * w))
    return out


def outer_saved(
    arch: Architecture, run: RunConfig, plan: MethodPlan, tokens: int
) -> tuple[list[Saved], list[Saved]]:
    """What the embedding side and the head side keep: (below the blocks, above them).

    The head side (final norm, LM head, loss) is freed at the start of backward; the
    embedding side (token ids, shared rotary tables) lives until the last block is done.
    """
    ctx = LayerContext(arch, run, plan, tokens)
    T = tokens
    train = plan.outer_trainable
    # does anything below the final norm train? (else the blocks keep nothing and the
    # final norm's input needs no gradient: only the LM head or the final norm trains)
    blocks_grad = (
        train
        or plan.trainable_blocks > 0
        or plan.embed_trainable
        or run.n_virtual > 0
        or run.grad_ckpt  # transformers then makes the embedding output require grad
    )
    below: list[Saved] = []
    if train or plan.embed_trainable:
        below.append(Saved("embedding token ids", T * INDEX_BYTES))
        if arch.position_embedding == "learned" and train:
            below.append(Saved("position ids", (T // run.batch_size) * INDEX_BYTES))
    below += prompt_encoder_saved(arch, run, plan.dtypes.autocast)
    if arch.position_embedding == "rotary" and blocks_grad:
        # cos and sin tables (s × head_dim), shared by every layer's rotary multiply
        # (computed in the residual dtype: fp32 under autocast with fp32 weights)
        below.append(
            Saved("rotary cos/sin", 2 * (T // run.batch_size) * arch.head_size * ctx.residual)
        )
    above = _norm(
        ctx,
        "final norm",
        blocks_grad,
        train or plan.norm_bias_trainable or plan.final_norm_trainable,
        Side.OUTER,
    )
    if run.loss == "fused":
        return below, above + _fused_loss_saved(arch, run, plan, ctx, train)
    return below, above + head_saved(arch, plan, T, train, FP32)


def head_saved(
    arch: Architecture, plan: MethodPlan, T: int, train: bool, log_softmax_bytes: int
) -> list[Saved]:
    """The LM head and the loss over T positions: the head's input (when it trains), its
    16-bit weight copy under autocast, and the log-softmax (fp32 in transformers'
    causal-LM loss; T5 takes it in the logits' dtype) with the int64 labels."""
    V, h = arch.vocab_size, arch.hidden_size
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    out: list[Saved] = []
    if train or plan.head_trainable:
        out.append(Saved("LM head input", T * h * e))
    if plan.dtypes.autocast:
        # the head's input needs a gradient, so its 16-bit weight copy is kept, frozen or not
        out.append(Saved("LM head 16-bit weight copy", V * h * 2))
    if arch.final_logit_softcapping:
        out.append(Saved("logit soft-capping tanh", T * V * e))
    # log-softmax, int64 labels and the normaliser of the mean
    out.append(
        Saved(
            f"loss: {'fp32' if log_softmax_bytes == FP32 else '16-bit'} log-softmax + labels",
            T * V * log_softmax_bytes + T * INDEX_BYTES + log_softmax_bytes,
        )
    )
    return out
