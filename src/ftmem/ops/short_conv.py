"""LFM2's short convolution (transformers 5.25 models/lfm2/modeling_lfm2.py
``Lfm2ShortConv``, l.371-415): in_proj to B, C and x (each hidden wide), B·x, the depthwise
causal conv1d of ``conv_L_cache`` taps (``causal_conv1d_fn``'s torch path, l.293-313: an
nn.functional.conv1d padded by taps − 1 and cut to the sequence), C·conv, out_proj.

Its parameters are counted exactly (arch.ShortConv, arch._short_conv_stack). What its
forward keeps for backward is measured (``saved_bytes``, tests/test_lfm2.py against
torch's saved-tensor hooks) but not yet wired into the block walk; its transients, the
attention blocks' and the model's moments and serving's conv state are not measured, so a
training step or serving of the family's models is refused in one sentence (``refuse``),
a stack whose every layer attends too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem.errors import InvalidInputError

if TYPE_CHECKING:
    from ftmem.arch import Architecture


def saved_bytes(
    b: int, s: int, h: int, kernel: int, e: int, in_proj_trains: bool, out_proj_trains: bool
) -> dict[str, int]:
    """What one Lfm2ShortConv keeps for backward on transformers' torch path, without
    autocast, where its input needs a gradient (the block above a trained one): each
    tensor's bytes by what keeps it. b batch, s tokens a row, h hidden, e the dtype's
    bytes, T = b·s.

    - ``in_proj input``: the operator norm's output, T·h·e, kept by in_proj where its weight
      trains (nn.Linear's backward reads its input for the weight's gradient);
    - ``BCx``: in_proj's output, 3·T·h·e: B·x keeps B and x and C·conv keeps C, three
      views of one storage, so the whole storage stays;
    - ``B·x``: the conv's input, T·h·e (nn.functional.conv1d's backward keeps its input
      and weight whether or not the weight trains);
    - ``conv output``: b·h·(s + kernel − 1)·e: conv1d pads by kernel − 1 and the slice
      ``[:, :, :seq_len]`` that C multiplies is a view of the padded output;
    - ``out_proj input``: ``y.transpose(-1, -2).contiguous()``, T·h·e, kept by out_proj
      where its weight trains.
    """
    T = b * s
    out = {
        "BCx": 3 * T * h * e,
        "B·x": T * h * e,
        "conv output": b * h * (s + kernel - 1) * e,
    }
    if in_proj_trains:
        out["in_proj input"] = T * h * e
    if out_proj_trains:
        out["out_proj input"] = T * h * e
    return out


def refuse(arch: Architecture, what: str) -> None:
    """``what`` (a training step, serving) of a family with short-convolution layers
    (Family.short_conv_module) is refused: only its parameters are modelled."""
    if arch.traits.short_conv_module:
        raise InvalidInputError(
            f"{arch.name}: {what} of LFM2's layers (short-convolution and attention) is "
            "not modelled yet "
            "(their parameters are); for a traced answer add --traced, with pip install "
            '"ftmem[measure]".'
        )
