"""What the monitor knows about an app's work, fed by one lifecycle-event listener.

The listener only collects finished tasks; a clock (a task of the app's lifespan) counts
throughput from the manager's counters once a second and takes the collected tasks in.

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
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from .._events import TaskEvent
from .._manager import TaskManager
from .._request import RequestInfo
from .._task import Task, TaskMode, TaskState

if TYPE_CHECKING:
    from ._journal import JournalView

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
RECENT = 8192
"""Finished tasks collected between two drains at most (one a second, and every read)."""
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
    """One task as the monitor shows it, built when asked for; keeps no reference to its result."""

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

    def __init__(
        self,
        task_id: int,
        name: str,
        mode: TaskMode,
        state: TaskState,
        scheduled: float | None,
        started: float | None,
        ended: float | None,
        attempts: int,
        request: RequestInfo | None,
    ) -> None:
        self.task: Task[Any] | None = None  # while unfinished: for cancel and waiting_for
        self.id = task_id
        self.name = name
        self.mode: TaskMode = mode
        self.state = state
        self.scheduled = scheduled
        self.started = started
        self.ended = ended
        self.attempts = attempts
        self.request = request
        self.error: str | None = None
        self.traceback: str | None = None
        self.arguments: str | None = None

    @classmethod
    def of_unfinished(cls, task: Task[Any], show_arguments: bool) -> TaskRecord:
        record = cls(
            task.id,
            task.name,
            task.mode,
            task.state,
            task.scheduled_at,
            task.started_at,
            None,
            task.attempts,
            task.request,
        )
        record.task = task
        if show_arguments:
            record.arguments = _arguments(task)
        return record

    def handed_over(self) -> float | None:
        """When the work was given to the runner (see ``RequestInfo.handed_over``)."""
        scheduled = self.scheduled
        if scheduled is None:
            return None
        if self.request is None:
            return scheduled if self.mode == "immediate" else None
        return self.request.handed_over(self.mode, scheduled)

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


_Finished = tuple[
    int, str, TaskMode, TaskState, "float | None", "float | None", float, int, "RequestInfo | None"
]
"""A finished task in the history ring: id, name, mode, state, scheduled, started, ended,
attempts, request. A tuple, not a record: one is made per task, and most are only ever
counted, never shown."""


def _record_of(item: _Finished | TaskRecord) -> TaskRecord:
    return item if isinstance(item, TaskRecord) else TaskRecord(*item)


def _id_of(item: _Finished | TaskRecord) -> int:
    return item.id if isinstance(item, TaskRecord) else item[0]


def _request_of(item: _Finished | TaskRecord) -> RequestInfo | None:
    return item.request if isinstance(item, TaskRecord) else item[8]


class MonitorState:
    """The monitor's view of one app's work.

    ``listen`` receives the manager's ``"finished"`` events only: one event per task
    instead of three. Unfinished work is read from the manager itself
    (``iter_unfinished()``, the handles' timings) when someone asks.
    """

    def __init__(self, manager: TaskManager, history: int, show_arguments: bool) -> None:
        self.manager = manager
        self.history = history
        self.show_arguments = show_arguments
        self.version = 0
        """Finished tasks taken in so far: a stream sends a message only when it moved."""
        # The manager's listener of "finished" events is this deque's own append: no
        # Python code runs per task. The clock drains it every second (and every read
        # does); past RECENT events between two drains, the oldest are dropped.
        self._recent: deque[TaskEvent] = deque(maxlen=RECENT)
        self.listen: Callable[[TaskEvent], None] = self._recent.append
        stats = manager.stats
        self._ended = stats.succeeded + stats.failed + stats.cancelled + stats.discarded
        self._failed_total = stats.failed
        self._ring: list[_Finished | TaskRecord | None] = [None] * history
        self._next = 0
        self.kept = 0
        self.failures: deque[TaskRecord] = deque(maxlen=FAILURES)
        self._durations: dict[str, _Durations] = {}
        self._second = [0] * WINDOW  # which second each bucket holds
        self._done = [0] * WINDOW
        self._failed = [0] * WINDOW
        self.journal: JournalView | None = None
        """The app's journal, when it has one: history across restarts and processes."""

    # -- taking events in --------------------------------------------------------------

    def drain(self) -> None:
        """Take in the finished tasks collected since the last call.

        The most recent ``history`` of them go into the history and the durations
        (all of them, unless thousands finished at once), and every failure into the
        list of failures.
        """
        recent = self._recent
        if not recent:
            return
        batch = list(recent)
        recent.clear()
        self.version += len(batch)
        close_from = len(batch) - self.history
        for index, event in enumerate(batch):
            if index >= close_from or event.state is FAILED:
                self._keep(event)

    def tick(self, now: float | None = None) -> None:
        """Count what finished since the last tick into the current second, and drain."""
        now = time.time() if now is None else now
        stats = self.manager.stats
        ended = stats.succeeded + stats.failed + stats.cancelled + stats.discarded
        done, failed = ended - self._ended, stats.failed - self._failed_total
        self._ended, self._failed_total = ended, stats.failed
        second = int(now)
        slot = second % WINDOW
        if self._second[slot] != second:
            self._second[slot] = second
            self._done[slot] = 0
            self._failed[slot] = 0
        self._done[slot] += done
        self._failed[slot] += failed
        self.drain()

    async def run_clock(self) -> None:
        """Tick once a second, for as long as the app runs (the monitor's lifespan)."""
        while True:
            self.tick()
            await anyio.sleep(1.0)

    def _keep(self, event: TaskEvent) -> None:
        task = event.task
        state = event.state
        end = event.time
        name = task.name
        duration = task.duration
        if duration is not None:
            durations = self._durations.get(name)
            if durations is None:
                key = name if len(self._durations) < NAMES else OTHER_NAMES
                durations = self._durations.get(key)
                if durations is None:
                    durations = self._durations[key] = _Durations()
            durations.add(duration)
        finished: _Finished = (
            task.id,
            name,
            task.mode,
            state,
            task.scheduled_at,
            None if duration is None else end - duration,
            end,
            event.attempt,
            event.request,
        )
        item: _Finished | TaskRecord = finished
        if state is FAILED or self.show_arguments:
            record = item = TaskRecord(*finished)
            if self.show_arguments:
                record.arguments = _arguments(task)
            if state is FAILED:  # a failed task always has its exception
                exception = event.exception
                record.error = _clip(_safe(_format_error, exception), TEXT_CHARS)
                record.traceback = _safe(_format_traceback, exception)
                self.failures.append(record)
        if self._ring[self._next] is None:
            self.kept += 1
        self._ring[self._next] = item
        self._next = (self._next + 1) % self.history

    # -- what the API and the page read -------------------------------------------------

    def _newest_first(self) -> list[_Finished | TaskRecord]:
        ring, cut = self._ring, self._next
        ordered = ring[cut:] + ring[:cut]
        return [item for item in reversed(ordered) if item is not None]

    def find(self, task_id: int) -> TaskRecord | None:
        """The task with this id, if it is unfinished or still in the history (a scan)."""
        self.drain()
        for task in self.manager.iter_unfinished():
            if task.id == task_id:
                return TaskRecord.of_unfinished(task, self.show_arguments)
        for item in self._ring:
            if item is not None and _id_of(item) == task_id:
                return _record_of(item)
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

    def _unfinished(self) -> list[Task[Any]]:
        """The oldest unfinished tasks: bounded work per snapshot, however much is queued."""
        return list(itertools.islice(self.manager.iter_unfinished(), SCANNED))

    def running_tasks(self, now: float, unfinished: list[Task[Any]]) -> dict[str, Any]:
        listed = [task for task in unfinished if task.state is RUNNING][:LISTED]
        return {
            "total": self.manager.stats.running,
            "tasks": [TaskRecord.of_unfinished(task, False).summary(now) for task in listed],
        }

    def waiting_tasks(self, now: float, unfinished: list[Task[Any]]) -> dict[str, Any]:
        """Pending work, and running work whose attempt waits (limiter, thread, retry)."""
        waiting = [task for task in unfinished if task.waiting_for is not None]
        blocked = sum(1 for task in waiting if task.state is RUNNING)
        return {
            "total": self.manager.stats.pending + blocked,
            "tasks": [
                TaskRecord.of_unfinished(task, False).summary(now) for task in waiting[:LISTED]
            ],
        }

    def recent_failures(self, now: float) -> list[dict[str, Any]]:
        return [record.summary(now) for record in reversed(self.failures)]

    def requests(self, now: float, unfinished: list[Task[Any]]) -> list[dict[str, Any]]:
        """The most recent requests that scheduled work, each with its first tasks."""
        rows: dict[RequestInfo, list[_Finished | TaskRecord | Task[Any]]] = {}
        for item in self._newest_first():
            request = _request_of(item)
            if request is not None and (request in rows or len(rows) < REQUESTS):
                rows.setdefault(request, []).append(item)
        for task in unfinished:
            request = task.request
            if request is not None:
                rows.setdefault(request, []).append(task)
        newest = sorted(rows, key=lambda request: request.received, reverse=True)[:REQUESTS]
        result: list[dict[str, Any]] = []
        for request in newest:
            records = [
                TaskRecord.of_unfinished(item, False)
                if isinstance(item, Task)
                else _record_of(item)
                for item in rows[request]
            ]
            records.sort(key=lambda record: record.id)
            row = _request_fields(request)
            row["tasks"] = [record.summary(now) for record in records[:TASKS_PER_REQUEST]]
            row["more_tasks"] = max(0, len(records) - TASKS_PER_REQUEST)
            result.append(row)
        return result

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        self.tick(now)
        unfinished = self._unfinished()
        return {
            "now": now,
            "summary": self.summary(now),
            "series": self.series(now),
            "durations": self.durations(now),
            "running": self.running_tasks(now, unfinished),
            "waiting": self.waiting_tasks(now, unfinished),
            "failures": self.recent_failures(now),
            "requests": self.requests(now, unfinished),
        }


def _arguments(task: Task[Any]) -> str:
    return _clip(_safe(_format_arguments, task), TEXT_CHARS)


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
