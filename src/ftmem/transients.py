"""Transient memory of a training step: what exists only for a moment.

The workspaces of a block's backward (MLP, norms, eager attention, IA³'s scaling), the
forward's passing tensors (DoRA's weight build, a frozen block's intermediates, the
logits and the loss's fp32 copy), and the moments particular to some methods and
features (ReLoRA's merge, prefix tuning's cache, tied embeddings' gradient sum, an
optimizer step inside backward, offloaded activations coming back). Each rule was
measured on the CPU (tests/accuracy); sizes in bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ftmem.activations import Kind, Saved, Side, loss_rows, runs_eager
from ftmem.arch import MLP_ROLES, TOKEN_EMBEDDINGS, Architecture, Linear
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32, INDEX_BYTES
from ftmem.methods import MethodPlan, TensorGroup
from ftmem.optim import optimizer_step_temporary_bytes
from ftmem.precision import Dtypes
from ftmem.run import ADAPTER_METHODS, RunConfig

CHUNKS = 8  # torchtune's num_output_chunks

NORM_KINDS = frozenset({Kind.NORM_INPUT, Kind.NORM_OUTPUT})
# what adapter_moment counts as one adapted linear's own: its adapter's and its weight copy
ADAPTER_OWN = frozenset({Kind.LORA, Kind.DORA, Kind.WEIGHT_COPY})
# what offloaded attention brings back for its backward: the kernel's q, k, v, mask,
# probabilities and output. (A fused projection's whole output, Falcon's fp32 copies,
# the prefix-concatenated keys and Gemma-2's soft-capping tanh are left out, as the
# label rule left them: adding them changes none of tests/accuracy's offload cases.)
OFFLOAD_ATTENTION_KINDS = frozenset(
    {Kind.ATTN_QK, Kind.ATTN_V, Kind.ATTN_MASK, Kind.ATTN_PROBS, Kind.ATTN_OUTPUT}
)


def prefix_cache(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
    """Prefix tuning keeps every layer's keys and values (prefix + own) in a cache until
    the forward returns. They are what the attention kernel saves, except where sdpa
    repeats GQA heads (it needs a mask here) or autocast casts them to 16 bits from the
    fp32 of the prefix: then the cache's tensors are extra until the forward ends."""
    P = run.prefix_len
    if not P:
        return 0
    repeats = arch.kv_heads not in (1, arch.num_heads) and run.attn != "flash"
    upcast = dtypes.autocast and dtypes.base == "fp32"
    if not (repeats or upcast):
        return 0
    nbytes = BYTES_PER_ELEMENT[dtypes.base if upcast else dtypes.compute]
    return arch.num_layers * 2 * run.batch_size * (run.seq_len + P) * arch.kv_size * nbytes


def logits_forward(arch: Architecture, run: RunConfig, e: int, T: int) -> int:
    """At the loss in forward: the logits and their fp32 copy; with Liger's fused loss,
    one chunk of logits, the shifted hidden states' copy and the per-row losses."""
    V, h = arch.vocab_size, arch.hidden_size
    if run.loss == "fused":
        rows = loss_rows(run)
        chunk = liger_chunk_rows(rows, h, V)
        return min(chunk, rows) * V * e + rows * h * e + rows * FP32
    upcast = T * V * FP32 if e != FP32 else 0
    if run.loss == "chunked":  # torchtune: one chunk upcast at a time
        upcast //= CHUNKS
    return T * V * e + upcast


