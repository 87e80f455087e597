"""FSDP on two CPU ranks (gloo) against the per-GPU estimate.

Weights, gradients and optimizer states of each rank are exact to the byte (the shards
of every tensor); the step's peak is within the suite's peak tolerance. These runs peak in forward or
backward: the gathered root unit (embeddings, final norm, LM head) and two blocks (the
one computing and the next, prefetched), the head's unsharded gradients, the activations.
"""

from __future__ import annotations

import pytest

from ftmem import estimate
from tests.accuracy.cases import PEAK_TOLERANCE
from tests.conftest import tiny

pytest.importorskip("torch.distributed.fsdp")
pytestmark = pytest.mark.accuracy

WORLD = 2
BASE = dict(batch_size=2, seq_len=64, device="cpu", optimizer_impl="for-loop")
CASES = [
    ("llama", {"method": "full", "precision": "bf16-mixed"}, "fsdp"),
    ("llama", {"method": "full", "precision": "bf16"}, "fsdp"),
    ("llama", {"method": "full", "precision": "bf16"}, "fsdp-grad-op"),
    ("llama", {"method": "lora", "precision": "bf16", "lora_targets": "all-linear"}, "fsdp"),
    ("qwen2", {"method": "full", "precision": "fp32"}, "fsdp"),
    ("gemma", {"method": "full", "precision": "bf16"}, "fsdp"),
    ("llama", {"method": "lora", "precision": "bf16-mixed"}, "fsdp"),
    ("mistral", {"method": "full", "precision": "bf16", "grad_ckpt": True}, "fsdp"),
]


@pytest.mark.parametrize(
    ("family", "settings", "strategy"),
    CASES,
    ids=[f"{f}-{s['method']}-{s['precision']}-{st}" for f, s, st in CASES],
)
def test_fsdp_rank_matches_estimate(family, settings, strategy):
    from ftmem.api import run_config
    from ftmem.measure.sharded import measure_fsdp

    arch = tiny(family)
    run = run_config(**BASE, **settings)
    ranks = measure_fsdp(arch, run, WORLD, reshard_after_forward=strategy == "fsdp")
    est = estimate(arch, **BASE, **settings, gpus=WORLD, strategy=strategy).memory
    for r, got in enumerate(ranks):
        for key in ("weights_bytes", "gradients_bytes", "optimizer_states_bytes"):
            assert got[key] == getattr(est, key), (r, key, got[key], getattr(est, key))
    peak = max(got["peak_allocated_bytes"] for got in ranks)
    err = est.peak_allocated_bytes / peak - 1
    assert abs(err) <= PEAK_TOLERANCE, f"peak {est.peak_allocated_bytes} vs {peak} ({err:+.1%})"
