"""SPEC section 10: a clear error at the call site, and nothing already scheduled is lost."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from fastapi_tasks import (
    FastAPITasksAlreadyInstalledError,
    FastAPITasksClosedError,
    FastAPITasksNotStartedError,
    FastAPITasksUninitializedAppError,
    TaskConfig,
    TaskManager,
    Tasks,
    TaskState,
    add_tasks,
    get_task_manager,
)
from fastapi_tasks.testing import run_lifespan

from .conftest import Recorder, serving

pytestmark = pytest.mark.anyio


async def takes_two(a: int, b: int, *, c: int = 0) -> None:
    pass


async def positional_only(a: int, /, b: int = 0, **rest: int) -> None:
    pass


async def agen() -> AsyncIterator[int]:
    yield 1


class Service:
    async def method(self, value: int) -> None:
        pass


async def test_bad_calls_raise_type_error_and_keep_earlier_work(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    errors: list[str] = []
    bad_calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
        (42, (), {}),
        (takes_two, (1,), {}),
        (takes_two, (1, 2, 3), {}),
        (takes_two, (1, 2), {"d": 4}),
        (takes_two, (1,), {"a": 1}),
        (positional_only, (), {"a": 1}),
        (Service().method, (), {}),
        (functools.partial(takes_two, 1), (), {}),
        (agen, (), {}),
        (functools.partial(agen), (), {}),
    ]

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.schedule(recorder.record, "now")
        tasks.after_route.schedule(recorder.record, "route")
        tasks.after_response.schedule(recorder.record, "response")
        for scheduler in (tasks, tasks.after_route, tasks.after_response):
            for func, args, kwargs in bad_calls:
                with pytest.raises(TypeError) as caught:
                    scheduler.schedule(func, *args, **kwargs)
                errors.append(str(caught.value))
        return "ok"

    async with serving(app) as client:
        assert (await client.get("/")).json() == "ok"
        await manager.join(5)
    assert recorder.events == ["now", "route", "response"]
    assert "42" in errors[0]
    assert "takes_two" in errors[1]
    assert "async generator" in errors[8]
    assert len(errors) == 3 * len(bad_calls)


async def test_good_calls_of_every_shape_are_accepted(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    async with serving(app):
        manager.schedule(takes_two, 1, b=2, c=3)
        manager.schedule(takes_two, a=1, b=2)
        manager.schedule(positional_only, 1, 2, a=5)
        manager.schedule(Service().method, value=3)
        manager.schedule(functools.partial(takes_two, 1), 2)
        manager.schedule(print, "builtins have no signature to check", end="\n")
        await manager.join(5)
    assert manager.stats.succeeded == 6


async def test_coroutine_object_is_refused_and_closed(app: FastAPI, manager: TaskManager) -> None:
    async with serving(app):
        coroutine = takes_two(1, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a "never awaited" warning would fail here
            with pytest.raises(TypeError, match="pass the function and its arguments"):
                manager.schedule(coroutine)  # type: ignore[call-overload]
        assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


def test_tasks_on_an_app_without_add_tasks() -> None:
    app = FastAPI()

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        return "unreachable"

    client = TestClient(app)
    with client, pytest.raises(FastAPITasksUninitializedAppError) as caught:
        client.get("/")
    assert "add_tasks(app)" in str(caught.value)
    with pytest.raises(FastAPITasksUninitializedAppError, match="add_tasks"):
        get_task_manager(app)
    with pytest.raises(FastAPITasksUninitializedAppError):
        get_task_manager()


def test_a_broker_that_is_not_taskiqs_is_refused(app: FastAPI) -> None:
    with pytest.raises(TypeError, match="needs a taskiq AsyncBroker"):
        add_tasks(app, broker=object())
    add_tasks(app)  # nothing was installed by the refused call


def test_add_tasks_on_an_app_already_serving_is_an_error() -> None:
    app = FastAPI()
    client = TestClient(app)
    with client:
        client.get("/missing")  # the middleware stack is built now
        with pytest.raises(RuntimeError, match="before the app starts"):
            add_tasks(app)


def test_add_tasks_twice_is_an_error(app: FastAPI) -> None:
    add_tasks(app)
    with pytest.raises(FastAPITasksAlreadyInstalledError):
        add_tasks(app)


async def test_scheduling_before_startup_and_after_shutdown(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    with pytest.raises(FastAPITasksNotStartedError, match="lifespan"):
        manager.schedule(recorder.record, 1)
    async with serving(app):
        task = manager.schedule(anyio.sleep_forever)
    with pytest.raises(FastAPITasksClosedError):
        manager.schedule(recorder.record, 2)
    assert recorder.events == []
    assert task.state is TaskState.CANCELLED  # shutdown_timeout=0: cancelled at once
    assert manager.stats.cancelled == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "timeout must be > 0"),
        ({"timeout": -1.0}, "timeout must be > 0"),
        ({"timeout": "1"}, "timeout must be a number"),
        ({"timeout": float("nan")}, "timeout must be a number"),
        ({"retries": -1}, "retries"),
        ({"retries": True}, "retries"),
        ({"retry_delay": -0.1}, "retry_delay must be >= 0"),
        ({"retry_backoff": 0.5}, "retry_backoff must be >= 1"),
        ({"retry_on": (int,)}, "retry_on"),
        ({"retry_on": ()}, "retry_on"),
        ({"name": ""}, "name"),
        ({"shield": 1}, "shield"),
        ({"run_on_failure": "yes"}, "run_on_failure"),
        ({"on_error": 3}, "on_error"),
        ({"limiter": 3}, "limiter"),
    ],
)
def test_invalid_options_raise_value_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TaskConfig(**options)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_concurrency": 0}, ValueError),
        ({"max_concurrency": 1.5}, ValueError),
        ({"max_threads": 0}, ValueError),
        ({"shutdown_timeout": -1}, ValueError),
        ({"config": {"name": "x"}}, TypeError),
    ],
)
def test_invalid_app_options(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        add_tasks(FastAPI(), **kwargs)


async def test_options_given_to_task_are_validated_at_the_call(
    app: FastAPI, manager: TaskManager
) -> None:
    async with serving(app):
        with pytest.raises(ValueError, match="retries"):
            manager.task(retries=-3)


async def test_a_task_option_passed_to_schedule_points_to_task(
    app: FastAPI, manager: TaskManager
) -> None:
    async def fetch(url: str) -> None: ...

    async with serving(app):
        with pytest.raises(TypeError, match=r"use \.task\(timeout=3\)\.schedule\(func, \.\.\.\)"):
            manager.schedule(fetch, "https://example.com", timeout=3)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match=r"\.task\(retries=2\)"):
            manager.schedule(len, [1], retries=2)  # type: ignore[call-arg, arg-type]
    assert manager.stats.scheduled == 0


def test_an_error_handler_with_the_wrong_signature_is_refused_at_once() -> None:
    def handler(task: object) -> None: ...

    with pytest.raises(ValueError, match=r"on_error handler .*handler must accept two arguments"):
        TaskConfig(on_error=handler)  # type: ignore[arg-type]
    TaskConfig(on_error=print)  # builtins without a signature are taken as they are
    TaskConfig(on_error=lambda *args: None)  # pyright: ignore[reportUnknownLambdaType, reportUnknownArgumentType]


async def test_run_lifespan_reports_a_failed_startup() -> None:
    async def broken_startup(app: FastAPI) -> AsyncGenerator[None, None]:
        raise RuntimeError("no database")
        yield

    app = FastAPI(lifespan=asynccontextmanager(broken_startup))
    with pytest.raises(RuntimeError, match="no database"):
        async with run_lifespan(app):
            pass  # pragma: no cover - never reached

    async def no_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
        return None  # an app that ignores the lifespan protocol

    with pytest.raises(RuntimeError, match=r"lifespan.startup failed: it ended early"):
        async with run_lifespan(no_lifespan):
            pass  # pragma: no cover - never reached
