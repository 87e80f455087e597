"""peft adapters whose forward casts its sum back to the input's dtype
(``result.to(previous_dtype)``): under autocast over fp32 weights such an adapted linear
answers in fp32, where LoRA's answers in the base output's 16-bit dtype. What reads that
output keeps it wider (an MLP's gate and up outputs), or casts it (sdpa's values).

peft 0.21.2 (the same at huggingface/peft@5d602fdbff04, the MetaMathQA release):
tuners/gralora/layer.py Linear.forward l.386, tuners/delora/layer.py
DeloraLinear.forward l.266, tuners/deft/layer.py DeftLinear.forward l.352,
tuners/lokr/layer.py LoKrLayer.forward l.312 (LoKr's adapted linears: state.kronecker). (VeRA's own rule: adapters/vera.py ``VeRA.output_bytes``.)
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.ops.context import BlockState, LayerContext

# methods (run.method) whose adapted linears answer in their input's dtype under autocast
CASTS_BACK = frozenset({"gralora", "delora", "deft", "lokr"})


def output_bytes(ctx: LayerContext, state: BlockState, lin: Linear, base: int) -> int:
    """Element size of an adapted linear's output: the residual stream's (the dtype of the
    norm output a feed-forward linear reads: fp32 over fp32 weights) under autocast for
    the CASTS_BACK methods (measured: GraLoRA on Llama's all-linear under bf16-mixed, gate
    and up outputs fp32, activations -13.6 % when taken as 16-bit); ``base`` otherwise."""
    adapted = ctx.run.method in CASTS_BACK and lin.module in state.adapted | state.kronecker
    return ctx.residual if adapted and ctx.plan.dtypes.autocast else base


def values_in_input_dtype(ctx: LayerContext) -> bool:
    """The value projection answers in the residual's dtype, wider than the compute dtype
    (autocast over fp32 weights): sdpa's cast then copies the values out of a fused q/k/v
    projection's output instead of keeping that whole output through a view (measured:
    GraLoRA on Phi-3's qkv_proj under bf16-mixed, activations +6 % when taken as the view)."""
    if ctx.run.method not in CASTS_BACK or not ctx.plan.dtypes.autocast:
        return False
    adapted = (*ctx.plan.adapted, *ctx.plan.kronecker)
    return ctx.residual != ctx.e and any("v" in lin.roles for lin in adapted)
