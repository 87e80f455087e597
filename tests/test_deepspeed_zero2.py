"""DeepSpeed ZeRO-1/2's optimizer init (ftmem.deepspeed_zero2) against its source, by hand.

The truth is DeepSpeedZeroOptimizer.__init__ at microsoft/DeepSpeed@26d0dd92 (v0.11.0),
runtime/zero/stage_1_and_2.py, read in the module's docstring: after ``empty_cache()`` a
16-bit clone of the partition (l.370-371), the fp32 master made from it, the clone freed;
``initialize_optimizer_states`` (l.629-650): an fp32 zero gradient, one FusedAdam step
making ``exp_avg`` and ``exp_avg_sq`` (fused_adam.py l.155-157), the gradient dropped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from ftmem import deepspeed_zero2
from ftmem.gpu.best_fit import BestFit
from ftmem.gpu.trace import STEP_ONLY

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
# Qwen-7B-Chat-Int4 with Qwen's LoRA (r 64 on c_attn, both c_proj, w1, w2): L·r·(9h + 3f')
PSI_7B = 32 * 64 * (9 * 4096 + 3 * 11008)


def _rounded(n: int) -> int:
    """CUDACachingAllocator's size of a large request: whole 2 MiB (kRoundLarge)."""
    return -(-n // (2 * MiB)) * 2 * MiB


def test_partition_pads_to_two_elements_per_rank():
    assert deepspeed_zero2.partition_elements(PSI_7B, 1) == PSI_7B  # even already
    assert deepspeed_zero2.partition_elements(7, 1) == 8
    assert deepspeed_zero2.partition_elements(7, 2) == 4  # 8 padded elements over 2 ranks
    assert deepspeed_zero2.partition_elements(9, 2) == 6  # 12 over 2


def test_adam_states_are_a_master_and_two_moments_in_fp32():
    assert deepspeed_zero2.adam_states(PSI_7B) == 12 * PSI_7B


def test_init_leaves_the_clone_and_the_gradient_cached_for_the_step():
    """Replayed on the caching allocator: after the init the rank holds 12 psi bytes
    (master, two moments) and has cached the 16-bit clone's block (2 psi) and the zero
    gradient's (4 psi); the step's flatten of the 16-bit gradients (2 psi) and its fp32
    conversion (4 psi, stage_1_and_2.py ``step`` l.1761-1767) then fit those blocks and
    reserve nothing more."""
    n = PSI_7B
    program = deepspeed_zero2.init_program(n, 2)
    target = BestFit()
    handles: list[int] = []
    for op, value in program:
        if op == "alloc":
            handles.append(target.malloc(value))
        else:
            target.free(handles[value])
    after_init = target.stats()
    assert after_init.allocated == 3 * _rounded(4 * n)
    assert after_init.reserved == _rounded(2 * n) + 4 * _rounded(4 * n)
    assert sorted(size for size, _ in target.free_blocks()) == [_rounded(2 * n), _rounded(4 * n)]
    flat = target.malloc(2 * n)
    fp32 = target.malloc(4 * n)
    assert target.stats().reserved == after_init.reserved
    target.free(flat)
    target.free(fp32)


def test_only_zero2_with_fusedadam_on_a_16bit_model_runs_the_init():
    import ftmem.estimate  # noqa: F401  (the module; ftmem.estimate is also its function)
    from ftmem.parallel import ParallelConfig

    estimate = sys.modules["ftmem.estimate"]

    class Sizes:
        def __init__(self, states: int) -> None:
            self.states = states

    class Plan:
        def __init__(self, compute: str) -> None:
            self.n_trainable = PSI_7B
            self.dtypes = type("D", (), {"compute": compute})()

    zero2 = ParallelConfig(gpus=1, strategy="zero2")
    got = estimate._zero2_init(zero2, Plan("fp16"), Sizes(12 * PSI_7B))
    assert got.optimizer_init == deepspeed_zero2.init_program(PSI_7B, 2)
    assert got.reset
    # an optimizer whose states are not an fp32 master and two moments: untouched
    assert estimate._zero2_init(zero2, Plan("fp16"), Sizes(6 * PSI_7B)) is STEP_ONLY
    # an fp32 model (its .float() is the clone itself): untouched
    assert estimate._zero2_init(zero2, Plan("fp32"), Sizes(12 * PSI_7B)) is STEP_ONLY
    offload = ParallelConfig(gpus=1, strategy="zero2", offload_optimizer="cpu")
    assert estimate._zero2_init(offload, Plan("fp16"), Sizes(12 * PSI_7B)) is STEP_ONLY
    zero3 = ParallelConfig(gpus=1, strategy="zero3")
    assert estimate._zero2_init(zero3, Plan("fp16"), Sizes(12 * PSI_7B)) is STEP_ONLY


@pytest.mark.parametrize("row_id", ["qwen1-7b-qlora-seq256", "qwen1-14b-qlora-seq256"])
def test_the_qwen_qlora_rows_state_sizes_are_a_zero2_adam_layout(row_id):
    """The estimate's rank states for Qwen's Q-LoRA rows equal FusedAdam's under ZeRO-2
    (12 bytes per trainable element, psi = L·r·(9h + 3f')), so the init replaces the
    replay's per-tensor states."""
    import ftmem

    rows = yaml.safe_load((ROOT / "calibration" / "settings" / "qwen.yaml").read_text())
    row = next(r for r in rows if r["id"] == row_id)
    config = ROOT / "calibration" / "configs" / row["model"] / "config.json"
    est = ftmem.estimate(str(config), gpu=row["gpu"], **row["settings"])
    h, f, layers = (4096, 11008, 32) if "7b" in row_id else (5120, 13696, 40)
    psi = layers * 64 * (9 * h + 3 * f)
    assert est.memory.optimizer_states_bytes == deepspeed_zero2.adam_states(psi)
