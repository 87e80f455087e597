"""The moments of a training step and which one is the peak.

Sizes come in already computed (bytes), as a ``StepSizes`` of one record per concern;
this module only orders them in time, as typed ``Moment``s. Moments, in order:

* forward, in the last block: its transients (DoRA builds each adapted weight);
* forward, at the loss: weights + states + all saved activations + the logits and
  their fp32 copy;
* backward, at the loss: the same activations + the fp32 gradients of the
  log-softmax and of the logits;
* backward, at the final norm: the head side freed, the norm's backward workspace;
* backward, at each block from the top: the activations of the blocks not yet
  processed (the head side's are freed by then) + the gradients of the blocks already
  processed + the block's own workspace + what its policy holds (block_policies: with
  checkpointing its recomputed activations, with offload its own gradients);
* optimizer step: weights + states + all gradients + the step's temporaries.

With gradient accumulation (``Gradients.persist``) every gradient already exists from
the second micro-batch on, during forward as well; where zero_grad runs after the
forward (``Gradients.through_forward``), the previous step's gradients live through it. Under sharding, each phase adds
its communication memory (gathered layers, reduce buckets); a pipeline stage adds the
activations of the micro-batches it holds besides the one it is processing."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from itertools import accumulate

from ftmem.block_policies import PLAIN, BlockPolicy, Checkpointed, Offloaded
from ftmem.result import AtPeak, PhasePeaks


@dataclass(frozen=True, slots=True)
class Gradients:
    """The gradients, and when each appears: a block's in its backward (top block
    first), those outside the blocks at the head side's backward, the token
    embedding's after the blocks."""

    total: int  # all gradients
    outer: int  # embeddings, final norm, LM head (all outside the blocks)
    per_block: int  # one trainable block's gradients
    trainable_blocks: int  # the top blocks that have gradients
    persist: bool  # accumulation: every gradient exists from the second micro-batch on
    # of ``outer``, the token embedding's: created last, after the first block's backward
    embedding: int = 0
    # tied embedding and LM head: the embedding's gradient and its sum with the head's
    # (held since the loss) are both new tensors at the very end of backward
    tied_backward: int = 0
    # stepped in backward (the others count 0): a tied weight's LM-head part, summed in
    # autograd's input buffer from the head's backward until the embedding's
    tied_held: int = 0
    # Encoder-decoders: each timeline entry's own gradients (encoder and decoder blocks
    # differ; empty: per_block for the top trainable_blocks), and the entry after whose
    # backward the shared embedding's first backward runs (the decoder's bottom block,
    # with the encoder's activations all alive; 0: after the last block)
    by_block: tuple[int, ...] = ()
    embedding_at: int = 0
    # zero_grad runs after the forward, not after the optimizer step (Lightning's
    # automatic optimization): the previous step's gradients live through the forward
    through_forward: bool = False
    # of ``outer``, those made before the loss's backward (AdaLoRA's lora_A and lora_B,
    # by its regulariser: MethodPlan.gradient_at_head)
    before_loss: int = 0


@dataclass(frozen=True, slots=True)
class Activations:
    """What is kept for backward: per block, bottom to top, and outside the blocks."""

    per_block: tuple[int, ...]
    below: int  # embedding side: kept until the last block's backward
    above: int  # final norm, LM head, loss: freed once the loss backward is done
    held: int = 0  # a pipeline stage: the other micro-batches' it holds

    @property
    def total(self) -> int:
        return sum(self.per_block) + self.below + self.above + self.held


