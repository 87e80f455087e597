"""The CLI's stored dataclass methods (ftmem.dataclass_code): a class created with them
behaves as the same class compiled by the standard library, the code is stored once
and re-used, and nothing outside the ``with`` block is touched."""

from __future__ import annotations

import dataclasses
import inspect
import marshal
import sys
from importlib.util import MAGIC_NUMBER

import pytest

from ftmem import dataclass_code as dc
from ftmem import marshal_file


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh, empty store in a temporary folder."""
    path = tmp_path / "__pycache__" / "dataclass_methods.test.marshal"
    monkeypatch.setattr(dc, "cache_file", lambda: path)
    monkeypatch.setattr(dc, "_STORED", None)
    monkeypatch.setattr(dc, "_ADDED", {})
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    return path


def _make():
    """One class of each kind ftmem declares (frozen with slots, frozen, plain; ordered),
    with defaults, a factory, a keyword-only field and __post_init__."""

    @dataclasses.dataclass(frozen=True, slots=True, order=True)
    class Point:
        x: int
        y: int = 2
        tags: tuple[str, ...] = ()

    @dataclasses.dataclass(frozen=True)
    class Named:
        name: str
        sizes: list[int] = dataclasses.field(default_factory=list)
        _: dataclasses.KW_ONLY
        unit: str = "GiB"

    @dataclasses.dataclass
    class Mutable:
        a: int
        b: float = 0.5

        def __post_init__(self) -> None:
            self.b = self.b * 2

    return Point, Named, Mutable


def _behaviour(classes) -> list[object]:
    """What a user of the classes can observe of them."""
    point, named, mutable = classes
    p, q = point(1), point(1, 3, ("a",))
    n = named("n", unit="GB")
    m = mutable(3)
    try:
        p.x = 5  # type: ignore[misc]
        frozen = "assigned"
    except dataclasses.FrozenInstanceError as exc:
        frozen = f"{type(exc).__name__}: {exc}"
    return [
        repr(p),
        repr(q),
        p == point(1),
        p < q,
        hash(p) == hash(point(1)),
        repr(n),
        n == named("n", unit="GB"),
        repr(m),
        m == mutable(3),
        frozen,
        str(inspect.signature(point)),
        str(inspect.signature(named)),
        [f.name for f in dataclasses.fields(named)],
        repr(dataclasses.replace(q, y=9)),
        point.__match_args__,
        point.__slots__,
        point.__hash__ is not None,
        mutable.__hash__,
    ]


def test_a_stored_class_behaves_as_the_standard_librarys(store):
    expected = _behaviour(_make())  # compiled as CPython does
    with dc.cached_dataclass_code():
        first = _make()  # compiled, then stored on leaving
    assert store.is_file() and not dc._ADDED
    dc._STORED = None  # a later process: reads the file
    with dc.cached_dataclass_code():
        again = _make()
    assert not dc._ADDED  # nothing compiled anew: every method came from the file
    assert _behaviour(first) == expected
    assert _behaviour(again) == expected


def test_the_stored_code_is_what_exec_of_the_text_runs(store):
    """Each stored code object is the one ``exec`` of its text builds, run from a frame
    without ``__future__`` flags as in the dataclasses module (this test module has
    ``annotations``, which ``exec`` would pass on)."""
    with dc.cached_dataclass_code():
        _make()
    stored = dc._read(store)
    assert len(stored) >= 9  # __init__, __repr__, __eq__ and more per class
    runner = compile("exec(text, {}, ns)", "<runner>", "exec", dont_inherit=True)
    for text, code in stored.items():
        ns: dict[str, object] = {}
        exec(runner, {"text": text, "ns": ns})
        built = ns["__create_fn__"].__code__  # type: ignore[attr-defined]
        (function,) = [c for c in code.co_consts if isinstance(c, type(code))]
        # code objects compare field by field (bytecode, constants, names, line table);
        # marshal's bytes would also depend on which strings happen to be interned
        assert function == built
        assert function.co_code == built.co_code and function.co_consts == built.co_consts


def test_only_inside_the_block(store):
    assert "exec" not in vars(dataclasses)
    with dc.cached_dataclass_code():
        assert dataclasses.exec is dc._exec  # type: ignore[attr-defined]
        with dc.cached_dataclass_code():  # nested: the outer one stays
            assert dataclasses.exec is dc._exec  # type: ignore[attr-defined]
        assert dataclasses.exec is dc._exec  # type: ignore[attr-defined]
    assert "exec" not in vars(dataclasses)


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"\x00\x00\r\n" + marshal.dumps({"x": 1}), MAGIC_NUMBER + b"\xff\xfe"],
    ids=["empty", "garbage", "another-python", "truncated"],
)
def test_an_unusable_file_is_replaced(store, content):
    store.parent.mkdir(parents=True)
    store.write_bytes(content)
    with dc.cached_dataclass_code():
        classes = _make()
    assert _behaviour(classes)[0] == "_make.<locals>.Point(x=1, y=2, tags=())"
    assert len(dc._read(store)) >= 9


def test_not_written_without_bytecode(store, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    with dc.cached_dataclass_code():
        _make()
    assert not store.exists()


def test_a_read_only_place_is_let_be(store, monkeypatch):
    """A place the file cannot be written (an install owned by another user): no error,
    no file, no stray temporary; the code is compiled again next time."""

    def refused(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(marshal_file.os, "replace", refused)
    with dc.cached_dataclass_code():
        classes = _make()
    assert _behaviour(classes)[2] is True
    assert not store.exists() and list(store.parent.iterdir()) == []
    assert dc._ADDED  # kept: offered to the file again on the next block


def test_the_file_sits_with_ftmems_bytecode():
    path = dc.cache_file()
    assert path.parent.name == "__pycache__" or sys.pycache_prefix
    assert path.name.startswith("dataclass_methods.") and path.suffix == ".marshal"
    assert sys.implementation.cache_tag in path.name
