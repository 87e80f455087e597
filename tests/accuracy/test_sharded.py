"""FSDP on two CPU ranks against the per-GPU estimate.

Each rank runs in turn in this process over PyTorch's fake process group (see
ftmem/measure/sharded.py: over gloo the peak depends on its threads' timing).
Weights, gradients and optimizer states of each rank are exact to the byte (the shards
of every tensor); the step's peak is within the suite's peak tolerance. These runs peak in
forward or backward: the gathered root unit (embeddings, final norm, LM head) and two
blocks (the one computing and the next, prefetched), the head's unsharded gradients, the
activations. Each row of the "FSDP" section of docs/accuracy.md is checked here, to the
byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ftmem import estimate
from tests.accuracy.cases import PEAK_TOLERANCE
from tests.conftest import tiny

DOC = Path(__file__).resolve().parents[2] / "docs" / "accuracy.md"
WORLD = 2
BASE = dict(batch_size=2, seq_len=64, device="cpu", optimizer_impl="for-loop")


@dataclass(frozen=True)
class ShardedCase:
    family: str
    strategy: str
    settings: dict = field(default_factory=dict)
    # the token embedding and the LM head as units of their own (torchtune's
    # custom_sharded_layers), resharded after forward
    sharded_ends: bool = False

    @property
    def id(self) -> str:
        parts = [self.family, self.strategy] + [
            f"{k}={v}" for k, v in sorted(self.settings.items())
        ]
        parts += ["shardedends"] if self.sharded_ends else []
        return "-".join(str(p) for p in parts).replace("_", "")


SHARDED_CASES = [
    ShardedCase("llama", "fsdp", {"method": "full", "precision": "bf16-mixed"}),
    ShardedCase("llama", "fsdp", {"method": "full", "precision": "bf16"}),
    ShardedCase("llama", "fsdp-grad-op", {"method": "full", "precision": "bf16"}),
    ShardedCase(
        "llama", "fsdp", {"method": "lora", "precision": "bf16", "lora_targets": "all-linear"}
    ),
    ShardedCase("llama", "fsdp", {"method": "lora", "precision": "bf16-mixed"}),
    ShardedCase("qwen2", "fsdp", {"method": "full", "precision": "fp32"}),
    ShardedCase("gemma", "fsdp", {"method": "full", "precision": "bf16"}),
    ShardedCase("mistral", "fsdp", {"method": "full", "precision": "bf16", "grad_ckpt": True}),
    ShardedCase("qwen2", "fsdp", {"method": "lora", "precision": "bf16", "grad_ckpt": True}),
    ShardedCase("llama", "fsdp", {"method": "dora", "precision": "bf16-mixed"}),
    ShardedCase("gpt2", "fsdp", {"method": "full", "precision": "bf16-mixed"}),
    ShardedCase("falcon", "fsdp", {"method": "full", "precision": "bf16"}),
    ShardedCase("mixtral", "fsdp", {"method": "full", "precision": "bf16"}),
    # the head-wide q/k norm weights (32) split across the ranks like every parameter
    ShardedCase("qwen3", "fsdp", {"method": "full", "precision": "bf16"}),
    # an encoder-decoder: each T5Block of both stacks is one FSDP unit
    ShardedCase("flan-t5", "fsdp", {"method": "full", "precision": "bf16", "target_len": 23}),
    ShardedCase("flan-t5", "fsdp", {"method": "lora", "precision": "bf16-mixed"}),
    ShardedCase("flan-t5", "fsdp", {"method": "full", "precision": "bf16", "grad_ckpt": True}),
    ShardedCase("flan-t5", "fsdp-grad-op", {"method": "full", "precision": "bf16"}),
    ShardedCase("t5", "fsdp", {"method": "full", "precision": "fp32"}),
    # torchtune's full_finetune_distributed with custom_sharded_layers: the root keeps
    # only the final norm gathered; the head is gathered at the logits and the loss, its
    # gradient's reduce-scatter input waits through the last block's backward
    ShardedCase("llama", "fsdp", {"method": "full", "precision": "bf16"}, sharded_ends=True),
    ShardedCase(
        "llama",
        "fsdp",
        {"method": "full", "precision": "bf16", "grad_ckpt": True},
        sharded_ends=True,
    ),
    # a tied weight: one unit of the embedding and the head
    ShardedCase("gemma", "fsdp", {"method": "full", "precision": "bf16"}, sharded_ends=True),
]


def compare_sharded(case: ShardedCase) -> dict:
    from ftmem.api import run_config
    from ftmem.measure.sharded import measure_fsdp

    arch = tiny(case.family)
    run = run_config(**BASE, **case.settings)
    reshard = case.strategy == "fsdp"
    ranks = measure_fsdp(arch, run, WORLD, reshard, sharded_ends=case.sharded_ends)
    est = estimate(
        arch,
        **BASE,
        **case.settings,
        gpus=WORLD,
        strategy=case.strategy,
        fsdp_sharded_ends=case.sharded_ends,
    ).memory
    result: dict = {"id": case.id, "ranks": ranks}
    for key in ("weights_bytes", "gradients_bytes", "optimizer_states_bytes"):
        result[key] = (getattr(est, key), [r[key] for r in ranks])
    result["peak"] = (est.peak_allocated_bytes, max(r["peak_allocated_bytes"] for r in ranks))
    return result


def sharded_row(r: dict) -> str:
    cells = [f"`{r['id']}`"]
    for key in ("weights_bytes", "gradients_bytes", "optimizer_states_bytes"):
        est, got = r[key]
        cells.append("exact" if all(g == est for g in got) else f"{est:,} / {got}")
    est, got = r["peak"]
    cells.append(f"{est:,} / {got:,} ({(est - got) / got:+.1%})")
    return "| " + " | ".join(cells) + " |"


@pytest.mark.accuracy
@pytest.mark.parametrize("case", SHARDED_CASES, ids=[c.id for c in SHARDED_CASES])
def test_fsdp_rank_matches_estimate(case):
    pytest.importorskip("torch.distributed.fsdp")
    r = compare_sharded(case)
    for key in ("weights_bytes", "gradients_bytes", "optimizer_states_bytes"):
        est, got = r[key]
        assert all(g == est for g in got), f"{case.id}: {key} estimated {est:,}, ranks {got}"
    est, got = r["peak"]
    err = (est - got) / got
    assert abs(err) <= PEAK_TOLERANCE, f"{case.id}: peak {est:,} vs {got:,} ({err:+.1%})"
    assert sharded_row(r) in DOC.read_text(encoding="utf-8"), (
        f"{case.id}: docs/accuracy.md is stale; run `python scripts/accuracy_table.py`"
    )


def test_measure_cli_fsdp_ranks(tmp_path):
    """`ftmem measure --fsdp 2 --fsdp-ranks gloo`: the comparison from the command line,
    with one real process per rank. Their shards are the simulated ranks' to the byte,
    and their peak is the simulated one's within the suite's tolerance (gloo's threads
    free the collectives' buffers a moment late, by timing)."""
    import json

    from typer.testing import CliRunner

    from ftmem.api import run_config
    from ftmem.cli import app
    from ftmem.measure.sharded import measure_fsdp
    from ftmem.sources import resolve_model

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({
        "model_type": "llama", "vocab_size": 320, "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 128,
    }))  # fmt: skip
    args = ["measure", str(cfg), "--fsdp", "2", "--seq-len", "64", "--format", "json"]
    res = CliRunner().invoke(app, [*args, "--fsdp-ranks", "gloo"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output[res.output.index("{") :])
    assert len(data["ranks"]) == 2
    run = run_config(seq_len=64, device="cpu", optimizer_impl="for-loop")
    simulated = measure_fsdp(resolve_model(str(cfg)), run, 2)
    for rank, sim in zip(data["ranks"], simulated, strict=True):
        assert rank["weights_bytes"] == data["estimate"]["weights_bytes"]
        for key in ("weights_bytes", "gradients_bytes", "optimizer_states_bytes"):
            assert rank[key] == sim[key], key
        gap = rank["peak_allocated_bytes"] / sim["peak_allocated_bytes"] - 1
        assert abs(gap) <= PEAK_TOLERANCE, f"gloo peak {gap:+.1%} off the simulated one"
