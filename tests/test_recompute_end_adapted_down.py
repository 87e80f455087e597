"""A checkpointed block's recompute end where LoRA adapts the down projection (GPT-2 on
all linears, bf16 with fp32 adapters): transients.recompute_end_moment, derived from the
tiny GPT-2's shapes (b 3 × s 50, h 96, f 384) and transformers 5.25's modeling_gpt2.py;
the step's peak is measured in tests/accuracy (``gpt2-gradckpt=True-loratargets=all-linear-
method=lora-precision=bf16``: -2.6 % before, the backward peak at lora_B's MmBackward0 of the
lower block's recompute).

torch.utils.checkpoint stops the recompute at the block's last saved tensor (torch 2.13
utils/checkpoint.py l.1094-1131), here lora_B's input: peft 0.21.2 tuners/lora/layer.py
Linear.forward has made the base layer's output (``result = self.base_layer(x)``) and the
adapter's fp32 input cast and lora_A output (saved, rebuilt), not yet the sum.
"""

from __future__ import annotations

from ftmem.methods import plan_method
from ftmem.run import RunConfig
from ftmem.transients import recompute_end_moment
from tests.conftest import tiny

T, H, F = 3 * 50, 96, 384
FP32, BF16 = 4, 2


def moment(**settings: object) -> int:
    arch = tiny("gpt2")
    base = {"batch_size": 3, "seq_len": 50, "method": "lora", "grad_ckpt": True}
    run = RunConfig(**{**base, "lora_targets": "all-linear", **settings})
    plan = plan_method(arch, run)
    return recompute_end_moment(arch, run, plan, 2 if run.precision != "fp32" else 4, T)


def test_gpt2_all_linear_bf16():
    # held by frames, saved by no op: the GELU's output (GPT2MLP.forward's hidden_states,
    # c_proj's input: its fp32 cast is what lora_A keeps), c_proj's base output, ln_2's
    # output (GPT2Block.forward's hidden_states, the MLP's input) and attn_output
    held = T * F * BF16 + T * H * BF16 + T * H * BF16 + T * H * BF16
    # into the block: the residual's bf16 gradient, and the two branches of c_proj's
    # adapter sum (the base output's bf16 gradient, the scaled fp32 adapter one)
    incoming = T * H * BF16 + T * H * BF16 + T * H * FP32
    assert moment(precision="bf16") == held + incoming


def test_not_for_dora():
    # (DoRA's rebuild order is measured with its own moment; under autocast the moment
    # holds peft's fp32 copy of down's input too: measured by the accuracy case
    # gpt2-gradckpt=True-loratargets=all-linear-method=lora-precision=bf16-mixed)
    assert moment(precision="bf16", method="dora") == 0
