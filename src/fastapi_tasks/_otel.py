"""OpenTelemetry spans for tasks, joined to FastAPI's own native telemetry.

Nothing here is imported unless the app's telemetry has tracing on, operation spans
on, and a tracer provider that is really configured; otherwise a task pays for one
``is None`` check. ``opentelemetry-api`` comes with FastAPI; the ``[otel]`` extra
declares it for setups that install the API separately.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from ._task import Task

__all__ = ["task_span", "tracer_from_telemetry"]


def tracer_from_telemetry(telemetry: Mapping[str, Any] | None) -> Tracer | None:
    """The tracer our spans use, or None when the app's telemetry would not trace."""
    if telemetry is None or not telemetry.get("tracing", True):
        return None
    if not telemetry.get("operation_spans", True):
        return None
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - FastAPI without opentelemetry-api
        return None
    provider = telemetry.get("tracer_provider") or trace.get_tracer_provider()
    # The API's stand-ins for "no SDK configured yet": spans from them are dropped.
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    from ._version import __version__

    return provider.get_tracer("fastapi_tasks", __version__)


@contextmanager
def task_span(tracer: Tracer, task: Task[Any]) -> Generator[None, None, None]:
    """Run the task in its own span, tied to the span of the request that scheduled it.

    Immediate and after-route work is handed over while the request is open: its
    span is a child of the request's. After-response work is handed over once the
    response is complete and FastAPI has ended the request's span: it starts a new
    trace with a link to the request. Work scheduled outside a request (startup, a
    CLI) has no request to tie to and starts a trace of its own. A job handed to a
    broker gets a producer span.
    """
    from opentelemetry import context, trace

    from ._task import BrokerWork

    links = None
    start_context = None
    if task.mode == "after_response":
        parent_context = trace.get_current_span().get_span_context()
        if parent_context.is_valid:
            links = [trace.Link(parent_context)]
        start_context = context.Context()
    with tracer.start_as_current_span(
        task.name,
        context=start_context,
        links=links,
        # A job for a broker is a message sent: its span is a producer span, and
        # the adapter adds the job id once it chose it.
        kind=trace.SpanKind.PRODUCER if isinstance(task, BrokerWork) else trace.SpanKind.INTERNAL,
        attributes={"fastapi_tasks.id": task.id, "fastapi_tasks.mode": task.mode},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        finally:
            span.set_attribute("fastapi_tasks.state", task.state.value)
            span.set_attribute("fastapi_tasks.attempts", task.attempts)
            exception = task.exception
            if exception is not None:
                span.record_exception(exception)
                span.set_status(trace.StatusCode.ERROR, type(exception).__qualname__)
