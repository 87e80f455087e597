"""Frozen settings and results whose fields declare their checks: ftmem's own small
validation layer, so that ``ftmem estimate`` starts without a validation library.

A :class:`Model` subclass is a frozen dataclass whose fields say what they take: their
type (``int``, ``float``, ``bool``, ``str``, a ``Literal`` of choices, ``X | None``, a
tuple or list of one type, another Model) and, with :func:`Field`, bounds (``gt``,
``ge``, ``lt``, ``le``), a pattern, a description, and when a dump leaves them out.
Building one checks every field and collects every problem before raising
:class:`InvalidFields`: one entry per problem, with the field's path (``loc``), a
sentence (``msg``), a kind (``type``) and the value given (``input``), which callers
turn into ftmem's one-sentence errors (``ftmem.api``, ``ftmem.presets``).

What a field takes, and what it is refused with:

- ``int``: an int, never a bool (True is not a count); outside strict classes also an
  integral float or a string of digits.
- ``float``: a float or an int, never a bool; outside strict classes also a string that
  reads as a number. ``FiniteFloat`` refuses inf and nan.
- ``bool``: a bool; outside strict classes also 0/1 and yes/no, true/false, on/off.
- ``str``: a string only. ``Literal[...]``: one of its choices, of the same type.
- ``tuple[X, ...]``: a tuple (and a list outside strict classes or fields, or from JSON).
- unknown keys are refused ("extra"), missing required fields named.

Checks across fields are methods marked :func:`model_validator` (``mode="before"`` on
the mapping given, ``"after"`` on the built object) or :func:`field_validator`; a
``ValueError`` they raise becomes the problem's sentence. ``model_copy``, ``model_dump``,
``model_dump_json``, ``model_validate`` and ``model_fields`` keep the names callers have
used since ftmem's results were pydantic models.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    ClassVar,
    Literal,
    Union,
    get_args,
    get_origin,
)

if TYPE_CHECKING:
    from typing_extensions import Self

_MISSING: Any = dataclasses.MISSING


class InvalidFields(ValueError):
    """Every problem found building one object, each a mapping of ``type``, ``loc`` (the
    field's path), ``msg`` (a sentence without its full stop) and ``input``."""

    def __init__(self, problems: list[dict[str, Any]], title: str = "") -> None:
        self.problems = problems
        self.title = title
        super().__init__(self.__str__())

    def errors(self, **_: Any) -> list[dict[str, Any]]:
        return list(self.problems)

    def __str__(self) -> str:
        parts = []
        for p in self.problems:
            loc = ".".join(str(x) for x in p["loc"])
            said = f"{p['msg']} [{p['type']}]"
            parts.append(f"{loc}: {said}" if loc else said)
        return f"{self.title}: " * bool(self.title) + "; ".join(parts)


def _problem(kind: str, msg: str, value: Any, loc: tuple[Any, ...] = ()) -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": msg, "input": value}


class _Refused(Exception):
    """Inside the checks: the problems of one value, their paths relative to it."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        self.problems = problems


def _refuse(kind: str, msg: str, value: Any) -> _Refused:
    return _Refused([_problem(kind, msg, value)])


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Limits a number must keep (each None when not set) and whether it must be finite."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    finite: bool = False


PositiveInt = Annotated[int, Bounds(gt=0)]
NonNegativeInt = Annotated[int, Bounds(ge=0)]
FiniteFloat = Annotated[float, Bounds(finite=True)]


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What :func:`Field` declared beyond the default."""

    bounds: Bounds | None = None
    pattern: str | None = None
    strict: bool | None = None
    description: str | None = None
    exclude_if: Callable[[Any], bool] | None = None
    inline: bool = False  # the JSON Schema writes this field's model in place


def Field(
    default: Any = _MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    description: str | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    pattern: str | None = None,
    strict: bool | None = None,
    exclude_if: Callable[[Any], bool] | None = None,
    inline: bool = False,
) -> Any:
    """A field with its default (none: required), bounds on its value, a pattern its text
    must match, its own strictness, a description, ``exclude_if``: a dump leaves the
    field out when this says so of its value, and ``inline``: the JSON Schema writes the
    model the field holds in place, not as a ``$defs`` entry."""
    given = (gt, ge, lt, le)
    bounds = Bounds(gt, ge, lt, le) if any(b is not None for b in given) else None
    spec = _Spec(bounds, pattern, strict, description, exclude_if, inline)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={"spec": spec})
    return dataclasses.field(default=default, metadata={"spec": spec})


