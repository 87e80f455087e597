"""A Llama decoder layer's no-grad forward (ops/nograd_requests.py) against PyTorch's.

The truth: transformers' LlamaDecoderLayer (and peft's LoRA on its linears) run under
``torch.no_grad`` on the CPU on a tiny layer, every op output's storage logged as it is
allocated and freed (ftmem.measure.tracker.LiveBytesTracker with an event log).
Compared: the requests of at least THRESHOLD bytes (every tensor as wide as the hidden
state, halves of q/k included; the norms' statistics and lora_A's outputs are below it),
sizes and frees in order, and the peak of live bytes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from ftmem.measure.tracker import LiveBytesTracker
from ftmem.ops.nograd_requests import LayerShape, llama_layer

B, S, H, I, HEADS, KV_HEADS, R = 2, 16, 64, 176, 4, 2, 4
T = B * S
E = 2  # bf16
THRESHOLD = 1024  # T·H·e = 4096, its q/k halves 2048 (k's: 1024); T·4 = 128, T·r·e = 256
TARGETS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj")


class _Wrapped(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *args, **kwargs):
        return self.layer(*args, **kwargs)


def _measure(lora: bool, dropout: float) -> list[tuple[str, int]]:
    cfg = LlamaConfig(
        hidden_size=H,
        intermediate_size=I,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        num_hidden_layers=1,
        vocab_size=100,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    layer: nn.Module = LlamaDecoderLayer(cfg, 0)
    if lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=R, lora_alpha=8, lora_dropout=dropout, target_modules=list(TARGETS))
        layer = get_peft_model(_Wrapped(layer), config)
        layer.train()
    layer = layer.to(torch.bfloat16)
    x = torch.randn(B, S, H, dtype=torch.bfloat16)
    positions = torch.arange(S)[None].expand(B, S)
    cos, sin = LlamaRotaryEmbedding(cfg)(x, positions)
    events: list[tuple[str, int]] = []
    tracker = LiveBytesTracker(events)
    with torch.no_grad(), tracker:
        tracker.track(x, cos, sin, positions, [p for p in layer.parameters()])
        before = len(events)
        out = layer(x, position_embeddings=(cos, sin), attention_mask=None, position_ids=positions)
        del out
    return _large(events[before:], before)


def _large(events, skip: int = 0) -> list[tuple[str, int]]:
    """The allocations of at least THRESHOLD bytes and their frees, renumbered."""
    number: dict[int, int] = {}
    count = skip
    out = []
    for kind, value in events:
        if kind == "alloc":
            if value >= THRESHOLD:
                number[count] = len(number)
                out.append(("alloc", value))
            count += 1
        elif value in number:
            out.append(("free", number[value]))
    return out


def _peak(events) -> int:
    sizes, live, peak = [], 0, 0
    for kind, value in events:
        if kind == "alloc":
            sizes.append(value)
            live += value
            peak = max(peak, live)
        else:
            live -= sizes[value]
    return peak


@pytest.mark.parametrize(
    ("lora", "dropout"),
    [(False, 0.0), (True, 0.0), (True, 0.1)],
    ids=["base", "lora", "lora-dropout"],
)
def test_llama_layer_requests_match_torch(lora, dropout):
    measured = _measure(lora, dropout)
    shape = LayerShape(
        T=T,
        hidden=H,
        q_size=H,
        kv_size=H // HEADS * KV_HEADS,
        intermediate=I,
        e=E,
        lora=frozenset(TARGETS) if lora else frozenset(),
        lora_r=R,
        lora_dropout=dropout > 0,
        cpu_dropout=True,
    )
    requests, output = llama_layer(shape)
    # the output stays with the caller (torch's is freed when the test drops it)
    derived = _large((*requests, ("free", output)))
    assert measured == derived
    assert _peak(measured) == _peak(derived)
