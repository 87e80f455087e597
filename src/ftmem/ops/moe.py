"""Mixture of experts, as transformers 5's grouped experts run it (Mixtral)."""

from __future__ import annotations

from ftmem.arch import Architecture, Param, layout
from ftmem.dtypes import FP32, INDEX_BYTES
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side


@register("moe")
class MoE:
    """The router and the experts of one block."""

    @staticmethod
    def parameters(arch: Architecture) -> tuple[Param, ...]:
        return tuple(p for p in layout(arch).block if p.kind in ("router", "expert"))

    @staticmethod
    def saved(ctx: LayerContext, state: BlockState, x_grad: bool) -> list[Saved]:
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
                (
                    "router softmax (fp32) + top-k",
                    T * E * FP32 + Tk * (INDEX_BYTES + FP32) + T * FP32,
                ),
                ("routed token indices", 3 * Tk * INDEX_BYTES + Tk * FP32),
                ("expert outputs (for routing-weight grad)", Tk * h * ee),
            ]
            if ctx.plan.dtypes.casts_weights:
                sizes.append(("router 16-bit weight copy", h * E * 2))
        else:
            # only the experts train: the token order and the (constant) routing weights
            sizes.append(("routed token indices and routing weights", Tk * (INDEX_BYTES + FP32)))
        if experts_train:
            # grouped matmuls keep their inputs only to form the expert weights' gradients
            sizes.append(("routed expert inputs and down input", Tk * (h + f) * ee))
        if router_trains:
            # (DeepSeek's fp32 copy, unless autocast casts it to 16 bits again)
            fp32 = arch.traits.router_fp32 and not ctx.plan.dtypes.autocast
            sizes.append(("router input", T * h * (FP32 if fp32 else ctx.e)))
        return [Saved(what, size, Kind.MOE, Side.MLP) for what, size in sizes]

    @staticmethod
    def router_keeps_input(ctx: LayerContext, state: BlockState) -> bool:
        """The router keeps the MLP's input itself (the storage the shared experts read):
        an fp32 router (Family.router_fp32) on an fp32 input makes no copy of it."""
        router_trains = state.weights_trainable or "mlp.gate" in state.trained
        fp32_input = ctx.e == FP32 and not ctx.plan.dtypes.autocast
        return router_trains and ctx.arch.traits.router_fp32 and fp32_input

    @staticmethod
    def forward_transient(arch: Architecture, tokens: int) -> int:
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

    @staticmethod
    def backward_workspace(arch: Architecture, e: int, T: int) -> int:
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
