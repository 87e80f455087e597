"""The moments of a training step and which one is the peak.

Sizes come in already computed (bytes); this module only orders them in time.
Moments, in order:

* forward, in the last block: its transients (DoRA builds each adapted weight);
* forward, at the loss: weights + states + all saved activations + the logits and
  their fp32 copy;
* backward, at the loss: the same activations + the fp32 gradients of the
  log-softmax and of the logits;
* backward, at the final norm: the head side freed, the norm's backward workspace;
* backward, at each block from the top: the activations of the blocks not yet
  processed (the head side's are freed by then) + the gradients of the blocks already processed + the block's own
  workspace (or, with checkpointing, its recomputed activations);
* optimizer step: weights + states + all gradients + the step's temporaries.

With gradient accumulation (``grads_persist``) every gradient already exists from
the second micro-batch on, during forward as well. Under sharding, each phase adds
its communication memory (gathered layers, reduce buckets); a pipeline stage adds the
activations of the micro-batches it holds besides the one it is processing.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from itertools import accumulate, repeat

from ftmem.result import AtPeak, PhasePeaks


@dataclass(frozen=True, slots=True)
class StepSizes:
    weights: int
    states: int
    grads: int  # all gradients
    grads_outer: int  # embeddings, final norm, LM head (all outside the blocks)
    grads_per_block: int  # one trainable block's gradients
    trainable_blocks: int  # the top blocks that have gradients
    acts_per_block: tuple[int, ...]  # kept for backward, bottom to top
    acts_below: int  # embedding side: kept until the last block's backward
    acts_above: int  # final norm, LM head, loss: freed once the loss backward is done
    logits_forward: int
    forward_block_transient: int  # largest transient inside a block's forward (DoRA)
    loss_backward: int
    block_workspace: int  # transient inside one block's backward
    head_workspace: int  # transient of the final norm's backward
    recompute: int  # checkpointing: one block's activations rebuilt in backward
    optimizer_temporaries: int
    grads_persist: bool
    # Parallel runs (parallel.py): gathered weights and communication buckets live in
    # each phase, and the activations of other micro-batches a pipeline stage holds.
    comm_forward: int = 0  # inside the blocks' forward
    comm_backward: int = 0  # inside the blocks' backward
    comm_optimizer: int = 0
    comm_head_forward: int | None = None  # at the logits (default: comm_forward)
    comm_loss_backward: int | None = None  # at the loss backward (default: comm_backward)
    comm_head_backward: int | None = None  # final norm backward (default: comm_backward)
    acts_held: int = 0
    # of grads_outer, the token embedding's: created last, after the first block's backward
    grads_embedding: int = 0
    # tied embedding and LM head: the embedding's gradient and its sum with the head's
    # (held since the loss) are both new tensors at the very end of backward
    tied_embedding_backward: int = 0
    # optimizer step in backward (per-parameter hooks; gradients then count 0): the
    # largest single gradient plus its own step's temporaries, among the blocks' tensors
    # and among the others (the LM head steps after the loss, the embedding last)
    # ReLoRA: merging the adapters into the base between steps (B·A and its scaled copy
    # for the largest adapted linear), with no gradient held
    merge_transient: int = 0
    in_backward: bool = False
    # distillation: the frozen teacher's forward, before the student's (no activations)
    teacher_forward: int = 0
    step_block: int = 0
    step_outer: int = 0
    # Encoder-decoders: each timeline entry's own gradients (encoder and decoder blocks
    # differ; empty: grads_per_block for the top trainable_blocks), and the entry after
    # whose backward the shared embedding's first backward runs (the decoder's bottom
    # block, with the encoder's activations all alive; 0: after the last block)
    grads_by_block: tuple[int, ...] = ()
    embedding_backward_at: int = 0
    # checkpointing: each timeline entry's own recompute (a frozen block below the
    # trained ones rebuilds less than they do; empty: ``recompute`` for every block)
    recompute_by_block: tuple[int, ...] = ()
    # activation offload: a trained block's own gradients, created in its backward
    # beside the op brought back; a frozen block below has none of its own (the trained
    # ones' are already in the live gradients there)
    own_grads_transient: int = 0

    def largest_communication(self) -> int:
        """The communication memory's size: its largest over every moment, the head
        side's included (ZeRO-3 gathers the whole LM head or embedding at the logits,
        more than one quantized block)."""
        ends = (self.comm_head_forward, self.comm_loss_backward, self.comm_head_backward)
        return max(
            self.comm_forward,
            self.comm_backward,
            self.comm_optimizer,
            *(c for c in ends if c is not None),
        )


@dataclass(frozen=True, slots=True)
class Peak:
    phase: str
    at_peak: AtPeak
    phases: PhasePeaks


# (phase, gradients, activations, temporaries, communication); weights and states are
# live at every moment
Moment = tuple[str, int, int, int, int]


class _Race:
    """The moments weighed so far: each phase's largest total, and the largest moment."""

    __slots__ = ("base", "best", "winner", "winner_total")

    def __init__(self, base: int, first: Moment) -> None:
        self.base = base  # weights and states: live at every moment
        self.best: dict[str, int] = {}
        self.winner, self.winner_total = first, -1

    def weigh(self, moments: list[Moment]) -> None:
        """Moments in time order: a later one wins only if strictly larger."""
        best = self.best
        for m in moments:
            total = self.base + m[1] + m[2] + m[3] + m[4]
            best[m[0]] = max(best.get(m[0], 0), total)
            if total > self.winner_total:
                self.winner, self.winner_total = m, total

    def peak(self, s: StepSizes) -> Peak:
        phase, grads, acts_live, temporaries, comm = self.winner
        # (validated: pydantic's model_construct measured slower, 6 µs against 3-4 µs)
        at_peak = AtPeak(
            weights=s.weights,
            gradients=grads,
            optimizer_states=s.states,
            activations=acts_live,
            temporaries=temporaries,
            communication=comm,
        )
        best = self.best
        phases = PhasePeaks(
            forward=best["forward"], backward=best["backward"], optimizer=best["optimizer"]
        )
        return Peak(phase, at_peak, phases)


