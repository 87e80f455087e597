"""A fused-q/k/v block's no-grad forward (ops/nograd_fused_qkv.py) against PyTorch's.

The truth: a re-implementation of Qwen-1's QWenBlock, written here line for line after
modeling_qwen.py (Qwen/Qwen-7B remote code, mirrored at
zhangningboo/Qwen-7B@e7a368b0774370edec29674e7c51f52fc7663f59: QWenBlock, QWenAttention,
QWenMLP, RMSNorm's torch path, apply_rotary_pos_emb), with peft's LoRA Linear.forward
(0.5.0's in-place sum, 0.21's out-of-place one: fp32 adapters, the input cast to them),
run under ``torch.no_grad`` and bf16 autocast on the CPU on a tiny block, every op
output's storage logged as it is allocated and freed (LiveBytesTracker with an event
log). The adapters' weight casts autocast caches stay to its region's end, as the
block's requests never free them (each linear's two are below the threshold at R = 2,
compared at R = 8). Two CUDA kernels stand in as what they allocate: flash-attn's Triton rotary
(``torch.empty_like`` of its fp32 input, filled) and flash_attn_func (one output of q's
shape), each filled here one position at a time so that nothing they compute reaches the
threshold. Compared: the requests of at least THRESHOLD bytes and their frees in order
(frees that follow one another compared as a set: the caching allocator ends in the same
state whatever their order), and the peak of live bytes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ftmem.api import run_config
from ftmem.estimate import _tensors, _with_layer_forward
from ftmem.gpu.program import never_freed
from ftmem.gpu.trace import step_events
from ftmem.measure.tracker import LiveBytesTracker
from ftmem.methods import plan_method
from ftmem.ops.linear import LinearOp
from ftmem.ops.nograd_fused_qkv import fused_qkv_block
from ftmem.ops.nograd_requests import LayerShape, checkpointed_layer
from ftmem.phases import find_peak
from ftmem.presets import get_model
from ftmem.run_phases import program_peak
from ftmem.step import step_parts
from tests.test_gpu_trace import replay_live

S, H, HEADS, F_HALF, R = 16, 64, 4, 88, 2
D = H // HEADS
E = 2  # bf16
# T·H·e = 2048; below: the norms' statistics (64), lora_A's outputs (64), the adapters'
# autocast weight copies (lora_B of c_attn: 3H·R·2 = 768), c_attn's bias (384), the
# kernels' per-position pieces (256)
THRESHOLD = 1024
MODULES = ("c_attn", "attn_c_proj", "w1", "w2", "mlp_c_proj")
ROLES = {"c_attn": "q", "attn_c_proj": "o", "w1": "up", "w2": "gate", "mlp_c_proj": "down"}


class LoraLinear(nn.Module):
    """A bf16 nn.Linear with peft's fp32 adapters and its Linear.forward (0.5.0
    src/peft/tuners/lora.py: ``result += ...``; 0.21 lora/layer.py: ``result = result +
    ...``)."""

    def __init__(self, base: nn.Linear, dropout: float, in_place: bool, r: int = R) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.normal_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.in_place = in_place

    def forward(self, x):
        previous_dtype = x.dtype
        result = F.linear(x, self.base.weight, bias=self.base.bias)
        x = x.to(self.lora_A.weight.dtype)
        if self.in_place:
            result += self.lora_B(self.lora_A(self.lora_dropout(x))) * 2.0
        else:
            result = result + self.lora_B(self.lora_A(self.lora_dropout(x))) * 2.0
        result = result.to(previous_dtype)
        return result


class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.eps = 1e-6
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        output = self._norm(x.float()).type_as(x)
        return output * self.weight


def rotary_kernel(x, cos, sin):
    """flash-attn's Triton rotary as it allocates: one output like its input."""
    output = torch.empty_like(x)
    for p in range(x.shape[1]):
        piece = x[:, p]
        x1, x2 = piece.chunk(2, dim=-1)
        output[:, p] = piece * cos[p] + torch.cat((-x2, x1), dim=-1) * sin[p]
    return output


