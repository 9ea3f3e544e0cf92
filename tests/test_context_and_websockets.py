"""SPEC section 2 rules 3 and 6: contextvars travel with the work; WebSocket endpoints."""

from __future__ import annotations

import contextvars
import logging

import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from fastapi_tasks import TaskManager, Tasks, add_tasks

from .conftest import Recorder, serving

pytestmark = pytest.mark.anyio

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def test_work_sees_contextvars_as_they_were_when_scheduled(
    app: FastAPI, manager: TaskManager
) -> None:
    seen: list[tuple[str, str]] = []

    async def read(label: str) -> None:
        seen.append((label, request_id.get()))
        request_id.set("changed by the task")  # must not leak into other tasks

    def read_sync(label: str) -> None:
        seen.append((label, request_id.get()))

    @app.get("/{rid}")
    async def endpoint(rid: str, tasks: Tasks) -> str:
        request_id.set(rid)
        tasks.schedule(read, "now")
        tasks.after_route.schedule(read, "route")
        tasks.after_response.schedule(read, "response")
        tasks.after_response.schedule(read_sync, "sync")
        request_id.set("changed after scheduling")
        return rid

    async with serving(app) as client:
        await client.get("/r-1")
        await manager.join(5)
    assert sorted(seen) == [("now", "r-1"), ("response", "r-1"), ("route", "r-1"), ("sync", "r-1")]


def test_websocket_endpoint_with_all_three_modes(recorder: Recorder) -> None:
    app = FastAPI()
    manager = add_tasks(app)

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket, tasks: Tasks) -> None:
        await websocket.accept()
        tasks.schedule(recorder.record, "now")
        tasks.after_route.schedule(recorder.record, "route")
        tasks.after_response.schedule(recorder.record, "response")
        await websocket.send_text("hello")
        await websocket.close()

    @app.websocket("/gone")
    async def gone(websocket: WebSocket, tasks: Tasks) -> None:
        await websocket.accept()
        tasks.after_response.schedule(recorder.record, "after disconnect")
        await websocket.receive_text()  # raises WebSocketDisconnect: a normal end

    @app.websocket("/broken")
    async def broken(websocket: WebSocket, tasks: Tasks) -> None:
        await websocket.accept()
        tasks.after_response.schedule(recorder.record, "never")
        tasks.after_response.task(run_on_failure=True).schedule(recorder.record, "on failure")
        raise RuntimeError("handler bug")

    client = TestClient(app)
    with client:
        session = client.websocket_connect("/ws")
        with session:
            assert session.receive_text() == "hello"
        manager.join_blocking(5)
        assert recorder.events == ["now", "route", "response"]
        session = client.websocket_connect("/gone")
        with pytest.raises(WebSocketDisconnect), session:
            session.close()
        manager.join_blocking(5)
        with pytest.raises(RuntimeError, match="handler bug"), client.websocket_connect("/broken"):
            pass
        manager.join_blocking(5)
    assert recorder.events[3:] == ["after disconnect", "on failure"]
    assert manager.stats.discarded == 1


async def test_task_log_records_carry_the_request_context(
    app: FastAPI, manager: TaskManager, task_logs: pytest.LogCaptureFixture
) -> None:
    class AddRequestId(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.request_id = request_id.get()
            return True

    async def fail() -> None:
        raise ValueError("x")

    def fail_sync() -> None:
        raise ValueError("x")

    @app.get("/{rid}")
    async def endpoint(rid: str, tasks: Tasks) -> str:
        request_id.set(rid)
        tasks.task(name="now").schedule(fail)
        tasks.after_route.task(name="route").schedule(fail)
        tasks.after_response.task(name="response").schedule(fail)
        tasks.after_response.task(name="sync").schedule(fail_sync)
        return "ok"

    log_filter = AddRequestId()
    task_logs.handler.addFilter(log_filter)
    try:
        async with serving(app) as client:
            await client.get("/req-1")
            await client.get("/req-2")
            await manager.join(5)
    finally:
        task_logs.handler.removeFilter(log_filter)
    seen = sorted(
        (r.__dict__["task_name"], r.__dict__["request_id"])
        for r in task_logs.records
        if r.levelno == logging.ERROR
    )
    assert seen == sorted(
        (name, rid) for name in ("now", "route", "response", "sync") for rid in ("req-1", "req-2")
    )