def find_peak(s: StepSizes) -> Peak:
    """The largest moment of the step, and each phase's own largest moment."""
    held = s.grads if s.grads_persist else 0
    acts = sum(s.acts_per_block) + s.acts_below + s.acts_above + s.acts_held
    live_grads = s.grads if s.grads_persist else s.grads_outer - s.grads_embedding
    live_acts = acts - s.acts_above
    head = _until_head_backward(s, held, acts, live_grads, live_acts)
    race = _Race(s.weights + s.states, head[0])
    race.weigh(head)
    # a weight steps as soon as its gradient exists, when the block's backward workspace
    # is past its largest (measured): the larger of the two, not their sum
    workspace = max(s.block_workspace, s.step_block)
    embedding = s.grads_embedding if not s.grads_persist else 0
    L = len(s.acts_per_block)
    bwd = s.comm_backward
    end: list[Moment] = []
    if 0 < s.embedding_backward_at < L:  # a first embedding backward mid-timeline
        live_grads, live_acts = _blocks_with_embedding_between(
            s, race, live_grads, live_acts, workspace, embedding
        )
        # the last embedding backward adds its part to the gradient that exists
        end.append(("backward", live_grads, live_acts, embedding, bwd))
    else:
        if L:
            live_grads, live_acts = _blocks_backward(s, race, live_grads, live_acts, workspace)
        if embedding:
            # the embedding's backward: every gradient now exists, the embedding side's
            # activations are the last ones held
            end.append(("backward", live_grads + embedding, live_acts, 0, bwd))
    race.weigh(end + _after_the_blocks(s, live_acts))
    return race.peak(s)


def _until_head_backward(
    s: StepSizes, held: int, acts: int, live_grads: int, live_acts: int
) -> list[Moment]:
    """Forward (the teacher's, the last block's, the logits), the loss backward and the
    final norm's backward: the moments before the blocks' backward."""
    fwd, bwd = s.comm_forward, s.comm_backward
    head_fwd = fwd if s.comm_head_forward is None else s.comm_head_forward
    loss_bwd = bwd if s.comm_loss_backward is None else s.comm_loss_backward
    head_bwd = bwd if s.comm_head_backward is None else s.comm_head_backward
    return [
        ("forward", held, 0, s.teacher_forward, fwd),
        ("forward", held, acts - s.acts_above, s.forward_block_transient, fwd),
        ("forward", held, acts, s.logits_forward, head_fwd),
        ("backward", held, acts, s.loss_backward, loss_bwd),
        ("backward", live_grads, live_acts, s.head_workspace + s.step_outer, head_bwd),
    ]


