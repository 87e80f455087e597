"""What the vision-tower tests (test_vision, test_vision_qwen, test_vision_pixtral)
measure the same way on their tiny image-text models: the bytes the autograd graph saves
from the image features back, with ftmem.vision's estimate of them, and the frozen
tower's forward moment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ftmem.dtypes import layer_norm_stats_bytes
from ftmem.vision import VisionTower, projector_parts, tower_parts


def cpu_ln(e: int) -> int:
    """A LayerNorm's mean and rstd, bytes each, as the CPU measured here keeps them."""
    return layer_norm_stats_bytes("cpu", e)


def saved_bytes(model: Any, features: Any) -> int:
    """The saved tensors of every autograd node reachable from ``features``, each storage
    once, the model's weights excluded."""
    from ftmem.measure.saved import walk_saved, weight_storage_ptrs

    return sum(s.nbytes for s in walk_saved(features.grad_fn, weight_storage_ptrs(model)))


def estimated_saved(
    v: VisionTower, images: int, text_hidden: int, attn: str, e: int, tower_trains: bool
) -> int:
    """ftmem.vision's bytes of the same forward: the tower's and the projector's, or the
    projector's alone when the tower is frozen (its forward then keeps nothing: the pixels
    need no gradient and its weights are frozen)."""
    if not tower_trains:
        return sum(
            projector_parts(v, text_hidden, images, e, tower_trains=False, ln_stats=cpu_ln(e))
        )
    eager = attn == "eager"
    return sum(tower_parts(v, images, e, eager, ln_stats=cpu_ln(e))) + sum(
        projector_parts(v, text_hidden, images, e, ln_stats=cpu_ln(e))
    )


def forward_moment(model: Any, inputs: tuple[Any, ...], forward: Callable[[], Any]) -> int:
    """The live-bytes peak while ``forward()`` runs, beyond the model's parameters and
    buffers and ``inputs`` (its output dropped after)."""
    from ftmem.measure.tracker import LiveBytesTracker

    tracker = LiveBytesTracker()
    tracker.track(list(model.parameters()), list(model.buffers()), *inputs)
    with tracker:
        before = tracker.current
        tracker.reset_peak()
        out = forward()
        peak = tracker.peak
    del out
    return peak - before
