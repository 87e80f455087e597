"""peft's LyCORIS adapters on a linear, LoHa and LoKr: the delta weight they build whole in
every forward, the input cast they multiply, and what their backward holds.

What runs (huggingface/peft src/peft/tuners/loha/layer.py and tuners/lokr/layer.py, the
same in memory at 0.21.2 and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, the MetaMathQA
release): ``forward`` adds ``Linear._get_delta_activations`` to the base output; that
builds ΔW (out × in) from the adapter's factors, casts the input to ΔW's dtype
(``_cast_input_dtype``) and returns ``F.linear(input, ΔW)``, whose mm keeps the cast input
(ΔW needs a gradient) and ΔW (when the input needs one).

- LoHa: ``ΔW = HadaWeight.apply(w1a, w1b, w2a, w2b, scale)``, an autograd Function that
  saves only its four factors (parameters) and the 0-dim scale.
- LoKr: ``ΔW = torch.kron(w1, w2) * scale`` (``make_kron``), w1 and w2 parameters or
  products of a low-rank pair; kron's broadcast multiply keeps both factors, so a factor
  built from a pair (w2 = w2_a·w2_b, b × d) stays alive until backward.
- FourierFT (tuners/fourierft/layer.py ``get_delta_weight``): its n trained coefficients
  scattered into an fp32 out × in zero spectrum, ``torch.fft.ifft2`` of it (complex64),
  the real part times ``scaling``, cast to the spectrum's dtype. The scatter, the FFT and
  the scaling keep nothing (a constant index, linear maps), so what the layer keeps is
  the ΔW and input cast above. Its build and backward run on fp32 and complex64 copies of
  the whole spectrum whatever the adapter dtype: FOURIER_BUILD and FOURIER_BACKWARD bytes
  per element of ΔW (measured on the CPU; cuFFT's plan work area on CUDA is not counted).
  Under autocast the build is the same fp32/complex64 one (ifft2 has no CUDA autocast
  kernel and is in the CPU's fp32 list; its input is fp32 either way; index_put, CUDA's
  promote list, sees fp32 only), and F.linear casts the fp32 ΔW (no leaf: not cached)
  and the input peft cast to fp32 to the compute dtype, and keeps those casts: the input
  copy even on a 16-bit stream (``fourier_built_in``); the result returns in the input's
  dtype (adapters.vera.VeRA.output_bytes).
- WaveFT: FourierFT's path with an inverse wavelet transform (adapters.waveft: what the
  transform keeps besides, its build and backward).

Under autocast LoKr's w2 (or w1) built from a pair is the 16-bit output of a matmul, and
kron (in no autocast list) promotes it with a whole fp32 factor: ΔW is built in fp32
(``LoKr.built_in``), peft casts the input up to it and F.linear's autocast casts both back
to 16-bit (an own input copy per adapter). Its output returns in the input's dtype
(answer_dtype.CASTS_BACK).

Not modelled: under autocast peft returns a LoHa linear's output in its input's dtype
(``result.to(previous_dtype)``: fp32 from an fp32 residual stream), which ftmem keeps
16-bit (measured, LoHa on all linears of a tiny Llama, bf16-mixed: activations −1.0 %;
FourierFT's and LoKr's are modelled).
"""

from __future__ import annotations

from collections.abc import Callable

from ftmem.adapters import waveft
from ftmem.arch import Architecture, Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan, fourierft_linears, lokr_shapes
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

# Bytes per out × in element at FourierFT's largest moments, measured with one peft
# FourierFT Linear on the CPU (tests/test_vera.py): the build holds the zero spectrum (fp32),
# its complex copy and ifft2's complex result (4 + 8 + 8); the backward, ΔW and its input
# cast freed by the mm's node, ΔW's gradient, its fp32 scaled copy and ifft2's complex
# backward result (4 + 4 + 8)
FOURIER_BUILD = 20
FOURIER_BACKWARD = 16


def fourier_index_bytes(arch: Architecture, run: RunConfig) -> int:
    """FourierFT's indices per adapted linear: the n sampled (row, column) pairs, an int64
    2 × n tensor peft keeps on the layer (``self.indices``, tuners/fourierft/layer.py
    update_layer) and moves with the model; index_put's backward keeps views of it."""
    if run.method != "fourierft":
        return 0
    blocks = [lin.count(arch.num_layers) for lin in fourierft_linears(arch, run)]
    return sum(blocks) * 2 * run.fourierft[0] * 8


def delta_bytes(plan: MethodPlan) -> int:
    """Element size of ΔW and of the input it multiplies: the adapter dtype, or under
    autocast the 16-bit compute dtype (HadaWeight's matmuls run under it; the 0-dim fp32
    scale does not promote)."""
    dt = plan.dtypes
    return BYTES_PER_ELEMENT[dt.compute if dt.autocast else dt.adapter]


