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
from .._task import Task, TaskMode, TaskState

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
SCANNED = 500
"""Running tasks looked at for a wait (limiter, thread, retry) per snapshot: the oldest."""
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


_Finished = tuple[int, str, TaskMode, TaskState, float, "float | None", float, int, "RequestInfo | None"]
"""A finished task in the history ring: id, name, mode, state, scheduled, started, ended,
attempts, request. A tuple, not a record: one is made per task, and most are only ever
counted, never shown."""


def _record_of_finished(item: _Finished | TaskRecord) -> TaskRecord:
    if isinstance(item, TaskRecord):
        return item
    task_id, name, mode, state, scheduled, started, ended, attempts, request = item
    record = TaskRecord.__new__(TaskRecord)
    record.task = None
    record.id, record.name, record.mode, record.state = task_id, name, mode, state
    record.scheduled, record.started, record.ended = scheduled, started, ended
    record.attempts, record.request = attempts, request
    record.error = record.traceback = record.arguments = None
    return record


def _record_of_live(
    task: Task[Any], scheduled: TaskEvent, started: float | None, arguments: str | None
) -> TaskRecord:
    record = TaskRecord(task, scheduled.time, scheduled.request)
    record.started = started
    record.attempts = task.attempts
    record.arguments = arguments
    return record


