from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI

from fastapi_tasks import TaskManager, add_tasks


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncGenerator[httpx2.AsyncClient, None]:
    """Run the app's lifespan and give a client that talks to it in process."""
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        client = httpx2.AsyncClient(transport=transport, base_url="http://test")
        async with client:
            yield client


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
