"""transformers 4's sdpa path under --transformers-version: GQA keys and values repeated
per head before the kernel (< 4.54.0) and 4.38-4.39's explicit float causal mask.

The always-run tests write the expected bytes from the cited source by hand; the opt-in
test runs tests/transformers4_sdpa_probe.py under the real releases (unpacked wheels named
by FTMEM_TRANSFORMERS4_SITES, ``version=path[:deps]`` separated by ``;``, skipped when
absent: CI has no network) and compares what each layer hands to
scaled_dot_product_attention with ftmem's per-layer items."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftmem import estimate
from ftmem.arch import Architecture
from ftmem.methods import plan_method
from ftmem.ops.attention import Attention, model_causal_mask
from ftmem.ops.context import LayerContext
from ftmem.run import RunConfig
from tests.transformers4_sites import run_probe

REPEATED = "k and v repeated per head (repeat_kv)"
CACHE = "the cache's keys and values (DynamicCache)"
MASK = "float causal mask (s², padded to 8)"
BF16 = 2


def llama(heads: int, kv_heads: int, head_dim: int = 16, max_pos: int = 256) -> Architecture:
    """A tiny Llama as the probe builds it (hidden = 16·heads, 2 layers)."""
    return Architecture(
        name="tiny-llama-gqa",
        family="llama",
        vocab_size=128,
        hidden_size=head_dim * heads,
        num_layers=2,
        num_heads=heads,
        num_kv_heads=kv_heads,
        intermediate_size=64,
        max_position_embeddings=max_pos,
    )


def attention_items(arch: Architecture, version: str | None, **run: object) -> dict[str, int]:
    """One layer's attention-side saved items (name -> bytes) for a bf16 LoRA sdpa run."""
    settings: dict[str, object] = dict(method="lora", precision="bf16", attn="sdpa")
    cfg = RunConfig(**(settings | run), transformers_version=version)
    ctx = LayerContext(arch, cfg, plan_method(arch, cfg), cfg.batch_size * cfg.positions)
    return {x.what: x.nbytes for x in Attention.saved(ctx, frozenset("qkv"))}


def test_gqa_keys_and_values_are_copied_to_every_head_before_4_54():
    """4.37.2 LlamaSdpaAttention (:711-712) and 4.53.0 sdpa_attention_forward (:41-42):
    repeat_kv makes (b, heads, s, d) keys and values, which the kernel keeps: 2·b·s·heads·d·e;
    the unrepeated ones stay in the training forward's DynamicCache (use_cache without
    checkpointing): 2·b·s·kv·d·e. 4.54.0 passes enable_gqa: no copies."""
    arch, b, s = llama(heads=8, kv_heads=2), 2, 64
    for version in ("4.37.2", "4.48.1", "4.53.0"):
        items = attention_items(arch, version, batch_size=b, seq_len=s)
        assert items[REPEATED] == 2 * b * s * 8 * 16 * BF16
        assert items[CACHE] == 2 * b * s * 2 * 16 * BF16
        checkpointed = attention_items(arch, version, batch_size=b, seq_len=s, grad_ckpt=True)
        assert CACHE not in checkpointed  # LlamaModel: use_cache = False under checkpointing
    for version in ("4.54.0", None):
        assert REPEATED not in attention_items(arch, version, batch_size=b, seq_len=s)


def test_no_repeat_without_gqa_or_with_one_kv_head():
    """repeat_kv returns its input for n_rep = 1 (4.37.2 :236-237); one kv head expands
    along a size-1 dimension, so the reshape is a view; FlashAttention-2 takes GQA itself."""
    for arch in (llama(heads=8, kv_heads=8), llama(heads=8, kv_heads=1)):
        assert REPEATED not in attention_items(arch, "4.37.2", batch_size=2, seq_len=64)
    flash = attention_items(llama(8, 2), "4.37.2", batch_size=2, seq_len=64, attn="flash")
    assert REPEATED not in flash


