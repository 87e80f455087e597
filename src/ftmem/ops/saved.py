"""What an op answers about backward: the tensors it saves, typed.

Each item says which op (or role in it) saved it (``Kind``) and on which side of its
block (``Side``); rules select items by those, never by the display name.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from ftmem.arch import Linear


class Side(Enum):
    """Where a saved tensor belongs: a block's attention side (its input norm, q/k/v, the
    kernel, o), its MLP side (the MLP's norms, linears, intermediates, experts), or
    outside the blocks."""

    ATTENTION = "attention"
    MLP = "mlp"
    OUTER = "outer"


class Kind(Enum):
    """The op, or its role in the op, that saved a tensor: what rules select items by
    (``Saved.what`` is for display only)."""

    NORM_INPUT = "norm input"  # a norm's input (and its statistics)
    NORM_OUTPUT = "norm output"  # the normalised tensor, for the norm weight's gradient
    LINEAR_INPUT = "linear input"  # linears' shared input (weight gradient or lora_A)
    WEIGHT_COPY = "weight copy"  # autocast's 16-bit copy of a base weight
    LORA = "lora"  # a LoRA branch: dropout, input casts, lora_A output, weight copies
    DORA = "dora"  # DoRA's rescale of the base and LoRA outputs
    IA3 = "ia3"
    LOHA = "loha"  # LoHa's input cast and its delta weight
    HIRA = "hira"  # HiRA's input cast and its ΔW = W0 ⊙ (B A)
    PEANUT = "peanut"  # Peanut's W cast, relu outputs, input cast and ΔW
    OSF = "osf"  # OSF's concatenated factors A and B, h and the input cast
    PSOFT = "psoft"  # PSOFT's x·Aᵀ and its rotation's matrices
    GLORA = "glora"  # GLoRA's rebuilt weight_eff
    HRA = "hra"  # HRA's reflection chain, weight copies and input cast
    VERA = "vera"  # VeRA's rank-r and output-wide products, its buffer slices' casts
    BANK = "bank"  # RandLoRA's and VB-LoRA's input casts, products and rebuilt factors
    MISS = "miss"  # MiSS's summed input, bat's weight copies
    SHIRA = "shira"  # SHiRA's rebuilt weight and sparse delta
    SUPERTUNING = "supertuning"  # Super-Tuning's rebuilt weight and int64 index
    C3A = "c3a"  # C3A's fp32 input copies
    ROAD = "road"  # RoAd's cast and rotated outputs
    BOFT = "boft"  # BOFT's rotation matrices and scaled output
    OFT = "oft"  # OFT's input cast and its rotation blocks
    BOTTLENECK = "bottleneck"
    LLAMA_ADAPTER = "llama-adapter"  # the adaption prompt's attention, v2's scaled outputs
    ATTN_QK = "attention q/k"  # the query and key the kernel reads (rotary outputs)
    ATTN_V = "attention v"  # the value it reads
    ATTN_QKV = "attention q, k and v"  # one tensor holding all three (fused projections)
    ATTN_COPY = "attention copy"  # q/k/v copied for the kernel: fp32, prefix concatenated
    ATTN_MASK = "attention mask"
    ATTN_SOFTCAP = "attention soft-capping"
    ATTN_PROBS = "attention probabilities"  # the softmax output and its casts
    ATTN_OUTPUT = "attention output"
    LINEAR_ATTENTION = "linear attention"  # Gated DeltaNet's conv, delta rule, gated norm
    MLP_HIDDEN = "MLP intermediates"  # gate/up outputs and the activation's
    MOE = "mixture of experts"  # router and experts
    DROPOUT = "dropout mask"
    RESIDUAL_DROPOUT = (
        "residual dropout mask"  # on the hidden states: attention's, the MLP's output
    )
    OTHER = "other"  # outside the blocks: ids, rotary tables, prompt encoders, head, loss


class Saved(NamedTuple):
    """One tensor (or group of same-size tensors) saved for backward: ``what`` names it
    for display; ``kind``, ``side`` and ``linears`` (the block linears it belongs to)
    are what the rules that select items read. (A named tuple: a block makes dozens per
    estimate, and a frozen dataclass of five fields was a tenth of the estimate's time.)"""

    what: str
    nbytes: int
    kind: Kind = Kind.OTHER
    side: Side = Side.OUTER
    linears: tuple[Linear, ...] = ()
    # bytes of this tensor (or of the one it shares, when ``nbytes`` is 0) that an autograd
    # ctx attribute holds: backward does not free those, the graph's end does
    graph_held: int = 0
    # the separate tensors an item of several stands for, as the allocator sees them (one
    # request each: an RMSNorm's fp32 input and its per-row rstd); () for one tensor
    parts: tuple[int, ...] = ()
    # the registered op whose tensor this is, where a rule must find one op's items
    # (PerLayerInput's: the top block frees them before its gradient); "" elsewhere
    op: str = ""

    def requests(self) -> tuple[int, ...]:
        """The item's allocations: its parts where they still add up to it (an item
        rescaled since, a rank's share, is one request of its bytes), else its bytes."""
        if self.parts and sum(self.parts) == self.nbytes:
            return self.parts
        return (self.nbytes,)

    def relabelled(self, prefix: str) -> Saved:
        """The same item, its display name prefixed."""
        return self._replace(what=f"{prefix}{self.what}")
