"""A pre-norm block with one fused q/k/v projection (Qwen-1's QWenBlock, remote code) under
``torch.no_grad`` (a checkpointed block's first forward), op by op, in the order PyTorch
allocates and frees its tensors: the requests the allocator replay lays out per block.

Derived from modeling_qwen.py of Qwen/Qwen-7B, read at its mirror
zhangningboo/Qwen-7B@e7a368b0774370edec29674e7c51f52fc7663f59 (the 1.8B rows' code; the
7B/14B rows' a6ca629 takes ``flash_attn_unpadded_func``, whose output at batch 1 is the
same one tensor):

- ``QWenBlock.forward``: ``layernorm_output = self.ln_1(hidden_states)``, the attention,
  ``layernorm_input = attn_output + residual``, ``layernorm_output = self.ln_2(...)`` (the
  first norm's output freed by this rebinding, once the second's exists), the MLP,
  ``hidden_states = residual + mlp_output``; ``attn_output`` (and the ``attn_outputs``
  tuple) keep the attention's output to the block's return.
- ``RMSNorm.forward`` without flash-attn's ``rms_norm`` (the layer_norm extension, which
  the README recommends but does not require: which ran is unknown, so the torch
  fallback): ``self._norm(x.float()).type_as(x)`` then ``output * self.weight`` (the
  weight cast to bf16 with the model): the fp32 copy, the squares (freed by ``mean``), the
  normalised product; the copy freed when ``_norm`` returns, the product once cast.
- ``QWenAttention.forward``: ``mixed_x_layer = self.c_attn(hidden_states)`` held to the
  return (query, key and value are views of it); ``apply_rotary_pos_emb`` on query and
  key: ``t_float = t.float()``, then flash-attn's ``apply_rotary_emb_func(t_float, cos,
  sin).type_as(t)`` (flash-attn from 2.1.1 brings its Triton rotary, which the README's
  install notes say; flash_attn/ops/triton/rotary.py ``apply_rotary``: ``output =
  torch.empty_like(x)``), the fp32 result freed once cast, the fp32 copy at the return;
  ``FlashSelfAttention`` at batch 1 calls ``flash_attn_func`` (v2.3 flash_api.cpp
  ``mha_fwd``: one output of q's shape and a small logsumexp; v is a view with unit
  last stride, which ``maybe_contiguous`` does not copy); ``_merge_heads``' contiguous
  is a view; ``c_proj``.
- ``QWenMLP.forward``: ``a1 = self.w1(x)``, ``a2 = self.w2(x)``, ``a1 * F.silu(a2)``,
  ``self.c_proj(...)``; a1, a2 and the product stay until the return.

The linears and LoRA's branch are ops.nograd_requests' (peft's fp32 input copy under
autocast, its dropout, the casts, autocast's cached copies of the adapters' weights). Left out, small requests: the norms' statistics
(T·4 bytes), the rotary kernel's contiguous cos and sin (s·d/2·4 each), flash-attn's
logsumexp (heads·T·4) and RNG state. Checked against PyTorch on the CPU, request by
request, with a re-implementation of the block in tests/test_nograd_fused_qkv.py.
"""

from __future__ import annotations

from ftmem.arch import Architecture, layout
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.gpu.program import Requests
from ftmem.methods import MethodPlan
from ftmem.ops.nograd_requests import (
    TRANSFORMERS_MODELS,
    LayerProgram,
    LayerShape,
    adapter_cast_bytes,
    peft_adds_in_place,
)
from ftmem.profiles import profile_of
from ftmem.run import RunConfig

# the block's linears (module paths in a block) and the role each is keyed by
FUSED_LINEARS = {
    "attn.c_attn": "q",
    "attn.c_proj": "o",
    "mlp.w1": "up",
    "mlp.w2": "gate",
    "mlp.c_proj": "down",
}


