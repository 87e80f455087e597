"""ftmem.validation: what a field takes and refuses, in which sentence, against the
rules its docstring states (the sentences are the ones ftmem's errors have always shown)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Literal

import pytest

from ftmem.validation import (
    Field,
    FiniteFloat,
    InvalidFields,
    Model,
    PositiveInt,
    json_schema,
    model_validator,
)


class Inner(Model):
    size: PositiveInt


class Lax(Model):
    count: int = 0
    share: FiniteFloat | None = Field(None, ge=0.0, lt=1.0)
    rate: float = 0.5
    on: bool = False
    kind: Literal["a", "b", "c"] = "a"
    label: str | None = None
    sizes: tuple[int, ...] = ()
    inner: Inner | None = None
    hidden: int = Field(0, exclude_if=lambda value: value == 0)

    @model_validator(mode="after")
    def _whole(self) -> None:
        if self.count == 13:
            raise ValueError("count 13 is refused by the check of the whole")


class Strict(Model, strict=True):
    count: int = 0
    sizes: tuple[int, ...] = ()
    need: str


def problems(model: type[Model], **data: object) -> list[tuple[tuple, str]]:
    with pytest.raises(InvalidFields) as info:
        model(**data)
    return [(p["loc"], p["msg"]) for p in info.value.errors()]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"count": 1.5}, "Input should be a valid integer, got a number with a fractional part"),
        ({"count": "x"}, "Input should be a valid integer, unable to parse string as an integer"),
        ({"count": True}, "Input should be a valid integer"),  # a flag is not a count
        ({"count": None}, "Input should be a valid integer"),
        ({"share": -1}, "Input should be greater than or equal to 0"),
        ({"share": 1.0}, "Input should be less than 1"),
        ({"share": math.nan}, "Input should be a finite number"),
        ({"rate": "x"}, "Input should be a valid number, unable to parse string as a number"),
        ({"rate": False}, "Input should be a valid number"),
        ({"on": "maybe"}, "Input should be a valid boolean, unable to interpret input"),
        ({"kind": "z"}, "Input should be 'a', 'b' or 'c'"),
        ({"label": 3}, "Input should be a valid string"),
        ({"inner": {"size": 0}}, "Input should be greater than 0"),
        ({"inner": 5}, "Input should be a valid dictionary or instance of Inner"),
    ],
)
def test_each_refusal_has_its_sentence(data, expected):
    [(loc, msg)] = problems(Lax, **data)
    assert msg == expected
    assert loc[0] == next(iter(data))


def test_lax_coercions_and_defaults():
    m = Lax(count=" 4 ", rate=2, on="yes", sizes=[1, 2], inner={"size": 3})
    assert (m.count, m.rate, m.on, m.sizes, m.inner) == (4, 2.0, True, (1, 2), Inner(size=3))
    assert Lax().share is None and Lax().kind == "a"


def test_strict_takes_no_coercion_and_names_every_problem():
    found = problems(Strict, count=1.0, sizes=[1], extra=1)
    assert found == [
        (("count",), "Input should be a valid integer"),
        (("sizes",), "Input should be a valid tuple"),
        (("need",), "Field required"),
        (("extra",), "Extra inputs are not permitted"),
    ]
    # JSON has no tuples: a list read from JSON stands for one
    assert Strict.model_validate_json('{"need": "x", "sizes": [1]}').sizes == (1,)
    with pytest.raises(InvalidFields, match="Keys should be strings"):
        Strict.model_validate({"need": "x", 1: 2})


def test_check_of_the_whole_has_no_location():
    assert problems(Lax, count=13) == [
        ((), "Value error, count 13 is refused by the check of the whole")
    ]


def test_copy_dump_and_equality():
    m = Lax(count=2, sizes=(1,), inner={"size": 3}, hidden=0)
    assert m.model_dump() == {
        "count": 2, "share": None, "rate": 0.5, "on": False, "kind": "a", "label": None,
        "sizes": (1,), "inner": {"size": 3},
    }  # fmt: skip
    assert m.model_dump(mode="json")["sizes"] == [1]
    assert "hidden" in Lax(hidden=1).model_dump()
    assert m.model_dump(exclude_none=True, exclude={"rate"}).keys() == {
        "count", "on", "kind", "sizes", "inner"
    }  # fmt: skip
    assert json.loads(m.model_dump_json()) == m.model_dump(mode="json")
    changed = m.model_copy(update={"count": 3})
    assert (changed.count, m.count) == (3, 2) and changed != m
    assert m == Lax(count=2, sizes=(1,), inner={"size": 3}) and hash(m) == hash(m.model_copy())
    with pytest.raises(AttributeError):
        m.count = 5  # type: ignore[misc]
    assert Lax.model_fields["share"].annotation == FiniteFloat | None


def test_json_schema_states_types_bounds_and_defaults():
    schema = json_schema(Lax)
    assert schema["properties"]["share"] == {
        "anyOf": [{"exclusiveMaximum": 1.0, "minimum": 0.0, "type": "number"}, {"type": "null"}],
        "default": None,
        "title": "Share",
    }
    assert schema["properties"]["kind"]["enum"] == ["a", "b", "c"]
    assert schema["$defs"]["Inner"]["required"] == ["size"]
    assert schema["additionalProperties"] is False


def test_the_common_estimate_imports_no_pydantic():
    """`ftmem estimate MODEL --method M --gpu G` (the CLI's fast path) runs without
    importing pydantic: its import and model classes were most of the start-up time
    (issue 19, benchmarks/bench_cli.py)."""
    code = (
        "import sys; from ftmem.cli import main\n"
        "try:\n    main(['estimate', 'llama2-13b', '--method', 'qlora', '--gpu', 'rtx4090'])\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[-1] == "[]"
