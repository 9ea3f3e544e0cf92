"""SPEC section 12: OpenTelemetry metrics from the lifecycle events."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.telemetry import TelemetryConfig
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

from fastapi_tasks import Task, TaskEvent, Tasks, add_tasks
from fastapi_tasks._events import EventKind
from fastapi_tasks._metrics import MetricsSwitch, TaskMetrics, meter_provider_from_telemetry
from fastapi_tasks._request import RequestInfo

from .conftest import serving

pytestmark = pytest.mark.anyio

Points = dict[str, list[Any]]


def metered_app(metrics: bool = True) -> tuple[FastAPI, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    return FastAPI(telemetry=TelemetryConfig(meter_provider=provider, metrics=metrics)), reader


def points(reader: InMemoryMetricReader) -> Points:
    """Data points of our instruments by instrument name."""
    found: Points = {}
    data = reader.get_metrics_data()
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != "fastapi_tasks":
                continue
            for metric in scope.metrics:
                found[metric.name] = list(metric.data.data_points)
    return found


def total(found: Points, name: str, **attributes: str) -> float:
    """Sum of a counter's points whose attributes include ``attributes``."""
    result = 0.0
    for point in found.get(name, []):
        assert isinstance(point, NumberDataPoint)
        point_attributes: Mapping[str, Any] = point.attributes or {}
        if all(point_attributes.get(key) == value for key, value in attributes.items()):
            result += point.value
    return result


def histogram(found: Points, name: str, **attributes: str) -> HistogramDataPoint:
    for point in found.get(name, []):
        assert isinstance(point, HistogramDataPoint)
        point_attributes: Mapping[str, Any] = point.attributes or {}
        if all(point_attributes.get(key) == value for key, value in attributes.items()):
            return point
    raise AssertionError(f"no {name} point with {attributes}")


async def work(email: str) -> None:
    pass


async def broken() -> None:
    raise ValueError("no luck")


def sync_work() -> None:
    pass


async def test_instruments_count_schedule_outcome_retries_duration_wait_and_active() -> None:
    app, reader = metered_app()
    manager = add_tasks(app)

    @app.get("/signup")
    async def signup(tasks: Tasks) -> str:
        tasks.task(name="warm").schedule(work, "a@example.com")
        tasks.after_route.task(name="audit").schedule(sync_work)
        tasks.after_response.task(name="mail").schedule(work, "c@example.com")
        tasks.after_response.task(name="flaky", retries=1).schedule(broken)
        return "ok"

    @app.get("/fails")
    async def fails(tasks: Tasks) -> str:
        tasks.after_response.task(name="mail").schedule(work, "d@example.com")
        raise HTTPException(500)

    async with serving(app) as client:
        await client.get("/signup")
        await client.get("/fails")
        await manager.join(5)
        found = points(reader)

    assert set(found) == {
        "fastapi_tasks.task.scheduled",
        "fastapi_tasks.task.finished",
        "fastapi_tasks.task.retries",
        "fastapi_tasks.task.duration",
        "fastapi_tasks.task.wait",
        "fastapi_tasks.task.active",
    }
    scheduled = "fastapi_tasks.task.scheduled"
    assert total(found, scheduled) == 5
    assert total(found, scheduled, **{"task.name": "mail", "task.mode": "after_response"}) == 2
    finished = "fastapi_tasks.task.finished"
    assert total(found, finished, **{"task.outcome": "succeeded"}) == 3
    assert total(found, finished, **{"task.outcome": "discarded", "task.name": "mail"}) == 1
    assert total(found, finished, **{"task.outcome": "failed", "error.type": "ValueError"}) == 1
    assert total(found, "fastapi_tasks.task.retries", **{"task.name": "flaky"}) == 1
    # Everything ended: the up-down counter is back to zero in both states.
    assert total(found, "fastapi_tasks.task.active", **{"task.state": "pending"}) == 0
    assert total(found, "fastapi_tasks.task.active", **{"task.state": "running"}) == 0
    duration = histogram(found, "fastapi_tasks.task.duration", **{"task.name": "flaky"})
    assert duration.count == 1
    assert duration.explicit_bounds[0] == 0.005
    wait = histogram(found, "fastapi_tasks.task.wait", **{"task.name": "audit"})
    assert wait.count == 1
    assert 0 <= wait.sum < 5
    # Low cardinality: no ids, no arguments anywhere.
    for point_list in found.values():
        for point in point_list:
            attributes: Mapping[str, Any] = point.attributes or {}
            values = {str(value) for value in attributes.values()}
            assert not any("example.com" in value for value in values)
            assert set(attributes) <= {
                "task.name",
                "task.mode",
                "task.state",
                "task.outcome",
                "error.type",
            }


