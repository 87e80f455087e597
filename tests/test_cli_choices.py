"""Closed-choice options: typer shows their values in --help and refuses any other with
one sentence naming them all; the values the CLI spells out agree with the library's."""

from __future__ import annotations

import typing

import pytest

from ftmem.cli import main
from ftmem.cli.estimate import Emitter
from ftmem.cli.merge import MergeDtype
from ftmem.cli.search import SEARCHABLE, Searchable
from ftmem.cli.serve import KvDtype, WeightFormat
from ftmem.merge import MergeConfig
from ftmem.present.emit import EMITTERS
from ftmem.run import RunConfig
from ftmem.serve import KvDtype as ServeKvDtype
from ftmem.serve import WeightFormat as ServeWeightFormat


def test_spelled_out_choices_agree_with_the_library():
    # the CLI spells these out so as not to import their modules at start-up
    assert typing.get_args(Emitter) == EMITTERS
    assert typing.get_args(WeightFormat) == typing.get_args(ServeWeightFormat)
    assert typing.get_args(KvDtype) == typing.get_args(ServeKvDtype)
    assert typing.get_args(MergeDtype) == typing.get_args(
        MergeConfig.model_fields["dtype"].annotation
    )
    for flag in typing.get_args(Searchable):  # each searched flag names a run setting
        assert SEARCHABLE[flag] in RunConfig.model_fields


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


# (arguments, the wrong value, every value the option takes: written here, from --help's
# documentation of each option, not read from the code)
REFUSED = [
    (["estimate", "gpt2", "--format", "xml"], "xml", ["table", "json", "yaml", "markdown", "csv"]),
    (["plan", "gpt2", "--format", "csv"], "csv", ["table", "json"]),
    (["explain", "gpt2", "--format", "table"], "table", ["text", "markdown"]),
    (["models", "--units", "MB"], "MB", ["GiB", "GB"]),
    (["estimate", "gpt2", "--attn", "flash2"], "flash2", ["eager", "sdpa", "flash"]),
    (
        ["estimate", "gpt2", "--loss", "liger"],
        "liger",
        [
            "standard",
            "upcast-shifted",
            "shifted",
            "chunked",
            "linear-chunked",
            "fused",
            "logprob-tiles",
        ],
    ),
    (
        ["estimate", "gpt2", "--objective", "ppo"],
        "ppo",
        ["sft", "dpo", "ipo", "simpo", "orpo", "kto", "apo-zero-unpaired", "grpo"],
    ),
    (["estimate", "gpt2", "--offload-optimizer", "disk"], "disk", ["none", "cpu", "nvme"]),
    (["max", "gpt2", "--for", "rank"], "rank", ["batch-size", "seq-len", "target-len", "lora-r"]),
    (["measure", "gpt2", "--device", "tpu"], "tpu", ["cpu", "cuda"]),
    (["merge", "gpt2", "--dtype", "fp8"], "fp8", ["bf16", "fp16", "fp32"]),
    (["serve", "gpt2", "--kv-dtype", "int3"], "int3", ["bf16", "fp16", "fp32", "fp8"]),
    (
        ["estimate", "gpt2", "--gpus", "2", "--emit", "megatron"],
        "megatron",
        ["deepspeed", "accelerate", "fsdp", "colossalai"],
    ),
]


@pytest.mark.parametrize(("argv", "wrong", "allowed"), REFUSED, ids=lambda v: str(v))
def test_a_wrong_choice_is_one_sentence_naming_every_value(argv, wrong, allowed, capsys):
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    flag = argv[argv.index(wrong) - 1]
    listed = ", ".join(allowed[:-1]) + f" or {allowed[-1]}"
    assert err.startswith(f"Error: {flag} must be {listed}, not '{wrong}'."), err


@pytest.mark.parametrize(
    ("command", "flag", "values"),
    [
        ("estimate", "--format", "table|json|yaml|markdown|csv"),
        ("estimate", "--method", "full|freeze|partial"),
        ("serve", "--weights", "bf16|fp16|fp32|fp8|int8|nf4|fp4|int4|ternary"),
    ],
)
def test_help_shows_the_choices(command, flag, values, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # one line an option: the values unwrapped
    code, out, _ = _run([command, "--help"], capsys)
    assert code == 0
    line = next(line for line in out.splitlines() if f"{flag} " in line)
    assert values in line, line
