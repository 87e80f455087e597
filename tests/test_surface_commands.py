"""Property test over every command's options, read from the commands themselves (click's
parameters, so a new option is crossed without editing this file): one to four options,
each with a value of its type (a choice, an int, a float, a size, a flag) or any other
text, on a model or any other name. Each run keeps the CLI's contract
(tests/surface_contract.py); ``measure`` is stopped where the step would start, after
everything it parses and checks."""

from __future__ import annotations

import functools
import types
import typing
from pathlib import Path
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.surface_contract import FEW, SCALE, judged
from tests.test_option_space import _command

BUDGETS = str(Path(__file__).resolve().parents[1] / "docs" / "examples" / "budgets.yaml")
COMMANDS = ["estimate", "serve", "plan", "max", "compare", "compare-methods", "explain",
            "merge", "models", "gpus", "check", "measure"]  # fmt: skip
# options that write files, start servers or read the terminal: their own tests
SKIP = {"--help", "--plot", "--snapshot", "--json", "--junit", "--emit-to", "--output"}
OUTCOMES: list[tuple[str, int]] = []  # for a look at what was answered
MODELS = st.one_of(
    st.sampled_from(["gpt2", "t5-small", "mixtral-8x7b", "qwen2.5-0.5b", "llama2-7b"]),
    st.sampled_from(["gpt2", "llama3-8b", "nope", "", "a" * 300, "acme/x", "./nothing"]),
)

junk = st.one_of(
    st.sampled_from(["", "-1", "0", "nan", "inf", "1e400", "9" * 400, "2**63", "auto", "x,y",
                     "\x1b[2J", "é", "--", "-", "0.5", "1,", ",", "(.*.*)*z", "10%", "1TiB"]),
    st.text(max_size=6),
)  # fmt: skip
ints = st.one_of(
    st.integers(-2, 4096).map(str), st.sampled_from(["2147483648", "9223372036854775808"])
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(0, 64).map(str)
)


@functools.cache
def _params(command: str, kind: str) -> list:
    """The command's options (or arguments), typer's parameters in click's clothes."""
    cmd = _command().commands[command]
    return [
        p
        for p in cmd.params
        if p.param_type_name == kind and not (SKIP & set(p.opts)) and not p.hidden
    ]


def _annotation(option) -> object:
    """The option's Python type, Optional removed."""
    annotation = option.type_descriptor.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _value(option, draw) -> list[str]:
    """The option as a user types it: a flag, or its name with a value."""
    if option.is_flag:
        return [draw(st.sampled_from([*option.opts, *option.secondary_opts]))]
    annotation = _annotation(option)
    if typing.get_origin(annotation) is typing.Literal:
        typed = st.sampled_from([str(c) for c in typing.get_args(annotation)])
    elif annotation is int:
        typed = ints
    elif annotation is float:
        typed = floats
    else:
        typed = junk
    return [option.opts[0], draw(st.one_of(typed, typed, typed, junk))]


@settings(parent=FEW, max_examples=round(250 * SCALE))
@given(data=st.data(), command=st.sampled_from(COMMANDS))
def test_any_options_of_any_command_keep_the_contract(data, command):
    options = _params(command, "option")
    chosen = (
        data.draw(st.lists(st.sampled_from(options), max_size=4, unique_by=id)) if options else []
    )
    argv = [command]
    for _ in _params(command, "argument"):
        argv.append(BUDGETS if command == "check" else data.draw(MODELS))
    for option in chosen:
        argv += _value(option, data.draw)
    with mock.patch("ftmem.cli.measure.measure_errors", _no_step):
        problem, code, _ = judged(argv)
    OUTCOMES.append((command, code))
    assert not problem, problem


def _no_step():
    """measure parsed and checked everything: the step would run now; stopped with an
    answer that passes as output of any format."""
    print("{}")
    raise SystemExit(0)
