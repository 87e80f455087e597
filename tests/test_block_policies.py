"""The timeline over hand-made step sizes, one per block policy (plain, checkpointed,
offloaded): every moment is written out below, the peak picked by hand."""

from __future__ import annotations

from ftmem.block_policies import PLAIN, BlockPolicy, Checkpointed, Offloaded
from ftmem.phases import (
    Activations,
    BlockTransients,
    Gradients,
    HeadTransients,
    OptimizerStep,
    StepSizes,
    find_peak,
)

WEIGHTS, STATES = 100, 200  # live at every moment: 300 under each moment below


def _sizes(
    policy: BlockPolicy, per_block: tuple[int, ...], outer: tuple[int, int], workspace: int
) -> StepSizes:
    """Three blocks, the top two trained (20 bytes of gradients each, none outside)."""
    return StepSizes(
        weights=WEIGHTS,
        states=STATES,
        gradients=Gradients(total=40, outer=0, per_block=20, trainable_blocks=2, persist=False),
        activations=Activations(per_block, below=outer[0], above=outer[1]),
        block=BlockTransients(forward=5, workspace=workspace, policy=policy),
        head=HeadTransients(logits_forward=40, loss_backward=25, workspace=3),
        optimizer=OptimizerStep(temporaries=15),
    )


def test_plain_blocks_peak_at_the_logits() -> None:
    # forward at the logits: every activation (3 * 50 + 10 + 30) and the logits
    peak = find_peak(_sizes(PLAIN, (50, 50, 50), (10, 30), workspace=7))
    assert peak.phase == "forward"
    assert (peak.at_peak.activations, peak.at_peak.temporaries) == (190, 40)
    assert peak.at_peak.total == 300 + 190 + 40
    # backward's largest: the loss (190 + 25); the top block's is 160 + 7
    assert peak.phases.backward == 300 + 215
    assert peak.phases.optimizer == 300 + 40 + 15


def test_checkpointed_blocks_peak_at_the_bottom_block() -> None:
    # each block keeps its 8-byte input and rebuilds 40, 45, 50 (bottom to top):
    # logits 64 + 40 = 104; blocks from the top: 0 + 34 + 50 + 7 = 91,
    # 20 + 26 + 45 + 7 = 98, 40 + 18 + 40 + 7 = 105 (the peak)
    peak = find_peak(_sizes(Checkpointed((40, 45, 50)), (8, 8, 8), (10, 30), workspace=7))
    assert peak.phase == "backward"
    at = peak.at_peak
    assert (at.gradients, at.activations, at.temporaries) == (40, 18, 47)
    assert peak.phases.forward == 300 + 104


def test_offloaded_blocks_hold_their_own_gradients_when_trained() -> None:
    # nothing kept on the GPU; blocks from the top: 0 + (20 + 16) = 36,
    # 20 + (20 + 16) = 56, and the frozen bottom block 40 + 16 = 56, not larger: the
    # trained block below the top is the peak (the optimizer step: 40 + 15 = 55)
    policy = Offloaded(PLAIN, own_grads=20)
    peak = find_peak(_sizes(policy, (0, 0, 0), (0, 0), workspace=16))
    assert peak.phase == "backward"
    at = peak.at_peak
    assert (at.gradients, at.activations, at.temporaries) == (20, 0, 36)
    assert peak.phases.optimizer == 300 + 55


def test_an_idle_frozen_block_below_has_no_offloaded_moment() -> None:
    # the bottom block saves nothing: autograd never reaches it, so it allocates no
    # workspace: its moment is the 40 bytes of gradients alone (40 + 30 = 70 with one).
    # The trained blocks hold 8 of their own beyond the workspace, the lowest one 2 less
    # than the workspace (nothing below takes a gradient: no input-norm moment). From
    # the top: 0 + 30 + 8 = 38, then 20 + 30 - 2 = 48 (the backward's largest), then 40;
    # the loss's 25 and the final norm's 3 are smaller
    policy = Offloaded(PLAIN, own_grads=8, idle=(True, False, False), lowest_grads=-2)
    assert policy.backward_holds(3, trainable=2) == [8, -2, 0]
    assert policy.idle_entries(3) == [False, False, True]
    peak = find_peak(_sizes(policy, (0, 0, 0), (0, 0), workspace=30))
    assert peak.phases.backward == 300 + 48
    # a pipeline stage keeps its entries' idleness (the lower stage: all of its blocks)
    assert policy.stage(0, 1).idle_entries(1) == [True]
    # with every block reached, the lowest trained block is as the others
    reached = Offloaded(PLAIN, own_grads=8, idle=(False, False, False), lowest_grads=-2)
    assert reached.backward_holds(3, trainable=2) == [8, 8, 0]


def test_offloaded_checkpointed_blocks_rebuild_and_hold_gradients() -> None:
    # checkpointing's rebuild under offload, and the trained blocks' own gradients: top
    # first 50 + 20, 45 + 20, then the frozen bottom block's 40 alone
    policy = Offloaded(Checkpointed((40, 45, 50)), own_grads=20)
    assert policy.backward_holds(3, trainable=2) == [70, 65, 40]
    # checkpointing's kept inputs go to the host with everything else
    assert policy.kept((30, 30, 0), (8, 8, 8)) == (0, 0, 0)
    assert policy.on_host((30, 30, 0), (8, 8, 8)) == 16


def test_a_pipeline_stage_takes_its_own_blocks() -> None:
    # four entries, two stages: the upper stage's backward meets 4 then 3
    policy = Offloaded(Checkpointed((1, 2, 3, 4)), own_grads=10)
    assert policy.stage(2, 4).backward_holds(2, trainable=1) == [14, 3]
    assert policy.stage(0, 2).backward_holds(2, trainable=0) == [2, 1]
    assert PLAIN.stage(0, 2).backward_holds(2, trainable=2) == [0, 0]
