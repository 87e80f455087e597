"""A Llama decoder layer's no-grad forward (ops/nograd_requests.py) against PyTorch's.

The truth: transformers' LlamaDecoderLayer (and peft's LoRA on its linears) run under
``torch.no_grad`` on the CPU on a tiny layer, every op output's storage logged as it is
allocated and freed (ftmem.measure.tracker.LiveBytesTracker with an event log). What
the installed releases cannot run here is their cited source transcribed with torch ops,
run the same way: transformers 4.37.2's sdpa attention (GQA's repeat_kv), 4.48.1's and
4.54.0's (q, k and v made contiguous) and a 4-bit base (bitsandbytes 0.43's dequantisation
per matmul under peft's 4-bit LoRA layer). An opt-in test runs the real 4.48.1 layer
(tests/transformers4_nograd_probe.py, FTMEM_TRANSFORMERS4_SITES as in
tests/test_transformers4_sdpa.py).
Compared: the requests of at least THRESHOLD bytes (every tensor as wide as the hidden
state, halves of q/k included; the norms' statistics and lora_A's outputs are below it),
sizes and frees in order, and the peak of live bytes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MethodType

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from ftmem.api import run_config
from ftmem.estimate import _tensors, _with_layer_forward
from ftmem.gpu.trace import step_events
from ftmem.measure.tracker import LiveBytesTracker
from ftmem.methods import plan_method
from ftmem.ops.nograd_requests import (
    LLAMA_LINEARS,
    NF4_BLOCK,
    LayerShape,
    checkpointed_layer,
    llama_layer,
)
from ftmem.phases import find_peak
from ftmem.presets import get_model
from ftmem.run_phases import program_peak
from ftmem.step import step_parts
from ftmem.versions import release
from tests.test_gpu_trace import replay_live
from tests.transformers4_sites import run_probe

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


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary_pos_emb(q, k, cos, sin, position_ids):
    """transformers 4.37.2 models/llama/modeling_llama.py apply_rotary_pos_emb: the
    tables gathered by position, then the same products as 5.25's."""
    cos = cos[position_ids].unsqueeze(1)
    sin = sin[position_ids].unsqueeze(1)
    q_embed = (q * cos) + (_rotate_half(q) * sin)
    k_embed = (k * cos) + (_rotate_half(k) * sin)
    return q_embed, k_embed


def _repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """4.37.2 repeat_kv (modeling_llama.py:273-282): expand, then reshape (a copy)."""
    batch, kv_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, kv_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, kv_heads * n_rep, slen, head_dim)


