"""The one error handler: every error that reaches the top of a command becomes an exit
code, with its sentence on stderr (:mod:`ftmem.cli.terminal`)."""

from __future__ import annotations

from ftmem.cli.terminal import discard_stdout, error, say
from ftmem.errors import FtmemError

EXIT_DOES_NOT_FIT = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of the pipe stopped reading


def _is(exc: BaseException, name: str) -> bool:
    # typer vendors click (typer._click); match its exception classes by name
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def exit_code(exc: BaseException) -> int | None:
    """The exit code of an error that reached the top, its sentence on stderr; None for
    a bug, whose traceback is worth seeing."""
    if isinstance(exc, FtmemError):
        error(str(exc))
        return EXIT_BAD_INPUT
    if isinstance(exc, KeyboardInterrupt) or _is(exc, "Abort"):
        say("Aborted.")
        return EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError):
        discard_stdout()
        return EXIT_BROKEN_PIPE
    if isinstance(exc, OSError) and exc.filename is None:  # writing stdout (or stderr)
        discard_stdout()
        error(f"cannot write the output: {exc.strerror or exc}.")
        return EXIT_BAD_INPUT
    if isinstance(exc, OSError):
        # a path from the user the system refuses where no reader expected it (a
        # 5,000-character deepspeed: in a --from config: ENAMETOOLONG from is_file)
        error(f"cannot use {exc.filename}: {exc.strerror or exc}.")
        return EXIT_BAD_INPUT
    if isinstance(exc, UnicodeEncodeError):
        discard_stdout()
        error(
            f"the output has characters the terminal's encoding ({exc.encoding}) cannot "
            "show; set PYTHONIOENCODING=utf-8."
        )
        return EXIT_BAD_INPUT
    if _is(exc, "UsageError"):
        ctx = getattr(exc, "ctx", None)
        hint = f" See `{ctx.command_path} --help`." if ctx is not None else ""
        message = exc.format_message().rstrip()  # type: ignore[attr-defined]
        if not message.endswith((".", "?", "!")):
            message += "."
        error(f"{message}{hint}")
        return EXIT_BAD_INPUT
    return None
