"""LFM2's short convolution (transformers 5.25 models/lfm2/modeling_lfm2.py
``Lfm2ShortConv``, l.371-415): in_proj to B, C and x (each hidden wide), B·x, the depthwise
causal conv1d of ``conv_L_cache`` taps (``causal_conv1d_fn``'s torch path, l.293-313: an
nn.functional.conv1d padded by taps − 1 and cut to the sequence), C·conv, out_proj.

Its parameters are counted exactly (arch.ShortConv, arch._short_conv_stack); what its
forward keeps for backward, its transients and serving's conv state are not measured yet,
so a training step or serving of the family's models is refused in one sentence
(``refuse``), a stack whose every layer attends too (not measured either).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem.errors import InvalidInputError

if TYPE_CHECKING:
    from ftmem.arch import Architecture


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
