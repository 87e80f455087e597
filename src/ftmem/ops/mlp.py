"""The feed-forward: gated (gate, up, activation, product, down) or plain (up,
activation, down), as transformers 5 writes each family's."""

from __future__ import annotations

from collections.abc import Iterable

from ftmem.adapters import answer_dtype
from ftmem.adapters.ia3 import IA3
from ftmem.adapters.shared_bank import output_bytes as adapted_output_bytes
from ftmem.arch import Architecture, Linear, Param, activation_params, layout
from ftmem.dtypes import FP32
from ftmem.methods import MethodPlan
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.dropout import Dropout
from ftmem.ops.linear import LinearOp, fused_lora_group
from ftmem.ops.moe import MoE
from ftmem.ops.norm import NORM_KINDS
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.profiles import fused_lora_applies, profile_of
from ftmem.run import RunConfig


def written_out_gelu(arch: Architecture, run: RunConfig) -> bool:
    """The tanh-GELU written out op by op (Family.gelu_written_out: GPT-2, Phi in
    transformers), unless the framework builds its own MLP with one GELU kernel (LitGPT:
    Lightning-AI/litgpt@8641822b lit_gpt/model.py GptNeoxMLP.forward,
    torch.nn.functional.gelu(x, approximate=...))."""
    return (
        arch.traits.gelu_written_out
        and arch.activation == "gelu_tanh"
        and not profile_of(run).gelu_one_kernel
    )


def shared_expert_gate_saved(
    ctx: LayerContext, state: BlockState, x_grad: bool, shared: list[Linear]
) -> list[Saved]:
    """Qwen2-MoE's gate on its shared expert (Family.shared_expert_gate; transformers 5.25
    modeling_qwen2_moe.py Qwen2MoeSparseMoeBlock.forward:
    ``F.sigmoid(self.shared_expert_gate(x)) * shared_expert_output``). The sigmoid keeps
    its output s (T × 1) for its gradient, which the multiply keeps too (one storage) for
    the shared expert's gradient; the multiply keeps the shared expert's output (T × h)
    for s's gradient, where s needs one (the MLP's input does, or the gate's weight
    trains). Both are in the shared expert's output dtype (the 16-bit projections' under
    autocast; nothing upcasts the gate). The gate's linear keeps, for its weight's
    gradient, its input: the MLP's input the shared expert's linears keep already, or
    under autocast its own 16-bit copy (T × h); and under autocast, for its input's
    gradient, the 16-bit copy of its weight (h). Measured on tiny Qwen2-MoE (CPU, torch
    2.13): per block 300 + 28,800 B and the 192 B weight copy under bf16-mixed LoRA,
    600 + 57,600 B in fp32, + the 28,800 B input copy under bf16-mixed full finetuning."""
    T, h, oe = ctx.tokens, ctx.arch.hidden_size, ctx.projection_out_bytes
    # (the gate is no Linear of the layout: only the block's own training reaches it)
    gate_trains = state.weights_trainable
    s_grad = x_grad or gate_trains
    shared_grad = x_grad or gate_trains or any(lin.module in state.output_grad for lin in shared)
    out = []
    if s_grad or shared_grad:
        out.append(Saved("shared expert gate sigmoid (T × 1)", T * oe, Kind.MLP_HIDDEN, Side.MLP))
    if s_grad:
        what = "shared expert output (its gate's multiply)"
        out.append(Saved(what, T * h * oe, Kind.MLP_HIDDEN, Side.MLP))
    autocast = ctx.plan.dtypes.autocast
    if gate_trains and autocast and ctx.residual > 2:
        out.append(
            Saved("shared expert gate input (16-bit)", T * h * 2, Kind.LINEAR_INPUT, Side.MLP)
        )
    if x_grad and ctx.plan.dtypes.casts_weights:
        out.append(Saved("shared expert gate 16-bit weight copy", h * 2, Kind.MOE, Side.MLP))
    return out


