"""QLoRA on GPT-2 under autocast: a 4-bit c_fc answers in its input's dtype (fp32), so
the written-out tanh-GELU keeps its four T·f intermediates in fp32. Activations measured
35 % above the estimate before that was modelled (2026-11-29); they are now exact.

The weights are not exact here, which is why these runs are not rows of the matrix:
bitsandbytes casts a 4-bit linear's bias to its input's dtype at the first forward, and
attention's c_proj reads the 16-bit attention output, so its bias ends in 16 bits while
the estimate keeps the base dtype (fp32): 1.1 % of this tiny model's weights, a few
kilobytes per block at any size. Qwen2 under fp16-mixed shows the same (KNOWN_GAPS).
"""

from __future__ import annotations

import pytest

from tests.accuracy.cases import ACTIVATION_TOLERANCE, PEAK_TOLERANCE, Case
from tests.accuracy.test_accuracy import compare, error

BIAS_CAST_SLACK = 0.02  # the 16-bit c_proj biases (see above), measured 1.1 %


@pytest.mark.accuracy
@pytest.mark.parametrize("grad_ckpt", [False, True])
def test_gpt2_qlora_under_autocast(grad_ckpt):
    case = Case("gpt2", {"method": "qlora", "precision": "bf16-mixed", "grad_ckpt": grad_ckpt})
    r = compare(case)
    for key, tolerance in (
        ("activations", ACTIVATION_TOLERANCE),
        ("peak", PEAK_TOLERANCE),
        ("weights", BIAS_CAST_SLACK),
    ):
        err = error(r[key])
        assert abs(err) <= tolerance, f"{case.id}: {key} {err:+.1%}"
    for key in ("gradients", "optimizer_states"):
        assert r[key][0] == r[key][1], key


@pytest.mark.accuracy
def test_measured_step_excludes_the_weights_as_they_are_then(monkeypatch):
    """bitsandbytes casts a 4-bit linear's bias at the first forward and frees the old
    one, so weight pointers taken before the warm-up step go stale; an activation later
    allocated at a freed bias's address was then taken for a weight and left out (CI
    measured GPT-2 QLoRA bf16-mixed activations 10 % low, once in a while). The measured
    step must exclude exactly the weights that exist when it runs."""
    import ftmem.measure.step as step_module
    from ftmem.measure import measure
    from ftmem.measure.saved import weight_storage_ptrs

    built_models, excluded = [], []
    real_build, real_registry = step_module.build_model, step_module.SavedRegistry

    def build(*args, **kwargs):
        built = real_build(*args, **kwargs)
        built_models.append(built.model)
        return built

    class Registry(real_registry):
        def __init__(self, exclude_ptrs):
            excluded.append(set(exclude_ptrs))
            super().__init__(exclude_ptrs)

    monkeypatch.setattr(step_module, "build_model", build)
    monkeypatch.setattr(step_module, "SavedRegistry", Registry)
    case = Case("gpt2", {"method": "qlora", "precision": "bf16-mixed"})
    measure(case.arch(), case.run())
    (model,) = [m for m in built_models if next(m.parameters()).device.type != "meta"]
    assert excluded and excluded[-1] == weight_storage_ptrs(model)