def _delta_saved(
    ctx: LayerContext,
    lin: Linear,
    side: Side,
    in_grad: bool,
    in_bytes: int,
    name: str,
    built_in: int = 0,
) -> tuple[list[Saved], bool]:
    """What F.linear(input.to(ΔW's dtype), ΔW) keeps: the cast input (one copy per
    adapter; the input itself, shared, when no cast is needed) and ΔW when the input
    needs a gradient. Returns the items and whether the shared input is kept.
    ``built_in``: the element size ΔW is built in when autocast may not have made it
    (FourierFT's, in the adapter dtype): the input goes to that dtype first, then
    F.linear's autocast casts both to the compute dtype, so the kept input is a new
    tensor unless neither cast changes it."""
    de, own = delta_bytes(ctx.plan), (lin,)
    out: list[Saved] = []
    if copies_input(in_bytes, de, built_in):
        size = ctx.tokens * lin.in_features * de
        out.append(
            Saved(f"{lin.label} {name} input cast to {de * 8}-bit", size, Kind.LOHA, side, own)
        )
    if in_grad:
        size = lin.in_features * lin.out_features * de
        out.append(Saved(f"{lin.label} {name} ΔW (out × in)", size, Kind.LOHA, side, own))
    return out, not copies_input(in_bytes, de, built_in)


def copies_input(in_bytes: int, de: int, built_in: int = 0) -> bool:
    """Whether the input F.linear keeps is a copy: its cast to ΔW's dtype (``de``), or,
    where ΔW is built in another dtype (``built_in``), a cast to that one first."""
    return in_bytes != de or built_in not in (0, de)


def _sizes(
    linears: tuple[Linear, ...],
    de: int,
    T: int,
    in_bytes: Callable[[Linear], int],
    built_in: int = 0,
) -> list[tuple[int, int]]:
    """Each adapted linear's ΔW bytes and its input cast's (0 without a cast)."""
    return [
        (
            lin.in_features * lin.out_features * de,
            T * lin.in_features * de if copies_input(in_bytes(lin), de, built_in) else 0,
        )
        for lin in linears
    ]


def fourier_built_in(plan: MethodPlan) -> int:
    """FourierFT's ΔW element size before F.linear: the adapter dtype (its ifft2 runs on
    an fp32 spectrum and ``get_delta_weight`` casts the result to the spectrum's dtype),
    which autocast then casts to the compute dtype."""
    return BYTES_PER_ELEMENT[plan.dtypes.adapter]