def _blocks_with_embedding_between(
    s: StepSizes, race: _Race, live_grads: int, live_acts: int, workspace: int, embedding: int
) -> tuple[int, int]:
    """Each block's backward, top first, where the shared embedding's first backward
    runs after block ``embedding_backward_at`` (an encoder-decoder's decoder bottom);
    the gradients and activations live after the last block."""
    L, bwd = len(s.acts_per_block), s.comm_backward
    moments: list[Moment] = []
    for i in range(L - 1, -1, -1):
        recompute = s.recompute_by_block[i] if s.recompute_by_block else s.recompute
        own = s.own_grads_transient if i >= L - s.trainable_blocks else 0
        moments.append(("backward", live_grads, live_acts, recompute + workspace + own, bwd))
        live_acts -= s.acts_per_block[i]
        if not s.grads_persist:
            if s.grads_by_block:
                live_grads += s.grads_by_block[i]
            elif i >= L - s.trainable_blocks:
                live_grads += s.grads_per_block
        if i == s.embedding_backward_at:
            # the gradient appears (tied: the new part and its sum with the head's)
            moments.append(("backward", live_grads + embedding, live_acts, 0, bwd))
            if s.tied_embedding_backward:
                moments.append(("backward", live_grads, live_acts, s.tied_embedding_backward, bwd))
            live_grads += embedding
    race.weigh(moments)
    return live_grads, live_acts


def _blocks_backward(
    s: StepSizes, race: _Race, live_grads: int, live_acts: int, workspace: int
) -> tuple[int, int]:
    """Each block's backward, top block first, as running sums (the blocks are most of
    the moments; a loop over them was a tenth of an estimate's time); the gradients and
    activations live after the last block."""
    L, bwd = len(s.acts_per_block), s.comm_backward
    acts_at = list(accumulate(s.acts_per_block[L - 1 :: -1], operator.sub, initial=live_acts))
    if s.grads_persist:
        grads_at: list[int] = [live_grads] * (L + 1)
    elif s.grads_by_block:
        grads_at = list(accumulate(s.grads_by_block[L - 1 :: -1], initial=live_grads))
    else:
        top = min(max(s.trainable_blocks, 0), L)
        added = [s.grads_per_block] * top + [0] * (L - top)
        grads_at = list(accumulate(added, initial=live_grads))
    rebuilt = (
        list(s.recompute_by_block[L - 1 :: -1])
        if s.recompute_by_block
        else list(repeat(s.recompute, L))
    )
    if s.own_grads_transient:  # a trained block's backward holds its own gradients
        for k in range(min(max(s.trainable_blocks, 0), L)):
            rebuilt[k] += s.own_grads_transient
    totals = list(map(operator.add, map(operator.add, grads_at, acts_at), rebuilt))
    largest = max(totals)
    total = race.base + largest + workspace + bwd
    race.best["backward"] = max(race.best["backward"], total)
    if total > race.winner_total:  # the first block of that size, as the list had it
        k = totals.index(largest)
        race.winner = ("backward", grads_at[k], acts_at[k], rebuilt[k] + workspace, bwd)
        race.winner_total = total
    return grads_at[L], acts_at[L]


def _after_the_blocks(s: StepSizes, live_acts: int) -> list[Moment]:
    """A tied embedding's last backward, then the optimizer step (or, stepped in
    backward, the embedding's own step) and ReLoRA's merge."""
    bwd, opt = s.comm_backward, s.comm_optimizer
    moments: list[Moment] = []
    if s.tied_embedding_backward:
        moments.append(("backward", s.grads, live_acts, s.tied_embedding_backward, bwd))
    if s.in_backward:
        # the embedding's step, last; no separate optimizer step after backward
        moments.append(("backward", 0, live_acts, s.step_outer, bwd))
        moments.append(("optimizer", 0, 0, 0, opt))
    else:
        moments.append(("optimizer", s.grads, 0, s.optimizer_temporaries, opt))
    if s.merge_transient:
        moments.append(("optimizer", 0, 0, s.merge_transient, opt))
    return moments
