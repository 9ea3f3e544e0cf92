"""The one place that touches FastAPI internals (SPEC section 2, rule 8).

FastAPI closes an ``AsyncExitStack`` stored in ``scope["fastapi_function_astack"]``
right after the endpoint function (and its response serialization) finished, and
before the response is sent. An exit callback pushed onto it tells us, at no cost
to requests that don't use it, the exact "after route" moment and whether the
endpoint raised. There is no public hook for either. ``tests/test_fastapi_compat.py``
fails loudly if FastAPI renames or drops the key; without it the library still
works, handing after-route work over at ``http.response.start`` and learning of
failures only from exceptions that leave the app.

The app's merged telemetry settings (which tracer provider, whether tracing and
operation spans are on) are read from ``app._telemetry`` for the same reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, cast

FUNCTION_STACK_KEY = "fastapi_function_astack"
TELEMETRY_ATTRIBUTE = "_telemetry"

EndpointExit = Callable[
    [type[BaseException] | None, BaseException | None, TracebackType | None],
    Awaitable[None],
]


def on_endpoint_exit(scope: MutableMapping[str, Any], callback: EndpointExit) -> bool:
    """Call ``callback(exc_type, exc, tb)`` when the endpoint finished; False if unsupported."""
    stack = scope.get(FUNCTION_STACK_KEY)
    if not isinstance(stack, AsyncExitStack):
        return False
    stack.push_async_exit(callback)
    return True


def telemetry_config(app: object) -> Mapping[str, Any] | None:
    """The app's native telemetry settings (``FastAPI(telemetry={...})`` over defaults).

    FastAPI keeps the merged settings only in ``app._telemetry``; there is no public
    getter. None for apps without native telemetry (plain Starlette).
    """
    config: object = getattr(app, TELEMETRY_ATTRIBUTE, None)
    return cast("Mapping[str, Any]", config) if isinstance(config, Mapping) else None