def apply_rotary_pos_emb(t, cos, sin):
    t_float = t.float()
    return rotary_kernel(t_float, cos, sin).type_as(t)


def flash_attn_func(q, k, v):
    """flash_attn_func as it allocates: one output of q's shape (causal)."""
    out = torch.empty_like(q)
    for p in range(q.shape[1]):
        scores = torch.einsum("bhd,bshd->bhs", q[:, p], k[:, : p + 1]) / D**0.5
        out[:, p] = torch.einsum("bhs,bshd->bhd", scores.softmax(-1), v[:, : p + 1])
    return out


class QWenAttention(nn.Module):
    def __init__(self, linear) -> None:
        super().__init__()
        self.c_attn = linear("c_attn", nn.Linear(H, 3 * H))
        self.c_proj = linear("attn_c_proj", nn.Linear(H, H, bias=False))

    def forward(self, hidden_states, cos, sin):
        mixed_x_layer = self.c_attn(hidden_states)
        query, key, value = mixed_x_layer.split(H, dim=2)
        query = query.view(*query.shape[:-1], HEADS, D)
        key = key.view(*key.shape[:-1], HEADS, D)
        value = value.view(*value.shape[:-1], HEADS, D)
        query = apply_rotary_pos_emb(query, cos, sin)
        key = apply_rotary_pos_emb(key, cos, sin)
        attn_output = flash_attn_func(query, key, value)
        context_layer = attn_output.contiguous().view(*attn_output.shape[:-2], H)
        attn_output = self.c_proj(context_layer)
        return attn_output, None


class QWenMLP(nn.Module):
    def __init__(self, linear) -> None:
        super().__init__()
        self.w1 = linear("w1", nn.Linear(H, F_HALF, bias=False))
        self.w2 = linear("w2", nn.Linear(H, F_HALF, bias=False))
        self.c_proj = linear("mlp_c_proj", nn.Linear(F_HALF, H, bias=False))

    def forward(self, hidden_states):
        a1 = self.w1(hidden_states)
        a2 = self.w2(hidden_states)
        intermediate_parallel = a1 * F.silu(a2)
        output = self.c_proj(intermediate_parallel)
        return output


class QWenBlock(nn.Module):
    def __init__(self, linear) -> None:
        super().__init__()
        self.ln_1 = RMSNorm(H)
        self.attn = QWenAttention(linear)
        self.ln_2 = RMSNorm(H)
        self.mlp = QWenMLP(linear)

    def forward(self, hidden_states, cos, sin):
        layernorm_output = self.ln_1(hidden_states)
        attn_outputs = self.attn(layernorm_output, cos, sin)
        attn_output = attn_outputs[0]
        outputs = attn_outputs[1:]
        residual = hidden_states
        layernorm_input = attn_output + residual
        layernorm_output = self.ln_2(layernorm_input)
        residual = layernorm_input
        mlp_output = self.mlp(layernorm_output)
        hidden_states = residual + mlp_output
        outputs = (hidden_states, *outputs[1:])
        return outputs


def _measure(
    lora: frozenset[str], dropout: float, in_place: bool, r: int = R
) -> list[tuple[str, int]]:
    """The block's requests, then the frees of what it left: its output (dropped by the
    test) and autocast's cached weight copies (freed as the autocast region ends)."""
    torch.manual_seed(0)

    def linear(name: str, base: nn.Linear) -> nn.Module:
        base = base.to(torch.bfloat16)  # QWenLMHeadModel casts the model to bf16
        return LoraLinear(base, dropout, in_place, r) if name in lora else base

    block = QWenBlock(linear)
    block.ln_1.to(torch.bfloat16)
    block.ln_2.to(torch.bfloat16)
    block.train()
    x = torch.randn(1, S, H, dtype=torch.bfloat16)
    freqs = torch.outer(torch.arange(S).float(), 1.0 / 10000 ** (torch.arange(0, D, 2) / D))
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
    cos, sin = cos[:, None, :], sin[:, None, :]
    events: list[tuple[str, int]] = []
    tracker = LiveBytesTracker(events)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), tracker:
        tracker.track(x, cos, sin, [p for p in block.parameters()])
        before = len(events)
        out = block(x, cos, sin)
        del out
    return _large(events[before:], before)


