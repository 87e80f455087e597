"""LoRA on LitGPT's chunked LM head (``lora_head: true``), measured on the CPU.

The truth is a re-implementation of LitGPT's code, written here from
Lightning-AI/litgpt@00af8b0d (litgpt 0.4.13's litgpt/lora.py is the same file):
LoRALinear.forward (``pretrained = self.linear(x)``; ``lora = (self.lora_dropout(x) @
self.lora_A.transpose(0, 1) @ self.lora_B.transpose(0, 1)) * self.scaling``; ``pretrained +
lora``) called once per 128-position piece (GPT.forward ``[self.lm_head(x_i) for x_i in
x.split(lm_head_chunk_size, dim=1)]``), in bf16 (``precision: bf16-true``), lora_dropout
on the CPU (a scaled bf16 mask, ops.dropout.Dropout.mask_bytes). Its saved tensors and
its forward and backward moments (ftmem.measure.tracker.LiveBytesTracker) are compared
with ftmem's (adapters.head_lora.chunked_head_lora, HeadLoRA.saved). Where litgpt is
importable, its own GPT is measured too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ftmem import estimate
from ftmem.adapters.head_lora import chunked_head_lora
from ftmem.api import _architecture, run_config
from ftmem.methods import plan_method
from ftmem.profiles import framework_arch

from . import test_profile_litgpt as profile_litgpt
from .conftest import framework_parts as parts
from .saved_storages import saved_storages

torch = pytest.importorskip("torch")

V, D, L = profile_litgpt.V, profile_litgpt.D, profile_litgpt.L
R = 8
# test_profile_litgpt's small Llama, its LM head untied as LitGPT builds it
LLAMA = {**profile_litgpt.LLAMA, "tie_word_embeddings": False}
LORA = dict(
    framework="litgpt",
    method="lora",
    precision="bf16",
    adapter_dtype="bf16",
    optimizer="adamw",
    lora_r=R,
    lora_alpha=16,
    lora_dropout=0.05,
    attn="sdpa",
    device="cpu",
)
SHAPES = [(1, 384), (2, 300)]  # whole pieces; b = 2 with a last piece of 44 positions


@pytest.fixture
def llama(tmp_path: Path) -> str:
    path = tmp_path / "llama" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(LLAMA))
    return str(path)


class LoRALinear(torch.nn.Module):
    """litgpt@00af8b0d litgpt/lora.py LoRALinear (r > 0, not merged) in bf16."""

    def __init__(self) -> None:
        super().__init__()
        self.linear: torch.nn.Module = torch.nn.Linear(D, V, bias=False, dtype=torch.bfloat16)
        self.lora_A = torch.nn.Parameter(torch.randn(R, D, dtype=torch.bfloat16))
        self.lora_B = torch.nn.Parameter(torch.randn(V, R, dtype=torch.bfloat16))
        self.scaling = 16 / R
        self.lora_dropout = torch.nn.Dropout(0.05)

    def forward(self, x: Any) -> Any:
        pretrained = self.linear(x)
        lora = (
            self.lora_dropout(x) @ self.lora_A.transpose(0, 1) @ self.lora_B.transpose(0, 1)
        ) * self.scaling
        return pretrained + lora


class FourBitLinear(torch.nn.Module):
    """The bnb plugin's 4-bit linear as LoRALinear's frozen ``linear`` (Dequant4bit)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("packed", torch.randint(0, 255, (V, D // 2), dtype=torch.uint8))

    def forward(self, x: Any) -> Any:
        return Dequant4bit.apply(x, self.packed)


def _head(four_bit: bool, litgpt: bool = False) -> Any:
    """The adapted head: the re-implementation or litgpt's own LoRALinear, in bf16, its
    base frozen (16-bit, or the 4-bit stand-in)."""
    torch.manual_seed(0)
    if litgpt:
        from litgpt.lora import LoRALinear as Real

        head = Real(D, V, bias=False, r=R, lora_alpha=16, lora_dropout=0.05)
        head = head.to(torch.bfloat16)
    else:
        head = LoRALinear()
    head.linear.requires_grad_(False)
    if four_bit:
        head.linear = FourBitLinear()
    return head


class Dequant4bit(torch.autograd.Function):
    """bitsandbytes@0.42.0 autograd/_functions.py MatMul4Bit's memory: the packed weight
    dequantised to fp16, then ``.to(A.dtype)``, in forward and again in backward (here a
    uint8 stand-in whose fp16 widening and bf16 copy are the same bytes as bnb's; its
    first fp16 widening is half the size, below the moment)."""

    @staticmethod
    def forward(ctx: Any, a: Any, packed: Any) -> Any:
        ctx.save_for_backward(packed)
        return torch.nn.functional.linear(a, Dequant4bit.weight(packed, a.dtype))

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        (packed,) = ctx.saved_tensors
        return torch.matmul(grad, Dequant4bit.weight(packed, grad.dtype)), None

    @staticmethod
    def weight(packed: Any, dtype: Any) -> Any:
        return packed.to(torch.float16).repeat(1, 2).to(dtype)


class Seed(torch.autograd.Function):
    """Makes a piece's 16-bit logits' gradient in backward, as Fabric's fp32 cast's
    backward does after the pieces' loss nodes (held_logits_head: all pieces' nll and
    log-softmax backward run first): autograd owns it and frees it after the piece."""

    @staticmethod
    def forward(ctx: Any, t: Any) -> Any:
        ctx.shape, ctx.dtype = t.shape, t.dtype
        return t.new_zeros(())

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        return torch.ones(ctx.shape, dtype=ctx.dtype)


def _measure(b: int, s: int, four_bit: bool, adapter: bool, litgpt: bool = False) -> dict[str, int]:
    """The pieces' forward peak and the head's backward peak, each beyond what existed
    before it (the head's input, then every piece's saved tensors and logits), and the
    bytes of the saved tensors."""
    from ftmem.measure.tracker import LiveBytesTracker

    head = _head(four_bit, litgpt)
    leaf = torch.randn(b, s, D, dtype=torch.bfloat16, requires_grad=True)
    tracker = LiveBytesTracker()
    tracker.track(*head.parameters(), *head.buffers(), leaf)
    call = head if adapter else head.linear
    with tracker:
        x = leaf * 1.0  # the final norm's output: it needs a gradient, the blocks train
        start = tracker.current
        tracker.reset_peak()
        pieces = [call(x_i) for x_i in x.split(128, dim=1)]
        forward = tracker.peak - start
        after = tracker.current
        seeds = [Seed.apply(p) for p in pieces]
        total = torch.stack(seeds).sum()
        del pieces, seeds
        before = tracker.current
        tracker.reset_peak()
        total.backward()
        backward = tracker.peak - before
    saved = b * s * V * 2
    return dict(forward=forward, backward=backward, saved=after - start - saved)


def _pieces(llama: str, b: int, s: int, method: str = "lora") -> Any:
    extra = dict(quant="nf4", double_quant=False, compute_dtype="bf16") if method == "qlora" else {}
    run = run_config(
        batch_size=b, seq_len=s, lora_targets="q,v,lm_head", **dict(LORA, method=method), **extra
    )
    arch = framework_arch(_architecture(llama), run)
    return chunked_head_lora(arch, run, plan_method(arch, run), 128)


@pytest.mark.parametrize(("b", "s"), SHAPES)
def test_saved_tensors_match_the_measurement(llama: str, b: int, s: int) -> None:
    # per piece: the dropout's output and scaled mask (c·D bf16 each), lora_A's output
    # (c·R); summed over the pieces, what ftmem adds to the activations
    head = _head(four_bit=False)
    x = torch.randn(b, s, D, dtype=torch.bfloat16, requires_grad=True) * 1.0
    params = [x, *head.parameters()]
    measured = sum(saved_storages(lambda: [head(x_i) for x_i in x.split(128, dim=1)], params))
    T = b * s
    assert measured == T * D * 2 * 2 + T * R * 2
    on = parts(llama, batch_size=b, seq_len=s, lora_targets="q,v,lm_head", **LORA)
    off = parts(llama, batch_size=b, seq_len=s, lora_targets="q,v", **LORA)
    assert on.sizes.activations.total - off.sizes.activations.total == measured


@pytest.mark.parametrize(("b", "s"), SHAPES)
def test_pieces_forward_moment_matches_the_measurement(llama: str, b: int, s: int) -> None:
    # base, lora_B's output and the scaled one (then the sum) of the last piece beside the
    # earlier pieces' logits; ftmem's moment is beyond the saved tensors and before the
    # fp32 log-softmax (T·V·4) exists
    m = _measure(b, s, four_bit=False, adapter=True)
    T = b * s
    assert m["forward"] - m["saved"] == _pieces(llama, b, s).forward + T * V * 4
    last = b * (s - 128 * ((s - 1) // 128))
    if last == b * 128:
        assert m["forward"] - m["saved"] == T * V * 2 + 2 * last * V * 2


@pytest.mark.parametrize(("b", "s"), SHAPES)
def test_branch_backward_moment_matches_the_measurement(llama: str, b: int, s: int) -> None:
    # every piece's 16-bit logits' gradient (T·V·2) beside one branch's scaled gradient,
    # B's gradients and lora_A's output's; ftmem's moment is beyond the log-softmax
    # (T·V·4, freed by then), the measured one holds the seeds' scalar gradient (2 bytes)
    m = _measure(b, s, four_bit=False, adapter=True)
    T = b * s
    assert m["backward"] == _pieces(llama, b, s).branch + T * V * 4 + 2


@pytest.mark.parametrize(("b", "s"), SHAPES)
def test_4bit_base_backward_with_the_branch_matches_the_measurement(
    llama: str, b: int, s: int
) -> None:
    # at the last piece's dequantisation in backward, what the branch left (B's and A's
    # gradients, the input's gradient) and freed (its saved tensors): ftmem's `base`
    with_branch = _measure(b, s, four_bit=True, adapter=True)
    frozen = _measure(b, s, four_bit=True, adapter=False)
    assert with_branch["backward"] - frozen["backward"] == _pieces(llama, b, s, "qlora").base
    assert frozen["backward"] >= 4 * V * D  # the dequant moment is the peak of both


def test_trainable_pair_in_the_model_dtype(llama: str) -> None:
    # A (r × h) and B (padded V × r) in bf16, each with a gradient and two AdamW states
    on = estimate(llama, batch_size=1, seq_len=256, lora_targets="q,v,lm_head", **LORA)
    off = estimate(llama, batch_size=1, seq_len=256, lora_targets="q,v", **LORA)
    pair = R * D + V * R
    assert on.memory.weights_bytes - off.memory.weights_bytes == pair * 2
    assert on.memory.gradients_bytes - off.memory.gradients_bytes == pair * 2
    # two bf16 states per element and AdamW's 4-byte step per tensor
    assert on.memory.optimizer_states_bytes - off.memory.optimizer_states_bytes == pair * 4 + 8


@pytest.mark.parametrize("four_bit", [False, True])
def test_the_reimplementation_is_litgpts_own(four_bit: bool) -> None:
    """Where litgpt is importable (litgpt 0.4.13 installed apart: pip install --no-deps
    --target DIR litgpt==0.4.13; PYTHONPATH=DIR), its LoRALinear measures the same."""
    pytest.importorskip("litgpt.lora")
    for b, s in SHAPES:
        ours = _measure(b, s, four_bit, adapter=True)
        assert _measure(b, s, four_bit, adapter=True, litgpt=True) == ours


def test_a_live_litgpt_model_with_lora_head_targets_the_head(llama: str) -> None:
    # ftmem.integrations.litgpt reads lora_head from litgpt.lora.Config beside the switches
    from types import SimpleNamespace

    from ftmem.integrations.litgpt import _method
    from ftmem.integrations.live import LiveRun

    config = SimpleNamespace(
        lora_r=R, lora_alpha=16, lora_dropout=0.05, lora_query=True, lora_value=True
    )
    trainable = torch.nn.Parameter(torch.zeros(1))
    params = [("lm_head.lora_A", trainable), ("transformer.h.0.attn.lora_A", trainable)]
    for head, targets in ((True, "q,v,lm_head"), (False, "q,v")):
        live = LiveRun(_architecture(llama))
        _method(SimpleNamespace(**vars(config), lora_head=head), params, live, "test")
        assert live.settings["lora_targets"] == targets
        assert not any("lora_head" in n for n in live.notes)
