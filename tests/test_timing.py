"""SPEC section 2: when each kind of work starts, relative to the endpoint and the response."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from fastapi_tasks import TaskManager, Tasks, TaskState
from fastapi_tasks.testing import run_lifespan

from .conftest import Recorder, http_scope, receive_empty_body, serving

pytestmark = pytest.mark.anyio


async def test_immediate_work_starts_while_the_endpoint_runs(
    app: FastAPI, manager: TaskManager
) -> None:
    started = anyio.Event()

    async def work() -> None:
        started.set()

    @app.get("/")
    async def endpoint(tasks: Tasks) -> dict[str, bool]:
        tasks.schedule(work)
        with anyio.fail_after(5):
            await started.wait()  # would hang if the work waited for the endpoint
        return {"ok": True}

    async with serving(app) as client:
        assert (await client.get("/")).json() == {"ok": True}
        await manager.join(5)


async def test_order_within_and_across_modes(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.after_response.schedule(recorder.record, "response-1")
        tasks.after_route.schedule(recorder.record, "route-1")
        tasks.schedule(recorder.record, "now-1")
        tasks.after_response.schedule(recorder.record, "response-2")
        tasks.after_route.schedule(recorder.record, "route-2")
        tasks.schedule(recorder.record, "now-2")
        return "ok"

    async with serving(app) as client:
        await client.get("/")
        await manager.join(5)
    assert recorder.events == ["now-1", "now-2", "route-1", "route-2", "response-1", "response-2"]


async def test_after_route_runs_before_the_response_starts(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    """The after-route work is handed over before http.response.start leaves the app."""
    handed_over_before_start: list[bool] = []

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        task = tasks.after_route.schedule(recorder.record, "route")
        tasks.after_response.schedule(recorder.record, "response")
        app.state.task = task
        return "ok"

    async def watch(scope: Scope, receive: Receive, send: Send) -> None:
        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                handed_over_before_start.append(app.state.task.state is not TaskState.DISCARDED)
                handed_over_before_start.append(app.state.task in manager.tasks)
            await send(message)

        await inner(scope, receive, watched_send)

    inner = app.build_middleware_stack()
    app.middleware_stack = watch
    async with serving(app) as client:
        await client.get("/")
        await manager.join(5)
    assert handed_over_before_start == [True, True]
    assert recorder.events == ["route", "response"]


async def test_failed_send_runs_after_route_but_not_after_response(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.after_route.schedule(recorder.record, "route")
        tasks.after_response.schedule(recorder.record, "response")
        tasks.after_response.task(run_on_failure=True).schedule(recorder.record, "must run")
        return "ok"

    async def broken_send(message: Message) -> None:
        raise OSError("client went away")

    async with run_lifespan(app):
        with pytest.raises(OSError, match="client went away"):
            await app(http_scope(), receive_empty_body, broken_send)
        await manager.join(5)
    assert recorder.events == ["route", "must run"]
    assert manager.stats.discarded == 1


@pytest.mark.parametrize("raised", [HTTPException(404), RuntimeError("boom")])
async def test_endpoint_that_raises_discards_pending_work(
    app: FastAPI, manager: TaskManager, recorder: Recorder, raised: Exception
) -> None:
    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.schedule(recorder.record, "immediate runs anyway")
        tasks.after_route.schedule(recorder.record, "route")
        tasks.after_response.schedule(recorder.record, "response")
        tasks.after_route.task(run_on_failure=True).schedule(recorder.record, "route on failure")
        tasks.after_response.task(run_on_failure=True).schedule(
            recorder.record, "response on failure"
        )
        raise raised

    async with serving(app) as client:
        if isinstance(raised, HTTPException):
            assert (await client.get("/")).status_code == 404
        else:
            with pytest.raises(RuntimeError, match="boom"):
                await client.get("/")
        await manager.join(5)
    assert recorder.events == [
        "immediate runs anyway",
        "route on failure",
        "response on failure",
    ]
    assert manager.stats.discarded == 2


async def test_streamed_body_hands_over_after_the_last_chunk(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for chunk in (b"a", b"b", b"c"):
            recorder.events.append(f"chunk {chunk.decode()}")
            yield chunk
            # Give any work that was (wrongly) handed over a chance to run.
            await anyio.lowlevel.checkpoint()

    @app.get("/")
    async def endpoint(tasks: Tasks) -> StreamingResponse:
        tasks.after_response.schedule(recorder.record, "after response")
        return StreamingResponse(body())

    async with serving(app) as client:
        assert (await client.get("/")).content == b"abc"
        await manager.join(5)
    assert recorder.events == ["chunk a", "chunk b", "chunk c", "after response"]


async def test_response_background_and_base_http_middleware_do_not_interfere(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    ours_started = anyio.Event()

    async def ours() -> None:
        ours_started.set()

    async def slow_background() -> None:
        # Waits for our work: if ours waited for this background task, both would hang.
        with anyio.fail_after(5):
            await ours_started.wait()
        recorder.events.append("response.background finished")

    async def passthrough(request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)

    @app.get("/")
    async def endpoint(tasks: Tasks) -> Response:
        tasks.after_response.schedule(ours)
        return JSONResponse("ok", background=BackgroundTask(slow_background))

    app.add_middleware(BaseHTTPMiddleware, dispatch=passthrough)
    async with serving(app) as client:
        assert (await client.get("/")).json() == "ok"
        await manager.join(5)
    assert recorder.events == ["response.background finished"]
    assert manager.stats.succeeded == 1


async def test_sync_endpoint_with_all_three_modes(
    app: FastAPI, manager: TaskManager, recorder: Recorder
) -> None:
    @app.get("/")
    def endpoint(tasks: Tasks) -> str:
        tasks.schedule(recorder.record, "now")
        tasks.after_route.schedule(recorder.record, "route")
        tasks.after_response.schedule(recorder.record, "response")
        return "ok"

    async with serving(app) as client:
        assert (await client.get("/")).json() == "ok"
        await manager.join(5)
    assert recorder.events == ["now", "route", "response"]
