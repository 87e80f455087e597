"""peft's GraLoRA (--method gralora): its sub-block factors, the k · r-wide A output it
keeps, how it is refused and read from a live model.

Counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny models and
against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B; the kept tensors
against a peft up/down pair; memory against measurement in tests/accuracy
(``_bdlora_mica``'s GraLoRA cases).
"""

from __future__ import annotations

import pytest

from ftmem import estimate
from ftmem.cli import main
from tests.test_bdlora_mica import _saved_by_two_linears
from tests.test_peft_methods import assert_counts_match_peft


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma2"])
@pytest.mark.parametrize("settings", [{}, {"lora_targets": "all-linear", "gralora_k": 4}])
def test_gralora_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, {"method": "gralora", "lora_r": 8, **settings})


def test_gralora_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04 method_comparison/MetaMathQA/results/
    gralora--llama-3.2-3B-rank32.json: ``num_trainable_params`` 9175040,
    ``num_total_params`` 3221924864 (experiments/gralora/llama-3.2-3B-rank32/
    adapter_config.json: r 32, alpha 64, gralora_k 2, hybrid_r 0, default targets q,v).
    By hand: A (2, 3072/2, 32) and B (2, 32, out/2) hold r · (in + out), LoRA's count:
    28 · 32 · (3072 + 3072 + 3072 + 1024) = 9,175,040."""
    e = estimate("llama-3.2-3b", method="gralora")  # peft's defaults: r 32, k 2
    assert e.model.n_trainable_params == 28 * 32 * (3 * 3072 + 1024) == 9_175_040
    assert e.model.n_params + e.model.n_trainable_params == 3_221_924_864


def test_gralora_keeps_a_k_times_wider_a_output() -> None:
    """Measured on a peft up/down pair (bf16 base, fp32 adapters, 10 tokens, r 4, k 2):
    GraLoRA keeps LoRA's input casts and, per linear, its regrouped A output of
    10 · 2 · 4 fp32 (320 bytes) where LoRA keeps 10 · 4 (160). ftmem: GraLoRA's activations
    are LoRA's plus T · (k − 1) · r · 4 per adapted linear."""
    pytest.importorskip("peft")
    from peft import GraloraConfig, LoraConfig

    targets = ["up_proj", "down_proj"]
    lora = _saved_by_two_linears(LoraConfig(r=4, target_modules=targets))
    gra = _saved_by_two_linears(GraloraConfig(r=4, gralora_k=2, target_modules=targets))
    assert lora.count((160, "torch.float32")) == 2 and gra.count((320, "torch.float32")) == 2
    assert [t for t in lora if t[0] != 160] == [t for t in gra if t[0] != 320]
    kw = {"precision": "bf16", "batch_size": 2, "seq_len": 100, "lora_r": 32}
    plain = estimate("llama-3.2-3b", method="lora", **kw).memory
    gralora = estimate("llama-3.2-3b", method="gralora", **kw).memory
    T, adapted = 200, 28 * 2
    assert gralora.activations_bytes - plain.activations_bytes == adapted * T * 32 * 4
    assert gralora.gradients_bytes == plain.gradients_bytes


@pytest.mark.parametrize("mode", [["--precision", "bf16-mixed"], ["--autocast"]])
def test_gralora_under_autocast_is_estimated(mode: list[str], capsys) -> None:
    """Refused until stop 47; now estimated (memory against measurement in tests/accuracy,
    _bdlora_mica's GraLoRA autocast cases)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "llama2-7b", "--method", "gralora", *mode, "--format", "json"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0
    assert '"peak_allocated_bytes"' in out and "Error" not in err


def test_gralora_answers_in_its_input_dtype_under_autocast() -> None:
    """Measured on one peft Linear (fp32 base and input, CPU autocast to bf16): GraLoRA's
    forward ends with ``result.to(previous_dtype)`` and answers in fp32, LoRA's in the
    base output's bf16. ftmem: on Llama's all-linear the gate and up outputs and the
    activation's (silu's input, the product's two operands: 3 · T · f per block) are fp32,
    2 bytes more each than LoRA's, and the A output is k · r wide (2 bytes, 7 adapted
    linears per block)."""
    torch = pytest.importorskip("torch")
    from peft import GraloraConfig, LoraConfig, get_peft_model

    outputs = []
    for config in (LoraConfig(r=4, target_modules=["0"]), GraloraConfig(r=4, target_modules=["0"])):
        model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 6)), config)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs.append(model(torch.randn(3, 8)).dtype)
    assert outputs == [torch.bfloat16, torch.float32]
    kw = {"precision": "bf16-mixed", "batch_size": 2, "seq_len": 100, "lora_r": 32}
    kw["lora_targets"] = "all-linear"
    plain = estimate("llama-3.2-3b", method="lora", **kw).memory
    gralora = estimate("llama-3.2-3b", method="gralora", **kw).memory
    T, f, layers, k = 200, 8192, 28, 2
    widened = layers * 3 * T * f * (4 - 2) + layers * 7 * T * (k - 1) * 32 * 2
    assert gralora.activations_bytes - plain.activations_bytes == widened


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--gralora-k", "3"], "--gralora-k 3 must divide the rank (32)"),
        (["--framework", "litgpt"], "litgpt"),
        (["--lora-targets", "q,v,lm_head"], "the gralora adapter on the head"),
        (["--lora-fa"], "--lora-fa only applies to lora and rslora"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "llama2-7b", "--method", "gralora", *args])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert out == ""
    assert err.startswith("Error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_live_gralora_model_is_read() -> None:
    """A peft GraLoRA model reads as --method gralora with its rank, k and wrapped
    modules; hybrid_r > 0 is refused in one sentence."""
    from types import SimpleNamespace

    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")

    from ftmem.errors import InvalidInputError
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    config = peft.GraloraConfig(r=4, gralora_k=2, target_modules=["q_proj", "v_proj"])
    s = read_run(peft.get_peft_model(tiny_llama(), config), args, given={"seq_len": 16}).settings
    assert (s["method"], s["lora_r"], s["gralora_k"]) == ("gralora", 4, 2)
    assert s["lora_targets"] == "q_proj,v_proj"
    hybrid = peft.GraloraConfig(r=4, hybrid_r=2, target_modules=["q_proj"])
    with pytest.raises(InvalidInputError, match="hybrid_r 2"):
        read_run(peft.get_peft_model(tiny_llama(), hybrid), args, given={"seq_len": 16})


@pytest.mark.parametrize(
    "args", [["--method", "gralora"], ["--method", "lora", "--lora-bd-blocks", "2"]]
)
def test_rank_search_is_refused(args: list[str], capsys) -> None:
    """``ftmem max --for lora-r`` tries ranks from 1; GraLoRA's and BD-LoRA's must be
    multiples of their blocks, so the search is refused in one sentence."""
    with pytest.raises(SystemExit) as exit_info:
        main(["max", "llama-3.2-3b", "--for", "lora-r", "--gpu", "a100-40gb", *args])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "multiple of their blocks" in err and len(err.strip().splitlines()) == 1
