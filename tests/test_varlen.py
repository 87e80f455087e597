"""Variable-length batches (--lengths) and the allocator options (--alloc-conf) in the
reserved-peak replay. Expected numbers come from the caching allocator's rules
(pytorch/pytorch c10/cuda/CUDACachingAllocator.cpp @001074d2, as cited in
gpu/allocator.py) and from Rényi's record theorem, written out here."""

import json
import math
import subprocess
import sys

import pytest

import ftmem
from ftmem.gpu.allocator import replay
from ftmem.gpu.trace import StepTensors, run_events, step_events
from ftmem.lengths import padded_lengths, replay_order, replayed_steps
from ftmem.phases import (
    NO_HEAD,
    Activations,
    BlockTransients,
    Gradients,
    OptimizerStep,
    StepSizes,
)
from ftmem.run import RunConfig

MIB = 2**20
PEFT_LORA = dict(
    gpu="l40s",
    method="lora",
    precision="bf16",
    adapter_dtype="fp32",
    batch_size=4,
    seq_len=350,
    lora_r=64,
    lora_alpha=128,
    lora_targets="q,v",
)
LLAMA_3B = "calibration/configs/llama-3.2-3b/config.json"


def _segment(n_bytes: int) -> int:
    """A large request's new segment: rounded up to 2 MiB (kRoundLarge) from 10 MiB
    (kMinLargeAlloc) on (get_allocation_size)."""
    assert n_bytes >= 10 * MIB
    return 2 * MIB * math.ceil(n_bytes / (2 * MIB))


def _toy_step(saved: int) -> tuple[StepSizes, StepTensors]:
    """One block that saves one tensor of ``saved`` bytes, a 1 MiB weight, nothing else."""
    sizes = StepSizes(
        weights=MIB,
        states=0,
        gradients=Gradients(0, 0, 0, 0, False),
        activations=Activations(per_block=(saved,), below=0, above=0),
        block=BlockTransients(0, 0),
        head=NO_HEAD,
        optimizer=OptimizerStep(0),
    )
    tensors = StepTensors((MIB,), (), (), (), (), (), (saved,), (), ())
    return sizes, tensors


# a block saving 64 KiB per token: 200 tokens 12.5 MiB, 320 tokens 20 MiB
SHORT, LONG = _toy_step(200 * 64 * 1024), _toy_step(320 * 64 * 1024)
WEIGHT_SEGMENT = 2 * MIB  # a 1 MiB request is small-pool: one 2 MiB segment (kSmallBuffer)


def test_a_longer_batch_opens_a_segment_beside_the_shorter_ones():
    stats = replay(run_events([SHORT, LONG]))
    # 12.5 MiB leaves a 14 MiB segment cached; 20 MiB does not fit in it: a new one
    assert stats.peak_reserved == WEIGHT_SEGMENT + _segment(200 * 64 * 1024) + _segment(20 * MIB)
    assert stats.peak_allocated == MIB + 20 * MIB  # the longest batch's


def test_a_shorter_batch_splits_the_longer_ones_block():
    stats = replay(run_events([LONG, SHORT]))
    # best fit takes the cached 20 MiB block and splits off 7.5 MiB (> 1 MiB, kSmallSize)
    assert stats.peak_reserved == WEIGHT_SEGMENT + _segment(20 * MIB)


def test_expandable_segments_grow_the_one_segment_instead():
    stats = replay(run_events([SHORT, LONG]), expandable_segments=True)
    # large pool pages are 20 MiB (kLargeBuffer): the 12.5 MiB tensor maps one, the
    # 20 MiB one reuses it; the small pool maps one 2 MiB page for the weight
    assert stats.peak_reserved == WEIGHT_SEGMENT + 20 * MIB


def test_fixed_lengths_replay_two_steps_as_before():
    assert step_events(*LONG) == run_events([LONG, LONG])


def test_record_lengths_of_a_range():
    # k-th record of a shuffled run at quantile 1 - e^-k (Rényi); uniform over [100, 900]
    want = sorted({100 + math.ceil(800 * (1 - math.exp(-k))) for k in range(1, 8)} | {900})
    assert padded_lengths("padded:100-900", 900) == tuple(want)
    assert padded_lengths("padded:100", 900) == tuple(want)
    assert padded_lengths("fixed", 900) == ()
    assert padded_lengths("padded:64,900,128", 900) == (64, 128, 900)


def test_longest_first_replays_the_range_in_eighths_without_records():
    # group_by_length: the longest batch first (transformers get_length_grouped_indices)
    assert padded_lengths("grouped:100-800", 800) == tuple(100 + 100 * k for k in range(8))
    assert padded_lengths("grouped", 800) == tuple(100 * k for k in range(1, 9))
    assert replayed_steps("grouped:100-800", 800)[0] == 800
    steps = replayed_steps("padded:100-900", 900)
    records = [n for i, n in enumerate(steps) if n > max(steps[:i], default=0)]
    assert records == sorted(set(steps))  # every length is met first as a record


