"""Mixture of experts, as transformers 5's grouped experts run it (Mixtral)."""

from __future__ import annotations

from ftmem.arch import Architecture, Param, layout
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32, INDEX_BYTES
from ftmem.methods import ExpertLoRA, MethodPlan, experts_are_linears, router_is_linear_in_4x
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.versions import bnb_4bit_keeps_input


@register("moe")
class MoE:
    """The router and the experts of one block."""

    @staticmethod
    def parameters(arch: Architecture) -> tuple[Param, ...]:
        # (the router's frozen fp32 correction bias, ERNIE 4.5 MoE's "statistic", too)
        kinds = ("router", "expert", "statistic")
        return tuple(p for p in layout(arch).block if p.kind in kinds)

    @staticmethod
    def saved(
        ctx: LayerContext, state: BlockState, x_grad: bool, shared_input: bool = False
    ) -> list[Saved]:
        """transformers 5 Mixtral: router softmax/top-k, grouped matmuls over routed tokens.

        Autocast does not cover grouped matmuls: the experts compute in their parameters'
        dtype (fp32 under *-mixed), only the router linear runs in 16-bit.

        gpt-oss (transformers 5.24 modeling_gpt_oss.py, integrations/moe.py
        grouped_mm_experts_forward): its router keeps the top-k indices and the softmax of
        the selected logits only (Family.router_topk_softmax), the routing weights in the
        router's dtype; each expert bias is gathered per routed token (the sorted expert
        ids kept, Family.experts_transposed_with_bias); the clamped SwiGLU keeps gate_up
        (both clamps' input), the clamped gate, its sigmoid, up + 1 and their product
        (Family.clamped_swiglu).

        transformers 4: :meth:`looped_saved`.
        """
        arch = ctx.arch
        traits = arch.traits
        T, f, h = ctx.tokens, arch.intermediate_size, arch.hidden_size
        looped = experts_are_linears(arch, ctx.run)  # transformers 4's loop (below)
        # expert compute dtype = parameter dtype (transformers 4: nn.Linear's, autocast's)
        ee = ctx.projection_out_bytes if looped else ctx.residual
        k, E = arch.experts_per_token, arch.num_experts
        Tk = T * k
        experts = traits.names.experts["gate_up"].rsplit(".", 1)[0]  # (GraniteMoE's apart)
        experts_train = state.weights_trainable or any(m.startswith(experts) for m in state.trained)
        lora = MoE.adapted(ctx, state)
        # (a router with LoRA keeps what a trained one does: its input, the routing grads)
        router_lora = any(ex.is_router for ex in lora)
        router_trains = state.weights_trainable or MoE.router(arch) in state.trained or router_lora
        routing_grad = x_grad or router_trains  # the routing weights need a gradient
        if not (routing_grad or experts_train or lora):
            return []
        rw = MoE.routing_weight_bytes(ctx, looped)
        sizes = MoE.jitter_saved(ctx, x_grad)
        if traits.clamped_swiglu:
            sizes += [("expert gate_up output and clamped SwiGLU", Tk * 6 * f * ee)]
        else:
            sizes += [("expert gate_up output and activation", Tk * 3 * f * ee)]
        if routing_grad:
            sizes += [
                MoE.router_saved(arch, T, rw),
                ("routed token indices", (2 if looped else 3) * Tk * INDEX_BYTES + Tk * rw),
                ("expert outputs (for routing-weight grad)", Tk * h * ee),
            ]
            quantised_router = looped and ctx.plan.dtypes.quantized and router_is_linear_in_4x(arch)
            # (no copy where the router turns autocast off: ERNIE 4.5 MoE's)
            own_dtype = traits.router_autocast_off
            if ctx.plan.dtypes.casts_weights and not (quantised_router or own_dtype):
                bias = E if traits.experts_transposed_with_bias else 0  # (gpt-oss's router)
                sizes.append(("router 16-bit weight copy", (h * E + bias) * 2))
        else:
            # only the experts train: the token order and the (constant) routing weights
            # (transformers 4: index_add_'s top_x, a view of torch.where's (n, 2) indices)
            indices = (2 if looped else 1) * INDEX_BYTES
            sizes.append(("routed token indices and routing weights", Tk * (indices + rw)))
        if looped:
            sizes += MoE.looped_saved(ctx, x_grad, experts_train, ee)
        if experts_train:
            # grouped matmuls keep their inputs only to form the expert weights' gradients
            sizes.append(("routed expert inputs and down input", Tk * (h + f) * ee))
        else:
            # an expert weight rebuilt with its LoRA needs its gradient just the same
            sizes += [
                (f"{ex.linear.leaf} input (LoRA)", Tk * ex.linear.in_features * ee)
                for ex in lora
                if not ex.is_router
            ]
        sizes += MoE.lora_saved(ctx, lora, x_grad or experts_train)
        if experts_train and traits.experts_transposed_with_bias:
            # gate_up_proj_bias[expert_ids_g], down_proj_bias[expert_ids_g]: one index
            sizes.append(("sorted expert ids (bias gathers)", Tk * INDEX_BYTES))
        if router_trains:
            sizes += MoE.router_input_saved(ctx, state, shared_input)
        return [Saved(what, size, Kind.MOE, Side.MLP) for what, size in sizes]

    @staticmethod
    def router_input_saved(
        ctx: LayerContext, state: BlockState, shared_input: bool
    ) -> list[tuple[str, int]]:
        """A trained router's input: DeepSeek's fp32 copy, unless autocast casts it to 16
        bits again (ERNIE 4.5 MoE's router turns autocast off: fp32 all the same); none of
        its own where it is the norm output q/k/v keep already (``shared_input``: a parallel
        block's, Cohere2-MoE's, measured) and the router makes no copy of it."""
        if shared_input and MoE.router_keeps_input(ctx, state):
            return []
        traits = ctx.arch.traits
        autocast = ctx.plan.dtypes.autocast and not traits.router_autocast_off
        fp32 = traits.router_fp32 and not autocast
        return [("router input", ctx.tokens * ctx.arch.hidden_size * (FP32 if fp32 else ctx.e))]

    @staticmethod
    def routing_weight_bytes(ctx: LayerContext, looped: bool) -> int:
        """The routing weights' element size: fp32 (Mixtral's softmax(dtype=float)) or
        the router's output dtype (gpt-oss: softmax(dtype=router_top_value.dtype);
        Qwen3-MoE, OLMoE: the fp32 top-k cast back, Family.routing_weights_in_router_dtype,
        which for an fp32 router is fp32 outside autocast); transformers 4 casts them to the
        hidden states' (routing_weights.to(...))."""
        if ctx.arch.traits.router_sparsemixer and ctx.plan.dtypes.autocast:
            # PhiMoE's softmaxes take no dtype: 16-bit under the CPU's autocast (measured),
            # fp32 under CUDA's (pytorch aten/src/ATen/autocast_mode.cpp KERNEL_CUDA2(softmax,
            # int, fp32_set_opt_dtype); derived, not measured), and the multipliers with them
            return FP32 if ctx.run.device != "cpu" else ctx.e
        if looped or ctx.arch.traits.routing_weights_in_hidden_dtype:
            return ctx.residual  # (ERNIE 4.5 MoE: ``.to(hidden_states.dtype)``)
        if ctx.arch.traits.router_fp32 and ctx.arch.traits.routing_weights_in_router_dtype:
            # Hunyuan-V1-MoE's fp32 nn.Linear router: its logits are fp32, or 16-bit
            # where autocast casts the linear (measured on the tiny model, bf16-mixed:
            # +568 B a layer with fp32 weights counted, -64 B as the others now)
            return ctx.e if ctx.plan.dtypes.autocast else FP32
        return ctx.e if MoE.weights_in_router_dtype(ctx.arch) else FP32

    @staticmethod
    def jitter_saved(ctx: LayerContext, x_grad: bool) -> list[tuple[str, int]]:
        """PhiMoE's input jitter (Architecture.input_jitter): the block's and the router's
        in-place ``*=`` of the MoE input by uniform noise (empty_like: the input's dtype)
        each keep the (T, h) noise, where that input needs a gradient."""
        if not (ctx.arch.input_jitter and x_grad):
            return []
        return [
            (
                "input jitter noise (block's and router's)",
                2 * ctx.tokens * ctx.arch.hidden_size * ctx.residual,
            )
        ]

    @staticmethod
    def router_saved(arch: Architecture, T: int, rw: int) -> tuple[str, int]:
        """What the router keeps for the routing weights' gradient."""
        Tk = T * arch.experts_per_token
        if arch.traits.router_sparsemixer:
            # two picks (k is 2), each: bool mask + softmax (T·E), int64 pick + multiplier;
            # rw is the logits' dtype (measured on PhimoeTopKRouter, fp32 and bf16)
            return (
                "sparsemixer masks, softmaxes, picks and multipliers",
                T * arch.num_experts * (2 * rw + 2) + Tk * (INDEX_BYTES + rw),
            )
        if arch.traits.router_topk_softmax:
            # (GraniteMoE's softmax of fp32 logits keeps fp32, its weights cast after it)
            kept = FP32 if arch.traits.router_topk_softmax_fp32 else rw
            return ("router top-k indices + softmax of the top-k", Tk * (INDEX_BYTES + kept))
        # the fp32 softmax (T·E) and top-k's indices; renormalising the top-k
        # (router_top_value /= its sum, in place) keeps the quotient and the sum
        # (measured on OlmoeTopKRouter: +Tk·4 + T·4 bytes with norm_topk_prob)
        norm = Tk * FP32 + T * FP32 if arch.router_renormalises else 0
        if arch.traits.router_renormalises_clamped:
            norm += T * FP32  # (clamp(sum, min=...) keeps the sum for its mask)
        return (
            "router softmax (fp32) + top-k",
            T * arch.num_experts * FP32 + Tk * INDEX_BYTES + norm,
        )

    @staticmethod
    def looped_saved(
        ctx: LayerContext, x_grad: bool, experts_train: bool, ee: int
    ) -> list[tuple[str, int]]:
        """What transformers 4's loop over the experts keeps beyond the grouped path's
        items (methods.experts_are_linears; 4.48.1 modeling_mixtral.py
        MixtralSparseMoeBlock.forward, alike in Qwen2-MoE and OLMoE). Each expert is an
        nn.Linear module (4-bit under QLoRA; under autocast 16-bit, or a 4-bit linear's
        input dtype); per expert ``torch.where`` gives (idx, top_x), one (n, 2) int64
        tensor that the gathers and index_add_ keep (2·Tk indices, not the grouped
        path's 3·Tk, in :meth:`saved`), and the routing weights are cast to the hidden
        states' dtype. Here: index_add_(0, top_x, source) keeps its source, the
        weighted outputs, for its gradient's expand_as(source) (torch derivatives.yaml
        index_add); autocast's 16-bit copy of each frozen expert weight a matmul whose
        input needs a gradient reads (every expert runs, even with no token);
        bitsandbytes < 0.43.2 keeps each 4-bit matmul's input (ftmem.versions).
        Measured on a re-implementation of the block (tests/test_moe_linears.py)."""
        arch, dtypes = ctx.arch, ctx.plan.dtypes
        h, f, E = arch.hidden_size, arch.intermediate_size, arch.num_experts
        Tk = ctx.tokens * arch.experts_per_token
        out = [("weighted expert outputs (index_add_ source)", Tk * h * ctx.residual)]
        if dtypes.casts_weights and not dtypes.quantized:
            widths = 3 if x_grad else 1 if experts_train else 0  # (w2's input: w1's output)
            out.append(("expert 16-bit weight copies", widths * E * f * h * 2))
        if not experts_train and dtypes.quantized and bnb_4bit_keeps_input(ctx.run):
            out.append(("routed expert inputs and down input (4-bit)", Tk * (h + f) * ee))
        return out

    @staticmethod
    def adapted(ctx: LayerContext, state: BlockState) -> tuple[ExpertLoRA, ...]:
        """The block's expert parameters with LoRA (peft's target_parameters)."""
        return tuple(ex for ex in ctx.plan.adapted_experts if ex.linear.module in state.adapted)

    @staticmethod
    def lora_saved(
        ctx: LayerContext, lora: tuple[ExpertLoRA, ...], x_grad: bool
    ) -> list[tuple[str, int]]:
        """What LoRA on a 3-D expert parameter keeps (peft 0.21.2 tuners/lora/layer.py
        ParamWrapper._activate_lora, one adapter: _LoraFactorsProxy). For the module's
        forward the parameter is replaced by a parametrization, W + s·lhs @ rhs in one
        baddbmm in W's dtype (autocast off), cached for that forward: the whole adapted
        stack E·in·out is built anew and the grouped matmul keeps it for its input's
        gradient (an activation the size of the expert weights, per block), where that
        input needs one: gate_up's when the MLP's input does (``x_grad``), down's when
        gate_up's output does (measured: a block whose input needs no gradient keeps
        only down_proj's). The baddbmm keeps its factors, (E, in, rank) and
        (E, rank, out): views of lora_A and lora_B, or, with adapters in another dtype
        than the experts (fp32 adapters on bf16 experts), their copies in the experts'
        dtype (get_delta_factors' .to)."""
        ee, ae = ctx.residual, BYTES_PER_ELEMENT[ctx.plan.dtypes.adapter]
        out: list[tuple[str, int]] = []
        upstream = x_grad
        for ex in sorted(lora, key=lambda ex: "down" in ex.linear.roles):  # gate_up first
            if ex.is_router:
                # peft's 2-D path (get_delta_weight, _LoraParameterProxy): W + B·A in W's
                # dtype, kept by the router's linear for its input's gradient; B·A's own
                # factors are lora_A and lora_B themselves
                if x_grad:
                    out.append(("router weight with its LoRA (E·h)", _stack(ex, ee)))
                continue
            if upstream:
                out.append((f"{ex.linear.leaf} with its LoRA (E·in·out)", _stack(ex, ee)))
            upstream = True  # (down reads what an adapted gate_up made)
            if factors := _factors(ex, ee, ae):
                out.append((f"{ex.linear.leaf} LoRA factors in the experts' dtype", factors))
        return out

    @staticmethod
    def lora_stacks(plan: MethodPlan) -> int:
        """A block's expert stacks rebuilt with their LoRA, alive together while its
        experts run (each parametrization is cached for the module's forward), and
        their factors' copies: a forward moment of a block that keeps none of it
        (checkpointed; measured on tiny gpt-oss, bf16: the forward peak -10 % without)."""
        ee, ae = plan.dtypes.residual_bytes, BYTES_PER_ELEMENT[plan.dtypes.adapter]
        return sum(
            _stack(ex, ee) + (0 if ex.is_router else _factors(ex, ee, ae))
            for ex in plan.adapted_experts
        )

    @staticmethod
    def lora_backward(plan: MethodPlan) -> int:
        """LoRA on the experts in backward: the grouped matmul gives the gradient of the
        whole rebuilt stack (E·in·out in the experts' dtype), which the baddbmm's
        backward turns into its factors' gradients before it is freed (peft 0.21.2
        ParamWrapper, _LoraFactorsProxy). down_proj's comes first; gate_up_proj's once
        down's rebuilt stack is freed. Measured on tiny Qwen3-MoE (16 experts of 256,
        bf16): the backward peak -5.9 % without it, -0.2 % with."""
        ee = plan.dtypes.residual_bytes
        stacks = {
            "down" in ex.linear.roles: _stack(ex, ee)
            for ex in plan.adapted_experts
            if not ex.is_router
        }
        down = stacks.get(True, 0)
        return max(down, stacks.get(False, 0) - down)

    @staticmethod
    def router(arch: Architecture) -> str:
        """The router's module path in a block (Mixtral's mlp.gate, gpt-oss's mlp.router)."""
        return arch.traits.names.experts["router"]

    @staticmethod
    def router_keeps_input(ctx: LayerContext, state: BlockState) -> bool:
        """The router keeps the MLP's input itself (the storage the shared experts read):
        an fp32 router (Family.router_fp32) on an fp32 input makes no copy of it, nor
        does a router in the model's dtype outside autocast (Qwen2-MoE's
        ``F.linear(hidden_states, self.weight)``; measured on tiny Qwen2-MoE, full
        finetuning in fp32 and bf16: one T·h storage per block)."""
        router_trains = state.weights_trainable or MoE.router(ctx.arch) in state.trained
        if not router_trains:
            return False
        if ctx.arch.traits.router_fp32 and ctx.arch.traits.router_autocast_off:
            return ctx.residual == FP32  # (``.float()`` of an fp32 input is the input)
        if ctx.arch.traits.router_fp32:
            return ctx.e == FP32 and not ctx.plan.dtypes.autocast
        return not ctx.plan.dtypes.autocast

    @staticmethod
    def weights_in_router_dtype(arch: Architecture) -> bool:
        """The routing weights are in the router's output dtype, not fp32 (gpt-oss;
        Qwen3-MoE and OLMoE cast their fp32 top-k back)."""
        traits = arch.traits
        return (
            traits.router_topk_softmax
            or traits.routing_weights_in_router_dtype
            or traits.router_sparsemixer
        )

    @staticmethod
    def product_bytes(arch: Architecture, residual: int) -> int:
        """The element size of the routed outputs times their routing weights: fp32
        (Mixtral's fp32 routing weights), or the experts' dtype where the routing weights
        are in the router's (gpt-oss: bf16 in a bf16 model, measured; Qwen3-MoE and OLMoE
        alike, whose router output is never wider than the experts')."""
        if arch.traits.routing_weights_in_hidden_dtype:  # (ERNIE 4.5 MoE's cast)
            return residual
        if arch.traits.router_fp32:  # (fp32 outside autocast; 16-bit under it, not
            return FP32  # told apart here: an upper bound there)
        return residual if MoE.weights_in_router_dtype(arch) else FP32

    @staticmethod
    def forward_transient(
        arch: Architecture, tokens: int, residual: int, e: int, trains: bool
    ) -> int:
        """transformers 5's grouped experts multiply each routed output by its fp32 routing
        weight (an fp32 Tk·h product whatever the precision) and then gather the rows back
        into token order: both products and the inverse permutation are live at once, beside
        everything the block has saved. On tiny Mixtral this is 72 % of the block's measured
        forward transient in bf16, 98 % in fp32 and 57 % under LoRA (2026-11-29); the rest
        is not derived yet. It shows under FSDP, where the loss is no longer the forward's
        largest moment. gpt-oss: :meth:`routed_locals` (``trains``: the block's experts)."""
        if not arch.is_moe:
            return 0
        if arch.traits.experts_transposed_with_bias:
            return MoE.routed_locals(arch, tokens, residual, e, trains)
        routed = tokens * arch.experts_per_token
        return routed * (2 * arch.hidden_size * MoE.product_bytes(arch, residual) + INDEX_BYTES)

    @staticmethod
    def routed_locals(
        arch: Architecture, T: int, ee: int, e: int, trains: bool, recompute: bool = False
    ) -> int:
        """gpt-oss's experts in forward (transformers 5.24 integrations/moe.py
        grouped_mm_experts_forward), beside everything the block saves, at the larger of
        two points (measured peaks of its forward and of its checkpointed recompute):

        - the clamped SwiGLU's product (``_apply_gate``): the gathered gate_up bias
          (Tk·2F), the clamped up and the product (Tk·F each; the product is saved when
          the experts train), the expert outputs (Tk·h, saved later) not yet there;
        - the inverse permutation: the weighted routed outputs, their gather back into
          token order and the gathered down bias (Tk·h each); a checkpointed recompute
          stops before the gather (its index is the last tensor the block saves).

        At both, the routed inputs (Tk·h, saved only when the experts train) and the
        sorted expert ids and the arange (Tk int64) are the function's locals; ``ee`` is
        the experts' dtype, ``e`` the router's."""
        h, f, Tk = arch.hidden_size, arch.intermediate_size, T * arch.experts_per_token
        inputs = 0 if trains else h
        at_gate = 2 * f + f + (0 if trains else f) - h
        at_permutation = (2 if recompute else 3) * h
        ids = Tk * INDEX_BYTES * (1 if trains else 2) + Tk * e  # (+ the top-k values)
        return Tk * ee * (max(at_gate, at_permutation) + inputs) + ids

    @staticmethod
    def backward_workspace(
        arch: Architecture, e: int, T: int, residual: int, looped_bytes: int = 0
    ) -> int:
        """transformers 5's grouped experts, first in their block's backward: beside the
        incoming gradient (T·h), the gradient gathered back to routed order and the two
        gradients of the fp32 routing-weight product (Tk·h fp32 each), and the expert
        outputs' gradient cast to the compute dtype. Measured on tiny Mixtral (QLoRA,
        2026-11-29): within 0.4 % of the experts' backward peak; it shows under FSDP, and
        wherever the loss is not the step's largest moment."""
        if not arch.is_moe:
            return 0
        h = arch.hidden_size
        Tk = T * arch.experts_per_token
        if looped_bytes:
            return MoE.looped_backward(arch, T, looped_bytes, residual)
        if arch.traits.router_topk_softmax:
            # gpt-oss: its routed outputs are in the experts' dtype (no cast of them); the
            # gradients of the routed order, of the product and of its factor (3·Tk·h), or
            # for experts wider than h the clamped SwiGLU's gate_up gradient (2F) beside
            # the down input's (h); measured on its MLP alone (CPU, frozen experts: 3·Tk·h
            # for F <= h, (2F + h)·Tk at F = 2h, bf16 and fp32)
            width = max(3 * h, 2 * arch.intermediate_size + h)
            return Tk * width * residual + T * h * e
        # (the product's dtype: fp32 for Mixtral; the experts' where the routing weights
        # are in the router's dtype, Qwen3-MoE and OLMoE: measured on tiny OLMoE, bf16,
        # the checkpointed backward +9.9 % with fp32 here)
        p = MoE.product_bytes(arch, residual)
        return Tk * h * (3 * p + e) + T * h * e

    @staticmethod
    def looped_backward(arch: Architecture, T: int, ee: int, r: int) -> int:
        """transformers 4's loop over the experts in backward, one expert at a time (the
        last first), beside what the block keeps, at the larger of two moments (n = Tk/E
        routed tokens per expert; ``ee`` the experts' output dtype, ``r`` the hidden
        states'): the SwiGLU product's backward, the down projection's input gradient
        and the two factors' gradients (3·n·f); and the gather's backward, its gradient
        scattered into a new zero T·h tensor (index_put) beside the expert's n·h input
        gradient. Measured on a re-implementation of the 4.48.1 block (CPU, balanced
        routing; tests/test_moe_linears.py): the peak is at one of the two, less the
        tensors that expert's backward has freed by then (at most its weighted and its
        saved outputs, 2·n·h), which the estimate keeps, on the safe side."""
        n = -(-T * arch.experts_per_token // arch.num_experts)
        h = arch.hidden_size
        return max(3 * n * arch.intermediate_size * ee, T * h * r + n * h * ee)


def _stack(ex: ExpertLoRA, ee: int) -> int:
    """Bytes of one expert parameter rebuilt whole (E·in·out in the experts' dtype)."""
    lin = ex.linear
    return lin.copies * lin.in_features * lin.out_features * ee


def _factors(ex: ExpertLoRA, ee: int, ae: int) -> int:
    """Bytes of its LoRA factors cast to the experts' dtype (none in the same dtype)."""
    lin = ex.linear
    return 0 if ae == ee else ex.rank * lin.copies * (lin.in_features + lin.out_features) * ee
