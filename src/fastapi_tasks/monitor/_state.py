"""What the monitor knows about an app's work, fed by one lifecycle-event listener.

Everything is bounded whatever the load: finished tasks live in a ring of ``history``
records, throughput in a ring of one bucket per second over 15 minutes, durations in a
fixed sample per task name (and a fixed number of names), recent requests and
failures in short rings. The listener does a few dictionary operations per event; the
JSON the page and the API read is built only when someone asks.
"""

from __future__ import annotations

import itertools
import math
import time
import traceback
from collections import OrderedDict, deque
from typing import Any

from .._events import TaskEvent
from .._manager import TaskManager
from .._request import RequestInfo
from .._task import Task, TaskState

__all__ = ["MonitorState", "TaskRecord"]

WINDOW = 900
"""Seconds of throughput kept: one bucket per second, 15 minutes."""
SAMPLES = 512
"""Durations kept per task name for the percentiles: the most recent ones."""
NAMES = 64
"""Task names with percentiles of their own; later names share one row."""
OTHER_NAMES = "(other names)"
REQUESTS = 8
"""Recent requests on the timeline."""
TASKS_PER_REQUEST = 12
"""Tasks drawn per request on the timeline (the rest are counted)."""
FAILURES = 50
"""Recent failures listed."""
LISTED = 50
"""Running and waiting tasks listed (the oldest; counts are exact)."""
TRACEBACK_CHARS = 8000
"""Longest traceback kept, from its end (where the error is)."""
TEXT_CHARS = 500
"""Longest exception message or argument list kept."""

RUNNING = TaskState.RUNNING
FAILED = TaskState.FAILED


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\N{HORIZONTAL ELLIPSIS}"


def _safe(func: Any, *args: Any) -> str:
    try:
        return str(func(*args))
    except Exception:
        return "<unprintable>"


class TaskRecord:
    """One task as the monitor shows it; keeps no reference to its result."""

    __slots__ = (
        "arguments",
        "attempts",
        "ended",
        "error",
        "id",
        "mode",
        "name",
        "request",
        "scheduled",
        "started",
        "state",
        "task",
        "traceback",
    )

    def __init__(self, task: Task[Any], scheduled: float, request: RequestInfo | None) -> None:
        self.task: Task[Any] | None = task  # until it finished: for cancel and waiting_for
        self.id = task.id
        self.name = task.name
        self.mode = task.mode
        self.state = task.state
        self.scheduled = scheduled
        self.started: float | None = None
        self.ended: float | None = None
        self.attempts = 0
        self.request = request
        self.error: str | None = None
        self.traceback: str | None = None
        self.arguments: str | None = None

    def handed_over(self) -> float | None:
        """When the work was given to the runner (see ``RequestInfo.handed_over``)."""
        if self.request is None:
            return self.scheduled if self.mode == "immediate" else None
        return self.request.handed_over(self.mode, self.scheduled)

    def summary(self, now: float) -> dict[str, Any]:
        started, ended = self.started, self.ended
        task = self.task
        return {
            "id": self.id,
            "name": self.name,
            "mode": self.mode,
            "state": self.state.value,
            "scheduled": self.scheduled,
            "started": started,
            "ended": ended,
            "age": None if started is None else (ended or now) - started,
            "waiting_for": None if task is None else task.waiting_for,
            "attempts": self.attempts,
            "error": self.error,
            "path": None if self.request is None else self.request.path,
        }

    def detail(self, now: float, show_arguments: bool) -> dict[str, Any]:
        result = self.summary(now)
        request = self.request
        result["handed_over"] = self.handed_over()
        result["traceback"] = self.traceback
        result["request"] = None if request is None else _request_fields(request)
        if show_arguments:
            result["arguments"] = self.arguments
        return result


def _request_fields(request: RequestInfo) -> dict[str, Any]:
    return {
        "method": request.method,
        "path": request.path,
        "received": request.received,
        "response_started": request.response_started,
        "response_ended": request.response_ended,
        "status": request.status,
    }


