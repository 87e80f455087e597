"""Regular expressions from users (``--trainable-modules``, axolotl's
``unfrozen_parameters``), bounded so that matching them cannot hang.

Python's ``re`` backtracks: ``(.*.*)*z`` searched in a 60-character parameter name tries
every way of splitting the name between the two ``.*`` at every repetition of the group,
about 2^60 paths, and never returns. The names matched are short (transformers' parameter
names, under 100 characters), so a pattern's cost is bounded by the paths its matcher can
explore over one name, counted from the parsed pattern:

* a sequence multiplies its parts' paths, an alternation adds its branches';
* a repeat of one character (``.*``, ``\\d+``, ``[0-9]{1,2}``) chooses how many it takes:
  at most ``max - min + 1`` paths, ``max`` capped at the name's length;
* a repeat of a group of ``p`` paths takes ``p^k`` for each count ``k`` it may repeat:
  exponential, so ``(a.*)+`` is refused while ``(\\.weight)?`` is not;
* the search tries each start position: one more factor of the name's length.

A pattern is refused when that bound exceeds :data:`MAX_PATHS`. The bound is never lower
than the paths the matcher can take, so an accepted pattern is fast whatever the name;
it is sometimes far higher (``(?:a|b)*`` is linear in practice), and the refusal then says
how to write the pattern without a repeated group. Measured on this machine: ``.*.*.*z``
(bound 1.4e7 over 60 characters) takes 8 ms a name, ``.*.*z`` (2.2e5) 0.14 ms.
"""

from __future__ import annotations

import re
from typing import Any

try:  # the parser re itself uses; private, but the only exact reading of a pattern
    from re import _parser as _sre  # type: ignore[attr-defined]  # Python 3.11+
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre

from ftmem.errors import InvalidInputError

MAX_PATTERN_CHARS = 256
"""Longest pattern accepted: a parameter name is under 100 characters."""

MAX_PATHS = 1_000_000
"""Most matcher paths over one name, all patterns together: about 0.6 ms a name here."""

_ATOMS = {
    getattr(_sre, name)
    for name in ("LITERAL", "NOT_LITERAL", "ANY", "IN", "AT", "CATEGORY", "GROUPREF")
}
_REPEATS = {
    getattr(_sre, name)
    for name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
    if hasattr(_sre, name)
}
_CAP = MAX_PATHS + 1  # counts stop growing here: the pattern is refused either way


def _paths(items: Any, n: int) -> int:
    """Upper bound of the matcher's paths through ``items`` (parsed) over ``n`` characters,
    capped at :data:`_CAP`."""
    total = 1
    for op, av in items:
        total = min(total * _item_paths(op, av, n), _CAP)
    return total


def _item_paths(op: Any, av: Any, n: int) -> int:
    if op in _ATOMS:
        return 1
    if op == _sre.SUBPATTERN:
        return _paths(av[-1], n)
    if op == _sre.BRANCH:
        return min(sum(_paths(alt, n) for alt in av[1]), _CAP)
    if op in _REPEATS:
        low, high, body = av
        high = min(high, n)
        inner = _paths(body, n)
        if inner == 1:
            return max(high - low + 1, 1)
        count, power = 0, 1
        for _ in range(min(low, high)):
            power = min(power * inner, _CAP)
        for _ in range(low, high + 1):
            count = min(count + power, _CAP)
            power = min(power * inner, _CAP)
        return max(count, 1)
    if op in (_sre.ASSERT, _sre.ASSERT_NOT):
        return _paths(av[1], n)
    if op == _sre.GROUPREF_EXISTS:
        return min(_paths(av[1], n) + (_paths(av[2], n) if av[2] else 1), _CAP)
    if op == getattr(_sre, "ATOMIC_GROUP", None):
        return _paths(av, n)
    return _CAP  # an element this count does not know: refused rather than risked


def compile_bounded(patterns: list[str], flag: str, longest_name: int) -> list[re.Pattern[str]]:
    """``patterns`` compiled, each searched in names of at most ``longest_name``
    characters; one sentence naming ``flag`` for a pattern that is not a regular
    expression, too long, or could backtrack past :data:`MAX_PATHS`."""
    compiled, budget = [], 0
    for text in patterns:
        if len(text) > MAX_PATTERN_CHARS:
            raise InvalidInputError(
                f"{flag}: a pattern of {len(text):,} characters is over the "
                f"{MAX_PATTERN_CHARS} accepted; parameter names are under 100."
            )
        try:
            parsed = _sre.parse(text)
            compiled.append(re.compile(text))
        except (re.error, RecursionError, OverflowError) as exc:
            raise InvalidInputError(
                f"{flag}: {text!r} is not a regular expression ({exc})."
            ) from None
        budget += (longest_name + 1) * _paths(parsed, longest_name)
        if budget > MAX_PATHS:
            raise InvalidInputError(
                f"{flag}: {text!r} could take too long to match (nested or many repeats "
                "backtrack exponentially); repeat single characters, not groups, and drop "
                "a leading or trailing .* (patterns are searched anywhere in the name)."
            )
    return compiled
