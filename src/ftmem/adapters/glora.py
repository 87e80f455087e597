"""peft's GLoRA on a linear: the weight rebuilt in every forward as W + W ⊙ A + B and run
beside the frozen linear.

What runs (huggingface/peft src/peft/tuners/glora/layer.py ``GloraLinear.forward``, the
same in 0.21.2 and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40), on a linear without a
bias (one with a bias is refused); under autocast see ``GLoRA.saved`` and
``GLoRA.forward_moment`` (calibration/notes/peft.md, "Autocast, stop 47"):

- ``base_result = base_layer(x)`` (T × out).
- A and B: config "lora": ``Xd @ Xu`` (out × in, the adapter dtype, fp32) cast to W's dtype
  (a copy on a 16-bit base; the product itself on an fp32 one); config "vector": the
  out × 1 vector, cast the same way. C, D, E are zero buffers (in × 1, out, out; W's dtype)
  on a linear without a bias, read but unused.
- ``weight_eff = W + W * A + B``: out × in (W's dtype), with two out × in temporaries
  (W * A, W + W * A); the multiply keeps W (a parameter), ``F.linear(x, weight_eff)``
  keeps the input itself and, when x needs a gradient, weight_eff.
- ``result = base_result + adapted``; ``result = result - 1 * base_result``: the forward's
  largest moment holds base_result, adapted, the first sum, ``1 * base_result`` and the
  result (T × out each), A, B and weight_eff.

In backward: weight_eff's gradient (out × in), A's (``grad * W``, out × in) and, for the
"lora" path on a 16-bit base, its fp32 cast (out × in × 4) before Xd's and Xu's.

Measured alone (one peft GloraLinear, bf16 and fp32 bases, lora and vector paths, the input
with and without a gradient; tests/test_glora.py): kept and forward peak exactly these,
the backward's largest moment without an input gradient exactly these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ftmem.arch import Architecture, Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.errors import InvalidInputError
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

if TYPE_CHECKING:
    from ftmem.methods import MethodPlan
    from ftmem.ops.context import BlockState, LayerContext

FP32 = 4


def check(arch: Architecture, linears: tuple[Linear, ...]) -> tuple[Linear, ...]:
    """GLoRA's targets, refusing a linear with a bias (its C, D, E then train and
    ``W @ C`` joins the forward: not measured)."""
    biased = [lin.leaf for lin in linears if lin.bias]
    if biased:
        raise InvalidInputError(
            f"GLoRA on linears with a bias ({', '.join(sorted(set(biased)))} of {arch.name}) "
            "is not modelled; choose --glora-targets without one."
        )
    return linears


def groups(linears: tuple[Linear, ...], run: RunConfig, adapter: Callable[..., Any]) -> list[Any]:
    """Per linear, A's and B's parameters (peft 0.21.2 tuners/glora/layer.py
    GloraLayer.update_layer): "lora" Xd (out × r) and Xu (r × in) each, "vector" X
    (out × 1) each."""
    r = run.glora[0]
    out: list[Any] = []
    for lin in linears:
        for path in ("glora_A", "glora_B"):
            name = f"{lin.module}.{path}"
            if run.glora_vector:
                out.append(adapter(f"{name}.X", (lin.out_features, 1), lin))
            else:
                out.append(adapter(f"{name}.Xd", (lin.out_features, r), lin))
                out.append(adapter(f"{name}.Xu", (r, lin.in_features), lin))
    return out


def buffer_bytes(plan: MethodPlan, run: RunConfig, layers: int) -> int:
    """The zero buffers C (in × 1), D and E (out each) on each bias-free GLoRA linear, in
    W's dtype (measured), in each block holding it."""
    if run.method != "glora":
        return 0
    e = BYTES_PER_ELEMENT[plan.dtypes.base]
    total = 0
    for lin in plan.glora:
        blocks = lin.count(layers)
        total += blocks * (lin.in_features + 2 * lin.out_features) * e
    return total


def _paths(plan: MethodPlan, run: RunConfig, lin: Linear, e: int) -> tuple[int, int]:
    """A's (or B's) bytes as the forward holds it (W's dtype), and its product's when
    cast: the lora path's ``Xd @ Xu`` is in the adapter dtype, in the compute dtype under
    autocast (a matmul); the vector path's X in the adapter dtype."""
    dt = plan.dtypes
    be = BYTES_PER_ELEMENT[dt.base]  # W's (e without autocast)
    pe = e if dt.autocast and not run.glora_vector else BYTES_PER_ELEMENT[dt.adapter]
    width = lin.out_features if run.glora_vector else lin.out_features * lin.in_features
    cast = pe != be
    return width * be if cast or not run.glora_vector else 0, width * pe if cast else 0


