"""Measure a sharded (FSDP2) step on the CPU, rank by rank.

Each rank builds the same tiny model, wraps every decoder block and then the root with
``fully_shard`` (MixedPrecisionPolicy for the ``*-mixed`` precisions, as Accelerate
does), runs two steps and reports, for the second, its local bytes of weights,
gradients and optimizer states and the step's peak of live tensor storage. DTensor
shards are counted by their local tensors (tracker.py).

Two ways to run the ranks:

- ``simulated`` (the default): each rank in turn, in this process, over PyTorch's fake
  process group. The collectives move no data but have the real shapes, and every
  buffer is freed by FSDP's own code on this thread, so the peak is the same on every
  run and every machine.
- ``gloo``: one process per rank over gloo, the collectives for real. gloo's worker
  threads drop their references to a collective's buffers a moment after the caller's
  wait returns, so the peak depends on scheduling: identical to the simulated one on an
  idle machine, 4 % higher once on a loaded CI machine (2026-11-29).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ftmem.arch import Architecture
from ftmem.measure.build import block_lists, build_model, build_optimizer
from ftmem.measure.tracker import LiveBytesTracker
from ftmem.run import RunConfig


def _local(t: torch.Tensor) -> torch.Tensor:
    local = getattr(t, "_local_tensor", None)
    return local if isinstance(local, torch.Tensor) else t


def _bytes(tensors: list[torch.Tensor]) -> int:
    return sum(_local(t).numel() * _local(t).element_size() for t in tensors)


class _StorageFn(Protocol):
    """The signature of FSDP2's alloc_storage / free_storage, which are replaced here."""

    def __call__(self, tensor: torch.Tensor) -> None: ...


@contextlib.contextmanager
def _follow_fsdp_storage(tracker: LiveBytesTracker) -> Iterator[None]:
    """FSDP2 frees gathered weights by resizing their storage to 0 and re-allocates
    them by resizing back, which no tensor op shows: report both to the tracker."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param, _fsdp_param_group

    originals = (_fsdp_param.alloc_storage, _fsdp_param.free_storage)

    def wrap(fn: _StorageFn) -> _StorageFn:
        def resize(tensor: torch.Tensor) -> None:
            fn(tensor)
            tracker.resized(tensor)

        return resize

    alloc, free = (wrap(f) for f in originals)
    _fsdp_param.alloc_storage, _fsdp_param.free_storage = alloc, free
    _fsdp_param_group.alloc_storage = alloc
    try:
        yield
    finally:
        _fsdp_param.alloc_storage, _fsdp_param.free_storage = originals
        _fsdp_param_group.alloc_storage = originals[0]


def _wrap(model: Any, fully_shard: Any, kw: dict[str, Any], sharded_ends: bool, tied: bool) -> None:
    """FSDP2 units: every block, then (torchtune's custom_sharded_layers:
    ['tok_embeddings', 'output']) the embedding and the LM head, then the root."""
    for blocks in block_lists(model):  # T5: every block of both stacks
        for block in blocks:
            fully_shard(block, **kw)
    if sharded_ends:
        ends = [model.get_input_embeddings(), model.get_output_embeddings()]
        if tied:  # one weight: one unit of both modules
            fully_shard(ends, **kw)
        else:
            for end in ends:
                fully_shard(end, **kw)
    fully_shard(model, **kw)


def _rank_main(
    rank: int,
    world: int,
    store: str,
    out: str,
    arch_json: str,
    run_json: str,
    reshard: bool,
    backend: str = "gloo",
    sharded_ends: bool = False,
) -> None:
    if backend == "gloo":
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    else:
        # importing it registers the "fake" backend
        importlib.import_module("torch.testing._internal.distributed.fake_pg")

        dist.init_process_group("fake", store=dist.HashStore(), rank=rank, world_size=world)
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        arch = Architecture.model_validate_json(arch_json)
        run = RunConfig.model_validate_json(run_json)
        kw: dict[str, Any] = {"reshard_after_forward": reshard}
        if run.precision.endswith("-mixed"):
            half = torch.bfloat16 if run.precision.startswith("bf16") else torch.float16
            # FSDP casts the gathered weights itself; the forward runs without autocast
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=half, reduce_dtype=half)
        model = build_model(arch, run, device="cpu", seed=0).model
        _wrap(model, fully_shard, kw, sharded_ends, arch.tie_embeddings)
        optimizer = build_optimizer(model, run)
        gen = torch.Generator().manual_seed(rank)
        ids = torch.randint(0, arch.vocab_size, (run.batch_size, run.seq_len), generator=gen)
        # an encoder-decoder learns labels of the decoder's length
        labels = ids
        if arch.encoder_decoder:
            shape = (run.batch_size, run.decoder_len)
            labels = torch.randint(0, arch.vocab_size, shape, generator=gen)

        def step(tracker: LiveBytesTracker | None = None) -> tuple[int, dict[str, int]]:
            peaks: dict[str, int] = {}

            def mark(phase: str) -> None:
                if tracker is not None:
                    peaks[phase] = tracker.peak
                    tracker.reset_peak()

            loss = model(input_ids=ids, labels=labels).loss
            mark("forward")
            loss.backward()
            del loss
            mark("backward")
            optimizer.step()
            mark("optimizer")
            grads = _bytes([p.grad for p in model.parameters() if p.grad is not None])
            optimizer.zero_grad(set_to_none=True)
            return grads, peaks

        step()  # creates the optimizer states
        states = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        tracker = LiveBytesTracker()
        tracker.track([_local(p) for p in model.parameters()])
        tracker.track([_local(b) for b in model.buffers()])
        tracker.track([_local(t) for t in states], ids, labels)
        with _follow_fsdp_storage(tracker), tracker:
            grads, peaks = step(tracker)
        result = {
            "weights_bytes": _bytes(list(model.parameters())),
            "gradients_bytes": grads,
            "optimizer_states_bytes": _bytes(states),
            "peak_allocated_bytes": max(peaks.values()),
            "phases": peaks,
        }
        Path(f"{out}.{rank}").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


RANK_MODES = ("simulated", "gloo")


def measure_fsdp(
    arch: Architecture,
    run: RunConfig,
    world: int = 2,
    reshard_after_forward: bool = True,
    mode: str = "simulated",
    sharded_ends: bool = False,
) -> list[dict[str, Any]]:
    """Per-rank measurements of one FSDP2 step (FULL_SHARD, or SHARD_GRAD_OP semantics
    with ``reshard_after_forward=False``); ``mode`` is one of :data:`RANK_MODES`;
    ``sharded_ends``: the token embedding and the LM head wrapped as units of their own
    before the root (torchtune's custom_sharded_layers)."""
    if mode not in RANK_MODES:
        raise ValueError(f"mode must be one of {RANK_MODES}, not {mode!r}")
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/rank"
        args = (
            world,
            f"{tmp}/store",
            out,
            arch.model_dump_json(),
            run.model_dump_json(),
            reshard_after_forward,
        )
        if mode == "gloo":
            mp.spawn(_rank_main, args=(*args, "gloo", sharded_ends), nprocs=world)
        else:
            for rank in range(world):
                _rank_main(rank, *args, backend="fake", sharded_ends=sharded_ends)
        return [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
