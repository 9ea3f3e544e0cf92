"""OpenTelemetry metrics for tasks, recorded by a listener on the lifecycle events.

The instruments come from the meter provider of the app's native telemetry
(``FastAPI(telemetry={"meter_provider": ...})``), else the global one, and follow its
``metrics`` switch. When no provider is configured nothing is registered: the manager
keeps no listener for metrics, and tasks pay nothing. ``opentelemetry-api`` comes with
FastAPI; it is imported only when the app's telemetry could record.

No semantic convention exists for task queues; the names and attributes are ours, and
stay low-cardinality: a task's name and mode, its outcome and the exception type, never
an id or an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._events import TaskEvent
from ._request import RequestInfo

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter, MeterProvider

    from ._manager import TaskManager
    from ._task import Task

__all__ = ["MetricsSwitch", "TaskMetrics", "meter_provider_from_telemetry"]

# The OpenTelemetry semantic conventions' advice for messaging durations, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)

# The API's stand-in for "no SDK configured yet" has no public name (FastAPI checks it
# the same way): measurements made through it are dropped.
_UNCONFIGURED = {("opentelemetry.metrics._internal", "_ProxyMeterProvider")}


def meter_provider_from_telemetry(telemetry: Mapping[str, Any] | None) -> MeterProvider | None:
    """The meter provider our instruments use, or None when the app would not record."""
    if telemetry is None or not telemetry.get("metrics", True):
        return None
    try:
        from opentelemetry import metrics
    except ImportError:  # pragma: no cover - FastAPI without opentelemetry-api
        return None
    provider: MeterProvider = telemetry.get("meter_provider") or metrics.get_meter_provider()
    kind = type(provider)
    if isinstance(provider, metrics.NoOpMeterProvider) or (
        (kind.__module__, kind.__name__) in _UNCONFIGURED
    ):
        return None
    return provider


class TaskMetrics:
    """The instruments of one app, fed by ``manager.add_listener(metrics)``."""

    __slots__ = (
        "_active",
        "_attributes",
        "_duration",
        "_finished",
        "_retries",
        "_scheduled",
        "_unfinished",
        "_wait",
    )

    def __init__(self, meter: Meter) -> None:
        self._scheduled = meter.create_counter(
            "fastapi_tasks.task.scheduled",
            unit="{task}",
            description="Tasks scheduled.",
        )
        self._finished = meter.create_counter(
            "fastapi_tasks.task.finished",
            unit="{task}",
            description="Tasks that reached a final state, by outcome.",
        )
        self._retries = meter.create_counter(
            "fastapi_tasks.task.retries",
            unit="{retry}",
            description="Failed attempts that are retried.",
        )
        self._duration = meter.create_histogram(
            "fastapi_tasks.task.duration",
            unit="s",
            description="Time from a task's first attempt to its end.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._wait = meter.create_histogram(
            "fastapi_tasks.task.wait",
            unit="s",
            description="Time from a task's hand-over to its first attempt.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._active = meter.create_up_down_counter(
            "fastapi_tasks.task.active",
            unit="{task}",
            description="Tasks pending or running.",
        )
        # One attributes mapping per (name, mode) and (name, mode, state): built once.
        self._attributes: dict[tuple[str, ...], dict[str, str]] = {}
        # Each unfinished task these instruments saw scheduled: when, and its request
        # (for the wait) while it is pending; None once it runs.
        self._unfinished: dict[Task[Any], tuple[float, RequestInfo | None] | None] = {}

    def _labels(self, *key: str) -> dict[str, str]:
        attributes = self._attributes.get(key)
        if attributes is None:
            name, mode, *rest = key
            attributes = {"task.name": name, "task.mode": mode}
            if rest:
                attributes["task.state"] = rest[0]
            self._attributes[key] = attributes
        return attributes

    def __call__(self, event: TaskEvent) -> None:
        kind = event.kind
        task = event.task
        if kind == "scheduled":
            self._unfinished[task] = (event.time, event.request)
            self._scheduled.add(1, self._labels(task.name, task.mode))
            self._active.add(1, self._labels(task.name, task.mode, "pending"))
        elif kind == "started":
            pending = self._unfinished.get(task)
            if pending is None:  # scheduled before these instruments existed
                return
            self._unfinished[task] = None
            name, mode = task.name, task.mode
            self._active.add(-1, self._labels(name, mode, "pending"))
            self._active.add(1, self._labels(name, mode, "running"))
            scheduled, request = pending
            if request is not None:
                handed_over = request.handed_over(mode, scheduled)
            else:  # outside a request only immediate work is handed over when scheduled
                handed_over = scheduled if mode == "immediate" else None
            if handed_over is not None:
                self._wait.record(max(event.time - handed_over, 0.0), self._labels(name, mode))
        elif kind == "retrying":
            attributes = dict(self._labels(task.name, task.mode))
            attributes["error.type"] = _error_type(event.exception)
            self._retries.add(1, attributes)
        elif kind == "finished":
            self._end(event)

    def _end(self, event: TaskEvent) -> None:
        task = event.task
        name, mode = task.name, task.mode
        started = event.attempt > 0
        if task in self._unfinished:
            del self._unfinished[task]
            self._active.add(-1, self._labels(name, mode, "running" if started else "pending"))
        attributes = dict(self._labels(name, mode))
        attributes["task.outcome"] = event.state.value
        if event.exception is not None:
            attributes["error.type"] = _error_type(event.exception)
        self._finished.add(1, attributes)
        duration = task.duration
        if started and duration is not None:
            self._duration.record(duration, attributes)


def _error_type(exception: BaseException | None) -> str:
    kind = type(exception)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


class MetricsSwitch:
    """Keeps one manager's metrics listener in line with the app's telemetry settings."""

    __slots__ = ("_listener", "_manager", "_provider")

    def __init__(self, manager: TaskManager) -> None:
        self._manager = manager
        self._provider: MeterProvider | None = None
        self._listener: TaskMetrics | None = None

    def update(self, telemetry: Mapping[str, Any] | None) -> None:
        """Re-read the provider (the app's startup may have set a global one)."""
        provider = meter_provider_from_telemetry(telemetry)
        if provider is self._provider:
            return
        if self._listener is not None:
            self._manager.remove_listener(self._listener)
            self._listener = None
        self._provider = provider
        if provider is not None:
            from ._version import __version__

            self._listener = TaskMetrics(provider.get_meter("fastapi_tasks", __version__))
            self._manager.add_listener(self._listener)