@dataclass(frozen=True, slots=True)
class BlockTransients:
    """What lives only for a moment inside one block, forward and backward."""

    forward: int  # largest transient inside a block's forward (DoRA)
    workspace: int  # inside one block's backward
    # plain, checkpointed or offloaded: what each block's backward holds besides the
    # live gradients and activations and its workspace (block_policies)
    policy: BlockPolicy = PLAIN
    # of ``workspace``, the block's own gradients made by its largest moment (the attention
    # kernel's: transients.attention_gradients_made; the MLP's: down_gradients_made):
    # tensors the allocator replay (gpu.trace) requests as the block's gradients, not as a
    # transient
    workspace_grads: int = 0
    # ``workspace`` without the attention kernel's moment (None: it has none), for a
    # sequence-parallel mode whose own attention replaces that kernel (ring_attn)
    without_kernel: int | None = None
    # each block's backward moment beyond ``workspace``, bottom to top, where a block kind
    # has its own (a checkpointed Gated DeltaNet block: transients.deltanet_backward_moments);
    # () where every block's is the top block's
    workspace_by_block: tuple[int, ...] = ()


def moment_grads(workspace: int, moment: int, made: int) -> int:
    """Of a block's workspace, the larger of ``workspace`` and an attention backward's
    ``moment``, the gradients ``made`` by then (BlockTransients.workspace_grads): those
    the moment counts, where it is the larger."""
    return max(0, moment - max(workspace, moment - made))


# one request of a head's program: ("alloc", bytes), or ("free", k) for the program's
# k-th allocation (its forward's and backward's numbered together)
HeadRequest = tuple[str, int]


@dataclass(frozen=True, slots=True)
class HeadRequests:
    """The LM head's and the loss's tensors one by one, in the order PyTorch allocates
    and frees them (ops.loss_requests), for the allocator replay (gpu.trace) in place of
    the two moments. ``saved_item``: the loss's saved item (bytes; one of the head
    side's tensors) that the forward makes among its requests, the backward frees (0
    under activation offload: the forward frees it, its host copy is the graph's);
    ``logits_forward`` and ``loss_backward``: the moments they lay out, beyond the
    saved tensors (a step whose head was changed since is replayed as moments)."""

    saved_item: int
    forward: tuple[HeadRequest, ...]
    backward: tuple[HeadRequest, ...]
    logits_forward: int
    loss_backward: int
    # the number of the forward's allocation the loop holds past the backward (the
    # model's output, StepSizes.output_held; freed after the optimizer step), -1: none
    output: int = -1
    # the output is held into the next pass's forward instead, freed at its
    # ("previous", 0) request (torchtune 0.1's shifted copy: ops.loss_requests)
    into_next_forward: bool = False
    # the number of the forward's allocation that stands for what the forward holds to
    # its end (autocast's weight cache): the replay requests it less the casts the
    # blocks' forwards made (StepTensors.block_cached) and frees those with it; -1: none
    cache: int = -1


@dataclass(frozen=True, slots=True)
class HeadTransients:
    """The head side's moments (final norm, LM head, loss): a pipeline's last stage."""

    logits_forward: int
    loss_backward: int
    workspace: int  # the final norm's backward
    # the same moments tensor by tensor, where the loss's order is derived
    requests: HeadRequests | None = None


NO_HEAD = HeadTransients(0, 0, 0)


@dataclass(frozen=True, slots=True)
class OptimizerStep:
    """The optimizer's step: after backward, or in it, one parameter at a time."""

    temporaries: int  # the step after backward
    # stepped in backward (per-parameter hooks; gradients then count 0): the largest
    # single gradient plus its own step's temporaries, among the blocks' tensors and
    # among the others (the LM head steps after the loss, the embedding last)
    in_backward: bool = False
    block: int = 0
    # ``block``'s requests one by one where the step makes them separately (GaLore's
    # SVD, transients.step_in_backward_tensors; they sum to ``block``); empty: one
    block_tensors: tuple[int, ...] = ()
    outer: int = 0
    # of those, the ones whose gradient completes at the head side (the LM head, the
    # final norm; not the token embedding, tied or not, nor positions: they step last);
    # None: ``outer``
    head_side: int | None = None
    # ReLoRA: merging the adapters into the base between steps (B·A and its scaled
    # copy for the largest adapted linear), with no gradient held
    merge: int = 0
    # the step's temporaries one by one where the engine's code names them (DeepSpeed
    # ZeRO-3: a sub-group's flat gradient copy and its fp32 gradient, parallel.py); empty:
    # ``temporaries`` as one sum
    tensors: tuple[int, ...] = ()
    # a transient before them (ZeRO-3's fp64 copy of the largest gradient, for its norm)
    norm_copy: int = 0
    # before that, requests on another stream whose pools the default stream never
    # reuses (ZeRO-3's overflow check on its reduce stream: deepspeed_zero3
    # .overflow_check_program), as ("alloc", bytes) / ("free", j)
    side_program: tuple[tuple[str, int], ...] = ()

    @property
    def at_head(self) -> int:
        """Stepped in backward: the largest step at the head side's backward."""
        return self.outer if self.head_side is None else self.head_side


