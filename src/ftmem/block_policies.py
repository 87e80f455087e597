"""How a block's saved activations live through the step: plain, checkpointed, offloaded.

The step (step.py) asks a block's policy what each block keeps on the GPU from its
forward until its backward; the timeline (phases.py) asks it what each block's backward
holds besides the live gradients, the activations still kept and the op's workspace.

* plain: a block keeps what it saves; its backward adds nothing;
* checkpointed (torch.utils.checkpoint): a block keeps its input; its backward first
  rebuilds its saved tensors;
* offloaded (torch's save_on_cpu, torchtune's OffloadActivations): a block keeps nothing
  on the GPU; its backward brings one op's tensors back (the block's workspace counts
  them) and a trained block's own gradients appear beside them. It wraps a plain or a
  checkpointed block: checkpointing's kept inputs go to the host too.

Every tuple is per timeline entry, bottom to top (an encoder-decoder has two entries per
layer); ``backward_holds`` lists them in backward's order, top first; ``stage`` cuts a
pipeline stage's entries out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Plain:
    """Every saved tensor stays on the GPU until its block's backward."""

    def kept(self, saved: tuple[int, ...], inputs: tuple[int, ...]) -> tuple[int, ...]:
        return saved

    def on_host(self, saved: tuple[int, ...], inputs: tuple[int, ...]) -> int:
        return 0

    def backward_holds(self, entries: int, trainable: int) -> list[int]:
        return [0] * entries

    def stage(self, lo: int, hi: int) -> Plain:
        return self


PLAIN = Plain()


@dataclass(frozen=True, slots=True)
class Checkpointed:
    """A block keeps its input; its backward rebuilds ``rebuilt[i]`` first (a frozen
    block below the trained ones rebuilds less than they do).

    ``held`` (empty: none): per entry, bottom to top, the input a block's backward leaves
    alive until the whole backward ends, with the gradient of that input (the same
    bytes) once the block below has taken it: FSDP1's reshard-only hook registered on
    the reentrant checkpoint's detached input (parallel.fsdp1_held_inputs)."""

    rebuilt: tuple[int, ...]
    held: tuple[int, ...] = ()

    def kept(self, saved: tuple[int, ...], inputs: tuple[int, ...]) -> tuple[int, ...]:
        # a block that saves nothing (frozen, no gradient to its input) keeps no input
        return tuple(i if s else 0 for s, i in zip(saved, inputs, strict=True))

    def on_host(self, saved: tuple[int, ...], inputs: tuple[int, ...]) -> int:
        return 0

    def backward_holds(self, entries: int, trainable: int) -> list[int]:
        return list(self.rebuilt[::-1])

    def held_during(self, entries: int) -> list[int]:
        """Top first, as ``backward_holds``: what ``held`` keeps at each block's
        backward: the inputs of the blocks above, and the gradients of those above the
        next one (the next one's is the gradient flowing into this block, counted in its
        workspace). The allocator replay requests them itself (gpu.trace)."""
        if not self.held:
            return [0] * entries
        return [
            sum(self.held[i + 1 :]) + sum(self.held[i + 2 :]) for i in range(entries - 1, -1, -1)
        ]

    def held_after_blocks(self) -> int:
        """What ``held`` keeps once every block's backward is done, until backward ends:
        every input, and the gradient of every input but the lowest block's."""
        return sum(self.held) + sum(self.held[1:])

    def stage(self, lo: int, hi: int) -> Checkpointed:
        return Checkpointed(self.rebuilt[lo:hi], self.held[lo:hi])


@dataclass(frozen=True, slots=True)
class Offloaded:
    """What ``inner`` would keep lives in host RAM; a trained block's backward holds
    the own gradients it has made by its largest moment (``own_grads``) beside the op
    brought back. A frozen block below has none of its own (the trained ones' are
    already among the live gradients). ``idle``: per entry, bottom to top, a block
    that saves nothing, through which no gradient flows: autograd never reaches its
    backward, so it has no workspace moment (its offloaded twin would otherwise be
    the trained blocks' gradients plus a workspace it never allocates)."""

    inner: Plain | Checkpointed
    own_grads: int
    idle: tuple[bool, ...] = ()
    # the lowest trained block's instead, where the block below is idle (no gradient
    # leaves it: no input-norm moment); may be negative, relative to the workspace
    lowest_grads: int = 0

    def kept(self, saved: tuple[int, ...], inputs: tuple[int, ...]) -> tuple[int, ...]:
        return (0,) * len(saved)

    def on_host(self, saved: tuple[int, ...], inputs: tuple[int, ...]) -> int:
        return sum(self.inner.kept(saved, inputs))

    def backward_holds(self, entries: int, trainable: int) -> list[int]:
        holds = self.inner.backward_holds(entries, trainable)
        top = min(max(trainable, 0), entries)
        if self.own_grads:  # the top ``trainable`` entries, first in backward
            holds[:top] = [h + self.own_grads for h in holds[:top]]
        idle = self.idle_entries(entries)
        if 0 < top < entries and idle[top]:  # nothing below the lowest trained one
            holds[top - 1] += self.lowest_grads - self.own_grads
        return holds

    def idle_entries(self, entries: int) -> list[bool]:
        """Top first, as ``backward_holds``: the entries whose backward never runs."""
        return list(self.idle[::-1]) if len(self.idle) == entries else [False] * entries

    def stage(self, lo: int, hi: int) -> Offloaded:
        idle = self.idle[lo:hi]
        return Offloaded(self.inner.stage(lo, hi), self.own_grads, idle, self.lowest_grads)


BlockPolicy = Plain | Checkpointed | Offloaded
