"""SPEC section 12: lifecycle events, listeners and ``current_task()``."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from fastapi import FastAPI, HTTPException

from fastapi_tasks import Task, TaskEvent, TaskManager, Tasks, TaskState, current_task

from .conftest import serving

pytestmark = pytest.mark.anyio


class Log:
    """A listener that keeps what it saw as short strings."""

    def __init__(self) -> None:
        self.events: list[TaskEvent] = []

    def __call__(self, event: TaskEvent) -> None:
        self.events.append(event)

    def lines(self) -> list[str]:
        return [f"{e.task.name}:{e.kind}:{e.state.value}:{e.attempt}" for e in self.events]


async def test_each_change_is_published_once_in_order(app: FastAPI, manager: TaskManager) -> None:
    log = Log()
    manager.add_listener(log)
    failures = iter([ConnectionError("down")])

    async def flaky() -> str:
        for error in failures:
            raise error
        return "ok"

    async def broken() -> None:
        raise ValueError("bad")

    @app.get("/fails")
    async def fails(tasks: Tasks) -> None:
        tasks.after_response.task(name="dropped").schedule(flaky)
        raise HTTPException(409, "conflict")

    async with serving(app) as client:
        manager.task(name="flaky", retries=1).schedule(flaky)
        await manager.join(5)
        manager.task(name="broken").schedule(broken)
        await manager.join(5)
        assert (await client.get("/fails")).status_code == 409
        await manager.join(5)
    assert log.lines() == [
        "flaky:scheduled:pending:0",
        "flaky:started:running:1",
        "flaky:retrying:running:1",
        "flaky:finished:succeeded:2",
        "broken:scheduled:pending:0",
        "broken:started:running:1",
        "broken:finished:failed:1",
        "dropped:scheduled:pending:0",
        "dropped:finished:discarded:0",
    ]
    retrying = log.events[2]
    assert isinstance(retrying.exception, ConnectionError)
    failed = log.events[6]
    assert isinstance(failed.exception, ValueError)
    assert failed.task.exception is failed.exception
    assert all(e.time > 0 for e in log.events)
    assert log.events[0].time <= log.events[-1].time


async def test_a_raising_listener_is_logged_once_and_keeps_its_place(
    app: FastAPI, manager: TaskManager, task_logs: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(event: TaskEvent) -> None:
        calls.append(event.kind)
        raise RuntimeError("listener bug")

    after = Log()
    manager.add_listener(broken)
    manager.add_listener(after)
    async with serving(app):
        first = manager.schedule(anyio.lowlevel.checkpoint)
        await manager.join(5)
        manager.remove_listener(broken)
        manager.schedule(anyio.lowlevel.checkpoint)
        await manager.join(5)
    assert first.state is TaskState.SUCCEEDED  # the work never noticed
    assert calls == ["scheduled", "started", "finished"]
    assert len(after.events) == 6  # the listener after it still got every event
    errors = [r for r in task_logs.records if "listener" in r.getMessage()]
    assert len(errors) == 1
    assert errors[0].levelno == logging.ERROR
    assert "broken" in errors[0].getMessage()


async def test_listeners_are_checked_and_removed(manager: TaskManager) -> None:
    with pytest.raises(TypeError, match="callable"):
        manager.add_listener("print")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a listener"):
        manager.remove_listener(print)


async def test_current_task_inside_work_handlers_and_threads(
    app: FastAPI, manager: TaskManager
) -> None:
    seen: dict[str, Task[Any] | None] = {}

    async def async_work() -> None:
        seen["async"] = current_task()

    def sync_work() -> None:
        seen["sync"] = current_task()

    async def failing() -> None:
        raise ValueError("boom")

    def on_error(task: Task[Any], exc: BaseException) -> None:
        seen["handler"] = current_task()

    assert current_task() is None
    async with serving(app):
        first = manager.schedule(async_work)
        second = manager.schedule(sync_work)
        third = manager.task(on_error=on_error).schedule(failing)
        await manager.join(5)
        assert current_task() is None  # the test itself is not a task
    assert seen == {"async": first, "sync": second, "handler": third}
