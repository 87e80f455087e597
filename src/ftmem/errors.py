"""ftmem's error types.

Every error the user can cause is an :class:`FtmemError`; the CLI prints its
message as one sentence on stderr and exits 2. Each also inherits the builtin
a Python caller would expect (``ValueError``, ``KeyError``) so it can be caught
either way.
"""

from __future__ import annotations

from collections.abc import Iterable


class FtmemError(Exception):
    """Base class of every user-facing ftmem error."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else self.__class__.__name__


class InvalidInputError(FtmemError, ValueError):
    """A setting, size or combination of settings that cannot be estimated."""


class UnknownNameError(FtmemError, KeyError):
    """A preset (model or GPU) or a choice that ftmem does not know."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        super().__init__(self._message())

    def _message(self) -> str:
        import difflib  # (an error's text only)

        close = difflib.get_close_matches(self.name.lower(), self.known, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        listing = (
            f" Run `ftmem {self.kind}s` to list them." if self.kind in ("model", "gpu") else ""
        )
        return f"Unknown {self.kind} '{self.name}'.{hint}{listing}"


class ConfigError(FtmemError, ValueError):
    """A model config (config.json, preset YAML) that cannot be read or is inconsistent."""


MAX_NAMED_PROBLEMS = 5
"""Problems named in one message; the rest are counted. Enough to fix a command line in
one go, few enough that the sentence stays readable."""


def listed(problems: list[str]) -> str:
    """The first :data:`MAX_NAMED_PROBLEMS` problems, joined; the rest counted."""
    named = problems[:MAX_NAMED_PROBLEMS]
    more = len(problems) - len(named)
    return "; ".join(named) + (f"; and {more} more" if more else "")


def problems_sentence(problems: list[str]) -> str:
    """Every problem found at once as one sentence, so that a user fixes them together
    rather than one run each: the problem itself when it is the only one."""
    if len(problems) == 1:
        return problems[0] + "."
    return f"{len(problems)} problems: {listed(problems)}."


class SettingsError(InvalidInputError):
    """Settings found wrong together (a settings model's validation): each is in
    :attr:`problems`, so that callers validating several models name them all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(problems_sentence(problems))
