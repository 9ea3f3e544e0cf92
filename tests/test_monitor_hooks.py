"""The core's hooks for the monitor: ``Task.waiting_for`` and the request on each event."""

from __future__ import annotations

import threading

import anyio
import pytest
from fastapi import FastAPI, WebSocket
from starlette.testclient import TestClient

from fastapi_tasks import Task, TaskEvent, Tasks, add_tasks, current_task

from .conftest import serving

pytestmark = pytest.mark.anyio


async def noop() -> None:
    pass


async def test_waiting_for_names_each_wait() -> None:
    app = FastAPI()
    manager = add_tasks(app, max_concurrency=2, max_threads=1)
    gate = anyio.Event()
    release = threading.Event()
    seen: dict[str, object] = {}

    async def blocked() -> None:
        await gate.wait()

    def blocked_sync() -> None:
        release.wait(10)

    async def flaky() -> None:
        raise ConnectionError

    @app.get("/later")
    async def later(tasks: Tasks) -> str:
        seen["after_route"] = tasks.after_route.schedule(noop).waiting_for
        seen["after_response"] = tasks.after_response.schedule(noop).waiting_for
        return "ok"

    async with serving(app) as client:
        await client.get("/later")
        await manager.join(5)
        thread_holder: Task[None] = manager.schedule(blocked_sync)
        assert thread_holder.waiting_for == "event_loop"  # handed over, not started yet
        await thread_holder.started.wait()
        queued_for_thread: Task[None] = manager.task(name="second").schedule(blocked_sync)
        queued_for_slot: Task[None] = manager.schedule(blocked)
        await queued_for_thread.started.wait()
        assert queued_for_thread.waiting_for == "thread"
        assert queued_for_slot.waiting_for == "max_concurrency"
        release.set()
        await thread_holder.wait()
        await queued_for_slot.started.wait()
        await anyio.wait_all_tasks_blocked()
        assert queued_for_slot.waiting_for is None  # its function runs
        retrying: Task[None] = manager.task(retries=1, retry_delay=5).schedule(flaky)
        with anyio.fail_after(5):
            while retrying.waiting_for != "retry":
                await anyio.wait_all_tasks_blocked()
        retrying.cancel()
        gate.set()
        await manager.join(5)
    assert seen == {"after_route": "request", "after_response": "request"}
    assert queued_for_slot.waiting_for is None  # finished


async def test_sync_work_waits_for_its_limiter() -> None:
    app = FastAPI()
    manager = add_tasks(app)
    limiter = anyio.CapacityLimiter(1)
    release = threading.Event()

    def blocked_sync() -> None:
        release.wait(10)

    async with serving(app):
        first: Task[None] = manager.task(limiter=limiter).schedule(blocked_sync)
        second: Task[None] = manager.task(limiter=limiter).schedule(blocked_sync)
        await first.started.wait()
        await second.started.wait()
        await anyio.wait_all_tasks_blocked()
        assert second.waiting_for == "limiter"
        release.set()
        await manager.join(5)


def test_events_carry_the_request_for_thread_and_websocket_scheduling() -> None:
    app = FastAPI()
    manager = add_tasks(app)
    events: list[TaskEvent] = []
    manager.add_listener(events.append)

    @app.get("/sync")
    def sync_endpoint(tasks: Tasks) -> str:
        tasks.schedule(noop)
        return "ok"

    @app.websocket("/ws")
    async def socket(websocket: WebSocket, tasks: Tasks) -> None:
        await websocket.accept()
        tasks.after_response.schedule(noop)
        await websocket.close()

    client = TestClient(app)
    with client:
        client.get("/sync?x=1")
        with client.websocket_connect("/ws"):
            pass
        manager.join_blocking(5)

    scheduled = [event for event in events if event.kind == "scheduled"]
    requests = [event.request for event in scheduled]
    assert [(r.method, r.path) for r in requests if r is not None] == [
        ("GET", "/sync"),
        ("WEBSOCKET", "/ws"),
    ]
    http_request = requests[0]
    assert http_request is not None
    assert http_request.status == 200
    assert http_request.response_started is not None
    assert http_request.response_ended is not None


async def test_listeners_see_each_change_once_and_a_raising_one_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    manager = add_tasks(app)
    kinds: list[str] = []
    inside: list[Task[None] | None] = []

    def broken(event: TaskEvent) -> None:
        raise RuntimeError("listener bug")

    async def work() -> None:
        inside.append(current_task())

    with pytest.raises(TypeError, match="callable"):
        manager.add_listener("not a function")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a listener"):
        manager.remove_listener(broken)
    manager.add_listener(broken)
    manager.add_listener(lambda event: kinds.append(event.kind))
    async with serving(app):
        first: Task[None] = manager.schedule(work)
        manager.schedule(work)
        await manager.join(5)
        manager.remove_listener(broken)
    assert kinds == ["scheduled", "scheduled", "started", "finished", "started", "finished"]
    assert inside == [first, inside[1]]
    assert inside[1] is not first
    assert current_task() is None
    raised = [record for record in caplog.records if "listener" in record.getMessage()]
    assert len(raised) == 1  # logged once, though it raised six times
    assert "stays registered" in raised[0].getMessage()


async def test_a_listener_gets_only_the_kinds_it_asked_for() -> None:
    app = FastAPI()
    manager = add_tasks(app)
    finished: list[TaskEvent] = []
    seen_deferred: list[list[Task[None]]] = []

    @app.get("/later")
    async def later(tasks: Tasks) -> str:
        deferred = tasks.after_response.schedule(noop)
        seen_deferred.append([task for task in manager.iter_unfinished() if task is deferred])
        return "ok"

    with pytest.raises(ValueError, match="kinds"):
        manager.add_listener(finished.append, kinds=["done"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="kinds"):
        manager.add_listener(finished.append, kinds="finished")  # type: ignore[arg-type]
    manager.add_listener(finished.append, kinds={"finished"})
    async with serving(app) as client:
        task: Task[None] = manager.schedule(noop)
        assert task.scheduled_at is not None
        assert task.started_at is None
        await client.get("/later")
        await manager.join(5)
    assert [event.kind for event in finished] == ["finished", "finished"]
    assert task.func is noop
    started = task.started_at
    assert started is not None
    assert task.scheduled_at <= started + 0.01
    assert task.request is None
    [[deferred]] = seen_deferred
    assert deferred.request is not None
    assert deferred.request.path == "/later"
    assert list(manager.iter_unfinished()) == []
