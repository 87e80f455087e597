"""Falcon with gradient checkpointing: what the checkpointed step holds beyond the
rebuilt blocks, derived from the tiny Falcon's shapes (b 3 × s 50, h 96, f 384) and
transformers 5.25's modeling_falcon.py; the steps' peaks are measured in tests/accuracy
(the Falcon cases with checkpointing).

- The recompute's end (ftmem.transients.recompute_end_moment): torch.utils.checkpoint stops
  at the last tensor the forward saved, the down projection's matmul saving its weight,
  with the layer's locals alive.
- Autocast's cast cache and FalconLinear's ``input @ self.weight.T`` (LinearOp.autocast_cache).
- ALiBi Falcon's unread rotary tables, held by the checkpoints (Embedding.unread_rotary_held).
"""

from __future__ import annotations

import pytest

from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import plan_method
from ftmem.ops.embedding import Embedding
from ftmem.ops.linear import LinearOp
from ftmem.run import RunConfig
from ftmem.transients import recompute_end_moment
from tests.accuracy.cases import FALCON_RW
from tests.conftest import tiny

T, H, F = 3 * 50, 96, 384
FP32, BF16 = 4, 2


def moment(arch_changes: dict, **settings: object) -> int:
    arch = tiny("falcon", **arch_changes)
    run = RunConfig(
        **{"batch_size": 3, "seq_len": 50, "method": "lora", "grad_ckpt": True, **settings}
    )
    plan = plan_method(arch, run)
    return recompute_end_moment(arch, run, plan, BYTES_PER_ELEMENT[plan.dtypes.compute], T)


def test_falcon_rw_under_autocast():
    # FalconLinear adds its fp32 bias after the bf16 matmul: the GELU's output is fp32 and
    # autocast casts it for dense_4h_to_h; attention_layernorm_out, the post-attention
    # norm's output (the MLP's input) and attention_output stay in locals (fp32: LayerNorm
    # under autocast, the biased dense); the fp32 gradient into the block and its bf16
    # cast for the bias add's matmul
    held = T * F * FP32 + T * F * BF16 + 3 * T * H * FP32
    incoming = T * H * FP32 + T * H * BF16
    assert moment(FALCON_RW, precision="bf16-mixed") == held + incoming


def test_parallel_falcon_under_autocast():
    # one shared norm: its fp32 output is the MLP's input; the GELU's and the attention
    # output in bf16 (no bias)
    held = T * F * BF16 + T * H * FP32 + T * H * BF16
    assert moment({}, precision="bf16-mixed") == held + T * H * FP32 + T * H * BF16


def test_pure_bf16_norm_output_kept_by_lora_a_only_without_a_cast():
    # fp32 adapters: peft casts the norm's output for lora_A, the bf16 output stays a local
    # only; bf16 adapters: lora_A keeps that very tensor (saved already)
    gelu, attention_out, incoming = T * F * BF16, T * H * BF16, T * H * BF16
    assert moment({}, precision="bf16") == gelu + T * H * BF16 + attention_out + incoming
    assert moment({}, precision="bf16", adapter_dtype="bf16") == gelu + attention_out + incoming


def test_only_under_checkpointing():
    assert moment({}, precision="bf16-mixed", grad_ckpt=False) == 0


def test_adapted_down_projection_under_autocast():
    # the recompute stops at lora_B's input: down's base output is made (bf16), peft's
    # fp32 copy of down's input (a plain .to, untouched by autocast) is a local beside
    # the GELU's bf16 output; the shared norm's fp32 output and the attention output;
    # the fp32 gradient into the block, the base output's bf16 one (the residual add's
    # cast) and the scaled adapter's
    held = T * F * BF16 + T * F * FP32 + T * H * BF16 + T * H * FP32 + T * H * BF16
    incoming = T * H * FP32 + T * H * BF16 + T * H * BF16
    assert moment({}, precision="bf16-mixed", lora_targets="all-linear") == held + incoming


def test_full_finetuning_keeps_only_what_no_op_saved():
    # every trained linear saves its input's bf16 cast: the parallel block's frame holds
    # the norm's fp32 output and the bf16 attention output (the GELU's bf16 output is
    # down's saved input)
    incoming = T * H * FP32 + T * H * BF16
    assert moment({}, precision="bf16-mixed", method="full") == (
        T * H * FP32 + T * H * BF16 + incoming
    )
    # falcon-rw: the GELU's fp32 output (autocast saved its cast), both norms' fp32
    # outputs and the biased attention output, fp32
    held = T * F * FP32 + 3 * T * H * FP32
    assert moment(FALCON_RW, precision="bf16-mixed", method="full") == held + incoming
    # pure bf16: the linears save the very tensors (the attention output stays a local)
    assert moment({}, precision="bf16", method="full") == T * H * BF16 + T * H * BF16


def test_autocast_caches_no_transposed_weight():
    # the independent truth: under autocast a matmul by a weight's transpose casts it on
    # every call (the cache takes leaves, not views), F.linear once per forward
    torch = pytest.importorskip("torch")
    from torch.utils._python_dispatch import TorchDispatchMode

    class Casts(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Casts.count += func.__name__.startswith("_to_copy")
            return func(*args, **(kwargs or {}))

    w, x = torch.nn.Parameter(torch.randn(8, 8)), torch.randn(4, 8)
    counts = []
    for matmul in (lambda: torch.nn.functional.linear(x, w), lambda: x @ w.T):
        Casts.count = 0
        with torch.autocast("cpu", dtype=torch.bfloat16), Casts():
            matmul()
            matmul()
        counts.append(Casts.count)
    assert counts == [3, 4]  # x twice; w once (cached) or twice


def test_falcon_caches_its_adapters_weights_only():
    arch = tiny("falcon")
    full = plan_method(arch, RunConfig(method="full", precision="bf16-mixed", grad_ckpt=True))
    assert LinearOp.autocast_cache(arch, full) == 0
    lora = plan_method(arch, RunConfig(method="lora", precision="bf16-mixed", grad_ckpt=True))
    # lora_A (r × h) and lora_B ((h + 2·head_dim) × r) of query_key_value per block, bf16
    r, head_dim, L = 8, 24, 2
    assert LinearOp.autocast_cache(arch, lora) == L * 2 * r * (H + H + 2 * head_dim)
    # Llama's nn.Linear weights are cached (F.linear)
    llama = tiny("llama")
    plan = plan_method(llama, RunConfig(method="full", precision="bf16-mixed", grad_ckpt=True))
    assert LinearOp.autocast_cache(llama, plan) > 0


def test_alibi_falcon_checkpoints_hold_the_rotary_tables():
    # FalconModel.forward computes cos and sin (1, s, head_dim) whatever the position
    # embedding; the checkpoints hold them in the embeddings' dtype
    rw = tiny("falcon", **FALCON_RW)
    head_dim = H // 4
    ckpt = RunConfig(batch_size=3, seq_len=50, method="lora", grad_ckpt=True)
    assert Embedding.unread_rotary_held(rw, ckpt, FP32) == 2 * 50 * head_dim * FP32
    assert Embedding.unread_rotary_held(rw, ckpt.model_copy(update={"grad_ckpt": False}), 4) == 0
    # a rotary Falcon's tables are saved by its multiplies (Embedding.rotary_saved)
    assert Embedding.unread_rotary_held(tiny("falcon"), ckpt, FP32) == 0
