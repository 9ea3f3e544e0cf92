"""Distributed work on taskiq: the broker adapter behind ``add_tasks(app, broker=...)``.

``add_tasks(app, broker=broker)`` wraps a taskiq ``AsyncBroker`` in ``TaskiqBroker``.
Scheduling a function decorated with ``@broker.task`` then enqueues it at its mode's
moment, as ``.kiq(*args, **kwargs)`` would; the handle's ``result`` is taskiq's
``AsyncTaskiqTask`` (its ``task_id`` names the job). The trace context of the enqueue
travels in the job's labels; ``TracingMiddleware``, added to the worker's broker,
runs each job in a consumer span linked to the span that enqueued it.

This module imports taskiq: it is only imported for an app that has a broker, or by
a worker that uses the middleware. It needs the ``fastapi-tasks[taskiq]`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

try:
    from taskiq import AsyncBroker, AsyncTaskiqDecoratedTask, TaskiqMiddleware
except ImportError as exc:  # pragma: no cover - taskiq is installed where tests run
    raise ImportError("distributed mode needs taskiq: install fastapi-tasks[taskiq]") from exc

from ._task import BrokerWork, broker_label
from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, TracerProvider
    from taskiq import AsyncTaskiqTask, TaskiqMessage, TaskiqResult

__all__ = ["TaskiqBroker", "TracingMiddleware", "adapt_broker"]

_otel_propagate: Any = None
_otel_trace: Any = None
try:  # opentelemetry-api comes with FastAPI; imported once, not per enqueue
    from opentelemetry import propagate as _otel_propagate
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - FastAPI without opentelemetry-api
    pass


class TaskiqBroker:
    """The app's taskiq broker as the task manager sees it (made by ``add_tasks``)."""

    __slots__ = ("broker", "name")

    def __init__(self, broker: AsyncBroker) -> None:
        self.broker = broker
        self.name = broker_label(broker)

    def __repr__(self) -> str:
        return f"<TaskiqBroker {self.name}>"

    @property
    def is_worker(self) -> bool:
        # Read at startup, not when add_tasks() ran: `taskiq worker` imports the
        # module that builds the app first, and marks the broker afterwards.
        return self.broker.is_worker_process

    def owns(self, func: object) -> bool:
        """Whether ``func`` is a task of this broker (``@broker.task``)."""
        return isinstance(func, AsyncTaskiqDecoratedTask) and func.broker is self.broker

    def job_name(self, func: Any) -> str:
        task: AsyncTaskiqDecoratedTask[Any, Any] = func
        return task.task_name

    def job_id(self, job: Any) -> str | None:
        sent: AsyncTaskiqTask[Any] = job
        return sent.task_id

    async def enqueue(self, work: BrokerWork) -> AsyncTaskiqTask[Any]:
        """Send one job, as ``task.kiq(*args, **kwargs)`` would, with the trace context.

        Raises taskiq's ``SendTaskError`` (caused by the broker's own error) when
        the broker does not take it.
        """
        task = cast("AsyncTaskiqDecoratedTask[Any, Any]", work.func)
        kicker = task.kicker()
        # The id is chosen here, as kiq() would, so the span can carry it even
        # when sending fails.
        job_id = self.broker.id_generator()
        kicker.with_task_id(job_id)
        labels = _trace_labels(job_id)
        if labels:
            kicker.with_labels(**labels)
        return await kicker.kiq(*work.args, **work.kwargs)

    async def startup(self) -> None:
        await self.broker.startup()

    async def shutdown(self) -> None:
        await self.broker.shutdown()


def adapt_broker(broker: object) -> TaskiqBroker:
    """Check that ``broker`` is a taskiq ``AsyncBroker`` and wrap it for the manager."""
    if not isinstance(broker, AsyncBroker):
        raise TypeError(
            "add_tasks(broker=...) needs a taskiq AsyncBroker (for example "
            f"taskiq_redis.RedisStreamBroker), got {broker!r} of type "
            f"{type(broker).__qualname__}"
        )
    return TaskiqBroker(broker)


def _trace_labels(job_id: str) -> dict[str, str]:
    """Tag the enqueue's span with the job id, and carry its context in the job's labels."""
    if _otel_trace is None:  # pragma: no cover - FastAPI without opentelemetry-api
        return {}
    span = _otel_trace.get_current_span()
    if not span.get_span_context().is_valid:
        return {}
    span.set_attribute("messaging.system", "taskiq")  # a no-op on a span not recorded
    span.set_attribute("messaging.message.id", job_id)
    carrier: dict[str, str] = {}
    _otel_propagate.inject(carrier)
    return carrier


class TracingMiddleware(TaskiqMiddleware):
    """For taskiq workers: run each job in a consumer span linked to its enqueue's span.

    Add it to the broker the worker runs (``broker.add_middlewares(TracingMiddleware())``)
    once an OpenTelemetry SDK is configured in the worker process. The span is named
    after the taskiq task, carries the job id, and links to the producer span of the
    web process that enqueued the job; a job that raises records the exception.

    Args:
        tracer_provider: Where the spans go; the global provider when ``None``.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        super().__init__()
        self._provider = tracer_provider
        self._running: dict[str, tuple[Span, object]] = {}

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        from opentelemetry import context, propagate, trace

        provider = self._provider or trace.get_tracer_provider()
        tracer = provider.get_tracer("fastapi_tasks.taskiq", __version__)
        producer: Context = propagate.extract(message.labels)
        producer_span = trace.get_current_span(producer).get_span_context()
        links = [trace.Link(producer_span)] if producer_span.is_valid else None
        span = tracer.start_span(
            message.task_name,
            context=context.Context(),
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "taskiq",
                "messaging.operation.type": "process",
                "messaging.message.id": message.task_id,
            },
        )
        # The job runs in the same asyncio task as this hook and post_execute().
        token = context.attach(trace.set_span_in_context(span))
        self._running[message.task_id] = (span, token)
        return message

    def on_error(
        self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException
    ) -> None:
        from opentelemetry import trace

        entry = self._running.get(message.task_id)
        if entry is not None:
            span = entry[0]
            span.record_exception(exception)
            span.set_status(trace.StatusCode.ERROR, type(exception).__qualname__)

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        from opentelemetry import context

        entry = self._running.pop(message.task_id, None)
        if entry is not None:
            span, token = entry
            context.detach(token)  # type: ignore[arg-type]
            span.end()
