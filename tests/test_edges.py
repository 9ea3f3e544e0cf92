"""Moments that already passed, failures while sending, and other edges of the request flow."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, Literal

import anyio
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from fastapi_tasks import (
    FastAPITasksNotStartedError,
    TaskConfig,
    TaskManager,
    Tasks,
    TaskState,
    add_tasks,
)
from fastapi_tasks._dependency import SCOPE_KEY

from .conftest import Recorder, http_scope, receive_empty_body, serving

pytestmark = pytest.mark.anyio


async def positional_only(a: int, /, b: int = 0) -> None:
    pass


async def takes_two(a: int, b: int) -> None:
    pass


async def teardown_dependency(request: Request, tasks: Tasks) -> AsyncIterator[None]:
    yield
    # FastAPI runs this after the response was sent: the moment has passed.
    tasks.after_response.schedule(request.app.state.recorder.record, "from teardown")


Teardown = Annotated[None, Depends(teardown_dependency)]


def test_more_bad_calls_are_refused() -> None:
    from fastapi_tasks._call import check_call

    with pytest.raises(TypeError, match="positional"):
        check_call(positional_only, (), {"a": 1})
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        check_call(positional_only, (1,), {"a": 1})
    with pytest.raises(TypeError, match="multiple values"):
        check_call(takes_two, (1, 2), {"a": 1})
    assert check_call(int, ("5",), {}) is False  # no signature to check: accepted


def test_the_code_object_wins_over_a_misleading_signature() -> None:
    from fastapi_tasks._call import check_call

    async def needs_one(a: int) -> None:
        pass  # pragma: no cover

    needs_one.__signature__ = inspect.signature(lambda *args, **kwargs: None)  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="do not fit its parameters"):
        check_call(needs_one, (), {})


async def test_work_scheduled_after_its_moment_starts_at_once(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    app.state.recorder = recorder

    def sync_chunks(tasks: Tasks) -> Iterator[bytes]:
        yield b"a"
        tasks.after_route.schedule(recorder.record, "route, from a worker thread")  # passed
        yield b"b"

    async def async_chunks(tasks: Tasks) -> AsyncIterator[bytes]:
        yield b"a"
        tasks.after_route.schedule(recorder.record, "route, during the stream")
        yield b"b"

    @app.get("/teardown")
    async def with_teardown(tasks: Tasks, _: Teardown) -> str:
        tasks.after_response.schedule(recorder.record, "first")
        return "ok"

    @app.get("/teardown-only")
    async def teardown_only(_: Teardown) -> str:
        return "ok"

    @app.get("/sync-stream")
    async def sync_stream(tasks: Tasks) -> StreamingResponse:
        tasks.after_response.schedule(recorder.record, "stream done")
        return StreamingResponse(sync_chunks(tasks))

    @app.get("/async-stream")
    async def async_stream(tasks: Tasks) -> StreamingResponse:
        tasks.after_response.schedule(recorder.record, "stream done")
        return StreamingResponse(async_chunks(tasks))

    async with serving(app) as client:
        for path in ("/teardown", "/teardown-only", "/sync-stream", "/async-stream"):
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text)
            await manager.join(5)
    assert recorder.events == [
        "first",
        "from teardown",
        "from teardown",
        "route, from a worker thread",
        "stream done",
        "route, during the stream",
        "stream done",
    ]


async def test_final_body_send_fails_after_the_response_started(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.after_route.schedule(recorder.record, "route")
        tasks.after_response.schedule(recorder.record, "response")
        return "ok"

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise OSError("connection reset")

    async with serving(app):
        with pytest.raises(OSError, match="reset"):
            await app(http_scope(), receive_empty_body, send)
        await manager.join(5)
    assert recorder.events == ["route"]
    assert manager.stats.discarded == 1


async def test_stream_stopped_without_its_last_chunk_discards_after_response_work(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    async def endpoint_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        # ...and the app returns without the final chunk (the client went away).

    @app.get("/")
    async def endpoint(tasks: Tasks) -> None:
        tasks.after_response.schedule(recorder.record, "never")
        tasks.after_response.task(run_on_failure=True).schedule(recorder.record, "still")

    route_app = app.router.routes[-1].app  # type: ignore[attr-defined]

    async def partial(scope: Scope, receive: Receive, send: Send) -> None:
        async def fake_send(message: Message) -> None:
            pass  # swallow the real response: the endpoint's work is scheduled, that's all

        await route_app(scope, receive, fake_send)
        await endpoint_app(scope, receive, send)

    app.router.routes[-1].app = partial  # type: ignore[attr-defined]
    async with serving(app):
        await app(http_scope(), receive_empty_body, _discard_send)
        await manager.join(5)
    assert recorder.events == ["still"]


async def test_cancelled_deferred_work_is_neither_run_nor_discarded(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    @app.get("/{fail}")
    async def endpoint(fail: bool, tasks: Tasks) -> str:
        tasks.after_route.schedule(recorder.record, "route").cancel()
        tasks.after_response.schedule(recorder.record, "response").cancel()
        if fail:
            raise HTTPException(500)
        return "ok"

    async with serving(app) as client:
        await client.get("/true")
        await client.get("/false")
        await manager.join(5)
    assert recorder.events == []
    assert manager.stats.cancelled == 4
    assert manager.stats.discarded == 0


async def test_waiters_wake_when_work_is_discarded(
    app: FastAPI, manager: TaskManager, task_logs: pytest.LogCaptureFixture
) -> None:
    woke: list[TaskState] = []

    async def watch(handle: Any) -> None:
        await handle.wait()
        woke.append(handle.state)

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        handle = tasks.after_response.schedule(anyio.sleep, 0)
        assert manager.stats.pending == 1  # waiting for its moment counts as pending
        assert manager.tasks == []  # ... but it is not handed over yet
        tasks.schedule(watch, handle)
        tasks.schedule(watch, handle)  # two waiters share one event
        await anyio.wait_all_tasks_blocked()
        raise HTTPException(400)

    async with serving(app) as client:
        assert (await client.get("/")).status_code == 400
        await manager.join(5)
    assert woke == [TaskState.DISCARDED, TaskState.DISCARDED]
    assert any(
        r.levelno == logging.DEBUG and "discarded task sleep" in r.getMessage()
        for r in task_logs.records
    )


async def test_response_finishing_after_shutdown_began_discards_its_work(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.after_response.schedule(recorder.record, "too late")
        await manager.aclose()  # shutdown begins while this response is in flight
        return "ok"

    async with serving(app) as client:
        assert (await client.get("/")).json() == "ok"
    assert recorder.events == []
    assert manager.stats.discarded == 1


def test_request_without_a_running_lifespan_gets_a_clear_error() -> None:
    app = FastAPI()
    add_tasks(app)

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.after_response.schedule(print, "x")
        return "unreachable"

    client = TestClient(app)  # not entered: the lifespan never runs
    with pytest.raises(FastAPITasksNotStartedError, match="TestClient"):
        client.get("/")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_join_blocking_waits_for_live_work(backend: Literal["asyncio", "trio"]) -> None:
    app = FastAPI()
    manager = add_tasks(app)
    release = anyio.Event()

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.after_response.schedule(release.wait)
        return "ok"

    client = TestClient(app, backend=backend)
    with client:
        client.get("/")
        with pytest.raises(TimeoutError):
            manager.join_blocking(0.01)
        assert client.portal is not None
        client.portal.call(release.set)
        manager.join_blocking(5)
    assert manager.stats.succeeded == 1


async def test_handles_reprs_and_late_events(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    def wrapper(value: str) -> Any:
        return recorder.record(value)

    reprs: list[str] = []

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        reprs.extend([repr(tasks), repr(tasks.after_route), repr(tasks.after_response)])
        return "ok"

    async with serving(app) as client:
        await client.get("/")
        task = manager.schedule(functools.partial(wrapper, "through a thread"))
        await task.wait()
        assert task.started.is_set()  # asked for only after it started
        assert task.name.endswith("wrapper")
        cancelled = manager.schedule(recorder.record, "never")
        cancelled.cancel()
        reprs.append(repr(manager))
    assert not cancelled.started.is_set()  # created after shutdown, never set
    assert recorder.events == ["through a thread"]
    assert reprs == [
        "<Tasks of http '/'>",
        "<Scheduler after_route TaskConfig()>",
        "<Scheduler after_response TaskConfig()>",
        "<TaskManager running live=0>",
    ]
    assert repr(TaskConfig.__dataclass_fields__["name"].default) == "<unset>"


async def test_without_fastapis_exit_stack_after_route_work_goes_at_response_start(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    """The fallback of _fastapi_compat: a plain Starlette route has no function exit stack."""

    async def plain(request: Request) -> PlainTextResponse:
        tasks = request.scope[SCOPE_KEY]
        tasks.after_route.schedule(recorder.record, "route")
        tasks.after_response.schedule(recorder.record, "response")
        return PlainTextResponse("plain")

    app.router.routes.insert(0, Route("/plain", plain))
    async with serving(app) as client:
        assert (await client.get("/plain")).text == "plain"
        await manager.join(5)
    assert recorder.events == ["route", "response"]


async def _discard_send(message: Message) -> None:
    pass


async def test_unhandled_error_hands_run_on_failure_work_over_after_the_500(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    handed_over_at_start: list[bool] = []

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.after_response.task(run_on_failure=True).schedule(recorder.record, "cleanup")
        raise RuntimeError("bug")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 500
            handed_over_at_start.append(bool(manager.tasks))

    async with serving(app):
        with pytest.raises(RuntimeError, match="bug"):
            await app(http_scope(), receive_empty_body, send)
        await manager.join(5)
    assert handed_over_at_start == [False]  # ServerErrorMiddleware's 500 went out first
    assert recorder.events == ["cleanup"]


async def test_work_scheduled_inside_a_stream_that_never_finished_is_discarded(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        app.state.tasks = tasks
        return "ok"

    route_app = app.router.routes[-1].app  # type: ignore[attr-defined]

    async def stream_cut_short(scope: Scope, receive: Receive, send: Send) -> None:
        async def no_send(message: Message) -> None:
            pass

        await route_app(scope, receive, no_send)  # solves the dependency: gives the Tasks
        tasks = app.state.tasks
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        tasks.after_response.schedule(recorder.record, "never")
        # ...the client is gone: the app returns without the last chunk.

    app.router.routes[-1].app = stream_cut_short  # type: ignore[attr-defined]
    async with serving(app):
        await app(http_scope(), receive_empty_body, _discard_send)
        await manager.join(5)
    assert recorder.events == []
    assert manager.stats.discarded == 1


def test_wrapped_functions_are_checked_against_the_function_they_wrap() -> None:
    from fastapi_tasks._call import check_call

    async def send_mail(to: str) -> None:
        pass  # pragma: no cover

    @functools.wraps(send_mail)
    async def logged(*args: Any, **kwargs: Any) -> None:
        pass  # pragma: no cover

    assert check_call(logged, ("a@example.com",), {}) is True
    with pytest.raises(TypeError, match="bogus"):
        check_call(logged, ("a@example.com",), {"bogus": 1})
