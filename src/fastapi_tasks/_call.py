"""Classify callables (sync or async) and check arguments before any work is created.

``schedule()`` runs on the request path, so the common case (a plain function or a
bound method) is answered from a cache keyed by the code object, which is shared by
every closure made from the same ``def`` and so cannot grow without bound. Anything
unusual falls back to ``inspect``, which also words every error message.
"""

from __future__ import annotations

import functools
import inspect
import sys
import weakref
from collections.abc import Callable, Mapping
from types import CodeType, FunctionType, MethodType
from typing import Any

from ._config import OPTION_NAMES

_CO_VARARGS = inspect.CO_VARARGS
_CO_VARKEYWORDS = inspect.CO_VARKEYWORDS
_CO_COROUTINE = inspect.CO_COROUTINE
_CO_ASYNC_GENERATOR = inspect.CO_ASYNC_GENERATOR
_CO_GENERATOR = inspect.CO_GENERATOR


class _Shape:
    """What a plain function's signature accepts, read from its code object."""

    __slots__ = (
        "fewest",
        "generator",
        "index",
        "is_async",
        "kwonly",
        "kwrequired",
        "most",
        "npos",
        "posnames",
        "posonly",
        "required",
        "varargs",
        "varkw",
    )

    def __init__(self, fn: FunctionType) -> None:
        code = fn.__code__
        npos = code.co_argcount
        names = code.co_varnames
        flags = code.co_flags
        self.is_async = bool(flags & _CO_COROUTINE)
        # Calling a generator function only makes a generator: its body would never run.
        self.generator = (
            "an async generator"
            if flags & _CO_ASYNC_GENERATOR
            else "a generator"
            if flags & _CO_GENERATOR
            else ""
        )
        self.npos = npos
        self.posonly = code.co_posonlyargcount
        self.posnames = names[:npos]
        self.index = {name: i for i, name in enumerate(self.posnames)}
        self.required = npos - len(fn.__defaults__ or ())
        self.kwonly = frozenset(names[npos : npos + code.co_kwonlyargcount])
        kwdefaults = fn.__kwdefaults__ or {}
        self.kwrequired = tuple(name for name in self.kwonly if name not in kwdefaults)
        self.varargs = bool(flags & _CO_VARARGS)
        self.varkw = bool(flags & _CO_VARKEYWORDS)
        # The common call, positional arguments only, is accepted when their number
        # lies in [fewest, most]; anything else takes the full check.
        simple = not self.kwrequired and not self.generator
        self.fewest = self.required if simple else sys.maxsize
        self.most = sys.maxsize if self.varargs else npos

    def accepts(self, given: int, kwargs: Mapping[str, Any]) -> bool:
        if given > self.npos and not self.varargs:
            return False
        if not kwargs:  # the common case, kept short: it runs on every schedule()
            return given >= self.required and not self.kwrequired
        for i in range(given, self.required):
            if i < self.posonly or self.posnames[i] not in kwargs:
                return False
        for key in kwargs:
            at = self.index.get(key)
            if at is None:
                if key not in self.kwonly and not self.varkw:
                    return False
            elif at < self.posonly:
                if not self.varkw:
                    return False
            elif at < given:
                return False
        return all(name in kwargs for name in self.kwrequired)


_shapes: dict[CodeType, _Shape] = {}


def _new_shape(fn: FunctionType) -> _Shape:
    shape = _shapes[fn.__code__] = _Shape(fn)
    return shape