def xielu_saved(ctx: LayerContext, state: BlockState, n: int, xe: int) -> list[Saved]:
    """What xIELU's Python path keeps beyond its input x (the up projection's output, ``n``
    elements of ``xe`` bytes, counted by the caller) where x needs a gradient
    (transformers 5.25 activations.py XIELUActivation._xielu_python: ``where(x > 0,
    alpha_p * x * x + beta * x, (expm1(min(x, eps)) - x) * alpha_n + beta * x)``, the
    alphas ``softplus`` of (1,)-shaped parameters): the product alpha_p·x (its second
    multiply's operand), in the promotion of x's and the alphas' dtypes (fp32 over a 16-bit
    x where the parameters are fp32, as under autocast: the alphas are 1-D, not 0-dim);
    expm1's result (its backward reads it), in x's dtype; the bool mask x > 0 (where's
    condition); the two softplus outputs (1,) the multiplies keep for x's gradient; and,
    where the alphas train, the difference expm1(...) − x, which alpha_n's multiply keeps
    for alpha_n's gradient. Measured on the CPU (tests/test_plain_mlp_activations.py): fp32, bf16 and
    bf16-mixed, the alphas trained or frozen."""
    pb = ctx.residual  # (the alphas are in the non-linear parameters' dtype)
    alphas = state.weights_trainable
    parts = (n * max(xe, pb), n * xe, *((n * xe,) if alphas else ()), n, pb, pb)
    what = "xIELU: alpha_p·x, expm1, x > 0" + (", expm1 − x" if alphas else "")
    return [Saved(what, sum(parts), Kind.MLP_HIDDEN, Side.MLP, parts=parts)]


def routed_width(arch: Architecture) -> int:
    """The width of the MLP's intermediates per token: f, or k·f over the routed experts."""
    return arch.intermediate_size * (arch.experts_per_token if arch.is_moe else 1)


