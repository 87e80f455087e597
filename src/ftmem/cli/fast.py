"""The common ``ftmem estimate`` calls, parsed and run without typer.

Loading typer and building the click command with its ~100 options was a fifth of the
CPU time of ``ftmem estimate MODEL --method M --gpu G`` (issue 19, benchmarks/bench_cli.py).
:func:`parse_estimate` reads such a command line from the same option records typer is
given (:mod:`ftmem.cli.option_specs`) and :func:`run_estimate` runs the command's own
code (:func:`ftmem.cli.estimating.estimate_and_print`) under the same streams and error
handler as :func:`ftmem.cli.root.main`, so both print the same bytes and exit alike.

The parser only accepts what it reads exactly as typer would; for anything else it
returns None and the typer app runs the command instead: help, a value typer would
refuse or convert (an unknown choice, ``4.0`` or ``-1`` for a count, a float), an option
given twice, ``--name=value``, ``--``, an unknown flag, a missing or second model, the
options that read files or need typer's context (``--from``, ``--launcher``, ``--emit``,
``--emit-to``, ``--traced``), shell completion, text that is not UTF-8. The table of
flags is checked against typer's own command in tests/test_cli_fast.py.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin

from ftmem.cli.option_specs import DISTILL, FROM, GPU, RUN, SPREAD, EstimateFormat, OptionSpec
from ftmem.units import UnitSystem

ESTIMATE_GROUPS = (FROM, RUN, GPU, SPREAD, DISTILL)
"""The option groups of ``ftmem estimate``, in the order of its signature
(ftmem.cli.estimate: ``@with_options(FROM, RUN, GPU, SPREAD, DISTILL)``)."""

NOT_FAST = frozenset({"from_config", "launcher"})
"""Options left to typer: a training config's settings are told from flags by typer's
context (ftmem.cli.settings); so are ``--framework trl``'s defaults."""

# `ftmem estimate`'s own options that the fast path reads (ftmem.cli.estimate): name,
# default; the others (--emit, --emit-to, --traced) go through typer
OWN_DEFAULTS: dict[str, Any] = {
    "output_format": "table",
    "units": "GiB",
    "check": False,
    "quiet": False,
    "fewest_gpus": False,
}

_COUNT = re.compile(r"0|[1-9][0-9]{0,17}")  # what typer's int reads back unchanged
_ABSENT = object()
Reader = Callable[[str], Any]  # the value of a flag's argument, or _ABSENT: not ours


class EstimateRequest(NamedTuple):
    """A parsed ``ftmem estimate``: the arguments of ``estimate_and_print``."""

    model: str
    settings: dict[str, Any]
    own: dict[str, Any]


def _choice(choices: tuple[str, ...]) -> Reader:
    return lambda text: text if text in choices else _ABSENT


def _count(text: str) -> Any:
    return int(text) if _COUNT.fullmatch(text) else _ABSENT


def _text(text: str) -> Any:
    return text if text and not text.startswith("-") else _ABSENT


def _reader(kind: Any) -> Reader | None:
    """How the fast path reads a value of typer type ``kind`` (None: it does not)."""
    if get_origin(kind) is Union:  # Optional[X]: None is the default, never typed
        kind = next(a for a in get_args(kind) if a is not type(None))
    if get_origin(kind) is Literal:
        return _choice(get_args(kind))
    return {int: _count, str: _text}.get(kind)


def _spec_flags(spec: OptionSpec) -> dict[str, tuple[str, Any]]:
    """``--flag`` -> (name, reader or the bool it sets), as typer declares the option:
    a bool's declarations name its on and off flags; another option without
    declarations is ``--name-with-dashes`` (typer.main, get_click_param)."""
    kind = spec.kind
    if get_origin(kind) is Union:
        kind = next(a for a in get_args(kind) if a is not type(None))
    if kind is bool:
        flags: dict[str, tuple[str, Any]] = {}
        for decl in spec.decls:
            on, _, off = decl.partition("/")
            flags[on] = (spec.name, True)
            if off:
                flags[off] = (spec.name, False)
        return flags
    reader = _reader(kind)
    if reader is None:  # a float: typer's reading of "1e3", "nan", "inf" is its own
        return {}
    decls = spec.decls or ("--" + spec.name.replace("_", "-"),)
    return {decl: (spec.name, reader) for decl in decls}


