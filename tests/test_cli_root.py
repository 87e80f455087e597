"""`ftmem` with nothing after it prints its help and succeeds: asking for nothing is not
a mistake to report (it printed the help and then "Error: ." with exit 2)."""

from __future__ import annotations

import pytest

from ftmem.cli import main


def test_no_arguments_prints_the_help_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0
    assert err == ""
    for command in ("estimate", "plan", "serve", "measure", "gpus"):  # a few of the commands
        assert command in out
