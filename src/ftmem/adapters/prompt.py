"""peft's prompt methods: prompt tuning's and P-tuning's encoders, prefix tuning's
reparametrisation MLP and its key/value cache. (The attention kernel's share of a
prefix is the attention op's: ``Attention.prefix_saved``.)"""

from __future__ import annotations

from itertools import pairwise

from ftmem.arch import Architecture
from ftmem.dtypes import BYTES_PER_ELEMENT, INDEX_BYTES
from ftmem.methods import prefix_token_dim
from ftmem.ops.registry import register
from ftmem.ops.saved import Saved
from ftmem.precision import Dtypes
from ftmem.run import RunConfig


@register("prompt_encoder")
class PromptEncoder:
    """The virtual tokens' encoder, run once per forward before the blocks."""

    @staticmethod
    def saved(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> list[Saved]:
        """What peft's prompt encoders keep. peft runs the encoder on one copy of the virtual
        tokens and repeats its output over the batch (peft#2043). The encoder is in the
        adapter dtype (fp32 as peft builds it; 16-bit where an engine casts the whole
        model, engine_cast); under autocast its Linears keep 16-bit copies of their inputs
        and weights instead."""
        n, h = run.n_virtual, arch.hidden_size
        if not n:
            return []
        # (Cartridge ignores the ids: its cache is the parameter itself, expanded over the
        # batch; peft 0.21.2 tuners/cartridge/model.py CartridgeEncoder.forward)
        out = [] if run.method == "cartridge" else [Saved("virtual token ids", n * INDEX_BYTES)]
        autocast = dtypes.autocast
        act = 2 if autocast else BYTES_PER_ELEMENT[dtypes.adapter]

        def mlp(label: str, widths: list[int], rows: int = n) -> Saved:
            # (in, hidden, ..., out): each Linear keeps its input (the embedding output or
            # the previous activation's output); under autocast also its 16-bit weight
            size = rows * sum(widths[:-1]) * act
            if autocast:
                size += 2 * sum(a * b for a, b in pairwise(widths))
            return Saved(label, size)

        if run.method == "p-tuning":
            H = run.encoder_hidden or h
            if run.encoder == "mlp":
                out.append(mlp("prompt MLP: Linear inputs (ReLU outputs)", [h, H, H, h]))
            else:
                out.append(Saved("prompt LSTM", _lstm_saved(n, h, H, act)))
                out.append(mlp("prompt LSTM head: Linear inputs", [2 * H, 2 * H, h]))
        if run.method == "prefix-tuning" and run.prefix_projection:
            td = prefix_token_dim(arch)
            H = run.encoder_hidden or td
            # the prefix is computed for every sequence of the batch (no repeat trick here)
            widths = [td, H, 2 * arch.num_layers * td]
            out.append(mlp("prefix MLP: Linear inputs (tanh output)", widths, run.batch_size * n))
        return out


@register("prefix_tuning")
class PrefixTuning:
    """Prefix tuning's per-layer keys and values, held in the cache."""

    @staticmethod
    def cache(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
        """Prefix tuning keeps every layer's keys and values (prefix + own) in a cache until
        the forward returns. They are what the attention kernel saves, except where sdpa
        repeats GQA heads (it needs a mask here) or autocast casts them to 16 bits from the
        fp32 of the prefix: then the cache's tensors are extra until the forward ends."""
        P = run.prefix_len
        if not P:
            return 0
        repeats = arch.kv_heads not in (1, arch.num_heads) and run.attn != "flash"
        upcast = dtypes.autocast and dtypes.base == "fp32"
        if not (repeats or upcast):
            return 0
        nbytes = BYTES_PER_ELEMENT[dtypes.base if upcast else dtypes.compute]
        return arch.num_layers * 2 * run.batch_size * (run.seq_len + P) * arch.kv_size * nbytes


def _lstm_saved(n: int, h: int, H: int, e: int, layers: int = 2) -> int:
    """A bidirectional LSTM over n steps, ``e`` bytes an element: each layer keeps its
    input; each direction its outputs, final states and the four gate activations of every
    step (what cuDNN's reserve space holds; the CPU's oneDNN keeps a larger workspace, see
    docs/accuracy.md)."""
    total = 2 * H * e  # initial hidden and cell states (zeros, shared)
    width = h
    for _ in range(layers):
        total += n * width * e
        total += 2 * (n * H * e + 2 * H * e + n * 4 * H * e)
        width = 2 * H
    return total
