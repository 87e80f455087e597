"""User text made safe to show: what a config, a preset or an argument says reaches the
terminal as inert text, and a runaway name as a bounded one.

A config's ``_name_or_path``, a budget's run name or a model argument can hold escape
sequences (``ESC [ 31 m`` recolours the terminal, ``ESC ] 0 ;`` retitles its window),
other control characters or bidirectional overrides that reorder what is shown. Each such
character is shown as its ``\\uXXXX`` escape: readable, and inside a JSON string (or a
double-quoted YAML one) the very escape the format uses, so sanitised JSON parses to the
same values.
"""

from __future__ import annotations

import codecs
import re
from functools import cache

UNSAFE = (
    "[\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 controls but tab and newline, DEL, C1 controls
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidirectional marks and overrides
    "\ud800-\udfff"  # lone surrogates: undecodable bytes of a file name
    "\ufffe\uffff]"  # noncharacters; with these out, the text is legal XML 1.0
)
"""The characters :func:`printable` escapes, as a regular expression's class. Each is one
that ``str.isprintable()`` refuses (controls and format characters, surrogates,
noncharacters; tests/test_display.py), so text it accepts needs no search."""

LONG_RUN = 400
"""Characters without a space beyond which a word is cut when a line must stay short:
above the paths of deep folders (a pytest temporary file is ~120), far below a name
pasted by mistake."""


@cache
def _unsafe(one_line: bool) -> re.Pattern[str]:
    """:data:`UNSAFE` compiled (with newline and tab for ``one_line``), when first needed:
    the surrogates' range makes re build a 64 K table, about 1 % of the CPU time of
    ``ftmem estimate``, whose text is printable (issue 19, benchmarks/bench_cli.py)."""
    return re.compile(UNSAFE.replace("\x00-\x08\x0b-\x1f", "\x00-\x1f") if one_line else UNSAFE)


@cache
def _long_word() -> re.Pattern[str]:
    return re.compile(rf"[^\s'\"`]{{{LONG_RUN + 1},}}")  # a word, without its quotes


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def is_inert(text: str, *, one_line: bool = False) -> bool:
    """Whether ``text`` holds none of the characters :func:`printable` escapes."""
    if text.isprintable():
        return True
    if not one_line and text.replace("\n", "").replace("\t", "").isprintable():
        return True  # (lines of printable text)
    return _unsafe(one_line).search(text) is None


def printable(text: str, *, one_line: bool = False) -> str:
    """``text`` with every control, bidirectional or surrogate character shown as its
    ``\\uXXXX`` escape; with ``one_line`` newlines and tabs too."""
    if is_inert(text, one_line=one_line):
        return text
    return _unsafe(one_line).sub(_escape, text)


def _cut(match: re.Match[str]) -> str:
    word = match.group()
    return f"{word[:48]}…{word[-16:]} ({len(word):,} characters)"


def shortened(text: str, limit: int = 1000) -> str:
    """``text`` bounded as :func:`one_line` bounds it, its characters left as they are
    (the output escapes them): a name read from a file that every format prints."""
    if len(text) > LONG_RUN:  # (else no word of it can be that long)
        text = _long_word().sub(_cut, text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` as one bounded printable line: words longer than :data:`LONG_RUN`
    characters (a 100,000-character model name) keep their start and end, and the whole
    is cut at ``limit``."""
    line = printable(text, one_line=True)
    if len(line) > LONG_RUN:  # (else no word of it can be that long)
        line = _long_word().sub(_cut, line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


# -- terminals that cannot show Unicode (PYTHONIOENCODING=ascii, a latin-1 locale) --------

ASCII_FALLBACK = {
    "·": "-",
    "×": "x",
    "→": "->",
    "←": "<-",
    "≤": "<=",
    "≥": ">=",
    "≈": "~",
    "…": "...",
    "—": "-",
    "–": "-",
    "−": "-",
    "█": "#",
    "▏": "#",
    "▎": "#",
    "▍": "#",
    "▌": "#",
    "▋": "#",
    "▊": "#",
    "▉": "#",
}
ERRORS = "ftmem-ascii"
"""Codec error handler: the ASCII look-alike of a character the stream cannot encode,
else ``?``; registered by :func:`register_fallback`."""


def _fallback(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    bad = exc.object[exc.start : exc.end]
    return "".join(ASCII_FALLBACK.get(ch, "?") for ch in bad), exc.end


def register_fallback() -> str:
    """Register :data:`ERRORS` (idempotent) and return its name."""
    try:
        codecs.lookup_error(ERRORS)
    except LookupError:
        codecs.register_error(ERRORS, _fallback)
    return ERRORS


QUOTED = 40
"""Characters of a wrong value that an error message quotes."""


def clipped(text: str, limit: int = QUOTED) -> str:
    """``text`` cut to ``limit`` characters (ending in "...") for an error to quote: a
    value can be typed 300 digits long."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
