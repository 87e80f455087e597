"""Qwen3.5's gated full attention (transformers 5.25 models/qwen3_5/modeling_qwen3_5.py
Qwen3_5Attention), the real layer under saved-tensor hooks on the CPU, against
ops.output_gate and the attention's other tensors written out here from the source:
the zero-centred q/k norms (fp32 input, rstd, the fp32 (1 + weight)), the rotary's cos and
sin (b, 1, s, rotary) in the compute dtype, sdpa's query and key (the rotary's cat
outputs), value (a view of v_proj's output), output and logsumexp."""

from __future__ import annotations

import pytest

from ftmem.dtypes import FP32
from ftmem.ops.output_gate import OutputGate
from tests.test_gated_deltanet import Kept

torch = pytest.importorskip("torch")
pytest.importorskip("transformers.models.qwen3_5")

B, S, HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 2, 100, 64, 4, 2, 16
ROTARY = HEAD_DIM // 4  # Qwen3_5TextConfig's partial_rotary_factor 0.25


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_gated_attention_keeps_what_is_counted(precision):
    from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import (
        Qwen3_5Attention,
        Qwen3_5TextRotaryEmbedding,
    )

    cfg = Qwen3_5TextConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        num_hidden_layers=2,
        layer_types=["linear_attention", "full_attention"],
        vocab_size=128,
        intermediate_size=32,
    )
    cfg._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    layer = Qwen3_5Attention(cfg, 1).to(dtype).requires_grad_(False)
    x = torch.randn(B, S, HIDDEN, dtype=dtype, requires_grad=True)
    positions = torch.arange(S)[None].expand(3, B, S)
    cos, sin = Qwen3_5TextRotaryEmbedding(cfg)(x, positions)

    with Kept(layer.parameters()) as kept:
        out, _ = layer(x, (cos, sin), None)
        measured = kept.alive()
    del out

    e = 2 if precision == "bf16" else FP32
    T = B * S
    gate = OutputGate.saved(T, HEADS, HEAD_DIM, e, gate_grad=True, out_grad=True)
    k_norm_input = T * KV_HEADS * HEAD_DIM * FP32  # k_proj's output in fp32, else its copy
    expected = [
        OutputGate.query_norm_input(T, HEADS, HEAD_DIM, e),
        T * HEADS * FP32,  # q rstd
        HEAD_DIM * FP32,  # q_norm's fp32 (1 + weight)
        k_norm_input,
        T * KV_HEADS * FP32,  # k rstd
        HEAD_DIM * FP32,
        B * S * ROTARY * e,  # cos
        B * S * ROTARY * e,  # sin
        T * HEADS * HEAD_DIM * e,  # query after the rotary
        T * KV_HEADS * HEAD_DIM * e,  # key after the rotary
        T * KV_HEADS * HEAD_DIM * e,  # value: v_proj's output
        T * HEADS * HEAD_DIM * e,  # sdpa's output
        B * HEADS * S * FP32,  # logsumexp
        *(item.nbytes for item in gate),
    ]
    assert measured == sorted(expected)
    assert [i.nbytes for i in gate] == [T * HEADS * HEAD_DIM * e] * 2


def test_a_frozen_gate_keeps_only_the_sigmoid_for_the_output():
    """Derived from autograd's rules (not measured): without the gate's gradient no
    SigmoidBackward node keeps anything, and the product keeps sigmoid(gate) alone."""
    items = OutputGate.saved(10, 2, 8, 2, gate_grad=False, out_grad=True)
    assert [i.nbytes for i in items] == [10 * 2 * 8 * 2]
    assert OutputGate.saved(10, 2, 8, 2, gate_grad=False, out_grad=False) == []
