"""User text made safe to show (ftmem.display): the characters escaped, and the shortcut
that leaves printable text alone without searching it."""

from __future__ import annotations

import re
import sys

import pytest

from ftmem.display import LONG_RUN, UNSAFE, is_inert, one_line, printable

# every code point, surrogates included, in one string
EVERY = "".join(map(chr, range(sys.maxunicode + 1)))


def test_every_escaped_character_is_one_isprintable_refuses():
    """printable() leaves text that str.isprintable() accepts as it is without searching
    it: that is exact only if no character of UNSAFE (nor tab or newline) is printable."""
    for pattern in (UNSAFE, UNSAFE.replace("\x00-\x08\x0b-\x1f", "\x00-\x1f")):
        escaped = re.findall(pattern, EVERY)
        assert len(escaped) > 2_000  # the surrogates alone are 2,048
        assert not any(ch.isprintable() for ch in escaped)


@pytest.mark.parametrize("one", [False, True], ids=["lines", "one-line"])
def test_printable_escapes_what_the_pattern_names(one):
    """The same text as the substitution over every character, in chunks that mix
    printable runs, newlines and unsafe characters."""
    pattern = re.compile(UNSAFE.replace("\x00-\x08\x0b-\x1f", "\x00-\x1f") if one else UNSAFE)
    for start in range(0, len(EVERY), 4_099):
        chunk = EVERY[start : start + 4_099]
        expected = pattern.sub(lambda m: f"\\u{ord(m.group()):04x}", chunk)
        assert printable(chunk, one_line=one) == expected
        assert is_inert(chunk, one_line=one) == (expected == chunk)
    for text in ("Peak reserved", "a\nb\tc", "reserved − allocated ▏█·", "\x1b[31m", "\u202e"):
        expected = pattern.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
        assert printable(text, one_line=one) == expected


def test_one_line_cuts_only_long_words():
    word = "x" * (LONG_RUN + 1)
    assert one_line("a " + "x" * LONG_RUN) == "a " + "x" * LONG_RUN
    assert one_line(word).endswith(f"({LONG_RUN + 1:,} characters)")
    assert one_line("a\nb") == "a\\u000ab"