async def test_work_outside_requests_and_cancelled_work_is_counted() -> None:
    app, reader = metered_app()
    manager = add_tasks(app)
    gate = anyio.Event()

    async def blocked() -> None:
        await gate.wait()

    async with serving(app):
        task: Task[None] = manager.task(name="blocked").schedule(blocked)
        await task.started.wait()
        running = points(reader)
        task.cancel()
        await manager.join(5)
        found = points(reader)

    assert total(running, "fastapi_tasks.task.active", **{"task.state": "running"}) == 1
    assert total(found, "fastapi_tasks.task.finished", **{"task.outcome": "cancelled"}) == 1
    # Immediate work outside a request: hand-over is the moment it was scheduled.
    assert histogram(found, "fastapi_tasks.task.wait", **{"task.name": "blocked"}).count == 1


class CustomError(Exception):
    pass


async def test_error_type_names_the_module_of_non_builtin_exceptions() -> None:
    app, reader = metered_app()
    manager = add_tasks(app)

    async def fail() -> None:
        raise CustomError

    async with serving(app):
        manager.task(name="custom").schedule(fail)
        await manager.join(5)
        found = points(reader)
    error_type = f"{__name__}.CustomError"
    assert total(found, "fastapi_tasks.task.finished", **{"error.type": error_type}) == 1


async def test_metrics_switch_off_records_nothing() -> None:
    app, reader = metered_app(metrics=False)
    manager = add_tasks(app)
    seen: list[TaskEvent] = []

    async with serving(app) as client:
        # A listener of our own sees no request info in a request that began before it.
        manager.add_listener(seen.append)
        manager.schedule(work, "x")
        await manager.join(5)
        await client.get("/missing")
    assert points(reader) == {}
    assert [event.kind for event in seen] == ["scheduled", "started", "finished"]
    assert all(event.request is None for event in seen)


def test_no_provider_configured_means_no_listener() -> None:
    assert meter_provider_from_telemetry(None) is None
    assert meter_provider_from_telemetry({"metrics": True}) is None  # the API's stand-in
    noop = metrics.NoOpMeterProvider()
    assert meter_provider_from_telemetry({"meter_provider": noop}) is None
    provider = MeterProvider()
    assert meter_provider_from_telemetry({"meter_provider": provider}) is provider
    assert meter_provider_from_telemetry({"meter_provider": provider, "metrics": False}) is None


async def test_switch_follows_the_provider() -> None:
    app = FastAPI()
    manager = add_tasks(app)
    switch = MetricsSwitch(manager)
    first, second = InMemoryMetricReader(), InMemoryMetricReader()
    telemetry_first = {"meter_provider": MeterProvider(metric_readers=[first])}
    telemetry_second = {"meter_provider": MeterProvider(metric_readers=[second])}
    switch.update(telemetry_first)
    switch.update(telemetry_first)  # unchanged: the same listener stays
    async with serving(app):
        manager.schedule(work, "x")
        await manager.join(5)
        switch.update(telemetry_second)
        manager.schedule(work, "y")
        await manager.join(5)
        switch.update(None)
        manager.schedule(work, "z")
        await manager.join(5)
    assert total(points(first), "fastapi_tasks.task.scheduled") == 1
    assert total(points(second), "fastapi_tasks.task.scheduled") == 1


async def test_a_global_provider_set_by_the_apps_own_startup_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    proxy = metrics.get_meter_provider()
    installed: list[MeterProvider] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
        # What metrics.set_meter_provider(provider) does, without changing the global
        # state of the test process for good.
        installed.append(provider)
        yield

    monkeypatch.setattr(metrics, "get_meter_provider", lambda: installed[0] if installed else proxy)
    app = FastAPI(lifespan=lifespan)
    manager = add_tasks(app)
    async with serving(app):
        manager.task(name="after startup").schedule(work, "x")
        await manager.join(5)
    assert total(points(reader), "fastapi_tasks.task.scheduled") == 1


async def test_events_the_instruments_cannot_place_are_skipped() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics_listener = TaskMetrics(provider.get_meter("fastapi_tasks"))
    app = FastAPI()
    manager = add_tasks(app)
    handles: list[Task[None]] = []

    @app.get("/later")
    async def later(tasks: Tasks) -> str:
        handles.append(tasks.after_response.schedule(work, "x"))
        return "ok"

    async with serving(app) as client:
        unseen: Task[None] = manager.schedule(work, "y")
        await client.get("/later")
        await manager.join(5)
    [deferred] = handles
    no_moment = RequestInfo({"method": "GET", "path": "/x"})

    def event(kind: EventKind, task: Task[None], **fields: Any) -> TaskEvent:
        return TaskEvent(kind, task, task.state, 1.0, 1, **fields)

    # Started and finished without a "scheduled" these instruments saw: not counted.
    metrics_listener(event("started", unseen))
    metrics_listener(event("finished", unseen))
    # A later mode with no recorded moment: counted, but no wait recorded.
    for kind in ("scheduled", "started", "enqueued", "finished"):
        metrics_listener(event(kind, deferred, request=no_moment))
    found = points(reader)
    assert total(found, "fastapi_tasks.task.scheduled") == 1
    assert total(found, "fastapi_tasks.task.active") == 0
    assert "fastapi_tasks.task.wait" not in found
