"""The distributed example runs as documented: the app in process, a real ``taskiq worker``."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import anyio
import pytest

from fastapi_tasks import get_task_manager
from tests.conftest import serving
from tests.taskiq_support import (
    WAIT,
    RedisServer,
    Workers,
    needs_redis,
    redis_server,
    wait_for_list,
)

__all__ = ["redis_server"]  # a fixture, imported for pytest

pytestmark = [needs_redis, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # taskiq runs on asyncio only


async def test_the_example_app_and_its_worker(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    import distributed

    example = importlib.reload(distributed)  # reads REDIS_URL at import
    assert os.environ["REDIS_URL"] == example.REDIS_URL
    workers = Workers(redis_server, "orders", tmp_path, 60_000, target="distributed:broker")
    workers.start(1)
    try:
        async with serving(example.app) as client:
            response = await client.post("/orders/42")
            assert response.status_code == 200
            assert response.json() == {"order_id": 42, "status": "accepted"}
            with anyio.fail_after(WAIT):
                await get_task_manager(example.app).join()
        receipts = await wait_for_list(redis_server, "receipts", 1)
    finally:
        workers.stop()
    assert receipts == ["receipt for order 42"]
