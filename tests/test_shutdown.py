"""SPEC section 6: shutdown refuses new work, drains, cancels, and waits for shielded work."""

from __future__ import annotations

import logging
import threading

import anyio
import pytest
from fastapi import FastAPI

from fastapi_tasks import FastAPITasksClosedError, Task, TaskManager, TaskState, add_tasks

from .conftest import serving

pytestmark = pytest.mark.anyio


async def test_default_shutdown_cancels_unshielded_work_at_once(
    app: FastAPI, manager: TaskManager, task_logs: pytest.LogCaptureFixture
) -> None:
    started = anyio.Event()
    cancelling = anyio.Event()
    finished: list[str] = []

    async def forever() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelling.set()

    async def shielded() -> None:
        # Shutting down takes a turn of the event loop, as it does under a server:
        # wait until it has begun, so this work is still running then.
        await cancelling.wait()
        finished.append("shielded")

    async with serving(app):
        running = manager.schedule(forever)
        protected = manager.task(shield=True).schedule(shielded)
        pending = manager.schedule(forever)
        await started.wait()
    assert running.state is TaskState.CANCELLED
    assert pending.state is TaskState.CANCELLED
    assert protected.state is TaskState.SUCCEEDED
    assert finished == ["shielded"]
    assert manager.tasks == []
    summary = [r.getMessage() for r in task_logs.records if "manager stopped" in r.getMessage()]
    assert summary == [
        "task manager stopped: 1 completed, 0 failed, 2 cancelled, 0 discarded during shutdown"
    ]


async def test_scheduling_is_refused_while_the_grace_period_drains() -> None:
    app = FastAPI()
    manager = add_tasks(app, shutdown_timeout=5)
    release = anyio.Event()
    outcome: list[str] = []

    async def draining() -> None:
        await release.wait()
        outcome.append("finished during the grace period")

    ready = anyio.Event()
    stop = anyio.Event()
    handles: list[Task[None]] = []

    async def serve() -> None:
        async with serving(app):
            handles.append(manager.schedule(draining))
            ready.set()
            await stop.wait()

    async with anyio.create_task_group() as group:
        group.start_soon(serve)
        await ready.wait()
        stop.set()
        await anyio.wait_all_tasks_blocked()  # shutdown now waits for `draining`
        assert not manager.running
        with pytest.raises(FastAPITasksClosedError, match="shutting down"):
            manager.schedule(draining)
        release.set()
    assert outcome == ["finished during the grace period"]
    assert handles[0].state is TaskState.SUCCEEDED


async def test_grace_period_then_cancel(anyio_backend: str) -> None:
    app = FastAPI()
    manager = add_tasks(app, shutdown_timeout=0.05)
    outcome: list[str] = []
    done = anyio.Event()

    async def finishes_in_time() -> None:
        await anyio.lowlevel.checkpoint()
        outcome.append("finished")
        done.set()

    async def never_finishes() -> None:
        await anyio.sleep_forever()

    async with serving(app):
        manager.schedule(never_finishes)
        manager.schedule(finishes_in_time)
    assert outcome == ["finished"]
    assert manager.stats.cancelled == 1
    assert manager.stats.succeeded == 1


async def test_shielded_work_holds_shutdown_and_is_reported(
    app: FastAPI, manager: TaskManager, task_logs: pytest.LogCaptureFixture
) -> None:
    manager._shield_warning_interval = 0.01
    warned = anyio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for 1 task(s) that must finish first" in record.getMessage():
                warned.set()

    async def held() -> None:
        with anyio.fail_after(5):
            await warned.wait()

    watch = Watch()
    logging.getLogger("fastapi_tasks").addHandler(watch)
    try:
        async with serving(app):
            task = manager.task(shield=True, name="held").schedule(held)
    finally:
        logging.getLogger("fastapi_tasks").removeHandler(watch)
    assert task.state is TaskState.SUCCEEDED
    assert any("held (id" in r.getMessage() for r in task_logs.records)


async def test_sync_work_in_a_thread_is_abandoned_and_logged(
    app: FastAPI, manager: TaskManager, task_logs: pytest.LogCaptureFixture
) -> None:
    entered = threading.Event()
    leave = threading.Event()

    def blocking() -> None:
        entered.set()
        leave.wait(5)

    async with serving(app):
        task = manager.schedule(blocking)
        await anyio.to_thread.run_sync(entered.wait, 5)
    leave.set()
    assert task.state is TaskState.CANCELLED
    assert any("abandoned" in r.getMessage() for r in task_logs.records)


async def test_manager_restarts_with_a_new_lifespan(app: FastAPI, manager: TaskManager) -> None:
    results: list[int] = []

    async def work(n: int) -> None:
        results.append(n)

    for n in range(2):
        async with serving(app):
            manager.schedule(work, n)
            await manager.join(5)
    assert results == [0, 1]
