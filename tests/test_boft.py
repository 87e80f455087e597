"""peft's BOFT: what trains, where its permutation buffers live, how it is read and
refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B;
memory (saved tensors, the rotation build in forward, the backward) against measurement
in tests/accuracy (cases ``method=boft``); the sizes at real scale here by hand.
"""

from __future__ import annotations

import warnings
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


def _one_linear(torch, peft, base_dtype, autocast: bool, in_grad: bool = True):
    """One peft BOFT linear (in 512, out 256, blocks of 32, fp32 adapters, T = 128) on the
    live-storage tracker, under CPU bf16 autocast or not: (kept, forward peak beyond the
    kept, backward peak beyond what was live), the output excluded from the kept."""
    from ftmem.measure.tracker import LiveBytesTracker

    n, o, T = 512, 256, 128
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    config = peft.BOFTConfig(boft_block_size=32, target_modules=["lin"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base.to(base_dtype), config, autocast_adapter_dtype=True)
    x = torch.randn(2, T // 2, n, dtype=base_dtype, requires_grad=in_grad)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = model(x)
        kept = tracker.current - start - y.numel() * y.element_size()
        forward = tracker.peak - start - kept
        tracker.peak = before = tracker.current
        y.sum().backward()
    return kept, forward, tracker.peak - before


def test_one_boft_linear_under_autocast_matches_its_measurement() -> None:
    """A bf16 base (HF Trainer's bf16=True on a bf16 model): autocast changes nothing,
    every matmul's operands are bf16 already and the solve and block_diag are in no CUDA
    list. An fp32 base (bf16-mixed), with S = 512² bytes: kept the solve's fp32 LU,
    pivots and result (as without autocast), 16-bit casts of the identity, of the
    permutation (twice: two bmm's, no cache for a non-leaf) and of R (2 S each), of x
    (T · 512 · 2) and of the frozen weight (256 · 512 · 2), the 16-bit frozen output,
    boft_s's fp32 ones and scale; the forward ends with the fp32 block diagonal, the
    16-bit product, R copied back to fp32, x @ R and the fp32 scaled output beside them
    (11 S); the backward peaks at R's gradient cast to fp32 beside x's fp32 gradient, the
    frozen matmul's kept and x's and R's casts freed (BOFT.backward_moment)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    assert _one_linear(torch, peft, torch.bfloat16, True) == _one_linear(
        torch, peft, torch.bfloat16, False
    )
    n, o, T, S = 512, 256, 128, 512 * 512
    solve = 3 * 16 * 32 * 32 * 4 + 16 * 32 * 4
    kept = solve + 3 * S * 2 + 2 * S + T * n * 2 + o * n * 2 + T * o * 2 + o * 4 + o * 4
    assert _one_linear(torch, peft, torch.float32, True) == (
        kept,
        S * (4 + 2 + 4) + T * n * 2 + T * o * 4,
        T * n * 4 + S * 4 - o * n * 2 - T * o * 2 - T * n * 2 + 8,  # (+ the sum's gradient)
    )
    without_r = _one_linear(torch, peft, torch.float32, True, in_grad=False)[0]
    assert without_r == kept - S * 2


def test_autocast_on_a_bf16_model_is_estimated_as_without() -> None:
    """BOFT under autocast was refused (RunConfig's NO_AUTOCAST). On a bf16 model it is
    estimated as without autocast (measured alike, above); over fp32 weights it keeps the
    16-bit casts instead."""
    plain = estimate("llama-3.2-3b", method="boft").memory
    cast = estimate("llama-3.2-3b", method="boft", autocast=True).memory
    assert (cast.activations_bytes, cast.peak_allocated_bytes) == (
        plain.activations_bytes,
        plain.peak_allocated_bytes,
    )
    assert estimate("llama-3.2-3b", method="boft", precision="bf16-mixed").memory.activations_bytes


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "boft", "--boft-block-size", "0"], "--boft-block-size: Input should be"),
        (["--method", "lora", "--boft-block-size", "4"], "--boft-block-size only applies to boft"),
        (["--method", "boft", "--boft-targets", " , "], "--boft-targets is empty"),
        (["--method", "boft", "--boft-targets", "zz"], "BOFT target 'zz' matches no linear"),
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
