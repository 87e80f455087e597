"""IA³, prompt tuning, P-tuning, prefix tuning and rsLoRA: what trains, checked twice.

1. On every tiny family, ftmem's trainable and total parameter counts equal peft's own
   ``get_nb_trainable_parameters`` (what ``print_trainable_parameters`` prints) for the
   same configuration.
2. At real size, against counts derived by hand here from the papers' definitions and
   the published model shapes.
Memory is checked against measurement in tests/accuracy (docs/accuracy.md).
"""

from __future__ import annotations

import warnings

import pytest

from ftmem import estimate, families
from ftmem.errors import InvalidInputError
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from tests.conftest import TINY, tiny

SETTINGS = [
    {"method": "ia3"},
    {"method": "ia3", "ia3_targets": "q,k,v,o,up,down"},
    {"method": "prompt-tuning", "virtual_tokens": 13},
    {"method": "p-tuning"},
    {"method": "p-tuning", "prompt_encoder": "lstm", "encoder_hidden": 40},
    {"method": "prefix-tuning"},
    {"method": "prefix-tuning", "prefix_projection": True, "encoder_hidden": 48},
    {"method": "rslora", "lora_r": 4},
]


def _applicable(family: str, settings: dict) -> bool:
    if (
        settings["method"] == "prefix-tuning"
        and not families.get(tiny(family).family).prefix_tuning
    ):
        return False  # refused (Falcon, DeepSeek): see test_prefix_tuning_refuses_falcon
    # fused or missing projections: an explicit o/up list only where the model has them
    fused_or_routed = family in ("gpt2", "falcon", "phi3") or tiny(family).is_moe
    return not (settings.get("ia3_targets") and fused_or_routed)


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    if not _applicable(family, settings):
        pytest.skip("not applicable to this family")
    assert_counts_match_peft(family, settings)