@register("mlp")
class MLP:
    """The MLP's linears are the linear op's; this is what lies between them."""

    @staticmethod
    def parameters(arch: Architecture) -> tuple[Param, ...]:
        """The activation's own parameters (xIELU's alpha_p and alpha_n)."""
        return tuple(activation_params(arch))

    @staticmethod
    def saved(
        ctx: LayerContext,
        state: BlockState,
        x_grad: bool,
        linears: list[Linear],
        shared_input: bool,
    ) -> list[Saved]:
        """The MLP's (or the experts') saved tensors. ``shared_input``: its input is the
        norm output q/k/v read too, already kept (Falcon-7B's one norm)."""
        if any(lin.roles == ("router",) for lin in linears):
            # DeepSeek's shared experts: a dense MLP beside the routed ones, on the same input
            shared = [lin for lin in linears if lin.is_module and lin.roles != ("router",)]
            out = MoE.saved(ctx, state, x_grad, shared_input)
            if shared:
                width = ctx.arch.shared_experts_size
                kept = shared_input or MoE.router_keeps_input(ctx, state)
                out += MLP.dense_saved(ctx, state, x_grad, shared, kept, width)
                if ctx.arch.traits.shared_expert_gate:
                    out += shared_expert_gate_saved(ctx, state, x_grad, shared)
            return out
        # (the down projection reads the MLP's width: a dense block of a DeepSeek stack has
        # its own, dense_intermediate_size)
        width = next(lin.in_features for lin in linears if "down" in lin.roles)
        return MLP.dense_saved(ctx, state, x_grad, linears, shared_input, width)

    @staticmethod
    def dense_saved(
        ctx: LayerContext,
        state: BlockState,
        x_grad: bool,
        linears: list[Linear],
        shared_input: bool,
        f: int,
    ) -> list[Saved]:
        """A dense MLP of width ``f``: the block's, or the shared experts beside the routed."""
        arch = ctx.arch
        T, e, h = ctx.tokens, ctx.e, arch.hidden_size
        ups = [lin for lin in linears if set(lin.roles) & {"gate", "up"}]
        downs = [lin for lin in linears if "down" in lin.roles]
        if (
            arch.mlp == "gated"
            and not arch.is_moe
            and fused_lora_group(ctx.run, ups + downs, state)
        ):
            return MLP.fused_lora(ctx, tuple(ups), shared_input)
        any_grad = (
            x_grad or state.weights_trainable or any(lin.module in state.output_grad for lin in ups)
        )
        out = LinearOp.saved(ctx, ups, state, x_grad, "MLP", h, ctx.residual, shared_input)
        if any_grad:
            if arch.mlp == "gated" and ctx.compiled:
                # a compiled layer recomputes act(gate) in backward: a pointwise op whose
                # users all fuse (pytorch/pytorch torch/_functorch/partitioners.py
                # @00c07b93c9e8 is_materialized_backwards); gate and up are matmul
                # outputs, kept (torchtune/modules/feed_forward.py@1814feb17a90 forward:
                # w2(activation(w1(x)) * w3(x)))
                oe = ctx.projection_out_bytes
                what, size = "gate and up outputs (activation recomputed)", 2 * T * f * oe
            elif arch.mlp == "gated":
                oe = ctx.projection_out_bytes
                gate_e, up_e = (answer_bytes(ctx, state, lin, oe) for lin in ups[:1] + ups[-1:])
                what = "gate, up and activation outputs"
                size = T * f * (2 * gate_e + up_e) if ups else 3 * T * f * oe
            elif written_out_gelu(arch, ctx.run):
                # GPT-2's NewGELU is written out: x, 0.5x, tanh(...) and 1 + tanh(...), in
                # c_fc's output dtype (fp32 from a 4-bit c_fc under autocast)
                oe = ctx.projection_out_bytes
                what, size = "up output + tanh-GELU intermediates", 4 * T * f * oe
            else:  # (fp32 from a 4-bit up projection under autocast)
                oe = ctx.projection_out_bytes
                oe = max((answer_bytes(ctx, state, lin, oe) for lin in ups), default=oe)
                what, size = "up output (activation input)", T * f * oe
            out.append(Saved(what, size, Kind.MLP_HIDDEN, Side.MLP))
            if arch.activation == "xielu":
                out += xielu_saved(ctx, state, T * f, oe)
        # (VeRA's and the other answering adapters' product into down: measured as modelled)
        down_in = max(
            (ctx.residual if _rotation_answers(ctx, state, u) else e for u in ups), default=e
        )
        if arch.activation == "xielu":  # (its output is promoted to its alphas' dtype)
            down_in = max(down_in, ctx.residual)
        out += LinearOp.saved(ctx, downs, state, any_grad, "down_proj", f, down_in)
        return out

    @staticmethod
    def fused_lora(ctx: LayerContext, ups: tuple[Linear, ...], shared_input: bool) -> list[Saved]:
        """A gated MLP as one LoRA Function (profiles.Profile.fused_lora): it keeps its
        input X and the gate and up outputs e and g, each in X's dtype (matmul_lora
        answers in ``X.dtype``); the activation and the product h are rebuilt in backward
        from e and g by the kernel that also makes their gradients, in place
        (unslothai/unsloth unsloth/kernels/fast_lora.py@015bdef0d94a LoRA_MLP.forward
        ``save_for_backward(gateA, gateB, upA, upB, downA, downB, X, e, g)``;
        kernels/swiglu.py swiglu_DWf_DW_dfg_kernel). ``shared_input``: X is a norm
        output already kept."""
        T, f, h = ctx.tokens, ctx.arch.intermediate_size, ctx.arch.hidden_size
        x = ctx.residual  # the post-attention norm's output: X.dtype
        out = []
        if not shared_input:
            what = "MLP: input (fused LoRA Function)"
            out.append(Saved(what, T * h * x, Kind.LINEAR_INPUT, Side.MLP, ups))
        what = "gate and up outputs (fused LoRA Function)"
        out.append(Saved(what, 2 * T * f * x, Kind.MLP_HIDDEN, Side.MLP))
        return out

    @staticmethod
    def runs_fused_lora(arch: Architecture, run: RunConfig, plan: MethodPlan) -> bool:
        """The trained blocks' gated MLP runs as one fused LoRA Function (MLP.fused_lora)."""
        if arch.mlp != "gated" or arch.is_moe or not fused_lora_applies(run):
            return False
        mlp = [lin for lin in layout(arch).linears if set(lin.roles) & {"gate", "up", "down"}]
        adapted = frozenset(lin.module for lin in plan.adapted)
        return fused_lora_group(run, mlp, BlockState(True, False, adapted))

    @staticmethod
    def fused_lora_backward(arch: Architecture, plan: MethodPlan, e: int, T: int) -> int:
        """The fused LoRA MLP's backward beyond what it keeps: the down projection's input
        gradient DW (T·f, made by matmul_lora into a new tensor), whose kernel writes h,
        df and de over DW, e and g; beside it the incoming gradient (T·h) and, for a 4-bit
        MLP, one weight dequantised afresh (f·h·e: up's, then gate's; dX is written over
        X, ``out = X``) (unslothai/unsloth unsloth/kernels/fast_lora.py@015bdef0d94a
        LoRA_MLP.backward; kernels/utils.py fast_dequantize without the global buffer)."""
        f, h = arch.intermediate_size, arch.hidden_size
        r = plan.dtypes.residual_bytes
        four_bit = plan.dtypes.quantized in ("nf4", "fp4")
        # (with the fp32 absmax per 64-value block it dequantises first)
        dequant = f * h * e + f * h // 64 * FP32 if four_bit else 0
        return T * f * e + T * h * r + dequant

    @staticmethod
    def gradients(arch: Architecture, run: RunConfig) -> int:
        """How many T·f gradients the MLP's backward holds at once: the gated product's two,
        the written-out tanh-GELU's three (x³, tanh and their product), or one."""
        if arch.mlp == "gated":
            return 2
        if written_out_gelu(arch, run):
            return 3
        if arch.activation == "relu2":
            return 4
        if arch.activation == "xielu":
            return 5
        return 1

    @staticmethod
    def backward_workspace(
        arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int
    ) -> int:
        """The MLP's backward: the gradients of its intermediate and of gate/up outputs
        (T·f each) plus the fp32 residual gradient (T·h); IA³'s scaling if larger."""
        f = routed_width(arch)
        width = MLP.gradients(arch, run) * f
        r = plan.dtypes.residual_bytes
        if arch.activation == "xielu":  # (in its output's dtype: the alphas' promotion)
            e = max(e, r)
        return max(T * width * e + T * arch.hidden_size * r, IA3.backward_workspace(plan, e, T))

    @staticmethod
    def activation_output_gradient(
        arch: Architecture, run: RunConfig, block: Iterable[Saved], e: int, T: int
    ) -> int:
        """A single fused activation's backward (GELU, tanh-GELU in one op) writes its
        input's gradient while its output's is alive: two T·f tensors at once. Where the
        down projection keeps its input (its weight trains, an adapter reads it), its own
        backward holds as much (that input and the new gradient), and backward_workspace's
        one T·f stands for both; where it keeps none (frozen, no adapter: LoRA on the
        attention) the activation's moment is one T·f above it (GeluBackward0 returns a new
        tensor beside the incoming one). Measured on the tiny StarCoder2, LoRA bf16 with
        checkpointing: the backward peak is gelu_backward's output, T·f above what the
        estimate held (-4.0 % without)."""
        if MLP.gradients(arch, run) != 1 or arch.is_moe:
            return 0
        if any(any("down" in lin.roles for lin in x.linears) for x in block):
            return 0  # (its input kept for its weight, an adapter or IA³'s scale)
        return T * routed_width(arch) * e

    @staticmethod
    def output_dropout_freed(block: Iterable[Saved]) -> int:
        """The MLP output's dropout mask (StarCoder2's, GPT-2's residual dropout): the
        dropout's multiply is the block's first backward op, and autograd releases a node's
        saved tensors once it has run without retain_graph (torch 2.13
        torch/csrc/autograd/node.h l.560-561 ``release_variables``), so the mask is gone
        when the MLP's own backward holds its gradients (measured: the tiny StarCoder2's
        recomputed block, LoRA bf16 with checkpointing, holds only its attention output's
        mask at gelu_backward)."""
        return sum(
            x.nbytes for x in block if x.kind is Kind.RESIDUAL_DROPOUT and x.side is Side.MLP
        )

    @staticmethod
    def down_input_freed(arch: Architecture, run: RunConfig, block: Iterable[Saved]) -> int:
        """The down projection's saved input, gone (its weight gradient made) when the MLP's
        largest backward moment comes: the gated product's gradients, or those of GPT-2's
        written-out tanh-GELU (measured: full finetuning with checkpointing, Llama at 1,024
        tokens +4.6 % without, GPT-2 +2.3 %). A single fused activation (Falcon's GELU)
        holds one T·f gradient, no more than the down projection's own backward, which
        runs with that input still saved: nothing to take off (measured, Falcon bf16-mixed
        with checkpointing: -5.8 % when taken off)."""
        if MLP.gradients(arch, run) == 1:
            return 0
        return sum(x.nbytes for x in block if _down_input(x))

    @staticmethod
    def down_weight_copy_freed(arch: Architecture, run: RunConfig, block: Iterable[Saved]) -> int:
        """Autocast's 16-bit copy of the down projection's weight, which its matmul saves,
        gone with its input when the product's (or GPT-2's GELU's) gradients come
        (down_input_freed): autograd released it once down's node ran. Traced: Llama full
        bf16-mixed with checkpointing, the product's backward holds gate's and up's copies,
        not down's (+0.7 % with it)."""
        if MLP.gradients(arch, run) == 1:
            return 0
        return sum(
            x.nbytes
            for x in block
            if x.kind is Kind.WEIGHT_COPY and any("down" in lin.roles for lin in x.linears)
        )

    @staticmethod
    def forward_transient(arch: Architecture, run: RunConfig, e: int, T: int) -> int:
        """A block that keeps nothing for backward (frozen, checkpointed or offloaded)
        still builds its MLP intermediates in forward: gate, activation, up and their
        product (GPT-2's written-out tanh-GELU: four T·f terms too; a plain MLP: its
        output and activation)."""
        if arch.traits.clamped_swiglu:
            # gpt-oss's experts at the clamped SwiGLU's product: gate_up and its gathered
            # bias (2F each), the clamped gate and up, the sigmoid's product, up + 1 and the
            # product (F each), beside the routed inputs (h; measured, tiny gpt-oss with
            # checkpointing: the forward -11 % without them)
            per_routed = 9 * arch.intermediate_size + arch.hidden_size
            return T * arch.experts_per_token * per_routed * e
        terms = 4 if arch.mlp == "gated" or written_out_gelu(arch, run) else 2
        if (run.grad_ckpt or run.activation_offload) and arch.mlp == "gated":
            # a checkpointed or offloaded block's forward (grad enabled, nothing saved on
            # the GPU): the gate is freed once activated, three T·f at once (Llama,
            # Mistral, Qwen2: measured; offloaded, Qwen2 freeze bf16-mixed)
            terms = 3
        return terms * T * routed_width(arch) * e

    @staticmethod
    def offloaded_backward(
        arch: Architecture, run: RunConfig, plan: MethodPlan, block: list[Saved], e: int, T: int
    ) -> int:
        """With activations offloaded: the MLP's backward workspace beside what it brings
        back, two T·f tensors at once (the gated product's inputs). GPT-2's written-out
        tanh-GELU (``0.5 * x * (1 + tanh(c * (x + 0.044715 * x**3)))``) peaks at x³'s
        PowBackward0: autograd runs the higher sequence numbers first, so the 0.5·x
        product's gradient waits for its node (run last), the sum's in x's producer's
        buffer and x³'s own arrive: the workspace's three T·f. Beside them x comes back
        and pow_backward's ``grad * (exp * self.pow(exp - 1))`` (torch 2.13
        torch/csrc/autograd/FunctionsManual.cpp) holds its three temporaries to the end
        of that expression: four T·f more (measured on GPT-2 offloaded, fp32 and bf16:
        seven T·f at that node)."""
        items = [x.nbytes for x in block if _offloaded_item(x)]
        at_once = 4 if written_out_gelu(arch, run) else 2
        back = min(max(items, default=0), at_once * T * routed_width(arch) * e)
        return MLP.backward_workspace(arch, run, plan, e, T) + back