def test_replay_order_is_increasing_then_alternating_from_the_ends():
    assert replay_order((1, 2, 3, 4)) == (1, 2, 3, 4, 4, 1, 3, 2)
    assert replay_order((1, 2, 3)) == (1, 2, 3, 3, 1, 2)


def test_seq_len_is_the_longest():
    assert RunConfig(lengths="padded:70-350").seq_len == 350
    with pytest.raises(ValueError, match="--seq-len is the longest"):
        RunConfig(seq_len=512, lengths="padded:70-350")


def test_variable_lengths_keep_the_allocated_peak_and_add_to_reserved():
    fixed = ftmem.estimate(LLAMA_3B, **PEFT_LORA).memory
    varied = ftmem.estimate(LLAMA_3B, **PEFT_LORA, lengths="padded:70").memory
    grouped = ftmem.estimate(LLAMA_3B, **PEFT_LORA, lengths="grouped:70").memory
    # in the bytes asked for: the allocator's whole blocks (block_rounding) depend on the
    # replayed order of lengths, as the reserved figure does
    asked = [m.peak_allocated_bytes - m.at_peak.block_rounding for m in (fixed, varied, grouped)]
    assert asked[0] == asked[1] == asked[2]
    # at least one more copy of the logits' fp32 log-softmax (4·b·s·V bytes) at a length
    # below the longest is cached: the shortest record, s = 70 + ceil(280·(1 - 1/e))
    shortest = 70 + math.ceil(280 * (1 - math.exp(-1)))
    assert varied.peak_reserved_bytes - fixed.peak_reserved_bytes > 4 * 4 * shortest * 128_256
    # longest first: every later batch fits in blocks cut for longer ones (split, not
    # new), so the cache stays below one more fp32 log-softmax of the longest batch
    assert fixed.peak_reserved_bytes <= grouped.peak_reserved_bytes
    assert grouped.peak_reserved_bytes - fixed.peak_reserved_bytes < 4 * 4 * 350 * 128_256
    expandable = ftmem.estimate(
        LLAMA_3B, **PEFT_LORA, lengths="padded:70", alloc_conf="expandable_segments:True"
    ).memory
    # expandable segments map pages where needed instead of cutting segments per size
    assert expandable.peak_reserved_bytes < fixed.peak_reserved_bytes


def test_cpu_runs_ignore_lengths():
    cpu = dict(PEFT_LORA, gpu=None, device="cpu", optimizer_impl="for-loop")
    a = ftmem.estimate(LLAMA_3B, **cpu).memory
    b = ftmem.estimate(LLAMA_3B, **cpu, lengths="padded").memory
    assert a.peak_reserved_bytes == b.peak_reserved_bytes == b.peak_allocated_bytes


@pytest.mark.parametrize(
    "args, words",
    [
        (["--lengths", "padded:70-350"], "--seq-len is the longest"),
        (["--lengths", "sometimes"], "--lengths takes fixed"),
        (["--alloc-conf", "expandable_segments:Maybe"], "--alloc-conf"),
    ],
)
def test_cli_refuses_bad_lengths_in_one_sentence(args, words):
    cmd = [sys.executable, "-m", "ftmem.cli", "estimate", LLAMA_3B, *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert words in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_toy_sizes_are_what_they_say():
    # the toy's 12.5 MiB and 20 MiB tensors are in different 2 MiB segment sizes
    assert _segment(200 * 64 * 1024) == 14 * MIB != _segment(320 * 64 * 1024)


@pytest.mark.parametrize(
    "keys, lengths",
    [
        ({"group_by_length": True}, "grouped"),  # LengthGroupedSampler: longest first
        ({"packing": False}, "padded"),  # TRL's collator pads to the batch's longest
        ({"packing": True}, None),
        ({"packing": False, "padding_free": True}, None),  # flattened, not padded
        ({}, None),
    ],
)
def test_from_reads_padded_lengths_from_trl_and_trainer_configs(tmp_path, keys, lengths):
    from ftmem.frameworks import read_framework_config

    path = tmp_path / "sft.json"
    path.write_text(
        json.dumps({"model_name_or_path": "x", "per_device_train_batch_size": 4, **keys})
    )
    assert read_framework_config(str(path)).settings.get("lengths") == lengths


def test_a_longest_batch_below_the_shortest_is_every_batch():
    # `ftmem max --for seq-len` tries lengths below MIN: every batch is then that long
    assert padded_lengths("padded:70", 50) == (50,)
    with pytest.raises(ValueError, match="at least 1"):
        padded_lengths("padded:0", 50)