@dataclass(frozen=True, slots=True)
class Communication:
    """Communication memory per phase (parallel.py: gathered weights, reduce buckets);
    None at the head side: as in the blocks."""

    forward: int = 0  # inside the blocks' forward
    backward: int = 0  # inside the blocks' backward
    optimizer: int = 0
    head_forward: int | None = None  # at the logits
    loss_backward: int | None = None  # at the loss backward
    head_backward: int | None = None  # the final norm's backward
    # before the forward (a teacher's forward, GRPO's generation): None, the forward's;
    # a number where that moment's own gathering is counted in it (parallel.py)
    before: int | None = None
    # FSDP's CPU offload: the root unit's and one unit's shard copied to the GPU before
    # their all-gathers, on a stream of their own and freed as soon as the all-gather
    # is issued, before any moment here: in the allocator replay only (gpu.trace)
    root_copy: int = 0
    unit_copy: int = 0
    # FSDP1: the unit resharded last, whose freed block waits for the compute stream
    # while the next unit gathers, through the forward and at the logits: in the
    # allocator replay only, a side-stream block freed before the next gather, so
    # reserved and not allocated (parallel.fsdp1_forward)
    forward_waiting: int = 0
    # FSDP1 with each LoRA leaf a unit (parallel.fsdp1_lora_backward): the decoder unit
    # resharded last waits the same way through backward (the replay alike)
    backward_waiting: int = 0

    def largest(self) -> int:
        """Its largest over every moment, the head side's included (ZeRO-3 gathers the
        whole LM head or embedding at the logits, more than one quantized block)."""
        ends = (self.head_forward, self.loss_backward, self.head_backward, self.before)
        return max(self.forward, self.backward, self.optimizer, *(c for c in ends if c is not None))

    def blocks_only(self) -> Communication:
        """The same without the head side's (a pipeline stage that is not the last)."""
        return Communication(
            self.forward,
            self.backward,
            self.optimizer,
            root_copy=self.root_copy,
            unit_copy=self.unit_copy,
            forward_waiting=self.forward_waiting,
            backward_waiting=self.backward_waiting,
        )


NO_COMMUNICATION = Communication()


