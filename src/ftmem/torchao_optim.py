"""torchao's low-bit AdamW (``torchao.optim.AdamW8bit``, ``AdamW4bit``, ``AdamWFp8``):
the states it keeps per parameter and what its step holds, one parameter at a time.

Read from torchao 0.18.0 (the wheel on PyPI; ``torchao/optim/adam.py``,
``subclass_8bit.py``, ``subclass_4bit.py``, ``subclass_fp8.py``) and measured on the CPU
with torch 2.13 (``tests/accuracy/test_torchao_optim.py``). The classes were
``torchao.prototype.low_bit_optim`` before torchao 0.11 (transformers'
``trainer_optimizer.py`` imports either); the Adam variants keep the same states.

States (``_AdamBase._new_buffer``, adam.py:70-78): a tensor of at least 4096 values whose
count divides by the block size gets ``exp_avg`` and ``exp_avg_sq`` as quantised
subclasses; any other gets two ``torch.zeros_like(p)``, in the parameter's own dtype
(bf16 states for a bf16 parameter). Each quantised state holds:

- 8-bit (``OptimState8bit.zeros``, subclass_8bit.py:112-115): uint8 codes of the
  parameter's shape, one fp32 scale per block, and its own copy of the 256-entry fp32
  dynamic-tree map (signed for exp_avg, unsigned for exp_avg_sq): n + 4n/B + 1024 bytes.
- 4-bit (``OptimState4bit.zeros``, subclass_4bit.py:126-129): two codes per byte (n/2),
  one fp32 scale per block, and a 16-entry fp32 map (signed dynamic tree
  ``create_dynamic_map(True, 3, 4)`` for exp_avg; 16 linear steps for exp_avg_sq, which
  is block-wise like the first moment, not the paper's rank-1 normalisation):
  n/2 + 4n/B + 64 bytes.
- FP8 (``OptimStateFp8.zeros``, subclass_fp8.py:93-94): float8_e4m3fn codes and one fp32
  scale per block, no map: n + 4n/B bytes.

B is the class default (AdamW8bit, AdamWFp8: 256; AdamW4bit: 128; adam.py:222-385)
unless the caller passes ``block_size``: transformers' Trainer passes 256 to both
(``trainer_optimizer.py:471``, ``optim_args`` block_size, transformers 5.24).
``state["step"]`` is ``torch.tensor(0.0)``, on the default device, the CPU
(adam.py:124): nothing on the GPU.

The step (adam.py:112-157) loops over the parameters in Python and runs
``torch.compile(single_param_adam, fullgraph=True)`` on each: one parameter's
temporaries at a time, never all at once. Inside, each state is dequantised to fp32,
updated, requantised (a block-wise amax) and the parameter updated from the fp32
moments. What inductor materialises for one quantised tensor (its CPU plan, torch 2.13,
read from the generated code and measured with the profiler):

- 8-bit: the two fp32 moments (4n each, read by the requantisation after the block amax
  and by the update) and the two new scale vectors: 8n + 8n/B.
- 4-bit: the two old code tensors unpacked to one value a byte (n each, ``torch.stack``
  of the nibbles), the two fp32 moments (4n each), the two new codes as int64 before
  they are packed (8n each) and the two new scale vectors: 26n + 8n/B.
- FP8: the two new scale vectors only (the dequantisation is recomputed in the kernel):
  8n/B.
- a tensor kept in plain states: nothing (one fused in-place kernel).

Before torch 2.6 (``ftmem.versions.torchao_step_keeps_update``), inductor also realises
the fp32 update ``lr * exp_avg / bias_correction1 / denom``: 4n more, for every format.
Measured on the CPU with torch 2.5.1 (torchao 0.6.1 and 0.7.0, the releases of late 2024,
whose ``torchao/prototype/low_bit_optim/adam.py`` has the same loop): 8-bit 12n, 4-bit
32n, FP8 4n, each + 8n/B; torch 2.6.0 with torchao 0.7.0 gives 8n, 28n and 0. 4-bit's
further 2n at 2.5.1 and 2.6.0 (26n at 2.13) is not modelled: its cause is not read and the
release that dropped it is not measured, so 4-bit is 2n under there.

The GPU's Triton plan was not measured (no GPU in this session). The buffers above are
realised by inductor's lowering; whether Triton's fusion then keeps them in registers
(a persistent reduction over each 256-value block can) is not known.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ftmem.methods import TensorGroup
from ftmem.run import RunConfig
from ftmem.versions import torchao_step_keeps_update

TORCHAO_OPTIMIZERS = frozenset({"ao-adamw-8bit", "ao-adamw-4bit", "ao-adamw-fp8"})
MIN_QUANTIZED_NUMEL = 4096  # adam.py:75, "follow bitsandbytes"
SCALE_BYTES = 4  # one fp32 scale per block (torch.zeros' default dtype)


@dataclass(frozen=True)
class LowBitFormat:
    """One torchao state format: bytes per value of the codes, its map, its step."""

    default_block: int
    # bytes of one state's codes per parameter value (4-bit: two values a byte)
    code_bytes: float
    # fp32 entries of the code book each quantised state keeps (its own copy)
    qmap_entries: int
    # bytes per parameter value the compiled step materialises for one quantised tensor,
    # both states together, besides the two new scale vectors
    step_bytes_per_value: int


UPDATE_BYTES = 4  # the fp32 update torch < 2.6's inductor keeps, one value per parameter value


FORMATS = {
    "ao-adamw-8bit": LowBitFormat(256, 1, 256, 2 * 4),
    "ao-adamw-4bit": LowBitFormat(128, 0.5, 16, 2 * (1 + 4 + 8)),
    "ao-adamw-fp8": LowBitFormat(256, 1, 0, 0),
}


def block_size(run: RunConfig) -> int:
    """Values per fp32 scale: the run's ``block_size``, else the class default."""
    return run.optimizer_block_size or FORMATS[run.optimizer].default_block


def is_quantized(numel: int, block: int) -> bool:
    """Whether torchao quantises a tensor's states (adam.py:75): the local tensor's count."""
    return numel >= MIN_QUANTIZED_NUMEL and numel % block == 0


def state_bytes(numel: int, element_bytes: int, run: RunConfig) -> int:
    """exp_avg and exp_avg_sq of one parameter tensor of ``numel`` values."""
    fmt, block = FORMATS[run.optimizer], block_size(run)
    if not is_quantized(numel, block):
        return 2 * numel * element_bytes  # torch.zeros_like(p): the parameter's dtype
    one = int(numel * fmt.code_bytes) + SCALE_BYTES * (numel // block) + 4 * fmt.qmap_entries
    return 2 * one


def step_temporary_bytes(groups: Iterable[TensorGroup], run: RunConfig) -> int:
    """The largest one parameter's compiled step holds (the loop is per parameter)."""
    fmt, block = FORMATS[run.optimizer], block_size(run)
    per_value = fmt.step_bytes_per_value
    if torchao_step_keeps_update(run):
        per_value += UPDATE_BYTES
    peak = 0
    for g in groups:
        if g.trainable and is_quantized(g.numel, block):
            scales = 2 * SCALE_BYTES * (g.numel // block)
            peak = max(peak, per_value * g.numel + scales)
    return peak
