"""Store a call of durable work as JSON text, and rebuild it after a restart.

The journal keeps a durable call as two strings: the function, as ``"module:qualname"``
(``function_ref``, found again by ``resolve``), and its arguments (``encode_call``)::

    {"v":1,"arguments":{"user_id":42,"when":"2026-05-09T07:35:25+02:00","tags":["a","b"]}}

``v`` is the format version. ``arguments`` maps the name of each parameter that was *passed* to
its encoded value; defaults that were not passed are not stored, so the function's defaults at
restart apply. A ``*args`` parameter is stored as a list and a ``**kwargs`` parameter as an
object, each item encoded against the parameter's annotation.

Values are encoded against the parameter's annotation, never by looking at the value alone, so
decoding needs no type tags and cannot guess wrong:

- JSON values (None, bool, int, str, finite float, list, dict with str keys) are stored as they
  are wherever the annotation allows them. ``Any``, ``object``, no annotation and annotations
  this module does not know (``Sequence[int]``, a plain class) accept exactly these.
- ``datetime``, ``date``, ``time``: ``isoformat()`` text (an aware value keeps its UTC offset, a
  naive one stays naive); ``timedelta``: ``[days, seconds, microseconds]``; ``UUID`` and
  ``Decimal``: their text; an ``Enum``: its value; a dataclass: an object of its ``init``
  fields, each encoded against the field's annotation; a pydantic model:
  ``model_dump(mode="json", by_alias=True, round_trip=True)``.
- ``tuple``, ``set`` and ``frozenset``: lists. ``dict[K, V]``: an object when ``K`` is ``str``
  (or ``Any``, which then means ``str``), else a list of ``[key, value]`` pairs.
- ``Literal``: the literal (an enum member by its value). ``Annotated``, ``NewType`` and a
  ``TypeVar`` (its bound or constraints) stand for the type they wrap.
- A union is stored untagged when the JSON shape of the value tells its member (``int | None``,
  ``str | list[int]``), otherwise as ``[index, value]`` with the index of the member that took
  it (``datetime | str``: both are JSON text).

A value the annotation does not describe is a ``TypeError`` from ``encode_call``, so every call
it accepts decodes to equal arguments (of the same types) in a process running the same code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import importlib
import inspect
import json
import math
import types
import typing
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeGuard, TypeVar, cast, get_args, get_origin, get_type_hints
from uuid import UUID

import typing_extensions
from pydantic import BaseModel, RootModel

__all__ = ["decode_call", "encode_call", "function_ref", "resolve"]

_FORMAT_VERSION = 1
# Built once: json.dumps() with options makes a new encoder on every call.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)

_NONE_TYPE = type(None)
_KIND: dict[type, str] = {
    _NONE_TYPE: "null",
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    list: "list",
    dict: "dict",
}
_ALL_KINDS = frozenset(_KIND.values())
_JSON_VALUES = "JSON values (None, bool, int, finite float, str, list, dict with str keys)"
_HOW_TO_FIX = (
    "Durable work stores its arguments as JSON: dataclasses, pydantic models, datetime, date, "
    "time, timedelta, UUID, Decimal, enums, tuples and sets are stored only where the "
    "parameter's annotation names them, and nothing else is."
)


class _Refusal(Exception):
    """A value its annotation does not describe; containers add to ``path`` on the way out."""

    def __init__(self, value: object, accepted: str, got: str | None = None) -> None:
        super().__init__(accepted)
        self.accepted = accepted
        self.got = got if got is not None else f"a value of type {_type_name(type(value))}"
        self.path: list[str] = []  # innermost first


class _Codec:
    """How one annotation is written to JSON and read back.

    ``kinds`` are the JSON types ``encode`` may produce (``_KIND`` values). ``plain`` means
    the value is its own JSON: ``encode`` and ``decode`` return what they are given (or an
    equal copy, of the same types), so any plain codec that accepts a JSON value decodes it to
    the same thing.
    """

    __slots__ = ("decode", "describe", "encode", "kinds", "plain")

    def __init__(
        self,
        encode: Callable[[Any], Any],
        decode: Callable[[Any], Any],
        describe: str,
        kinds: frozenset[str],
        *,
        plain: bool = False,
    ) -> None:
        self.encode = encode
        self.decode = decode
        self.describe = describe
        self.kinds = kinds
        self.plain = plain


class _Plan:
    """A function's signature and one codec per parameter, built once per function."""

    __slots__ = ("codecs", "name", "names", "required", "signature")

    def __init__(self, name: str, signature: inspect.Signature, codecs: dict[str, _Codec]) -> None:
        self.name = name
        self.signature = signature
        self.codecs = codecs
        # Parameters that all take a value by position or by name: then a call binds
        # without Signature.bind(), which costs more than the rest of the encoding.
        plain = all(
            parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            for parameter in signature.parameters.values()
        )
        self.names: tuple[str, ...] | None = tuple(signature.parameters) if plain else None
        self.required = tuple(
            name
            for name, parameter in signature.parameters.items()
            if parameter.default is inspect.Parameter.empty
        )

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The arguments given, by parameter name (those left to their defaults are not)."""
        names = self.names
        if names is not None and len(args) <= len(names):
            arguments = dict(zip(names, args, strict=False))  # fewer args: defaults
            if all(key in names and key not in arguments for key in kwargs):
                arguments.update(kwargs)
                if all(name in arguments for name in self.required):
                    return arguments
        return dict(self.signature.bind(*args, **kwargs).arguments)


_PLANS: weakref.WeakKeyDictionary[Callable[..., Any], _Plan] = weakref.WeakKeyDictionary()


# --- the public API ---------------------------------------------------------------------


_REFS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
"""Functions already found again by name: ``schedule()`` checks once per function."""


def function_ref(func: object) -> str:
    """Return ``"module:qualname"`` for a function that ``resolve`` finds again after a restart.

    Raises:
        TypeError: ``func`` is not a module-level function reachable under its own name
            (a lambda, a nested function, a bound method, a ``functools.partial``, a callable
            instance, a class, a builtin, or a name bound to something else).
    """
    try:
        return _REFS[func]
    except (KeyError, TypeError):  # not seen yet, or not weakly referable
        pass
    ref = _find_ref(func)
    with contextlib.suppress(TypeError):
        _REFS[func] = ref
    return ref


def _find_ref(func: object) -> str:
    if isinstance(func, functools.partial):
        raise TypeError(
            f"{func!r} is a functools.partial; durable work is found again after a restart "
            "by module and name, so pass a module-level function and the bound values as "
            "arguments"
        )
    if inspect.ismethod(func):
        raise TypeError(
            f"{_call_name(func)} is a bound method; durable work is found again after a "
            "restart by module and name, so pass a module-level function that takes what "
            "the method needs as arguments"
        )
    if inspect.isbuiltin(func):
        raise TypeError(
            f"{_call_name(func)} is a builtin; wrap it in a module-level function defined "
            "with def to run it as durable work"
        )
    if isinstance(func, type):
        raise TypeError(
            f"{_call_name(func)} is a class; wrap the work in a module-level function "
            "defined with def to run it as durable work"
        )
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(
            f"{func!r} (of type {_type_name(type(func))}) is not a function; durable work "
            "must be a module-level function defined with def (or async def)"
        )
    ref = f"{module}:{qualname}"
    if "<lambda>" in qualname:
        raise TypeError(f"{ref} is a lambda; define durable work with def at module level")
    if "<locals>" in qualname:
        raise TypeError(
            f"{ref} is defined inside a function; move it to module level so that it can "
            "be found again after a restart"
        )
    try:
        found = resolve(ref)
    except ImportError as exc:
        raise TypeError(
            f"{ref} cannot be found again by its name ({exc}); define durable work at "
            "module level under its own name"
        ) from exc
    if found is not func:
        raise TypeError(
            f"{ref} names another object than the function given; keep durable work "
            "reachable under its own name (a decorator must keep __module__ and __qualname__, "
            "functools.wraps does, and the module must bind the decorated function to it)"
        )
    return ref


def resolve(ref: str) -> Callable[..., Any]:
    """Import the module of a ``"module:qualname"`` reference and return what it names.

    Raises:
        ImportError: the module does not import, an attribute is missing, or the result is
            not callable.
    """
    module_name, _, qualname = ref.partition(":")
    if not module_name or not qualname:
        raise ImportError(f"{ref!r} is not a 'module:qualname' reference")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:  # importing runs arbitrary code: any failure means "not found"
        raise ImportError(f"cannot import {ref!r}: {exc!r}", name=module_name) from exc
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ImportError(
                f"cannot import {ref!r}: no attribute {part!r}", name=module_name
            ) from exc
    if not callable(target):
        raise ImportError(
            f"cannot import {ref!r}: it is a {_type_name(type(target))}, not callable",
            name=module_name,
        )
    return target


def encode_call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Return the arguments of a call of ``func`` as compact JSON text (see the module doc).

    Raises:
        TypeError: the arguments do not bind to ``func``'s signature, or a value is not one
            its parameter's annotation describes (the message names both).
    """
    plan = _plan(func)
    try:
        arguments = plan.bind(args, kwargs)
    except TypeError as exc:
        raise TypeError(f"durable work {plan.name}: {exc}") from exc
    codecs = plan.codecs
    encoded: dict[str, Any] = {}
    for name, value in arguments.items():
        try:
            encoded[name] = codecs[name].encode(value)
        except _Refusal as refusal:
            where = name + "".join(reversed(refusal.path))
            raise TypeError(
                f"durable work {plan.name} cannot store argument '{where}': {refusal.got} "
                f"is not accepted there (accepted: {refusal.accepted}). {_HOW_TO_FIX}"
            ) from None
        except RecursionError:
            raise TypeError(
                f"durable work {plan.name} cannot store argument {name!r}: it is nested too "
                "deeply or contains itself"
            ) from None
    return _JSON.encode({"v": _FORMAT_VERSION, "arguments": encoded})