@dataclass(frozen=True, slots=True)
class StepSizes:
    """The timeline's inputs, by concern; weights and states are live at every moment.
    Parallel runs (parallel.py) reshape each record per rank."""

    weights: int
    states: int
    gradients: Gradients
    activations: Activations
    block: BlockTransients
    head: HeadTransients
    optimizer: OptimizerStep
    comm: Communication = NO_COMMUNICATION
    # distillation: the frozen teacher's forward, before the student's (no activations);
    # GRPO: generation, or the no_grad log-probabilities after it
    teacher_forward: int = 0
    # the model forward's own transient before its first block, beside the activations
    # below the blocks and the other micro-batches' (ColossalAI's first pipeline stage
    # under ring_attn, a batch with pad tokens: the padded-causal mask it builds and
    # drops, sequence_parallel.ring_padded_mask_build)
    forward_start: int = 0
    # its communication (comm.before) one request per tensor, where known (GRPO under
    # ZeRO-3: each parameter gathered whole; gpu.trace)
    before_requests: tuple[int, ...] = ()
    # what the training loop itself holds at every moment (LitGPT: the last forward's
    # fp32 logits, until the next forward returns); at the peak counted with the
    # temporaries (saved for backward by no node, so not in the activations' size)
    loop_held: int = 0
    # torch.cuda.empty_cache() before and after the moment before the forward and after
    # the logits (torchtune's GRPO recipe, ftmem.torchtune_grpo): the allocator's free
    # segments returned to the driver there
    empties_cache: bool = False
    # the last pass's graph, alive through this pass's forward and its loss (LitGPT
    # rebinds ``loss`` after them): what autograd ctx attributes of it keep
    previous_graph: int = 0
    # what the loop holds of the model's output from the loss on, through the backward
    # and the optimizer step, freed before the next forward (fsdp_qlora's ``output``: its
    # logits); at the logits' own moment it is one of the head's transients
    output_held: int = 0
    # an image-text model's checkpointed vision tower: its backward after the blocks'
    # (one layer's recompute and gradients, ftmem.vision_step.backward_transient)
    vision_backward: int = 0
    # what each block's forward leaves held until the step drops the model's output,
    # after the loss: a checkpointed block's returned key/value cache (ftmem.returned_cache)
    block_returns: int = 0


@dataclass(frozen=True, slots=True)
class Peak:
    phase: str
    at_peak: AtPeak
    phases: PhasePeaks


@dataclass(slots=True)  # not frozen: its __init__ measured 5x slower (1.1 µs, 0.23 µs)
class Moment:
    """One moment of the step: what lives then besides the weights and the optimizer
    states (live at every moment). Read only, by convention."""

    phase: str  # forward, backward or optimizer
    gradients: int
    activations: int
    temporaries: int
    communication: int

    @property
    def total(self) -> int:
        return self.gradients + self.activations + self.temporaries + self.communication


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
            # (m.total written out: a property call per moment counted in the timeline)
            total = self.base + m.gradients + m.activations + m.temporaries + m.communication
            best[m.phase] = max(best.get(m.phase, 0), total)
            if total > self.winner_total:
                self.winner, self.winner_total = m, total

    def peak(self, s: StepSizes) -> Peak:
        w = self.winner
        # (validated: pydantic's model_construct measured slower, 6 µs against 3-4 µs)
        at_peak = AtPeak(
            weights=s.weights,
            gradients=w.gradients,
            optimizer_states=s.states,
            activations=w.activations,
            # what the loop holds is saved by no node: beside the transients, so that
            # the activations at the peak stay a part of their size (the saved tensors)
            temporaries=w.temporaries + s.loop_held,
            communication=w.communication,
        )
        best = self.best
        phases = PhasePeaks(
            forward=best["forward"], backward=best["backward"], optimizer=best["optimizer"]
        )
        return Peak(w.phase, at_peak, phases)


