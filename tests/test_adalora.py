"""--method adalora: peft's AdaLoRA (src/peft/tuners/adalora) against peft itself.

The per-component bytes are checked against CPU measurements in the accuracy suite
(tests/accuracy/cases.py ``_adalora``); here: the trainable set against peft's own count
and the published MetaMathQA result, the rank allocator's state by its derivation, the
live reading of a peft AdaLoRA model, and the refusals.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from ftmem import estimate
from ftmem.cli import app
from ftmem.run import RunConfig
from tests.conftest import tiny

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

# Llama-3.2-3B (hidden 3072, 28 layers, 24 heads / 8 KV heads of 128): AdaLoRA at init_r 64
# on q (3072 -> 3072) and v (3072 -> 1024); huggingface/peft@5d602fdb
# method_comparison/MetaMathQA/results/adalora--llama-3.2-3B-rank32.json:
# "num_trainable_params": 18353664 (peft 0.19.2.dev0: ranknum frozen)
LAYERS, R = 28, 64
LORA_R64_QV = LAYERS * R * ((3072 + 3072) + (3072 + 1024))  # 18,350,080
LORA_E = LAYERS * 2 * R  # 3,584
PUBLISHED_TRAINABLE = 18_353_664
MC = dict(
    method="adalora",
    lora_r=R,
    adalora_target_r=32,
    lora_alpha=8,
    lora_targets="q,v",
    precision="bf16",
    adapter_dtype="fp32",
    batch_size=4,
    seq_len=768,
)


def test_published_trainable_count() -> None:
    assert LORA_R64_QV + LORA_E == PUBLISHED_TRAINABLE
    est = estimate("llama-3.2-3b", peft_version="0.19.2.dev0", **MC)
    assert est.model.n_trainable_params == PUBLISHED_TRAINABLE
    # peft >= 0.20 on a GPU: the 56 ranknum values train too (ftmem.versions)
    assert (
        estimate("llama-3.2-3b", **MC).model.n_trainable_params == PUBLISHED_TRAINABLE + 2 * LAYERS
    )


def test_allocator_state_is_three_tensors_per_adapter_tensor() -> None:
    """AdamW: 2 fp32 moments per value (its `step` stays on the host on a GPU: not fused);
    the rank allocator: ipt, exp_avg_ipt, exp_avg_unc per lora_A/E/B value, fp32."""
    est = estimate("llama-3.2-3b", peft_version="0.19.2.dev0", **MC)
    n = PUBLISHED_TRAINABLE
    assert est.memory.optimizer_states_bytes == 2 * 4 * n + 3 * 4 * n
    lora = estimate("llama-3.2-3b", **{**MC, "method": "lora", "adalora_target_r": None})
    assert lora.memory.optimizer_states_bytes == 2 * 4 * LORA_R64_QV


@pytest.mark.parametrize(
    ("settings", "ranknum_trains"),
    [({"precision": "bf16"}, True), ({"precision": "fp32"}, False)],
)
def test_trainable_count_matches_peft(settings: dict, ranknum_trains: bool) -> None:
    """peft 0.21.2 on the CPU: ranknum trains where the adapter was cast to the base's
    16-bit dtype, not over an fp32 base."""
    from ftmem.measure.build import build_model

    arch = tiny("llama")
    run = RunConfig(method="adalora", lora_r=6, device="cpu", **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(arch, run).model
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert any("ranknum" in n for n, _ in trained) == ranknum_trains
    est = estimate(arch, **run.model_dump(exclude_none=True))
    assert est.model.n_trainable_params == sum(p.numel() for _, p in trained)


def test_live_adalora_model_is_read() -> None:
    import transformers

    from ftmem.integrations.live import read_run

    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    config = peft.AdaLoraConfig(
        init_r=6, target_r=3, lora_alpha=8, total_step=10, target_modules=["q_proj", "v_proj"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(transformers.LlamaForCausalLM(cfg), config)
    args = SimpleNamespace(per_device_train_batch_size=1, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["lora_r"], s["adalora_target_r"]) == ("adalora", 6, 3)
    assert s["lora_targets"] == "q_proj,v_proj"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "adalora", "--lora-r", "8", "--adalora-target-r", "8"], "below the initial"),
        (["--method", "adalora", "--lora-r", "8", "--adalora-target-r", "12"], "below the initial"),
        (["--method", "lora", "--adalora-target-r", "4"], "only applies to adalora"),
        (["--method", "adalora", "--optimizer-in-backward"], "drop it"),
        (["--method", "adalora", "--framework", "torchtune"], "has no AdaLoRA"),
    ],
)
def test_bad_adalora_input_is_one_sentence_exit_2(args: list[str], message: str) -> None:
    res = CliRunner().invoke(app, ["estimate", "llama2-7b", *args], env={"COLUMNS": "120"})
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
