"""The key/value cache a checkpointed block returns in a training forward.

transformers before 4.53 ran GPTBigCode's checkpointed blocks with the config's
``use_cache`` (versions.checkpointed_blocks_return_cache): each block returns its
``present``, a view of its c_attn output, and the model returns the list of them. Under
checkpointing that output is not saved for backward (the block's forward runs without
grad), so each view keeps a whole c_attn output alive that would have been freed at the
block's end: one per block by the loss, held until the training step drops the model's
output (HF Trainer's compute_loss returns the loss alone, before backward). Measured on
the CPU against transformers 4.48.1 (calibration/notes/fms.md) and, through the same
views kept by hand, in tests/accuracy/test_returned_cache.py. Without checkpointing the
attention kernel saves those views anyway, so the cache costs nothing more."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem.profiles import profile_of
from ftmem.versions import checkpointed_blocks_return_cache

if TYPE_CHECKING:
    from ftmem.arch import Architecture
    from ftmem.run import RunConfig


def per_block(arch: Architecture, run: RunConfig, e: int) -> int:
    """Bytes one checkpointed block's returned cache keeps until the model's output is
    dropped: its c_attn output (q, k and v) in the compute dtype; 0 where no cache is
    returned. The framework must checkpoint through transformers' own loop."""
    if not checkpointed_blocks_return_cache(arch, run):
        return 0
    if not profile_of(run).checkpoints_in_transformers_loop:
        return 0
    T = run.batch_size * run.positions
    return T * (arch.q_size + 2 * arch.kv_size) * e
