"""A checkpointed block's recompute at its end (ftmem.transients.recompute_end_moment).

torch.utils.checkpoint stops the recompute at the last tensor the forward saved: the down
projection's matmul saving its weight. What the layer's forward holds then beside the
rebuilt block is derived here from the tiny Falcon's shapes (b 3 × s 50, h 96, f 384) and
transformers 5.25's FalconDecoderLayer.forward; the step's peak it makes is measured in
tests/accuracy (the Falcon LoRA bf16-mixed cases with checkpointing).
"""

from __future__ import annotations

from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import plan_method
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


def test_only_for_a_frozen_down_projection_under_checkpointing():
    assert moment({}, precision="bf16-mixed", grad_ckpt=False) == 0
    # an adapted down projection: its own moments (adapter_moment)
    assert moment({}, precision="bf16-mixed", lora_targets="all-linear") == 0
    assert moment({}, precision="bf16-mixed", method="full") == 0