@register("loha")
class LoHa:
    """The LoHa adapters on a group of linears reading one tensor."""

    @staticmethod
    def saved(
        ctx: LayerContext,
        linears: list[Linear],
        state: BlockState,
        side: Side,
        in_grad: bool,
        in_bytes: int,
    ) -> tuple[list[Saved], bool]:
        """What each LoHa (or LoKr) adapter keeps (_delta_saved; LoKr.kept besides).
        Returns the items and whether an adapter keeps the shared input."""
        out: list[Saved] = []
        reads_input = False
        for lin in linears:
            name = "LoHa" if lin.module in state.hadamard else "LoKr"
            if lin.module in state.spectral:
                name = "FourierFT"
            elif lin.module in state.wavelet:
                name = "WaveFT"
            elif name == "LoKr" and lin.module not in state.kronecker:
                continue
            built = fourier_built_in(ctx.plan) if name == "FourierFT" else 0
            built = LoKr.built_in(ctx.plan, lin, ctx.run) if name == "LoKr" else built
            items, reads = _delta_saved(ctx, lin, side, in_grad, in_bytes, name, built)
            out += items + (LoKr.kept(ctx, lin, side) if name == "LoKr" else [])
            out += waveft.kept(ctx, lin, side) if name == "WaveFT" else []
            reads_input = reads_input or reads
        return out, reads_input

    @staticmethod
    def forward_build(
        plan: MethodPlan, run: RunConfig, T: int, in_bytes: Callable[[Linear], int], kept: bool
    ) -> int:
        """The largest ΔW build: HadaWeight.forward's ``((w1a @ w1b) * (w2a @ w2b)) *
        scale`` holds both products and their Hadamard product (three out × in) before
        the scaled ΔW; LoKr's kron result and its scaled copy (two). Beyond what the
        block's kept tensors count of that linear (its ΔW and its input cast, both made
        after) when it keeps them (``kept``: not a checkpointed or frozen block).
        ``in_bytes``: a linear's input element size (LinearOp.input_bytes)."""
        de = delta_bytes(plan)
        held = [
            (3 * w - (w + cast if kept else 0))
            for w, cast in _sizes(plan.hadamard, de, T, in_bytes)
        ]
        for lin in plan.kronecker:
            w, cast = _sizes((lin,), de, T, in_bytes, LoKr.built_in(plan, lin, run))[0]
            held.append(max(LoKr.build_held(plan, run, lin, T, in_bytes(lin))) - kept * (w + cast))
        held += [
            FOURIER_BUILD * (w // de) - (w + cast if kept else 0)
            for w, cast in _sizes(plan.spectral, de, T, in_bytes, fourier_built_in(plan))
        ]
        held += waveft.build_held(_sizes(plan.wavelet, de, T, in_bytes), kept, plan)
        return max(held, default=0)

    @staticmethod
    def backward_moment(
        plan: MethodPlan, run: RunConfig, T: int, in_bytes: Callable[[Linear], int]
    ) -> int:
        """The largest ΔW backward, after the mm's node has freed ΔW and the input cast
        it kept: the ΔW gradient it hands on (held by the next call's arguments) and its
        scaled copy, in ΔW's dtype, then HadaWeight.backward's other pair's product,
        ``temp`` and the second ``temp`` (made before the first is released; in the
        adapter dtype: backward runs outside autocast, the fp32 factors promote), or
        LoKr's one broadcast product for a factor's gradient. Measured alone (tiny
        HadaWeight and make_kron on the CPU): 5 and 3 out × in."""
        ae, de = BYTES_PER_ELEMENT[plan.dtypes.adapter], delta_bytes(plan)
        held = [
            (2 * w + 3 * (w // de) * ae - w - cast)
            for w, cast in _sizes(plan.hadamard, de, T, in_bytes)
        ]
        held += [LoKr.backward_held(plan, run, lin, T, in_bytes(lin)) for lin in plan.kronecker]
        held += [
            FOURIER_BACKWARD * (w // de) - w - cast
            for w, cast in _sizes(plan.spectral, de, T, in_bytes, fourier_built_in(plan))
        ]
        held += waveft.backward_held(_sizes(plan.wavelet, de, T, in_bytes), plan)
        return max(held, default=0)


@register("lokr")
class LoKr:
    """LoKr's own part of an adapted linear (its ΔW and input cast are LoHa.saved's)."""

    @staticmethod
    def built_in(plan: MethodPlan, lin: Linear, run: RunConfig) -> int:
        """Element size ΔW = kron(w1, w2) · scale is built in under autocast (0 without):
        a factor built from a pair is a matmul's 16-bit output, a whole factor the fp32
        parameter, and kron (in no autocast list on CUDA or the CPU) promotes the two, so
        ΔW is fp32 unless both factors are built (decompose_both)."""
        dt = plan.dtypes
        if not dt.autocast:
            return 0
        shapes = lokr_shapes(lin, run)
        factors = {dt.compute} if shapes.built else set()
        factors |= {dt.adapter} if len(shapes.built) < 2 else set()
        return BYTES_PER_ELEMENT[dt.compute] if factors == {dt.compute} else 4

    @staticmethod
    def build_held(plan: MethodPlan, run: RunConfig, lin: Linear, T: int, in_b: int) -> list[int]:
        """The build's moments (before the kept ΔW cast and input cast are subtracted): its
        kron result and scaled copy; under an fp32 build besides the scaled copy beside
        peft's input cast to fp32 and F.linear's autocast casts of both (kept)."""
        de = delta_bytes(plan)
        be = LoKr.built_in(plan, lin, run) or de
        n = lin.in_features * lin.out_features
        w, cast = _sizes((lin,), de, T, lambda _: in_b, be)[0]
        if be == de:
            return [2 * w]
        peft_cast = T * lin.in_features * be if in_b != be else 0
        return [2 * n * be, n * be + peft_cast + w + cast]

    @staticmethod
    def backward_held(plan: MethodPlan, run: RunConfig, lin: Linear, T: int, in_b: int) -> int:
        """The ΔW backward after the mm's node freed the kept ΔW and input cast: the ΔW
        gradient handed on and its scaled copy, then kron's one broadcast product (in the
        adapter dtype); under an fp32 build the 16-bit gradient's fp32 cast besides."""
        de, ae = delta_bytes(plan), BYTES_PER_ELEMENT[plan.dtypes.adapter]
        be = LoKr.built_in(plan, lin, run) or de
        n = lin.in_features * lin.out_features
        w, cast = _sizes((lin,), de, T, lambda _: in_b, be)[0]
        if be == de:
            return 2 * w + n * ae - w - cast
        return w + 2 * n * be

    @staticmethod
    def kept(ctx: LayerContext, lin: Linear, side: Side) -> list[Saved]:
        """The factors built from a low-rank pair, which kron's multiply keeps (in the
        adapter dtype; under autocast the 16-bit matmul output, and the pair's cached
        16-bit casts, both kept by that matmul) whether or not the input needs a gradient."""
        dt = ctx.plan.dtypes
        fe = BYTES_PER_ELEMENT[dt.compute if dt.autocast else dt.adapter]
        casts = dt.autocast and dt.adapter != dt.compute
        r = ctx.run.lokr[0]
        out = []
        for rows, cols in lokr_shapes(lin, ctx.run).built:
            what = f"{lin.label} LoKr factor {rows} × {cols}"
            out.append(Saved(what, rows * cols * fe, Kind.LOHA, side, (lin,)))
            if casts:
                what = f"{lin.label} LoKr pair's 16-bit casts"
                out.append(Saved(what, r * (rows + cols) * fe, Kind.LOHA, side, (lin,)))
        return out
