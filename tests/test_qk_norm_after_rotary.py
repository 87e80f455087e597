"""Hunyuan-V1-Dense's q/k norms after the rotary (transformers 5.25
models/hunyuan_v1_dense/modeling_hunyuan_v1_dense.py HunYuanDenseV1Attention.forward:
``apply_rotary_pos_emb`` and then ``query_layernorm`` / ``key_layernorm``), run here
with the module's own rotary function and the real attention's norm modules and measured
with saved_tensors_hooks on the CPU, against ops.norm.QKNorm.saved.

The truth written here: the rotary's multiplies keep only the (shared) cos and sin, left
out; each norm keeps its fp32 input (the rotated tensor itself where that is fp32) and
one fp32 rstd a row, and where its weight trains the normalised tensor in the rotated
tensor's dtype: the projection's 16-bit output times the fp32 tables under autocast is
fp32, so that tensor is fp32 there (Family.qk_norm_after_rotary).
"""

from __future__ import annotations

import pytest

from ftmem.arch import layout
from ftmem.methods import plan_method
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.norm import QKNorm
from ftmem.run import RunConfig
from tests.conftest import tiny
from tests.saved_storages import saved_storages

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# T = 100 rows of 4 query heads and 2 key heads of 32: q 12,800 and k 6,400 values
Q, K, ROWS_Q, ROWS_K = 12_800, 6_400, 400, 200


@pytest.mark.parametrize(
    ("precision", "trains", "expected"),
    [
        # fp32 input and rstd of each; + the fp32 normalised tensors where weights train
        ("fp32", False, [4 * ROWS_K, 4 * ROWS_Q, 4 * K, 4 * Q]),
        ("fp32", True, [4 * ROWS_K, 4 * ROWS_Q, 4 * K, 4 * K, 4 * Q, 4 * Q]),
        # bf16: the fp32 copies, the bf16 normalised tensors
        ("bf16", True, [4 * ROWS_K, 4 * ROWS_Q, 2 * K, 4 * K, 2 * Q, 4 * Q]),
        # autocast: bf16 projections times fp32 tables, fp32 rotated tensors: the
        # normalised tensors fp32 (Qwen3's, before the rotary, are bf16)
        ("bf16-mixed", True, [4 * ROWS_K, 4 * ROWS_Q, 4 * K, 4 * K, 4 * Q, 4 * Q]),
        ("bf16-mixed", False, [4 * ROWS_K, 4 * ROWS_Q, 4 * K, 4 * Q]),
    ],
)
def test_norms_after_the_rotary_keep_what_the_estimate_counts(precision, trains, expected):
    from transformers.models.hunyuan_v1_dense import modeling_hunyuan_v1_dense as hy

    arch = tiny("hunyuan_v1_dense")
    b, s, d = 2, 50, arch.head_size
    config = transformers.HunYuanDenseV1Config(
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.kv_heads,
        head_dim=d,
    )
    # the norms' weights and the tables are in the residual stream's dtype (fp32 under
    # autocast), the projections' output in the compute dtype
    residual = torch.bfloat16 if precision == "bf16" else torch.float32
    compute = torch.float32 if precision == "fp32" else torch.bfloat16
    attn = hy.HunYuanDenseV1Attention(config, layer_idx=0).to(residual)
    norms = [attn.query_layernorm, attn.key_layernorm]
    for norm in norms:
        norm.requires_grad_(trains)
    torch.manual_seed(0)
    q = torch.randn(b, arch.num_heads, s, d, dtype=compute, requires_grad=True)
    k = torch.randn(b, arch.kv_heads, s, d, dtype=compute, requires_grad=True)
    cos = torch.randn(b, s, d, dtype=residual)
    sin = torch.randn(b, s, d, dtype=residual)

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16-mixed"):
            q_rot, k_rot = hy.apply_rotary_pos_emb(q, k, cos, sin)
            return attn.query_layernorm(q_rot), attn.key_layernorm(k_rot)

    measured = saved_storages(step, [*attn.parameters(), q, k, cos, sin])
    assert measured == expected

    run = RunConfig(
        method="full" if trains else "lora", precision=precision, batch_size=b, seq_len=s
    )
    ctx = LayerContext(arch, run, plan_method(arch, run), b * s)
    qkv = [lin for lin in layout(arch).linears if set(lin.roles) & {"q", "k", "v"}]
    state = BlockState(input_requires_grad=True, weights_trainable=trains, adapted=frozenset())
    items = QKNorm.saved(ctx, state, qkv, True, trains)
    assert sorted(p for item in items for p in (item.parts or (item.nbytes,))) == expected
