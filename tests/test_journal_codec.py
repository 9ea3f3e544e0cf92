"""The argument codec of durable work: function references and JSON round trips (SPEC 14)."""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import json
import sys
import typing
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, NewType, NoReturn, Optional, TypeVar, Union
from uuid import UUID

import pydantic
import pytest
import typing_extensions
from hypothesis import given
from hypothesis import strategies as st

from fastapi_tasks.journal._codec import decode_call, encode_call, function_ref, resolve

MODULE = __name__
UNSET: Any = object()
"""A default that is never stored: the tests pass only some arguments of wide functions."""

# --- helpers the tests store: module level, so that function_ref finds them again -------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.Flag):
    READ = 1
    WRITE = 2


class Shape(enum.Enum):
    """Members whose values JSON cannot hold."""

    POINT = (0, 0)
    LINE = (0, 1)


class Mixed(enum.Enum):
    TEXT = "text"
    PAIR = (1, 2)


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Event:
    name: str
    when: datetime
    where: Point | None = None
    tags: set[str] = dataclasses.field(default_factory=set[str])
    computed: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        self.computed = len(self.name)


@dataclasses.dataclass
class Node:
    label: str
    children: list[Node] = dataclasses.field(default_factory=list["Node"])


@dataclasses.dataclass
class NeedsInitVar:
    value: int
    scale: dataclasses.InitVar[int]

    def __post_init__(self, scale: int) -> None:
        self.value *= scale


@dataclasses.dataclass(init=False)
class CustomInit:
    value: int

    def __init__(self, raw: str) -> None:
        self.value = int(raw)


ItemT = TypeVar("ItemT")


@dataclasses.dataclass
class Box(Generic[ItemT]):
    item: ItemT


class User(pydantic.BaseModel):
    id: int
    name: str
    joined: datetime
    score: float = 0.0


class Aliased(pydantic.BaseModel):
    user_id: int = pydantic.Field(alias="userId")


class Tags(pydantic.RootModel[list[str]]):
    pass


class Loose(pydantic.BaseModel):
    anything: Any = None


class Measured(pydantic.BaseModel):
    value: float


class AsText(pydantic.BaseModel):
    value: int

    @pydantic.model_serializer
    def as_text(self) -> str:
        return str(self.value)


UserId = NewType("UserId", int)
Bounded = TypeVar("Bounded", bound=datetime)
Constrained = TypeVar("Constrained", date, UUID)
Free = TypeVar("Free")


class Greeter:
    def greet(self, name: str) -> str:
        return name

    def __call__(self, name: str) -> str:
        return name

    @staticmethod
    def static(name: str) -> str:
        return name


def plain(a: int, b: str, c: float = 1.0) -> None:
    pass


async def asynchronous(a: int) -> None:
    pass


def unannotated(value: Any, *rest: Any, **options: Any) -> None:
    pass


unannotated.__annotations__.clear()  # as if written without annotations


def takes_any(value: Any) -> None:
    pass


def takes_object(value: object) -> None:
    pass


def takes_extensions_any(value: typing_extensions.Any) -> None:
    pass


def every_kind(a: int, /, b: str, *rest: int, c: bool, d: float = 0.5, **more: Decimal) -> None:
    pass


def needs_two(a: int, b: int) -> None:
    pass


def one(value: Any) -> None:
    pass


def unresolvable(value: int) -> None:
    pass


# An annotation that does not evaluate: the whole function is then taken as unannotated.
unresolvable.__annotations__["value"] = "NoSuchName"


def _logged(func: Callable[[int], int]) -> Callable[[int], int]:
    @functools.wraps(func)
    def wrapper(a: int) -> int:
        return func(a)

    return wrapper


@_logged
def wrapped_by_wraps(a: int) -> int:
    return a


@functools.lru_cache
def cached(a: int) -> int:
    return a


def renamed(a: int) -> None:
    pass


renamed.__qualname__ = "plain"  # resolves to another function


def orphan(a: int) -> None:
    pass


orphan.__qualname__ = "no_such_function"


NOT_CALLABLE = 42


def make_nested() -> Callable[[], None]:
    def nested() -> None:
        pass

    return nested


lambda_work = lambda: None  # noqa: E731