class FusedBlock(LayerProgram):
    __slots__ = ()

    def upcast_rms_norm(self) -> int:
        """RMSNorm's torch path on a 16-bit input held by the caller."""
        s = self.shape
        wide = s.T * s.hidden * FP32
        copy = self.alloc(wide)
        self.free(self.alloc(wide))  # pow(2), read by mean
        normed = self.alloc(wide)
        self.free(copy)  # ``_norm`` returns
        cast = self.alloc(s.T * s.hidden * s.e)
        self.free(normed)
        out = self.alloc(s.T * s.hidden * s.e)
        self.free(cast)
        return out

    def upcast_rotary(self, width: int) -> int:
        """``t.float()``, the kernel's fp32 output, its cast back; the fp32 tensors freed."""
        s = self.shape
        copy = self.alloc(s.T * width * FP32)
        rotated = self.alloc(s.T * width * FP32)
        out = self.alloc(s.T * width * s.e)
        self.free(rotated, copy)
        return out

    def attention(self, x: int) -> int:
        s = self.shape
        mixed = self.linear("q", x, s.hidden, 2 * s.q_size + s.kv_size)
        query = self.upcast_rotary(s.q_size)
        key = self.upcast_rotary(s.q_size)
        context = self.alloc(s.T * s.q_size * s.e)  # flash-attn's output
        projected = self.linear("o", context, s.q_size, s.hidden)
        self.free(mixed, query, key, context)  # at the return
        return projected

    def mlp(self, x: int) -> int:
        s = self.shape
        a1 = self.linear("up", x, s.hidden, s.intermediate)
        a2 = self.linear("gate", x, s.hidden, s.intermediate)
        act = self.alloc(s.T * s.intermediate * s.e)  # F.silu(a2)
        product = self.alloc(s.T * s.intermediate * s.e)
        self.free(act)
        down = self.linear("down", product, s.intermediate, s.hidden)
        self.free(a1, a2, product)  # at the return
        return down


def fused_qkv_block(shape: LayerShape) -> tuple[Requests, int]:
    """The block's requests with its input held by the caller, and the number of the
    allocation that is its output (never freed, as autocast's cached weight copies
    are not: LayerShape.weight_casts). ``q_size`` is the attention's width, ``kv_size``
    the value's (the fused projection is q + k + v)."""
    p = FusedBlock(shape)
    first = p.upcast_rms_norm()
    attended = p.attention(first)
    mid = p.alloc(shape.T * shape.hidden * shape.e)  # attn_output + residual
    second = p.upcast_rms_norm()
    p.free(first)  # the rebinding of layernorm_output
    down = p.mlp(second)
    out = p.alloc(shape.T * shape.hidden * shape.e)
    p.free(second, attended, mid, down)  # at the return
    return tuple(p.ops), out


def fused_qkv_block_forward(
    arch: Architecture, run: RunConfig, plan: MethodPlan
) -> tuple[Requests, int] | None:
    """The block as :func:`fused_qkv_block` lays it out, where derived: flash-attn at batch
    1 (larger batches unpad q, k and v by the attention mask: not derived), 16-bit weights,
    LoRA with adapters in the activations' dtype or fp32 ones under autocast (peft's
    default, the Qwen-1 README rows), a framework that loads the model through
    transformers; else None. Full training (the README's rows run it under ZeRO-3) and
    GPTQ's quantised linears are not derived."""
    d = plan.dtypes
    linears = layout(arch).linears
    cast = adapter_cast_bytes(run, plan)
    if not (
        profile_of(run).name in TRANSFORMERS_MODELS
        and run.attn == "flash"
        and run.batch_size == 1
        and run.method == "lora"
        and cast is not None
        and d.base == d.compute
        and d.quantized is None
        and {lin.module for lin in linears} == set(FUSED_LINEARS)
    ):
        return None
    widths = {FUSED_LINEARS[lin.module]: lin for lin in linears}
    shape = LayerShape(
        T=run.positions,
        hidden=arch.hidden_size,
        q_size=widths["o"].in_features,
        kv_size=widths["q"].out_features - 2 * widths["o"].in_features,
        intermediate=widths["up"].out_features,
        e=BYTES_PER_ELEMENT[d.compute],
        lora=frozenset(FUSED_LINEARS[lin.module] for lin in plan.adapted),
        lora_r=run.r,
        lora_dropout=run.dropout > 0,
        adapter_e=cast,
        sum_in_place=peft_adds_in_place(run),
        # fp32 adapters under autocast: their weights cast too, and cached
        weight_casts=cast == FP32,
    )
    return fused_qkv_block(shape)
