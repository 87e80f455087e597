"""GaLore (galore_torch 1.0): optimizer states derived by hand for Llama-2-7B.

Measured on tiny models in tests/accuracy (states to the byte, projectors included).
"""

from __future__ import annotations

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError

H, F, L, V, R = 4096, 11008, 32, 32000, 128


def test_bf16_states_by_hand() -> None:
    """Each block linear keeps Adam's two moments of its (max side × r) projection and an
    r × min-side projector, all in bf16; embeddings, head and norms keep plain Adam."""
    per_block = (
        4 * 2 * R * H  # q, k, v, o: 4096 × 4096
        + 3 * 2 * R * F  # gate, up (11008 × 4096) and down (4096 × 11008): max side 11008
        + 7 * R * H  # projectors: r × 4096 for every linear
    )
    plain = 2 * (2 * V * H + (2 * L + 1) * H)  # embedding, head, norms: two moments
    est = estimate("llama2-7b", method="galore")
    assert est.memory.optimizer_states_bytes == 2 * (L * per_block + plain)
    # gradients stay full size: GaLore projects them inside the optimizer step
    assert est.memory.gradients_bytes == est.memory.weights_bytes


def test_fp32_projector_keeps_the_whole_svd_factor() -> None:
    """galore_torch slices U or Vh without copying when the gradient is fp32: the whole
    k × k factor (k = 4096 here) stays alive as the projector (measured on tiny models)."""
    bf16 = estimate("llama2-7b", method="galore", galore_rank=64, precision="bf16")
    fp32 = estimate("llama2-7b", method="galore", galore_rank=64, precision="fp32")
    moments = lambda b: 4 * 2 * 64 * H * b + 3 * 2 * 64 * F * b  # noqa: E731
    plain = lambda b: 2 * (2 * V * H + (2 * L + 1) * H) * b  # noqa: E731
    assert bf16.memory.optimizer_states_bytes == L * (moments(2) + 7 * 64 * H * 2) + plain(2)
    assert fp32.memory.optimizer_states_bytes == L * (moments(4) + 7 * H * H * 4) + plain(4)


def test_galore_needs_adam_and_its_own_options() -> None:
    with pytest.raises(InvalidInputError, match="GaLore projects Adam"):
        estimate("llama2-7b", method="galore", optimizer="sgd")
    with pytest.raises(InvalidInputError, match="only applies to galore"):
        estimate("llama2-7b", method="lora", galore_rank=64)
    eight = estimate("llama2-7b", method="galore", optimizer="adamw-8bit")
    assert (
        eight.memory.optimizer_states_bytes
        < estimate("llama2-7b", method="galore").memory.optimizer_states_bytes
    )


def test_optimizer_in_backward_holds_no_gradients() -> None:
    """Each parameter steps as soon as its gradient exists: no gradient buffer, and no
    separate optimizer step (its phase is just weights + states, beside the BLAS
    workspaces a CUDA step keeps)."""
    normal = estimate("llama2-7b", method="full", seq_len=1024).memory
    hooked = estimate("llama2-7b", method="full", seq_len=1024, optimizer_in_backward=True).memory
    assert hooked.gradients_bytes == 0 and hooked.at_peak.gradients == 0
    assert hooked.phases.optimizer == (
        hooked.weights_bytes
        + hooked.optimizer_states_bytes
        + hooked.at_peak.workspaces
        + hooked.at_peak.block_rounding  # the allocator's whole blocks (gpu/device.py)
    )
    assert hooked.optimizer_states_bytes == normal.optimizer_states_bytes
    # the backward peak drops by the gradients held there, less the largest tensor's step:
    # the LM head's gradient (32000 × 4096 bf16) and Adam's two temporaries of it
    head = 32000 * 4096 * 2
    assert (
        hooked.peak_allocated_bytes
        < normal.peak_allocated_bytes - normal.at_peak.gradients + 3 * head
    )
    with pytest.raises(InvalidInputError, match="cannot accumulate"):
        estimate("llama2-7b", method="full", optimizer_in_backward=True, grad_accum=4)
    with pytest.raises(InvalidInputError, match="one GPU"):
        estimate("llama2-7b", method="full", optimizer_in_backward=True, gpus=8, strategy="zero3")


def test_activation_offload_moves_activations_to_the_host() -> None:
    """Every saved tensor is copied to host RAM in forward: none stays on the GPU, and
    the note gives the host bytes, which are the activations of the same run without
    offloading."""
    plain = estimate("llama2-7b", method="lora", seq_len=4096)
    off = estimate("llama2-7b", method="lora", seq_len=4096, activation_offload=True)
    assert off.memory.activations_bytes == 0
    assert f"{plain.memory.activations_bytes:,} bytes" in " ".join(off.notes)
    assert off.memory.peak_allocated_bytes < plain.memory.peak_allocated_bytes / 2


def test_8bit_galore_states_by_hand() -> None:
    """GaLoreAdamW8bit: bitsandbytes' blockwise 8-bit moments of each projected gradient
    (one byte per value and an fp32 absmax per 256, twice) and the bf16 projector; plain
    tensors of 4096 values or more likewise 8-bit, and one pair of shared code books."""

    def eight_bit(n: int) -> int:
        return 2 * n + 2 * 4 * -(-n // 256)

    per_block = (
        4 * eight_bit(R * H)  # q, k, v, o projected: 128 × 4096
        + 3 * eight_bit(R * F)  # gate, up, down: 128 × 11008
        + 7 * R * H * 2  # projectors, bf16
        + 2 * eight_bit(H)  # the two norms: 4096 values, just at bitsandbytes' 8-bit minimum
    )
    plain = 2 * eight_bit(V * H) + eight_bit(H)  # embedding, head, the final norm
    est = estimate("llama2-7b", method="galore", optimizer="adamw-8bit")
    assert est.memory.optimizer_states_bytes == L * per_block + plain + 2 * 256 * 4
