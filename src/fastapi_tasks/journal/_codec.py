# TEMPORARY (replaced by the codec branch): JSON values only.
from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from typing import Any


def function_ref(func: object) -> str:
    ref = f"{getattr(func, '__module__', '')}:{getattr(func, '__qualname__', '')}"
    try:
        found = resolve(ref)
    except ImportError:
        found = None
    if found is not func:
        raise TypeError(f"{func!r} cannot be found again")
    return ref


def resolve(ref: str) -> Callable[..., Any]:
    module, _, qual = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"cannot import {ref}: {exc}") from exc
    return obj  # type: ignore[no-any-return]


def encode_call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    bound = inspect.signature(func).bind(*args, **kwargs)
    return json.dumps(dict(bound.arguments))


def decode_call(func: Callable[..., Any], text: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    sig = inspect.signature(func)
    bound = inspect.BoundArguments(sig, json.loads(text))
    return bound.args, bound.kwargs
