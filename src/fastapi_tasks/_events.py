"""Lifecycle events: what the manager publishes, who listens, and the built-in log lines.

Each change in a task's life is published once, by the code that makes the change:
``scheduled``, ``started``, ``retrying``, ``finished`` (with its final state), and
``enqueued`` for work handed to a broker. The manager keeps its counters and writes
its log lines at those same points; user listeners (``manager.add_listener``) get a
``TaskEvent`` only when there are any, so without them an event costs one check.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple, cast

from ._request import RequestInfo
from ._task import BrokerWork, Task, TaskState, Work

__all__ = [
    "KINDS",
    "EventKind",
    "Listener",
    "Listeners",
    "TaskEvent",
    "current_task",
    "current_work",
    "log_discarded",
    "log_enqueued",
    "log_failure",
    "log_retry",
    "log_succeeded",
    "safe_repr",
    "thread_work",
]

logger = logging.getLogger("fastapi_tasks")

EventKind = Literal["scheduled", "started", "retrying", "finished", "enqueued"]
"""What happened to the task."""


class TaskEvent(NamedTuple):
    """One change in a task's life, as listeners receive it (an immutable named tuple).

    Attributes:
        kind: ``"scheduled"``, ``"started"``, ``"retrying"``, ``"finished"`` or
            ``"enqueued"`` (handed to a broker).
        task: The task's handle.
        state: The task's state right after the change (for ``"finished"``, its
            outcome: succeeded, failed, cancelled or discarded).
        time: When it happened, in seconds since the epoch (``time.time()``).
        attempt: The attempt the change belongs to (0 before the first one).
        exception: The exception that made an attempt fail (``"retrying"``) or the
            task fail (``"finished"``), else ``None``.
        request: The request that scheduled the task (its path, and when its
            response started and ended), or ``None`` for work scheduled outside a
            request, or in a request that began before the first listener was added.
    """

    kind: EventKind
    task: Task[Any]
    state: TaskState
    time: float
    attempt: int
    exception: BaseException | None = None
    request: RequestInfo | None = None


# Builds the tuple without the generated __new__'s Python frame: with listeners, each
# task makes several events.
_new_event = cast(
    "Callable[[type[TaskEvent], tuple[Any, ...]], TaskEvent]",
    tuple.__new__,  # pyright: ignore[reportUnknownMemberType]
)

KINDS: tuple[EventKind, ...] = ("scheduled", "started", "retrying", "finished", "enqueued")


Listener = Callable[[TaskEvent], object]
"""A function called with each [`TaskEvent`][fastapi_tasks.TaskEvent] on the loop's thread."""

thread_work: contextvars.ContextVar[Work | None] = contextvars.ContextVar(
    "fastapi_tasks_thread_work", default=None
)
"""The work a worker thread runs (sync work, sync ``on_error`` handlers), in its context."""


def current_work() -> Work | None:
    """The work whose task (or worker thread) runs the calling code, if any.

    On the event loop the work's own coroutine, ``execute(work, ...)``, is on the
    call stack of everything the work awaits: finding it there on demand costs
    nothing per task, where a context variable set in every task would cost each
    one a context copy. Worker threads carry the work in ``thread_work``.
    """
    work = thread_work.get()
    if work is not None:
        return work
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "execute":
            found = frame.f_locals.get("work")
            if isinstance(found, Work):
                return found
        frame = frame.f_back
    return None


def current_task() -> Task[Any] | None:
    """Return the handle of the background work that is running the calling code, else ``None``.

    Inside a task, in its ``on_error`` handler, and in a sync task's worker thread,
    this is the task's own handle, so work can log or tag itself
    (``current_task().id``) without being passed its handle. Tasks or threads that
    the work starts by itself are not the work: there it returns ``None``.
    """
    return current_work()


