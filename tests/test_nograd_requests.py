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

from ftmem.api import run_config
from ftmem.estimate import _tensors, _with_layer_forward
from ftmem.gpu.trace import step_events
from ftmem.measure.tracker import LiveBytesTracker
from ftmem.methods import plan_method
from ftmem.ops.nograd_requests import LayerShape, checkpointed_layer, llama_layer
from ftmem.phases import find_peak
from ftmem.presets import get_model
from ftmem.run_phases import program_peak
from ftmem.step import step_parts
from tests.test_gpu_trace import replay_live

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
        mask_bytes=E,  # the CPU's dropout noise is of the input's dtype
    )
    requests, output = llama_layer(shape)
    # the output stays with the caller (torch's is freed when the test drops it)
    derived = _large((*requests, ("free", output)))
    assert measured == derived
    assert program_peak(tuple(measured)) == program_peak(tuple(derived))


# -- where the estimate uses it --------------------------------------------------------

LORA_RUN = dict(
    method="lora",
    precision="bf16",
    grad_ckpt=True,
    attn="sdpa",
    lora_r=R,
    lora_dropout=0.1,
    lora_targets="q,k,v,gate,up,down",
    adapter_dtype="bf16",  # (peft's default fp32 adapters cast their input: not derived)
)
ADAPTER_KEYS = ("lora_r", "lora_dropout", "lora_targets", "adapter_dtype")


def test_a_real_layer_by_hand():
    """Llama-2-7B, LoRA r=64 on q,k,v,gate,up,down, bf16, b·s = 8·2048: the largest
    request is one MLP intermediate (T·I·e = 344 MiB), the output one hidden state, and
    everything else is freed inside the layer."""
    arch = get_model("llama-2-7b")
    run = run_config(**{**LORA_RUN, "lora_r": 64}, batch_size=8, seq_len=2048)
    requests, output = checkpointed_layer(arch, run, plan_method(arch, run))
    sizes = [v for op, v in requests if op == "alloc"]
    freed = {v for op, v in requests if op == "free"}
    T = 8 * 2048
    assert max(sizes) == T * 11008 * 2 == 344 * 2**20
    assert sizes[output] == T * 4096 * 2
    assert freed == set(range(len(sizes))) - {output}


@pytest.mark.parametrize(
    "change",
    [
        dict(grad_ckpt=False),
        dict(attn="eager"),
        dict(precision="bf16-mixed"),
        dict(method="dora"),
        dict(adapter_dtype="fp32"),
    ],
    ids=lambda c: "-".join(map(str, c.values())),
)
def test_not_derived_elsewhere(change):
    arch = get_model("llama-2-7b")
    run = run_config(**{**LORA_RUN, **change}, batch_size=2, seq_len=256)
    assert checkpointed_layer(arch, run, plan_method(arch, run)) is None


def test_gqa_keys_repeated_before_4_54_not_derived():
    arch = get_model("llama3.1-8b")
    old = run_config(**LORA_RUN, batch_size=2, seq_len=256, transformers_version="4.37.2")
    new = run_config(**LORA_RUN, batch_size=2, seq_len=256, transformers_version="4.57.0")
    assert checkpointed_layer(arch, old, plan_method(arch, old)) is None
    assert checkpointed_layer(arch, new, plan_method(arch, new)) is not None


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_the_replay_runs_it_and_keeps_the_timeline_peak(method):
    """The replay lays each checkpointed layer's forward out op by op (the program's
    requests appear once per layer) and still reaches the timeline's allocated peak."""
    arch = get_model("llama-2-7b")
    settings = {**LORA_RUN, "method": method}
    if method == "full":
        settings = {k: v for k, v in settings.items() if k not in ADAPTER_KEYS}
    run = run_config(**settings, batch_size=2, seq_len=256)
    parts = step_parts(arch, run)
    tensors = _with_layer_forward(_tensors(parts, parts.sizes), arch, run, parts)
    assert tensors.block_forward
    events = step_events(parts.sizes, tensors)
    largest = max(v for op, v in tensors.block_forward if op == "alloc")
    per_pass = sum(1 for op, v in events if op == "alloc" and v == largest)
    assert per_pass >= arch.num_layers
    best, _ = replay_live(events)
    assert best == find_peak(parts.sizes).at_peak.total
