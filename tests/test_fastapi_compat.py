"""Loud checks on the one FastAPI internal we rely on (SPEC section 2, rule 8).

Not only that the request exit stack exists, but what we depend on it for: the
order its exits run in relative to the endpoint, function-scoped and request-scoped
dependencies, and the response.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from fastapi_tasks._fastapi_compat import REQUEST_STACK_KEY, on_endpoint_exit

pytestmark = pytest.mark.anyio

UPDATE = (
    "update fastapi_tasks/_fastapi_compat.py: failure detection for after-route and "
    "after-response work falls back to the response status without it"
)


def test_fastapi_still_provides_the_request_exit_stack() -> None:
    app = FastAPI()
    seen: dict[str, Any] = {}

    @app.get("/")
    async def endpoint(request: Request) -> str:
        seen["stack"] = request.scope.get(REQUEST_STACK_KEY)
        return "ok"

    client = TestClient(app)
    with client:
        client.get("/")
    assert isinstance(seen["stack"], AsyncExitStack), (
        f"FastAPI no longer sets scope[{REQUEST_STACK_KEY!r}]; {UPDATE}"
    )


def app_with_a_timeline(outcome: str) -> tuple[FastAPI, list[str]]:
    """An app whose endpoint pushes our hook and records when each exit and send happens."""
    timeline: list[str] = []

    async def function_scoped() -> AsyncGenerator[None, None]:
        yield
        timeline.append("function-scoped teardown")
        if outcome == "teardown raises":
            raise HTTPException(409, "conflict")

    async def request_scoped() -> AsyncGenerator[None, None]:
        yield
        timeline.append("request-scoped teardown")

    app = FastAPI()

    @app.get("/")
    async def endpoint(
        request: Request,
        # Defaults rather than Annotated: the dependencies are local to this function.
        _a: None = Depends(function_scoped, scope="function"),
        _b: None = Depends(request_scoped),
    ) -> str:
        def hook(exc_type: type[BaseException] | None) -> None:
            timeline.append(f"hook: {exc_type.__name__ if exc_type else 'clean'}")

        assert on_endpoint_exit(request.scope, hook)
        if outcome == "endpoint raises":
            raise HTTPException(404, "missing")
        return "ok"

    return app, timeline


def noting(app: FastAPI, timeline: list[str]) -> Any:
    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_noted(message: Message) -> None:
            if message["type"] == "http.response.start":
                timeline.append(f"response starts: {message['status']}")
            await send(message)

        await app(scope, receive, send_noted)

    return asgi


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (
            "success",
            [
                "function-scoped teardown",
                "response starts: 200",
                "hook: clean",
                "request-scoped teardown",
            ],
        ),
        (
            "teardown raises",
            ["function-scoped teardown", "hook: HTTPException", "response starts: 409"],
        ),
        (
            # The dependencies get the exception at their yield: no teardown line.
            "endpoint raises",
            ["hook: HTTPException", "response starts: 404"],
        ),
    ],
)
def test_the_hook_sees_every_failure_before_the_error_response(
    outcome: str, expected: list[str]
) -> None:
    app, timeline = app_with_a_timeline(outcome)
    client = TestClient(noting(app, timeline))
    with client:
        client.get("/")
    assert timeline == expected, f"FastAPI changed the order of its exits; {UPDATE}"


async def test_the_hook_reports_how_the_stack_closed() -> None:
    seen: list[type[BaseException] | None] = []
    assert on_endpoint_exit({}, seen.append) is False  # no stack: unsupported
    async with AsyncExitStack() as stack:
        assert on_endpoint_exit({REQUEST_STACK_KEY: stack}, seen.append) is True

    async def failing_endpoint() -> None:
        async with AsyncExitStack() as stack:
            on_endpoint_exit({REQUEST_STACK_KEY: stack}, seen.append)
            raise KeyError("endpoint failed")

    with pytest.raises(KeyError):
        await failing_endpoint()
    assert seen == [None, KeyError]
