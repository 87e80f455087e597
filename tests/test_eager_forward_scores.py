"""Eager attention's largest forward moment in a block that keeps nothing (checkpointed).

The truth: transformers 5.25's eager_attention_forward (models/llama/modeling_llama.py,
which Mistral and the other Llama-like families share) run on the CPU under the
live-bytes tracker, in bf16 and fp32, with and without GQA. At the softmax the 16-bit
scores are still referenced while ``softmax(..., dtype=torch.float32)`` converts them
(torch aten/src/ATen/native/SoftMax.cpp: ``input_.toType(dtype)``, then _softmax): 16-bit
scores, their fp32 copy and the fp32 softmax, e + 8 bytes a score; repeat_kv's copies of
k and v live beside them. The estimate counted two fp32 tensors (8 B a score) and no
copies: the checkpointed forward of the tiny Mistral 3 and Llama-3.2-Vision read -10.6 %
and -7.9 %.
"""

from __future__ import annotations

import pytest

from ftmem.dtypes import eager_score_bytes
from ftmem.ops.attention import Attention
from ftmem.run import RunConfig
from tests.conftest import tiny

B, S = 2, 40


def _measured_moment(family: str, precision: str) -> int:
    """The peak of eager_attention_forward's call beyond its inputs (q, k, v, the mask)."""
    torch = pytest.importorskip("torch")
    from transformers.models.llama.modeling_llama import eager_attention_forward

    from ftmem.measure.tracker import LiveBytesTracker

    arch = tiny(family)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    d = arch.hidden_size // arch.num_heads
    q = torch.randn(B, arch.num_heads, S, d, dtype=dtype)
    k = torch.randn(B, arch.kv_heads, S, d, dtype=dtype)
    v = torch.randn(B, arch.kv_heads, S, d, dtype=dtype)
    mask = torch.zeros(B, 1, S, S, dtype=dtype)
    module = torch.nn.Module()
    module.num_key_value_groups = arch.num_heads // arch.kv_heads
    module.eval()
    tracker = LiveBytesTracker()
    tracker.track(q, k, v, mask)
    base = tracker.current
    with torch.no_grad(), tracker:
        out = eager_attention_forward(module, q, k, v, mask, scaling=d**-0.5)
    del out
    return tracker.peak - base


@pytest.mark.parametrize("family", ["llama", "mistral"])  # MHA, GQA (2 kv heads of 4)
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_eager_forward_moment_measured(family: str, precision: str):
    arch = tiny(family)
    run = RunConfig(
        method="lora", precision=precision, batch_size=B, seq_len=S, device="cpu",
        attn="eager", grad_ckpt=True,
    )  # fmt: skip
    e = 2 if precision == "bf16" else 4
    assert Attention.eager_forward_scores(arch, run, e) == _measured_moment(family, precision)


def test_bytes_per_score():
    """By hand from SoftMax.cpp: fp32 scores: the input and its softmax; 16-bit: the scores,
    their fp32 copy and the fp32 softmax; fp16 on CUDA goes to the kernel unconverted."""
    assert eager_score_bytes(4, fp16_on_cuda=False) == 8
    assert eager_score_bytes(2, fp16_on_cuda=False) == 10
    assert eager_score_bytes(2, fp16_on_cuda=True) == 6
