"""The op registry (ftmem.ops.registry): one class per op, a second registration an
error, and the ops' parameters covering the model's exactly (issue 15)."""

from __future__ import annotations

import pytest

from ftmem.arch import layout
from ftmem.ops import registry
from ftmem.presets import model_presets
from tests.conftest import TINY, TINY_SEQ2SEQ, tiny

# the ops the issue names, and the adapters that wrap the linear op
EXPECTED = {
    "attention",
    "biased_attention",
    "dropout",
    "embedding",
    "gated_deltanet",
    "linear",
    "latent_attention",
    "loss",
    "mlp",
    "moe",
    "router_aux_loss",
    "norm",
    "output_gate",
    "per_layer_input",
    "qk_norm",
    "t5_feed_forward",
    "t5_norm",
    "adalora",
    "bottleneck",
    "dora",
    "ia3",
    "llama_adapter",
    "adaption_prompt",
    "loha",
    "lokr",
    "miss",
    "shira",
    "c3a",
    "road",
    "boft",
    "oft",
    "hira",
    "psoft",
    "hra",
    "beft",
    "glora",
    "peanut",
    "osf",
    "supertuning",
    "lora",
    "head_lora",
    "prefix_tuning",
    "prompt_encoder",
    "vera",
    "randlora",
    "vblora",
    "tinylora",
    "adamss",
    "unilora",
    "lily",
}


def test_every_op_is_registered_once_by_name():
    assert set(registry.names()) == EXPECTED
    for name in EXPECTED:
        assert registry.get(name).__module__.startswith(("ftmem.ops.", "ftmem.adapters."))


def test_a_second_registration_of_an_op_is_an_error():
    registry.names()  # every op module loaded
    with pytest.raises(RuntimeError, match="'norm' is registered twice"):

        @registry.register("norm")
        class AnotherNorm:
            pass

    assert registry.get("norm").__name__ == "Norm"  # the first one stays


def test_an_unknown_op_is_a_key_error():
    with pytest.raises(KeyError):
        registry.get("convolution")


def _owned(arch):
    return [p for name in registry.names() for p in _parameters(registry.get(name), arch)]


def _parameters(op, arch):
    return op.parameters(arch) if hasattr(op, "parameters") else ()


@pytest.mark.parametrize("family", sorted(TINY) + sorted(TINY_SEQ2SEQ))
def test_each_parameter_has_exactly_one_op(family):
    arch = tiny(family)
    lay = layout(arch)
    owned = sorted(p.name for p in _owned(arch))
    assert owned == sorted(p.name for p in (*lay.block, *lay.outer))


@pytest.mark.parametrize(
    "arch",
    [a for a in model_presets().values() if a.published_params],
    ids=lambda a: a.name,
)
def test_the_ops_parameters_add_up_to_the_published_count(arch):
    """Block parameters once per layer, the rest once: the model card's number (an
    image-text model's: with its tower, projector and the layers it adds to the language
    model, ftmem.vision)."""
    from ftmem.vision import projector_count, text_extras_count, tower_count

    lay = layout(arch)
    block = {p.name for p in lay.block}
    total = sum(p.numel * (arch.num_layers if p.name in block else 1) for p in _owned(arch))
    if (v := arch.vision) is not None:
        total += tower_count(v) + projector_count(v, arch.hidden_size)
        total += text_extras_count(v, arch.hidden_size)
    assert total == arch.published_params
