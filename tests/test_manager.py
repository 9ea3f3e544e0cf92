"""SPEC section 7: handles, the manager, join, stats, limits, scheduling from anywhere."""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastapi_tasks import (
    FastAPITasksClosedError,
    FastAPITasksError,
    Task,
    TaskManager,
    Tasks,
    TaskState,
    add_tasks,
    get_task_manager,
)

from .conftest import Recorder, serving

pytestmark = pytest.mark.anyio


async def double(value: int) -> int:
    return value * 2


def triple(value: int) -> int:
    return value * 3


async def test_handle_reports_its_life_cycle(app: FastAPI, manager: TaskManager) -> None:
    gate = anyio.Event()

    async def gated(value: int) -> int:
        await gate.wait()
        return value

    async with serving(app):
        task = manager.schedule(gated, 7)
        assert task.state == "pending"
        assert not task.done
        assert manager.stats.pending == 1
        await task.started.wait()
        assert task.state is TaskState.RUNNING
        assert task.started.is_set()
        assert manager.stats.running == 1
        assert manager.tasks == [task]
        gate.set()
        await task.wait()
        await task.wait()  # already done: returns at once
        assert task.done
        assert task.state.value == "succeeded"
        assert task.result == 7
        assert task.exception is None
        assert task.attempts == 1
        assert task.started.is_set()
        assert await task() == 7  # runs the function once more
        sync_task = manager.schedule(triple, 2)
        await sync_task.wait()
        assert sync_task.result == 6
        assert await sync_task() == 6
    assert await task() == 7  # async work can still be run again by hand...
    with pytest.raises(FastAPITasksClosedError):
        await sync_task()  # ...sync work needs the manager's threads, gone with the app
    assert "gated" in repr(task)
    assert "7" not in repr(task).replace(f"id={task.id}", "")
    assert manager.stats.succeeded == 2
    assert manager.stats.scheduled == 2


async def test_cancel_before_and_while_running(app: FastAPI, manager: TaskManager) -> None:
    async with serving(app):
        pending = manager.schedule(anyio.sleep_forever)
        assert pending.cancel()
        assert pending.state is TaskState.CANCELLED
        assert not pending.started.is_set()
        running = manager.schedule(anyio.sleep_forever)
        await running.started.wait()
        assert running.cancel()
        await running.wait()
        assert running.state is TaskState.CANCELLED
        assert not running.cancel()
        await manager.join(5)
    assert manager.stats.cancelled == 2


