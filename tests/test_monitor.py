"""SPEC section 13: the monitor's guard, JSON API, live stream and bounded state."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
import httpx2
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.types import Message

import fastapi_tasks.monitor._state as state_module
from fastapi_tasks import Task, TaskMode, Tasks, TaskState, add_tasks
from fastapi_tasks._request import RequestInfo
from fastapi_tasks.monitor import monitor_router
from fastapi_tasks.monitor._router import STREAM_INTERVAL, is_loopback, same_origin
from fastapi_tasks.monitor._state import TaskRecord
from fastapi_tasks.testing import run_lifespan

from .conftest import http_scope

pytestmark = pytest.mark.anyio

ORIGIN = {"origin": "http://test"}


@asynccontextmanager
async def client_for(
    app: FastAPI, client: tuple[str, int] = ("127.0.0.1", 5000)
) -> AsyncGenerator[httpx2.AsyncClient, None]:
    async with run_lifespan(app):
        transport = httpx2.ASGITransport(app=app, client=client)
        http = httpx2.AsyncClient(transport=transport, base_url="http://test")
        async with http:
            yield http


def monitored(**options: Any) -> tuple[FastAPI, Any]:
    app = FastAPI()
    manager = add_tasks(app, **options.pop("tasks", {}))
    app.include_router(monitor_router(**options), prefix="/tasks")
    return app, manager


async def noop(secret: str = "") -> None:
    pass


async def fail(message: str = "the partner said no") -> None:
    raise ValueError(message)


# -- the address check -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "headers", "expected"),
    [
        ("127.0.0.1", [], True),
        ("127.8.9.10", [], True),
        ("::1", [], True),
        ("::ffff:127.0.0.1", [], True),
        ("fe80::1%eth0", [], False),
        ("10.0.0.7", [], False),
        ("192.168.1.2", [], False),
        ("2001:db8::1", [], False),
        ("testclient", [], False),
        (None, [], False),
        ("127.0.0.1", ["x-forwarded-for"], False),
        ("127.0.0.1", ["forwarded"], False),
        ("127.0.0.1", ["x-real-ip"], False),
        ("127.0.0.1", ["accept", "user-agent"], True),
    ],
)
def test_is_loopback(host: str | None, headers: list[str], expected: bool) -> None:
    assert is_loopback(host, headers) is expected


def _request(headers: dict[str, str], scheme: str = "http") -> Request:
    return Request(
        {
            "type": "http",
            "method": "POST",
            "scheme": scheme,
            "path": "/tasks/api/tasks/1/cancel",
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            "server": ("monitor.example", 80),
        }
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"host": "monitor.example", "origin": "http://monitor.example"}, True),
        ({"host": "monitor.example:8000", "origin": "http://monitor.example:8000"}, True),
        ({"host": "monitor.example", "origin": "http://evil.example"}, False),
        ({"host": "monitor.example", "origin": "https://monitor.example"}, False),
        ({"host": "monitor.example", "origin": "null"}, False),
        ({"host": "monitor.example"}, False),
        ({"host": "monitor.example", "referer": "http://monitor.example/tasks/"}, True),
        ({"host": "monitor.example", "referer": "http://evil.example/tasks/"}, False),
        ({"host": "monitor.example", "referer": "/relative"}, False),
        ({"origin": "http://monitor.example"}, False),
    ],
)
def test_same_origin(headers: dict[str, str], expected: bool) -> None:
    assert same_origin(_request(headers)) is expected


# -- the guard -----------------------------------------------------------------------------


async def test_without_a_guard_only_loopback_clients_get_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fastapi_tasks")
    app, _ = monitored()
    async with client_for(app) as local:
        assert (await local.get("/tasks/api/summary")).status_code == 200
        forwarded = await local.get("/tasks/api/summary", headers={"X-Forwarded-For": "1.2.3.4"})
        assert forwarded.status_code == 403
        assert "dependencies=[...]" in forwarded.json()["detail"]
    async with client_for(app, ("203.0.113.9", 4000)) as stranger:
        assert (await stranger.get("/tasks/")).status_code == 403
        assert (await stranger.get("/tasks/api/snapshot")).status_code == 403
    warnings = [r for r in caplog.records if "monitor" in r.getMessage()]
    assert len(warnings) == 2  # one per startup
    assert all(warning.levelno == logging.WARNING for warning in warnings)
    assert "dependencies=[Depends(...)]" in warnings[0].getMessage()


security = HTTPBasic()


def admin_only(credentials: Annotated[HTTPBasicCredentials, Depends(security)]) -> None:
    good_user = secrets.compare_digest(credentials.username, "admin")
    good_password = secrets.compare_digest(credentials.password, "s3cret")
    if not (good_user and good_password):
        raise HTTPException(401, headers={"WWW-Authenticate": "Basic"})


async def test_a_guard_decides_whatever_the_address(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fastapi_tasks")
    app, _ = monitored(dependencies=[Depends(admin_only)])
    async with client_for(app, ("203.0.113.9", 4000)) as stranger:
        assert (await stranger.get("/tasks/api/summary")).status_code == 401
        wrong = await stranger.get("/tasks/api/summary", auth=("admin", "guess"))
        assert wrong.status_code == 401
        right = await stranger.get(
            "/tasks/api/summary", auth=("admin", "s3cret"), headers={"X-Forwarded-For": "1.2.3.4"}
        )
        assert right.status_code == 200
    assert not [r for r in caplog.records if "monitor" in r.getMessage()]


def test_monitor_router_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="history"):
        monitor_router(history=0)
    with pytest.raises(ValueError, match="history"):
        monitor_router(history=True)
    with pytest.raises(TypeError, match="Depends"):
        monitor_router(dependencies=[admin_only])


async def test_the_monitor_stays_out_of_the_openapi_schema() -> None:
    app, _ = monitored()

    @app.get("/visible")
    async def visible() -> str:
        return "ok"

    paths = app.openapi()["paths"]
    assert "/visible" in paths
    assert not [path for path in paths if path.startswith("/tasks")]


# -- the page and its API ------------------------------------------------------------------


async def test_page_and_assets_are_served_from_the_package() -> None:
    app, _ = monitored()
    async with client_for(app) as http:
        page = await http.get("/tasks/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert 'src="static/monitor.js"' in page.text
        assert "http://" not in page.text
        assert "https://" not in page.text
        script = await http.get("/tasks/static/monitor.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "EventSource" in script.text
        assert (await http.get("/tasks/static/monitor.css")).status_code == 200
        assert (await http.get("/tasks/static/favicon.svg")).status_code == 200
        assert (await http.get("/tasks/static/secrets.txt")).status_code == 404
        assert (await http.get("/tasks/api/nothing")).status_code == 404
        assert (await http.get("/tasks/api/now")).status_code == 404


async def test_snapshot_shows_counts_rates_durations_failures_and_requests() -> None:
    app, manager = monitored()

    @app.get("/signup")
    async def signup(tasks: Tasks) -> str:
        tasks.task(name="warm").schedule(noop, "mail@example.com")
        tasks.after_route.task(name="audit").schedule(noop)
        tasks.after_response.task(name="mail").schedule(noop)
        tasks.after_response.task(name="partner", retries=1).schedule(fail)
        return "ok"

    async with client_for(app) as http:
        await http.get("/signup")
        await manager.join(5)
        snapshot = (await http.get("/tasks/api/snapshot")).json()
        sections = {
            name: (await http.get(f"/tasks/api/{name}")).json()
            for name in ("summary", "series", "durations", "running", "waiting", "failures")
        }
        requests = (await http.get("/tasks/api/requests")).json()["requests"]

    counts = snapshot["summary"]["counts"]
    assert counts["succeeded"] == 3
    assert counts["failed"] == 1
    assert counts["retries"] == 1
    assert snapshot["summary"]["success_rate"] == 0.75
    assert sum(snapshot["series"]["finished"]) == 4
    assert sum(snapshot["series"]["failed"]) == 1
    assert len(snapshot["series"]["finished"]) == 900
    assert {row["name"] for row in snapshot["durations"]} == {"warm", "audit", "mail", "partner"}
    assert all(row["p50"] <= row["p95"] <= row["p99"] for row in snapshot["durations"])
    [failure] = snapshot["failures"]
    assert failure["name"] == "partner"
    assert failure["attempts"] == 2
    assert failure["error"] == "ValueError: the partner said no"
    assert failure["path"] == "/signup"
    assert sections["summary"]["summary"]["counts"] == counts
    assert set(sections["running"]["running"]) == {"total", "tasks"}
    [request] = requests
    assert (request["method"], request["path"], request["status"]) == ("GET", "/signup", 200)
    assert request["received"] <= request["response_started"] <= request["response_ended"]
    by_name = {task["name"]: task for task in request["tasks"]}
    assert set(by_name) == {"warm", "audit", "mail", "partner"}
    # The three modes made visible: after-response work started after the response ended.
    assert by_name["mail"]["started"] >= request["response_ended"]
    assert by_name["audit"]["started"] >= by_name["audit"]["scheduled"]
    assert "mail@example.com" not in json.dumps(snapshot)


async def test_task_detail_has_timings_attempts_request_and_traceback() -> None:
    app, manager = monitored()
    handles: list[Task[None]] = []

    @app.get("/orders")
    async def orders(tasks: Tasks) -> str:
        handles.append(tasks.after_response.task(name="ship").schedule(fail, "no stock"))
        return "ok"

    async with client_for(app) as http:
        await http.get("/orders")
        await manager.join(5)
        detail = (await http.get(f"/tasks/api/tasks/{handles[0].id}")).json()
        missing = await http.get("/tasks/api/tasks/999999999")

    assert detail["state"] == "failed"
    assert detail["attempts"] == 1
    assert detail["request"]["path"] == "/orders"
    assert detail["handed_over"] >= detail["request"]["response_ended"]
    assert detail["scheduled"] <= detail["handed_over"] <= detail["started"] <= detail["ended"]
    assert detail["traceback"].startswith("Traceback (most recent call last)")
    assert "ValueError: no stock" in detail["traceback"]
    assert "arguments" not in detail
    assert missing.status_code == 404


async def test_arguments_only_with_show_arguments() -> None:
    app, manager = monitored(show_arguments=True)

    gate = anyio.Event()

    async def blocked(secret: str) -> None:
        await gate.wait()

    async with client_for(app) as http:
        task = manager.schedule(noop, secret="tok-123")
        running = manager.schedule(blocked, secret="tok-456")
        await running.started.wait()
        live = (await http.get(f"/tasks/api/tasks/{running.id}")).json()
        gate.set()
        await manager.join(5)
        detail = (await http.get(f"/tasks/api/tasks/{task.id}")).json()
    assert live["arguments"] == "secret='tok-456'"
    assert live["state"] == "running"
    assert detail["arguments"] == "secret='tok-123'"
    assert detail["request"] is None
    assert detail["path"] is None
    assert detail["handed_over"] == detail["scheduled"]


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class BadMessage(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


async def test_unprintable_values_and_long_tracebacks_are_bounded() -> None:
    app, manager = monitored(show_arguments=True)

    async def raise_bad(value: object) -> None:
        raise BadMessage

    async with client_for(app) as http:
        bad = manager.schedule(raise_bad, Unprintable())
        long = manager.schedule(fail, "x" * (state_module.TRACEBACK_CHARS + 10))
        await manager.join(5)
        bad_detail = (await http.get(f"/tasks/api/tasks/{bad.id}")).json()
        long_detail = (await http.get(f"/tasks/api/tasks/{long.id}")).json()
    assert bad_detail["arguments"] == "<unprintable>"
    assert bad_detail["error"] == "<unprintable>"
    assert "BadMessage" in bad_detail["traceback"]
    assert len(long_detail["error"]) == state_module.TEXT_CHARS
    assert long_detail["traceback"].startswith("\N{HORIZONTAL ELLIPSIS}")
    assert len(long_detail["traceback"]) == state_module.TRACEBACK_CHARS + 1


async def test_cancel_is_a_same_origin_post() -> None:
    app, manager = monitored()
    gate = anyio.Event()

    async def blocked() -> None:
        await gate.wait()

    async with client_for(app) as http:
        task = manager.task(name="blocked").schedule(blocked)
        await task.started.wait()
        url = f"/tasks/api/tasks/{task.id}/cancel"
        assert (await http.get(url)).status_code == 405
        assert (await http.post(url)).status_code == 403
        assert (await http.post(url, headers={"origin": "http://evil.example"})).status_code == 403
        assert (
            await http.post("/tasks/api/tasks/424242/cancel", headers=ORIGIN)
        ).status_code == 404
        done = await http.post(url, headers=ORIGIN)
        assert done.json() == {"id": task.id, "cancelled": True}
        await task.wait()
        again = await http.post(url, headers={"referer": "http://test/tasks/"})
        assert again.json() == {"id": task.id, "cancelled": False}
    assert task.state.value == "cancelled"


async def test_history_is_a_ring_buffer() -> None:
    app, manager = monitored(history=3)
    async with client_for(app) as http:
        for _ in range(10):
            manager.schedule(noop)
        await manager.join(5)
        await http.get("/tasks/api/summary")  # taken in now, then again below: the ring wraps
        tasks = [manager.schedule(noop) for _ in range(10)]
        await manager.join(5)
        summary = (await http.get("/tasks/api/summary")).json()["summary"]
        oldest = await http.get(f"/tasks/api/tasks/{tasks[0].id}")
        newest = await http.get(f"/tasks/api/tasks/{tasks[-1].id}")
    assert summary["history"] == {"kept": 3, "limit": 3}
    assert summary["counts"]["succeeded"] == 20
    assert oldest.status_code == 404
    assert newest.status_code == 200


async def test_bounded_aggregates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "SAMPLES", 4)
    monkeypatch.setattr(state_module, "NAMES", 2)
    monkeypatch.setattr(state_module, "REQUESTS", 2)
    monkeypatch.setattr(state_module, "TASKS_PER_REQUEST", 2)
    app, manager = monitored()

    @app.get("/fan/{count}")
    async def fan(tasks: Tasks, count: int) -> str:
        for _ in range(count):
            tasks.task(name="fan").schedule(noop)
        return "ok"

    async with client_for(app) as http:
        for name in ("a", "b", "c", "d"):
            for _ in range(5):
                manager.task(name=name).schedule(noop)
            await manager.join(5)  # names take rows in the order they first finish
        for count in (1, 2, 5):
            await http.get(f"/fan/{count}")
            # One request's work at a time: on trio, work of different requests may
            # finish in either order, and the timeline keeps the latest requests.
            await manager.join(5)
        snapshot = (await http.get("/tasks/api/snapshot")).json()
    rows = {row["name"]: row for row in snapshot["durations"]}
    assert set(rows) == {"a", "b", state_module.OTHER_NAMES}
    assert rows["a"]["count"] == 5
    assert rows[state_module.OTHER_NAMES]["count"] == 10 + 8
    paths = [
        (request["path"], len(request["tasks"]), request["more_tasks"])
        for request in snapshot["requests"]
    ]
    assert paths == [("/fan/5", 2, 3), ("/fan/2", 2, 0)]


async def test_waiting_work_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "LISTED", 2)
    monkeypatch.setattr(state_module, "SCANNED", 4)
    app, manager = monitored(tasks={"max_concurrency": 3})
    gate = anyio.Event()
    limiter = anyio.CapacityLimiter(1)

    entered = anyio.Event()

    async def blocked() -> None:
        await gate.wait()

    async def holder() -> None:
        entered.set()
        await gate.wait()

    async with client_for(app) as http:
        manager.task(limiter=limiter).schedule(holder)
        second = manager.task(limiter=limiter).schedule(blocked)
        third = manager.task(limiter=limiter).schedule(blocked)
        queued = manager.schedule(blocked)
        await entered.wait()
        await third.started.wait()
        waiting = (await http.get("/tasks/api/waiting")).json()["waiting"]
        queued_reason = queued.waiting_for
        queued.cancel()  # ends without ever starting
        gate.set()
        await manager.join(5)
        cancelled = (await http.get(f"/tasks/api/tasks/{queued.id}")).json()
    assert cancelled["state"] == "cancelled"
    assert cancelled["started"] is None
    assert second.id != queued.id
    reasons = [(task["id"], task["waiting_for"]) for task in waiting["tasks"]]
    assert reasons == [(second.id, "limiter"), (third.id, "limiter")]  # the oldest first
    assert waiting["total"] == 1 + 2  # one pending, two running that wait
    assert queued_reason == "max_concurrency"


async def test_work_from_before_the_monitor_started_has_no_schedule_time() -> None:
    gate = anyio.Event()
    early: list[Task[None]] = []

    async def blocked() -> None:
        await gate.wait()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
        early.append(manager.schedule(blocked))  # before the monitor's own startup
        yield

    app = FastAPI(lifespan=lifespan)
    manager = add_tasks(app)
    app.include_router(monitor_router(), prefix="/tasks")
    async with client_for(app) as http:
        gate.set()
        await manager.join(5)
        detail = (await http.get(f"/tasks/api/tasks/{early[0].id}")).json()
    assert detail["state"] == "succeeded"
    assert detail["scheduled"] is None  # nobody listened when it was scheduled
    assert detail["handed_over"] is None
    assert detail["started"] is not None


async def test_a_monitor_whose_lifespan_did_not_run_answers_503() -> None:
    app = FastAPI()
    add_tasks(app)
    inner = FastAPI()
    inner.include_router(monitor_router(), prefix="/tasks")
    app.mount("/admin", inner)
    async with client_for(app) as http:
        response = await http.get("/admin/tasks/api/summary")
    assert response.status_code == 503


async def test_the_stream_sends_throttled_snapshots() -> None:
    # httpx's ASGI transport buffers whole responses: the stream is read with a send of ours.
    app, manager = monitored()
    chunks: list[bytes] = []
    two = anyio.Event()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message["headers"])
            assert headers[b"content-type"].startswith(b"text/event-stream")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if b"".join(chunks).count(b"event: snapshot") == 1:
                manager.schedule(noop)  # something new for the next message
            if b"".join(chunks).count(b"event: snapshot") >= 2:
                two.set()

    async def receive() -> Message:
        await two.wait()
        return {"type": "http.disconnect"}

    async with run_lifespan(app):
        for _ in range(200):
            manager.schedule(noop)
        with anyio.fail_after(10):
            await app(http_scope("/tasks/api/stream"), receive, send)
        await manager.join(5)
    text = b"".join(chunks).decode()
    snapshots = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    assert len(snapshots) >= 2
    assert snapshots[0]["summary"]["counts"]["scheduled"] >= 200
    assert snapshots[1]["now"] - snapshots[0]["now"] >= STREAM_INTERVAL * 0.9


def test_handed_over_follows_the_mode() -> None:
    info = RequestInfo({"type": "http", "method": "GET", "path": "/x"})

    def record(mode: TaskMode, request: RequestInfo | None) -> TaskRecord:
        return TaskRecord(1, "fake", mode, TaskState.PENDING, 10.0, None, None, 0, request)

    assert record("immediate", None).handed_over() == 10.0
    assert record("after_route", None).handed_over() is None
    assert record("after_route", info).handed_over() is None  # the response never started
    info.response_started, info.response_ended = 12.0, 13.0
    assert record("after_route", info).handed_over() == 12.0
    assert record("after_response", info).handed_over() == 13.0
    info.response_ended = 5.0  # scheduled after the moment: handed over at once
    assert record("after_response", info).handed_over() == 10.0
    assert repr(info) == "<RequestInfo GET '/x' status=None>"