_NO_SPEC = _Spec()


class _Hook:
    """A method marked as a check (:func:`model_validator`, :func:`field_validator`)."""

    def __init__(self, func: Any, kind: str, mode: str, fields: tuple[str, ...] = ()) -> None:
        self.func, self.kind, self.mode, self.fields = func, kind, mode, fields


def model_validator(*, mode: Literal["before", "after"]) -> Callable[[Any], Any]:
    """A check of the whole: ``before`` a classmethod taking and returning the mapping
    given, ``after`` a method of the built object (its return value is not used)."""
    return lambda func: _Hook(func, "model", mode)


def field_validator(
    *fields: str, mode: Literal["before", "after"] = "after"
) -> Callable[[Any], Any]:
    """A classmethod checking one value of ``fields``, before or after its type's check;
    it returns the value to keep."""
    return lambda func: _Hook(func, "field", mode, fields)


def _field_hooks(hooks: dict[str, _Hook]) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per field, its field_validator hooks' names that run before its type's check and
    those after, in the hooks' order (found once per class, not at every value)."""
    out: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for name, hook in hooks.items():
        if hook.kind != "field":
            continue
        for field in dict.fromkeys(hook.fields):  # (a field named twice runs it once)
            before, after = out.get(field, ((), ()))
            out[field] = (
                ((*before, name), after) if hook.mode == "before" else (before, (*after, name))
            )
    return out


class FieldInfo:
    """One field as callers see it: its default, description, and type (resolved when
    first asked for)."""

    def __init__(self, owner: type[Model], f: dataclasses.Field[Any]) -> None:
        self._owner, self.name = owner, f.name
        self.default = f.default
        self.description = f.metadata.get("spec", _NO_SPEC).description

    @property
    def annotation(self) -> Any:
        return _hints(self._owner)[self.name]

    def is_required(self) -> bool:
        return self.default is _MISSING


@cache
def _annotation(text: str) -> types.CodeType:
    """An annotation's text compiled, once per text: the classes' ~370 annotations are 65
    texts ("int", "PositiveInt | None"); compiling each anew was ~1 % of the instructions
    of ``ftmem estimate`` (issue 19, benchmarks/bench_cli.py)."""
    return compile(text, "<annotation>", "eval", dont_inherit=True)


def _hints(cls: type) -> dict[str, Any]:
    """The classes' field types, the annotations' text evaluated once per class."""
    hints = cls.__dict__.get("_resolved_hints")
    if hints is None:
        # each class's own annotations in its own module (a subclass's fields come from
        # several); eval of the text, as typing.get_type_hints does at several times the
        # cost (its ForwardRef and checks on each: ~10 ms of the CLI's start for ~20 classes)
        fields = {f.name for f in dataclasses.fields(cls)}
        hints = {}
        for owner in reversed(cls.__mro__):
            module = sys.modules[owner.__module__].__dict__
            own = inspect.get_annotations(owner)
            names = vars(owner)  # (eval reads any mapping as its locals)
            for name in fields & own.keys():
                text = own[name]
                hint = eval(_annotation(text), module, names) if isinstance(text, str) else text
                hints[name] = hint
        cls._resolved_hints = hints  # type: ignore[attr-defined]
    return hints


# --- the checks of one value ------------------------------------------------------------

