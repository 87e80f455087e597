"""The bounded readers: hostile files become one ConfigError sentence, quickly."""

from __future__ import annotations

import os
import time

import pytest

from ftmem.errors import ConfigError
from ftmem.textfiles import MAX_DEPTH, MAX_NODES, parse_json, parse_yaml, read_text

# nine aliases of nine aliases ... seven levels: 9**7 = 4.8 million strings from 400 bytes
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 20_000 + "]" * 20_000, "nest"),  # libyaml's own limit, or ours
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"deeper than {MAX_DEPTH}"),
        ("a: " + "9" * 5_000, "number too long"),
        (LAUGHS, f"over {MAX_NODES:,} values"),
        ("a: [\n  b: c", "line 3"),
    ],
)
def test_hostile_yaml_is_refused_quickly(text, message):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        parse_yaml(text, "x.yaml")
    assert time.perf_counter() - start < 5  # a bound on hanging, not a speed test


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 20_000 + "]" * 20_000, f"deeper than {MAX_DEPTH}"),
        ('{"a": ' + "9" * 5_000 + "}", "number too long"),
        ("{bad", "line 1"),
    ],
)
def test_hostile_json_is_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_json(text, "config.json")


def test_brackets_inside_strings_do_not_count_as_depth():
    text = '{"a": "' + "[" * 1000 + '", "b": [[1]]}'
    assert parse_json(text, "x")["b"] == [[1]]


def test_aliases_within_bounds_are_read():
    assert parse_yaml("a: &a [1, 2]\nb: *a\n", "x") == {"a": [1, 2], "b": [1, 2]}


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_text(fifo, "config.json", 1 << 20)


def test_a_broken_link_is_named(tmp_path):
    link = tmp_path / "config.json"
    link.symlink_to(tmp_path / "gone.json")
    with pytest.raises(ConfigError, match="broken link"):
        read_text(link, "config.json", 1 << 20)


def test_size_and_encoding_are_checked(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("a: 1\n" * 100)
    with pytest.raises(ConfigError, match="over the 10 a preset"):
        read_text(big, "preset", 10)
    latin = tmp_path / "l.yaml"
    latin.write_bytes(b"a: \xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_text(latin, "preset", 1 << 20)
