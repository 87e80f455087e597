"""peft's AdaLoRA on a linear (its SVD-form adapter beside LoRA's items), the orthogonal
regulariser its model adds to the loss, and the rank allocator's state.

What runs (peft 0.21.2 = huggingface/peft@5d602fdb, identical files
``src/peft/tuners/adalora/layer.py`` and ``model.py``):

- ``SVDLinear.update_layer`` (layer.py l.69-82): ``lora_A`` (r × in), ``lora_E`` (r × 1),
  ``lora_B`` (out × r), r = ``init_r``, and ``ranknum`` (1 value, ``requires_grad=False``).
- ``SVDLinear.forward`` (layer.py l.195): ``result += (dropout(x) @ (lora_A * lora_E).T @
  lora_B.T) * scaling / ranknum``, with ``ranknum = self.ranknum + 1e-5``: the input cast
  and lora_A's r-wide output are kept as LoRA keeps them; besides, the product A·E (r × in)
  when the input needs a gradient, the 1-value ``ranknum + 1e-5``, and the scaled output
  (T × out) where ``ranknum`` requires a gradient (:func:`ftmem.versions.adalora_ranknum_trains`).
  The sum is made in place: no sum tensor.
- ``AdaLoraModel.forward`` (model.py l.229-256): when the model returns a loss, adds
  0.5 · mean over lora_A and lora_B of ‖A·Aᵀ − I‖_F and ‖BᵀB − I‖_F; each norm keeps its
  r × r input (and its 1-value result) until backward.
- ``RankAllocator.update_ipt`` (layer.py l.409-425), called by ``update_and_allocate``
  after ``optimizer.step()`` (method_comparison/MetaMathQA/run.py@5d602fdb l.289-290):
  ``ipt``, ``exp_avg_ipt`` and ``exp_avg_unc`` = ``zeros_like(p)`` for every lora_A, lora_E
  and lora_B, kept for the run; each EMA update holds three temporaries of one
  parameter. ``mask_to_budget`` (l.440-490) then scores per rank (r-sized vectors, one
  parameter-sized product at a time) and ``masked_fill_``s lora_E in place. That state
  and those temporaries are the optimizer step's (ftmem.optim.adalora_state_bytes).
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig
from ftmem.versions import adalora_ranknum_trains


@register("adalora")
class AdaLoRA:
    """AdaLoRA's own part of an adapted linear (its LoRA part is ``LoRA``'s)."""

    @staticmethod
    def saved(ctx: LayerContext, lin: Linear, side: Side, T: int, in_grad: bool) -> list[Saved]:
        """What SVDLinear keeps beyond LoRA's items: A·E when the input needs a gradient
        (no autocast: under autocast it is its 16-bit cast, one of LoRA's weight copies),
        ``ranknum + 1e-5``, and the scaled output when ``ranknum`` trains."""
        dt = ctx.plan.dtypes
        ae = BYTES_PER_ELEMENT[dt.adapter]
        out = [Saved(f"{lin.label} adalora ranknum + 1e-5", ae, Kind.LORA, side, (lin,))]
        if in_grad and not dt.autocast:
            size = ctx.run.r * lin.in_features * ae
            out.append(
                Saved(f"{lin.label} adalora A·E (r={ctx.run.r})", size, Kind.LORA, side, (lin,))
            )
        if adalora_ranknum_trains(ctx.run, dt):
            size = T * lin.out_features * (ctx.e if dt.autocast else ae)
            what = f"{lin.label} adalora scaled output (ranknum's gradient)"
            out.append(Saved(what, size, Kind.LORA, side, (lin,)))
        return out

    @staticmethod
    def forward_transient(plan: MethodPlan, lin: Linear, base_e: int, lora_e: int, T: int) -> int:
        """An SVDLinear's forward at its largest moment: the base output, B's product and
        its scaled copy, then the scaled copy and its division by ``ranknum`` (promoted
        to the adapter dtype: ranknum is a 1-D tensor in it); the sum is in place."""
        div_e = max(lora_e, BYTES_PER_ELEMENT[plan.dtypes.adapter])
        return T * lin.out_features * (base_e + lora_e + div_e)

    @staticmethod
    def orth_saved(plan: MethodPlan, run: RunConfig) -> list[Saved]:
        """The regulariser's graph, kept from the end of forward to backward: per lora_A
        and lora_B, the norm's r × r input (A·Aᵀ − I or BᵀB − I) and its 1-value result;
        under autocast both are 16-bit (the product is; torch.norm is not on autocast's
        fp32 list) and the product keeps 16-bit casts of the matrix and of its transpose
        (the cast cache holds leaves only; measured)."""
        if not plan.orth_regularised:
            return []
        dt = plan.dtypes
        e = BYTES_PER_ELEMENT[dt.compute]
        ae = e if dt.autocast else BYTES_PER_ELEMENT[dt.adapter]
        total = 0
        for g in plan.groups:
            if not g.name.endswith((".lora_A", ".lora_B")):
                continue
            r = g.shape[0] if g.name.endswith(".lora_A") else g.shape[1]
            casts = 2 * g.numel * e if dt.autocast else 0
            total += g.count * (r * r * ae + ae + casts)
        return [Saved("adalora orthogonal regulariser (A·Aᵀ − I, BᵀB − I)", total)] if total else []
