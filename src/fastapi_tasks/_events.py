"""Lifecycle events: what the manager publishes, who listens, and the built-in log lines.

Each change in a task's life is published once, by the code that makes the change:
``scheduled``, ``started``, ``retrying``, ``finished`` (with its final state), and
``enqueued`` for work handed to a broker. The manager keeps its counters and writes
its log lines at those same points; user listeners (``manager.add_listener``) get a
``TaskEvent`` only when there are any, so without them an event costs one check.
``TaskEvent`` is a named tuple: with listeners, each task makes several of them, and a
tuple is built several times faster than a frozen dataclass.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple, cast

from ._request import RequestInfo
from ._task import Task, TaskState, Work

__all__ = [
    "KINDS",
    "EventKind",
    "Listener",
    "Listeners",
    "TaskEvent",
    "current_task",
    "current_work",
    "log_discarded",
    "log_failure",
    "log_retry",
    "log_succeeded",
    "safe_repr",
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


# Builds the tuple without the generated __new__'s Python frame.
_new_event = cast(
    "Callable[[type[TaskEvent], tuple[Any, ...]], TaskEvent]",
    tuple.__new__,  # pyright: ignore[reportUnknownMemberType]
)

Listener = Callable[[TaskEvent], object]
"""A function called with each [`TaskEvent`][fastapi_tasks.TaskEvent] on the loop's thread."""

current_work: contextvars.ContextVar[Work | None] = contextvars.ContextVar(
    "fastapi_tasks_work", default=None
)
"""The work running in this context (set by the executor for the work's own context)."""


def current_task() -> Task[Any] | None:
    """Return the handle of the background work running in the current context, else ``None``.

    Inside a task (and its ``on_error`` handler, and sync work in its thread) this
    is the task's own handle, so work can log or tag itself (``current_task().id``)
    without being passed its handle.
    """
    work = current_work.get()
    return None if work is None else work.handle


KINDS: tuple[EventKind, ...] = ("scheduled", "started", "retrying", "finished", "enqueued")


class Listeners:
    """The user's listeners of one manager; each one that raises is logged once.

    Each kind of event has its own tuple of the listeners that want it, and the
    manager checks that tuple (an empty one is false) before it builds an event: a
    listener of ``"finished"`` alone spares every task two events. ``items`` holds
    every listener, whatever it wants (request details are recorded while it is not
    empty).
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

    def __init__(self) -> None:
        self.items: tuple[Listener, ...] = ()
        self._wanted: list[frozenset[str]] = []  # the kinds each of `items` wants
        self._broken: set[int] = set()
        self.scheduled = self.started = self.retrying = self.finished = self.enqueued = ()

    def add(self, listener: Listener, kinds: Iterable[EventKind] | None = None) -> None:
        if not callable(listener):
            raise TypeError(f"a listener must be callable as listener(event), got {listener!r}")
        wanted = frozenset(KINDS if kinds is None else kinds)
        unknown = wanted.difference(KINDS)
        if unknown or (kinds is not None and isinstance(kinds, str)):
            raise ValueError(
                f"kinds must be a collection of {', '.join(map(repr, KINDS))}, got {kinds!r}"
            )
        self.items = (*self.items, listener)
        self._wanted.append(wanted)
        self._sort()

    def remove(self, listener: Listener) -> None:
        items = list(self.items)
        index = items.index(listener)  # ValueError for one that was never added, as list.remove
        del items[index], self._wanted[index]
        self.items = tuple(items)
        self._broken.discard(id(listener))
        self._sort()

    def _sort(self) -> None:
        for kind in KINDS:
            wanting = tuple(
                listener
                for listener, wanted in zip(self.items, self._wanted, strict=True)
                if kind in wanted
            )
            setattr(self, kind, wanting)

    def publish(
        self,
        kind: EventKind,
        work: Work,
        exception: BaseException | None = None,
        when: float | None = None,
    ) -> None:
        handle = work.handle
        if handle is None:  # pragma: no cover - events come before settle() drops it
            return
        event = _new_event(
            TaskEvent,
            (
                kind,
                handle,
                work.state,
                when or time.time(),
                work.attempts,
                exception,
                work.request,
            ),
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
    started = work.started_at
    ended = work.ended_at or time.perf_counter()
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