class Listeners:
    """The user's listeners of one manager, by the kinds of event each one wants.

    Immutable: adding or removing a listener makes a new one, and the manager holds
    one only while there is a listener, so that without any an event costs one
    ``is not None`` check. Each kind has its own tuple of the listeners that want it,
    checked before an event is built: a listener of ``"finished"`` alone spares every
    task two events. Each listener that raises is logged once.
    """

    __slots__ = (
        "_broken",
        "_wanted",
        "enqueued",
        "finished",
        "items",
        "retrying",
        "scheduled",
        "started",
    )

    def __init__(
        self, wanted: tuple[tuple[Listener, frozenset[str]], ...], broken: set[int]
    ) -> None:
        self._wanted = wanted
        self._broken = broken
        self.items = tuple(listener for listener, _ in wanted)
        self.scheduled = self._wanting("scheduled")
        self.started = self._wanting("started")
        self.retrying = self._wanting("retrying")
        self.finished = self._wanting("finished")
        self.enqueued = self._wanting("enqueued")

    def _wanting(self, kind: str) -> tuple[Listener, ...]:
        return tuple(listener for listener, kinds in self._wanted if kind in kinds)

    def with_listener(
        self, listener: Listener, kinds: Iterable[EventKind] | None = None
    ) -> Listeners:
        if not callable(listener):
            raise TypeError(f"a listener must be callable as listener(event), got {listener!r}")
        wanted = frozenset(KINDS if kinds is None else kinds)
        if isinstance(kinds, str) or wanted.difference(KINDS):
            raise ValueError(
                f"kinds must be a collection of {', '.join(map(repr, KINDS))}, got {kinds!r}"
            )
        return Listeners((*self._wanted, (listener, wanted)), set(self._broken))

    def without_listener(self, listener: Listener) -> Listeners | None:
        if listener not in self.items:
            raise ValueError(f"{listener!r} is not a listener of this manager")
        index = self.items.index(listener)
        wanted = self._wanted[:index] + self._wanted[index + 1 :]
        if not wanted:
            return None
        return Listeners(wanted, self._broken - {id(listener)})

    def publish(
        self,
        kind: EventKind,
        work: Work,
        exception: BaseException | None = None,
        when: float | None = None,
    ) -> None:
        event = _new_event(
            TaskEvent,
            (kind, work, work.state, when or time.time(), work.attempts, exception, work.request),
        )
        listeners: tuple[Listener, ...] = getattr(self, kind)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                if id(listener) not in self._broken:
                    self._broken.add(id(listener))
                    logger.exception(
                        "task event listener %s raised; it stays registered, and further "
                        "errors from it are not logged",
                        getattr(listener, "__qualname__", None) or repr(listener),
                    )


def safe_repr(value: object) -> str:
    """``repr(value)``, or a stand-in when that raises: a log line must never break."""
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__qualname__} object (repr() failed)>"


def log_extra(work: Work) -> dict[str, object]:
    started = work.clock_started
    ended = work.clock_ended or time.perf_counter()
    return {
        "task_name": work.name,
        "task_id": work.id,
        "task_mode": work.mode,
        "task_attempt": work.attempts,
        "task_duration": ended - started if started else 0.0,
    }


def log_retry(work: Work, exc: BaseException, wait: float) -> None:
    logger.warning(
        "task %s (id %s) attempt %d failed with %s; retrying in %.3fs",
        work.name,
        work.id,
        work.attempts,
        safe_repr(exc),
        wait,
        extra=log_extra(work),
    )


def log_failure(work: Work, exc: BaseException) -> None:
    logger.error(
        "task %s (id %s, %s) failed after %d attempt(s)",
        work.name,
        work.id,
        work.mode,
        work.attempts,
        exc_info=exc,
        extra=log_extra(work),
    )


def log_discarded(work: Work, reason: str) -> None:
    logger.debug(
        "discarded task %s (id %s, %s): %s",
        work.name,
        work.id,
        work.mode,
        reason,
        extra=log_extra(work),
    )


def log_succeeded(work: Work) -> None:
    logger.debug("task %s (id %s) succeeded", work.name, work.id, extra=log_extra(work))


def log_enqueued(work: BrokerWork) -> None:
    logger.debug(
        "task %s (id %s, %s) enqueued to %s as job %s",
        work.name,
        work.id,
        work.mode,
        work.broker.name,
        work.job_id,
        extra=log_extra(work),
    )
