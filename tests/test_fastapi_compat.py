"""Loud checks on the one FastAPI internal we rely on (SPEC section 2, rule 8)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from fastapi_tasks._fastapi_compat import FUNCTION_STACK_KEY, on_endpoint_exit

pytestmark = pytest.mark.anyio


def test_fastapi_still_provides_the_function_exit_stack() -> None:
    app = FastAPI()
    seen: dict[str, Any] = {}

    @app.get("/")
    async def endpoint(request: Request) -> str:
        seen["stack"] = request.scope.get(FUNCTION_STACK_KEY)
        return "ok"

    client = TestClient(app)
    with client:
        client.get("/")
    assert isinstance(seen["stack"], AsyncExitStack), (
        f"FastAPI no longer sets scope[{FUNCTION_STACK_KEY!r}]: after-route timing and failure "
        "detection fall back to http.response.start; update fastapi_tasks/_fastapi_compat.py"
    )


async def test_without_the_stack_the_hook_reports_unsupported() -> None:
    async def callback(*exc_info: Any) -> None:
        pass  # pragma: no cover

    assert on_endpoint_exit({}, callback) is False
    async with AsyncExitStack() as stack:
        assert on_endpoint_exit({FUNCTION_STACK_KEY: stack}, callback) is True
