from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from starlette.types import Message, Scope

from fastapi_tasks import TaskManager, add_tasks
from fastapi_tasks.testing import run_lifespan


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncGenerator[httpx2.AsyncClient, None]:
    """Run the app's lifespan as a server does and give a client that talks to it in process."""
    async with run_lifespan(app):
        transport = httpx2.ASGITransport(app=app)
        client = httpx2.AsyncClient(transport=transport, base_url="http://test")
        async with client:
            yield client


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
