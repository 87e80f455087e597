"""Several wrong settings at once: one sentence names each (up to five, then a count),
so that a command line is fixed in one go rather than one run per mistake."""

from __future__ import annotations

import pytest

import ftmem
from ftmem.cli import main
from ftmem.errors import InvalidInputError


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == ""
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize(
    ("argv", "flags"),
    [
        (["estimate", "gpt2", "--lora-r", "0", "--seq-len", "0"], ["--lora-r", "--seq-len"]),
        (["estimate", "gpt2", "--batch-size", "0", "--gpus", "0"], ["--batch-size", "--gpus"]),
        (["serve", "gpt2", "--sequences", "0", "--context", "0"], ["--sequences", "--context"]),
        (
            ["estimate", "gpt2", "--seq-len", "0", "--grad-accum", "0", "--tp", "0"],
            ["--seq-len", "--grad-accum", "--tp"],
        ),
    ],
)
def test_each_wrong_setting_is_named(argv, flags, capsys):
    err = _error(argv, capsys)
    assert err.startswith(f"Error: {len(flags)} problems: "), err
    for flag in flags:
        assert f"{flag}: " in err and "(got 0)" in err, (flag, err)
    assert err.count("(got 0)") == len(flags)


def test_one_wrong_setting_is_its_own_sentence(capsys):
    err = _error(["estimate", "gpt2", "--seq-len", "0"], capsys)
    assert err == "Error: --seq-len: Input should be greater than 0 (got 0)."


def test_past_five_the_rest_are_counted(capsys):
    wrong = ["--batch-size", "--seq-len", "--grad-accum", "--lora-r", "--galore-rank"]
    wrong += ["--adapter-size", "--virtual-tokens"]
    err = _error(["estimate", "gpt2", *(x for flag in wrong for x in (flag, "0"))], capsys)
    assert err.startswith("Error: 7 problems: ")
    assert err.count("(got 0)") == 5
    assert err.endswith("; and 2 more.")


def test_the_python_api_lists_them_too():
    with pytest.raises(InvalidInputError) as info:
        ftmem.estimate("gpt2", seq_len=0, gpus=0)
    assert info.value.problems == [  # type: ignore[attr-defined]
        "--seq-len: Input should be greater than 0 (got 0)",
        "--gpus: Input should be greater than 0 (got 0)",
    ]
