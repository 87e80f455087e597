"""transformers 4's registered buffers (ftmem.release_buffers): the per-layer rotary cos
and sin tables and 4.38's causal mask. Each expected size is measured here on modules
written as the cited release's source writes them (the bytes of what they register),
never taken from ftmem; a run that names no version keeps its estimate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ftmem import estimate
from ftmem.arch import Architecture

from .conftest import tiny

B, S = 1, 64
QLORA = dict(method="qlora", quant="nf4", precision="bf16", batch_size=B, seq_len=S)


class RotaryEmbedding437(nn.Module):
    """transformers 4.37.2 models/llama/modeling_llama.py:123-146, LlamaRotaryEmbedding's
    __init__ and _set_cos_sin_cache as written there (one per LlamaAttention, :321-323)."""

    def __init__(self, dim: int, max_position_embeddings: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        dtype = torch.get_default_dtype()
        t = torch.arange(max_position_embeddings, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos().to(dtype), persistent=False)
        self.register_buffer("sin_cached", emb.sin().to(dtype), persistent=False)


def _tables_bytes(arch: Architecture, default_dtype: torch.dtype) -> int:
    """The cos/sin buffers of every layer, built while ``default_dtype`` is the default
    (from_pretrained sets it to torch_dtype while the model is built)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)
    try:
        layer = RotaryEmbedding437(arch.head_size, arch.max_position_embeddings)
    finally:
        torch.set_default_dtype(previous)
    tables = [b for name, b in layer.named_buffers() if name.endswith("_cached")]
    return arch.num_layers * sum(b.numel() * b.element_size() for b in tables)


def _causal_mask_bytes(positions: int, release: str) -> int:
    """LlamaModel.__init__'s buffer: 4.38.0 models/llama/modeling_llama.py:922-923
    ``torch.full((P, P), fill_value=1)``; 4.38.2 :931-934 ``fill_value=True,
    dtype=torch.bool``; then ``torch.triu(causal_mask, diagonal=1)``."""
    if release == "4.38.0":
        full = torch.full((positions, positions), fill_value=1)
    else:
        full = torch.full((positions, positions), fill_value=True, dtype=torch.bool)
    mask = torch.triu(full, diagonal=1)
    return mask.numel() * mask.element_size()


def _weights(arch: Architecture | str, **settings: object) -> int:
    return estimate(arch, **{**QLORA, **settings}).memory.weights_bytes


def _peak(arch: Architecture | str, **settings: object) -> int:
    return estimate(arch, **{**QLORA, **settings}).memory.peak_allocated_bytes


@pytest.mark.parametrize("version", ["4.37.2", "4.38.2", "4.39.3", "4.40.2"])
def test_llama_4x_keeps_every_layers_rotary_tables(version):
    """HF QLoRA loads with torch_dtype bf16: tables in bf16, beside the weights all run.
    4.41.0 registers none and runs the same forward (each layer's own cos/sin to 4.42)."""
    arch = tiny("llama")
    mask = _causal_mask_bytes(arch.max_position_embeddings, version) if "4.38" in version else 0
    expected = _tables_bytes(arch, torch.bfloat16) + mask
    assert _weights(arch, transformers_version=version) - _weights(arch) == expected
    # (FlashAttention-2: 4.38-4.39's float causal mask for sdpa is tests/test_transformers4_sdpa)
    after = _peak(arch, transformers_version="4.41.0", attn="flash")
    assert _peak(arch, transformers_version=version, attn="flash") - after == expected


def test_llama_4_38_0_registers_the_int64_causal_mask_and_no_tables():
    """4.38.0 and 4.38.1 compute cos/sin per forward (modeling_llama.py:94-131) but
    register LlamaModel's int64 (P, P) mask; their rotary modules keep the last (1, S, d)
    cos and sin as attributes (:127-128 ``self._cos_cached = cos``), bf16 here."""
    arch = tiny("llama")
    mask = _causal_mask_bytes(arch.max_position_embeddings, "4.38.0")
    assert mask == 8 * arch.max_position_embeddings**2
    expected = mask + arch.num_layers * 2 * S * arch.head_size * 2
    for version in ("4.38.0", "4.38.1"):
        assert _weights(arch, transformers_version=version) - _weights(arch) == expected


@pytest.mark.parametrize(
    ("version", "loss"),
    # 4.46-4.48's standard loss copies the shifted logits (tests/test_shifted_logits_loss.py)
    # and before 4.46 Llama's forward computes its own upcast-shifted loss: there that loss
    # given by name, which no release changes, keeps the comparison
    [(None, "standard"), ("4.43.0", "upcast-shifted"), ("4.47.1", "shifted"), ("5.24", "standard")],
)
def test_releases_without_the_buffers_change_nothing(version, loss):
    arch = tiny("llama")
    with_version = estimate(arch, **QLORA, loss=loss, transformers_version=version).memory
    assert with_version.model_dump() == estimate(arch, **QLORA, loss=loss).memory.model_dump()


