"""SPEC section 4: failures are logged and handled without touching anything else."""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable

import pytest
from fastapi import FastAPI

from fastapi_tasks import Task, TaskConfig, TaskManager, Tasks, TaskState, add_tasks

from .conftest import Recorder, serving

pytestmark = pytest.mark.anyio


async def explode(message: str) -> None:
    raise ValueError(message)


def explode_sync(message: str) -> None:
    raise ValueError(message)


async def test_failure_is_logged_with_traceback_and_handlers_run_once(
    app: FastAPI, manager: TaskManager, task_logs: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[str, str, bool]] = []
    loop_thread = threading.get_ident()

    async def async_handler(task: Task[object], exc: BaseException) -> None:
        calls.append(("async", str(exc), threading.get_ident() == loop_thread))

    def sync_handler(task: Task[object], exc: BaseException) -> None:
        calls.append(("sync", str(exc), threading.get_ident() == loop_thread))

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.task(on_error=async_handler, name="mailer").schedule(explode, "secret@example.com")
        tasks.after_response.task(on_error=sync_handler).schedule(explode_sync, "two")
        return "ok"

    async with serving(app) as client:
        assert (await client.get("/")).json() == "ok"
        await manager.join(5)
    assert sorted(calls) == [("async", "secret@example.com", True), ("sync", "two", False)]
    failures = [r for r in task_logs.records if r.levelno == logging.ERROR]
    assert len(failures) == 2
    first = failures[0]
    assert first.getMessage().startswith("task mailer (id ")
    assert "after 1 attempt" in first.getMessage()
    assert first.exc_info is not None
    assert first.__dict__["task_name"] == "mailer"
    assert first.__dict__["task_mode"] == "immediate"
    # Arguments never reach the logs (the exception message is the user's own text).
    assert "secret@example.com" not in first.getMessage()
    assert manager.stats.failed == 2


async def test_raising_handler_is_logged_and_changes_nothing_else(
    task_logs: pytest.LogCaptureFixture, recorder: Recorder
) -> None:
    async def bad_handler(task: Task[object], exc: BaseException) -> None:
        raise RuntimeError("handler broke")

    def bad_sync_handler(task: Task[object], exc: BaseException) -> None:
        raise RuntimeError("sync handler broke")

    app = FastAPI()
    manager = add_tasks(app, config=TaskConfig(on_error=bad_handler))

    @app.get("/{n}")
    async def endpoint(n: int, tasks: Tasks) -> int:
        tasks.schedule(explode, "first")
        tasks.task(on_error=bad_sync_handler).schedule(explode, "second")
        tasks.after_response.schedule(recorder.record, n)
        return n

    async with serving(app) as client:
        for n in range(3):
            assert (await client.get(f"/{n}")).json() == n
        await manager.join(5)
    # Order is promised within a request, not across requests: trio shuffles those.
    assert sorted(recorder.events) == [0, 1, 2]
    handler_logs = [r for r in task_logs.records if "on_error handler" in r.getMessage()]
    assert len(handler_logs) == 6
    assert manager.stats.failed == 6
    assert manager.stats.succeeded == 3


async def test_sync_handler_returning_an_awaitable_is_awaited(
    app: FastAPI, manager: TaskManager
) -> None:
    seen: list[str] = []

    async def record(exc: BaseException) -> None:
        seen.append(str(exc))

    def handler(task: Task[object], exc: BaseException) -> Awaitable[None]:
        return record(exc)

    async with serving(app):
        task = manager.task(on_error=handler).schedule(explode, "x")
        await manager.join(5)
    assert seen == ["x"]
    assert task.state is TaskState.FAILED
    assert isinstance(task.exception, ValueError)
    assert task.result is None