def test_4_38_indexes_a_mask_per_layer_and_4_39_slices_a_view():
    """4.38.x: ``causal_mask[:, :, cache_position, :s]`` is a new (b, 1, s, s) tensor per
    layer, kept by the kernel: b·s·ceil8(s)·e. 4.39.x: ``[:, :, :, :s]`` of an (b, 1, s, s)
    mask is the whole mask, a view: nothing per layer unless the kernel pads it (s not a
    multiple of 8: one (b, 1, s, 16) copy at s = 12) or autocast casts it (fp32 model)."""
    arch = llama(heads=4, kv_heads=4)
    for version in ("4.38.0", "4.38.2"):
        assert attention_items(arch, version, batch_size=2, seq_len=64)[MASK] == 2 * 64 * 64 * BF16
        assert attention_items(arch, version, batch_size=2, seq_len=12)[MASK] == 2 * 12 * 16 * BF16
    assert MASK not in attention_items(arch, "4.39.3", batch_size=2, seq_len=64)
    assert attention_items(arch, "4.39.3", batch_size=2, seq_len=12)[MASK] == 2 * 12 * 16 * BF16
    amp = attention_items(arch, "4.39.3", batch_size=2, seq_len=64, precision="bf16-mixed")
    assert amp[MASK] == 2 * 64 * 64 * BF16
    for version in ("4.37.2", "4.40.0", None):
        assert MASK not in attention_items(arch, version, batch_size=2, seq_len=64)
    assert MASK not in attention_items(arch, "4.38.2", batch_size=2, seq_len=64, attn="flash")


def test_the_model_level_mask():
    """4.38.2 :1074: the (max_pos, max_pos) buffer repeated per sequence and cast to the
    embeddings' dtype: b·M²·e; 4.39.3 :1074-1080: (s, s) expanded and cloned: b·s²·e."""
    arch = llama(heads=4, kv_heads=4, max_pos=4096)
    run = RunConfig(method="lora", precision="bf16", attn="sdpa", batch_size=2, seq_len=512)
    assert model_causal_mask(arch, run.model_copy(update={"transformers_version": "4.38.2"})) == (
        2 * 4096 * 4096 * BF16
    )
    assert model_causal_mask(arch, run.model_copy(update={"transformers_version": "4.39.3"})) == (
        2 * 512 * 512 * BF16
    )


def test_no_version_or_4_56_keeps_the_estimate():
    """A run that names no transformers release, or one with enable_gqa, no float mask and
    no contiguous copies before the kernel (4.56: versions.TRANSFORMERS_SDPA_CONTIGUOUS),
    estimates as before."""
    arch = llama(heads=8, kv_heads=2)
    kwargs = dict(method="lora", precision="bf16", batch_size=2, seq_len=64, attn="sdpa")
    base = estimate(arch, **kwargs).memory
    assert estimate(arch, **kwargs, transformers_version="4.56.0").memory == base
    for version in ("4.53.0", "4.54.0"):
        assert estimate(arch, **kwargs, transformers_version=version).memory != base


@pytest.mark.parametrize(
    "version", ["4.37.2", "4.38.0", "4.38.2", "4.39.3", "4.40.2", "4.53.0", "4.54.0"]
)
def test_measured_on_the_real_release(version: str):
    """What each layer of the real release hands to sdpa (b 2, s 16, 4 heads, 2 kv heads,
    bf16) against ftmem's items: the repeated keys and values' bytes, and a mask that is a
    new tensor per layer (4.38), one shared storage (4.39) or none."""
    probe = Path(__file__).with_name("transformers4_sdpa_probe.py")
    got = run_probe(version, probe, "2", "16", "4", "2", "2")
    items = attention_items(llama(heads=4, kv_heads=2), version, batch_size=2, seq_len=16)
    for call in got["calls"]:
        repeated = call["key"][1] == 4 and not call["enable_gqa"]
        assert (REPEATED in items) == repeated
        if repeated:
            assert items[REPEATED] == call["key_bytes"] + call["value_bytes"]
    masks = [call["mask"] for call in got["calls"]]
    per_layer = masks[0] is not None and len({m["ptr"] for m in masks}) == len(masks)
    assert (MASK in items) == per_layer
    if per_layer:
        assert items[MASK] == masks[0]["bytes"]
