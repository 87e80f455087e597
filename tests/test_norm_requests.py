"""An RMSNorm's saved tensors as the allocator sees them (ops.saved.Saved.parts).

The truth: transformers' LlamaRMSNorm run on the CPU, its saved tensors collected with
autograd's saved-tensor hooks, one entry per storage. Its ``x.float()`` and
``rsqrt(mean(x²) + eps)`` are two tensors (MulBackward0 saves both), so the allocator
gets two requests: T·h·4 bytes in the large pool and T·4 in the small one (up to 1 MiB,
c10/cuda/CUDACachingAllocator.cpp kSmallSize). One request of their sum fits neither a
block the fp32 input fits exactly nor the small pool: the fsdp_qlora Llama-2-7B batch-12
replay put the final norm's 384.09 MiB request in a 3000 MiB segment beside a free
384 MiB one (calibration/notes/carryover.md).
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from ftmem.api import run_config
from ftmem.estimate import _tensors
from ftmem.ops.saved import Kind, Saved
from ftmem.presets import get_model
from ftmem.step import step_parts

B, S = 2, 64


def _saved_storages(h: int) -> list[int]:
    """The bytes of each storage LlamaRMSNorm saves for backward on a bf16 input that
    needs a gradient, its weight frozen (LoRA's), the weight itself left out."""
    norm = LlamaRMSNorm(h).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(B, S, h, dtype=torch.bfloat16, requires_grad=True)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() != norm.weight.data_ptr():
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        norm(x)
    return sorted(seen.values())


def test_the_rms_norm_saves_its_fp32_input_and_rstd_apart():
    arch = get_model("llama-2-7b")
    run = run_config(method="lora", precision="bf16", batch_size=B, seq_len=S)
    T, h = B * S, arch.hidden_size
    assert _saved_storages(h) == [T * 4, T * h * 4]
    parts = step_parts(arch, run)
    norms = [s for s in parts.typical_block if s.kind is Kind.NORM_INPUT]
    assert norms and all(s.requests() == (T * h * 4, T * 4) for s in norms)
    # the replay's block requests both, one after the other (input first, as made)
    block = _tensors(parts, parts.sizes).block_saved
    at = block.index(T * h * 4)
    assert block[at + 1] == T * 4


def test_an_item_rescaled_since_is_one_request():
    """A rank's share of an item (its bytes divided) no longer adds up to its parts: one
    request of its bytes."""
    item = Saved("norm", 10, parts=(8, 2))
    assert item.requests() == (8, 2)
    assert item._replace(nbytes=5).requests() == (5,)
    assert Saved("one tensor", 7).requests() == (7,)
