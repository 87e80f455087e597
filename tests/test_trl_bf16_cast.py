"""TRL's cast of a 4-bit base's embedding and LM head back to bf16 (--trl-bf16-cast).

TRL 0.7.5 to 0.21.0's SFTTrainer, given a peft config and a 4-bit model, calls peft's
prepare_model_for_kbit_training (every non-quantised parameter to fp32) and then, when
``args.bf16 and getattr(model, "is_loaded_in_4bit", False) and not is_sharded_qlora``,
``peft_module_casting_to_bf16(model)``: modules named ``*norm*`` (or LayerNorms) to fp32,
``lm_head`` / ``embed_tokens`` / ``wte`` / ``wpe`` from fp32 to bf16 (huggingface/trl
trl/trainer/sft_trainer.py@v0.13.0 (8d4cc9427d58) l.227-233, trl/trainer/utils.py l.872-879;
v0.21.0 (46d09bd2408f) sft_trainer.py l.627-629; absent from v0.22.0 on). bitsandbytes'
Linear4bit answers in its input's dtype, so the residual stream is fp32 after the first
block's fp32 post-attention norm: only the first block's input (the embedding's output)
is 16-bit, and the head reads an fp32 input with a bf16 weight, which autocast uses as it is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ftmem import estimate
from ftmem.api import InvalidInputError
from tests.accuracy.cases import PEAK_TOLERANCE, WIDER, Case

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "fms-mixtral-8x7b-instruct-v0.1-qlora-baseline-peft-bnb-1gpu-bs4"
V, H, S = 32_000, 4096, 4096  # Mistral-7B-v0.1 and Mixtral-8x7B (config.json), the rows' s
D = 128  # their head_dim (4096 / 32 heads): the rotary cos and sin are s × d each
FP32, BF16 = 4, 2


def _baseline(model: str, b: int, cast: bool):
    """The calibrated Mixtral baseline row's settings (calibration/settings/fms.yaml) on
    ``model``, as calibration/notes/carryover.py carries them to fms' Mistral rows."""
    rows = yaml.safe_load((ROOT / "calibration/settings/fms.yaml").read_text())
    row = next(r for r in rows if r["id"] == BASELINE)
    settings = {**row["settings"], "batch_size": b, "trl_bf16_cast": cast}
    config = ROOT / "calibration/configs" / model / "config.json"
    return estimate(str(config), gpu=row["gpu"], **settings).memory


def test_the_calibrated_baseline_row_says_trl_casts():
    rows = yaml.safe_load((ROOT / "calibration/settings/fms.yaml").read_text())
    row = next(r for r in rows if r["id"] == BASELINE)
    assert row["settings"]["trl_bf16_cast"] is True


@pytest.mark.parametrize("b", [4, 8])
def test_mistral_baseline_forward_peak_loses_embedding_head_copy_and_first_checkpoint(b):
    """Derivation (fms-acceleration a100_80gb.csv l.58 / l.60, peak at the forward's loss):
    the embedding and the head from fp32 to bf16 (2·V·h·2 B), no 16-bit autocast copy of
    the head (V·h·2 B), the first block's checkpointed input in bf16 (b·s·h·2 B), the
    rotary cos and sin in the embedding output's dtype, bf16 (2·s·d·2 B; 4.48.1
    MistralRotaryEmbedding.forward returns them ``.to(dtype=x.dtype)``). These are
    922,746,880 / 1,056,964,608 B against the rows' 923,389,952 / 1,056,092,160 B excess
    (calibration/notes/fms.md)."""
    before, after = _baseline("mistral-7b-v0.1", b, False), _baseline("mistral-7b-v0.1", b, True)
    weights = 2 * V * H * (FP32 - BF16)
    assert before.weights_bytes - after.weights_bytes == weights == 524_288_000
    assert before.peak_phase == after.peak_phase == "forward"
    rotary = 2 * S * D * (FP32 - BF16)
    drop = weights + V * H * BF16 + b * S * H * (FP32 - BF16) + rotary
    assert before.peak_allocated_bytes - after.peak_allocated_bytes == drop
    assert drop == {4: 922_746_880, 8: 1_056_964_608}[b]