def _shape(lora: frozenset[str], dropout: float, in_place: bool, r: int = R) -> LayerShape:
    """The tiny block's shape, as the estimate lays it out for fp32 adapters under bf16
    autocast."""
    return LayerShape(
        T=S,
        hidden=H,
        q_size=H,
        kv_size=H,
        intermediate=F_HALF,
        e=E,
        lora=frozenset(ROLES[m] for m in lora),
        lora_r=r,
        lora_dropout=dropout > 0,
        mask_bytes=4,  # the CPU's dropout noise is of its (fp32) input's dtype
        adapter_e=4,
        sum_in_place=in_place,
        weight_casts=True,
    )


def _derived(shape: LayerShape) -> list[tuple[str, int | frozenset[int]]]:
    """The block's derived requests, then the frees of what they never free (the output
    and the cached casts, freed one after the other by torch)."""
    requests, _ = fused_qkv_block(shape)
    return _large((*requests, *(("free", k) for k in never_freed(requests))))


def _large(events, skip: int = 0) -> list[tuple[str, int | frozenset[int]]]:
    """The allocations of at least THRESHOLD bytes and their frees, renumbered; each run
    of frees between two allocations as one set."""
    number: dict[int, int] = {}
    count = skip
    out: list[tuple[str, int | frozenset[int]]] = []
    run: set[int] = set()
    for kind, value in events:
        if kind == "alloc":
            if value >= THRESHOLD:
                if run:
                    out.append(("free", frozenset(run)))
                    run = set()
                number[count] = len(number)
                out.append(("alloc", value))
            count += 1
        elif value in number:
            run.add(number[value])
    if run:
        out.append(("free", frozenset(run)))
    return out


def _program(events) -> tuple[tuple[str, int], ...]:
    flat: list[tuple[str, int]] = []
    for kind, value in events:
        if kind == "alloc":
            flat.append((kind, value))
        else:
            flat.extend(("free", k) for k in sorted(value))
    return tuple(flat)


@pytest.mark.parametrize(
    ("lora", "dropout", "in_place"),
    [
        (frozenset(), 0.0, False),
        (frozenset(MODULES), 0.0, True),
        (frozenset(MODULES), 0.05, True),
        (frozenset(MODULES), 0.05, False),
        (frozenset(("c_attn", "w2")), 0.05, True),
    ],
    ids=["base", "lora-0.5", "lora-dropout-0.5", "lora-dropout-0.21", "some-targets"],
)
def test_fused_block_requests_match_torch(lora, dropout, in_place):
    measured = _measure(lora, dropout, in_place)
    derived = _derived(_shape(lora, dropout, in_place))
    assert measured == derived
    assert program_peak(_program(measured)) == program_peak(_program(derived))


@pytest.mark.parametrize("in_place", [True, False], ids=["peft-0.5", "peft-0.21"])
def test_the_adapters_weight_casts_are_made_in_the_block_and_kept(in_place):
    """At R = 8 each adapter weight's bf16 copy (R·in·2, out·R·2: 1-3 KiB here) reaches
    the threshold: autocast makes lora_A's before the cast of lora_A's input and lora_B's
    before lora_B's output, and none is freed before the autocast region ends."""
    r = 8  # (not S: lora_A's weight copy would be as large as its input's)
    measured = _measure(frozenset(MODULES), 0.05, in_place, r)
    shape = _shape(frozenset(MODULES), 0.05, in_place, r)
    assert measured == _derived(shape)
    requests, output = fused_qkv_block(shape)
    sizes = [v for op, v in requests if op == "alloc"]
    kept = [sizes[k] for k in never_freed(requests) if k != output]
    # per linear (c_attn, attn.c_proj, w1, w2, mlp.c_proj): lora_A's, then lora_B's
    widths = ((H, 3 * H), (H, H), (H, F_HALF), (H, F_HALF), (F_HALF, H))
    assert kept == [n * r * E for w_in, w_out in widths for n in (w_in, w_out)]