class _Durations:
    """The most recent durations of one task name, in a fixed-size ring."""

    __slots__ = ("count", "position", "samples")

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.position = 0
        self.count = 0

    def add(self, value: float) -> None:
        self.count += 1
        samples = self.samples
        if len(samples) < SAMPLES:
            samples.append(value)
        else:
            samples[self.position] = value
            self.position = (self.position + 1) % SAMPLES

    def percentiles(self) -> dict[str, float]:
        ordered = sorted(self.samples)
        last = len(ordered) - 1

        def at(fraction: float) -> float:
            return ordered[min(last, math.ceil(fraction * len(ordered)) - 1)]

        return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": ordered[last]}


class _Request:
    """A recent request on the timeline and the first tasks it scheduled."""

    __slots__ = ("info", "more", "tasks")

    def __init__(self, info: RequestInfo) -> None:
        self.info = info
        self.tasks: list[TaskRecord] = []
        self.more = 0


class MonitorState:
    """The monitor's view of one app's work; ``listen`` is the manager's listener."""

    def __init__(self, manager: TaskManager, history: int, show_arguments: bool) -> None:
        self.manager = manager
        self.history = history
        self.show_arguments = show_arguments
        self.version = 0
        """Bumped by every event: a stream sends a message only when it moved."""
        self.pending: dict[int, TaskRecord] = {}
        self.running: dict[int, TaskRecord] = {}
        # Finished records: a ring of `history` slots and an index by id over it.
        self._ring: list[TaskRecord | None] = [None] * history
        self._next = 0
        self.finished: dict[int, TaskRecord] = {}
        self.failures: deque[TaskRecord] = deque(maxlen=FAILURES)
        self._durations: dict[str, _Durations] = {}
        self._second = [0] * WINDOW  # which second each bucket holds
        self._done = [0] * WINDOW
        self._failed = [0] * WINDOW
        self._requests: OrderedDict[RequestInfo, _Request] = OrderedDict()
        self.started_at = time.time()

    # -- the listener (on the event loop, per event: keep it short) ----------------------

    def listen(self, event: TaskEvent) -> None:
        self.version += 1
        kind = event.kind
        if kind == "scheduled":
            self._scheduled(event)
        elif kind == "started":
            record = self.pending.pop(event.task.id, None)
            if record is not None:
                record.state = RUNNING
                record.started = event.time
                record.attempts = 1
                self.running[record.id] = record
        elif kind == "retrying":
            record = self.running.get(event.task.id)
            if record is not None:
                record.attempts = event.attempt + 1
        elif kind == "finished":
            self._finished(event)

    def _scheduled(self, event: TaskEvent) -> None:
        task = event.task
        request = event.request
        record = TaskRecord(task, event.time, request)
        if self.show_arguments:
            record.arguments = _clip(_safe(_format_arguments, task), TEXT_CHARS)
        self.pending[record.id] = record
        if request is not None:
            requests = self._requests
            entry = requests.get(request)
            if entry is None:
                entry = requests[request] = _Request(request)
                if len(requests) > REQUESTS:
                    requests.popitem(last=False)
            if len(entry.tasks) < TASKS_PER_REQUEST:
                entry.tasks.append(record)
            else:
                entry.more += 1

    def _finished(self, event: TaskEvent) -> None:
        task_id = event.task.id
        record = self.running.pop(task_id, None) or self.pending.pop(task_id, None)
        if record is None:  # scheduled before the monitor started listening
            return
        state = event.state
        record.task = None
        record.state = state
        record.ended = event.time
        record.attempts = event.attempt
        second = int(event.time)
        slot = second % WINDOW
        if self._second[slot] != second:
            self._second[slot] = second
            self._done[slot] = 0
            self._failed[slot] = 0
        self._done[slot] += 1
        exception = event.exception
        if state is FAILED:  # a failed task always has its exception
            self._failed[slot] += 1
            record.error = _clip(_safe(_format_error, exception), TEXT_CHARS)
            record.traceback = _safe(_format_traceback, exception)
            self.failures.append(record)
        if record.started is not None:
            durations = self._durations.get(record.name)
            if durations is None:
                name = record.name if len(self._durations) < NAMES else OTHER_NAMES
                durations = self._durations.get(name)
                if durations is None:
                    durations = self._durations[name] = _Durations()
            durations.add(event.time - record.started)
        old = self._ring[self._next]
        if old is not None:
            self.finished.pop(old.id, None)
        self._ring[self._next] = record
        self._next = (self._next + 1) % self.history
        self.finished[record.id] = record

    # -- what the API and the page read -------------------------------------------------

    def find(self, task_id: int) -> TaskRecord | None:
        return self.running.get(task_id) or self.pending.get(task_id) or self.finished.get(task_id)

    def summary(self, now: float) -> dict[str, Any]:
        stats = self.manager.stats
        ended = stats.succeeded + stats.failed
        return {
            "counts": {
                "scheduled": stats.scheduled,
                "pending": stats.pending,
                "running": stats.running,
                "succeeded": stats.succeeded,
                "failed": stats.failed,
                "cancelled": stats.cancelled,
                "discarded": stats.discarded,
                "retries": stats.retries,
            },
            "success_rate": None if not ended else stats.succeeded / ended,
            "history": {"kept": len(self.finished), "limit": self.history},
        }

    def series(self, now: float) -> dict[str, Any]:
        """Finished and failed tasks per second, oldest first, ending with the current second."""
        last = int(now)
        done: list[int] = []
        failed: list[int] = []
        for second in range(last - WINDOW + 1, last + 1):
            slot = second % WINDOW
            fresh = self._second[slot] == second
            done.append(self._done[slot] if fresh else 0)
            failed.append(self._failed[slot] if fresh else 0)
        return {"end": last, "seconds": WINDOW, "finished": done, "failed": failed}

    def durations(self, now: float) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for name, durations in self._durations.items():
            rows.append({"name": name, "count": durations.count, **durations.percentiles()})
        rows.sort(key=lambda row: row["name"])
        return rows

    def running_tasks(self, now: float) -> dict[str, Any]:
        listed = itertools.islice(self.running.values(), LISTED)
        return {
            "total": len(self.running),
            "tasks": [record.summary(now) for record in listed],
        }

    def waiting_tasks(self, now: float) -> dict[str, Any]:
        """Pending work, then running work whose attempt waits (limiter, thread, retry)."""
        listed: list[dict[str, Any]] = []
        for record in itertools.islice(self.pending.values(), LISTED):
            listed.append(record.summary(now))
        blocked = 0
        for record in self.running.values():
            task = record.task
            if task is not None and task.waiting_for is not None:
                blocked += 1
                if len(listed) < LISTED:
                    listed.append(record.summary(now))
            if blocked >= LISTED:  # bounded work per snapshot
                break
        return {"total": len(self.pending) + blocked, "tasks": listed}

    def recent_failures(self, now: float) -> list[dict[str, Any]]:
        return [record.summary(now) for record in reversed(self.failures)]

    def requests(self, now: float) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for entry in reversed(self._requests.values()):
            row = _request_fields(entry.info)
            row["tasks"] = [record.summary(now) for record in entry.tasks]
            row["more_tasks"] = entry.more
            rows.append(row)
        return rows

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        return {
            "now": now,
            "summary": self.summary(now),
            "series": self.series(now),
            "durations": self.durations(now),
            "running": self.running_tasks(now),
            "waiting": self.waiting_tasks(now),
            "failures": self.recent_failures(now),
            "requests": self.requests(now),
        }


def _format_arguments(task: Task[Any]) -> str:
    parts = [repr(value) for value in task.args]
    parts += [f"{key}={value!r}" for key, value in task.kwargs.items()]
    return ", ".join(parts)


def _format_error(exception: BaseException) -> str:
    text = str(exception)
    name = type(exception).__qualname__
    return f"{name}: {text}" if text else name


def _format_traceback(exception: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
    return (
        text
        if len(text) <= TRACEBACK_CHARS
        else "\N{HORIZONTAL ELLIPSIS}" + text[-TRACEBACK_CHARS:]
    )