@register("glora")
class GLoRA:
    """The GLoRA adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """F.linear keeps the input itself (always) and weight_eff when the input needs a
        gradient. Under autocast (linear and matmul: lower precision on CUDA's list as on
        the CPU's) F.linear keeps its 16-bit casts of them: of an fp32 input one copy per
        adapted linear (measured: Llama q,k,v under bf16-mixed, activations -3.8 % when
        taken as one shared input); and the lora path's ``Xd @ Xu`` keeps autocast's cached
        16-bit casts of Xd and Xu, for A and for B (q,v: -1.7 % without them)."""
        out: list[Saved] = []
        mine = [lin for lin in linears if lin.module in state.glora]
        for lin in mine if in_grad else []:
            size = lin.out_features * lin.in_features * ctx.e
            out.append(Saved(f"{lin.label} GLoRA weight_eff", size, Kind.GLORA, side, (lin,)))
        if not ctx.plan.dtypes.autocast:
            return out, bool(mine)
        r, e = ctx.run.glora[0], ctx.e
        for lin in mine if not ctx.run.glora_vector else []:
            size = 2 * r * (lin.out_features + lin.in_features) * e
            what = f"{lin.label} GLoRA Xd, Xu 16-bit casts (A and B)"
            out.append(Saved(what, size, Kind.GLORA, side, (lin,)))
        if in_bytes == e:  # nothing to cast: the input itself, shared
            return out, bool(mine)
        for lin in mine:
            size = ctx.tokens * lin.in_features * e
            out.append(Saved(f"{lin.label} GLoRA input cast", size, Kind.GLORA, side, (lin,)))
        return out, False

    @staticmethod
    def forward_moment(
        plan: MethodPlan, run: RunConfig, lin: Linear, T: int, e: int, casts: int, kept: int
    ) -> int:
        """A GLoRA linear's largest forward moment, whole: building B (A, B's product and
        its cast to W's dtype) or W + W ⊙ A (A, B and two out × in temporaries, W's
        dtype), beside the base output; or the output's (five T × out tensors, A, B,
        weight_eff). ``casts``: autocast's 16-bit casts of weight_eff and of the input for
        F.linear (measured: Llama all-linear, bf16-mixed, 8 tokens: forward -7.4 %
        without them), alive at F.linear's output; ``kept``: those of them the graph keeps,
        alive at the sums (the input's always, weight_eff's for the input's gradient)."""
        a, product = _paths(plan, run, lin, e)
        w = lin.out_features * lin.in_features * BYTES_PER_ELEMENT[plan.dtypes.base]
        t = T * lin.out_features * e
        at_linear = 2 * t + 2 * a + w + casts
        at_sums = 5 * t + 2 * a + w + kept
        return max(t + 2 * a + product, t + 2 * a + 2 * w, at_linear, at_sums)

    @staticmethod
    def forward_build(
        plan: MethodPlan,
        run: RunConfig,
        T: int,
        e: int,
        kept: bool,
        in_bytes: Callable[[Linear], int],
    ) -> int:
        """The largest GLoRA forward beyond the block's kept tensors when it keeps them
        (weight_eff, or under autocast its cast and the input's, and the output are
        counted there), else whole. ``in_bytes``: a linear's input element size."""
        held = [0]
        dt = plan.dtypes
        for lin in plan.glora:
            x_cast = T * lin.in_features * e if dt.autocast and in_bytes(lin) != e else 0
            w_cast = lin.out_features * lin.in_features * e
            w_cast = w_cast if dt.autocast and BYTES_PER_ELEMENT[dt.base] != e else 0
            own = (lin.out_features * lin.in_features + T * lin.out_features) * e + x_cast
            casts = x_cast + w_cast
            moment = GLoRA.forward_moment(plan, run, lin, T, e, casts, casts if kept else 0)
            held.append(moment - (own if kept else 0))
        return max(held)

    @staticmethod
    def backward_moment(plan: MethodPlan, run: RunConfig, e: int, kept: bool) -> int:
        """The largest GLoRA backward: weight_eff's gradient, A's (``grad * W``) and, on the
        lora path over a 16-bit base, its fp32 cast; beyond the block's kept tensors
        (``kept``) less weight_eff, which F.linear's backward has released by then."""
        held = [0]
        for lin in plan.glora:
            w = lin.out_features * lin.in_features
            cast = 0 if run.glora_vector or BYTES_PER_ELEMENT[plan.dtypes.adapter] == e else FP32
            held.append(w * (2 * e + cast) - (w * e if kept else 0))
        return max(held)
