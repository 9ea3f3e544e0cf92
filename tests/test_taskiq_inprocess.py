"""Distributed mode without Redis: call-site errors, the broker's lifespan, options, tracing.

taskiq's ``InMemoryBroker`` runs a job in this process when it is sent, through the
same ``kiq()`` path and middlewares as any broker; a subclass whose ``kick`` raises
stands in for a broker that refuses. Real Redis and workers are in ``test_taskiq.py``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.types import Message, Scope
from taskiq import InMemoryBroker
from taskiq.message import BrokerMessage

from fastapi_tasks import (
    FastAPITasksBrokerError,
    FastAPITasksClosedError,
    Task,
    TaskEvent,
    Tasks,
    add_tasks,
    get_task_manager,
)
from fastapi_tasks.taskiq import TaskiqBroker, TracingMiddleware
from fastapi_tasks.testing import run_lifespan
from tests.conftest import serving

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # taskiq runs on asyncio only


class RefusingBroker(InMemoryBroker):
    """A broker whose every send fails, as a Redis that is down would."""

    async def kick(self, message: BrokerMessage) -> None:
        raise ConnectionError("the broker is unreachable")


class LifecycleBroker(InMemoryBroker):
    """Counts startup and shutdown; either can be told to fail."""

    def __init__(self, fail_startup: bool = False, fail_shutdown: bool = False) -> None:
        super().__init__(await_inplace=True)
        self.calls: list[str] = []
        self.fail_startup = fail_startup
        self.fail_shutdown = fail_shutdown

    async def startup(self) -> None:
        self.calls.append("startup")
        if self.fail_startup:
            raise ConnectionError("no Redis at startup")
        await super().startup()

    async def shutdown(self) -> None:
        self.calls.append("shutdown")
        if self.fail_shutdown:
            raise ConnectionError("no Redis at shutdown")
        await super().shutdown()


ran: list[tuple[str, int]] = []


async def _remember(label: str, count: int) -> None:
    ran.append((label, count))


# -- call-site errors ---------------------------------------------------------------


async def test_a_taskiq_task_on_an_app_without_a_broker_is_refused_at_schedule() -> None:
    broker = InMemoryBroker()
    job = broker.register_task(_remember, task_name="tests:remember")
    app = FastAPI()
    manager = add_tasks(app)
    async with run_lifespan(app):
        with pytest.raises(FastAPITasksBrokerError, match="got no broker") as caught:
            manager.schedule(job, "a", 1)
    assert "'tests:remember'" in str(caught.value)
    assert "InMemoryBroker" in str(caught.value)
    assert "add_tasks(app, broker=broker)" in str(caught.value)
    assert manager.stats.scheduled == 0


async def test_a_task_of_another_broker_is_refused_naming_both() -> None:
    ours, theirs = InMemoryBroker(), InMemoryBroker()
    theirs.queue_name = "theirs"  # type: ignore[attr-defined]
    job = theirs.register_task(_remember, task_name="tests:remember")
    app = FastAPI()
    manager = add_tasks(app, broker=ours)
    async with run_lifespan(app):
        with pytest.raises(FastAPITasksBrokerError, match="not to this app's broker") as caught:
            manager.schedule(job, "a", 1)
    assert "InMemoryBroker (queue 'theirs')" in str(caught.value)


async def test_arguments_that_do_not_fit_the_job_are_refused_at_schedule() -> None:
    broker = InMemoryBroker()
    job = broker.register_task(_remember, task_name="tests:remember")
    app = FastAPI()
    manager = add_tasks(app, broker=broker)
    async with run_lifespan(app):
        with pytest.raises(TypeError, match="taskiq task 'tests:remember'"):
            manager.schedule(job, "a", 1, 2)  # type: ignore[call-overload]


async def test_scheduling_a_job_after_shutdown_began_is_refused_naming_the_broker() -> None:
    broker = InMemoryBroker()
    job = broker.register_task(_remember, task_name="tests:remember")
    app = FastAPI()
    manager = add_tasks(app, broker=broker)
    async with run_lifespan(app):
        pass
    with pytest.raises(FastAPITasksClosedError, match="cannot enqueue taskiq task") as caught:
        manager.schedule(job, "a", 1)
    assert "InMemoryBroker" in str(caught.value)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_broker_on_trio_fails_at_startup_naming_asyncio_and_taskiq() -> None:
    broker = LifecycleBroker()
    app = FastAPI()
    add_tasks(app, broker=broker)
    with pytest.raises(RuntimeError, match="startup failed") as caught:
        async with run_lifespan(app):
            pass  # pragma: no cover - startup fails
    assert "taskiq runs on asyncio only" in str(caught.value)
    assert "trio" in str(caught.value)
    assert broker.calls == []


# -- the broker's lifespan -----------------------------------------------------------


async def test_the_lifespan_starts_the_broker_before_the_app_and_stops_it_after_the_drain() -> None:
    broker = LifecycleBroker()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
        broker.calls.append("app startup")
        yield
        broker.calls.append("app shutdown")

    app = FastAPI(lifespan=lifespan)
    manager = add_tasks(app, broker=broker)
    async with run_lifespan(app):
        assert manager.running
    assert broker.calls == ["startup", "app startup", "shutdown", "app shutdown"]


async def test_a_broker_in_a_worker_process_is_left_alone() -> None:
    broker = LifecycleBroker()
    broker.is_worker_process = True
    app = FastAPI()
    add_tasks(app, broker=broker)
    async with run_lifespan(app):
        pass
    assert broker.calls == []


async def test_a_broker_that_cannot_start_fails_the_startup_with_its_reason() -> None:
    broker = LifecycleBroker(fail_startup=True)
    app = FastAPI()
    add_tasks(app, broker=broker)
    with pytest.raises(RuntimeError, match="no Redis at startup"):
        async with run_lifespan(app):
            pass  # pragma: no cover - startup fails
    assert broker.calls == ["startup"]


async def test_a_broker_that_cannot_stop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    broker = LifecycleBroker(fail_shutdown=True)
    app = FastAPI()
    add_tasks(app, broker=broker)
    async with run_lifespan(app):
        pass
    assert broker.calls == ["startup", "shutdown"]
    assert any("failed to shut down" in record.getMessage() for record in caplog.records)


# -- enqueues as tasks ---------------------------------------------------------------


async def test_an_enqueue_is_a_task_with_events_options_and_taskiqs_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = InMemoryBroker(await_inplace=True)
    job = broker.register_task(_remember, task_name="tests:remember")
    app = FastAPI()
    manager = add_tasks(app, broker=broker)
    events: list[TaskEvent] = []
    manager.add_listener(events.append)
    caplog.set_level(logging.DEBUG, logger="fastapi_tasks")
    ran.clear()
    async with run_lifespan(app):
        plain = manager.schedule(job, "plain", 1)
        limited = manager.task(
            limiter=anyio.CapacityLimiter(1), timeout=5, name="limited"
        ).schedule(job, "limited", 2)
        timed = manager.task(timeout=5).schedule(job, "timed", 3)
        with anyio.fail_after(10):
            await manager.join()
            again = await plain()
    assert sorted(ran) == [("limited", 2), ("plain", 1), ("plain", 1), ("timed", 3)]
    for handle in (plain, limited, timed):
        assert handle.state.value == "succeeded"
        assert handle.result.task_id  # type: ignore[union-attr]
    assert again.task_id != plain.result.task_id  # type: ignore[union-attr]
    assert plain.name == "tests:remember"
    assert limited.name == "limited"
    kinds = [(event.kind, event.task.name) for event in events]
    assert ("enqueued", "tests:remember") in kinds
    assert kinds.index(("enqueued", "limited")) < kinds.index(("finished", "limited"))
    assert manager.stats.succeeded == 3
    assert any(
        "enqueued to InMemoryBroker as job" in record.getMessage() for record in caplog.records
    )
    assert repr(TaskiqBroker(broker)) == "<TaskiqBroker InMemoryBroker>"


async def test_enqueue_failures_go_through_retries_and_on_error() -> None:
    broker = RefusingBroker()
    job = broker.register_task(_remember, task_name="tests:remember")
    app = FastAPI()
    manager = add_tasks(app, broker=broker)
    failures: list[BaseException] = []

    async def on_error(task: Task[Any], exc: BaseException) -> None:
        failures.append(exc)

    async with run_lifespan(app):
        handle = manager.task(retries=1, on_error=on_error).schedule(job, "x", 1)
        plain = manager.schedule(job, "y", 2)
        with anyio.fail_after(10):
            await manager.join()
    assert handle.attempts == 2
    assert plain.state.value == "failed"
    (exc,) = failures
    assert type(exc).__name__ == "SendTaskError"
    assert isinstance(exc.__cause__, ConnectionError)


# -- the after-route gate -----------------------------------------------------------


async def test_after_route_jobs_gate_the_response_and_plain_work_does_not() -> None:
    broker = InMemoryBroker(await_inplace=True)
    job = broker.register_task(_remember, task_name="tests:remember")
    app = FastAPI()
    add_tasks(app, broker=broker)
    ran.clear()

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.after_route.schedule(_remember, "in process", 0)
        tasks.after_route.schedule(job, "job", 1)
        tasks.after_route.schedule(job, "job", 11)
        tasks.after_response.schedule(job, "later", 2)
        return "ok"

    async with serving(app) as client:
        response = await client.get("/")
        assert response.status_code == 200
        # Enqueued (and, in memory, run) before the response started.
        assert {("job", 1), ("job", 11)} <= set(ran)
        with anyio.fail_after(10):
            await get_task_manager(app).join()
    assert ("later", 2) in ran


async def test_a_refused_after_route_job_replaces_the_response_and_drops_the_apps_messages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = RefusingBroker()
    job = broker.register_task(_remember, task_name="tests:remember")
    app = FastAPI()
    add_tasks(app, broker=broker)
    ran.clear()

    @app.get("/stream")
    async def endpoint(tasks: Tasks) -> Any:
        from starlette.responses import StreamingResponse

        tasks.after_route.schedule(job, "job", 1)
        tasks.after_response.schedule(_remember, "after response", 2)
        tasks.after_response.task(run_on_failure=True).schedule(_remember, "on failure", 3)

        async def chunks() -> AsyncIterator[bytes]:
            yield b"one"
            yield b"two"

        return StreamingResponse(chunks())

    async with serving(app) as client:
        response = await client.get("/stream")
        with anyio.fail_after(10):
            await get_task_manager(app).join()
    assert response.status_code == 503
    assert b"one" not in response.content
    assert ran == [("on failure", 3)]
    (line,) = [r for r in caplog.records if "answered 503" in r.getMessage()]
    assert line.levelno == logging.ERROR
    assert "GET /stream" in line.getMessage()


async def test_a_503_that_cannot_be_sent_breaks_the_response() -> None:
    broker = RefusingBroker()
    job = broker.register_task(_remember, task_name="tests:remember")
    app = FastAPI()
    add_tasks(app, broker=broker)
    ran.clear()

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.after_route.schedule(job, "job", 1)
        tasks.after_response.task(run_on_failure=True).schedule(_remember, "on failure", 3)
        return "ok"

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        raise OSError("the client is gone")

    async with run_lifespan(app) as state:
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "headers": [],
            "state": state.copy(),
        }
        with pytest.raises(OSError, match="the client is gone"):
            await app(scope, receive, send)
        with anyio.fail_after(10):
            await get_task_manager(app).join()
    assert ran == [("on failure", 3)]  # the response broke: only run_on_failure work ran


# -- tracing -------------------------------------------------------------------------


async def test_an_enqueue_is_a_producer_span_and_the_worker_span_links_to_it() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(TracingMiddleware(provider))
    job = broker.register_task(_remember, task_name="tests:remember")

    async def failing(label: str) -> None:
        raise ValueError(label)

    broken = broker.register_task(failing, task_name="tests:failing")
    app = FastAPI(telemetry={"tracer_provider": provider})
    add_tasks(app, broker=broker)

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.schedule(job, "traced", 1)
        tasks.schedule(broken, "oops")
        return "ok"

    async with serving(app) as client:
        await client.get("/")
        with anyio.fail_after(10):
            await get_task_manager(app).join()
    spans = {(span.name, span.kind): span for span in exporter.get_finished_spans()}
    producer = spans[("tests:remember", SpanKind.PRODUCER)]
    consumer = spans[("tests:remember", SpanKind.CONSUMER)]
    assert producer.attributes is not None
    job_id = producer.attributes["messaging.message.id"]
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.message.id"] == job_id
    assert producer.context is not None
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
    failed = spans[("tests:failing", SpanKind.CONSUMER)]
    assert failed.status.status_code.name == "ERROR"


async def test_the_worker_middleware_without_a_producer_starts_an_unlinked_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(TracingMiddleware(provider))
    job = broker.register_task(_remember, task_name="tests:remember")
    await broker.startup()
    try:
        await job.kiq("direct", 1)  # no span around it: nothing to link to
    finally:
        await broker.shutdown()
    (span,) = exporter.get_finished_spans()
    assert span.kind is SpanKind.CONSUMER
    assert list(span.links) == []


def test_the_worker_middleware_ignores_a_job_it_did_not_start() -> None:
    from taskiq import TaskiqMessage, TaskiqResult

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    middleware = TracingMiddleware(provider)
    message = TaskiqMessage(task_id="unknown", task_name="tests:x", labels={}, args=[], kwargs={})
    result: TaskiqResult[None] = TaskiqResult(is_err=True, return_value=None, execution_time=0.0)
    middleware.on_error(message, result, ValueError("x"))
    middleware.post_execute(message, result)
    assert exporter.get_finished_spans() == ()
