"""bitsandbytes' paged optimizers: which state buffers live in CUDA managed memory, and
what that does to the three figures (ftmem.optim.pages_states, ftmem.gpu.managed).

The split is derived here from bitsandbytes' own rule, applied to the parameters of the
real transformers model built from the same config: ``get_state_buffer`` pages a buffer
when ``is_paged`` and ``p.numel() >= 1e5`` (bitsandbytes/optim/optimizer.py l.383), and
``Optimizer2State.init_state`` makes ``state1`` and ``state2`` uint8 for 8-bit from
``min_8bit_size`` (4096) elements, fp32 below it; ``absmax1/2`` (one fp32 per 256 values)
and the code books are always ``torch.zeros`` / ``.to(device)``, in torch's allocator."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    "layout",
    [
        dict(strategy="zero2", offload_optimizer="cpu"),
        dict(strategy="fsdp", offload_params="cpu", offload_optimizer="cpu"),
    ],
)
def test_several_gpus_note_only_while_the_states_are_on_them(layout):
    """The several-GPU note says the paged states are counted in each GPU's allocated
    peak; offloaded, the rank keeps no states (the host steps them), so it would be false."""
    from ftmem.gpu.managed import PAGED_PARALLEL_NOTE

    kept = estimate(ARCH, optimizer="paged-adamw", gpus=2, strategy=layout["strategy"], **SETTINGS)
    assert kept.memory.optimizer_states_bytes > 0 and PAGED_PARALLEL_NOTE in kept.notes
    moved = estimate(ARCH, optimizer="paged-adamw", gpus=2, **layout, **SETTINGS)
    assert moved.memory.optimizer_states_bytes == 0
    assert PAGED_PARALLEL_NOTE not in moved.notes