class MonitorState:
    """The monitor's view of one app's work; ``listen`` is the manager's listener.

    Per event the listener only moves a task between two dictionaries and bumps a few
    counters; the records the API shows are built when someone asks for them.
    """

    def __init__(self, manager: TaskManager, history: int, show_arguments: bool) -> None:
        self.manager = manager
        self.history = history
        self.show_arguments = show_arguments
        self.version = 0
        """Bumped by every event: a stream sends a message only when it moved."""
        # Unfinished work this state saw scheduled: its "scheduled" event, and once it
        # runs, that event and when it started.
        self.pending: dict[Task[Any], TaskEvent] = {}
        self.running: dict[Task[Any], tuple[TaskEvent, float]] = {}
        self._arguments: dict[Task[Any], str] = {}  # only with show_arguments
        # Finished work: a ring of `history` slots.
        self._ring: list[_Finished | TaskRecord | None] = [None] * history
        self._next = 0
        self.kept = 0
        self.failures: deque[TaskRecord] = deque(maxlen=FAILURES)
        self._durations: dict[str, _Durations] = {}
        self._second = [0] * WINDOW  # which second each bucket holds
        self._done = [0] * WINDOW
        self._failed = [0] * WINDOW
        self._requests: OrderedDict[RequestInfo, _Request] = OrderedDict()
        self._last: _Request | None = None
        self._drawn: dict[Task[Any], TaskRecord] = {}  # tasks on the timeline, unfinished

    # -- the listener (on the event loop, per event: keep it short) ----------------------

    def listen(self, event: TaskEvent) -> None:
        self.version += 1
        kind = event.kind
        if kind == "scheduled":
            task = event.task
            self.pending[task] = event
            if self.show_arguments:
                self._arguments[task] = _clip(_safe(_format_arguments, task), TEXT_CHARS)
            if event.request is not None:
                self._draw(event)
        elif kind == "started":
            task = event.task
            scheduled = self.pending.pop(task, None)
            if scheduled is not None:
                self.running[task] = (scheduled, event.time)
                drawn = self._drawn.get(task)
                if drawn is not None:
                    drawn.state = RUNNING
                    drawn.started = event.time
                    drawn.attempts = 1
        elif kind == "retrying":
            drawn = self._drawn.get(event.task)
            if drawn is not None:
                drawn.attempts = event.attempt + 1
        elif kind == "finished":
            self._finished(event)

    def _draw(self, event: TaskEvent) -> None:
        """Put the task on its request's row of the timeline, if the row has room."""
        request: RequestInfo = event.request  # type: ignore[assignment]
        entry = self._last
        if entry is None or entry.info is not request:
            requests = self._requests
            entry = requests.get(request)
            if entry is None:
                entry = requests[request] = _Request(request)
                if len(requests) > REQUESTS:
                    requests.popitem(last=False)
            self._last = entry
        if len(entry.tasks) < TASKS_PER_REQUEST:
            record = TaskRecord(event.task, event.time, request)
            entry.tasks.append(record)
            self._drawn[event.task] = record
        else:
            entry.more += 1

    def _finished(self, event: TaskEvent) -> None:
        task = event.task
        running = self.running.pop(task, None)
        if running is None:
            scheduled = self.pending.pop(task, None)
            if scheduled is None:  # scheduled before the monitor started listening
                return
            started = None
        else:
            scheduled, started = running
        state = event.state
        end = event.time
        second = int(end)
        slot = second % WINDOW
        if self._second[slot] != second:
            self._second[slot] = second
            self._done[slot] = 0
            self._failed[slot] = 0
        self._done[slot] += 1
        name = task.name
        if started is not None:
            durations = self._durations.get(name)
            if durations is None:
                key = name if len(self._durations) < NAMES else OTHER_NAMES
                durations = self._durations.get(key)
                if durations is None:
                    durations = self._durations[key] = _Durations()
            durations.add(end - started)
        item: _Finished | TaskRecord = (
            task.id,
            name,
            task.mode,
            state,
            scheduled.time,
            started,
            end,
            event.attempt,
            scheduled.request,
        )
        arguments = self._arguments.pop(task, None) if self.show_arguments else None
        if state is FAILED or arguments is not None:
            record = item = _record_of_finished(item)
            record.arguments = arguments
            if state is FAILED:  # a failed task always has its exception
                self._failed[slot] += 1
                exception = event.exception
                record.error = _clip(_safe(_format_error, exception), TEXT_CHARS)
                record.traceback = _safe(_format_traceback, exception)
                self.failures.append(record)
        drawn = self._drawn.pop(task, None)
        if drawn is not None:
            drawn.task = None
            drawn.state = state
            drawn.ended = end
            drawn.attempts = event.attempt
            if isinstance(item, TaskRecord):
                drawn.error = item.error
        if self._ring[self._next] is None:
            self.kept += 1
        self._ring[self._next] = item
        self._next = (self._next + 1) % self.history

    # -- what the API and the page read -------------------------------------------------

    def find(self, task_id: int) -> TaskRecord | None:
        """The task with this id, if it is unfinished or still in the history (a scan)."""
        for task, scheduled in self.pending.items():
            if task.id == task_id:
                return _record_of_live(task, scheduled, None, self._arguments.get(task))
        for task, (scheduled, started) in self.running.items():
            if task.id == task_id:
                return _record_of_live(task, scheduled, started, self._arguments.get(task))
        for item in self._ring:
            if (
                item is not None
                and (item.id if isinstance(item, TaskRecord) else item[0]) == task_id
            ):
                return _record_of_finished(item)
        return None

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
            "history": {"kept": self.kept, "limit": self.history},
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
        listed = itertools.islice(self.running.items(), LISTED)
        return {
            "total": len(self.running),
            "tasks": [
                _record_of_live(task, scheduled, started, None).summary(now)
                for task, (scheduled, started) in listed
            ],
        }

    def waiting_tasks(self, now: float) -> dict[str, Any]:
        """Pending work, then running work whose attempt waits (limiter, thread, retry)."""
        listed: list[dict[str, Any]] = []
        for task, scheduled in itertools.islice(self.pending.items(), LISTED):
            listed.append(_record_of_live(task, scheduled, None, None).summary(now))
        blocked = 0
        # Bounded work per snapshot, however much runs: only the oldest are looked at.
        for task, (scheduled, started) in itertools.islice(self.running.items(), SCANNED):
            if task.waiting_for is not None:
                blocked += 1
                if len(listed) < LISTED:
                    listed.append(_record_of_live(task, scheduled, started, None).summary(now))
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
    text = "".join(traceback.format_exception(exception))
    return (
        text
        if len(text) <= TRACEBACK_CHARS
        else "\N{HORIZONTAL ELLIPSIS}" + text[-TRACEBACK_CHARS:]
    )
