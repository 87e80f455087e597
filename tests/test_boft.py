"""peft's BOFT: what trains, where its permutation buffers live, how it is read and
refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B;
memory (saved tensors, the rotation build in forward, the backward) against measurement
in tests/accuracy (cases ``method=boft``); the sizes at real scale here by hand.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "boft"},
    {"method": "boft", "boft_targets": "all-linear", "boft_block_size": 8},
    {"method": "boft", "boft_targets": "attention", "boft_block_num": 4},
    {"method": "boft", "boft_targets": "k,o", "boft_block_size": 2, "adapter_dtype": "fp32"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/boft--llama-3.2-3B-default.json: ``"num_trainable_params":
    802816`` for boft_block_size 4, one butterfly factor, peft's default targets (q_proj,
    v_proj). By hand: boft_R is 1 × (3072 / 4) × 4 × 4 = 12,288 per linear (both read the
    3072-wide hidden state), boft_s one per output (q 3072, v 1024), in 28 blocks:
    28 · (2 · 12,288 + 3072 + 1024) = 802,816."""
    est = estimate("llama-3.2-3b", method="boft")
    assert est.model.n_trainable_params == 28 * (2 * 12_288 + 3072 + 1024) == 802_816


def test_permutation_buffers_stay_on_the_host_in_peft_s_benchmark() -> None:
    """peft registers boft_P (fp32, in × in) on the layer itself, which _replace_module
    does not move; HF Trainer's model.to(device) does, PEFT's method_comparison (loaded
    with device_map, never moved) does not. The weights differ by 28 blocks · 2 linears ·
    3072² · 4 bytes; the activations not at all (x is bf16: boft_P.to(x) copies either
    way)."""
    hf = estimate("llama-3.2-3b", method="boft", precision="bf16").memory
    mc = estimate("llama-3.2-3b", method="boft", precision="bf16", framework="peft-mc").memory
    assert hf.weights_bytes - mc.weights_bytes == 28 * 2 * 3072 * 3072 * 4
    assert hf.activations_bytes == mc.activations_bytes


def test_boft_keeps_dense_rotations_where_lora_keeps_a_cast_input() -> None:
    """At real size (Llama-3.2-3B, q and v, bf16 base, fp32 adapters, T = 512 tokens):
    LoRA keeps each adapted linear's input cast to fp32 (T × 3072 × 4, twice) and lora_A's
    output (T × r × 4, twice). BOFT keeps the bf16 input once (shared by q and v), per
    linear the identity, the permutation copy and the rotation (3072² × 2 each, the
    rotation not in the first block, whose input needs no gradient), the frozen output
    (T × out × 2), the Cayley solve's LU, pivots and result (768 blocks of 4 × 4: 3 ·
    768 · 16 · 4 + 768 · 4 · 4) and boft_s's ones and scale (out × (2 + 4))."""
    T, L, r, n = 512, 28, 8, 3072
    lora = estimate("llama-3.2-3b", method="lora", lora_r=r, seq_len=T).memory
    boft = estimate("llama-3.2-3b", method="boft", seq_len=T).memory
    square = n * n * 2
    per_linear = 2 * square + 3 * 768 * 16 * 4 + 768 * 4 * 4
    per_block = T * n * 2 + 2 * per_linear + T * (3072 + 1024) * 2 + (3072 + 1024) * 6
    expected_boft = L * per_block + (L - 1) * 2 * square
    expected_lora = L * 2 * (T * n * 4 + T * r * 4)
    assert boft.activations_bytes - lora.activations_bytes == expected_boft - expected_lora


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "boft", "--boft-block-size", "0"], "--boft-block-size: Input should be"),
        (["--method", "lora", "--boft-block-size", "4"], "--boft-block-size only applies to boft"),
        (["--method", "boft", "--boft-targets", " , "], "--boft-targets is empty"),
        (["--method", "boft", "--boft-targets", "zz"], "BOFT target 'zz' matches no linear"),
        (["--method", "boft", "--precision", "bf16-mixed"], "BOFT under autocast"),
        (["--method", "boft", "--adapter-dtype", "bf16"], "Cayley solve runs in fp32"),
        (
            ["--method", "boft", "--boft-block-size", "4", "--boft-block-num", "8"],
            "not both",
        ),
        (["--method", "boft", "--boft-block-size", "3"], "do not divide by --boft-block-size 3"),
        (["--method", "boft", "--framework", "litgpt"], "--framework litgpt has no --method boft"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_models_peft_cannot_wrap_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="does not wrap gpt2's transformers Conv1D"):
        estimate("gpt2", method="boft")


def test_resolved_run_reports_the_boft_settings() -> None:
    run = estimate("llama-3.2-3b", method="boft").run
    assert (run.boft_block_size, run.boft_block_num, run.boft_targets) == (4, None, "q,v")
    assert run.adapter_dtype == "fp32"
    assert run.adapted_modules == ["self_attn.q_proj", "self_attn.v_proj"]


def test_live_peft_boft_model_is_read() -> None:
    """A peft BOFT model handed to the live integration reads as --method boft with its
    block split and the modules peft wrapped; several butterfly factors are refused."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    config = peft.BOFTConfig(boft_block_size=0, boft_block_num=4, target_modules=["v_proj"])
    model = peft.get_peft_model(tiny_llama(), config)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["boft_block_num"], s["boft_targets"]) == ("boft", 4, "v_proj")
    assert "boft_block_size" not in s
    assert s["adapter_dtype"] == "fp32"
    model.peft_config["default"].boft_n_butterfly_factor = 2
    with pytest.raises(InvalidInputError, match="boft_n_butterfly_factor 2 is not modelled"):
        read_run(model, args, given={"seq_len": 16})


def test_permutation_buffers_stay_whole_on_every_rank() -> None:
    """boft_P is a buffer: DDP keeps the whole model on each rank and ZeRO-3 shards no
    buffer, so each rank holds all of them (fp32 4096² per adapted linear, 2 × 32 on
    Mistral-7B); the multi-GPU path dropped them (4 GiB less per GPU than one GPU)."""
    one = estimate("mistral-7b", method="boft").memory
    ddp = estimate("mistral-7b", method="boft", gpus=2, strategy="ddp").memory
    assert ddp.weights_bytes == one.weights_bytes
    # (in fp32: DeepSpeed's 16-bit modes cast BOFT's adapters, which is refused: engine_cast)
    zero3 = estimate("mistral-7b", method="boft", gpus=2, strategy="zero3", precision="fp32")
    assert zero3.parallel is not None
    assert zero3.parallel.weights_replicated_bytes >= 4096**2 * 4 * 2 * 32
