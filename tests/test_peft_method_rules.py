"""One rule for peft's adapters other than LoRA's (BOFT, OFT, MiSS, RoAd, VeRA,
FourierFT, HiRA, PSOFT, HRA, GraLoRA, DeLoRA, PVeRA, RandLoRA, VB-LoRA, SHiRA, WaveFT,
C3A, TinyLoRA, UniLoRA, Lily, BEFT, DeFT, GLoRA, Peanut, trainable tokens, OSF, the
adaption prompt, Cartridge, Super-Tuning, AdaMSS): where they are modelled, and the sentence
each refusal gives."""

from __future__ import annotations

import json

import pytest

from ftmem import estimate
from ftmem.run import NO_AUTOCAST
from tests.test_peft_methods import one_sentence

NEW_METHODS = {
    "boft": "BOFT",
    "oft": "OFT",
    "miss": "MiSS",
    "road": "RoAd",
    "vera": "VeRA",
    "fourierft": "FourierFT",
    "hira": "HiRA",
    "psoft": "PSOFT",
    "hra": "HRA",
    "gralora": "GraLoRA",
    "delora": "DeLoRA",
    "pvera": "PVeRA",
    "randlora": "RandLoRA",
    "vblora": "VB-LoRA",
    "shira": "SHiRA",
    "waveft": "WaveFT",
    "c3a": "C3A",
    "tinylora": "TinyLoRA",
    "unilora": "UniLoRA",
    "lily": "Lily",
    "beft": "BEFT",
    "deft": "DeFT",
    "glora": "GLoRA",
    "peanut": "Peanut",
    "trainable-tokens": "Trainable tokens",
    "osf": "OSF",
    "adaption-prompt": "Adaption prompt",
    "cartridge": "Cartridge",
    "supertuning": "Super-Tuning",
    "adamss": "AdaMSS",
}


def _refusal(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    return one_sentence(["estimate", *args], capsys)


# axolotl runs peft's adaption prompt as its own adapter: llama-adapter (frameworks.axolotl)
OFFERED = {("adaption-prompt", "axolotl")}


@pytest.mark.parametrize(
    ("method", "framework"),
    [
        (method, framework)
        for method in sorted(NEW_METHODS)
        for framework in ("axolotl", "llama-factory")
        if (method, framework) not in OFFERED
    ],
)
def test_hf_front_ends_are_refused_alike(
    method: str, framework: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # MiSS and RoAd were estimated under axolotl and LLaMA-Factory while their four
    # siblings were refused there; now the framework's own table says no such run exists
    err = _refusal(["llama-3.2-3b", "--method", method, "--framework", framework], capsys)
    assert f"--framework {framework} has no --method {method}" in err
    assert "or --framework hf" in err


def test_axolotl_offers_the_adaption_prompt(capsys: pytest.CaptureFixture[str]) -> None:
    """The one new method axolotl's config reaches (its adapter: llama-adapter): estimated,
    with peft's prompt of 10 tokens on each of Llama-3.2-3B's 28 blocks as what trains
    (28 × (10 × 3072 + 1) = 860,188: a prompt and a gate per block)."""
    from ftmem.cli import main

    argv = ["estimate", "llama-3.2-3b", "--method", "adaption-prompt", "--framework", "axolotl"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--format", "json"])
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None) and err == ""
    assert json.loads(out)["model"]["n_trainable_params"] == 28 * (10 * 3072 + 1)


@pytest.mark.parametrize("framework", ["litgpt", "torchtune", "fsdp_qlora", "unsloth"])
@pytest.mark.parametrize("method", sorted(NEW_METHODS))
def test_frameworks_of_their_own_say_why(
    method: str, framework: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # BOFT, OFT, VeRA and FourierFT said "not modelled" here, where no such run exists
    err = _refusal(["llama-3.2-3b", "--method", method, "--framework", framework], capsys)
    assert f"--framework {framework} has no --method {method} (" in err
    assert "so no such run exists" in err and "not modelled" not in err


@pytest.mark.parametrize("method", sorted(set(NEW_METHODS) & set(NO_AUTOCAST)))
@pytest.mark.parametrize("precision", [["fp16-mixed"], ["bf16", "--autocast"]])
def test_autocast_is_refused_alike(
    method: str, precision: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # --autocast on a 16-bit model is autocast too (it was estimated without it)
    err = _refusal(["llama-3.2-3b", "--method", method, "--precision", *precision], capsys)
    said = "under autocast (--precision bf16-mixed / fp16-mixed or --autocast)"
    assert f"{NEW_METHODS[method]} {said}" in err
    assert err.rstrip().endswith("use --precision bf16 or fp32 without --autocast.")


@pytest.mark.parametrize("method", sorted(NEW_METHODS))
def test_conv1d_is_refused_with_the_right_reason(
    method: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # peft wraps Conv1D for VeRA and FourierFT (not modelled), not for the other four
    if method == "adaption-prompt":  # (it wraps GPT-2's attention, no linear: measured)
        assert estimate("gpt2", method=method).model.n_trainable_params == 12 * (10 * 768 + 1)
        return
    if method == "cartridge":  # (a key/value prefix, no linear: measured on GPT-2)
        kv_all = 12 * 2 * 768  # 12 layers' keys and values
        assert estimate("gpt2", method=method).model.n_trainable_params == 19 * kv_all
        return
    err = _refusal(["gpt2", "--method", method], capsys)
    name = NEW_METHODS[method]
    if method == "trainable-tokens":  # (an embedding, no Conv1D: not measured on GPT-2)
        assert "trainable tokens on GPT-2 (124M), with learned positions" in err
        return
    conv1d_not_modelled = ("vera", "fourierft", "hira", "gralora", "pvera", "randlora", "vblora")
    if method in (*conv1d_not_modelled, "waveft", "tinylora", "unilora", "deft"):
        assert f"{name} on gpt2's transformers Conv1D layers is not modelled" in err
    else:
        assert f"peft's {name} does not wrap gpt2's transformers Conv1D layers" in err


@pytest.mark.parametrize("method", [*sorted(set(NEW_METHODS) - {"vera"}), "lokr"])
def test_a_framework_without_the_method_speaks_before_autocast(
    method: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # under Unsloth LoKr was told to drop autocast, and then that Unsloth has no LoKr
    args = ["--method", method, "--framework", "unsloth", "--precision", "bf16-mixed"]
    err = _refusal(["llama-3.2-3b", *args], capsys)
    assert f"--framework unsloth has no --method {method} (" in err