def test_4_48_registers_no_buffers():
    """4.48-4.55 copy sdpa's inputs (activations: tests/test_sdpa_contiguous.py), not
    the weights' side."""
    arch = tiny("llama")
    assert _weights(arch, transformers_version="4.48.1") == _weights(arch)


def test_families_by_their_own_releases():
    """Mistral kept the tables to 4.41.x (4.41.2 modeling_mistral.py:114-115), not 4.42.0;
    Gemma's rotary never registered them, only 4.38's causal mask."""
    mistral = tiny("mistral")
    tables = _tables_bytes(mistral, torch.bfloat16)
    assert _weights(mistral, transformers_version="4.41.2") - _weights(mistral) == tables
    assert _weights(mistral, transformers_version="4.42.0") == _weights(mistral)
    gemma = tiny("gemma")
    mask = _causal_mask_bytes(gemma.max_position_embeddings, "4.38.2")
    assert _weights(gemma, transformers_version="4.38.2") - _weights(gemma) == mask
    assert _weights(gemma, transformers_version="4.37.2") == _weights(gemma)


def test_fsdp_qlora_keeps_fp32_tables_on_every_rank():
    """fsdp_qlora builds the QLoRA model with from_config(cfg), no torch_dtype: fp32
    tables, which FSDP broadcasts and never shards. Llama-2-7B: 32 layers of
    2 x 4096 x 128 fp32 = 128 MiB per rank."""
    arch = "llama-2-7b"
    run = dict(gpus=2, strategy="fsdp", framework="fsdp_qlora", grad_ckpt=True)
    old = _weights(arch, **run, transformers_version="4.37.2")
    assert old - _weights(arch, **run) == 32 * 2 * 4096 * 128 * 4 == 128 * 2**20
    lora = dict(run, method="lora", quant=None)
    # LoRA: from_pretrained(torch_dtype=bf16) and model.to(bf16): bf16 tables
    assert (
        _weights(arch, **lora, transformers_version="4.37.2") - _weights(arch, **lora) == 64 * 2**20
    )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """transformers 4.42.4 models/llama/modeling_llama.py rotate_half."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _layer_rotary_saved(arch: Architecture, s: int, dtype: torch.dtype) -> int:
    """What one 4.42.4 LlamaAttention's rotary keeps for backward beside q and k: its own
    cos and sin (LlamaRotaryEmbedding.forward: fp32 freqs, ``cos.to(dtype=x.dtype)``;
    apply_rotary_pos_emb: ``q * cos + rotate_half(q) * sin``), measured with autograd's
    saved-tensor hooks (storages counted once)."""
    d = arch.head_size
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    position_ids = torch.arange(s)[None]
    freqs = (inv_freq[None, :, None] @ position_ids[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    q = torch.randn(B, arch.num_heads, s, d, dtype=dtype, requires_grad=True)
    k = torch.randn(B, arch.num_kv_heads, s, d, dtype=dtype, requires_grad=True)
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in (q.data_ptr(), k.data_ptr()):
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        c, n = cos.unsqueeze(1), sin.unsqueeze(1)
        out = (q * c + rotate_half(q) * n, k * c + rotate_half(k) * n)
    del out
    return sum(kept.values())


def _activations(arch: Architecture, **settings: object) -> int:
    run = {**QLORA, "method": "lora", "quant": None, **settings}
    return estimate(arch, **run).memory.activations_bytes


def test_layers_keep_their_own_cos_and_sin_before_4_43():
    """4.42.4: every layer computes and keeps its own (1, s, d) cos and sin; 4.43.0
    computes one pair in LlamaModel.forward that all layers share (the 5.x layout). Both
    register no tables (gone in 4.41.0), so the difference is the L - 1 extra pairs."""
    arch = tiny("llama")
    per_layer = _layer_rotary_saved(arch, S, torch.bfloat16)
    assert per_layer == 2 * S * arch.head_size * 2
    # (Llama's own loss in both releases, given by name to the current one's as well)
    loss = "upcast-shifted"
    shared = _activations(arch, transformers_version="4.43.0", loss=loss)
    assert shared == _activations(arch, loss=loss)
    old = _activations(arch, transformers_version="4.42.4", loss=loss)
    assert old - shared == (arch.num_layers - 1) * per_layer