def one_sentence(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI on input it refuses: exit 2, nothing on stdout, one "Error: " line on
    stderr and no traceback. Returns that line."""
    from ftmem.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == ""
    assert err.startswith("Error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    return err


def assert_counts_match_peft(family: str, settings: dict) -> None:
    """ftmem's trainable and total counts are peft's own on the tiny model, bf16."""
    pytest.importorskip("peft")
    from ftmem.measure.build import build_model

    arch = tiny(family)
    run = RunConfig(precision="bf16", device="cpu", **settings)
    plan = plan_method(arch, run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(arch, run).model
    trainable, total = model.get_nb_trainable_parameters()
    assert (plan.n_trainable, plan.n_params) == (trainable, total)


def test_ia3_llama2_7b_by_hand() -> None:
    """IA³ (k, v, down): l_k and l_v of width 4096 (32 KV heads × 128), l_ff of width
    11008, in each of 32 blocks: 32 × (4096 + 4096 + 11008) = 614,400 (the figure peft
    prints for Llama-2-7B)."""
    assert estimate("llama2-7b", method="ia3").model.n_trainable_params == 614_400


def test_ia3_gqa_scales_the_narrow_kv_width() -> None:
    """Mistral-7B has 8 KV heads of 128: l_k, l_v are 1024 wide, l_ff 14336."""
    n = estimate("mistral-7b", method="ia3").model.n_trainable_params
    assert n == 32 * (1024 + 1024 + 14336)


def test_prompt_tuning_by_hand() -> None:
    """n virtual tokens × hidden: 20 × 4096 for Llama-2-7B, in fp32 (peft's default)."""
    est = estimate("llama2-7b", method="prompt-tuning")
    assert est.model.n_trainable_params == 20 * 4096
    assert est.memory.gradients_bytes == 20 * 4096 * 4


def test_p_tuning_mlp_by_hand() -> None:
    """Embedding n × h, then Linear(h, h) → ReLU → Linear(h, h) → ReLU → Linear(h, h),
    with biases (encoder width defaults to the hidden size)."""
    h, n = 4096, 20
    est = estimate("llama2-7b", method="p-tuning")
    assert est.model.n_trainable_params == n * h + 3 * (h * h + h)


def test_p_tuning_lstm_by_hand() -> None:
    """Two bidirectional LSTM layers of width H (4 gates: W_ih, W_hh, b_ih, b_hh per
    direction; the second layer reads 2H), then Linear(2H, 2H) and Linear(2H, h)."""
    h, n, H = 4096, 20, 512
    lstm = 2 * (4 * H * h + 4 * H * H + 8 * H) + 2 * (4 * H * 2 * H + 4 * H * H + 8 * H)
    head = (2 * H * 2 * H + 2 * H) + (2 * H * h + h)
    est = estimate("llama2-7b", method="p-tuning", prompt_encoder="lstm", encoder_hidden=H)
    assert est.model.n_trainable_params == n * h + lstm + head


def test_prefix_tuning_by_hand() -> None:
    """A key and a value prefix of n tokens per layer, each num_kv_heads × head_dim wide:
    Llama-2-7B 20 × 32 × 2 × 4096; Mistral-7B (8 KV heads of 128) 20 × 32 × 2 × 1024."""
    assert estimate("llama2-7b", method="prefix-tuning").model.n_trainable_params == (
        20 * 32 * 2 * 4096
    )
    assert estimate("mistral-7b", method="prefix-tuning").model.n_trainable_params == (
        20 * 32 * 2 * 1024
    )
    # with the reparametrisation: Embedding(n, d) → Linear(d, H) → tanh → Linear(H, 2Ld)
    d, H, L = 4096, 512, 32
    est = estimate("llama2-7b", method="prefix-tuning", prefix_projection=True, encoder_hidden=H)
    assert est.model.n_trainable_params == 20 * d + (d * H + H) + (H * 2 * L * d + 2 * L * d)


def test_prompt_tokens_lengthen_every_layer() -> None:
    """Virtual tokens cost what input tokens cost: 500 tokens + 20 virtual and 519 + 1
    put the same 520 positions through the blocks, the head and the loss; only the
    encoder's one int64 id per virtual token differs."""
    a = estimate("llama2-7b", method="prompt-tuning", seq_len=500, virtual_tokens=20)
    b = estimate("llama2-7b", method="prompt-tuning", seq_len=519, virtual_tokens=1)
    assert a.memory.activations_bytes - b.memory.activations_bytes == 19 * 8
    # and the 19 extra fp32 prompt vectors: weights and two Adam states; their gradient
    # is created last in backward, after the peak
    extra = 19 * 4096 * 4 * (1 + 2) + 19 * 8
    # in the bytes asked for (the allocator's block rounding is a part of its own)
    asked = [x.memory.peak_allocated_bytes - x.memory.at_peak.block_rounding for x in (a, b)]
    assert asked[0] - asked[1] == extra


def test_rslora_has_lora_memory() -> None:
    """rsLoRA only changes the scale (alpha/sqrt(r)): the same memory as LoRA."""
    lora = estimate("llama2-7b", method="lora", lora_r=64).memory
    rs = estimate("llama2-7b", method="rslora", lora_r=64).memory
    assert rs == lora


def test_prefix_tuning_refuses_falcon_and_checkpointing() -> None:
    with pytest.raises(InvalidInputError, match="prefix-tuning does not run on falcon"):
        estimate("falcon-7b", method="prefix-tuning")
    with pytest.raises(InvalidInputError, match="gradient checkpointing"):
        estimate("llama2-7b", method="prefix-tuning", grad_ckpt=True)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "lora", "virtual_tokens": 8}, "only applies to prompt-tuning"),
        ({"method": "ia3", "lora_r": 8}, "only applies to lora"),
        ({"method": "lora", "ia3_targets": "k,v"}, "only applies to ia3"),
        ({"method": "prompt-tuning", "prompt_encoder": "lstm"}, "only applies to p-tuning"),
        ({"method": "p-tuning", "prefix_projection": True}, "only applies to prefix-tuning"),
        ({"method": "prefix-tuning", "encoder_hidden": 64}, "with --prefix-projection only"),
        ({"method": "ia3", "ia3_targets": " , "}, "is empty"),
        ({"method": "ia3", "ia3_targets": "gate,nonsense"}, "matches no linear layer"),
    ],
)
def test_bad_combinations_are_one_sentence(settings: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        estimate("llama2-7b", **settings)