def roundtrip(func: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """Encode a call and decode it: the same arguments, of the same types, are returned."""
    text = encode_call(func, args, kwargs)
    assert text == json.dumps(json.loads(text), separators=(",", ":"))  # compact
    decoded_args, decoded_kwargs = decode_call(func, text)
    signature = inspect.signature(func)
    original = signature.bind(*args, **kwargs).arguments
    decoded = signature.bind(*decoded_args, **decoded_kwargs).arguments
    assert same(decoded, original), (decoded, original)
    return tuple(decoded.values())


def same(a: object, b: object) -> bool:
    """Equal, and of the same types all the way down (1 != 1.0 != True here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        sequence_a = typing.cast("Sequence[object]", a)
        sequence_b = typing.cast("Sequence[object]", b)
        return len(sequence_a) == len(sequence_b) and all(
            same(x, y) for x, y in zip(sequence_a, sequence_b, strict=True)
        )
    if isinstance(a, dict):
        mapping_a = typing.cast("dict[object, object]", a)
        mapping_b = typing.cast("dict[object, object]", b)
        return list(mapping_a) == list(mapping_b) and all(
            same(mapping_a[k], mapping_b[k]) for k in mapping_a
        )
    if isinstance(a, float):
        return repr(a) == repr(b)  # tells -0.0 from 0.0
    return a == b


def stored(func: Callable[..., Any], **values: Any) -> Any:
    """The stored ``arguments`` object of a call by keyword."""
    return json.loads(encode_call(func, (), values))["arguments"]


def restore(func: Callable[..., Any], arguments: dict[str, Any]) -> tuple[Any, ...]:
    args, kwargs = decode_call(func, json.dumps({"v": 1, "arguments": arguments}))
    return (*args, *kwargs.values())


# --- function_ref and resolve -------------------------------------------------------------


@pytest.mark.parametrize(
    "func",
    [plain, asynchronous, wrapped_by_wraps, cached, Greeter.static],
    ids=["def", "async def", "functools.wraps", "lru_cache", "staticmethod"],
)
def test_function_ref_finds_module_level_functions_again(func: Callable[..., Any]) -> None:
    ref = function_ref(func)
    assert ref == f"{MODULE}:{func.__qualname__}"
    assert resolve(ref) is func


def test_function_ref_allows_main() -> None:
    main = sys.modules["__main__"]
    name = "_fastapi_tasks_codec_probe"

    def probe() -> None:
        pass

    probe.__module__ = "__main__"
    probe.__qualname__ = name
    setattr(main, name, probe)
    try:
        assert function_ref(probe) == f"__main__:{name}"
    finally:
        delattr(main, name)


@pytest.mark.parametrize(
    ("func", "message"),
    [
        (lambda_work, rf"{MODULE}:<lambda> is a lambda; define durable work with def"),
        (make_nested(), r"make_nested.<locals>.nested is defined inside a function; move it"),
        (Greeter().greet, r"Greeter.greet is a bound method.*module-level function"),
        (functools.partial(plain, 1), r"functools.partial.*module-level function"),
        (Greeter(), r"of type Greeter\) is not a function.*module-level function"),
        (len, r"builtins:len is a builtin; wrap it in a module-level function"),
        (Greeter, r"Greeter is a class; wrap the work in a module-level function"),
        (renamed, rf"{MODULE}:plain names another object.*functools.wraps"),
        (orphan, rf"{MODULE}:no_such_function cannot be found again.*define durable work"),
    ],
    ids=[
        "lambda",
        "nested",
        "bound method",
        "partial",
        "callable instance",
        "builtin",
        "class",
        "rebound name",
        "missing name",
    ],
)
def test_function_ref_refuses_what_cannot_be_found_again(func: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        function_ref(func)


def test_function_ref_chains_the_lookup_failure() -> None:
    with pytest.raises(TypeError) as caught:
        function_ref(orphan)
    assert isinstance(caught.value.__cause__, ImportError)


def test_resolve_walks_the_qualname() -> None:
    assert resolve(f"{MODULE}:Greeter.static") is Greeter.static
    assert resolve("json:dumps") is json.dumps


@pytest.mark.parametrize(
    ("ref", "message", "cause"),
    [
        ("no_colon", r"'no_colon' is not a 'module:qualname' reference", None),
        (":plain", r"':plain' is not a 'module:qualname' reference", None),
        ("json:", r"'json:' is not a 'module:qualname' reference", None),
        ("no_such_module_xyz:f", r"cannot import 'no_such_module_xyz:f'", ModuleNotFoundError),
        (f"{MODULE}:Greeter.nothing", r"no attribute 'nothing'", AttributeError),
        (f"{MODULE}:NOT_CALLABLE", r"it is a int, not callable", None),
    ],
)
def test_resolve_failures_are_import_errors(
    ref: str, message: str, cause: type[BaseException] | None
) -> None:
    with pytest.raises(ImportError, match=message) as caught:
        resolve(ref)
    assert ref in str(caught.value)
    if cause is None:
        assert caught.value.__cause__ is None
    else:
        assert isinstance(caught.value.__cause__, cause)


def test_resolve_reports_a_module_that_fails_to_import() -> None:
    with pytest.raises(ImportError, match=r"cannot import '\.relative:f'") as caught:
        resolve(".relative:f")
    assert isinstance(caught.value.__cause__, TypeError)


# --- the format -----------------------------------------------------------------------


def test_format_stores_passed_arguments_by_parameter_name() -> None:
    text = encode_call(plain, (1, "x"), {})
    assert text == '{"v":1,"arguments":{"a":1,"b":"x"}}'
    # The default was not passed, so the function's default applies after a restart.
    assert decode_call(plain, text) == ((1, "x"), {})


def test_every_parameter_kind_round_trips() -> None:
    args = (1, "b", 2, 3)
    kwargs = {"c": True, "d": 2.5, "e": Decimal("1.5")}
    text = encode_call(every_kind, args, kwargs)
    assert json.loads(text)["arguments"] == {
        "a": 1,
        "b": "b",
        "rest": [2, 3],
        "c": True,
        "d": 2.5,
        "more": {"e": "1.5"},
    }
    assert decode_call(every_kind, text) == (args, kwargs)


def test_keyword_arguments_come_back_as_the_function_takes_them() -> None:
    args, kwargs = decode_call(plain, encode_call(plain, (), {"b": "x", "a": 1}))
    assert (args, kwargs) == ((1, "x"), {})
    args, kwargs = decode_call(plain, encode_call(plain, (1, "x"), {"c": 2.0}))
    assert (args, kwargs) == ((1, "x", 2.0), {})


def test_unannotated_parameters_take_json_values() -> None:
    roundtrip(unannotated, {"a": [1, 2.5, None, True]}, "x", 3, flag=False)
    with pytest.raises(TypeError, match=r"argument 'rest\[0\]': a value of type tuple"):
        encode_call(unannotated, (1, (2,)), {})
    with pytest.raises(TypeError, match=r"argument 'options\['x'\]': a value of type set"):
        encode_call(unannotated, (1,), {"x": {2}})


def test_unresolvable_annotations_are_taken_as_absent() -> None:
    assert roundtrip(unresolvable, [1, "two"]) == ([1, "two"],)
    with pytest.raises(TypeError, match="a value of type date is not accepted"):
        encode_call(unresolvable, (date(2020, 1, 1),), {})


def test_calls_that_do_not_bind_are_refused() -> None:
    with pytest.raises(TypeError, match=rf"durable work {MODULE}:needs_two: missing .*'b'"):
        encode_call(needs_two, (1,), {})


def test_callables_without_a_weak_reference_still_encode() -> None:
    # A method-wrapper cannot be cached by weak reference: its plan is built for every call.
    add_to_one = (1).__add__
    text = encode_call(add_to_one, (7,), {})
    assert text == '{"v":1,"arguments":{"value":7}}'
    assert decode_call(add_to_one, text) == ((7,), {})
    assert decode_call(add_to_one, text) == ((7,), {})


def test_callable_instances_are_named_by_repr() -> None:
    greeter = Greeter()
    assert roundtrip(greeter, "ann") == ("ann",)
    with pytest.raises(TypeError, match=r"durable work <.*Greeter object.*> cannot store"):
        encode_call(greeter, (1,), {})


def test_callables_without_a_signature_are_refused() -> None:
    with pytest.raises(TypeError, match=r"builtins:next: cannot read its signature"):
        encode_call(next, (iter([]),), {})


# --- JSON values ----------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_json_values_round_trip_exactly_under_any(value: object) -> None:
    for func in (takes_any, takes_object, takes_extensions_any, unannotated):
        (decoded,), _ = decode_call(func, encode_call(func, (value,), {}))
        assert same(decoded, value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), r"argument 'value': the float nan is not accepted there \(accepted: finite"),
        (float("inf"), r"the float inf is not accepted"),
        ({1: "a"}, r"argument 'value': a key of type int \(1\) is not accepted.*str keys"),
        ({"a": [1, {2}]}, r"argument 'value\['a'\]\[1\]': a value of type set is not"),
        ((1, 2), r"a value of type tuple is not accepted there \(accepted: JSON values"),
        ({1, 2}, r"a value of type set is not accepted"),
        (Point(1, 2), r"a value of type Point is not accepted.*annotation names them"),
        (datetime(2020, 1, 1), r"a value of type datetime is not accepted"),
        (Color.RED, r"a value of type Color is not accepted"),
        (Level.LOW, r"a value of type Level is not accepted"),
        (b"bytes", r"a value of type bytes is not accepted"),
        (object(), r"a value of type object is not accepted"),
    ],
)
def test_values_any_does_not_describe_are_refused(value: object, message: str) -> None:
    with pytest.raises(TypeError, match=rf"durable work {MODULE}:takes_any cannot store"):
        encode_call(takes_any, (value,), {})
    with pytest.raises(TypeError, match=message):
        encode_call(takes_any, (value,), {})


def test_self_containing_values_are_refused() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(TypeError, match=r"argument 'value': it is nested too deeply or contains"):
        encode_call(takes_any, (cyclic,), {})


# --- scalars --------------------------------------------------------------------------


def scalars(
    i: int = UNSET, f: float = UNSET, s: str = UNSET, b: bool = UNSET, n: None = UNSET
) -> None:
    pass


def test_scalars_keep_their_types() -> None:
    decoded = roundtrip(scalars, 1, 2.5, "s", True, None)
    assert [type(value) for value in decoded] == [int, float, str, bool, type(None)]
    # bool is an int and int a float to type checkers: they are accepted and stay what they are.
    decoded = roundtrip(scalars, True, 3, "s", False, None)
    assert [type(value) for value in decoded] == [bool, int, str, bool, type(None)]
    decoded = roundtrip(scalars, 1, False, "s", False, None)
    assert type(decoded[1]) is bool


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"i": "1"}, r"argument 'i': a value of type str is not accepted there \(accepted: int\)"),
        ({"i": 1.0}, r"a value of type float is not accepted there \(accepted: int\)"),
        ({"i": Level.LOW}, r"a value of type Level is not accepted there \(accepted: int\)"),
        ({"i": datetime(2020, 1, 1)}, r"a value of type datetime is not accepted.*int"),
        ({"f": "1.0"}, r"argument 'f': a value of type str is not accepted.*float"),
        ({"f": float("nan")}, r"argument 'f': the float nan is not accepted"),
        ({"f": float("-inf")}, r"the float -inf is not accepted"),
        ({"s": Color.RED}, r"argument 's': a value of type Color is not accepted.*str"),
        ({"b": 1}, r"argument 'b': a value of type int is not accepted there \(accepted: bool"),
        ({"n": 0}, r"argument 'n': a value of type int is not accepted there \(accepted: None"),
    ],
)
def test_scalars_refuse_other_types(values: dict[str, Any], message: str) -> None:
    call = {"i": 1, "f": 1.0, "s": "s", "b": True, "n": None} | values
    with pytest.raises(TypeError, match=message):
        encode_call(scalars, (), call)


# --- datetime, date, time, timedelta, UUID, Decimal ------------------------------------


def temporal(
    when: datetime = UNSET, day: date = UNSET, at: time = UNSET, span: timedelta = UNSET
) -> None:
    pass


def identifiers(key: UUID = UNSET, amount: Decimal = UNSET) -> None:
    pass


offsets = st.timedeltas(
    min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
).map(timezone)


@given(
    st.datetimes(timezones=st.none() | offsets),
    st.dates(),
    st.times(timezones=st.none() | offsets),
    st.timedeltas(),
)
def test_temporal_values_round_trip(when: datetime, day: date, at: time, span: timedelta) -> None:
    decoded = roundtrip(temporal, when, day, at, span)
    assert [type(value) for value in decoded] == [datetime, date, time, timedelta]
    assert decoded[0].utcoffset() == when.utcoffset()
    assert decoded[0].replace(tzinfo=None) == when.replace(tzinfo=None)
    assert decoded[2].utcoffset() == at.utcoffset()


def test_aware_datetimes_keep_their_offset_and_naive_ones_stay_naive() -> None:
    aware = datetime(2026, 5, 9, 7, 35, 25, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    naive = datetime(2026, 5, 9, 7, 35, 25)
    assert stored(temporal, when=aware) == {"when": "2026-05-09T07:35:25.123456+05:30"}
    (decoded,) = restore(temporal, stored(temporal, when=aware))
    assert decoded.utcoffset() == timedelta(hours=5, minutes=30)
    (decoded,) = restore(temporal, stored(temporal, when=naive))
    assert decoded == naive
    assert decoded.tzinfo is None


def test_timedelta_is_stored_exactly() -> None:
    span = timedelta(days=-3, seconds=5, microseconds=7)
    assert stored(temporal, span=span) == {"span": [span.days, span.seconds, span.microseconds]}
    assert restore(temporal, stored(temporal, span=span)) == (span,)


@given(st.uuids(), st.decimals(allow_nan=False))
def test_uuids_and_decimals_round_trip_exactly(key: UUID, amount: Decimal) -> None:
    _, decoded_amount = roundtrip(identifiers, key, amount)
    assert str(decoded_amount) == str(amount)  # same digits and exponent


def test_decimal_is_stored_as_text() -> None:
    assert stored(identifiers, amount=Decimal("1.10")) == {"amount": "1.10"}
    assert restore(identifiers, {"amount": "1.10"}) == (Decimal("1.10"),)


@pytest.mark.parametrize(
    ("function", "values", "message"),
    [
        (temporal, {"when": "2020-01-01"}, r"'when': a value of type str.*\(accepted: datetime"),
        (temporal, {"day": datetime(2020, 1, 1)}, r"'day': a value of type datetime.*date\)"),
        (temporal, {"at": 12}, r"'at': a value of type int.*\(accepted: time\)"),
        (temporal, {"span": 1.5}, r"'span': a value of type float.*\(accepted: timedelta\)"),
        (identifiers, {"key": "0" * 32}, r"'key': a value of type str.*\(accepted: UUID\)"),
        (identifiers, {"amount": 1.5}, r"'amount': a value of type float.*Decimal\)"),
        (identifiers, {"amount": Decimal("NaN")}, r"the Decimal NaN is not accepted.*not NaN"),
    ],
)
def test_temporal_and_identifiers_refuse_other_types(
    function: Callable[..., Any], values: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        encode_call(function, (), values)


# --- enums and literals ---------------------------------------------------------------


def enums(
    color: Color = UNSET,
    level: Level = UNSET,
    perm: Perm = UNSET,
    shape: Shape = UNSET,
    mixed: Mixed = UNSET,
) -> None:
    pass


def test_enums_are_stored_by_value() -> None:
    assert stored(enums, color=Color.BLUE, level=Level.HIGH, perm=Perm.READ | Perm.WRITE) == {
        "color": "blue",
        "level": 2,
        "perm": 3,
    }
    decoded = roundtrip(enums, Color.BLUE, Level.HIGH, Perm.READ | Perm.WRITE, mixed=Mixed.TEXT)
    assert decoded[:3] == (Color.BLUE, Level.HIGH, Perm.READ | Perm.WRITE)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"color": "red"}, r"'color': a value of type str.*\(accepted: a member of Color\)"),
        ({"level": 1}, r"'level': a value of type int.*\(accepted: a member of Level\)"),
        ({"color": Level.LOW}, r"a value of type Level.*a member of Color"),
        ({"shape": Shape.POINT}, r"'shape': <Shape.POINT.*member of Shape whose value is a JSON"),
        ({"mixed": Mixed.PAIR}, r"'mixed': <Mixed.PAIR.*whose value is a JSON value"),
    ],
)
def test_enums_refuse_what_they_cannot_store(values: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        encode_call(enums, (), values)


def literals(
    mode: Literal["fast", "slow"] = UNSET,
    number: Literal[1, True, None] = UNSET,
    color: Literal[Color.RED] = UNSET,
    raw: Literal[b"x", "y"] = UNSET,
) -> None:
    pass


def test_literals_round_trip_and_keep_their_types() -> None:
    decoded = roundtrip(literals, "slow", True, Color.RED, "y")
    assert type(decoded[1]) is bool
    decoded = roundtrip(literals, "fast", 1, Color.RED, raw="y")
    assert type(decoded[1]) is int
    roundtrip(literals, "fast", None, Color.RED, "y")
    assert stored(literals, color=Color.RED) == {"color": "red"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "other"}, r"'mode': a value of type str.*\(accepted: one of 'fast', 'slow'\)"),
        ({"number": 1.0}, r"'number': a value of type float.*one of 1, True, None"),
        ({"color": "red"}, r"'color': a value of type str.*one of <Color.RED"),
        ({"raw": b"x"}, r"'raw': a value of type bytes.*one of b'x', 'y'"),
    ],
)
def test_literals_refuse_other_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        encode_call(literals, (), values)


# --- containers -----------------------------------------------------------------------


def containers(
    items: list[datetime] = UNSET,
    pair: tuple[int, str] = UNSET,
    row: tuple[Decimal, ...] = UNSET,
    empty: tuple[()] = UNSET,
    unique: set[UUID] = UNSET,
    frozen: frozenset[Color] = UNSET,
    by_name: dict[str, date] = UNSET,
) -> None:
    pass


def test_containers_round_trip_with_their_types() -> None:
    when = datetime(2020, 1, 1, tzinfo=timezone.utc)
    decoded = roundtrip(
        containers,
        [when, when],
        (1, "a"),
        (Decimal("1.5"), Decimal(2)),
        (),
        {UUID(int=1), UUID(int=2)},
        frozenset({Color.RED}),
        {"a": date(2020, 1, 2)},
    )
    assert [type(value) for value in decoded] == [list, tuple, tuple, tuple, set, frozenset, dict]
    assert stored(containers, pair=(1, "a"), empty=()) == {"pair": [1, "a"], "empty": []}


def bare(
    items: Any = UNSET,
    row: Any = UNSET,
    unique: Any = UNSET,
    frozen: Any = UNSET,
    mapping: Any = UNSET,
    old_list: Any = UNSET,
    old_tuple: Any = UNSET,
    old_set: Any = UNSET,
    old_dict: Any = UNSET,
) -> None:
    pass


# Containers without type arguments, set at run time: type checkers rightly refuse them.
bare.__annotations__.update(
    items=list,
    row=tuple,
    unique=set,
    frozen=frozenset,
    mapping=dict,
    old_list=typing.List,  # noqa: UP006
    old_tuple=typing.Tuple,  # noqa: UP006
    old_set=typing.Set,  # noqa: UP006
    old_dict=typing.Dict,  # noqa: UP006
)


def test_bare_containers_hold_json_values() -> None:
    decoded = roundtrip(
        bare, [1, "a"], (1, None), {1, "a"}, frozenset({2.5}), {"k": [1]}, [2], (3,), {4}, {"k": 5}
    )
    types = [list, tuple, set, frozenset, dict, list, tuple, set, dict]
    assert [type(value) for value in decoded] == types
    with pytest.raises(TypeError, match=r"'row\[0\]': a value of type date is not accepted"):
        encode_call(bare, (), {"row": (date(2020, 1, 1),)})
    with pytest.raises(TypeError, match=r"'mapping': a key of type int \(1\).*accepted: str\)"):
        encode_call(bare, (), {"mapping": {1: 1}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"items": (datetime(2020, 1, 1),)}, r"'items': a value of type tuple.*list\[datetime\]"),
        ({"items": [datetime(2020, 1, 1), "x"]}, r"'items\[1\]': a value of type str"),
        ({"pair": (1, "a", 2)}, r"'pair': a value of type tuple.*tuple\[int, str\]"),
        ({"pair": [1, "a"]}, r"'pair': a value of type list.*tuple\[int, str\]"),
        ({"pair": (1, 2)}, r"'pair\[1\]': a value of type int.*\(accepted: str\)"),
        ({"row": [Decimal(1)]}, r"'row': a value of type list.*tuple\[Decimal\]"),
        ({"empty": (1,)}, r"'empty': a value of type tuple.*tuple\[\(\)\]"),
        ({"unique": {1}}, r"'unique\[0\]': a value of type int.*\(accepted: UUID\)"),
        ({"unique": frozenset[UUID]()}, r"'unique': a value of type frozenset.*set\[UUID\]"),
        ({"frozen": set[Color]()}, r"'frozen': a value of type set.*frozenset"),
        ({"by_name": [("a", date(2020, 1, 1))]}, r"'by_name': a value of type list.*dict\[str"),
        (
            {"by_name": {1: date(2020, 1, 1)}},
            r"'by_name': a key of type int \(1\) is not accepted there \(accepted: str\)",
        ),
        ({"by_name": {"a": "2020"}}, r"'by_name\['a'\]': a value of type str.*date\)"),
    ],
)
def test_containers_refuse_what_their_annotation_does_not_describe(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        encode_call(containers, (), values)


def keyed(
    by_number: dict[int, str] = UNSET,
    by_id: dict[UUID, list[int]] = UNSET,
    by_choice: dict[Literal["a", "b"], int] = UNSET,
    by_text: dict[UserId, Color] = UNSET,
) -> None:
    pass


def test_dicts_with_keys_other_than_text_are_stored_as_pairs() -> None:
    assert stored(keyed, by_number={1: "a", 2: "b"}, by_choice={"a": 1}) == {
        "by_number": [[1, "a"], [2, "b"]],
        "by_choice": {"a": 1},
    }
    decoded = roundtrip(keyed, {1: "a"}, {UUID(int=3): [1]}, {"b": 2}, {UserId(5): Color.RED})
    assert list(decoded[0]) == [1]
    with pytest.raises(TypeError, match=r"'by_number': a value of type list.*dict\[int, str\]"):
        encode_call(keyed, ([(1, "a")],), {})
    with pytest.raises(TypeError, match=r"'by_number': a key of type str \('a'\).*int\)"):
        encode_call(keyed, ({"a": "a"},), {})
    with pytest.raises(TypeError, match=r"'by_number\[1\]': a value of type int.*str\)"):
        encode_call(keyed, ({1: 2},), {})
    with pytest.raises(TypeError, match=r"'by_choice': a key of type str \('c'\).*one of 'a', 'b'"):
        encode_call(keyed, (), {"by_choice": {"c": 1}})


# --- unions ---------------------------------------------------------------------------


def unions(
    maybe: int | None = UNSET,
    either: Union[str, list[int]] = UNSET,  # noqa: UP007
    number: int | float = UNSET,
    old_optional: Optional[datetime] = UNSET,  # noqa: UP045
    ambiguous: datetime | str = UNSET,
    point_or_event: Point | Event = UNSET,
    loose: Any | None = UNSET,
) -> None:
    pass


def test_unions_are_untagged_when_the_json_shape_tells_the_member() -> None:
    assert stored(unions, maybe=None, either="a", number=2.5, loose=None) == {
        "maybe": None,
        "either": "a",
        "number": 2.5,
        "loose": None,
    }
    assert stored(unions, maybe=3, either=[1], number=2, old_optional=None) == {
        "maybe": 3,
        "either": [1],
        "number": 2,
        "old_optional": None,
    }
    when = datetime(2020, 1, 1)
    decoded = roundtrip(unions, None, [1], 2, when, loose={"a": 1})
    assert type(decoded[2]) is int
    decoded = roundtrip(unions, 1, "x", 2.0, None, loose=[1])
    assert type(decoded[2]) is float
    decoded = roundtrip(unions, 1, "x", True, None)
    assert type(decoded[2]) is bool


def test_unions_are_tagged_when_members_share_a_json_shape() -> None:
    when = datetime(2020, 1, 1)
    assert stored(unions, ambiguous=when) == {"ambiguous": [0, "2020-01-01T00:00:00"]}
    assert stored(unions, ambiguous="text") == {"ambiguous": [1, "text"]}
    assert stored(unions, point_or_event=Point(1, 2)) == {"point_or_event": [0, {"x": 1, "y": 2}]}
    assert restore(unions, {"ambiguous": [1, "2020-01-01T00:00:00"]}) == ("2020-01-01T00:00:00",)
    assert restore(unions, {"ambiguous": [0, "2020-01-01T00:00:00"]}) == (when,)
    event = Event("launch", when)
    assert restore(unions, stored(unions, point_or_event=event)) == (event,)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"maybe": "1"}, r"'maybe': a value of type str.*\(accepted: int \| None\)"),
        ({"either": [1, "a"]}, r"'either': a value of type list.*str \| list\[int\]"),
        ({"number": "1"}, r"'number': a value of type str.*int \| float"),
        ({"ambiguous": 1}, r"'ambiguous': a value of type int.*datetime \| str"),
        ({"point_or_event": None}, r"'point_or_event': a value of type NoneType.*Point \| Event"),
        ({"loose": (1,)}, r"'loose': a value of type tuple.*JSON values.*\| None"),
    ],
)
def test_unions_refuse_what_no_member_takes(values: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        encode_call(unions, (), values)


# --- annotated, NewType, TypeVar, unknown annotations --------------------------------------


def wrappers(
    annotated: Annotated[datetime, "metadata"] = UNSET,
    user: UserId = UNSET,
    sequence: Sequence[int] = UNSET,
    never: NoReturn = UNSET,
    instance: Greeter = UNSET,
) -> None:
    pass


def typevars(
    bounded: Bounded = UNSET, constrained: Constrained = UNSET, free: Free = UNSET
) -> tuple[Bounded, Constrained, Free]:
    return bounded, constrained, free


def test_wrappers_stand_for_the_type_they_wrap() -> None:
    when = datetime(2020, 1, 1)
    decoded = roundtrip(wrappers, when, UserId(3), [2], {"a": 1}, {"name": "ann"})
    assert decoded[:2] == (when, 3)
    decoded = roundtrip(typevars, when, date(2020, 1, 2), [1])
    assert decoded == (when, date(2020, 1, 2), [1])
    roundtrip(typevars, constrained=UUID(int=5))
    # date and UUID are both JSON text: the member is tagged.
    assert stored(typevars, constrained=UUID(int=5)) == {"constrained": [1, str(UUID(int=5))]}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"annotated": "2020-01-01"}, r"'annotated': a value of type str.*datetime\)"),
        ({"user": "3"}, r"'user': a value of type str.*\(accepted: int\)"),
        ({"sequence": (1, 2)}, r"'sequence': a value of type tuple.*JSON values"),
        ({"never": datetime(2020, 1, 1)}, r"'never': a value of type datetime.*JSON values"),
        ({"instance": Greeter()}, r"'instance': a value of type Greeter.*JSON values"),
    ],
)
def test_wrappers_refuse_what_the_wrapped_type_refuses(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        encode_call(wrappers, (), values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bounded": date(2020, 1, 1)}, r"'bounded': a value of type date.*datetime\)"),
        ({"constrained": "x"}, r"'constrained': a value of type str.*date \| UUID\)"),
        ({"free": date(2020, 1, 1)}, r"'free': a value of type date.*JSON values"),
    ],
)
def test_typevars_stand_for_their_bound_or_constraints(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        encode_call(typevars, (), values)


# --- dataclasses ----------------------------------------------------------------------


def dataclass_work(
    point: Point = UNSET,
    event: Event = UNSET,
    tree: Node = UNSET,
    needs_init_var: NeedsInitVar = UNSET,
    custom: CustomInit = UNSET,
    box: Box[int] = UNSET,
) -> None:
    pass


def test_dataclasses_round_trip_by_their_init_fields() -> None:
    when = datetime(2020, 1, 1, tzinfo=timezone.utc)
    event = Event("launch", when, Point(1, 2), {"a", "b"})
    tree = Node("root", [Node("leaf"), Node("branch", [Node("twig")])])
    decoded = roundtrip(dataclass_work, Point(3, 4), event, tree, box=Box([1, "a"]))
    assert decoded[1].computed == len("launch")
    assert stored(dataclass_work, event=event)["event"] == {
        "name": "launch",
        "when": "2020-01-01T00:00:00+00:00",
        "where": {"x": 1, "y": 2},
        "tags": list(event.tags),
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"point": {"x": 1, "y": 2}}, r"'point': a value of type dict.*\(accepted: Point\)"),
        ({"point": Point(1, "2")}, r"'point.y': a value of type str.*\(accepted: int\)"),  # type: ignore[arg-type]
        (
            {"event": Event("e", datetime(2020, 1, 1), tags={1})},  # type: ignore[arg-type]
            r"'event.tags\[0\]': a value of type int.*\(accepted: str\)",
        ),
        ({"tree": Node("a", [Node("b", [Point(1, 2)])])}, r"'tree.children\[0\].children\[0\]'"),  # type: ignore[list-item]
        ({"needs_init_var": NeedsInitVar(1, 2)}, r"a NeedsInitVar is not accepted.*exactly"),
        ({"custom": CustomInit("1")}, r"a CustomInit is not accepted.*takes exactly their init"),
        ({"box": Box(date(2020, 1, 1))}, r"'box.item': a value of type date.*JSON values"),
    ],
)
def test_dataclasses_refuse_what_they_cannot_store(values: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        encode_call(dataclass_work, (), values)


# --- pydantic models ------------------------------------------------------------------


def model_work(
    user: User = UNSET,
    aliased: Aliased = UNSET,
    tags: Tags = UNSET,
    loose: Loose = UNSET,
    measured: Measured = UNSET,
    text: AsText = UNSET,
) -> None:
    pass


def test_pydantic_models_round_trip() -> None:
    user = User(id=1, name="ann", joined=datetime(2020, 1, 1, tzinfo=timezone.utc))
    aliased = Aliased(userId=7)
    decoded = roundtrip(model_work, user, aliased, Tags(["a", "b"]), Loose(anything={"k": [1]}))
    assert decoded[0].joined.tzinfo is not None
    assert stored(model_work, aliased=aliased, tags=Tags(["a"])) == {
        "aliased": {"userId": 7},
        "tags": ["a"],
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"user": {"id": 1}}, r"'user': a value of type dict.*\(accepted: User\)"),
        ({"loose": Loose(anything=object())}, r"'loose': Loose.*whose fields serialize to JSON"),
        (
            {"measured": Measured(value=float("nan"))},
            r"'measured\['value'\]': the float nan is not accepted",
        ),
        ({"text": AsText(value=1)}, r"'text': AsText.*whose model_dump\(\) is an object"),
    ],
)
def test_pydantic_models_refuse_what_does_not_round_trip(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        encode_call(model_work, (), values)


# --- decoding payloads that no longer fit -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", r"stored call of durable work .*:plain is not JSON"),
        ("[1]", r"is not in format version 1"),
        ('{"v":2,"arguments":{}}', r"is not in format version 1"),
        ('{"v":1,"arguments":[]}', r"is not in format version 1"),
        ('{"v":1}', r"is not in format version 1"),
        ('{"v":1,"arguments":{"a":1,"old":2}}', r"passes 'old', which is no longer one of its"),
        ('{"v":1,"arguments":{"a":1}}', r"no longer fits its signature: missing .*'b'"),
        ('{"v":1,"arguments":{"a":"1","b":"x"}}', r"argument 'a' .* expected int, found str"),
        ('{"v":1,"arguments":{"a":1,"b":null}}', r"argument 'b' .* expected str, found null"),
        ('{"v":1,"arguments":{"a":1,"b":"x","c":"1"}}', r"argument 'c' .* expected float"),
    ],
)
def test_payloads_that_no_longer_fit_are_type_errors(text: str, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        decode_call(plain, text)


@pytest.mark.parametrize(
    ("function", "arguments", "message"),
    [
        (temporal, {"when": 1}, r"'when'.*expected datetime as text, found int"),
        (temporal, {"when": "yesterday"}, r"'when'.*Invalid isoformat string"),
        (temporal, {"span": [1, 2]}, r"'span'.*expected timedelta as \[days, seconds, micro"),
        (temporal, {"span": {"days": 1}}, r"'span'.*expected timedelta as a list, found dict"),
        (identifiers, {"amount": "many"}, r"argument 'amount' .* no longer fits its parameter"),
        (enums, {"color": "green"}, r"'color'.*'green' is not a valid Color"),
        (literals, {"mode": "medium"}, r"'mode'.*expected one of 'fast', 'slow', found 'medium'"),
        (containers, {"pair": [1]}, r"'pair'.*expected tuple\[int, str\], found 1 items"),
        (containers, {"pair": {"a": 1}}, r"'pair'.*expected tuple\[int, str\] as a list"),
        (containers, {"items": "x"}, r"'items'.*expected list\[datetime\] as a list, found str"),
        (containers, {"by_name": []}, r"'by_name'.*dict\[str, date\] as an object, found list"),
        (
            keyed,
            {"by_number": [[1]]},
            r"'by_number'.*expected \[key, value\] pairs for dict\[int, str\], found \[1\]",
        ),
        (keyed, {"by_number": [1]}, r"'by_number'.*expected dict\[int, str\] as a list, found int"),
        (unions, {"maybe": "1"}, r"'maybe'.*expected int \| None, found '1'"),
        (unions, {"number": "1"}, r"'number'.*expected int \| float, found '1'"),
        (unions, {"ambiguous": "x"}, r"'ambiguous'.*expected datetime \| str as a list"),
        (unions, {"ambiguous": [2, "x"]}, r"'ambiguous'.*expected \[member index, value\]"),
        (unions, {"ambiguous": [True, "x"]}, r"'ambiguous'.*expected \[member index, value\]"),
        (dataclass_work, {"point": [1, 2]}, r"'point'.*expected Point as an object, found list"),
        (dataclass_work, {"point": {"x": 1, "z": 2}}, r"'point'.*Point has no field 'z'"),
        (dataclass_work, {"point": {"x": 1}}, r"'point'.*missing 1 required .*'y'"),
        (model_work, {"user": {"id": "x"}}, r"'user'.*validation error"),
    ],
)
def test_values_that_no_longer_validate_name_their_parameter(
    function: Callable[..., Any], arguments: dict[str, Any], message: str
) -> None:
    text = json.dumps({"v": 1, "arguments": arguments})
    with pytest.raises(TypeError, match=message) as caught:
        decode_call(function, text)
    assert f"{MODULE}:{function.__qualname__}" in str(caught.value)
    assert caught.value.__cause__ is not None


def test_plain_union_members_are_tried_in_order() -> None:
    # Both members read JSON lists: the first that validates gives the value back.
    assert restore(plain_lists, {"value": ["a"]}) == (["a"],)
    assert restore(plain_lists, {"value": [1]}) == ([1],)


def plain_lists(value: list[int] | list[str]) -> None:
    pass


def test_keyword_arguments_bind_like_a_call() -> None:
    assert decode_call(plain, encode_call(plain, (1,), {"b": "x"})) == ((1, "x"), {})
    assert decode_call(plain, encode_call(plain, (), {"b": "x", "a": 2, "c": 3.5})) == (
        (2, "x", 3.5),
        {},
    )
    with pytest.raises(TypeError, match="multiple values"):
        encode_call(plain, (1,), {"a": 2, "b": "x"})
    with pytest.raises(TypeError, match="missing"):
        encode_call(plain, (1,), {})
    with pytest.raises(TypeError, match="unexpected keyword"):
        encode_call(plain, (1, "x"), {"d": 1})


@pytest.mark.parametrize(
    "offset",
    [
        timedelta(microseconds=1),
        -timedelta(microseconds=1),
        timedelta(seconds=1, microseconds=5),
        -timedelta(hours=5, minutes=30, seconds=7, microseconds=900_000),
    ],
)
def test_offsets_with_microseconds_round_trip(offset: timedelta) -> None:
    when = datetime(2000, 1, 1, 12, 30, 1, 7, tzinfo=timezone(offset))
    at = time(8, 0, tzinfo=timezone(offset))
    decoded = roundtrip(temporal, when, date(2000, 1, 1), at, timedelta(0))
    assert decoded[0].utcoffset() == offset
    assert decoded[2].utcoffset() == offset
