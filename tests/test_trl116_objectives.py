"""TRL >= 1.16's DPO, KTO and GRPO trainers (--loss logprob-tiles with --objective dpo |
ipo | kto | apo-zero-unpaired | grpo): every log-probability, the policy's and the
reference's, comes from the fused LM head SFTTrainer uses, never from logits.

Source: trl 1.16.0 (pip), trl/trainer/dpo_trainer.py:960 and :962, kto_trainer.py:967
and :972, grpo_trainer.py:1068 and :1075 (add_fused_lm_head on the policy and on a
reference copy), trl/trainer/utils.py:1599 _fused_forward, trl/kernels/chunked_logprob.py
:299 ChunkedLogProbFunction. The expected numbers are derived here by hand; the
measurements run ftmem's loops of the three trainers (ftmem.measure.step
_tiles_preference_loss, _tiles_kto_loss; ftmem.measure.grpo fused_per_token_logps) over
ftmem's replay of the tile function, itself checked against TRL's own function where trl
is installed.
"""

from __future__ import annotations

import pytest

from ftmem.presets import get_model
from ftmem.run import RunConfig
from ftmem.step import step_parts
from ftmem.transients import frozen_forward_transient
from tests.conftest import tiny

TILES = "TRL log-prob tiles"
V, H = 32000, 4096  # Llama-2-7B's vocabulary and hidden size
BUFFER_ROWS, BUFFER_VOCAB = 4096, 32768  # chunked_logprob.py:31, utils.py:1506


def _run(**settings) -> RunConfig:
    return RunConfig(**{"loss": "logprob-tiles", "grad_ckpt": False, **settings})


def _item_sizes(parts) -> list[int]:
    return [s.nbytes for s in parts.outer_items]


# -- DPO on Llama-2-7B, by hand --------------------------------------------------------------


def test_dpo_lora_keeps_the_tiles_of_both_sequences_and_no_logits():
    arch = get_model("llama2-7b")
    run = _run(method="lora", precision="bf16", objective="dpo", batch_size=1, seq_len=4096)
    parts = step_parts(arch, run)
    # chosen and rejected in one forward: 2 sequences, N = 2·4095 shifted rows
    N = 2 * 4095
    tiles = sum(s.nbytes for s in parts.outer_items if s.what.startswith(TILES))
    assert tiles == N * H * 2 + N * 8 + 2 * N * 4 + N
    # no item of the logits' size (TRL <= 1.15 kept a 16-bit log-softmax of N·V)
    assert max(_item_sizes(parts)) < N * V
    assert not any(s.what.startswith("preference loss") for s in parts.outer_items)


def test_dpo_lora_reference_pass_beside_the_policys_outputs():
    arch = get_model("llama2-7b")
    run = _run(method="lora", precision="bf16", objective="dpo", batch_size=1, seq_len=4096)
    parts = step_parts(arch, run)
    T, N = 2 * 4096, 2 * 4095
    buffer = BUFFER_ROWS * BUFFER_VOCAB * 2  # min(N, 4096) rows x 32768, bf16: 256 MiB
    labels = T * 8  # input_ids.masked_fill(...): int64, the whole _compute_loss
    backbone = T * H * 2  # last_hidden_state, alive until the fused forward returns
    # the tiles' loop: the buffer, 7 fp32 statistics, then log-probs and a quotient (9·N·4)
    tiles = buffer + 9 * N * 4
    policy = labels + backbone + tiles
    # the policy's outputs held (dpo_trainer.py:957): fp32 log-probs, entropy, mean
    # logit, bool top-1, bool label mask
    held = labels + N * (3 * 4 + 1 + 1)
    # the reference's pass makes what the policy's saved (rows copy, targets, log Z and
    # entropy, mask), freed when it returns
    made = N * H * 2 + N * 8 + 2 * N * 4 + N
    reference = backbone + made + tiles
    blocks = frozen_forward_transient(arch, run.model_copy(update={"batch_size": 2}), 2, 2, T)
    expected = max(policy, held + max(blocks, reference))
    assert parts.sizes.head.logits_forward == expected
    # backward: the incoming fp32 gradient, the fp32 rows' accumulator, the buffer again,
    # the accumulator's bf16 cast at the return (a frozen head: no weight gradient)
    assert parts.sizes.head.loss_backward == N * 4 + N * H * 4 + buffer + N * H * 2


