"""Command-line options shared by several commands: defined once.

Typer reads a command's options from its signature; :func:`with_options` appends these
groups to a command's own parameters, and the command receives them as ``**settings``
(names as the Python API takes them: ``ftmem.estimate(model, **settings)``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal, Optional, TypeVar

import typer

from ftmem.cli.option_specs import (
    DISTILL,
    DISTILL_PANEL,
    FROM,
    GPU,
    HARDWARE,
    MULTI,
    RUN,
    RUN_NAMES,
    SPREAD,
    EstimateFormat,
    OptionSpec,
    field_choices,
)
from ftmem.units import UnitSystem

__all__ = [
    "DISTILL",
    "DISTILL_PANEL",
    "FROM",
    "GPU",
    "HARDWARE",
    "MULTI",
    "RUN",
    "RUN_NAMES",
    "SPREAD",
    "field_choices",
    "with_options",
]

F = TypeVar("F", bound=Callable[..., Any])


def _parameter(spec: OptionSpec) -> inspect.Parameter:
    """The keyword-only parameter typer reads ``spec`` from."""
    option = typer.Option(*spec.decls, help=spec.help, rich_help_panel=spec.panel)
    annotation = Annotated[spec.kind, option]  # type: ignore[name-defined]
    return inspect.Parameter(
        spec.name, inspect.Parameter.KEYWORD_ONLY, default=spec.default, annotation=annotation
    )


def with_options(*groups: list[OptionSpec], drop: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Append option groups to a command's signature (``drop`` leaves some out)."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = [_parameter(p) for group in groups for p in group if p.name not in drop]
        fn.__signature__ = sig.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        return fn

    return decorate


# -- the arguments and options several commands take -----------------------------------

ModelArg = Annotated[
    str, typer.Argument(help="Preset id (see `ftmem models`) or a config.json path/folder.")
]
OptModelArg = Annotated[
    Optional[str],  # noqa: UP045
    typer.Argument(
        help="Preset id (see `ftmem models`) or a config.json path/folder; with --from, "
        "the config's base model when omitted."
    ),
]


Format = Annotated[EstimateFormat, typer.Option("--format", help="How to print the estimate.")]
TableOrJson = Annotated[
    Literal["table", "json"], typer.Option("--format", help="A table, or JSON for programs.")
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print nothing; the exit code says it all.")
]


Units = Annotated[UnitSystem, typer.Option("--units", help="GiB (binary, default) or GB (10^9).")]