def _flags() -> dict[str, tuple[str, Any]]:
    flags: dict[str, tuple[str, Any]] = {
        "--format": ("output_format", _choice(get_args(EstimateFormat))),
        "--units": ("units", _choice(get_args(UnitSystem))),
        "--check": ("check", True),
        "--quiet": ("quiet", True),
        "-q": ("quiet", True),
        "--fewest-gpus": ("fewest_gpus", True),
    }
    for group in ESTIMATE_GROUPS:
        for spec in group:
            if spec.name not in NOT_FAST:
                flags.update(_spec_flags(spec))
    return flags


def _utf8(text: str) -> bool:
    """Whether ``text`` is valid Unicode text (argv bytes that are not UTF-8 reach
    Python as lone surrogates, which typer's coercion refuses)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _completing() -> bool:
    """Whether a shell is asking for completions (click reads ``_<PROG>_COMPLETE``)."""
    return any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ)


def parse_estimate(args: list[str]) -> EstimateRequest | None:
    """``args`` (``["estimate", ...]``) as the fast path runs them, or None where the
    typer app must (see the module's docstring)."""
    if args[:1] != ["estimate"] or _completing():
        return None
    if not all(isinstance(a, str) and _utf8(a) for a in args):  # main([...]) from a program
        return None
    flags = _flags()
    given: dict[str, Any] = {}
    model = None
    at = 1
    while at < len(args):
        token = args[at]
        if not token.startswith("-"):
            if model is not None:  # a second model: typer's "unexpected extra argument"
                return None
            model, at = token, at + 1
            continue
        flag = flags.get(token)
        if flag is None or flag[0] in given:  # unknown, --name=value, or given twice
            return None
        name, action = flag
        if isinstance(action, bool):
            given[name], at = action, at + 1
            continue
        value = action(args[at + 1]) if at + 1 < len(args) else _ABSENT
        if value is _ABSENT:
            return None
        given[name], at = value, at + 2
    if model is None or given.get("framework") == "trl":  # (TRL's defaults: see NOT_FAST)
        return None
    settings = {
        spec.name: given.get(spec.name, spec.default) for group in ESTIMATE_GROUPS for spec in group
    }
    own = {name: given.get(name, default) for name, default in OWN_DEFAULTS.items()}
    return EstimateRequest(model, settings, own)


def run_estimate(request: EstimateRequest) -> int:
    """Run a parsed ``ftmem estimate`` as :func:`ftmem.cli.root.main` runs the command:
    the same streams, collector pause, error handler (the command's, then the entry
    point's around the final flush); its exit code."""
    from ftmem.cli.errors import exit_code
    from ftmem.cli.estimating import estimate_and_print
    from ftmem.cli.terminal import cli_streams
    from ftmem.dataclass_code import cached_dataclass_code
    from ftmem.paused_gc import paused_gc
    from ftmem.preset_values import stored_presets

    code: int | None
    with cli_streams(), paused_gc(), cached_dataclass_code(), stored_presets():
        try:
            try:
                code = estimate_and_print(
                    None,
                    request.model,
                    dict(request.settings),
                    emit=None,
                    emit_to=None,
                    **request.own,
                )
            except (Exception, KeyboardInterrupt) as exc:  # ftmem.cli.root._Commands.invoke
                code = exit_code(exc)
                if code is None:
                    raise
            sys.stdout.flush()  # a full disk fails here, not at exit
        except (Exception, KeyboardInterrupt) as exc:  # ftmem.cli.root.main
            code = exit_code(exc)
            if code is None:
                raise
    return code