def test_dpo_full_adds_the_reference_copy_and_the_head_weight_accumulator():
    arch = get_model("llama2-7b")
    run = _run(method="full", precision="bf16", objective="dpo", batch_size=1, seq_len=4096)
    parts = step_parts(arch, run)
    sft = step_parts(arch, _run(method="full", precision="bf16", batch_size=2, seq_len=4096))
    # a frozen copy in the policy's dtype (dpo_trainer.py:925 create_model_from_path)
    assert parts.sizes.weights == 2 * sft.sizes.weights == 2 * 6_738_415_616 * 2
    N, buffer = 2 * 4095, BUFFER_ROWS * BUFFER_VOCAB * 2
    head = V * H * 4 + V * H * 2  # the head's fp32 accumulator, then its bf16 cast
    assert parts.sizes.head.loss_backward == N * 4 + N * H * 4 + buffer + N * H * 2 + head


def test_trl_116_estimates_less_than_trl_115_for_dpo():
    arch = get_model("llama2-7b")
    settings = dict(method="lora", precision="bf16", objective="dpo", batch_size=1, seq_len=4096)
    from ftmem.estimate import estimate_step

    old = estimate_step(arch, RunConfig(**settings)).memory.peak_allocated_bytes
    new = estimate_step(arch, _run(**settings)).memory.peak_allocated_bytes
    # TRL <= 1.15: a 16-bit log-softmax of 2·4095 rows x 32000 (500 MiB) saved, the logits
    # held; TRL 1.16: a 256 MiB buffer at a time
    assert new < old - 2 * 4095 * V * 2


# -- KTO -------------------------------------------------------------------------------------


def test_kto_reference_runs_its_passes_after_the_policy_with_its_outputs_held():
    arch = get_model("llama2-7b")
    run = _run(method="lora", precision="bf16", objective="kto", batch_size=2, seq_len=2048)
    parts = step_parts(arch, run)
    T, N = 2 * 2048, 2 * 2047
    buffer = min(N, BUFFER_ROWS) * BUFFER_VOCAB * 2
    labels, backbone, tiles = T * 8, T * H * 2, buffer + 9 * N * 4
    held = labels + N * (3 * 4 + 1)  # log-probs, entropy, mean logit (kto_trainer.py:969), mask
    made = N * H * 2 + N * 8 + 2 * N * 4 + N
    blocks = frozen_forward_transient(arch, run, 2, 2, T)
    expected = max(labels + backbone + tiles, held + max(blocks, backbone + made + tiles))
    assert parts.sizes.head.logits_forward == expected
    # TRL <= 1.15's metrics copied the logits after the loss: none of that here
    assert max(_item_sizes(parts)) < N * V


def test_precomputed_reference_leaves_the_policys_pass_alone():
    arch = get_model("llama2-7b")
    run = _run(
        method="lora",
        precision="bf16",
        objective="kto",
        batch_size=2,
        seq_len=2048,
        precompute_ref=True,
    )
    T, N = 2 * 2048, 2 * 2047
    tiles = min(N, BUFFER_ROWS) * BUFFER_VOCAB * 2 + 9 * N * 4
    assert step_parts(arch, run).sizes.head.logits_forward == T * 8 + T * H * 2 + tiles


# -- GRPO ------------------------------------------------------------------------------------


def test_grpo_scores_the_completion_rows_only():
    arch = get_model("llama2-7b")
    run = _run(
        method="lora",
        precision="bf16",
        objective="grpo",
        batch_size=8,
        seq_len=1024,
        completion_len=512,
        kl_beta=0.04,
    )
    parts = step_parts(arch, run)
    b, S, C = 8, 1024, 512
    N = b * C  # labels -100 but on the completion (grpo_trainer.py:1496), on CUDA compact
    tiles = sum(s.nbytes for s in parts.outer_items if s.what.startswith(TILES))
    # rows, targets, log Z and entropy for the b·C rows; the mask has the shifted shape
    assert tiles == N * H * 2 + N * 8 + 2 * N * 4 + b * (S - 1)
    assert not any("logit" in s.what or "log-softmax" in s.what for s in parts.outer_items)
    buffer = BUFFER_ROWS * BUFFER_VOCAB * 2
    # forward: attention mask and labels (int64), the backbone's output over b·S, the tiles
    assert parts.sizes.head.logits_forward == 2 * b * S * 8 + b * S * H * 2 + buffer + 9 * N * 4
    assert parts.sizes.head.loss_backward == max(
        N * 4 + N * H * 4 + buffer + N * H * 2, N * H * 2 + b * S * H * 2
    )


