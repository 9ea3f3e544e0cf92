"""Paths users reach rarely: late scheduling in a failed request, threads and loops, limits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from typing import Any

import anyio
import pytest
import trio
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import StreamingResponse

from fastapi_tasks import (
    FastAPITasksWrongLoopError,
    Task,
    TaskConfig,
    TaskManager,
    Tasks,
    TaskState,
    add_tasks,
)
from fastapi_tasks._execute import retry_wait
from fastapi_tasks._task import Work
from fastapi_tasks.testing import run_lifespan

from .conftest import Recorder, serving

pytestmark = pytest.mark.anyio

WAIT = 5.0


async def test_work_scheduled_after_the_request_failed(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    """A teardown that runs after the error response schedules more: only run_on_failure runs."""

    async def cleanup(tasks: Tasks) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            tasks.after_response.schedule(recorder.record, "dropped")
            tasks.after_route.task(run_on_failure=True).schedule(recorder.record, "kept")

    @app.get("/")
    async def endpoint(_: None = Depends(cleanup)) -> None:
        raise HTTPException(404, "gone")

    async with serving(app) as client:
        assert (await client.get("/")).status_code == 404
        await manager.join(WAIT)
    assert recorder.events == ["kept"]
    assert manager.stats.discarded == 1


async def test_work_scheduled_after_a_broken_response(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    """After a stream broke off, late after-response work is discarded unless run_on_failure."""

    async def body() -> AsyncGenerator[bytes, None]:
        yield b"partial"
        raise RuntimeError("stream broke")

    async def cleanup(tasks: Tasks) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            tasks.after_response.schedule(recorder.record, "dropped")
            tasks.after_response.task(run_on_failure=True).schedule(recorder.record, "kept")

    @app.get("/")
    async def endpoint(_: None = Depends(cleanup)) -> StreamingResponse:
        return StreamingResponse(body())

    async with serving(app) as client:
        with pytest.raises(RuntimeError, match="stream broke"):
            await client.get("/")
        await manager.join(WAIT)
    assert recorder.events == ["kept"]
    assert manager.stats.discarded == 1


async def test_removing_the_last_listener(app: FastAPI, manager: TaskManager) -> None:
    seen: list[str] = []

    def listener(event: Any) -> None:
        seen.append(event.kind)

    manager.add_listener(listener)
    manager.remove_listener(listener)
    async with serving(app):
        manager.schedule(anyio.lowlevel.checkpoint)
        await manager.join(WAIT)
    assert seen == []
    with pytest.raises(ValueError, match="not a listener"):
        manager.remove_listener(listener)


def test_retry_waits_are_capped_even_when_the_backoff_overflows() -> None:
    config = TaskConfig(retries=5, retry_delay=10.0, retry_backoff=1e200)
    work = Work(None, print, (), {}, config, "immediate", False)  # type: ignore[arg-type]
    work.attempts = 1
    assert 8.0 <= retry_wait(work) <= 12.0
    work.attempts = 3  # 10 x 1e200 ** 2 overflows a float
    assert 0.8 * 3600.0 <= retry_wait(work) <= 3600.0


async def test_join_and_duration_outside_the_lifespan(app: FastAPI, manager: TaskManager) -> None:
    await manager.join(WAIT)  # not started: nothing to wait for
    async with serving(app):
        task = manager.schedule(anyio.lowlevel.checkpoint)
        pending = manager.task(name="never").schedule(anyio.sleep_forever)
        pending.cancel()
        assert task.duration is None  # not finished yet
        await manager.join(WAIT)
    assert task.duration is not None
    assert task.duration >= 0
    assert pending.duration is None  # it never started


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cancel_reaches_work_still_on_its_way_from_a_thread(
    app: FastAPI, manager: TaskManager
) -> None:
    """The loop cancels a handle before the work a thread scheduled reached the loop."""
    handed: list[Task[None]] = []
    scheduled = threading.Event()

    def from_thread() -> None:
        handed.append(manager.schedule(anyio.sleep_forever))
        scheduled.set()

    async with serving(app):
        thread = threading.Thread(target=from_thread)
        thread.start()
        # Block the loop on purpose: the work cannot reach it before cancel() runs.
        assert scheduled.wait(WAIT)
        thread.join(WAIT)
        assert handed[0].cancel() is True
        await manager.join(WAIT)
    assert handed[0].state is TaskState.CANCELLED
    assert manager.stats.cancelled == 1


def test_scheduling_on_the_lifespans_thread_while_its_loop_is_paused() -> None:
    """Between runs of the loop (sync code on its thread) work is handed over, not lost."""
    app = FastAPI()
    manager = add_tasks(app)
    ran: list[str] = []

    async def work() -> None:
        ran.append("ran")

    loop = asyncio.new_event_loop()
    try:
        serving_app = LifespanInATask(app, loop)
        manager.schedule(work)  # no loop running in this thread right now
        loop.run_until_complete(manager.join(WAIT))
        serving_app.stop()
    finally:
        loop.close()
    assert ran == ["ran"]


class LifespanInATask:
    """The app's lifespan in a task of ``loop``, which only runs while driven."""

    def __init__(self, app: FastAPI, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._started = asyncio.Event()
        self._stop = asyncio.Event()
        self._task = loop.create_task(self._serve(app))
        loop.run_until_complete(self._started.wait())

    async def _serve(self, app: FastAPI) -> None:
        async with run_lifespan(app):
            self._started.set()
            await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()
        self._loop.run_until_complete(self._task)


def test_scheduling_from_another_loop_on_the_same_thread_is_refused() -> None:
    app = FastAPI()
    manager = add_tasks(app)
    loop = asyncio.new_event_loop()

    async def from_another_loop() -> None:
        manager.schedule(anyio.lowlevel.checkpoint)

    try:
        serving_app = LifespanInATask(app, loop)
        with pytest.raises(FastAPITasksWrongLoopError, match="called from <_UnixSelectorEventLoop"):
            asyncio.run(from_another_loop())
        serving_app.stop()
    finally:
        loop.close()
    assert manager.stats.scheduled == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_scheduling_from_a_trio_run_in_another_thread_is_refused(
    app: FastAPI, manager: TaskManager
) -> None:
    errors: list[BaseException] = []

    async def on_trio() -> None:
        try:
            manager.schedule(anyio.lowlevel.checkpoint)
        except FastAPITasksWrongLoopError as exc:
            errors.append(exc)

    async with serving(app):
        await anyio.to_thread.run_sync(trio.run, on_trio)
    assert len(errors) == 1
    assert "trio run in thread" in str(errors[0])
    assert manager.stats.scheduled == 0


async def test_work_scheduled_once_the_endpoint_failed_is_discarded(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    """The request already counts as failed when a teardown schedules more."""

    async def cleanup(tasks: Tasks) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            tasks.after_response.schedule(recorder.record, "late")
            tasks.after_response.task(run_on_failure=True).schedule(recorder.record, "late kept")

    @app.get("/")
    async def endpoint(tasks: Tasks, _: None = Depends(cleanup)) -> None:
        tasks.after_response.schedule(recorder.record, "early")
        raise HTTPException(404, "gone")

    async with serving(app) as client:
        assert (await client.get("/")).status_code == 404
        await manager.join(WAIT)
    assert recorder.events == ["late kept"]
    assert manager.stats.discarded == 2


async def test_work_scheduled_after_the_request_ended(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    """Work of a request that ended with a broken stream, scheduled later by its own task."""
    ended = anyio.Event()

    async def body() -> AsyncGenerator[bytes, None]:
        yield b"partial"
        raise RuntimeError("stream broke")

    async def schedule_later(tasks: Tasks) -> None:
        await ended.wait()
        tasks.after_response.schedule(recorder.record, "dropped")
        tasks.after_response.task(run_on_failure=True).schedule(recorder.record, "kept")

    @app.get("/")
    async def endpoint(tasks: Tasks) -> StreamingResponse:
        tasks.schedule(schedule_later, tasks)
        return StreamingResponse(body())

    async with serving(app) as client:
        with pytest.raises(RuntimeError, match="stream broke"):
            await client.get("/")
        ended.set()
        await manager.join(WAIT)
    assert recorder.events == ["kept"]
    assert manager.stats.discarded == 1


async def test_an_error_handler_due_after_the_grace_period_is_not_run(
    app: FastAPI, manager: TaskManager, task_logs: pytest.LogCaptureFixture
) -> None:
    handled: list[BaseException] = []

    async def handler(task: Task[Any], exc: BaseException) -> None:
        handled.append(exc)

    async def fails_during_shutdown(other: Task[None]) -> None:
        await other.wait()  # `other` is cancelled when the grace period ends
        raise ValueError("too late")

    async with serving(app):
        other = manager.schedule(anyio.sleep_forever)
        failing = manager.task(shield=True, on_error=handler).schedule(fails_during_shutdown, other)
    assert failing.state is TaskState.FAILED
    assert handled == []
    assert any("grace period is over" in r.getMessage() for r in task_logs.records)


async def test_a_call_still_queued_for_a_thread_never_runs_once_cancelled(
    recorder: Recorder,
) -> None:
    app = FastAPI()
    manager = add_tasks(app, max_threads=1)
    release = threading.Event()

    def blocker() -> None:
        release.wait(WAIT)

    async with serving(app):
        busy = manager.schedule(blocker)
        await busy.started.wait()
        queued = manager.schedule(recorder.record_sync, "never")
        await queued.started.wait()  # started: waiting for the one thread
        assert queued.cancel() is True
        await queued.wait()
        release.set()
        await manager.join(WAIT)
    assert recorder.events == []
    assert queued.state is TaskState.CANCELLED
    assert busy.state is TaskState.SUCCEEDED


async def test_a_manager_run_without_its_app(app: FastAPI, manager: TaskManager) -> None:
    """A CLI or script can run the manager for a block of its own."""
    async with manager.lifespan():
        task = manager.schedule(anyio.lowlevel.checkpoint)
        await manager.join(WAIT)
    assert task.state is TaskState.SUCCEEDED
    assert not manager.running


def test_handlers_without_a_signature_are_taken_as_they_are() -> None:
    config = TaskConfig(on_error=min)
    assert config.on_error is min