def test_mixtral_baseline_backward_peak_loses_the_weights_and_first_checkpoint():
    """The calibrated Mixtral row peaks in a block's backward, where the head's copy is gone:
    the weights (2·V·h·2 B), the first checkpoint (b·s·h·2 B) and the rotary tables."""
    before, after = _baseline("mixtral-8x7b", 4, False), _baseline("mixtral-8x7b", 4, True)
    assert before.peak_phase == after.peak_phase == "backward"
    drop = 2 * V * H * (FP32 - BF16) + 4 * S * H * (FP32 - BF16) + 2 * S * D * (FP32 - BF16)
    assert before.peak_allocated_bytes - after.peak_allocated_bytes == drop == 660_602_880


@pytest.mark.parametrize(
    "settings",
    [
        {"method": "qlora", "precision": "bf16"},  # nothing upcast to cast back
        {"method": "qlora", "precision": "bf16-mixed", "quant": "int8"},  # not 4-bit
        {"method": "lora", "precision": "bf16-mixed"},  # no quantised base
    ],
    ids=str,
)
def test_refused_where_trl_does_not_cast(settings):
    with pytest.raises(InvalidInputError, match="trl-bf16-cast"):
        estimate("mistral-7b-v0.1", trl_bf16_cast=True, batch_size=1, seq_len=64, **settings)


@pytest.mark.accuracy
@pytest.mark.parametrize("grad_ckpt", [True, False])
def test_measured_on_a_tiny_llama(grad_ckpt):
    """Measured on the CPU: a tiny Llama, bitsandbytes 4-bit, peft LoRA, bf16 autocast,
    TRL's function applied after peft (ftmem.measure.build._trl_bf16_cast). Weights and
    saved activations are exact: the first block's checkpointed input and the rotary
    cos and sin (computed in the embedding output's dtype) in bf16, the rest fp32
    (before the embedding's dtype was followed: +6,400 B, the bf16 cos and sin counted
    in fp32, 2026-12-04)."""
    from tests.accuracy.test_accuracy import compare, error

    settings = {"method": "qlora", "precision": "bf16-mixed", "trl_bf16_cast": True}
    r = compare(Case("llama", {**settings, "grad_ckpt": grad_ckpt}, WIDER))
    for key in ("weights", "activations"):
        assert r[key][0] == r[key][1], key
    assert abs(error(r["peak"])) <= PEAK_TOLERANCE


def test_4bit_experts_on_fp32_hidden_states_keep_what_the_estimate_says():
    """Measured (CPU, bitsandbytes' Linear4bit experts and router, bf16 compute under bf16
    autocast, fp32 input: the Mixtral baseline rows' blocks after TRL's cast): what
    transformers 4.48.1's expert loop saves equals MoE.saved, byte for byte. (The rows'
    remaining under-count is not in this set: calibration/notes/fms.md.)"""
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    from ftmem.api import RunConfig
    from ftmem.methods import plan_method
    from ftmem.ops.context import BlockState, LayerContext
    from ftmem.ops.moe import MoE
    from tests.conftest import tiny
    from tests.saved_storages import saved_storages
    from tests.test_moe_linears import QLORA, SparseMoe4x

    def four_bit(lin):
        m = bnb.nn.Linear4bit(
            lin.in_features, lin.out_features, bias=False, compute_dtype=torch.bfloat16
        )
        w = lin.weight.data.to(torch.bfloat16)
        # (quantised as it moves to a device: Params4bit.to)
        m.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4").to("cpu")
        return m

    arch = tiny("mixtral")
    torch.manual_seed(0)
    block = SparseMoe4x(arch.hidden_size, arch.intermediate_size, arch.num_experts, 2)
    for expert in block.experts:
        expert.w1, expert.w2, expert.w3 = (
            four_bit(expert.w1),
            four_bit(expert.w2),
            four_bit(expert.w3),
        )
    block.gate = four_bit(block.gate)
    block.requires_grad_(False)
    b, s = 2, 48
    x = torch.randn(b, s, arch.hidden_size, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16):
        measured = sum(saved_storages(lambda: block(x), block.parameters()))
    run = RunConfig(
        **QLORA,
        precision="bf16-mixed",
        transformers_version="4.48.1",
        batch_size=b,
        seq_len=s,
        trl_bf16_cast=True,
    )
    ctx = LayerContext(arch, run, plan_method(arch, run), b * s)
    state = BlockState(input_requires_grad=True, weights_trainable=False, adapted=frozenset())
    predicted = sum(item.nbytes for item in MoE.saved(ctx, state, x_grad=True))
    assert predicted == measured, (predicted, measured)