def test_grpo_on_the_cpu_scores_every_shifted_position():
    """Off Triton TRL projects every shifted position (trl 1.16.0 trl/trainer/utils.py:1638
    ``compact = _use_triton(device)``, :1645 ``hidden_states.reshape(-1, H)``): the
    prompt's rows too, N = b·(S − 1), where CUDA scores the b·C completion rows."""
    arch = get_model("llama2-7b")
    settings = dict(method="lora", precision="bf16", objective="grpo", batch_size=2,
                    seq_len=64, completion_len=16, kl_beta=0.04)  # fmt: skip
    b, S, C = 2, 64, 16
    cpu = step_parts(arch, _run(device="cpu", optimizer_impl="for-loop", **settings))
    cuda = step_parts(arch, _run(**settings))
    for parts, N in ((cpu, b * (S - 1)), (cuda, b * C)):
        tiles = sum(s.nbytes for s in parts.outer_items if s.what.startswith(TILES))
        assert tiles == N * H * 2 + N * 8 + 2 * N * 4 + b * (S - 1)
    # the forward's tiles: min(N, 4096) rows of the 32768-wide buffer and 9 fp32 per row
    gap = cpu.sizes.head.logits_forward - cuda.sizes.head.logits_forward
    assert gap == (b * (S - 1) - b * C) * (BUFFER_VOCAB * 2 + 9 * 4)


def test_grpo_buffers_fp32_log_probabilities():
    # the kernel's log-probabilities are fp32 whatever the dtype: the buffered reference
    # ones (R·C) take 4 bytes each, not bf16's 2
    arch = tiny("llama")
    settings = dict(
        method="lora", precision="bf16", objective="grpo", batch_size=3, seq_len=50,
        num_generations=3, completion_len=20, kl_beta=0.04,
    )  # fmt: skip
    new = step_parts(arch, _run(**settings)).sizes.loop_held
    old = step_parts(arch, RunConfig(grad_ckpt=False, **settings)).sizes.loop_held
    assert new - old == 3 * 20 * (4 - 2)


