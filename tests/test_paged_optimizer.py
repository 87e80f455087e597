"""bitsandbytes' paged optimizers: which state buffers live in CUDA managed memory, and
what that does to the three figures (ftmem.optim.pages_states, ftmem.gpu.managed).

The split is derived here from bitsandbytes' own rule, applied to the parameters of the
real transformers model built from the same config: ``get_state_buffer`` pages a buffer
when ``is_paged`` and ``p.numel() >= 1e5`` (bitsandbytes/optim/optimizer.py l.383), and
``Optimizer2State.init_state`` makes ``state1`` and ``state2`` uint8 for 8-bit from
``min_8bit_size`` (4096) elements, fp32 below it; ``absmax1/2`` (one fp32 per 256 values)
and the code books are always ``torch.zeros`` / ``.to(device)``, in torch's allocator."""

from __future__ import annotations

import json
from functools import cache

import pytest

from ftmem import estimate
from ftmem.measure.build import build_model
from ftmem.run import RunConfig
from tests.conftest import tiny

GIB = 2**30

# q/k/v/o 96×96 (8-bit, in the allocator), norms (fp32, in the allocator), the
# embedding and head 1200×96 = 115,200 and the MLP 96×1100 = 105,600 (both paged)
ARCH = tiny("llama", vocab_size=1200, intermediate_size=1100)
SETTINGS = dict(method="full", precision="bf16", batch_size=1, seq_len=32, attn="sdpa")


@cache
def _bnb_paged_bytes() -> int:
    """bitsandbytes' rule over the real model's trainable parameters: two uint8
    buffers of every parameter of 1e5+ elements (all above min_8bit_size)."""
    model = build_model(ARCH, RunConfig(**SETTINGS, optimizer="adamw-8bit")).model
    sizes = [p.numel() for p in model.parameters() if p.requires_grad]
    assert any(n < 1e5 for n in sizes) and any(n >= 1e5 for n in sizes)  # both kinds
    return sum(2 * n for n in sizes if n >= 100_000)


def _figures(optimizer: str, device: str = "cuda", **extra: object):
    return estimate(ARCH, optimizer=optimizer, device=device, **SETTINGS, **extra)


def _requested(est) -> int:
    """The allocated peak in the bytes asked for (the replay's block rounding apart)."""
    return est.memory.peak_allocated_bytes - est.memory.at_peak.block_rounding


def test_paged_states_leave_the_allocated_and_reserved_peaks_only():
    paged_bytes = _bnb_paged_bytes()
    plain, paged = _figures("adamw-8bit"), _figures("paged-adamw-8bit")
    assert plain.memory.peak_phase == paged.memory.peak_phase
    assert _requested(plain) - _requested(paged) == paged_bytes
    # reserved is whole segments (here one 20 MiB segment holds the tiny step): it
    # cannot grow
    assert plain.memory.peak_reserved_bytes >= paged.memory.peak_reserved_bytes
    b = paged.memory.beyond_allocated
    assert (b.paged_optimizer_states, b.paged_to_host) == (paged_bytes, 0)
    # the device figure counts them resident: reserved + context + paged
    assert paged.memory.device_bytes == (
        paged.memory.peak_reserved_bytes + b.cuda_context + paged_bytes
    )
    # so it does not drop: the segment that held the states still holds the rest
    assert paged.memory.device_bytes >= plain.memory.device_bytes
    # the component still shows all the states, the same bytes as the non-paged class
    assert paged.memory.optimizer_states_bytes == plain.memory.optimizer_states_bytes
    assert any("managed memory" in n for n in paged.notes)


def test_on_the_cpu_bitsandbytes_does_not_page():
    """get_state_buffer l.375-382: a CPU parameter gets torch.zeros_like (a warning)."""
    plain, paged = _figures("adamw-8bit", "cpu"), _figures("paged-adamw-8bit", "cpu")
    assert paged.memory.peak_allocated_bytes == plain.memory.peak_allocated_bytes
    assert paged.memory.beyond_allocated.paged_optimizer_states == 0


def test_a_card_without_room_pages_to_host_and_still_fits():
    """The driver evicts managed pages instead of failing: the run fits when everything
    but the paged states does; the rest is kept in host RAM."""
    paged_bytes = _bnb_paged_bytes()
    resident = _figures("paged-adamw-8bit")
    hard = resident.memory.device_bytes - paged_bytes
    room = paged_bytes // 3
    est = _figures("paged-adamw-8bit", gpu_memory=hard + room)
    b = est.memory.beyond_allocated
    assert est.fits is True
    assert (b.paged_optimizer_states, b.paged_to_host) == (room, paged_bytes - room)
    assert est.memory.device_bytes == hard + room == est.gpu["memory_bytes"]
    assert any("host RAM" in n and "slower" in n for n in est.notes)


