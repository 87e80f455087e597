"""Per-layer inputs (Architecture.per_layer_input_size; transformers 5.25
models/gemma4/modeling_gemma4.py, Gemma 4's E2B and E4B).

The model computes, once per forward, a (b, s, num_layers, width) tensor
(Gemma4TextModel.get_per_layer_inputs and project_per_layer_inputs, l.1705-1784): the
token table's lookup (a scaled embedding: the multiply by its 0-dim ``embed_scale``
buffer keeps that buffer), the embeddings through ``per_layer_model_projection`` times
``hidden_size ** -0.5`` (a Python float: nothing kept), reshaped and normalised by
``per_layer_projection_norm`` (a Gemma4RMSNorm over ``width`` on T·num_layers rows), the
two added and scaled by ``2 ** -0.5``. Each decoder layer reads its slice
``per_layer_inputs[:, :, i, :]`` (a view: every block's multiply keeps the one storage)
after its MLP (Gemma4TextDecoderLayer.forward, l.1408-1415)::

    residual = h
    h = per_layer_projection(act_fn(per_layer_input_gate(h)) * per_layer_input)
    h = residual + post_per_layer_input_norm(h)

What autograd keeps (torch 2.13 derivatives.yaml: mm keeps the input its weight's
gradient reads; gelu its input; mul the operand the other's gradient reads): the gate's
input where the gate trains, the activation's input where the gate's output needs a
gradient, the slice where the activation's output needs one and the activation's output
where the per-layer inputs need one (the model's projection or table trains), the
projection's input where it trains, and the norm's own (ops.norm.Norm). Measured on the
tiny gemma4 with per-layer inputs of 16 (tests/accuracy/cases.py ``perlayerinputsize``).
"""

from __future__ import annotations

from ftmem.arch import Architecture, Linear
from ftmem.dtypes import FP32
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.linear import LinearOp
from ftmem.ops.norm import Norm, weight_cast
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig


@register("per_layer_input")
class PerLayerInput:
    """The blocks' and the model's tensors for the per-layer inputs."""

    NAME = "per_layer_input"  # its registered name, on the items a block keeps for it

    @staticmethod
    def inputs_grad(run: RunConfig, plan: MethodPlan) -> bool:
        """Whether the per-layer inputs need a gradient: where the embeddings do (the
        model's side trains, the token table trains, or transformers' checkpointing hook
        makes the embeddings' output require one: activations._embedding_side)."""
        return plan.outer_trainable or plan.embed_trainable or run.grad_ckpt

    @staticmethod
    def gradient_held(arch: Architecture, run: RunConfig, plan: MethodPlan, T: int) -> int:
        """The per-layer inputs' gradient, from the top block's backward to the model's
        side: each block's slice (``per_layer_inputs[:, :, i, :]``) backward writes a
        zero-filled tensor of the whole (T, layers, width) input (torch 2.13
        derivatives.yaml select/slice backward), accumulated into one, in the residual
        stream's dtype. Measured: the checkpointed LoRA bf16 tiny peak read T·layers·width·2
        = 9,600 B under without it."""
        if not (arch.per_layer_input_size and PerLayerInput.inputs_grad(run, plan)):
            return 0
        rows = T * arch.num_layers
        return rows * arch.per_layer_input_size * plan.dtypes.residual_bytes

    @staticmethod
    def saved(ctx: LayerContext, state: BlockState, h_grad: bool, inputs_grad: bool) -> list[Saved]:
        """One block's tensors. ``h_grad``: the residual stream after the MLP needs a
        gradient; ``inputs_grad``: the per-layer inputs need one (the model's side
        trains). Under autocast the two linears keep 16-bit copies of their inputs, the
        activation its 16-bit input: the compute dtype throughout."""
        arch, T, e = ctx.arch, ctx.tokens, ctx.e
        if not arch.per_layer_input_size:
            return []
        width, w = arch.per_layer_input_size, state.weights_trainable
        wn = w or state.norms_trained
        out: list[Saved] = []
        if w:
            what = "per-layer gate input"
            out.append(Saved(what, T * arch.hidden_size * e, Kind.LINEAR_INPUT, Side.MLP))
        gated = h_grad or w  # the gate's output needs a gradient
        if gated:
            out.append(
                Saved("per-layer activation input", T * width * e, Kind.MLP_HIDDEN, Side.MLP)
            )
        if inputs_grad:
            out.append(
                Saved("per-layer activation output", T * width * e, Kind.MLP_HIDDEN, Side.MLP)
            )
        if w:
            what = "per-layer projection input"
            out.append(Saved(what, T * width * e, Kind.LINEAR_INPUT, Side.MLP))
        if ctx.plan.dtypes.casts_weights:  # autocast: a 16-bit copy a matmul's input gradient reads
            names, h = arch.traits.names.per_layer, arch.hidden_size
            copied = [Linear(names["gate"], (), h, width, False)] if h_grad else []
            if gated or inputs_grad:
                copied.append(Linear(names["projection"], (), width, h, False))
            out += LinearOp.weight_copies(ctx, copied, Side.MLP)
        label = "post per-layer input norm"
        out += Norm.saved(ctx, label, gated or inputs_grad, wn, Side.MLP, of_sublayer=True)
        return [s._replace(op=PerLayerInput.NAME) for s in out]

    @staticmethod
    def model_saved(
        ctx: LayerContext,
        trains: bool,
        embeds_grad: bool,
        blocks_keep: bool,
        embeds_kept: bool,
    ) -> list[Saved]:
        """The model's tensors, kept until the blocks' backward is done. ``trains``: the
        model's per-layer projection, its norm and the table train; ``embeds_grad``: the
        embeddings need a gradient (the table trains, or transformers' checkpointing
        hook), so the projection's output does; ``blocks_keep``: some block's multiply
        keeps its slice (the one (T, layers, width) storage, in the residual stream's
        dtype: under autocast the fp32 lookup promotes the sum); ``embeds_kept``: the
        projection's input, the embeddings, is kept by the first block already (an fp32
        input norm keeps its input itself)."""
        arch, T = ctx.arch, ctx.tokens
        width = arch.per_layer_input_size
        if not width:
            return []
        rows = T * arch.num_layers
        out: list[Saved] = []
        if blocks_keep:
            what = "per-layer inputs"
            out.append(Saved(what, rows * width * ctx.residual, Kind.OTHER, Side.OUTER))
        if trains and (ctx.e != ctx.residual or not embeds_kept):
            # (autocast's 16-bit copy, or a 16-bit model's embeddings themselves)
            what = "per-layer model projection input"
            out.append(Saved(what, T * arch.hidden_size * ctx.e, Kind.OTHER, Side.OUTER))
        if embeds_grad and ctx.plan.dtypes.casts_weights:
            projection = Linear(
                arch.traits.names.per_layer["model_projection"], (), arch.hidden_size,
                arch.num_layers * width, False,
            )  # fmt: skip
            out += LinearOp.weight_copies(ctx, [projection], Side.OUTER)
        # the norm on the projection's output: where that needs a gradient its fp32 copy
        # (the output itself in fp32), torch.pow's input and result per row and a 16-bit
        # weight's fp32 copy; where its weight trains, the fp32 normalised tensor
        parts: tuple[int, ...] = ()
        if trains or embeds_grad:
            parts += (rows * width * FP32, rows * FP32, rows * FP32, *weight_cast(ctx, width))
        if trains:
            parts += (rows * width * FP32,)
        if parts:
            what = "per-layer projection norm"
            out.append(Saved(what, sum(parts), Kind.OTHER, Side.OUTER, parts=parts))
        return out
