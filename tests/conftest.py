from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastapi_tasks import TaskManager, add_tasks
from fastapi_tasks.testing import run_lifespan

LIFESPAN_WAIT = 30.0
"""Seconds ``serving()`` waits for the app to answer a lifespan message."""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncGenerator[httpx2.AsyncClient, None]:
    """Run the app's lifespan as a server does and give a client that talks to it in process.

    The lifespan runs in a task of its own (``fastapi_tasks.testing.run_lifespan``),
    driven by ASGI lifespan messages sent to the whole app, so nothing it sets in its
    context leaks into the test or its requests. Like uvicorn, hypercorn and
    ``TestClient``, each request gets a copy of the lifespan state.
    """
    async with run_lifespan(app) as state:

        async def with_lifespan_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = state.copy()
            await app(scope, receive, send)

        transport = httpx2.ASGITransport(app=with_lifespan_state)
        client = httpx2.AsyncClient(transport=transport, base_url="http://test")
        async with client:
            yield client


class LifespanDriver:
    """Sends ASGI lifespan messages to an app that runs in a task of its own.

    Start ``run()`` in a task group, then ``await started()``; ``await shut_down()``
    ends the lifespan, and ``raise_for_failure()`` (outside the task group) raises
    what went wrong.
    """

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self._app = app
        self._scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": state,
        }
        self._messages = iter(["lifespan.startup", "lifespan.shutdown"])
        self._shutdown_wanted = anyio.Event()
        self.shutdown_delivered = anyio.Event()
        """Set as the app receives ``lifespan.shutdown``: its shutdown begins."""
        self._answers = {"startup": anyio.Event(), "shutdown": anyio.Event()}
        self._failures: dict[str, str] = {}
        self._error: Exception | None = None

    async def run(self) -> None:
        try:
            await self._app(self._scope, self._receive, self._send)
        except Exception as exc:
            self._error = exc
        finally:
            for answer in self._answers.values():
                answer.set()  # what was not answered by now never will be

    async def _receive(self) -> Message:
        kind = next(self._messages)
        if kind == "lifespan.shutdown":
            await self._shutdown_wanted.wait()
            self.shutdown_delivered.set()
        return {"type": kind}

    async def _send(self, message: Message) -> None:
        phase, _, outcome = str(message["type"]).removeprefix("lifespan.").partition(".")
        if outcome == "failed":
            self._failures[phase] = str(message.get("message", ""))
        self._answers[phase].set()

    async def started(self) -> bool:
        """Wait for the answer to ``lifespan.startup``; whether startup succeeded."""
        with anyio.fail_after(LIFESPAN_WAIT):
            await self._answers["startup"].wait()
        return self._error is None and not self._failures

    async def shut_down(self) -> None:
        """Send ``lifespan.shutdown`` and wait for the app's answer."""
        self._shutdown_wanted.set()
        with anyio.fail_after(LIFESPAN_WAIT):
            await self._answers["shutdown"].wait()

    def raise_for_failure(self) -> None:
        if self._error is not None:
            raise self._error
        for phase, message in self._failures.items():
            raise RuntimeError(f"lifespan {phase} failed: {message}")


def http_scope(path: str = "/") -> Scope:
    """A minimal HTTP scope, for calling an app directly with a send of our own."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def receive_empty_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class Recorder:
    """Collects what background work did, in order."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    async def record(self, value: Any) -> None:
        self.events.append(value)

    def record_sync(self, value: Any) -> None:
        self.events.append(value)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def app() -> FastAPI:
    return FastAPI()


@pytest.fixture
def manager(app: FastAPI) -> TaskManager:
    return add_tasks(app)


@pytest.fixture
def task_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="fastapi_tasks")
    return caplog
