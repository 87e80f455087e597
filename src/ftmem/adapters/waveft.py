"""peft's WaveFT on a linear: FourierFT's ΔW path (adapters.lycoris: ΔW and the input cast
kept, the build and backward out × in temporaries) with an inverse wavelet transform in
place of the FFT, and what that transform keeps.

What runs (huggingface/peft src/peft/tuners/waveft/layer.py ``WaveFTLayer.get_delta_weight``
and waverec2d.py ``waverec2d``, the same at 0.21.2 and at
5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, the MetaMathQA release), for the default
``use_idwt`` with db1 (no padding)::

    indices = self.waveft_indices[adapter].to(spectrum.device)     # a host copy per call
    dense = torch.zeros(out, in, dtype=spectrum.dtype)
    padded = indices.clone(); mask = (padded[0] < out) & (padded[1] < in)
    dense[padded[:, mask][0], padded[:, mask][1]] = spectrum[mask]  # index_put
    stacked = torch.stack([cA, cH, cV, cD], 1)                     # dense's quarters
    ΔW = conv_transpose2d(stacked, rec_filt, stride=2).squeeze(1) * scaling
    result = base(x) + F.linear(x.to(ΔW.dtype), ΔW)

Kept beyond FourierFT's ΔW and input cast (measured with saved-tensor hooks on one peft
WaveFT Linear, tests/test_waveft.py): conv_transpose2d's input, the stacked quarters
(out × in in the spectrum's dtype), its 2 × 2 × 4 filter, index_put's masked int64 indices
(2 × n) and the indexing's bool mask (n).

``waveft_indices`` is a plain dict that peft's ``_move_adapter_to_device_of_base_layer``
does not move (it moves ParameterDicts, ModuleDicts and BufferDicts): the indices stay on
the host, and each forward copies them to the device (16 · n, held through the build).

Not modelled: wavelet families other than db1 (they pad the coefficient matrix; refused by
having no setting), ``use_idwt=False``, an odd dimension (db1 pads it by one row or column),
Conv1D (refused).

Under autocast (stop 47): the zero matrix, index_put (CUDA's promote list: fp32 only) and
the stack (the CPU's promote list: fp32 only) stay fp32; conv_transpose2d (lower precision
on both devices) casts the quarters and the filter to 16-bit and keeps the casts, so ΔW
is 16-bit, the input goes to it (a copy only from an fp32 stream, as LoHa's) and F.linear
casts nothing more. The CPU measures CUDA's graph.
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.ops.context import LayerContext
from ftmem.ops.saved import Kind, Saved, Side

# ΔW-sized tensors at the largest moments, measured with one peft WaveFT Linear on the CPU
# (tests/test_waveft.py): the build holds the zero matrix, its stacked quarters,
# conv_transpose2d's output and the scaled ΔW (each in ΔW's dtype without autocast); the
# backward, after the nodes have freed ΔW, its input cast and the stacked quarters, the
# four quarters' gradients (each slice's backward makes a whole zero matrix in the
# spectrum's dtype before they are summed)
WAVE_BUILD = 4
WAVE_BACKWARD = 4
FILTER_ELEMENTS = 16  # db1's 2-D reconstruction filter: 4 × 1 × 2 × 2


def kept(ctx: LayerContext, lin: Linear, side: Side) -> list[Saved]:
    """The transform's own kept tensors (besides ΔW and the input cast): the stacked
    quarters and the filter (conv_transpose2d's inputs, in ΔW's dtype: under autocast
    its 16-bit casts), the masked indices and mask."""
    de = delta_bytes(ctx.plan)
    n, own = ctx.run.waveft[0], (lin,)
    size = (lin.in_features * lin.out_features + FILTER_ELEMENTS) * de
    return [
        Saved(f"{lin.label} WaveFT stacked quarters", size, Kind.LOHA, side, own),
        Saved(f"{lin.label} WaveFT indices and mask", n * 17, Kind.LOHA, side, own),
    ]


def delta_bytes(plan: MethodPlan) -> int:
    """Element size of ΔW and of the kept quarters: the adapter dtype, or under autocast
    the compute dtype (conv_transpose2d is in CUDA's and the CPU's lower-precision lists:
    it casts the fp32 quarters and filter, and its output is 16-bit)."""
    dt = plan.dtypes
    return BYTES_PER_ELEMENT[dt.compute if dt.autocast else dt.adapter]


def build_held(sizes: list[tuple[int, int]], kept: bool, plan: MethodPlan) -> list[int]:
    """Each linear's build peak (``sizes``: its ΔW bytes and input cast's), beyond the
    block's kept tensors of it (ΔW, the cast and the stacked quarters) when ``kept``.
    Without autocast WAVE_BUILD ΔW-sized tensors at the scaling; under autocast the
    conv's moment is larger: the fp32 zero matrix and quarters beside the quarters'
    16-bit cast and the 16-bit output (2 · 4 + 2 · 2 bytes an element, measured). Left
    out: the index tensors of the build (the device copy of the host indices, its clone,
    the masked coefficients: n · 36 bytes, under 1 % of ΔW at peft's sizes)."""
    ae, de = BYTES_PER_ELEMENT[plan.dtypes.adapter], delta_bytes(plan)
    held = []
    for w, cast in sizes:
        el = w // de
        at_conv = el * (2 * ae + (de if de != ae else 0) + de)
        at_scale = el * (ae + (WAVE_BUILD - 1) * de)
        held.append(max(at_conv, at_scale) - (2 * w + cast if kept else 0))
    return held


def backward_held(sizes: list[tuple[int, int]], plan: MethodPlan) -> list[int]:
    """Each linear's backward peak beyond the block's kept tensors, which the nodes have
    freed of ΔW, the cast and the stacked quarters by then: WAVE_BACKWARD quarter
    gradients, whole matrices in the adapter dtype (the spectrum's) under autocast too."""
    ae, de = BYTES_PER_ELEMENT[plan.dtypes.adapter], delta_bytes(plan)
    return [WAVE_BACKWARD * (w // de) * ae - 2 * w - cast for w, cast in sizes]