def liger_chunk_rows(tokens: int, hidden: int, vocab: int) -> int:
    """Rows per chunk of Liger's fused linear cross-entropy: the next power of two of
    tokens / ceil(vocab / hidden), so that a chunk's logits are about the size of the
    hidden states."""
    inc = -(-vocab // hidden)
    return 1 << max(0, (-(-tokens // inc) - 1).bit_length())


def merge_transient(plan: MethodPlan, run: RunConfig) -> int:
    """ReLoRA's merge (peft ``merge_adapter``): per adapted linear, B·A and the scaled
    product (out × in, adapter dtype) before it is added into the base weight in place."""
    if run.method != "relora" or not plan.adapted:
        return 0
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    return max(2 * lin.in_features * lin.out_features * lin.copies * ae for lin in plan.adapted)


def step_in_backward(grad_groups: list[TensorGroup], run: RunConfig) -> int:
    """Optimizer in backward: the largest single gradient together with its own step's
    temporaries (one optimizer per parameter)."""
    if not run.optimizer_in_backward:
        return 0
    return max(
        (
            g.numel * g.element_bytes + optimizer_step_temporary_bytes([g.counted(1)], run)
            for g in grad_groups
        ),
        default=0,
    )


def tied_embedding_backward(arch: Architecture, grad_groups: list[TensorGroup]) -> int:
    """A trained tied embedding: at the end of backward the embedding path's gradient
    and its sum with the LM head path's are both new (vocab × hidden) tensors."""
    if not arch.tie_embeddings:
        return 0
    return sum(
        2 * g.total_numel * g.element_bytes
        for g in grad_groups
        if not g.in_block and g.name.endswith(TOKEN_EMBEDDINGS)
    )


def forward_block_transient(plan: MethodPlan, run: RunConfig) -> int:
    """DoRA (peft) forms, in every forward, W + scale·(B·A) through an in×in identity
    to take its column norm: the identity, the LoRA weight, its transpose and the sum,
    for the largest adapted linear; other methods allocate nothing comparable."""
    return dora_rebuild(plan, run, plan.adapted)


def dora_rebuild(plan: MethodPlan, run: RunConfig, linears: Iterable[Linear]) -> int:
    """The largest of DoRA's weight rebuilds (identity, LoRA weight, its transpose and
    the sum) among these adapted linears; 0 for other methods."""
    if run.method != "dora":
        return 0
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    return max(
        ((lin.in_features**2 + 3 * lin.in_features * lin.out_features) * ae for lin in linears),
        default=0,
    )


def autocast_cache(plan: MethodPlan) -> int:
    """Autocast casts each trainable fp32 weight a matmul reads to 16 bits once per
    forward and caches the copy until the forward's autocast region ends. Without
    checkpointing autograd saves those copies anyway (they are activations); with it
    only the cache keeps them: every block's, through the whole forward and the loss
    (measured on Llama and Mistral, bf16-mixed with checkpointing: forward -10 % without
    them)."""
    if not plan.dtypes.autocast:
        return 0
    return sum(
        g.total_numel * 2
        for g in plan.groups
        if g.trainable and g.in_block and g.fmt == "fp32" and len(g.shape) == 2
    )


def moe_forward_transient(arch: Architecture, tokens: int) -> int:
    """transformers 5's grouped experts multiply each routed output by its fp32 routing
    weight (an fp32 Tk·h product whatever the precision) and then gather the rows back
    into token order: both products and the inverse permutation are live at once, beside
    everything the block has saved. On tiny Mixtral this is 72 % of the block's measured
    forward transient in bf16, 98 % in fp32 and 57 % under LoRA (2026-11-29); the rest
    is not derived yet. It shows under FSDP, where the loss is no longer the forward's
    largest moment."""
    if not arch.is_moe:
        return 0
    routed = tokens * arch.experts_per_token
    return routed * (2 * arch.hidden_size * FP32 + INDEX_BYTES)


def offload_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> int:
    """With activations offloaded, a block's backward holds one op's saved tensors, back
    on the GPU, beside that op's own workspace: the larger of the norm's (its fp32
    input back), the MLP's (the largest MLP item back) and attention's (its saved
    inputs and output back, with eager attention's score gradients)."""
    h = arch.hidden_size
    # the norm's fp32 input back, and the fp32 residual gradient arriving (measured)
    norm = norm_backward_workspace(arch, e, T) + 2 * T * h * FP32
    norm = max(norm, qk_norm_offload_moment(arch, T))
    mlp_items = [x.nbytes for x in block if _offload_mlp_item(x)]
    # the MLP brings back two T·f tensors at once (the gated product's inputs); GPT-2's
    # written-out tanh-GELU three of its four (measured)
    f = arch.intermediate_size * (arch.experts_per_token if arch.is_moe else 1)
    at_once = 3 if arch.traits.gelu_written_out else 2
    back = min(max(mlp_items, default=0), at_once * T * f * e)
    mlp = mlp_backward_workspace(arch, plan, e, T) + back
    attn = sum(x.nbytes for x in block if _offload_attention_item(x))
    if runs_eager(arch, run):
        attn += 2 * run.batch_size * arch.num_heads * run.positions**2 * FP32
    return max(norm, mlp, attn)


def _offload_mlp_item(x: Saved) -> bool:
    """An item the MLP's backward brings back: its linears' (inputs, adapters, weight
    copies) and intermediates' (not its norms', not the experts'). Falcon's and GPT-2's
    linears count too; their labels hid them (measured, Falcon IA³ offloaded, bf16:
    -10.1 % hidden, -1.9 % counted)."""
    return x.side is Side.MLP and x.kind not in NORM_KINDS and x.kind is not Kind.MOE


def _offload_attention_item(x: Saved) -> bool:
    """An item attention's backward brings back: the kernel's inputs and output (not
    the q/k/v projections' adapter items: those come back at their own linears)."""
    return x.kind in OFFLOAD_ATTENTION_KINDS


def frozen_forward_transient(
    arch: Architecture, run: RunConfig, e: int, residual: int, T: int
) -> int:
    """A block that keeps nothing for backward (frozen, checkpointed or offloaded) still
    builds its MLP intermediates in forward: gate, activation, up and their product (GPT-2's written-out tanh-GELU: four
    T·f terms too; a plain MLP: its output and activation). Beside them live the
    embedding output and the block's input (held by the model's forward), the residual
    and the norm output."""
    f = arch.intermediate_size * (arch.experts_per_token if arch.is_moe else 1)
    terms = 4 if arch.mlp == "gated" or arch.traits.gelu_written_out else 2
    if run.grad_ckpt and arch.mlp == "gated":
        # a checkpointed block's forward (grad enabled, nothing saved): the gate is
        # freed once activated, three T·f at once (Llama, Mistral, Qwen2: measured)
        terms = 3
    mlp = terms * T * f * e
    attn = 0
    if runs_eager(arch, run):  # the fp32 scores and their softmax
        s = run.positions
        attn = 2 * run.batch_size * arch.num_heads * s * (s + run.prefix_len) * FP32
    return max(mlp, attn) + 4 * T * arch.hidden_size * residual


def norm_backward_workspace(arch: Architecture, e: int, T: int) -> int:
    """Transient of one norm's backward.

    RMSNorm in transformers is written out in fp32 (x.float(), pow, mean, rsqrt, mul),
    so autograd's backward of it holds about four fp32 T·h tensors at once plus the
    incoming gradient; LayerNorm's fused kernel needs only its output gradient.
    """
    h = arch.hidden_size
    if arch.norm == "layernorm":
        return T * h * e
    return 4 * T * h * FP32 + T * h * e


def freed_before_attention(arch: Architecture, block: Iterable[Saved]) -> int:
    """What a checkpointed block's backward has freed when its attention's backward
    starts: the MLP side, except a parallel block's MLP norm (it runs before the
    attention in forward, so its backward comes after)."""
    return sum(x.nbytes for x in block if _freed_before_attention(arch, x))


def _freed_before_attention(arch: Architecture, x: Saved) -> bool:
    return x.side is Side.MLP and not (arch.parallel_attn_mlp and x.kind in NORM_KINDS)


def qk_norm_offload_moment(arch: Architecture, T: int) -> int:
    """The query norm's backward (``arch.qk_norm``) with activations offloaded: its fp32
    input back, the fp32 gradients of its product, of its mean (expanded) and pow's three,
    all T·q (the k norm's are narrower), beside the fp32 residual gradient arriving
    (measured on tiny Qwen3, full bf16: -5.9 % without, the block's largest moment)."""
    if not arch.qk_norm:
        return 0
    return 6 * T * arch.q_size * FP32 + T * arch.hidden_size * FP32


def checkpointed_attention_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int
) -> int:
    """A checkpointed block's backward with eager attention: its recomputed attention
    side still held (the MLP side freed) while the softmax's backward holds the
    probabilities' gradient and its fp32 result (e + 4 bytes per score; fp32 scores:
    8; measured). Returned relative to the whole recomputed block."""
    if not (run.grad_ckpt and runs_eager(arch, run)):
        return 0
    s = run.positions
    if arch.traits.attention == "eager-fp32" or e == FP32:
        per_score = 2 * FP32
    elif arch.traits.softmax_in_compute_dtype:
        per_score = 2 * e  # GPT-2 takes its softmax in the compute dtype
    else:
        per_score = e + FP32
    scores = run.batch_size * arch.num_heads * s * (s + run.prefix_len) * per_score
    mlp_side = freed_before_attention(arch, block)
    return scores + adapter_cast_gradient(arch, plan, run.batch_size * s) - mlp_side


def adapter_moment(
    arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
) -> int:
    """The largest moment of a block's backward at one of its peft-adapted linears,
    relative to the whole block's saved activations (which the moments outside count).

    - With checkpointing, the recompute runs each adapted linear's forward again: what
      the block has rebuilt up to that linear, the input its caller still holds (a
      norm's output or the MLP's activation; in the MLP the residual stream too) and
      the linear's forward transient. With fp32 adapters on a 16-bit base peft's sum
      promotes to fp32, so a wide fused linear (Phi-3's gate_up, qkv) outgrows the MLP's
      backward (measured: Phi-3 LoRA on all linears, bf16, -9 % without; DoRA on qkv,
      -17 %).
    - DoRA's own backward at its linear, with what the block keeps up to it: the fp32
      gradients of its rescaled sum (Phi-3 DoRA on qkv, bf16-mixed: -6 % without).

    Both beside the gradient that came into the block."""
    if run.method not in ADAPTER_METHODS or not (run.grad_ckpt or run.method == "dora"):
        return 0
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    moments: list[int] = []
    for lin in plan.adapted:
        if lin.copies > 1 or not lin.is_module:
            continue
        own = [
            i
            for i, x in enumerate(block)
            if x.linears and x.linears[0].module == lin.module and x.kind in ADAPTER_OWN
        ]
        if not own:
            continue
        if run.grad_ckpt:
            held = held_inputs(arch, run, plan, lin, e, T, beside_saved=True)
            # up to the adapter: what came before the linear and its lora items (its
            # DoRA items are the sum's outputs, counted by the transient)
            lora = sum(block[i].nbytes for i in own if block[i].kind is Kind.LORA)
            before = sum(x.nbytes for x in block[: own[0]]) + held
            through = before + lora
            if run.dropout > 0:
                # the dropout runs on peft's cast of the input (held beside it when the
                # input is not already in the adapter dtype), and under autocast lora_A
                # keeps only a 16-bit copy of its output (measured: Llama QLoRA on all
                # linears, bf16-mixed, dropout 0.1: -14 % without)
                cast = _input_bytes(plan, lin, e) != ae
                through += T * lin.in_features * ae * (cast + plan.dtypes.autocast)
            # the recompute stops at the last tensor backward needs: the down
            # projection's sum keeps nothing, so it is not rebuilt
            last = "down" in lin.roles
            moments.append(through + adapter_forward_transient(run, plan, lin, e, T, last))
            if last and run.method != "dora":
                # before its adapter, down's base layer alone (4-bit: with its casts)
                moments.append(before + base_forward_transient(plan, lin, e, T))
        if run.method == "dora":
            kept = sum(x.nbytes for x in block[: own[-1] + 1])
            moments.append(kept + T * lin.out_features * (4 * ae + e))
    if not moments:
        return 0
    return max(moments) + incoming_gradient(arch, run, plan, e, T) - sum(x.nbytes for x in block)


def held_inputs(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    lin: Linear,
    e: int,
    T: int,
    beside_saved: bool,
) -> int:
    """What the block's forward holds while one of its linears runs: its input (a norm's
    output for q/k/v, gate and up; the activation for down; the attention output for o)
    and, in the MLP, the residual stream. ``beside_saved``: the block's saved tensors
    are counted too (a recompute), so what they already hold (the attention output,
    the input lora_A keeps, the tensor the MLP's norm keeps) is not counted again."""
    dt = plan.dtypes
    in_bytes = _input_bytes(plan, lin, e)
    # lora_A keeps the input itself when peft need not cast it (nor drop it out)
    adapter_keeps_it = not dt.autocast and in_bytes == BYTES_PER_ELEMENT[dt.adapter]
    adapter_keeps_it = adapter_keeps_it and not run.dropout
    own = ("o" in lin.roles or adapter_keeps_it) and beside_saved
    held = 0 if own else T * lin.in_features * in_bytes
    # the residual stream, unless the MLP's norm keeps that very tensor (a LayerNorm's
    # input; an RMSNorm's fp32 input when the stream is fp32 already)
    r = dt.residual_bytes
    norm_keeps_it = arch.norm == "layernorm" or r == FP32
    if set(lin.roles) & set(MLP_ROLES) and not (beside_saved and norm_keeps_it):
        held += T * arch.hidden_size * r
    return held


def _input_bytes(plan: MethodPlan, lin: Linear, e: int) -> int:
    """Element size of a block linear's input: the residual dtype for a norm's output,
    the compute dtype for the attention output and the activation (fp32 from a 4-bit
    MLP under autocast)."""
    if "o" in lin.roles:
        return e
    if "down" in lin.roles:
        return FP32 if plan.dtypes.four_bit_outputs_fp32 else e
    return plan.dtypes.residual_bytes


def checkpointed_forward_adapter(
    arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int
) -> int:
    """A checkpointed block's forward keeps nothing, but each adapted linear still runs
    with its inputs held: the largest such moment (peft's promoted sum, DoRA's rebuild
    and rescale; measured on Phi-3 and Llama, forward phase -15 to -38 % without)."""
    if not run.grad_ckpt or run.method not in ADAPTER_METHODS:
        return 0
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    return max(
        (
            held_inputs(arch, run, plan, lin, e, T, beside_saved=False)
            # peft's cast of the input to the adapter dtype, held through the sum, and
            # the dropped copy DoRA's two matmuls read
            + T * lin.in_features * ae * (_input_bytes(plan, lin, e) != ae)
            + T * lin.in_features * ae * (run.dropout > 0 and run.method == "dora")
            + adapter_forward_transient(run, plan, lin, e, T)
            for lin in plan.adapted
            if lin.copies == 1 and lin.is_module
        ),
        default=0,
    )


def incoming_gradient(arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int) -> int:
    """What a checkpointed block's backward holds when its recompute starts: the
    gradient of its output (residual dtype) and, with an adapted down projection, the
    two branches of that adapter's sum (its base output's gradient and the scaled
    adapter gradient; DoRA's rescale one more), measured on Llama and Phi-3."""
    dt = plan.dtypes
    grads = T * arch.hidden_size * dt.residual_bytes
    if any("down" in lin.roles for lin in plan.adapted):
        lora_e = e if dt.autocast else BYTES_PER_ELEMENT[dt.adapter]
        # (a 4-bit down projection answering in fp32 needs no 16-bit cast of it)
        base = 0 if dt.four_bit_outputs_fp32 else e
        grads += T * arch.hidden_size * (base + lora_e * (2 if run.method == "dora" else 1))
    return grads


def adapter_forward_transient(
    run: RunConfig, plan: MethodPlan, lin: Linear, e: int, T: int, no_sum: bool = False
) -> int:
    """One peft-adapted linear's forward at its sum: the base output, the adapter's
    scaled output and the sum (in the adapter dtype when peft cast the input, since the
    sum promotes; 16-bit under autocast). DoRA also holds its two rescaled outputs (fp32,
    like its magnitude) and its weight rebuild: the identity, the LoRA weight and the
    base weight cast to the adapter dtype, or under autocast the LoRA weight's cast
    alone (measured on Phi-3's qkv, peft 0.21). ``no_sum``: up to the sum only."""
    dt = plan.dtypes
    ae = BYTES_PER_ELEMENT[dt.adapter]
    base_e = FP32 if dt.four_bit_outputs_fp32 and dt.quantized else e
    lora_e = e if dt.autocast else ae
    sum_e = max(base_e, lora_e)
    out, inp = lin.out_features, lin.in_features
    if run.method != "dora":
        return T * out * (base_e + (0 if no_sum else lora_e + sum_e))
    # the LoRA output, then its rescaled copy and the base output's (fp32: the magnitude
    # is), then their sum
    rescaled = 2 if no_sum else 3
    outputs = T * out * (base_e + lora_e + rescaled * ae)
    if run.dropout:
        # with dropout DoRA runs the base matmul again, on the dropped input
        outputs += T * out * lora_e
    cast = inp * out * ae if BYTES_PER_ELEMENT[dt.base] != ae else 0
    if dt.autocast:
        # only the LoRA weight's cast to the input's dtype outlives the norm (measured
        # on Phi-3's qkv, bf16-mixed: forward -11 % without)
        return outputs + inp * out * ae + cast
    return outputs + (inp * inp + inp * out) * ae + cast


def base_forward_transient(plan: MethodPlan, lin: Linear, e: int, T: int) -> int:
    """An adapted linear's base layer, before its adapter runs: its output, and for a
    4-bit linear under autocast its input cast to 16 bits and its 16-bit answer before
    the cast back to fp32 (measured: Llama QLoRA on all linears, bf16-mixed)."""
    if plan.dtypes.four_bit_outputs_fp32 and plan.dtypes.quantized:
        return T * lin.out_features * FP32 + T * (lin.in_features + lin.out_features) * e
    return T * lin.out_features * e


def adapter_cast_gradient(arch: Architecture, plan: MethodPlan, T: int) -> int:
    """Adapters whose input peft casts to their own dtype (fp32 adapters on a 16-bit
    base, no autocast) add that cast's gradient (T·h) to their linear's backward."""
    dt = plan.dtypes
    if plan.adapted and not dt.autocast and dt.adapter != dt.compute:
        return T * arch.hidden_size * BYTES_PER_ELEMENT[dt.adapter]
    return 0


def down_cast_gradient(plan: MethodPlan, T: int) -> int:
    """An adapter on the down projection: peft casts its input (T·f; 16-bit also under
    autocast, unless a 4-bit MLP made it fp32) to the adapter dtype, and that cast's
    gradient (T·f) joins the down projection's backward (measured with
    checkpointing: Llama LoRA and QLoRA on all linears under bf16-mixed, -6 % without)."""
    dt = plan.dtypes
    if dt.adapter == dt.compute:
        return 0
    widths = [lin.in_features for lin in plan.adapted if "down" in lin.roles]
    return T * max(widths) * BYTES_PER_ELEMENT[dt.adapter] if widths else 0


def block_backward_workspace(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    e: int,
    T: int,
    block: Sequence[Saved] = (),
) -> int:
    """Transient gradients inside one block's backward (the largest of its ops).

    The MLP: the gradient of its intermediate and of gate/up outputs (T·f each) plus
    the fp32 residual gradient (T·h); eager attention: the s² score gradients; a norm's
    backward. Adapters that cast their input to another dtype add the gradient of that
    cast copy (T·h in the adapter dtype).

    With checkpointing, the block's recomputed activations are at their fullest when
    its backward starts with the MLP; by the time its norms' backward runs they are
    mostly freed, so only the MLP part is added to the recompute.
    """
    attn = 0
    if runs_eager(arch, run):
        s = run.positions
        attn = 2 * run.batch_size * arch.num_heads * s * (s + run.prefix_len) * FP32
    cast_grad = adapter_cast_gradient(arch, plan, T)
    # a 4-bit MLP's intermediates, and so their gradients, can be fp32 (measured: QLoRA
    # bf16-mixed with checkpointing, peak -10 % without)
    four_bit_fp32 = plan.dtypes.four_bit_outputs_fp32
    mlp = mlp_backward_workspace(arch, plan, FP32 if four_bit_fp32 else e, T)
    # the experts' own moment; an adapter's cast gradient comes later, at its linear
    moe = moe_backward_workspace(arch, e, T)
    if run.grad_ckpt:
        # Gemma-2's post-feedforward norm is the first backward of the block, with all
        # of its recomputed activations still there (measured, the adapters' cast
        # gradient included). Elsewhere that gradient joins the MLP's only when an MLP
        # linear is adapted: the attention's comes once the MLP side is freed (GPT-2,
        # Llama, measured)
        if arch.mlp == "gated" and not arch.is_moe:
            # in a recomputed block the product's gradient is still there beside its two
            # gradients, and the incoming one is in the residual dtype (measured: Llama
            # LoRA bf16 and fp32, QLoRA bf16-mixed, with checkpointing)
            mlp += T * arch.intermediate_size * (FP32 if four_bit_fp32 else e)
            mlp -= T * arch.hidden_size * (FP32 - plan.dtypes.residual_bytes)
        mlp_linears = [lin for lin in plan.adapted if set(lin.roles) & set(MLP_ROLES)]
        # (a 4-bit MLP's fp32 product needs no cast into an fp32 adapter)
        down_cast = 0 if four_bit_fp32 else down_cast_gradient(plan, T)
        down_input = down_input_freed(arch, block)
        moment = mlp + max(cast_grad if mlp_linears else 0, down_cast) - down_input
        if arch.norms_per_block == 4:
            moment = max(moment, norm_backward_workspace(arch, e, T) + cast_grad)
        # DoRA rebuilds each adapted weight again in the recompute; an MLP linear's
        # rebuild comes last, beside the MLP's backward (measured: Llama and Qwen2 on all
        # linears, -9 to -12 % without); attention's comes early, before it
        return max(moment + dora_rebuild(plan, run, mlp_linears), moe)
    return max(max(mlp, attn, norm_backward_workspace(arch, e, T)) + cast_grad, moe)


def down_input_freed(arch: Architecture, block: Iterable[Saved]) -> int:
    """The down projection's saved input, gone (its weight gradient made) when the MLP's
    largest backward moment comes: the gated product's gradients, or those of GPT-2's
    written-out tanh-GELU (measured: full finetuning with checkpointing, Llama at 1,024
    tokens +4.6 % without, GPT-2 +2.3 %). A single fused activation (Falcon's GELU)
    holds one T·f gradient, no more than the down projection's own backward, which
    runs with that input still saved: nothing to take off (measured, Falcon bf16-mixed
    with checkpointing: -5.8 % when taken off)."""
    if _mlp_gradients(arch) == 1:
        return 0
    return sum(
        x.nbytes
        for x in block
        if x.kind is Kind.LINEAR_INPUT and any("down" in lin.roles for lin in x.linears)
    )


def _mlp_gradients(arch: Architecture) -> int:
    """How many T·f gradients the MLP's backward holds at once: the gated product's two,
    the written-out tanh-GELU's three (x³, tanh and their product), or one."""
    if arch.mlp == "gated":
        return 2
    if arch.traits.gelu_written_out and arch.activation == "gelu_tanh":
        return 3
    return 1


def mlp_backward_workspace(arch: Architecture, plan: MethodPlan, e: int, T: int) -> int:
    """The MLP's backward: the gradients of its intermediate and of gate/up outputs
    (T·f each) plus the fp32 residual gradient (T·h); IA³'s scaling if larger."""
    f = arch.intermediate_size * (arch.experts_per_token if arch.is_moe else 1)
    width = _mlp_gradients(arch) * f
    return max(T * width * e + T * arch.hidden_size * FP32, ia3_workspace(plan, e, T))


def moe_backward_workspace(arch: Architecture, e: int, T: int) -> int:
    """transformers 5's grouped experts, first in their block's backward: beside the
    incoming gradient (T·h), the gradient gathered back to routed order and the two
    gradients of the fp32 routing-weight product (Tk·h fp32 each), and the expert
    outputs' gradient cast to the compute dtype. Measured on tiny Mixtral (QLoRA,
    2026-11-29): within 0.4 % of the experts' backward peak; it shows under FSDP, and
    wherever the loss is not the step's largest moment."""
    if not arch.is_moe:
        return 0
    h = arch.hidden_size
    return T * arch.experts_per_token * h * (3 * FP32 + e) + T * h * e


def ia3_workspace(plan: MethodPlan, e: int, T: int) -> int:
    """IA³'s feed-forward scaling in backward (measured): the down projection's input
    gradient cast to the vector's dtype (the uncast one freed), and both products of the
    scaling's backward (for the vector's sum and for the input) before the sum."""
    ff = [lin.in_features for lin, feedforward in plan.scaled if feedforward]
    if not ff:
        return 0
    ae = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    width = max(ff)
    return 3 * T * width * ae