_JSON_INPUT = [False]  # while model_validate_json runs: lists stand for tuples
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
Check = Callable[[Any], Any]


def _int(strict: bool) -> Check:
    def check(v: Any) -> Any:
        if type(v) is int:
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            return int(v)
        if not strict and isinstance(v, float):
            if not math.isfinite(v):
                raise _refuse("finite_number", "Input should be a finite number", v)
            if not v.is_integer():
                msg = "Input should be a valid integer, got a number with a fractional part"
                raise _refuse("int_from_float", msg, v)
            return int(v)
        if not strict and isinstance(v, str):
            text = v.strip()
            if re.fullmatch(r"[+-]?[0-9]{1,4300}", text):
                return int(text)
            msg = "Input should be a valid integer, unable to parse string as an integer"
            raise _refuse("int_parsing", msg, v)
        raise _refuse("int_type", "Input should be a valid integer", v)

    return check


def _float(strict: bool) -> Check:
    def check(v: Any) -> Any:
        if type(v) is float:
            return v
        if isinstance(v, bool):
            raise _refuse("float_type", "Input should be a valid number", v)
        if isinstance(v, (int, float)):
            try:
                return float(v)
            except OverflowError:
                raise _refuse("finite_number", "Input should be a finite number", v) from None
        if not strict and isinstance(v, str):
            try:
                return float(v.strip().replace("_", "x"))  # (float() reads 1_0 as 10)
            except ValueError:
                msg = "Input should be a valid number, unable to parse string as a number"
                raise _refuse("float_parsing", msg, v) from None
        raise _refuse("float_type", "Input should be a valid number", v)

    return check


def _bool(strict: bool) -> Check:
    def check(v: Any) -> Any:
        if isinstance(v, bool):
            return v
        if not strict and (isinstance(v, (int, str))):
            word = str(v).strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
            msg = "Input should be a valid boolean, unable to interpret input"
            raise _refuse("bool_parsing", msg, v)
        raise _refuse("bool_type", "Input should be a valid boolean", v)

    return check


def _str(v: Any) -> Any:
    if isinstance(v, str):
        return v
    raise _refuse("string_type", "Input should be a valid string", v)


def _any(v: Any) -> Any:
    return v


def _choices(choices: tuple[Any, ...]) -> str:
    shown = [repr(c) for c in choices]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + f" or {shown[-1]}"


def _literal(choices: tuple[Any, ...]) -> Check:
    allowed = {(type(c), c) for c in choices}
    msg = f"Input should be {_choices(choices)}"

    def check(v: Any) -> Any:
        try:
            if (type(v), v) in allowed:
                return v
        except TypeError:  # an unhashable value: not a choice
            pass
        raise _refuse("literal_error", msg, v)

    return check


