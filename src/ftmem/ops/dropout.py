"""Dropout: the mask it keeps for backward."""

from __future__ import annotations

from ftmem.ops.context import LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side


@register("dropout")
class Dropout:
    """A dropout whose input needs a gradient keeps its mask; it has no parameters, no
    workspace of note, and a recompute draws the same mask again (RNG state restored)."""

    @staticmethod
    def mask_bytes(device: str, elem_bytes: int) -> int:
        """CUDA's fused dropout keeps a bool mask; the CPU path multiplies by a scaled mask
        in the input's dtype."""
        return 1 if device == "cuda" else elem_bytes

    @staticmethod
    def saved(
        ctx: LayerContext,
        label: str,
        elements: int,
        elem_bytes: int,
        side: Side,
        rate: float | None = None,
        kind: Kind = Kind.DROPOUT,
    ) -> list[Saved]:
        """The model's own dropout on a tensor of ``elements``: ``rate``, by default T5's
        ``arch.dropout_rate`` (a decoder's are residual_dropout, embedding_dropout)."""
        if not (ctx.arch.dropout_rate if rate is None else rate):
            return []
        mask = Dropout.mask_bytes(ctx.run.device, elem_bytes)
        return [Saved(f"{label} dropout mask", elements * mask, kind, side)]
