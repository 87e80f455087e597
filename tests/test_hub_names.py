"""Hub ids offline: re-uploads and quantised variants of a preset's repository are
matched to the preset, and what their name says of the weights is taken (issue 17)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ftmem.api import estimate
from ftmem.cli import app
from ftmem.errors import ConfigError
from ftmem.hub_names import model_name, reupload_of
from ftmem.presets import get_model
from ftmem.sources import resolve_model
from tests.conftest import hub_cache_with
from tests.test_sources import LLAMA_CFG

runner = CliRunner()


@pytest.mark.parametrize(
    ("repo_id", "name", "quant"),
    [
        ("NousResearch/Llama-2-7b-hf", "llama-2-7b", None),
        ("TheBloke/Llama-2-7B-Chat-GPTQ", "llama-2-7b-chat", "int4"),
        ("unsloth/llama-3-8b-Instruct-bnb-4bit", "llama-3-8b-instruct", "nf4"),
        ("meta-llama/Meta-Llama-3-8B", "llama-3-8b", None),
        ("TheBloke/Mistral-7B-Instruct-v0.1-AWQ", "mistral-7b-instruct-v0.1", "int4"),
        ("unsloth/Qwen2.5-7B-Instruct-unsloth-bnb-4bit", "qwen2.5-7b-instruct", "nf4"),
        ("someone/phi-2_fp16", "phi-2", None),
    ],
)
def test_the_uploaders_suffixes_come_off(repo_id, name, quant):
    got, base = model_name(repo_id)
    assert got == name
    assert (base.quant if base else None) == quant


@pytest.mark.parametrize(
    ("repo_id", "preset"),
    [
        ("NousResearch/Llama-2-7b-hf", "llama2-7b"),
        ("TheBloke/Llama-2-7B-Chat-GPTQ", "llama2-7b"),
        ("unsloth/llama-3-8b-Instruct-bnb-4bit", "llama3-8b"),
        ("TheBloke/Mistral-7B-Instruct-v0.1-AWQ", "mistral-7b"),
        ("unsloth/Qwen2.5-7B-Instruct-bnb-4bit", "qwen2.5-7b"),
        ("unsloth/gemma-2-9b-it-bnb-4bit", "gemma2-9b"),
        ("unsloth/Qwen3-1.7B-unsloth-bnb-4bit", "qwen3-1.7b"),
        ("unsloth/mistral-7b-v0.3", "mistral-7b-v0.3"),  # its own preset: a larger vocabulary
    ],
)
def test_a_reupload_is_its_preset(repo_id, preset):
    found = reupload_of(repo_id)
    assert found is not None and found.preset_id == preset
    assert resolve_model(repo_id) == get_model(preset)


@pytest.mark.parametrize(
    "repo_id",
    [
        "unsloth/Phi-3.5-MoE-instruct",  # no preset of it (phi3.5-mini is another model)
        "someone/llama-2-7b-longlora-32k",  # a changed model, not a re-upload
        "acme/not-a-model",
    ],
)
def test_other_names_are_not_guessed(repo_id):
    assert reupload_of(repo_id) is None
    with pytest.raises(ConfigError, match="not a preset"):
        resolve_model(repo_id)


def test_the_estimate_says_what_it_took(tmp_path):
    est = estimate("TheBloke/Llama-2-7B-Chat-GPTQ", method="lora", precision="bf16")
    want = estimate("llama2-7b", method="qlora", quant="int4", precision="bf16")
    assert est.memory == want.memory
    notes = " ".join(est.notes)
    assert "estimated as the preset llama2-7b (meta-llama/Llama-2-7b-chat-hf)" in notes
    assert "its repository's name: the base is GPTQ 4-bit" in notes


def test_the_cli_takes_a_reupload_offline():
    res = runner.invoke(app, ["estimate", "NousResearch/Llama-2-7b-hf", "--format", "json"])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["model"]["name"] == get_model("llama2-7b").name
    assert any("re-upload" in n for n in data["notes"])


def test_a_cached_config_wins_over_the_name(tmp_path, monkeypatch):
    """In the local cache, the repository's own config.json is read, not the preset."""
    pytest.importorskip("huggingface_hub")
    hub_cache_with(tmp_path, monkeypatch, "NousResearch/Llama-2-7b-hf", LLAMA_CFG)
    assert resolve_model("NousResearch/Llama-2-7b-hf").hidden_size == LLAMA_CFG["hidden_size"]
