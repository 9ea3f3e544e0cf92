"""The jobs of the distributed tests, and the broker a ``taskiq worker`` process runs.

Workers start as ``python -m taskiq worker tests.taskiq_jobs:broker``; the environment
says which Redis and which queue (``connect()`` reads it). The tests build a broker
of their own for the same queue with ``make_broker()`` and the same jobs with
``register()``: taskiq finds a job by its task name, the same on both sides.
Each job records what it did in a Redis list that the test reads.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import anyio
from redis.asyncio import Redis
from taskiq import AsyncBroker, AsyncTaskiqDecoratedTask
from taskiq_redis import RedisStreamBroker

URL_VARIABLE = "FASTAPI_TASKS_TEST_REDIS_URL"
QUEUE_VARIABLE = "FASTAPI_TASKS_TEST_QUEUE"
IDLE_VARIABLE = "FASTAPI_TASKS_TEST_IDLE_TIMEOUT_MS"


def make_broker(url: str, queue: str, idle_timeout_ms: int = 600_000) -> RedisStreamBroker:
    return RedisStreamBroker(
        url,
        queue_name=queue,
        idle_timeout=idle_timeout_ms,
        # Short reads: a worker reclaims a dead worker's jobs only between two reads
        # that brought new messages, and reads one message at a time so that two
        # workers share the jobs.
        xread_block=200,
        xread_count=1,
        unacknowledged_lock_timeout=1.0,
    )


def _client(url: str) -> Redis:
    parts = urlsplit(url)
    return Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379)


class Jobs:
    """The decorated jobs of one broker."""

    def __init__(self, broker: AsyncBroker, url: str) -> None:
        async def record(key: str, value: str) -> None:
            """Append ``value@pid`` to the list ``key``."""
            async with _client(url) as redis:
                await redis.rpush(key, f"{value}@{os.getpid()}")

        async def crash_once(key: str) -> None:
            """The first delivery notes its pid and waits to be killed; a later one finishes."""
            async with _client(url) as redis:
                starts = await redis.rpush(f"{key}:starts", str(os.getpid()))
                if starts == 1:
                    await anyio.sleep(120)  # killed by the test long before
                await redis.rpush(key, f"done@{os.getpid()}")

        self.record: AsyncTaskiqDecoratedTask[[str, str], Any] = broker.register_task(
            record, task_name="tests:record"
        )
        self.crash_once: AsyncTaskiqDecoratedTask[[str], Any] = broker.register_task(
            crash_once, task_name="tests:crash_once"
        )


def connect() -> tuple[RedisStreamBroker, Jobs]:
    url = os.environ.get(URL_VARIABLE, "redis://127.0.0.1:1")
    queue = os.environ.get(QUEUE_VARIABLE, "unused")
    idle = int(os.environ.get(IDLE_VARIABLE, "600000"))
    made = make_broker(url, queue, idle)
    return made, Jobs(made, url)


broker, jobs = connect()