def decode_call(func: Callable[..., Any], text: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Rebuild ``(args, kwargs)`` from ``encode_call``'s text against ``func`` as it is now.

    Raises:
        TypeError: the text is not a stored call, or it no longer fits ``func`` (a parameter
            was removed, renamed or added without a default, or a value does not validate
            against the current annotation); the message names the parameter.
    """
    plan = _plan(func)
    try:
        payload: Any = json.loads(text)
    except ValueError as exc:
        raise TypeError(f"stored call of durable work {plan.name} is not JSON: {exc}") from exc
    stored: dict[str, Any] | None = None
    if _is_dict(payload) and payload.get("v") == _FORMAT_VERSION:
        arguments_data = payload.get("arguments")
        if _is_dict(arguments_data):
            stored = arguments_data
    if stored is None:
        raise TypeError(
            f"stored call of durable work {plan.name} is not in format version "
            f"{_FORMAT_VERSION}: {text[:200]!r}"
        )
    arguments: OrderedDict[str, Any] = OrderedDict()
    for name, data in stored.items():
        codec = plan.codecs.get(name)
        if codec is None:
            raise TypeError(
                f"stored call of durable work {plan.name} passes {name!r}, which is no "
                "longer one of its parameters"
            )
        try:
            arguments[name] = codec.decode(data)
        except Exception as exc:  # a dataclass or model constructor may raise anything
            raise TypeError(
                f"stored argument {name!r} of durable work {plan.name} no longer fits its "
                f"parameter: {exc}"
            ) from exc
    bound = inspect.BoundArguments(plan.signature, arguments)
    call_args, call_kwargs = bound.args, bound.kwargs
    try:
        plan.signature.bind(*call_args, **call_kwargs)
    except TypeError as exc:
        raise TypeError(
            f"stored call of durable work {plan.name} no longer fits its signature: {exc}"
        ) from exc
    return call_args, call_kwargs


# --- plans ------------------------------------------------------------------------------


def _plan(func: Callable[..., Any]) -> _Plan:
    try:
        return _PLANS[func]
    except KeyError:
        pass
    except TypeError:  # not weakly referable (a builtin): build it every time, it is rare
        return _make_plan(func)
    plan = _make_plan(func)
    _PLANS[func] = plan
    return plan


def _make_plan(func: Callable[..., Any]) -> _Plan:
    name = _call_name(func)
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"durable work {name}: cannot read its signature ({exc})") from exc
    # A callable instance's annotations are on its class's __call__, as its signature is.
    annotated = func if inspect.isroutine(func) or isinstance(func, type) else type(func).__call__
    hints = _hints(annotated)
    building: dict[type, _Codec] = {}
    codecs: dict[str, _Codec] = {}
    for parameter in signature.parameters.values():
        codec = _build(hints.get(parameter.name, Any), building)
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            codec = _homogeneous(tuple, codec)
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            codec = _str_dict(_STR, codec)
        codecs[parameter.name] = codec
    return _Plan(name, signature, codecs)


def _hints(obj: object) -> dict[str, Any]:
    try:
        return get_type_hints(obj, include_extras=True)
    except Exception:  # evaluating annotations runs arbitrary code; then take them as absent
        return {}


def _call_name(func: object) -> str:
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}:{qualname}"
    return repr(func)


def _is_list(value: object) -> TypeGuard[list[Any]]:
    return type(value) is list


def _is_tuple(value: object) -> TypeGuard[tuple[Any, ...]]:
    return type(value) is tuple


def _is_dict(value: object) -> TypeGuard[dict[Any, Any]]:
    return type(value) is dict


def _type_name(cls: type[object]) -> str:
    return cls.__qualname__


def _json_kind(data: object) -> str:
    return _KIND.get(type(data), _type_name(type(data)))


# --- building codecs from annotations -----------------------------------------------------


def _build(annotation: Any, building: dict[type, _Codec]) -> _Codec:
    if annotation is Any or annotation is typing_extensions.Any or annotation is object:
        return _JSON_CODEC
    if annotation is None or annotation is _NONE_TYPE:
        return _NONE
    if isinstance(annotation, TypeVar):
        if annotation.__bound__ is not None:
            return _build(annotation.__bound__, building)
        if annotation.__constraints__:
            return _union([_build(c, building) for c in annotation.__constraints__])
        return _JSON_CODEC
    # Bare typing.Tuple has no arguments, like tuple[()] on Python 3.11 and later.
    if annotation is typing.Tuple:  # noqa: UP006
        return _build(tuple[Any, ...], building)
    supertype = getattr(annotation, "__supertype__", None)
    if supertype is not None:  # a NewType
        return _build(supertype, building)
    origin = get_origin(annotation)
    if origin is not None:
        return _build_generic(origin, get_args(annotation), building)
    if isinstance(annotation, type):
        return _build_class(annotation, building)
    # A string that did not resolve, a ForwardRef, a special form we do not know.
    return _JSON_CODEC


def _build_class(cls: type[object], building: dict[type, _Codec]) -> _Codec:
    codec = _CLASS_CODECS.get(cls)
    if codec is not None:
        return codec
    bare = _BARE_CONTAINERS.get(cls)
    if bare is not None:
        return _build(bare, building)
    if issubclass(cls, enum.Enum):
        return _enum(cls)
    if issubclass(cls, BaseModel):
        return _model(cls)
    if dataclasses.is_dataclass(cls):
        return _dataclass(cls, building)
    return _JSON_CODEC


def _build_generic(origin: Any, args: tuple[Any, ...], building: dict[type, _Codec]) -> _Codec:
    if origin is typing.Union or origin is types.UnionType:
        return _union([_build(member, building) for member in args])
    if origin is typing.Literal:
        return _literal(args)
    if origin is typing.Annotated:
        return _build(args[0], building)
    if origin is list:
        return _homogeneous(list, _build(args[0] if args else Any, building))
    if origin is set or origin is frozenset:
        return _homogeneous(origin, _build(args[0] if args else Any, building))
    if origin is tuple:
        if len(args) == 2 and args[1] is ...:
            return _homogeneous(tuple, _build(args[0], building))
        # Python 3.10 spells tuple[()] as tuple[((),)].
        return _fixed_tuple([_build(item, building) for item in args if item != ()])
    if origin is dict:
        key, value = args or (Any, Any)
        value_codec = _build(value, building)
        key_codec = _STR if key is Any else _build(key, building)
        if key_codec.plain and key_codec.kinds == frozenset({"str"}):
            return _str_dict(key_codec, value_codec)
        return _pair_dict(key_codec, value_codec)
    if isinstance(origin, type) and dataclasses.is_dataclass(origin):
        # A generic dataclass: its type parameters are taken as Any.
        return _dataclass(cast("type[object]", origin), building)
    return _JSON_CODEC


# --- codecs -------------------------------------------------------------------------------


def _encode_json(value: object) -> object:
    cls = type(value)
    if cls is str or cls is int or cls is bool or value is None:
        return value
    if type(value) is float:
        if math.isfinite(value):
            return value
        raise _Refusal(value, "finite floats", got=f"the float {value!r}")
    if _is_list(value):
        for index, item in enumerate(value):
            try:
                _encode_json(item)
            except _Refusal as refusal:
                refusal.path.append(f"[{index}]")
                raise
        return value
    if _is_dict(value):
        for key, item in cast("dict[object, object]", value).items():
            key_type = type(key)
            if key_type is not str:
                raise _Refusal(
                    key, "str keys", got=f"a key of type {_type_name(key_type)} ({key!r})"
                )
            try:
                _encode_json(item)
            except _Refusal as refusal:
                refusal.path.append(f"[{key!r}]")
                raise
        return value
    raise _Refusal(value, _JSON_VALUES)


def _identity(data: Any) -> Any:
    return data


_JSON_CODEC = _Codec(_encode_json, _identity, _JSON_VALUES, _ALL_KINDS, plain=True)


def _exact(describe: str, *classes: type) -> _Codec:
    allowed = frozenset(classes)

    def encode(value: Any) -> Any:
        if type(value) in allowed:
            return value
        raise _Refusal(value, describe)

    def decode(data: Any) -> Any:
        if type(data) in allowed:
            return data
        raise ValueError(f"expected {describe}, found {_json_kind(data)}")

    return _Codec(encode, decode, describe, frozenset(_KIND[c] for c in classes), plain=True)


def _encode_float(value: object) -> object:
    cls = type(value)
    if type(value) is float:
        if math.isfinite(value):
            return value
        raise _Refusal(value, "finite floats", got=f"the float {value!r}")
    if cls is int or cls is bool:
        return value
    raise _Refusal(value, "float (finite) or int")


def _exact_offset(cls: type[datetime] | type[time], text: str) -> Any:
    """``fromisoformat()``, keeping an offset with microseconds (``+00:00:00.000001``).

    ``fromisoformat()`` reads such an offset as zero when it is under a second
    (CPython 3.10-3.13), so the last sixteen characters are read here instead.
    """
    value = cls.fromisoformat(text)
    if value.tzinfo is not None and text[-7:-6] == ".":
        size = timedelta(
            hours=int(text[-15:-13]),
            minutes=int(text[-12:-10]),
            seconds=int(text[-9:-7]),
            microseconds=int(text[-6:]),
        )
        value = value.replace(tzinfo=timezone(-size if text[-16] == "-" else size))
    return value


def _text(
    cls: type[object], to_text: Callable[[Any], str], from_text: Callable[[str], Any]
) -> _Codec:
    describe = cls.__qualname__

    def encode(value: Any) -> Any:
        if type(value) is cls:
            return to_text(value)
        raise _Refusal(value, describe)

    def decode(data: Any) -> Any:
        if type(data) is str:
            return from_text(data)
        raise ValueError(f"expected {describe} as text, found {_json_kind(data)}")

    return _Codec(encode, decode, describe, frozenset({"str"}))


def _decimal_text(value: Decimal) -> str:
    if value.is_nan():  # NaN != NaN: it would not decode to an equal argument
        raise _Refusal(value, "Decimal that is not NaN", got=f"the Decimal {value}")
    return str(value)


def _encode_timedelta(value: Any) -> Any:
    if type(value) is timedelta:
        return [value.days, value.seconds, value.microseconds]
    raise _Refusal(value, "timedelta")


def _decode_timedelta(data: Any) -> Any:
    parts = _expect_list(data, "timedelta")
    if len(parts) == 3 and all(type(part) is int for part in parts):
        return timedelta(days=parts[0], seconds=parts[1], microseconds=parts[2])
    raise ValueError(f"expected timedelta as [days, seconds, microseconds], found {data!r}")


_STR = _exact("str", str)
_NONE = _exact("None", _NONE_TYPE)
_CLASS_CODECS: dict[type, _Codec] = {
    bool: _exact("bool", bool),
    # bool is an int: passing True where an int is expected type-checks, and stays True.
    int: _exact("int", int, bool),
    float: _Codec(
        _encode_float,
        _exact("float", float, int, bool).decode,
        "float",
        frozenset({"float", "int", "bool"}),
        plain=True,
    ),
    str: _STR,
    _NONE_TYPE: _NONE,
    datetime: _text(datetime, datetime.isoformat, lambda text: _exact_offset(datetime, text)),
    date: _text(date, date.isoformat, date.fromisoformat),
    time: _text(time, time.isoformat, lambda text: _exact_offset(time, text)),
    UUID: _text(UUID, str, UUID),
    Decimal: _text(Decimal, _decimal_text, Decimal),
    timedelta: _Codec(_encode_timedelta, _decode_timedelta, "timedelta", frozenset({"list"})),
}


_BARE_CONTAINERS: dict[type, Any] = {
    list: list[Any],
    tuple: tuple[Any, ...],
    set: set[Any],
    frozenset: frozenset[Any],
    dict: dict[Any, Any],
}


def _encode_items(encode: Callable[[Any], Any], values: Iterable[Any]) -> list[Any]:
    encoded: list[Any] = []
    for index, value in enumerate(values):
        try:
            encoded.append(encode(value))
        except _Refusal as refusal:
            refusal.path.append(f"[{index}]")
            raise
    return encoded


def _expect_list(data: object, describe: str) -> list[Any]:
    if _is_list(data):
        return data
    raise ValueError(f"expected {describe} as a list, found {_json_kind(data)}")


def _expect_dict(data: object, describe: str) -> dict[str, Any]:
    if _is_dict(data):
        return data
    raise ValueError(f"expected {describe} as an object, found {_json_kind(data)}")


def _homogeneous(container: Callable[[list[Any]], Any], item: _Codec) -> _Codec:
    """``list[T]``, ``tuple[T, ...]``, ``set[T]``, ``frozenset[T]``."""
    describe = f"{getattr(container, '__qualname__', '')}[{item.describe}]"
    item_encode = item.encode
    item_decode = item.decode

    def encode(value: Any) -> Any:
        if type(value) is container:
            return _encode_items(item_encode, cast("Iterable[Any]", value))
        raise _Refusal(value, describe)

    def decode(data: Any) -> Any:
        decoded = [item_decode(x) for x in _expect_list(data, describe)]
        return decoded if container is list else container(decoded)

    return _Codec(
        encode, decode, describe, frozenset({"list"}), plain=container is list and item.plain
    )


def _fixed_tuple(items: list[_Codec]) -> _Codec:
    describe = f"tuple[{', '.join(item.describe for item in items) or '()'}]"
    size = len(items)

    def encode(value: Any) -> Any:
        if _is_tuple(value) and len(value) == size:
            return _encode_items(
                lambda pair: pair[0].encode(pair[1]), zip(items, value, strict=True)
            )
        raise _Refusal(value, describe)

    def decode(data: Any) -> Any:
        data = _expect_list(data, describe)
        if len(data) != size:
            raise ValueError(f"expected {describe}, found {len(data)} items")
        return tuple(item.decode(x) for item, x in zip(items, data, strict=True))

    return _Codec(encode, decode, describe, frozenset({"list"}))


def _encode_key(key: _Codec, value: object) -> Any:
    try:
        return key.encode(value)
    except _Refusal as refusal:
        refusal.got = f"a key of type {_type_name(type(value))} ({value!r})"
        raise


def _encode_at(codec: _Codec, value: object, where: str) -> Any:
    try:
        return codec.encode(value)
    except _Refusal as refusal:
        refusal.path.append(where)
        raise


def _str_dict(key: _Codec, value: _Codec) -> _Codec:
    """``dict[str, V]`` (also ``**kwargs``): a JSON object."""
    describe = f"dict[{key.describe}, {value.describe}]"

    def encode(mapping: Any) -> Any:
        if not _is_dict(mapping):
            raise _Refusal(mapping, describe)
        encoded: dict[str, Any] = {}
        for k, v in mapping.items():
            encoded[_encode_key(key, k)] = _encode_at(value, v, f"[{k!r}]")
        return encoded

    def decode(data: Any) -> Any:
        return {key.decode(k): value.decode(v) for k, v in _expect_dict(data, describe).items()}

    return _Codec(encode, decode, describe, frozenset({"dict"}), plain=value.plain)


def _pair_dict(key: _Codec, value: _Codec) -> _Codec:
    """``dict[K, V]`` whose keys are not text: a list of ``[key, value]`` pairs."""
    describe = f"dict[{key.describe}, {value.describe}]"

    def encode(mapping: Any) -> Any:
        if not _is_dict(mapping):
            raise _Refusal(mapping, describe)
        encoded: list[Any] = []
        for k, v in mapping.items():
            encoded.append([_encode_key(key, k), _encode_at(value, v, f"[{k!r}]")])
        return encoded

    def decode(data: Any) -> Any:
        decoded: dict[Any, Any] = {}
        for pair in _expect_list(data, describe):
            if len(_expect_list(pair, describe)) != 2:
                raise ValueError(f"expected [key, value] pairs for {describe}, found {pair!r}")
            decoded[key.decode(pair[0])] = value.decode(pair[1])
        return decoded

    return _Codec(encode, decode, describe, frozenset({"list"}))


def _union(members: list[_Codec]) -> _Codec:
    describe = " | ".join(member.describe for member in members)
    by_kind: dict[str, list[_Codec]] = {}
    for member in members:
        for kind in member.kinds:
            by_kind.setdefault(kind, []).append(member)
    # Untagged only when the JSON type of a value tells which member decodes it, or when the
    # members that share a JSON type all decode it to itself (then any of them gives it back).
    tagged = any(
        len(sharing) > 1 and not all(member.plain for member in sharing)
        for sharing in by_kind.values()
    )
    if tagged:
        return _Codec(
            _tagged_encoder(members, describe),
            _tagged_decoder(members, describe),
            describe,
            frozenset({"list"}),
        )

    def encode(value: Any) -> Any:
        for member in members:
            try:
                return member.encode(value)
            except _Refusal:
                pass
        raise _Refusal(value, describe)

    def decode(data: Any) -> Any:
        sharing = by_kind.get(_json_kind(data), [])
        if len(sharing) == 1:
            return sharing[0].decode(data)
        for member in sharing:
            try:
                return member.decode(data)
            except ValueError:
                pass
        raise ValueError(f"expected {describe}, found {data!r}")

    return _Codec(
        encode,
        decode,
        describe,
        frozenset(by_kind),
        plain=all(member.plain for member in members),
    )


def _tagged_encoder(members: list[_Codec], describe: str) -> Callable[[Any], Any]:
    def encode(value: Any) -> Any:
        for index, member in enumerate(members):
            try:
                return [index, member.encode(value)]
            except _Refusal:
                pass
        raise _Refusal(value, describe)

    return encode


def _tagged_decoder(members: list[_Codec], describe: str) -> Callable[[Any], Any]:
    def decode(data: Any) -> Any:
        tag = _expect_list(data, describe)
        if len(tag) == 2 and type(tag[0]) is int and 0 <= tag[0] < len(members):
            return members[tag[0]].decode(tag[1])
        raise ValueError(f"expected [member index, value] for {describe}, found {data!r}")

    return decode


def _literal(values: tuple[Any, ...]) -> _Codec:
    describe = "one of " + ", ".join(repr(value) for value in values)
    choices: list[tuple[Any, Any]] = []
    for value in values:
        encoded = value.value if isinstance(value, enum.Enum) else value
        # bytes literals, and members whose value is no JSON scalar, are left out: refused.
        if type(encoded) in (_NONE_TYPE, bool, int, str):
            choices.append((value, encoded))

    def encode(given: Any) -> Any:
        for value, encoded in choices:
            if type(given) is type(value) and given == value:
                return encoded
        raise _Refusal(given, describe)

    def decode(data: Any) -> Any:
        for value, encoded in choices:
            if type(data) is type(encoded) and data == encoded:
                return value
        raise ValueError(f"expected {describe}, found {data!r}")

    return _Codec(
        encode,
        decode,
        describe,
        frozenset(_KIND[type(encoded)] for _, encoded in choices),
        plain=all(value is encoded for value, encoded in choices),
    )


def _enum(cls: type[enum.Enum]) -> _Codec:
    describe = f"a member of {cls.__qualname__}"

    def encode(value: Any) -> Any:
        if type(value) is not cls:
            raise _Refusal(value, describe)
        try:
            return _encode_json(value.value)
        except _Refusal:
            raise _Refusal(
                value, f"{describe} whose value is a JSON value", got=f"{value!r}"
            ) from None

    kinds = frozenset(_KIND[type(m.value)] for m in cls if type(m.value) in _KIND)
    return _Codec(encode, cls, describe, kinds)


def _model(cls: type[BaseModel]) -> _Codec:
    describe = cls.__qualname__
    is_root = issubclass(cls, RootModel)

    def encode(value: Any) -> Any:
        if type(value) is not cls:
            raise _Refusal(value, describe)
        try:
            data = value.model_dump(mode="json", by_alias=True, round_trip=True)
        except ValueError as exc:
            raise _Refusal(
                value, f"{describe} whose fields serialize to JSON", got=f"{value!r} ({exc})"
            ) from None
        if not is_root and type(data) is not dict:
            # Its kinds say "object": anything else could be decoded by another union member.
            raise _Refusal(value, f"{describe} whose model_dump() is an object", got=f"{value!r}")
        return _encode_json(data)

    return _Codec(
        encode, cls.model_validate, describe, _ALL_KINDS if is_root else frozenset({"dict"})
    )


def _dataclass(cls: type[object], building: dict[type, _Codec]) -> _Codec:
    known = building.get(cls)
    if known is not None:  # a dataclass that contains itself, or one used twice
        return known
    describe = cls.__qualname__
    fields: dict[str, _Codec] = {}
    problem: list[str] = []  # filled in once the fields are known

    def encode(value: Any) -> Any:
        if type(value) is not cls:
            raise _Refusal(value, describe)
        if problem:
            raise _Refusal(value, problem[0], got=f"a {describe}")
        encoded: dict[str, Any] = {}
        for name, field in fields.items():
            try:
                encoded[name] = field.encode(getattr(value, name))
            except _Refusal as refusal:
                refusal.path.append(f".{name}")
                raise
        return encoded

    def decode(data: Any) -> Any:
        given = _expect_dict(data, describe)
        unknown = [name for name in given if name not in fields]
        if unknown:
            raise ValueError(f"{describe} has no field {unknown[0]!r}")
        return cls(**{name: fields[name].decode(item) for name, item in given.items()})

    codec = _Codec(encode, decode, describe, frozenset({"dict"}))
    building[cls] = codec
    hints = _hints(cls)
    for field in dataclasses.fields(cast(Any, cls)):
        if field.init:
            fields[field.name] = _build(hints.get(field.name, Any), building)
    parameters = inspect.signature(cls).parameters
    needed = [
        name
        for name, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and name not in fields
    ]
    if needed or any(name not in parameters for name in fields):
        # Its constructor cannot be called with its init fields alone (a required InitVar, a
        # hand-written __init__): refused now rather than failing after a restart.
        problem.append(
            f"dataclasses whose constructor takes exactly their init fields ({describe} does not)"
        )
    return codec