def find_peak(s: StepSizes) -> Peak:
    """The largest moment of the step, and each phase's own largest moment."""
    g = s.gradients
    held = g.total if g.persist else 0
    held_forward = g.total if g.through_forward else held
    held = held or g.before_loss
    acts = s.activations.total
    live_grads = g.total if g.persist else g.outer - g.embedding + g.tied_held
    live_acts = acts - s.activations.above + s.output_held
    head = _until_head_backward(s, (held_forward, held), acts, live_grads, live_acts)
    race = _Race(s.weights + s.states + s.loop_held, head[0])
    race.weigh(head)
    # a weight steps as soon as its gradient exists, when the block's backward workspace
    # is past its largest (measured): the larger of the two, not their sum
    workspace = max(s.block.workspace, s.optimizer.block)
    embedding = g.embedding if not g.persist else 0
    L = len(s.activations.per_block)
    bwd = s.comm.backward
    end: list[Moment] = []
    if 0 < g.embedding_at < L:  # a first embedding backward mid-timeline
        live_grads, live_acts = _blocks_with_embedding_between(
            s, race, live_grads, live_acts, workspace, embedding
        )
        live_acts += _held_after_blocks(s.block.policy)
        # the last embedding backward adds its part to the gradient that exists
        end.append(Moment("backward", live_grads, live_acts, embedding, bwd))
    else:
        if L:
            live_grads, live_acts = _blocks_backward(s, race, live_grads, live_acts, workspace)
        live_grads -= g.tied_held  # summed into the tied weight's gradient (_after_the_blocks)
        # what the blocks' backward left held until backward ends (Checkpointed.held)
        live_acts += _held_after_blocks(s.block.policy)
        if embedding:
            # the embedding's backward: every gradient now exists, the embedding side's
            # activations are the last ones held
            end.append(Moment("backward", live_grads + embedding, live_acts, 0, bwd))
        live_grads += embedding
    if s.vision_backward:  # the tower's backward, last, beside the embedding side
        end.append(Moment("backward", live_grads, live_acts, s.vision_backward, bwd))
    race.weigh(end + _after_the_blocks(s, live_acts))
    return race.peak(s)


def _until_head_backward(
    s: StepSizes, held: tuple[int, int], acts: int, live_grads: int, live_acts: int
) -> list[Moment]:
    """Forward (the teacher's, the last block's, the logits), the loss backward and the
    final norm's backward: the moments before the blocks' backward. ``held``: the
    gradients live through the forward, and at the loss's backward."""
    held_forward, held_backward = held
    c, head = s.comm, s.head
    fwd, bwd = c.forward, c.backward
    head_fwd = fwd if c.head_forward is None else c.head_forward
    loss_bwd = bwd if c.loss_backward is None else c.loss_backward
    head_bwd = bwd if c.head_backward is None else c.head_backward
    above, previous = s.activations.above, s.previous_graph
    # the blocks' returned caches, the top block's own too: it outlives the block's
    # attention, beside its MLP's intermediates (its forward transient)
    returns = len(s.activations.per_block) * s.block_returns
    moments = [
        Moment("forward", held_forward, acts - above + previous + returns, s.block.forward, fwd),
        Moment("forward", held_forward, acts + previous + returns, head.logits_forward, head_fwd),
        Moment("backward", held_backward, acts + s.output_held, head.loss_backward, loss_bwd),
        Moment("backward", live_grads, live_acts, head.workspace + s.optimizer.at_head, head_bwd),
    ]
    if s.forward_start:
        below = s.activations.held + s.activations.below + previous
        moments.insert(0, Moment("forward", held_forward, below, s.forward_start, 0))
    if s.teacher_forward or c.before:  # without one the next moment holds all it would
        before = fwd if c.before is None else c.before
        moments.insert(0, Moment("forward", held_forward, previous, s.teacher_forward, before))
    return moments


def _blocks_with_embedding_between(
    s: StepSizes, race: _Race, live_grads: int, live_acts: int, workspace: int, embedding: int
) -> tuple[int, int]:
    """Each block's backward, top first, where the shared embedding's first backward
    runs after block ``embedding_at`` (an encoder-decoder's decoder bottom); the
    gradients and activations live after the last block."""
    g, b, per_block = s.gradients, s.block, s.activations.per_block
    L, bwd = len(per_block), s.comm.backward
    holds = _backward_holds(b.policy, L, g.trainable_blocks)  # top first
    moments: list[Moment] = []
    for i in range(L - 1, -1, -1):
        moments.append(Moment("backward", live_grads, live_acts, holds[L - 1 - i] + workspace, bwd))
        live_acts -= per_block[i]
        if not g.persist:
            if g.by_block:
                live_grads += g.by_block[i]
            elif i >= L - g.trainable_blocks:
                live_grads += g.per_block
        if i == g.embedding_at:
            # the gradient appears (tied: the new part and its sum with the head's)
            moments.append(Moment("backward", live_grads + embedding, live_acts, 0, bwd))
            if g.tied_backward:
                moments.append(Moment("backward", live_grads, live_acts, g.tied_backward, bwd))
            live_grads += embedding
    race.weigh(moments)
    return live_grads, live_acts