async def test_join_waits_for_work_scheduled_while_waiting(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    async def chain(n: int) -> None:
        await anyio.lowlevel.checkpoint()
        recorder.events.append(n)
        if n < 3:
            get_task_manager().schedule(chain, n + 1)  # from inside a running task

    async with serving(app):
        manager.schedule(chain, 0)
        await manager.join(5)
        assert recorder.events == [0, 1, 2, 3]
        await manager.join()  # nothing live: returns at once


async def test_join_timeout(app: FastAPI, manager: TaskManager) -> None:
    async with serving(app):
        manager.schedule(anyio.sleep_forever)
        with pytest.raises(TimeoutError):
            await manager.join(0.01)


async def test_max_concurrency_queues_in_fifo_order_and_drops_nothing(
    recorder: Recorder,
) -> None:
    app = FastAPI()
    manager = add_tasks(app, max_concurrency=2)
    gates = [anyio.Event() for _ in range(5)]
    running_now = 0
    most = 0

    async def work(n: int) -> None:
        nonlocal running_now, most
        running_now += 1
        most = max(most, running_now)
        recorder.events.append(n)
        await gates[n].wait()
        running_now -= 1

    async with serving(app):
        handles = [manager.schedule(work, n) for n in range(5)]
        handles[3].cancel()  # waiting work can be cancelled before it starts
        await anyio.wait_all_tasks_blocked()
        assert recorder.events == [0, 1]
        for gate in gates:
            gate.set()
        await manager.join(5)
    assert recorder.events == [0, 1, 2, 4]
    assert most == 2
    assert [h.state for h in handles].count(TaskState.SUCCEEDED) == 4


async def test_sync_work_runs_in_the_managers_own_threads() -> None:
    app = FastAPI()
    manager = add_tasks(app, max_threads=1)
    names: list[str] = []
    first_entered = threading.Event()
    release_first = threading.Event()

    def blocking() -> None:
        names.append(threading.current_thread().name)
        assert names[0].startswith("fastapi-tasks")
        first_entered.set()
        release_first.wait(5)

    def second() -> None:
        names.append("second ran after the first left its thread")

    async with serving(app):
        manager.schedule(blocking)
        await anyio.to_thread.run_sync(first_entered.wait, 5)
        queued = manager.schedule(second)
        await anyio.wait_all_tasks_blocked()
        assert queued.state is TaskState.RUNNING  # started, waiting for the one thread
        assert len(names) == 1
        release_first.set()
        await manager.join(5)
    assert names[1] == "second ran after the first left its thread"


async def test_schedule_from_a_worker_thread(app: FastAPI, manager: TaskManager) -> None:
    results: list[Task[Any]] = []

    def from_thread() -> None:
        results.append(manager.schedule(double, 21))

    async with serving(app):
        await anyio.to_thread.run_sync(from_thread)
        with anyio.fail_after(5):
            await results[0].wait()
    assert results[0].result == 42


def test_join_blocking_with_test_client(recorder: Recorder) -> None:
    app = FastAPI()
    manager = add_tasks(app)

    @app.post("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.after_response.schedule(recorder.record, "sent")
        return "ok"

    manager.join_blocking()  # not running: nothing to wait for
    client = TestClient(app)
    with client:
        assert client.post("/").json() == "ok"
        manager.join_blocking(5)
        assert recorder.events == ["sent"]


async def test_join_blocking_refuses_the_event_loop_thread(
    app: FastAPI, manager: TaskManager
) -> None:
    async with serving(app):
        manager.schedule(anyio.sleep_forever)
        with pytest.raises(RuntimeError, match="await join"):
            manager.join_blocking()


async def test_starting_a_running_manager_twice_is_an_error(
    app: FastAPI, manager: TaskManager
) -> None:
    async with serving(app):
        with pytest.raises(FastAPITasksError, match="already running"):
            async with manager.lifespan():
                pass  # pragma: no cover


async def test_get_task_manager_in_requests_tasks_and_startup(manager: TaskManager) -> None:
    found: list[TaskManager] = []

    async def note() -> None:
        found.append(get_task_manager())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
        get_task_manager().schedule(note)  # on startup
        yield

    app = FastAPI(lifespan=lifespan)
    own = add_tasks(app)

    @app.get("/")
    async def endpoint(tasks: Tasks) -> bool:
        tasks.schedule(note)
        return get_task_manager() is own and get_task_manager(app) is own

    async with serving(app) as client:
        assert (await client.get("/")).json() is True
        await own.join(5)
    assert found == [own, own]
    assert own is not manager


async def test_mounted_apps_share_the_outer_manager(recorder: Recorder) -> None:
    outer = FastAPI()
    inner = FastAPI()
    inner_with_own = FastAPI()
    manager = add_tasks(outer)
    add_tasks(inner_with_own)  # its lifespan never runs when mounted: the outer one serves

    for sub in (inner, inner_with_own):

        @sub.get("/")
        async def endpoint(tasks: Tasks) -> bool:
            tasks.after_response.schedule(recorder.record, "mounted")
            return tasks.manager is manager

    outer.mount("/inner", inner)
    outer.mount("/own", inner_with_own)
    async with serving(outer) as client:
        assert (await client.get("/inner/")).json() is True
        assert (await client.get("/own/")).json() is True
        await manager.join(5)
    assert recorder.events == ["mounted", "mounted"]


async def test_callables_are_classified_sync_or_async(app: FastAPI, manager: TaskManager) -> None:
    loop_thread = threading.get_ident()
    where: dict[str, bool] = {}

    class AsyncCallable:
        async def __call__(self, label: str) -> None:
            where[label] = threading.get_ident() == loop_thread

    class SyncCallable:
        def __call__(self, label: str) -> None:
            where[label] = threading.get_ident() == loop_thread

    async def coroutine_function(label: str) -> None:
        where[label] = threading.get_ident() == loop_thread

    async with serving(app):
        manager.schedule(AsyncCallable(), "async __call__")
        manager.schedule(SyncCallable(), "sync __call__")
        manager.schedule(functools.partial(functools.partial(coroutine_function), "partial"))
        await manager.join(5)
    assert where == {"async __call__": True, "sync __call__": False, "partial": True}


def test_join_blocking_sees_work_scheduled_from_the_same_thread(recorder: Recorder) -> None:
    app = FastAPI()
    manager = add_tasks(app)
    client = TestClient(app)
    with client:
        for n in range(50):  # the hand-over to the loop races with join_blocking
            manager.schedule(recorder.record, n)
            manager.join_blocking(5)
            assert recorder.events == list(range(n + 1))


async def test_queued_work_keeps_the_context_it_was_scheduled_in() -> None:
    app = FastAPI()
    manager = add_tasks(app, max_concurrency=1)
    seen: dict[str, str] = {}

    async def read(label: str) -> None:
        seen[label] = request_label.get()

    @app.get("/{label}")
    async def endpoint(label: str, tasks: Tasks) -> str:
        request_label.set(label)
        tasks.schedule(read, label)
        return label

    async with serving(app) as client:
        for label in ("a", "b", "c"):
            await client.get(f"/{label}")
        await manager.join(5)
    assert seen == {"a": "a", "b": "b", "c": "c"}


async def test_a_running_error_handler_is_cancelled_at_shutdown(
    app: FastAPI, manager: TaskManager
) -> None:
    handler_started = anyio.Event()

    async def slow_handler(task: Task[object], exc: BaseException) -> None:
        assert task.state is TaskState.RUNNING  # FAILED only once the handler returned
        handler_started.set()
        await anyio.sleep_forever()

    async def broken() -> None:
        raise ValueError("x")

    async with serving(app):
        task = manager.task(on_error=slow_handler).schedule(broken)
        await handler_started.wait()
        assert not task.done
    assert task.state is TaskState.FAILED
    assert manager.tasks == []


request_label: contextvars.ContextVar[str] = contextvars.ContextVar("request_label")


async def test_get_task_manager_tells_several_running_apps_apart() -> None:
    apps = [FastAPI(), FastAPI()]
    managers = [add_tasks(app) for app in apps]
    found: list[tuple[int, TaskManager]] = []

    async def note(n: int) -> None:
        found.append((n, get_task_manager()))

    for n, app in enumerate(apps):

        @app.get("/")
        async def endpoint(tasks: Tasks, n: int = n) -> bool:
            tasks.after_response.schedule(note, n)
            return get_task_manager() is managers[n]

    async with serving(apps[0]) as first, serving(apps[1]) as second:
        assert (await first.get("/")).json() is True
        assert (await second.get("/")).json() is True
        for manager in managers:
            await manager.join(5)
    assert sorted(found, key=lambda item: item[0]) == [(0, managers[0]), (1, managers[1])]