# -- what is refused -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"objective": "simpo"}, "CPO or ORPO trainer"),
        ({"objective": "orpo"}, "CPO or ORPO trainer"),
        ({"objective": "dpo", "framework": "llama-factory"}, "TRL's fused LM head"),
        ({"objective": "dpo", "framework": "torchtune"}, "TRL's fused LM head"),
    ],
)
def test_tiles_are_refused_where_trl_does_not_use_them(settings, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(method="lora", loss="logprob-tiles", **settings)


def test_other_losses_stay_refused_for_preference_objectives():
    with pytest.raises(ValueError, match="drop --loss fused"):
        RunConfig(method="lora", loss="fused", objective="dpo")


def test_the_cli_refuses_in_one_sentence():
    from typer.testing import CliRunner

    from ftmem.cli.root import app

    args = ["estimate", "llama2-7b", "--method", "lora", "--objective", "orpo"]
    result = CliRunner().invoke(app, [*args, "--loss", "logprob-tiles"])
    assert result.exit_code == 2
    assert "CPO or ORPO trainer" in result.output
    assert "Traceback" not in result.output


# -- ftmem's replay of the tile function against TRL's own -------------------------------------


def _tile_moments(fn, dtype, autocast: bool, head_grad: bool, N: int, v: int, h: int):
    """(forward peak, saved, backward peak) above the inputs of one tile function call,
    its log-probabilities summed as the loss."""
    import torch

    from ftmem.measure.tracker import LiveBytesTracker

    torch.manual_seed(0)
    rows = torch.randn(N, h, dtype=dtype, requires_grad=True)
    weight = torch.randn(v, h, dtype=dtype, requires_grad=head_grad)
    targets = torch.randint(0, v, (N,))
    tracker = LiveBytesTracker()
    with tracker:
        tracker.track(rows, weight, targets)
        base = tracker.current
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = fn(rows, weight, targets)
        forward = tracker.peak - base
        loss = out[0].sum()
        del out
        saved = tracker.current - base
        tracker.reset_peak()
        loss.backward()
        backward = tracker.peak - base
    return forward, saved, backward


@pytest.mark.parametrize(
    "precision, head_grad", [("fp32", True), ("bf16", True), ("bf16", False), ("mixed", False)]
)
def test_the_replay_allocates_what_trls_function_does(monkeypatch, precision, head_grad):
    pytest.importorskip("trl")
    import torch

    cl = pytest.importorskip("trl.kernels.chunked_logprob")
    from ftmem.measure.step import DPO_OUTPUTS, LogProbTiles

    # TRL's torch fallback of its Triton folds makes tile-sized fp32 temporaries that CUDA
    # does not: stubbed (as tests/test_trl_logprob_loss.py does); off CUDA its
    # _addmm_fp32 copies 16-bit operands to fp32 (chunked_logprob.py:52), where CUDA's
    # addmm with an fp32 output reads them as they are: replaced by a row-at-a-time add
    # without copies. The rest of TRL's function (buffers, statistics, saved tensors,
    # accumulators, casts) runs as it is.
    monkeypatch.setattr(cl, "_forward_tile", lambda *a, **k: None)
    monkeypatch.setattr(cl, "_backward_tile", lambda *a, **k: None)

    def addmm_fp32(acc, a, b):
        for i in range(a.shape[0]):
            acc[i : i + 1] += (a[i : i + 1] @ b).float()

    monkeypatch.setattr(cl, "_addmm_fp32", addmm_fp32)
    N, v, h = 62, 300, 96
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    autocast = precision == "mixed"

    def trl(rows, weight, targets):
        return cl.ChunkedLogProbFunction.apply(
            rows, weight, None, targets, 1.0, 32768, None, 1.0, DPO_OUTPUTS
        )

    def ours(rows, weight, targets):
        return LogProbTiles.apply(rows, weight, targets, DPO_OUTPUTS)

    for _ in range(2):  # the first backward of a process keeps one-time tensors
        theirs = _tile_moments(trl, dtype, autocast, head_grad, N, v, h)
        mine = _tile_moments(ours, dtype, autocast, head_grad, N, v, h)
    # what the call keeps after forward (log Z, entropy; the rows are inputs): the same
    assert mine[1] == theirs[1] == 2 * N * 4 + 4
    # the 4096 x 32768 buffer in each pass: both peaks are above it
    buffer = min(N, 4096) * 32768 * (2 if dtype == torch.bfloat16 or autocast else 4)
    assert theirs[0] > buffer and theirs[2] > buffer
    # the replay folds a row at a time: at most a dozen or so fp32 rows of the tile beyond
    for m, t in ((mine[0], theirs[0]), (mine[2], theirs[2])):
        assert 0 <= m - t <= 16 * v * 4, (m, t)


# -- the accuracy cases: estimate against ftmem's loops of TRL 1.16's trainers ----------------

PHASE_SLACK = 32 * 1024  # the replay's per-row temporaries and the loops' scalars

ACCURACY = [
    {"method": "lora", "precision": "bf16", "objective": "dpo"},
    {"method": "full", "precision": "bf16", "objective": "dpo"},
    {"method": "lora", "precision": "bf16", "objective": "kto"},
    {
        "method": "lora",
        "precision": "bf16",
        "objective": "grpo",
        "num_generations": 3,
        "completion_len": 20,
        "kl_beta": 0.04,
    },
]


@pytest.mark.accuracy
@pytest.mark.parametrize("settings", ACCURACY, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_estimate_matches_the_measured_trl_116_step(settings):
    pytest.importorskip("peft")
    from ftmem.estimate import estimate_step
    from ftmem.measure import measure

    from .accuracy.cases import ACTIVATION_TOLERANCE, PEAK_TOLERANCE

    arch = tiny("llama")
    run = RunConfig(
        batch_size=3, seq_len=50, device="cpu", optimizer_impl="for-loop", loss="logprob-tiles",
        **settings,
    )  # fmt: skip
    est = estimate_step(arch, run).memory
    got = measure(arch, run)
    assert est.weights_bytes == got.weights_bytes
    assert est.gradients_bytes == got.gradients_bytes
    assert est.optimizer_states_bytes == got.optimizer_states_bytes
    acts = (est.activations_bytes - got.activations_bytes) / got.activations_bytes
    assert abs(acts) <= ACTIVATION_TOLERANCE
    peak = (est.peak_allocated_bytes - got.peak_allocated_bytes) / got.peak_allocated_bytes
    assert abs(peak) <= PEAK_TOLERANCE
    # the tile buffer (min(N, 4096) x 32768) outweighs everything else in a tiny model:
    # each phase must also match to within a few rows' bytes
    for phase in ("forward", "backward"):
        gap = getattr(est.phases, phase) - got.phase_peaks[phase]
        assert abs(gap) <= PHASE_SLACK, (phase, gap)


def test_the_worked_example_of_docs_objectives_for_trl_116():
    """docs/objectives.md (TRL >= 1.16): Llama-2-7B, LoRA, bf16, one pair of 1,024 tokens."""
    from ftmem.estimate import estimate_step

    arch = get_model("llama2-7b")
    settings = dict(method="lora", precision="bf16", objective="dpo", batch_size=1, seq_len=1024)
    parts = step_parts(arch, _run(**settings))
    tiles = sum(s.nbytes for s in parts.outer_items if s.what.startswith(TILES))
    assert tiles == 16_795_614 == 2046 * 4096 * 2 + 2046 * 8 + 2 * 2046 * 4 + 2046
    policy = 16_384 + 16_777_216 + 2046 * 32768 * 2 + 9 * 2046 * 4
    assert policy == 150_953_912
    pass_ = 16_777_216 + 16_795_614 + 134_086_656 + 73_656
    assert pass_ == 167_733_142
    blocks = frozen_forward_transient(arch, _run(**{**settings, "batch_size": 2}), 2, 2, 2048)
    assert blocks == 247_463_936 > pass_
    assert parts.sizes.head.logits_forward == 16_384 + 2046 * 14 + blocks == 247_508_964
    assert parts.sizes.head.loss_backward == 8_184 + 33_521_664 + 134_086_656 + 16_760_832
    assert parts.sizes.head.loss_backward == 184_377_336
    old = step_parts(arch, RunConfig(grad_ckpt=False, **settings)).sizes.head
    assert (old.logits_forward, old.loss_backward) == (378_535_936, 131_072_000)
    new_peak = estimate_step(arch, _run(**settings)).memory.peak_allocated_bytes
    old_peak = estimate_step(arch, RunConfig(grad_ckpt=False, **settings)).memory
    assert f"{new_peak / 2**30:.2f}" == "22.94"
    assert f"{old_peak.peak_allocated_bytes / 2**30:.2f}" == "23.17"
    # the tensors' bytes, without the allocator's block rounding (gpu/device.py)
    new_asked = new_peak - estimate_step(arch, _run(**settings)).memory.at_peak.block_rounding
    old_asked = old_peak.peak_allocated_bytes - old_peak.at_peak.block_rounding
    assert f"{new_asked / 2**30:.2f}" == "22.91"
    assert f"{old_asked / 2**30:.2f}" == "23.13"


def test_the_worked_example_of_docs_grpo_for_trl_116():
    """docs/grpo.md (TRL >= 1.16): Llama-2-7B, LoRA, bf16, 8 completions of 512 after 512."""
    from ftmem.estimate import estimate_step

    arch = get_model("llama2-7b")
    settings = dict(
        method="lora", precision="bf16", objective="grpo", batch_size=8, seq_len=1024,
        completion_len=512,
    )  # fmt: skip
    parts = step_parts(arch, _run(**settings))
    tiles = sum(s.nbytes for s in parts.outer_items if s.what.startswith(TILES))
    assert tiles == 33_554_432 + 32_768 + 32_768 + 8_184
    assert 4096 * 32768 * 2 == 268_435_456
    assert parts.sizes.head.logits_forward == 131_072 + 67_108_864 + 268_435_456 + 147_456
    assert parts.sizes.head.logits_forward == 335_822_848
    assert parts.sizes.head.loss_backward == 16_384 + 67_108_864 + 268_435_456 + 33_554_432
    assert parts.sizes.head.loss_backward == 369_115_136
    new = estimate_step(arch, _run(**settings)).memory
    old = estimate_step(arch, RunConfig(grad_ckpt=False, **settings)).memory
    assert (new.peak_phase, f"{new.peak_allocated_bytes / 2**30:.2f}") == ("backward", "53.38")
    assert f"{old.peak_allocated_bytes / 2**30:.2f}" == "53.80"
    # the tensors' bytes, without the allocator's block rounding (gpu/device.py)
    asked = [m.peak_allocated_bytes - m.at_peak.block_rounding for m in (new, old)]
    assert [f"{a / 2**30:.2f}" for a in asked] == ["53.35", "53.77"]