def test_a_card_short_of_the_hard_requirement_does_not_fit():
    hard = _figures("paged-adamw-8bit").memory.device_bytes - _bnb_paged_bytes()
    est = _figures("paged-adamw-8bit", gpu_memory=hard - 2**20)
    assert est.fits is False
    assert est.memory.beyond_allocated.paged_optimizer_states == 0
    assert any("cannot make the run fit" in n for n in est.notes)


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_the_cli_shows_the_paged_states(fmt, capsys):
    from ftmem.cli import main

    with pytest.raises(SystemExit) as done:
        main(
            [
                "estimate",
                "llama-3.1-8b",
                "--method",
                "full",
                "--optimizer",
                "paged-adamw-8bit",
                "--optimizer-in-backward",
                "--grad-ckpt",
                "--gpu",
                "h100-80gb",
                "--format",
                fmt,
            ]
        )
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert ("paged_optimizer_states" if fmt == "json" else "Paged optimizer states") in out


# bitsandbytes' paged classes as (state buffers per parameter, bytes per value of a
# buffer of 1e5+ values): Optimizer2State keeps state1 and state2, Optimizer1State
# (Lion) state1 only (optimizer.py l.492-532, l.664-698)
PAGED_BUFFERS = {
    "paged-adamw-8bit": (2, 1),
    "paged-adamw": (2, 4),
    "paged-lion": (1, 4),
    "paged-lion-8bit": (1, 1),
}


@pytest.mark.parametrize("optimizer", sorted(PAGED_BUFFERS))
def test_each_paged_class_pages_its_own_buffers(optimizer):
    """bitsandbytes' rule over the real model's trainable parameters, for each class:
    its buffers of every parameter of 1e5+ values leave the allocator's peak."""
    buffers, width = PAGED_BUFFERS[optimizer]
    model = build_model(ARCH, RunConfig(**SETTINGS, optimizer="adamw-8bit")).model
    paged_bytes = sum(
        buffers * width * p.numel() for p in model.parameters() if p.numel() >= 100_000
    )
    est = _figures(optimizer)
    assert est.memory.beyond_allocated.paged_optimizer_states == paged_bytes
    on_cpu = _figures(optimizer, "cpu")  # the same states, none paged
    assert est.memory.optimizer_states_bytes == on_cpu.memory.optimizer_states_bytes