def _number(value: float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _bounded(inner: Check, b: Bounds) -> Check:
    def check(v: Any) -> Any:
        v = inner(v)
        if b.finite and not math.isfinite(v):
            raise _refuse("finite_number", "Input should be a finite number", v)
        if b.gt is not None and not v > b.gt:
            raise _refuse("greater_than", f"Input should be greater than {_number(b.gt)}", v)
        if b.ge is not None and not v >= b.ge:
            msg = f"Input should be greater than or equal to {_number(b.ge)}"
            raise _refuse("greater_than_equal", msg, v)
        if b.lt is not None and not v < b.lt:
            raise _refuse("less_than", f"Input should be less than {_number(b.lt)}", v)
        if b.le is not None and not v <= b.le:
            msg = f"Input should be less than or equal to {_number(b.le)}"
            raise _refuse("less_than_equal", msg, v)
        return v

    return check


def _matching(inner: Check, pattern: str) -> Check:
    compiled = re.compile(pattern)

    def check(v: Any) -> Any:
        v = inner(v)
        if not compiled.search(v):
            raise _refuse("string_pattern_mismatch", f"String should match pattern '{pattern}'", v)
        return v

    return check


def _optional(inner: Check) -> Check:
    return lambda v: None if v is None else inner(v)


def _items(item: Check, v: Any) -> list[Any]:
    out, problems = [], []
    for i, x in enumerate(v):
        try:
            out.append(item(x))
        except _Refused as exc:
            problems += [{**p, "loc": (i, *p["loc"])} for p in exc.problems]
    if problems:
        raise _Refused(problems)
    return out


def _tuple(item: Check, strict: bool) -> Check:
    def check(v: Any) -> Any:
        if isinstance(v, tuple) or (isinstance(v, list) and (not strict or _JSON_INPUT[0])):
            return tuple(_items(item, v))
        raise _refuse("tuple_type", "Input should be a valid tuple", v)

    return check


def _list(item: Check, strict: bool) -> Check:
    def check(v: Any) -> Any:
        if isinstance(v, list) or (isinstance(v, tuple) and not strict):
            return _items(item, v)
        raise _refuse("list_type", "Input should be a valid list", v)

    return check


def _dict(v: Any) -> Any:
    if isinstance(v, dict):
        return v
    raise _refuse("dict_type", "Input should be a valid dictionary", v)


def _nested(model: type[Model]) -> Check:
    def check(v: Any) -> Any:
        if isinstance(v, model):
            return v
        if isinstance(v, dict):
            try:
                return model._build(v)
            except InvalidFields as exc:
                raise _Refused(exc.problems) from None
        msg = f"Input should be a valid dictionary or instance of {model.__name__}"
        raise _refuse("model_type", msg, v)

    return check


def _union(options: list[Check]) -> Check:
    def check(v: Any) -> Any:
        first: _Refused | None = None
        for option in options:
            try:
                return option(v)
            except _Refused as exc:
                first = first or exc
        assert first is not None
        raise first

    return check


def checker(tp: Any, strict: bool, spec: _Spec = _NO_SPEC) -> Check:
    """The check of one field's type (with the bounds and pattern its Field declared)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        inner = checker(args[0], strict)
        for extra in args[1:]:
            if isinstance(extra, Bounds):
                inner = _bounded(inner, extra)
        return _declared(inner, spec)
    if origin is Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        one = (
            checker(options[0], strict, spec)
            if len(options) == 1
            else _union([checker(a, strict, spec) for a in options])
        )
        return _optional(one) if len(options) < len(args) else one
    if origin is Literal:
        return _literal(args)
    if origin is tuple:
        return _declared(_tuple(checker(args[0], strict), strict), spec)
    if origin is list:
        return _list(checker(args[0], strict), strict)
    if origin is dict or tp is dict:
        return _dict
    if isinstance(tp, type) and issubclass(tp, Model):
        return _nested(tp)
    simple = {int: _int, float: _float, bool: _bool}
    if tp in simple:
        return _declared(simple[tp](strict), spec)
    if tp is str:
        return _declared(_str, spec)
    if tp is Any or tp is object:
        return _any
    raise TypeError(f"ftmem.validation cannot check fields of type {tp!r}")


def _declared(inner: Check, spec: _Spec) -> Check:
    if spec.bounds is not None:
        inner = _bounded(inner, spec.bounds)
    if spec.pattern is not None:
        inner = _matching(inner, spec.pattern)
    return inner


# --- the models ---------------------------------------------------------------------------


class Model:
    """A frozen dataclass built from keyword arguments, each checked (module docstring).

    ``class X(Model, strict=True)``: no coercion (a YAML ``"4"`` is not the count 4).
    """

    model_fields: ClassVar[dict[str, FieldInfo]] = {}
    _strict: ClassVar[bool] = False
    _hooks: ClassVar[dict[str, _Hook]] = {}
    _checks: ClassVar[dict[str, Check] | None] = None
    _plan: ClassVar[tuple[tuple[str, Any, Any, _Spec], ...]] = ()
    # per field, the names of its field_validator hooks before and after its type's check
    _field_hooks: ClassVar[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {}
    _own_doc: ClassVar[str | None] = None

    def __init_subclass__(cls, strict: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if strict is not None:
            cls._strict = strict
        hooks = dict(cls._hooks)
        for name, value in list(cls.__dict__.items()):
            if isinstance(value, _Hook):
                hooks.pop(name, None)  # (a redefinition runs where the subclass put it)
                hooks[name] = value
                setattr(cls, name, value.func)
        cls._hooks = hooks
        cls._field_hooks = _field_hooks(hooks)
        cls._checks = None
        cls._own_doc = cls.__dict__.get("__doc__")  # (before dataclass writes one)
        dataclasses.dataclass(frozen=True, init=False, eq=True, repr=True)(cls)
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        cls.model_fields = {f.name: FieldInfo(cls, f) for f in fields}
        cls._plan = tuple(
            (f.name, f.default, f.default_factory, f.metadata.get("spec", _NO_SPEC)) for f in fields
        )

    def __init__(self, /, **data: Any) -> None:
        self._fill(data)

    # building

    @classmethod
    def _compiled(cls) -> dict[str, Check]:
        checks = cls.__dict__.get("_checks")
        if checks is None:
            hints = _hints(cls)
            checks = {}
            for name, _, _, spec in cls._plan:
                strict = cls._strict if spec.strict is None else spec.strict
                checks[name] = checker(hints[name], strict, spec)
            cls._checks = checks
        return checks

    @classmethod
    def _build(cls, data: dict[Any, Any]) -> Self:
        obj = object.__new__(cls)
        obj._fill(data)
        return obj

    def _fill(self, data: dict[Any, Any]) -> None:
        cls = type(self)
        checks = cls._compiled()
        hooks = cls._hooks.items()
        try:
            for name, hook in reversed(hooks):
                if hook.kind == "model" and hook.mode == "before":
                    data = getattr(cls, name)(data)
        except ValueError as exc:
            raise InvalidFields([_problem("value_error", f"Value error, {exc}", data)]) from None
        values, problems = cls._values(data, checks)
        if problems:
            raise InvalidFields(problems)
        self.__dict__.update(values)
        for name, hook in hooks:
            if hook.kind == "model" and hook.mode == "after":
                try:
                    getattr(self, name)()
                except ValueError as exc:
                    msg = f"Value error, {exc}"
                    raise InvalidFields([_problem("value_error", msg, self)]) from None

    @classmethod
    def _values(
        cls, data: dict[Any, Any], checks: dict[str, Check]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Each field's value (checked, or its default) and every problem found."""
        values: dict[str, Any] = {}
        problems: list[dict[str, Any]] = []
        for name, default, factory, _ in cls._plan:
            if name not in data:
                if default is not _MISSING:
                    values[name] = default
                elif factory is not _MISSING:
                    values[name] = factory()
                else:
                    problems.append(_problem("missing", "Field required", data, (name,)))
                continue
            try:
                values[name] = cls._field(name, data[name], checks[name])
            except _Refused as exc:
                problems += [{**p, "loc": (name, *p["loc"])} for p in exc.problems]
        for key, value in data.items():
            if not isinstance(key, str):
                problems.append(_problem("invalid_key", "Keys should be strings", key, (key,)))
            elif key not in checks:
                msg = "Extra inputs are not permitted"
                problems.append(_problem("extra_forbidden", msg, value, (key,)))
        return values, problems

    @classmethod
    def _field(cls, name: str, value: Any, check: Check) -> Any:
        before, after = cls._field_hooks.get(name, ((), ()))
        try:
            for hook_name in before:
                value = getattr(cls, hook_name)(value)
            value = check(value)
            for hook_name in after:
                value = getattr(cls, hook_name)(value)
        except ValueError as exc:
            raise _refuse("value_error", f"Value error, {exc}", value) from None
        return value

    @classmethod
    def model_validate(cls, data: Any) -> Self:
        """An object of this class from a mapping (one of this class is kept as it is)."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            msg = f"Input should be a valid dictionary or instance of {cls.__name__}"
            raise InvalidFields([_problem("model_type", msg, data)])
        return cls._build(data)

    @classmethod
    def model_validate_json(cls, text: str | bytes) -> Self:
        """An object from the JSON text of :meth:`model_dump_json`."""
        import json  # (not for `ftmem estimate`'s table: see ftmem.cli.fast)

        with _json_input():
            return cls.model_validate(json.loads(text))

    @classmethod
    def model_construct(cls, **values: Any) -> Self:
        """An object from values already checked, without checking them again (the
        defaults fill what is not given)."""
        obj = object.__new__(cls)
        filled = {}
        for name, default, factory, _ in cls._plan:
            if name in values:
                filled[name] = values[name]
            elif default is not _MISSING:
                filled[name] = default
            elif factory is not _MISSING:
                filled[name] = factory()
        obj.__dict__.update(filled)
        return obj

    # changing and dumping

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update``'s fields replaced and not checked again (the estimate
        derives them from checked ones; ``dataclasses.replace`` is the checked copy)."""
        obj = object.__new__(type(self))
        values = {**self.__dict__, **(update or {})}
        if deep:
            import copy

            values = copy.deepcopy(values)
        obj.__dict__.update(values)
        return obj

    def model_dump(
        self,
        *,
        mode: Literal["python", "json"] = "python",
        exclude: Iterable[str] | None = None,
        exclude_none: bool = False,
        exclude_defaults: bool = False,
    ) -> dict[str, Any]:
        """The fields as a mapping in their declared order (nested objects as mappings;
        in ``json`` mode tuples as lists), less those their ``exclude_if`` leaves out."""
        left_out = set(exclude or ())
        out: dict[str, Any] = {}
        values = self.__dict__
        for name, default, _, spec in type(self)._plan:
            if name in left_out:
                continue
            value = values[name]
            if spec.exclude_if is not None and spec.exclude_if(value):
                continue
            if exclude_none and value is None:
                continue
            if exclude_defaults and default is not _MISSING and value == default:
                continue
            out[name] = _dumped(value, mode, exclude_none, exclude_defaults)
        return out

    def model_dump_json(self, *, indent: int | None = None) -> str:
        """:meth:`model_dump` in ``json`` mode as JSON text (compact without ``indent``)."""
        import json  # (not for `ftmem estimate`'s table: see ftmem.cli.fast)

        separators = (",", ":") if indent is None else (",", ": ")
        data = self.model_dump(mode="json")
        return json.dumps(data, indent=indent, separators=separators, ensure_ascii=False)

    @classmethod
    def model_json_schema(cls) -> dict[str, Any]:
        """The JSON Schema of the dump (:func:`json_schema`)."""
        return json_schema(cls)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready mapping (``model_dump(mode="json")``)."""
        return self.model_dump(mode="json")


def _dumped(value: Any, mode: str, exclude_none: bool, exclude_defaults: bool) -> Any:
    if isinstance(value, Model):
        return value.model_dump(
            mode=mode,  # type: ignore[arg-type]
            exclude_none=exclude_none,
            exclude_defaults=exclude_defaults,
        )
    if isinstance(value, (list, tuple)):
        items = [_dumped(v, mode, exclude_none, exclude_defaults) for v in value]
        return items if mode == "json" or isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {k: _dumped(v, mode, exclude_none, exclude_defaults) for k, v in value.items()}
    return value


@contextmanager
def _json_input() -> Iterator[None]:
    before = _JSON_INPUT[0]
    _JSON_INPUT[0] = True
    try:
        yield
    finally:
        _JSON_INPUT[0] = before


__all__ = [
    "Field",
    "FieldInfo",
    "FiniteFloat",
    "InvalidFields",
    "Model",
    "NonNegativeInt",
    "PositiveInt",
    "field_validator",
    "model_validator",
]


# --- the published JSON Schema --------------------------------------------------------------


def json_schema(model: type[Model]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``model``'s dump: each other model it holds
    under ``$defs`` (one a field marks ``inline`` in place), keys sorted, properties in
    their declared order."""
    defs: dict[str, Any] = {}
    schema = _model_schema(model, defs)
    if defs:
        schema["$defs"] = defs
    return _sorted(schema)


def _model_schema(model: type[Model], defs: dict[str, Any]) -> dict[str, Any]:
    hints = _hints(model)
    properties, required = {}, []
    for name, default, _, spec in model._plan:
        prop = _type_schema(hints[name], defs, spec)
        if not _refers(prop):  # (a model's own title stands)
            prop.setdefault("title", name.replace("_", " ").title())
        if default is not _MISSING:
            prop["default"] = _dumped(default, "json", False, False)
        else:
            required.append(name)
        if spec.description is not None:
            prop["description"] = spec.description
        properties[name] = prop
    out: dict[str, Any] = {"additionalProperties": False, "properties": properties}
    if required:
        out["required"] = required
    out["title"] = model.__name__
    out["type"] = "object"
    doc = model._own_doc
    if doc:
        out["description"] = inspect.cleandoc(doc)
    return out


def _refers(schema: dict[str, Any]) -> bool:
    return "$ref" in schema or any("$ref" in option for option in schema.get("anyOf", ()))


def _type_schema(tp: Any, defs: dict[str, Any], spec: _Spec = _NO_SPEC) -> dict[str, Any]:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        out = _type_schema(args[0], defs)
        for extra in args[1:]:
            if isinstance(extra, Bounds):
                out.update(_bounds_schema(extra))
        if spec.bounds is not None:
            out.update(_bounds_schema(spec.bounds))
        return out
    if origin is Union or origin is types.UnionType:
        options = [_type_schema(a, defs, spec) for a in args if a is not type(None)]
        if len(options) < len(args):
            options.append({"type": "null"})
        return {"anyOf": options} if len(options) > 1 else options[0]
    if origin is Literal:
        kind = {str: "string", int: "integer", bool: "boolean"}[type(args[0])]
        return (
            {"const": args[0], "type": kind}
            if len(args) == 1
            else {"enum": list(args), "type": kind}
        )
    if origin in (tuple, list):
        return {"items": _type_schema(args[0], defs), "type": "array"}
    if origin is dict or tp is dict:
        return {"additionalProperties": True, "type": "object"}
    if isinstance(tp, type) and issubclass(tp, Model):
        return _model_ref(tp, defs, spec.inline)
    if tp is Any or tp is object:
        return {}
    out = {"type": {int: "integer", float: "number", bool: "boolean", str: "string"}[tp]}
    if spec.bounds is not None:
        out.update(_bounds_schema(spec.bounds))
    if spec.pattern is not None:
        out["pattern"] = spec.pattern
    return out


def _model_ref(model: type[Model], defs: dict[str, Any], inline: bool) -> dict[str, Any]:
    if inline:
        return _model_schema(model, defs)
    if model.__name__ not in defs:
        defs[model.__name__] = {}  # (a placeholder against recursion)
        defs[model.__name__] = _model_schema(model, defs)
    return {"$ref": f"#/$defs/{model.__name__}"}


def _bounds_schema(b: Bounds) -> dict[str, Any]:
    named = {
        "exclusiveMinimum": b.gt,
        "minimum": b.ge,
        "exclusiveMaximum": b.lt,
        "maximum": b.le,
    }
    return {k: v for k, v in named.items() if v is not None}


def _sorted(value: Any, parent: str | None = None) -> Any:
    if isinstance(value, dict):
        keys = value if parent in ("properties", "default") else sorted(value)
        return {k: _sorted(value[k], k) for k in keys}
    if isinstance(value, list):
        return [_sorted(v, parent) for v in value]
    return value
