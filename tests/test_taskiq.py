"""Distributed mode end to end: a real ``redis-server``, real ``taskiq worker`` processes.

The app runs in process (its lifespan as a server runs it); jobs go through Redis
streams to workers started with taskiq's own command. Every wait is bounded; Redis is
polled with a deadline, never slept on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send
from taskiq.exceptions import SendTaskError

from fastapi_tasks import Task, TaskEvent, Tasks, add_tasks, get_task_manager
from fastapi_tasks.testing import run_lifespan
from tests import taskiq_jobs
from tests.conftest import serving
from tests.taskiq_support import (
    WAIT,
    RedisServer,
    Workers,
    needs_redis,
    queue,
    redis_server,
    wait_for_list,
    workers,
)

__all__ = ["queue", "redis_server", "workers"]  # fixtures, imported for pytest

pytestmark = [needs_redis, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # taskiq runs on asyncio only


def make_app(redis: RedisServer, queue: str) -> tuple[FastAPI, taskiq_jobs.Jobs]:
    broker = taskiq_jobs.make_broker(redis.url, queue)
    jobs = taskiq_jobs.Jobs(broker, redis.url)
    app = FastAPI()
    add_tasks(app, broker=broker)
    return app, jobs


class Timeline:
    """Where the response's messages and the manager's events happened, in one list."""

    def __init__(self) -> None:
        self.entries: list[str] = []

    def wrap(self, app: Any) -> Any:
        async def recorded(scope: Scope, receive: Receive, send: Send) -> None:
            async def recording_send(message: Message) -> None:
                await send(message)
                if message["type"] == "http.response.start":
                    self.entries.append(f"response start {message['status']}")
                elif message["type"] == "http.response.body" and not message.get("more_body"):
                    self.entries.append("response end")

            await app(scope, receive, recording_send)

        return recorded

    def listen(self, event: TaskEvent) -> None:
        if event.kind in ("enqueued", "finished"):
            self.entries.append(f"{event.kind} {event.task.mode}")


@pytest.mark.parametrize("mode", ["immediate", "after_route", "after_response"])
async def test_each_mode_enqueues_at_its_moment_and_a_worker_runs_the_job(
    redis_server: RedisServer, queue: str, workers: Workers, mode: str
) -> None:
    app, jobs = make_app(redis_server, queue)
    handles: list[Task[Any]] = []

    @app.post("/orders/{order}")
    async def create(order: str, tasks: Tasks) -> dict[str, str]:
        scheduler = {
            "immediate": tasks,
            "after_route": tasks.after_route,
            "after_response": tasks.after_response,
        }[mode]
        handles.append(scheduler.schedule(jobs.record, "orders", order))
        return {"order": order}

    timeline = Timeline()
    workers.start(1)
    async with serving(timeline.wrap(app)) as client:
        get_task_manager(app).add_listener(timeline.listen)
        response = await client.post("/orders/o-1")
        assert response.status_code == 200
        with anyio.fail_after(WAIT):
            await get_task_manager(app).join()

    (handle,) = handles
    assert handle.state.value == "succeeded"
    job_id = handle.result.task_id  # type: ignore[union-attr]
    assert isinstance(job_id, str)
    assert job_id
    entries = timeline.entries
    if mode == "after_route":
        # The enqueue was complete before the response started.
        assert entries.index("enqueued after_route") < entries.index("response start 200")
    elif mode == "after_response":
        assert entries.index("response end") < entries.index("enqueued after_response")
    else:
        assert "enqueued immediate" in entries
    (ran,) = await wait_for_list(redis_server, "orders", 1)
    assert ran.startswith("o-1@")


async def test_redis_down_after_route_gets_503_and_immediate_work_reaches_on_error(
    redis_server: RedisServer, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, jobs = make_app(redis_server, queue)
    failures: list[tuple[Task[Any], BaseException]] = []
    ran_endpoint: list[str] = []

    def on_error(task: Task[Any], exc: BaseException) -> None:
        failures.append((task, exc))

    @app.post("/route")
    async def route(tasks: Tasks) -> dict[str, str]:
        ran_endpoint.append("route")
        tasks.after_route.task(retries=1, retry_delay=0.01).schedule(jobs.record, "x", "y")
        return {"ok": "yes"}

    @app.post("/now")
    async def now(tasks: Tasks) -> dict[str, str]:
        tasks.task(retries=2, retry_delay=0.01, on_error=on_error).schedule(jobs.record, "x", "z")
        return {"ok": "yes"}

    caplog.set_level(logging.ERROR, logger="fastapi_tasks")
    async with serving(app) as client:
        redis_server.stop()  # the broker started; now Redis is gone
        with anyio.fail_after(WAIT):
            refused = await client.post("/route")
        assert refused.status_code == 503
        assert refused.json() == {
            "detail": "Service Unavailable: background work could not be queued"
        }
        assert ran_endpoint == ["route"]  # the endpoint itself has run
        assert any("answered 503" in record.getMessage() for record in caplog.records)

        accepted = await client.post("/now")
        assert accepted.status_code == 200
        with anyio.fail_after(WAIT):
            await get_task_manager(app).join()
    ((task, exc),) = failures
    assert isinstance(exc, SendTaskError)
    assert exc.__cause__ is not None  # Redis's own connection error
    assert task.attempts == 3
    assert task.state.value == "failed"


async def test_a_worker_killed_mid_job_runs_it_again_on_another_worker(
    redis_server: RedisServer, queue: str, tmp_path: Path
) -> None:
    app, jobs = make_app(redis_server, queue)
    workers = Workers(redis_server, queue, tmp_path, idle_timeout_ms=1000)
    workers.start(2)
    try:
        await _kill_one_mid_job(app, jobs, redis_server, workers)
    finally:
        workers.stop()


async def _kill_one_mid_job(
    app: FastAPI, jobs: taskiq_jobs.Jobs, redis_server: RedisServer, workers: Workers
) -> None:
    async with run_lifespan(app):
        manager = get_task_manager(app)
        manager.schedule(jobs.crash_once, "crash")
        (first,) = await wait_for_list(redis_server, "crash:starts", 1)
        workers.kill_group_of(int(first))
        # taskiq-redis reclaims a dead worker's job only once it has been pending
        # idle_timeout (1 s here) and a live worker receives new messages: trickle some.
        redis = redis_server.client
        deadline = anyio.current_time() + WAIT
        trickled = 0
        done: Any = None
        while done is None:
            assert anyio.current_time() < deadline, "the job was never delivered again"
            manager.schedule(jobs.record, "trickle", str(trickled))
            trickled += 1
            with anyio.fail_after(WAIT):
                await manager.join()
            # Wait on Redis for the job's end (bounded); the timeout paces the trickle.
            done = await anyio.to_thread.run_sync(redis.blpop, ["crash"], 0.3)
        starts = await wait_for_list(redis_server, "crash:starts", 2)
    assert len(starts) == 2
    assert starts[1] != starts[0]  # delivered again, to the other worker
    assert done[1] == f"done@{starts[1]}"


async def test_500_requests_make_exactly_500_jobs_on_two_workers(
    redis_server: RedisServer, queue: str, workers: Workers
) -> None:
    app, jobs = make_app(redis_server, queue)

    @app.post("/item/{n}")
    async def item(n: int, tasks: Tasks) -> None:
        tasks.after_route.schedule(jobs.record, "items", str(n))

    workers.start(2)
    async with serving(app) as client:
        with anyio.fail_after(WAIT * 4):
            async with anyio.create_task_group() as group:
                limiter = anyio.CapacityLimiter(50)

                async def post(n: int) -> None:
                    async with limiter:
                        response = await client.post(f"/item/{n}")
                        assert response.status_code == 200

                for n in range(500):
                    group.start_soon(post, n)
    await wait_for_list(redis_server, "items", 500, within=WAIT * 2)
    # Every job was acknowledged: none can be delivered again after this read.
    await anyio.to_thread.run_sync(redis_server.wait_until_acknowledged, queue)
    items = await wait_for_list(redis_server, "items", 500)
    values = [item.split("@")[0] for item in items]
    assert sorted(values, key=int) == [str(n) for n in range(500)]  # none lost, none twice
    pids = {item.split("@")[1] for item in items}
    assert len(pids) == 2, pids