def _blocks_backward(
    s: StepSizes, race: _Race, live_grads: int, live_acts: int, workspace: int
) -> tuple[int, int]:
    """Each block's backward, top block first, as running sums (the blocks are most of
    the moments; a loop over them was a tenth of an estimate's time); the gradients and
    activations live after the last block."""
    g, b, per_block = s.gradients, s.block, s.activations.per_block
    L, bwd = len(per_block), s.comm.backward
    acts_at = list(accumulate(per_block[L - 1 :: -1], operator.sub, initial=live_acts))
    if g.persist:
        grads_at: list[int] = [live_grads] * (L + 1)
    elif g.by_block:
        grads_at = list(accumulate(g.by_block[L - 1 :: -1], initial=live_grads))
    else:
        top = min(max(g.trainable_blocks, 0), L)
        added = [g.per_block] * top + [0] * (L - top)
        grads_at = list(accumulate(added, initial=live_grads))
    rebuilt = _backward_holds(b.policy, L, g.trainable_blocks)  # top first
    if b.workspace_by_block:  # (a block kind with its own backward moment)
        rebuilt = list(map(operator.add, rebuilt, b.workspace_by_block[::-1]))
    if isinstance(b.policy, Offloaded) and any(idle := b.policy.idle_entries(L)):
        # a block autograd never reaches allocates no workspace
        rebuilt = [-workspace if off else x for x, off in zip(rebuilt, idle, strict=True)]
    totals = list(map(operator.add, map(operator.add, grads_at, acts_at), rebuilt))
    largest = max(totals)
    total = race.base + largest + workspace + bwd
    race.best["backward"] = max(race.best["backward"], total)
    if total > race.winner_total:  # the first block of that size, as the list had it
        k = totals.index(largest)
        race.winner = Moment("backward", grads_at[k], acts_at[k], rebuilt[k] + workspace, bwd)
        race.winner_total = total
    return grads_at[L], acts_at[L]


def _backward_holds(policy: BlockPolicy, L: int, trainable: int) -> list[int]:
    """What each block's backward holds besides the live gradients and activations, top
    first: its policy's, with what earlier blocks' backward left held (Checkpointed.held)."""
    holds = policy.backward_holds(L, trainable)
    if isinstance(policy, Checkpointed) and policy.held:
        holds = list(map(operator.add, holds, policy.held_during(L)))
    return holds


def _held_after_blocks(policy: BlockPolicy) -> int:
    """What a checkpointed block's backward leaves held until backward ends."""
    return policy.held_after_blocks() if isinstance(policy, Checkpointed) else 0


def _after_the_blocks(s: StepSizes, live_acts: int) -> list[Moment]:
    """A tied embedding's last backward, then the optimizer step (or, stepped in
    backward, the embedding's own step) and ReLoRA's merge."""
    bwd, opt, step = s.comm.backward, s.comm.optimizer, s.optimizer
    grads = s.gradients.total
    moments: list[Moment] = []
    if s.gradients.tied_backward:
        held = grads + s.gradients.tied_held
        moments.append(Moment("backward", held, live_acts, s.gradients.tied_backward, bwd))
    if step.in_backward:
        # the embedding's step, last; no separate optimizer step after backward
        moments.append(Moment("backward", 0, live_acts, step.outer, bwd))
        moments.append(Moment("optimizer", 0, 0, 0, opt))
    else:
        moments.append(Moment("optimizer", grads, s.output_held, step.temporaries, opt))
    if step.merge:
        moments.append(Moment("optimizer", 0, 0, step.merge, opt))
    return moments