# -- where the estimate uses it --------------------------------------------------------

LORA_RUN = dict(
    method="lora",
    precision="bf16",
    autocast=True,
    adapter_dtype="fp32",
    grad_ckpt=True,
    attn="flash",
    lora_r=64,
    lora_dropout=0.05,
    lora_targets="q,k,v,o,gate,up,down",
    batch_size=1,
    seq_len=8192,
)


def test_a_real_block_by_hand():
    """Qwen-7B (h 4096, f' 11008), LoRA r=64 on every linear, fp32 adapters under bf16
    autocast, peft 0.5.0, 8,192 tokens: the largest requests are mlp.c_proj's fp32 input
    copy and dropout output (T·f'·4 = 344 MiB), the output one hidden state (64 MiB),
    and everything else is freed inside the block but the adapters' cached bf16 weight
    copies: r·in·2 and out·r·2 a linear, 8,945,664 bytes a block, whose 32 blocks make
    the 273 MiB the timeline holds in autocast's cache to the forward's end."""
    arch = get_model("qwen1-7b")
    run = run_config(**LORA_RUN, peft_version="0.5.0")
    requests, output = checkpointed_layer(arch, run, plan_method(arch, run))
    sizes = [v for op, v in requests if op == "alloc"]
    T = 8192
    assert max(sizes) == T * 11008 * 4 == 344 * 2**20
    assert sizes.count(max(sizes)) == 2
    assert sizes[output] == T * 4096 * 2 == 64 * 2**20
    kept = [sizes[k] for k in never_freed(requests) if k != output]
    # c_attn 4096 -> 12288, attn.c_proj 4096 -> 4096, w1 and w2 4096 -> 11008,
    # mlp.c_proj 11008 -> 4096
    widths = ((4096, 12288), (4096, 4096), (4096, 11008), (4096, 11008), (11008, 4096))
    assert kept == [n * 64 * 2 for w_in, w_out in widths for n in (w_in, w_out)]
    assert sum(kept) == 8_945_664
    assert 32 * sum(kept) == LinearOp.autocast_cache(arch, plan_method(arch, run))
    # peft >= 0.9 sums out of place: one more T·out·2 request a linear
    new = run_config(**LORA_RUN)
    more, _ = checkpointed_layer(arch, new, plan_method(arch, new))
    assert sum(op == "alloc" for op, _ in more) == len(sizes) + 5


@pytest.mark.parametrize(
    "change",
    [
        dict(grad_ckpt=False),
        dict(attn="sdpa"),
        dict(batch_size=2),
        dict(method="dora"),
        dict(method="full"),
        dict(autocast=False),
    ],
    ids=lambda c: "-".join(map(str, c.values())),
)
def test_not_derived_elsewhere(change):
    arch = get_model("qwen1-7b")
    settings = {**LORA_RUN, **change, "seq_len": 256}
    if change.get("method") == "full":
        settings = {k: v for k, v in settings.items() if not k.startswith(("lora", "adapter"))}
    run = run_config(**settings)
    assert checkpointed_layer(arch, run, plan_method(arch, run)) is None


def test_the_replay_runs_it_and_keeps_the_timeline_peak():
    """The replay lays each checkpointed block's forward out op by op (the program's
    largest request appears at least once per block) and still reaches the timeline's
    allocated peak."""
    arch = get_model("qwen1-1.8b")
    run = run_config(**{**LORA_RUN, "seq_len": 1024}, loss="shifted", peft_version="0.5.0")
    parts = step_parts(arch, run)
    tensors = _with_layer_forward(_tensors(parts, parts.sizes), arch, run, parts)
    assert tensors.block_forward
    events = step_events(parts.sizes, tensors)
    largest = max(v for op, v in tensors.block_forward if op == "alloc")
    per_pass = sum(1 for op, v in events if op == "alloc" and v == largest)
    assert per_pass >= arch.num_layers
    best, _ = replay_live(events)
    assert best == find_peak(parts.sizes).at_peak.total