def _sdpa_forward_4_37(tables: tuple[torch.Tensor, torch.Tensor], positions: torch.Tensor):
    """transformers 4.37.2's LlamaSdpaAttention.forward (modeling_llama.py:667-743)
    without a cache or a mask (training: use_cache off under checkpointing, and no
    padding), written with torch for 5.25's attention module (same projections): the
    layer's rotary module hands out its cached fp32 tables cast to the activations' dtype
    (:148-155), and GQA's keys and values are repeated per head before sdpa (:712-713)."""
    cos_cached, sin_cached = tables

    def forward(self, hidden_states, **kwargs):
        bsz, q_len, _ = hidden_states.size()
        heads, kv_heads = self.config.num_attention_heads, self.config.num_key_value_heads
        query_states = self.q_proj(hidden_states)
        key_states = self.k_proj(hidden_states)
        value_states = self.v_proj(hidden_states)
        query_states = query_states.view(bsz, q_len, heads, self.head_dim).transpose(1, 2)
        key_states = key_states.view(bsz, q_len, kv_heads, self.head_dim).transpose(1, 2)
        value_states = value_states.view(bsz, q_len, kv_heads, self.head_dim).transpose(1, 2)
        cos = cos_cached[:q_len].to(dtype=value_states.dtype)
        sin = sin_cached[:q_len].to(dtype=value_states.dtype)
        query_states, key_states = _apply_rotary_pos_emb(
            query_states, key_states, cos, sin, positions
        )
        key_states = _repeat_kv(key_states, heads // kv_heads)
        value_states = _repeat_kv(value_states, heads // kv_heads)
        attn_output = F.scaled_dot_product_attention(
            query_states, key_states, value_states, attn_mask=None, dropout_p=0.0, is_causal=True
        )
        attn_output = attn_output.transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(bsz, q_len, heads * self.head_dim)
        attn_output = self.o_proj(attn_output)
        return attn_output, None

    return forward


def _sdpa_attention_forward_4_48(module, query, key, value, enable_gqa: bool):
    """transformers 4.48.1 integrations/sdpa_attention.py sdpa_attention_forward (:18-59)
    without a mask: repeat_kv in its own frame (the caller keeps the unrepeated keys and
    values), then ``.contiguous()`` of the query, keys and values (:39-41) whatever the
    mask; with ``enable_gqa`` 4.54.0's path under use_gqa_in_sdpa (:50-57), no repeat.
    The parameters' order is the real one's: the frame frees query, key, value in it."""
    sdpa_kwargs = {}
    if enable_gqa:
        sdpa_kwargs = {"enable_gqa": True}
    else:
        key = _repeat_kv(key, module.num_key_value_groups)
        value = _repeat_kv(value, module.num_key_value_groups)
    query = query.contiguous()
    key = key.contiguous()
    value = value.contiguous()
    attn_output = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=None,
        dropout_p=0.0,
        scale=module.scaling,
        is_causal=True,
        **sdpa_kwargs,
    )
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, None


def _attention_forward_4_48(enable_gqa: bool):
    """transformers 4.48.1 models/llama/modeling_llama.py LlamaAttention.forward (:254-301)
    under sdpa without a cache, for 5.25's attention module (same projections)."""

    def forward(self, hidden_states, position_embeddings, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        attn_output, attn_weights = _sdpa_attention_forward_4_48(
            self, query_states, key_states, value_states, enable_gqa
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights

    return forward


def _dequantized(weight: torch.Tensor) -> torch.Tensor:
    """bitsandbytes 0.43 ``dequantize_4bit`` as its requests: the fp32 absmax from the
    nested one (a value per NF4_BLOCK weights), then the weight in the compute dtype
    (here a copy of the 16-bit stand-in); the absmax goes at the return."""
    absmax = torch.empty(weight.numel() // NF4_BLOCK, dtype=torch.float32)  # noqa: F841
    return weight.clone()


def _four_bit_forward(self, x):
    """bitsandbytes 0.43 Linear4bit -> MatMul4Bit.forward: ``F.linear(A,
    dequantize_4bit(B, quant_state).to(A.dtype).t())``, the weight freed after."""
    return F.linear(x, _dequantized(self.weight))


def _peft_four_bit_forward(self, x, *args, **kwargs):
    """peft's LoRA on a 4-bit linear (0.21.2 tuners/lora/bnb.py Linear4bit.forward, the
    vanilla path; 0.9.0 the same requests): the base output cloned, then the branch."""
    result = self.base_layer(x)
    result = result.clone()  # "As per Tim Dettmers, for 4bit, we need to defensively clone"
    for active_adapter in self.active_adapters:
        lora_A, lora_B = self.lora_A[active_adapter], self.lora_B[active_adapter]
        dropout, scaling = self.lora_dropout[active_adapter], self.scaling[active_adapter]
        output = lora_B(lora_A(dropout(x))) * scaling
        result = result + output
    return result


def _quantize(layer: nn.Module) -> None:
    """Every base linear dequantises its weight per matmul; the LoRA layers on them run
    peft's 4-bit forward."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    for name, module in layer.named_modules():
        if isinstance(module, LoraLinear):
            module.forward = MethodType(_peft_four_bit_forward, module)
        elif type(module) is nn.Linear and name.split(".")[-1] in {"base_layer", *LLAMA_LINEARS}:
            module.forward = MethodType(_four_bit_forward, module)


def _measure(
    lora: bool,
    dropout: float,
    transformers_4_37: bool = False,
    quantized: bool = False,
    copies: str = "",
    kv_heads: int = KV_HEADS,
) -> list[tuple[str, int]]:
    """``copies``: "" (5.25's attention), "4.48" or "4.54" (sdpa_attention_forward's
    contiguous inputs; 4.54: GQA by the kernel's enable_gqa)."""
    cfg = LlamaConfig(
        hidden_size=H,
        intermediate_size=I,
        num_attention_heads=HEADS,
        num_key_value_heads=kv_heads,
        num_hidden_layers=1,
        vocab_size=100,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    layer: nn.Module = LlamaDecoderLayer(cfg, 0)
    attention = layer.self_attn
    if lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=R, lora_alpha=8, lora_dropout=dropout, target_modules=list(TARGETS))
        layer = get_peft_model(_Wrapped(layer), config)
        layer.train()
    layer = layer.to(torch.bfloat16)
    if quantized:
        _quantize(layer)
    x = torch.randn(B, S, H, dtype=torch.bfloat16)
    positions = torch.arange(S)[None].expand(B, S)
    cos, sin = LlamaRotaryEmbedding(cfg)(x, positions)
    kept = [cos, sin, positions]
    if transformers_4_37:  # fp32 tables of S positions (QLoRA's); the model's (1, s) positions
        tables = tuple(t[0] for t in LlamaRotaryEmbedding(cfg)(x.float(), positions[:1]))
        kept += [*tables, positions[:1]]
        attention.forward = MethodType(_sdpa_forward_4_37(tables, positions[:1]), attention)
    if copies:
        forward = _attention_forward_4_48(enable_gqa=copies == "4.54")
        attention.forward = MethodType(forward, attention)
    events: list[tuple[str, int]] = []
    tracker = LiveBytesTracker(events)
    with torch.no_grad(), tracker:
        tracker.track(x, *kept, [p for p in layer.parameters()])
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


def _shape(
    lora: bool, dropout: float, quantized: bool, kv_heads: int = KV_HEADS, **flags: bool
) -> LayerShape:
    """The test layer's shape; the CPU's dropout noise is of the input's dtype."""
    return LayerShape(
        T=T,
        hidden=H,
        q_size=H,
        kv_size=H // HEADS * kv_heads,
        intermediate=I,
        e=E,
        lora=frozenset(TARGETS) if lora else frozenset(),
        lora_r=R,
        lora_dropout=dropout > 0,
        mask_bytes=E,
        quantized=quantized,
        **flags,
    )


@pytest.mark.parametrize("transformers_4_37", [False, True], ids=["5.25", "4.37-repeat-kv"])
@pytest.mark.parametrize(
    ("lora", "dropout", "quantized"),
    [(False, 0.0, False), (True, 0.0, False), (True, 0.1, False), (True, 0.1, True)],
    ids=["base", "lora", "lora-dropout", "qlora-dropout"],
)
def test_llama_layer_requests_match_torch(lora, dropout, quantized, transformers_4_37):
    measured = _measure(lora, dropout, transformers_4_37, quantized)
    shape = _shape(lora, dropout, quantized, repeated_kv=transformers_4_37)
    requests, output = llama_layer(shape)
    # the output stays with the caller (torch's is freed when the test drops it)
    derived = _large((*requests, ("free", output)))
    assert measured == derived
    assert program_peak(tuple(measured)) == program_peak(tuple(derived))


def _kernel_output_follows_query() -> bool:
    """This torch's CPU sdpa kernel lays a contiguous query's output out contiguous
    (torch 2.13: it follows the query; 2.4.1 allocates (b, s, heads, d) whatever it is)."""
    q = torch.randn(1, 2, 8, 16, dtype=torch.bfloat16)
    return bool(F.scaled_dot_product_attention(q, q, q, is_causal=True).is_contiguous())


@pytest.mark.parametrize(
    ("copies", "kv_heads"),
    [("4.48", HEADS), ("4.48", KV_HEADS), ("4.54", KV_HEADS)],
    ids=["4.48-mha", "4.48-gqa-repeat", "4.54-gqa-enable"],
)
@pytest.mark.parametrize(
    ("lora", "dropout", "quantized"),
    [(False, 0.0, False), (True, 0.1, False), (True, 0.1, True)],
    ids=["base", "lora-dropout", "qlora-dropout"],
)
def test_contiguous_sdpa_inputs_match_torch(lora, dropout, quantized, copies, kv_heads):
    """transformers 4.48-4.55 copy the rotary q and k and the transposed v before sdpa
    (repeat_kv's outputs are contiguous already), and, where the kernel lays its output
    out as its query (the CPU's under torch 2.13, CUDA's flash), the output's transpose
    is copied too: each request against the transcribed source run on the CPU."""
    follows = _kernel_output_follows_query()
    measured = _measure(lora, dropout, quantized=quantized, copies=copies, kv_heads=kv_heads)
    shape = _shape(
        lora,
        dropout,
        quantized,
        kv_heads,
        repeated_kv=copies == "4.48" and kv_heads < HEADS,
        inputs_copied=True,
        output_follows_query=follows,
    )
    requests, output = llama_layer(shape)
    derived = _large((*requests, ("free", output)))
    assert measured == derived
    assert program_peak(tuple(measured)) == program_peak(tuple(derived))
    # without the copies the derivation misses them: three (or one) inputs, the output
    plain = llama_layer(replace(shape, inputs_copied=False))
    assert _large((*plain[0], ("free", plain[1]))) != measured


@pytest.mark.parametrize("kv_heads", [HEADS, KV_HEADS], ids=["mha", "gqa"])
@pytest.mark.parametrize("version", ["4.48.1", "4.53.0", "4.55.4"])
def test_measured_on_the_real_release(version: str, kv_heads: int):
    """The real release's LlamaDecoderLayer under no_grad (its site on PYTHONPATH, named by
    FTMEM_TRANSFORMERS4_SITES ``version=path``; skipped when absent: CI has no network)
    against the derivation, the kernel's output layout as that site's torch makes it;
    4.54+ leaves GQA to the kernel under torch >= 2.5 (4.54.0 integrations/
    sdpa_attention.py use_gqa_in_sdpa :27-32), repeat_kv otherwise."""
    probe = Path(__file__).with_name("transformers4_nograd_probe.py")
    got = run_probe(version, probe, *map(str, (B, S, H, I, HEADS, kv_heads)))
    measured = _large([tuple(event) for event in got["events"]], got["skip"])
    gqa_by_kernel = release(version) >= (4, 54, 0) and release(got["torch"]) >= (2, 5, 0)
    shape = _shape(
        False,
        0.0,
        False,
        kv_heads,
        repeated_kv=kv_heads < HEADS and not gqa_by_kernel,
        inputs_copied=True,
        output_follows_query=got["output_follows_query"],
    )
    requests, output = llama_layer(shape)
    assert measured == _large((*requests, ("free", output)))


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


def test_gqa_keys_repeated_and_inputs_copied_by_release():
    """GQA under transformers 4.37 (repeat_kv before sdpa) is derived with two more
    requests than 4.57's (enable_gqa), each as wide as q (b·s·4096·2 bytes for
    Llama-3.1-8B, kv 1024 wide); 4.48's sdpa_attention_forward adds the query's contiguous
    copy and, 16-bit on CUDA (flash), the output's: four more; 4.54's leaves GQA to the
    kernel but copies the query, the keys and values (kv wide each) and the output."""
    arch = get_model("llama3.1-8b")

    def sizes(version: str) -> list[int]:
        run = run_config(**LORA_RUN, batch_size=2, seq_len=256, transformers_version=version)
        layer = checkpointed_layer(arch, run, plan_method(arch, run))
        assert layer is not None
        return sorted(v for op, v in layer[0] if op == "alloc")

    new = sizes("4.57.0")
    q_wide, kv_wide = 2 * 256 * 4096 * 2, 2 * 256 * 1024 * 2
    assert sizes("4.37.2") == sorted([*new, q_wide, q_wide])
    assert sizes("4.44.2") == sizes("4.37.2")
    assert sizes("4.48.1") == sorted([*new, *[q_wide] * 4])
    assert sizes("4.54.0") == sorted([*new, q_wide, kv_wide, kv_wide, q_wide])
    assert sizes("4.56.0") == new


def test_not_derived_with_a_mask_or_one_copied_kv_head():
    """A padded batch gives sdpa a mask (5.25 then repeats GQA keys and values; 4.40-4.47
    copy q, k and v on CUDA), as does a sliding window the sequence reaches: not derived.
    One kv head under 4.48-4.55: its stride-0 repeat is copied per head, not derived."""
    arch = get_model("llama3.1-8b")
    padded = run_config(**LORA_RUN, batch_size=2, seq_len=256, padding="max-length")
    assert checkpointed_layer(arch, padded, plan_method(arch, padded)) is None
    unpadded = run_config(**LORA_RUN, batch_size=2, seq_len=256)
    assert checkpointed_layer(arch, unpadded, plan_method(arch, unpadded)) is not None
    mqa = arch.model_copy(update={"num_kv_heads": 1})
    for version, derived in (("4.48.1", False), ("4.56.0", True)):
        run = run_config(**LORA_RUN, batch_size=2, seq_len=256, transformers_version=version)
        assert (checkpointed_layer(mqa, run, plan_method(mqa, run)) is not None) == derived


@pytest.mark.parametrize(
    ("model", "method", "version"),
    [
        ("llama-2-7b", "lora", None),
        ("llama-2-7b", "qlora", None),
        ("llama-2-7b", "full", None),
        ("llama3.1-8b", "qlora", "4.37.2"),  # GQA: keys and values repeated per head
        ("llama3.1-8b", "qlora", "4.48.1"),  # and the query's and output's copies
        ("llama-2-7b", "lora", "4.53.0"),  # q, k, v and the output copied
    ],
)
def test_the_replay_runs_it_and_keeps_the_timeline_peak(model, method, version):
    """The replay lays each checkpointed layer's forward out op by op (the program's
    requests appear once per layer) and still reaches the timeline's allocated peak."""
    arch = get_model(model)
    settings = {**LORA_RUN, "method": method, "transformers_version": version}
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
