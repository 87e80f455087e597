"""The root of the ``ftmem`` command: the typer app every command registers on, its
``--version``, and the entry point that runs one command under the error handler.
Importing it registers every command group (:data:`COMMAND_GROUPS`)."""

from __future__ import annotations

import copy
import sys
from contextlib import AbstractContextManager, nullcontext
from importlib import import_module
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ftmem.cli.errors import exit_code
from ftmem.cli.terminal import cli_streams, echo, quiet_libraries
from ftmem.dataclass_code import cached_dataclass_code
from ftmem.paused_gc import paused_gc
from ftmem.preset_values import stored_presets


class _Commands(TyperGroup):
    """Every command's errors go through :func:`~ftmem.cli.errors.exit_code`: a user's
    mistake (a wrong option value included: click parses a command's options in here)
    is one sentence on stderr and exit 2 (commands compute everything before they
    print, so stdout stays empty); a failure to print, its own code. Here, inside
    click's main, which would otherwise turn a broken pipe into exit 1, "does not fit",
    Ctrl-C into a silent 130 and a usage error into a boxed paragraph."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        for param in getattr(command, "params", ()):
            _coerce_none_first(param)
        return name, command, rest

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (Exception, KeyboardInterrupt) as exc:  # a bug re-raised, its traceback shown
            code = exit_code(exc)
            if code is None:
                raise
            raise typer.Exit(code) from None


class _NoneFirst:
    """Stands for a typer parameter's coercion until a value other than None reaches it.
    typer (0.2x: typer/core.py, ``_TyperParameter.process_value``) builds a pydantic
    TypeAdapter for every option of the command before coercing its value, although
    its coercion returns None (or ``()`` for a repeated option) for None without using
    it (typer/_coercion.py, ``RuntimeParam.coerce``): ``ftmem estimate`` built 92 of
    them, 64 for options left at None; now 28."""

    def __init__(self, param: Any) -> None:
        self.param = param

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None:  # what RuntimeParam.coerce returns for None
            return () if param.multiple or param.nargs == -1 else None
        from typer._coercion import build_runtime_param

        real = build_runtime_param(self.param.type_descriptor)
        self.param._runtime_param = real
        return real.coerce(value, param=param, ctx=ctx)


def _coerce_none_first(param: Any) -> None:
    """Give ``param`` a :class:`_NoneFirst` coercion where this typer coerces through a
    lazily built runtime parameter (typer 0.2x); other typers are left as they are."""
    if getattr(param, "_runtime_param", _ABSENT) is None and hasattr(param, "type_descriptor"):
        param._runtime_param = _NoneFirst(param)


_ABSENT = object()


app = typer.Typer(
    cls=_Commands,
    add_completion=True,
    no_args_is_help=True,
    help="How much GPU memory will this LLM finetuning run take? Estimate, check the fit.",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from ftmem import __version__

        echo(f"ftmem {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """How much GPU memory will this LLM finetuning run take? Estimate, check the fit."""


def _app_for(args: list[str]) -> typer.Typer:
    """The app with only the command being run: typer builds the click command of every
    registered one before it dispatches (15 commands, ~400 options: about a fifth of
    `ftmem estimate`'s start-up). Anything else (no command, --help, --version, an
    unknown name) gets the whole app, so listings and suggestions stay complete."""
    name = args[0] if args else ""
    for info in app.registered_commands:
        callback_name = info.callback.__name__ if info.callback else ""
        if (info.name or typer.main.get_command_name(callback_name)) == name:
            one = copy.copy(app)
            one.registered_commands = [info]
            return one
    return app


def collector_pause(args: list[str]) -> AbstractContextManager[None]:
    """The collector paused for the command (ftmem.paused_gc): the modules it imports and
    the estimate leave next to nothing to collect; `measure` runs real models, whose
    reference cycles must be freed as they are in the user's own training script."""
    return nullcontext() if args[:1] == ["measure"] else paused_gc()


def stored_code(args: list[str]) -> AbstractContextManager[None]:
    """Dataclass methods compiled by an earlier run re-used (ftmem.dataclass_code) while
    the command imports the modules it computes with; `measure` imports transformers and
    torch, whose thousands of dataclasses are not ftmem's to store."""
    return nullcontext() if args[:1] == ["measure"] else cached_dataclass_code()


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 0 valid output, 1 does not fit, 2 one sentence on stderr and
    nothing on stdout; never a traceback for what a user can cause (ftmem.cli.terminal)."""
    args = sys.argv[1:] if argv is None else argv
    with (
        cli_streams(),
        quiet_libraries(),
        collector_pause(args),
        stored_code(args),
        stored_presets(),
    ):
        try:
            code = _app_for(args)(args=argv, standalone_mode=False)
            sys.stdout.flush()  # a full disk fails here, not at exit
        except (Exception, KeyboardInterrupt) as exc:
            code = exit_code(exc)
            if code is None:
                raise
    sys.exit(code if isinstance(code, int) else 0)


# importing a group registers its commands; this order is their order in `ftmem --help`
# (last in this module: each group's module imports `app` from here)
COMMAND_GROUPS = (
    "estimate",
    "search",
    "explain",
    "merge",
    "serve",
    "budgets",
    "measure",
    "record",
    "listings",
)
for _group in COMMAND_GROUPS:
    import_module(f"ftmem.cli.{_group}")
