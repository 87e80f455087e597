"""peft's DeFT on a linear: a rank-r projector removes part of the frozen linear's output
and a trained R re-injects it, computed in fp32 on the activations.

What runs (huggingface/peft src/peft/tuners/deft/layer.py ``DeftLinear.forward`` and
``_project``, the same in 0.21.2 and at 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40), x in the
base dtype (under autocast: ``autocast_saved``), deft_P (out × r) and deft_R (r × in,
absent with PaRa) in fp32:

- ``result = base_out.to(fp32)``: a copy on a 16-bit base; ``base_product`` is it (less
  the bias, a new tensor, where the linear has one); x is cast to fp32 (a copy on a 16-bit
  base, made also with PaRa, where nothing reads it).
- ``_project``: relu: ``right = relu(P)`` (out × r, kept by relu), ``Q_P = P``; qr:
  ``Q_P, _ = qr(P)`` (Q, out × r, and R, r × r, kept by qr's backward), ``right = Q_P``.
- ``correction = (base_product @ right) @ Q_Pᵀ``: keeps ``base_product`` (T × out fp32)
  and the T × r product; ``result = result - correction``.
- without PaRa: ``R * scaling`` (r × in, kept by F.linear when x needs a gradient),
  ``F.linear(x, R)`` keeps the fp32 input (the input itself on an fp32 base) and its T × r
  output is kept by ``@ Q_Pᵀ``; ``result = result + …``: the forward's largest moment
  (the base output, ``correction``, ``result - correction``, the product and the sum).
- ``result.to(x.dtype)``: the output, cast back on a 16-bit base.

Measured alone (one peft DeftLinear, bf16 and fp32 bases, relu and qr, PaRa or not, the
input with and without a gradient; tests/test_deft.py): exactly these. Not modelled
(refused): deft_dropout, adapters in a 16-bit dtype (peft computes in fp32
whatever their dtype: not measured), GPT-2's Conv1D.
"""

from __future__ import annotations

from ftmem.arch import Architecture, Linear
from ftmem.errors import InvalidInputError
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.run import RunConfig

FP32 = 4


def rank(lin: Linear, r: int) -> int:
    """peft clamps the rank to the output width (DeftLayer.update_layer: ``min(r, out)``)."""
    return min(r, lin.out_features)


def check(arch: Architecture, run: RunConfig) -> None:
    """What DeFT runs ftmem does not model, in one sentence each."""
    if run.dropout:
        raise InvalidInputError(
            "--lora-dropout with --method deft (peft's deft_dropout, on the fp32 input) is not "
            "modelled; drop it."
        )
    if run.adapter_dtype not in ("auto", "fp32"):
        raise InvalidInputError(
            "--method deft with 16-bit adapters is not modelled (peft's DeFT computes in fp32 "
            "whatever their dtype); use --adapter-dtype fp32."
        )
    if arch.traits.conv1d:
        raise InvalidInputError(
            f"DeFT on {arch.family}'s transformers Conv1D layers is not modelled; "
            "use lora or ia3 on this model."
        )


def saved(
    run: RunConfig,
    lin: Linear,
    side: Side,
    T: int,
    in_features: int,
    in_bytes: int,
    in_grad: bool,
    autocast: bool = False,
) -> tuple[list[Saved], bool]:
    """What one DeFT adapter keeps, and whether it keeps the linear's input itself (an fp32
    input read by F.linear without a cast)."""
    r, o, own = rank(lin, run.r), lin.out_features, (lin,)
    para = bool(run.deft_para)
    if autocast:
        return autocast_saved(run, lin, side, T, in_features, in_grad), False
    out = [Saved(f"{lin.label} deft fp32 base output", T * o * FP32, Kind.LORA, side, own)]
    reads_input = not para and in_bytes == FP32
    if not para and not reads_input:
        what = f"{lin.label} deft input cast to fp32"
        out.append(Saved(what, T * in_features * FP32, Kind.LORA, side, own))
    products = T * r * FP32 * (1 if para else 2)
    out.append(Saved(f"{lin.label} deft rank-r products", products, Kind.LORA, side, own))
    small = o * r + (r * r if run.deft_qr else 0) + (r * in_features if in_grad and not para else 0)
    out.append(Saved(f"{lin.label} deft projector", small * FP32, Kind.LORA, side, own))
    return out, reads_input


def autocast_saved(
    run: RunConfig, lin: Linear, side: Side, T: int, in_features: int, in_grad: bool
) -> list[Saved]:
    """Under autocast (matmul and linear: lower precision on CUDA's list as on the CPU's;
    relu, sub, add on neither; qr on the CPU's fp32 list, on none of CUDA's, of an fp32 P
    either way): ``base_product @ right`` keeps its 16-bit casts of the fp32 base product
    and (the input needing a gradient) of right; each ``@ Q_Pᵀ`` its 16-bit rank-r input
    and a cast of Q_Pᵀ (a view: not cached); F.linear its 16-bit cast of the input (one
    per adapted linear) and of R · scaling (the input needing a gradient); relu its fp32
    output (qr its Q and R). Measured on tiny Llama (tests/accuracy, DeFT's autocast
    cases)."""
    r, o, own, e = rank(lin, run.r), lin.out_features, (lin,), 2
    para = bool(run.deft_para)
    out = [Saved(f"{lin.label} deft base product, 16-bit cast", T * o * e, Kind.LORA, side, own)]
    if not para:
        what = f"{lin.label} deft input, 16-bit cast"
        out.append(Saved(what, T * in_features * e, Kind.LORA, side, own))
    paths = 1 if para else 2
    out.append(Saved(f"{lin.label} deft rank-r products", paths * T * r * e, Kind.LORA, side, own))
    fp32 = o * r + (r * r if run.deft_qr else 0)
    casts = o * r * (paths + (1 if in_grad else 0)) + (
        r * in_features if in_grad and not para else 0
    )
    size = fp32 * FP32 + casts * e
    out.append(Saved(f"{lin.label} deft projector and its casts", size, Kind.LORA, side, own))
    return out


def forward_transient(run: RunConfig, lin: Linear, T: int, e: int, in_grad: bool) -> int:
    """A DeFT linear's largest forward moment beyond what it keeps: the base output (the
    fp32 copy's source on a 16-bit base or beside a bias), ``correction`` and
    ``result - correction`` (T × out fp32 each) and, without PaRa, the re-injected product
    and the sum (and R · scaling, r × in, when it is not kept); with PaRa at the cast back,
    with the unread fp32 input cast."""
    o, n, r = lin.out_features, lin.in_features, rank(lin, run.r)
    base = T * o * e if e != FP32 or lin.bias else 0
    if not run.deft_para:
        return base + 4 * T * o * FP32 + (0 if in_grad else r * n * FP32)
    cast_back = T * o * e if e != FP32 else 0
    x_cast = T * n * FP32 if e != FP32 else 0
    return base + 2 * T * o * FP32 + cast_back + x_cast
