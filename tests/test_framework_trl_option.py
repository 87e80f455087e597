"""``--framework trl`` without a config file: the run as TRL's trainer for the objective
takes it when told only the model (``trl sft --model_name_or_path M``).

The truth each test holds to is a file TRL itself would take: a config that names the
model and nothing else, named as TRL's CLI docs name it (``sft_config.yaml``,
``dpo_config.yaml``: huggingface/trl docs/source/clis.md@f2cd57710ae3), read with
``--from``; the option must give the same run, with the command line's flags over it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ftmem
from ftmem.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def estimated(capsys, *args: str) -> dict:
    code, out, err = run(capsys, "estimate", *args, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def only_model(tmp_path: Path, trainer: str, model: str) -> str:
    path = tmp_path / f"{trainer}_config.yaml"
    path.write_text(f"model_name_or_path: {model}\n")
    return str(path)


@pytest.mark.parametrize(
    ("model", "trainer", "objective"),
    [
        ("llama2-7b", "sft", "sft"),
        ("mixtral-8x7b", "sft", "sft"),  # a MoE: TRL's router loss coefficient 0.001
        ("llama2-7b", "dpo", "dpo"),
        ("qwen2.5-7b", "kto", "kto"),
    ],
)
def test_the_option_is_a_trl_file_naming_only_the_model(
    capsys, tmp_path, model, trainer, objective
):
    given = estimated(capsys, model, "--framework", "trl", "--objective", objective)
    read = estimated(capsys, "--from", only_model(tmp_path, trainer, model))
    assert given["run"] == read["run"]
    assert given["memory"] == read["memory"]
    assert given["run"]["framework"] == "hf"  # TRL's trainers are HF Trainer's code path


def test_trl_defaults_are_the_ones_its_source_sets(capsys):
    # by hand from huggingface/trl@f2cd57710ae3 (tests/test_frameworks_trl.py lists the
    # releases): batch 8, gradient checkpointing on, bf16 autocast over fp32 weights,
    # max_length 1024, the fused LM head's tiles, packing off (padded to the longest)
    got = estimated(capsys, "mixtral-8x7b", "--framework", "trl", "--method", "lora")["run"]
    assert (got["batch_size"], got["seq_len"], got["grad_ckpt"]) == (8, 1024, True)
    assert (got["precision"], got["loss"]) == ("bf16-mixed", "logprob-tiles")
    assert (got["padding"], got["lengths"]) == ("longest", "padded")
    assert got["router_aux_loss"] is True


def test_the_command_line_wins_over_trl_defaults(capsys):
    got = estimated(
        capsys, "mixtral-8x7b", "--framework", "trl", "--method", "lora",
        "--batch-size", "2", "--seq-len", "4096", "--no-grad-ckpt", "--no-router-aux-loss",
        "--padding", "none",
    )["run"]  # fmt: skip
    assert (got["batch_size"], got["seq_len"], got["grad_ckpt"]) == (2, 4096, False)
    assert (got["router_aux_loss"], got["padding"]) == (False, "none")


def test_a_dense_model_gets_no_router_loss(capsys):
    assert "router_aux_loss" not in estimated(capsys, "llama2-7b", "--framework", "trl")["run"]


def test_the_api_takes_it_as_the_command_line_does(capsys):
    cli = estimated(capsys, "mixtral-8x7b", "--framework", "trl", "--method", "qlora")
    api = ftmem.estimate("mixtral-8x7b", framework="trl", method="qlora")
    assert json.loads(api.model_dump_json())["run"] == cli["run"]
    assert api.memory.total_bytes == cli["memory"]["total_bytes"]


def test_the_notes_say_whose_defaults(capsys):
    code, out, err = run(capsys, "estimate", "llama2-7b", "--framework", "trl")
    assert code == 0, err
    flat = " ".join(out.split())
    assert "TRL's SFTTrainer with its defaults where the command line is silent" in flat
    assert "trl defaults where the command line is silent: " in flat


def test_with_a_file_the_option_is_hf_trainers_path(capsys, tmp_path):
    # a file's own reader gives its settings; --framework trl only names the code path
    path = tmp_path / "axolotl.yaml"
    path.write_text(
        "base_model: llama2-7b\nadapter: lora\nmicro_batch_size: 2\nsequence_len: 512\n"
    )
    got = estimated(capsys, "--from", str(path), "--framework", "trl")["run"]
    assert (got["framework"], got["batch_size"], got["seq_len"]) == ("hf", 2, 512)


def test_without_a_model_it_says_so(capsys):
    code, out, err = run(capsys, "estimate", "--framework", "trl")
    assert (code, out) == (2, "")
    assert err.strip() == "Error: give a model (a preset id or config.json) for --framework trl."