def test_lion_8bit_keeps_one_code_book_on_the_gpu():
    """Optimizer1State.init_state moves only the signed map to the device (l.686)."""
    lion, adam = _figures("paged-lion-8bit"), _figures("paged-adamw-8bit")
    model = build_model(ARCH, RunConfig(**SETTINGS, optimizer="adamw-8bit")).model
    sizes = [p.numel() for p in model.parameters()]
    # Adam: two uint8 buffers and two absmax vectors per tensor of 4096+ values, two
    # fp32 buffers per smaller one (min_8bit_size), two maps; Lion one of each
    per_state = sum(n + 4 * -(-n // 256) if n >= 4096 else 4 * n for n in sizes) + 256 * 4
    assert adam.memory.optimizer_states_bytes - lion.memory.optimizer_states_bytes == per_state


def test_framework_configs_name_the_paged_classes(tmp_path):
    """HF ``optim`` names (transformers 5.25 trainer_optimizer.py: "paged" -> is_paged,
    "8bit" -> optim_bits 8, "lion" -> bitsandbytes' Lion), torchtune ``_component_`` and
    LitGPT ``class_path`` (bitsandbytes.optim's classes; Adam and AdamW keep the same
    states)."""
    from ftmem.frameworks import read_framework_config

    def hf(optim: str) -> str:
        path = tmp_path / "trl.json"
        path.write_text(
            json.dumps({"model_name_or_path": "meta-llama/Llama-2-7b-hf", "optim": optim})
        )
        return read_framework_config(str(path)).settings["optimizer"]

    def torchtune(cls: str) -> str:
        path = tmp_path / "tt.yaml"
        path.write_text(
            "model:\n  _component_: torchtune.models.llama3_1.lora_llama3_1_8b\n"
            f"optimizer:\n  _component_: bitsandbytes.optim.{cls}\n"
        )
        return read_framework_config(str(path)).settings["optimizer"]

    def litgpt(cls: str) -> str:
        path = tmp_path / "lit.yaml"
        path.write_text(
            "checkpoint_dir: checkpoints/meta-llama/Llama-2-7b-hf\n"
            f"optimizer: {{class_path: bitsandbytes.optim.{cls}}}\n"
        )
        return read_framework_config(str(path)).settings["optimizer"]

    assert hf("paged_lion_32bit") == "paged-lion"
    assert hf("paged_lion_8bit") == "paged-lion-8bit"
    assert (hf("paged_adamw_8bit"), hf("paged_adamw_32bit")) == ("paged-adamw-8bit", "paged-adamw")
    for read in (torchtune, litgpt):
        assert read("PagedLion") == read("PagedLion32bit") == "paged-lion"
        assert read("PagedLion8bit") == "paged-lion-8bit"
        assert read("PagedAdam") == read("PagedAdam32bit") == "paged-adamw"
        assert read("PagedAdam8bit") == read("PagedAdamW8bit") == "paged-adamw-8bit"


# several GPUs: what each engine hands the optimizer decides what is paged
# (ftmem.paged_ranks); the sizes below are derived from the real model's parameters
WIDE = tiny("llama", vocab_size=2400, intermediate_size=1100)  # embed/head 230,400 each


def _sizes(arch) -> list[int]:
    model = build_model(arch, RunConfig(**SETTINGS, optimizer="adamw-8bit")).model
    return [p.numel() for p in model.parameters() if p.requires_grad]


def _rank_paged(arch, strategy: str, gpus: int, **extra: object) -> int:
    est = estimate(
        arch,
        optimizer="paged-adamw-8bit",
        device="cuda",
        gpus=gpus,
        strategy=strategy,
        **SETTINGS,
        **extra,
    )
    return est.memory.beyond_allocated.paged_optimizer_states


def test_ddp_ranks_page_as_one_gpu():
    """DDP leaves each rank the model's own parameters: bitsandbytes' rule per rank."""
    assert _rank_paged(ARCH, "ddp", 4) == _bnb_paged_bytes()


@pytest.mark.parametrize("strategy", ["zero1", "zero2", "zero3"])
def test_zero_pages_the_whole_flat_partition(strategy):
    """ZeRO hands the optimizer one flat fp32 partition per rank (stage_1_and_2.py
    l.516, stage3.py l.1210): two uint8 buffers of all of it once it has 1e5 values,
    none below (the norms included, which on one GPU stay in the allocator)."""
    psi = sum(_sizes(ARCH))
    assert _rank_paged(ARCH, strategy, 4) == 2 * -(-psi // 4)  # 234,552 values
    assert psi // 16 < 100_000
    assert _rank_paged(ARCH, strategy, 16) == 0


def test_fsdp1_pages_the_pieces_of_1e5_values():
    """FSDP1 hands each parameter's local piece (numel / N values): over 2 ranks the
    230,400-value embedding and head give pieces of 115,200 (paged), the MLP's 105,600
    pieces of 52,800 (not)."""
    sizes = _sizes(WIDE)
    pieces = [-(-n // 2) for n in sizes]
    expected = sum(2 * n for n in pieces if n >= 100_000)
    assert expected == 2 * 2 * 115_200
    assert _rank_paged(WIDE, "fsdp", 2, fsdp_version=1) == expected


def test_offloaded_states_are_not_paged():
    """On the CPU bitsandbytes pages nothing (get_state_buffer l.375-382)."""
    assert _rank_paged(ARCH, "zero2", 4, offload_optimizer="cpu") == 0


def test_fsdp2_with_a_bitsandbytes_optimizer_is_refused(capsys):
    from ftmem.cli import main
    from ftmem.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="DTensor parameters"):
        _rank_paged(ARCH, "fsdp", 2, fsdp_version=2)
    args = ["estimate", "llama-3.1-8b", "--optimizer", "paged-lion", "--gpus", "2"]
    with pytest.raises(SystemExit) as done:
        main([*args, "--strategy", "fsdp", "--fsdp-version", "2"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "bitsandbytes issue #1633" in err
    assert "Traceback" not in err


def test_several_gpus_note_only_while_the_states_are_on_them():
    """Where paging is not modelled (expert parallelism: the experts' ZeRO runs over their
    own group), the note says the paged states are counted in each GPU's allocated peak;
    with the optimizer offloaded the rank keeps no states (the host steps them), so the
    note would be false."""
    from ftmem.gpu.managed import PAGED_PARALLEL_NOTE

    layout = dict(optimizer="paged-adamw", gpus=2, strategy="colossalai-zero1", ep=2, **SETTINGS)
    kept = estimate(tiny("mixtral"), **layout)
    assert kept.memory.optimizer_states_bytes > 0 and PAGED_PARALLEL_NOTE in kept.notes
    moved = estimate(tiny("mixtral"), offload_optimizer="cpu", **layout)
    assert moved.memory.optimizer_states_bytes == 0
    assert PAGED_PARALLEL_NOTE not in moved.notes


# ColossalAI, tensor and pipeline parallelism: the rank's plain local tensors, handed on as
# each engine does (ftmem.parallel.paged_hands); sizes derived here from the real model


def test_colossalai_zero_pages_each_tensors_piece():
    """LowLevelZeroOptimizer pads each trainable tensor to a multiple of the group, splits
    it and hands the optimizer this rank's fp32 piece (low_level_optim.py:263-299, the
    optimizer's param_groups at :580): over 2 ranks the 230,400-value embedding and head
    give pieces of 115,200 (paged), the MLP's 105,600 pieces of 52,800 (not)."""
    expected = sum(2 * n for n in (-(-n // 2) for n in _sizes(WIDE)) if n >= 100_000)
    assert expected == 2 * 2 * 115_200
    for strategy in ("colossalai-zero1", "colossalai-zero2"):
        assert _rank_paged(WIDE, strategy, 2) == expected


def test_colossalai_3d_pages_each_local_tensor():
    """HybridParallelPlugin(zero_stage=0): MixedPrecisionOptimizer's fp32 master of each
    whole local tensor (mixed_precision_optimizer.py:76-86). With --tp 2 shardformer pads
    the vocabulary to a multiple of 64·2 (2,400 -> 2,432) and gives each rank 1,216 rows of
    the embedding and the head (116,736 values each: paged); the MLP's 96 × 1,100 matrices
    are split to 52,800 (not); attention and norms are smaller still."""
    assert _rank_paged(WIDE, "colossalai-3d", 2) == _bnb_paged_bytes_of(WIDE)  # dp only
    rows = -(-2400 // 128) * 128 // 2
    assert _rank_paged(WIDE, "colossalai-3d", 2, tp=2) == 2 * 2 * rows * 96


def _bnb_paged_bytes_of(arch) -> int:
    return sum(2 * n for n in _sizes(arch) if n >= 100_000)


def test_ddp_with_tensor_parallelism_pages_the_local_slices():
    """Megatron's split pads the vocabulary to a multiple of 128 · 2 (2,400 -> 2,560): the
    embedding and the head keep 1,280 rows each per rank (122,880 values: paged), the
    MLP's 105,600 become 52,800 (not)."""
    rows = -(-2400 // (128 * 2)) * 128
    assert _rank_paged(WIDE, "ddp", 2, tp=2) == 2 * 2 * rows * 96


def test_zero1_with_a_pipeline_pages_the_stages_flat_partition():
    """DeepSpeed's pipeline engine with ZeRO-1: the stage's parameters in one flat fp32
    partition over the data-parallel ranks (4 GPUs, 2 stages: 2 ranks). The first stage
    holds the embedding and the first half of the blocks."""
    model = build_model(WIDE, RunConfig(**SETTINGS, optimizer="adamw-8bit")).model
    half = WIDE.num_layers // 2
    first = sum(
        p.numel()
        for name, p in model.named_parameters()
        if "embed_tokens" in name or any(f"layers.{i}." in name for i in range(half))
    )
    partition = -(-first // 2)
    assert partition >= 100_000
    paged = estimate(WIDE, optimizer="paged-adamw-8bit", device="cuda", gpus=4,
                     strategy="zero1", pp=2, **SETTINGS)  # fmt: skip
    # the worst stage's figures: both stages hold one end and half the blocks
    last = sum(_sizes(WIDE)) - first
    assert paged.memory.beyond_allocated.paged_optimizer_states in (
        2 * partition,
        2 * -(-last // 2),
    )


def test_gemini_refuses_a_bitsandbytes_optimizer():
    """GeminiOptimizer steps ColossalAI's own Adams only (gemini_optimizer.py:121-123)."""
    from ftmem.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="HybridAdam"):
        _rank_paged(WIDE, "colossalai-gemini", 2)