def _describe(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _check_binding(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raise the ``TypeError`` that calling ``fn(*args, **kwargs)`` would raise, if any."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to check against (some builtins)
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"cannot schedule {_describe(fn)}: {exc}{_option_hint(kwargs)}") from None


def _option_hint(kwargs: Mapping[str, Any]) -> str:
    """Point a task option passed to ``schedule()`` at ``task(...)``, where options go."""
    options = sorted(OPTION_NAMES.intersection(kwargs))
    if not options:
        return ""
    given = ", ".join(f"{name}={kwargs[name]!r}" for name in options)
    return (
        f". Task options are not arguments of schedule(): "
        f"use .task({given}).schedule(func, ...) to set them"
    )


def is_broker_job(fn: object) -> bool:
    """Whether ``fn`` is a taskiq task (``@broker.task``), without importing taskiq.

    Only a program that imported taskiq can hold one, so its absence from
    ``sys.modules`` answers for every other program.
    """
    decor = sys.modules.get("taskiq.decor")
    return decor is not None and isinstance(fn, decor.AsyncTaskiqDecoratedTask)


_job_signatures: weakref.WeakKeyDictionary[Any, inspect.Signature] = weakref.WeakKeyDictionary()
"""Signatures of jobs' functions, read once: ``inspect.signature`` is slow."""


def _check_job_binding(job: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """A job's arguments must fit the function the worker will call."""
    func = job.original_func
    signature = _job_signatures.get(func)
    if signature is None:
        try:
            signature = _job_signatures[func] = inspect.signature(func)
        except (TypeError, ValueError):  # pragma: no cover - taskiq wraps Python functions
            return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(
            f"cannot schedule taskiq task {job.task_name!r}: {exc}{_option_hint(kwargs)}"
        ) from None


def _reject(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """The code object says the call cannot work; let inspect word why."""
    _check_binding(fn, args, kwargs)
    # inspect accepted it (a __signature__ override, or Python 3.13's binder letting
    # a positional-only name slip into **kwargs), but the real call would fail.
    raise TypeError(
        f"cannot schedule {_describe(fn)}: these arguments do not fit its parameters "
        f"({len(args)} positional, keywords {sorted(kwargs)}){_option_hint(kwargs)}"
    )


def _refuse_generator(fn: object, kind: str) -> None:
    raise TypeError(
        f"cannot schedule {_describe(fn)}: it is {kind} function, and calling it would only "
        "make a generator without running its body; schedule a coroutine function or a "
        "plain function"
    )


def is_async_callable(fn: object) -> bool:
    """Tell whether calling ``fn`` returns an awaitable that must run on the event loop."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - instances with async __call__
    return not isinstance(fn, type) and inspect.iscoroutinefunction(call)


def _check_function(
    fn: Callable[..., Any],
    func: FunctionType,
    bound: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> bool:
    shape = _shapes.get(func.__code__) or _new_shape(func)
    if not shape.accepts(len(args) + bound, kwargs):
        _reject(fn, args, kwargs)
    if shape.generator:
        _refuse_generator(fn, shape.generator)
    if func.__dict__:
        # functools.wraps or a __signature__: inspect knows the real signature; and
        # inspect.markcoroutinefunction() marks a plain function as async there.
        _check_binding(fn, args, kwargs)
        return shape.is_async or inspect.iscoroutinefunction(func)
    return shape.is_async


def check_call(fn: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool | None:
    """Validate ``fn(*args, **kwargs)`` without calling it; return whether ``fn`` is async.

    ``None`` means ``fn`` is a broker's task (taskiq's ``@broker.task``): a job to
    enqueue, never a function to call here.

    Raises ``TypeError`` for a non-callable, for a coroutine object passed instead
    of a function (the coroutine is closed so it does not warn), and for arguments
    that do not bind to the signature.
    """
    kind = type(fn)
    if kind is FunctionType:
        shape = _shapes.get(fn.__code__)  # type: ignore[attr-defined]
        if (
            shape is not None
            and not kwargs
            and shape.fewest <= len(args) <= shape.most
            and not fn.__dict__
        ):
            return shape.is_async  # the hot path of schedule(), kept inline
        return _check_function(fn, fn, 0, args, kwargs)  # type: ignore[arg-type]
    if kind is MethodType and type(fn.__func__) is FunctionType:  # type: ignore[attr-defined]
        return _check_function(fn, fn.__func__, 1, args, kwargs)  # type: ignore[arg-type,attr-defined]
    if inspect.iscoroutine(fn):
        fn.close()
        raise TypeError(
            f"schedule() got the coroutine object {fn.__qualname__}(); pass the function "
            "and its arguments instead: schedule(func, *args, **kwargs)"
        )
    if not callable(fn):
        raise TypeError(f"schedule() needs a callable, got {fn!r} of type {kind.__qualname__}")
    if is_broker_job(fn):
        _check_job_binding(fn, args, kwargs)
        return None
    _check_binding(fn, args, kwargs)
    target: object = fn
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.isasyncgenfunction(target):
        _refuse_generator(fn, "an async generator")
    if inspect.isgeneratorfunction(target):
        _refuse_generator(fn, "a generator")
    return is_async_callable(fn)