def _down_input(x: Saved) -> bool:
    """A saved input of the MLP's down projection."""
    return x.kind is Kind.LINEAR_INPUT and any("down" in lin.roles for lin in x.linears)


def _offloaded_item(x: Saved) -> bool:
    """An item the MLP's backward brings back: its linears' (inputs, adapters, weight
    copies) and intermediates' (not its norms', not the experts'). Falcon's and GPT-2's
    linears count too; their labels hid them (measured, Falcon IA³ offloaded, bf16:
    -10.1 % hidden, -1.9 % counted)."""
    return x.side is Side.MLP and x.kind not in NORM_KINDS and x.kind is not Kind.MOE


@register("t5_feed_forward")
class T5FeedForward:
    """T5's feed-forward: wi (gated: wi_0, wi_1) with gelu_new written out, dropout inside,
    wo in its own dtype; its backward is the MLP's (``MLP.backward_workspace``)."""

    @staticmethod
    def saved(
        ctx: LayerContext, state: BlockState, linears: list[Linear], x_grad: bool
    ) -> tuple[list[Saved], bool]:
        """wi (or wi_0, wi_1), the activation (gelu_new written out: x, tanh, x/2, 1 + tanh),
        the gate product, dropout, then wo, which the feed-forward's input is cast to the
        dtype of (fp32 wo under autocast: autocast casts it back, a fresh copy). Returns (saved,
        the output needs a gradient)."""
        arch = ctx.arch
        T, e, f, h = ctx.tokens, ctx.e, arch.intermediate_size, arch.hidden_size
        ups = [lin for lin in linears if set(lin.roles) & {"gate", "up"}]
        down = [lin for lin in linears if "down" in lin.roles]
        out = LinearOp.saved(ctx, ups, state, x_grad, "wi", h, ctx.residual)
        any_grad = (
            x_grad or state.weights_trainable or any(lin.module in state.output_grad for lin in ups)
        )
        if any_grad:
            # bitsandbytes' 4-bit wi return their input's dtype (fp32 under autocast)
            oe = ctx.residual if ctx.quantized_outputs_in_input_dtype else e
            act = 4 if arch.activation == "gelu_tanh" else 1
            if arch.mlp == "gated":
                what = "wi_0 activation intermediates, wi_1 and gelu outputs"
                size = (act + 2) * T * f * oe
            else:
                what, size = "wi activation intermediates", act * T * f * oe
            out.append(Saved(what, size, Kind.MLP_HIDDEN, Side.MLP))
            out += Dropout.saved(ctx, "feed-forward", T * f, oe, Side.MLP)
        shares_relu = (
            arch.mlp == "plain"
            and arch.activation == "relu"
            and not arch.dropout_rate
            and not ctx.plan.dtypes.autocast
        )
        # (shares_relu: wo reads the ReLU's output itself, already kept)
        wo = LinearOp.saved(ctx, down, state, any_grad, "wo", f, e, shares_relu)
        return out + wo, any_grad or any(lin.module in state.output_grad for lin in down)


def _rotation_answers(ctx: LayerContext, state: BlockState, lin: Linear) -> bool:
    """Under autocast peft's OFT, BOFT, HRA and MiSS return a linear's output in its input's
    dtype (``result.to(previous_dtype)``), the residual stream's (fp32 over fp32 weights:
    measured, bf16-mixed); so does their gate and up product, down's input
    (adapters.boft.x_bytes)."""
    returning = state.rotated | state.block_rotated | state.householder | state.miss
    return ctx.plan.dtypes.autocast and lin.module in returning


def answer_bytes(ctx: LayerContext, state: BlockState, lin: Linear, oe: int) -> int:
    """Element size of a feed-forward linear's output: ``oe``, or its input's dtype where
    the method's adapter casts the sum back to it under autocast (_rotation_answers,
    answer_dtype.CASTS_BACK, the shared banks' and VeRA's: shared_bank.output_bytes)."""
    if _rotation_answers(ctx, state, lin):
        return ctx.residual
    return adapted_output_bytes(ctx, state, lin, answer_dtype.output_bytes(ctx, state, lin, oe))
