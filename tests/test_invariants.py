"""Every preset × method × precision: integers, non-negative, parts sum to the whole."""

import pytest

from ftmem import estimate
from ftmem.arch import MLP_ROLES, layout
from ftmem.ops.gated_deltanet import MEASURED_METHODS
from ftmem.presets import get_model, model_presets

METHODS = [
    {"method": "full"},
    {"method": "freeze", "trainable_layers": 1},
    {"method": "lora"},
    {"method": "qlora"},
    {"method": "dora", "lora_targets": "all-linear"},
]


# LFM2's steps are refused in one sentence (ops.short_conv; tests/test_lfm2.py checks it)
ESTIMATED = sorted(n for n, a in model_presets().items() if not a.traits.short_conv_module)


@pytest.mark.parametrize("preset", ESTIMATED)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-mixed"])
def test_invariants(preset, precision):
    peaks = {}
    arch = get_model(preset)
    # LoRA on an MoE model's MLP modules is refused (peft moves it to the 3-D experts)
    mlp_modules = any(
        lin.is_module and set(lin.roles) & set(MLP_ROLES) for lin in layout(arch).linears
    )
    # quantised Qwen2-MoE and Hunyuan-V1-MoE are refused (bitsandbytes quantises the
    # shared expert's gate, the fp32 router too)
    quantisable = not (arch.traits.shared_expert_gate or arch.traits.quantisation_unmodelled)
    # Qwen3.5's layers: the measured methods only, and peft names no default LoRA targets
    # for them (ops.gated_deltanet.refuse_training)
    gated_deltanet = arch.linear_attention is not None
    for settings in METHODS:
        if gated_deltanet and settings["method"] not in MEASURED_METHODS:
            continue
        if gated_deltanet and settings["method"] in ("lora", "qlora"):
            settings = {**settings, "lora_targets": "q_proj,v_proj"}
        if settings["method"] == "qlora" and not quantisable:
            continue
        if arch.is_moe and mlp_modules and settings.get("lora_targets") == "all-linear":
            settings = {**settings, "lora_targets": "attention"}
        for ckpt in (False, True):
            est = estimate(preset, precision=precision, grad_ckpt=ckpt, seq_len=256, **settings)
            m = est.memory
            parts = m.model_dump()
            for key, value in parts.items():
                if key.endswith("_bytes"):
                    assert isinstance(value, int) and value >= 0, (preset, settings, key)
            assert m.at_peak.total == m.peak_allocated_bytes
            assert m.total_bytes == m.peak_allocated_bytes + m.overhead_bytes
            assert m.peak_allocated_bytes == max(
                m.phases.forward, m.phases.backward, m.phases.optimizer
            )
            assert est.model.n_trainable_params <= est.model.n_params + 10**9
            # compared in the bytes asked for: the caching allocator's whole blocks
            # (block_rounding) are not monotonic (a larger request may miss a cached
            # block whose unsplit rest a smaller one was counted with)
            peaks[(settings["method"], ckpt)] = m.peak_allocated_bytes - m.at_peak.block_rounding
    # checkpointing never costs memory; QLoRA never exceeds LoRA; LoRA never exceeds full
    for method in ("full", "lora", "qlora") if quantisable else ("full", "lora"):
        assert peaks[(method, True)] <= peaks[(method, False)] * 1.0001
    assert peaks.get(("qlora", False), 0) <= peaks[("lora", False)] <= peaks[("full", False)]
