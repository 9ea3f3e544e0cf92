"""The one place that touches FastAPI internals (SPEC section 2, rule 8).

FastAPI keeps two ``AsyncExitStack``s in the request scope: one for function-scoped
dependencies (``fastapi_function_astack``), closed right after the endpoint returned,
and one for the request (``fastapi_inner_astack``) around it, which closes after the
response on success. An exception from the endpoint or from any dependency's teardown
before the response, function-scoped ones included, passes through the request stack
before FastAPI turns it into an error response. An exit callback pushed onto that
stack tells us, at no cost to requests that schedule nothing for later, whether the
request failed; there is no public hook for that. ``tests/test_fastapi_compat.py``
fails loudly if FastAPI renames or drops the key or changes the order the exits run
in. Without the stack the library falls back to the response's status: an error
status (400 or above) marks the request failed.

The app's merged telemetry settings (which tracer provider, whether tracing and
operation spans are on) are read from ``app._telemetry`` for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from contextlib import AbstractContextManager, AsyncExitStack
from types import TracebackType
from typing import Any, cast

REQUEST_STACK_KEY = "fastapi_inner_astack"
TELEMETRY_ATTRIBUTE = "_telemetry"

EndpointExit = Callable[[type[BaseException] | None], None]


class _ExitHook(AbstractContextManager[None]):
    """Runs the callback as a plain (sync) exit of the stack.

    A sync exit costs the stack no coroutine, and an object with ``__exit__`` spares
    ``push()`` the ``AttributeError`` it raises and catches for a bare function.
    """

    __slots__ = ("_callback",)

    def __init__(self, callback: EndpointExit) -> None:
        self._callback = callback

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._callback(exc_type)


def on_endpoint_exit(scope: MutableMapping[str, Any], callback: EndpointExit) -> bool:
    """Call ``callback(exc_type)`` when FastAPI's request exit stack closes.

    Whatever fails the request before its response (the endpoint, a dependency's
    teardown, function-scoped ones included) passes through that stack before FastAPI
    turns it into an error response. Returns False when the scope holds no such stack
    (not a FastAPI route, or a FastAPI that changed its internals): then nothing was
    pushed.
    """
    stack = scope.get(REQUEST_STACK_KEY)
    if not isinstance(stack, AsyncExitStack):
        return False
    stack.push(_ExitHook(callback))
    return True


def telemetry_config(app: object) -> Mapping[str, Any] | None:
    """The app's native telemetry settings (``FastAPI(telemetry={...})`` over defaults).

    FastAPI keeps the merged settings only in ``app._telemetry``; there is no public
    getter. None for apps without native telemetry (plain Starlette).
    """
    config: object = getattr(app, TELEMETRY_ATTRIBUTE, None)
    return cast("Mapping[str, Any]", config) if isinstance(config, Mapping) else None
