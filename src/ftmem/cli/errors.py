"""The one error handler: every error that reaches the top of a command becomes an exit
code, with its sentence on stderr (:mod:`ftmem.cli.terminal`)."""

from __future__ import annotations

import re

from ftmem.cli.terminal import discard_stdout, error, say
from ftmem.errors import FtmemError

EXIT_DOES_NOT_FIT = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of the pipe stopped reading


# typer's refusal of a closed choice: "Invalid value for '--format': Value error, 'xml' is
# not one of 'table', 'json'." (the "Value error, " is pydantic's, through typer's coercion)
_NOT_A_CHOICE = re.compile(
    r"Invalid value for '(?P<flag>[^']+)': (?:Value error, )?(?P<got>.+) is not one of "
    r"(?P<choices>'.*')\.?$",
    re.DOTALL,
)


def _usage_message(message: str) -> str:
    """Click's usage error, a refused choice said as ftmem says one: the flag, what it
    takes, what it got."""
    found = _NOT_A_CHOICE.match(message)
    if found is None:
        return message.replace(": Value error, ", ": ")
    choices = [c.strip().strip("'") for c in found["choices"].split(",")]
    allowed = choices[0] if len(choices) == 1 else ", ".join(choices[:-1]) + f" or {choices[-1]}"
    return f"{found['flag']} must be {allowed}, not {found['got']}."


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
    if _is(exc, "NoArgsIsHelpError"):  # `ftmem` alone: typer printed the help, no error
        return 0
    if _is(exc, "UsageError"):
        ctx = getattr(exc, "ctx", None)
        hint = f" See `{ctx.command_path} --help`." if ctx is not None else ""
        message = _usage_message(exc.format_message().rstrip())  # type: ignore[attr-defined]
        if not message.endswith((".", "?", "!")):
            message += "."
        error(f"{message}{hint}")
        return EXIT_BAD_INPUT
    return None
