# pyright: reportPrivateUsage=false
"""SPEC section 8: each task in its own span, joined to FastAPI's native request span."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import fastapi_tasks._otel
from fastapi_tasks import Tasks, TaskState, add_tasks

from .conftest import serving

pytestmark = pytest.mark.anyio


def traced_app(
    *,
    tracing: bool = True,
    operation_spans: bool = True,
    exclude: Callable[[MutableMapping[str, Any]], bool] | None = None,
) -> tuple[FastAPI, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = TelemetryConfig(
        tracer_provider=provider, tracing=tracing, operation_spans=operation_spans, exclude=exclude
    )
    return FastAPI(telemetry=telemetry), exporter


async def work(email: str) -> None:
    pass


async def broken() -> None:
    raise ValueError("no luck")


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    return next(span for span in spans if span.name == name)


async def test_each_task_gets_a_span_tied_to_the_request() -> None:
    app, exporter = traced_app()
    manager = add_tasks(app)

    @app.get("/signup")
    async def signup(tasks: Tasks) -> str:
        tasks.task(name="warm cache").schedule(work, "a@example.com")
        tasks.after_route.task(name="audit").schedule(work, "b@example.com")
        tasks.after_response.task(name="welcome mail").schedule(work, "c@example.com")
        tasks.after_response.task(name="flaky").schedule(broken)
        return "ok"

    async with serving(app) as client:
        await client.get("/signup")
        await manager.join(5)

    spans = exporter.get_finished_spans()
    request = next(span for span in spans if span.kind is SpanKind.SERVER)
    assert request.context is not None
    request_trace = {
        s.context.span_id
        for s in spans
        if s.context is not None and s.context.trace_id == request.context.trace_id
    }
    for name, mode in (("warm cache", "immediate"), ("audit", "after_route")):
        span = by_name(spans, name)
        # A child within the request's trace: of the request span or of FastAPI's
        # operation span (endpoint, dependencies) that was current when it was scheduled.
        assert span.parent is not None
        assert span.parent.span_id in request_trace
        assert span.parent.trace_id == request.context.trace_id
        assert span.attributes is not None
        assert span.attributes["fastapi_tasks.mode"] == mode
        assert span.attributes["fastapi_tasks.state"] == "succeeded"
        assert span.kind is SpanKind.INTERNAL
    mail = by_name(spans, "welcome mail")
    assert mail.parent is None  # the request's span had ended: a new trace, linked to it
    assert mail.context is not None
    assert mail.context.trace_id != request.context.trace_id
    (link,) = mail.links
    assert link.context.trace_id == request.context.trace_id
    assert link.context.span_id in request_trace
    flaky = by_name(spans, "flaky")
    assert flaky.status.status_code is StatusCode.ERROR
    assert flaky.attributes is not None
    assert flaky.attributes["fastapi_tasks.state"] == "failed"
    assert flaky.attributes["fastapi_tasks.attempts"] == 1
    assert [event.name for event in flaky.events] == ["exception"]
    for span in spans:  # arguments never reach spans
        assert "example.com" not in repr(dict(span.attributes or {}))


async def test_work_outside_requests_starts_its_own_trace() -> None:
    app, exporter = traced_app()
    manager = add_tasks(app)
    async with serving(app):
        manager.task(name="nightly").schedule(work, "x")
        await manager.join(5)
    (span,) = exporter.get_finished_spans()
    assert span.name == "nightly"
    assert span.parent is None
    assert not span.links


@pytest.mark.parametrize(("tracing", "operation_spans"), [(False, True), (True, False)])
async def test_telemetry_switches_turn_task_spans_off(
    tracing: bool, operation_spans: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_span_work(monkeypatch)
    app, exporter = traced_app(tracing=tracing, operation_spans=operation_spans)
    manager = add_tasks(app)
    async with serving(app):
        task = manager.schedule(work, "x")
        await manager.join(5)
    assert task.state is TaskState.SUCCEEDED
    assert all(span.name != "work" for span in exporter.get_finished_spans())


def forbid_span_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any span the library would open fail its task, so a success proves none was."""

    def no_span(*args: object) -> None:
        raise AssertionError("span work happened")

    monkeypatch.setattr(fastapi_tasks._otel, "task_span", no_span)


async def test_without_a_configured_provider_no_span_work_happens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forbid_span_work(monkeypatch)
    app = FastAPI()  # the global provider is the API's stand-in: nothing is configured
    manager = add_tasks(app)
    async with serving(app):
        task = manager.schedule(work, "x")
        await manager.join(5)
    assert task.state is TaskState.SUCCEEDED


async def test_after_response_work_of_an_untraced_request_has_no_link() -> None:
    app, exporter = traced_app(exclude=lambda scope: True)  # FastAPI skips the request
    manager = add_tasks(app)

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        tasks.after_response.task(name="mail").schedule(work, "x")
        return "ok"

    async with serving(app) as client:
        await client.get("/")
        await manager.join(5)
    (span,) = exporter.get_finished_spans()
    assert span.name == "mail"
    assert not span.links


async def test_a_provider_set_by_the_apps_own_startup_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    global_provider: list[TracerProvider] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
        # What trace.set_tracer_provider(provider) does, without changing the
        # process-wide provider that the other tests rely on.
        global_provider.append(provider)
        yield

    proxy = trace.get_tracer_provider()
    monkeypatch.setattr(
        trace, "get_tracer_provider", lambda: global_provider[0] if global_provider else proxy
    )
    app = FastAPI(lifespan=lifespan)
    manager = add_tasks(app)
    async with serving(app):
        manager.task(name="after startup").schedule(work, "x")
        await manager.join(5)
    assert [span.name for span in exporter.get_finished_spans()] == ["after startup"]
