"""The task handle users hold, and the record of the work behind it.

A ``Task`` is what ``schedule()`` returns: it reads, waits and cancels, nothing else.
Everything the runtime needs to know about the work lives in its ``Work`` record,
which the manager, the runner and the executor share. Only the manager's ``settle()``
writes a final state, and it drops what the record no longer needs (the scheduling
context, the runner's objects, the link back to the handle) at that moment, so a
finished handle keeps only what its user may read.
"""

from __future__ import annotations

import abc
import enum
import functools
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, Protocol, TypedDict, TypeVar

import anyio

from ._config import TaskConfig
from ._request import RequestInfo

if TYPE_CHECKING:
    import contextvars


__all__ = [
    "Broker",
    "BrokerWork",
    "Event",
    "Journal",
    "LoopCalls",
    "Owner",
    "Revived",
    "Task",
    "TaskErrorHandler",
    "TaskMode",
    "TaskOptions",
    "TaskState",
    "WaitReason",
    "Work",
    "broker_label",
]

R = TypeVar("R")

TaskMode = Literal["immediate", "after_route", "after_response"]
"""When the work was scheduled to start."""

WaitReason = Literal[
    "request", "max_concurrency", "event_loop", "journal", "limiter", "thread", "retry"
]
"""What unfinished work waits for ([`Task.waiting_for`][fastapi_tasks.Task.waiting_for])."""


class TaskState(str, enum.Enum):
    """Life cycle of a task. Every task ends in exactly one final state."""

    PENDING = "pending"
    """Accepted, not started yet."""
    RUNNING = "running"
    """The function is running (possibly between retries, or its ``on_error`` handler)."""
    SUCCEEDED = "succeeded"
    """The function returned."""
    FAILED = "failed"
    """The last attempt raised; ``on_error`` has run."""
    CANCELLED = "cancelled"
    """Cancelled by ``cancel()`` or at shutdown."""
    DISCARDED = "discarded"
    """Never started: its request failed, or the response could not be completed."""


PENDING = TaskState.PENDING
RUNNING = TaskState.RUNNING


class Event(Protocol):
    def is_set(self) -> bool: ...
    def set(self) -> None: ...
    async def wait(self) -> Any: ...


class Cancellable(Protocol):
    def cancel(self) -> Any: ...


class Owner(Protocol):
    """What a handle needs from the manager that runs its work."""

    @property
    def manager(self) -> Any: ...
    def cancel(self, work: Work) -> None: ...
    def waiting_reason(self, work: Work) -> WaitReason | None: ...
    def new_event(self) -> Event: ...
    async def call_again(self, work: Work) -> Any: ...


_ids = itertools.count(1)


def qualname(func: object) -> str:
    """The qualified name of ``func`` (of what a ``functools.partial`` wraps)."""
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__qualname__", None) or type(func).__qualname__


class Task(abc.ABC, Generic[R]):
    """Handle of one piece of background work, returned by ``schedule()``.

    Handles are made by ``schedule()``, never by hand. ``schedule()`` and
    ``cancel()`` may be called from any thread; the rest belongs on the event loop.
    """

    __slots__ = ()

    func: Callable[..., Any]
    """The function that was scheduled."""
    args: tuple[Any, ...]
    """Its positional arguments."""
    kwargs: dict[str, Any]
    """Its keyword arguments."""
    config: TaskConfig
    """The merged options it runs with."""
    id: int
    """Unique within the process, increasing in scheduling order."""
    mode: TaskMode
    """``"immediate"``, ``"after_route"`` or ``"after_response"``."""
    state: TaskState
    """Where it is in its life cycle ([`TaskState`][fastapi_tasks.TaskState])."""
    attempts: int
    """How many attempts have started so far."""
    result: R | None
    """The return value once the task succeeded, else ``None``."""
    exception: BaseException | None
    """The exception of the last attempt once the task failed, else ``None``."""
    request: RequestInfo | None
    """The request that scheduled the work, if it was scheduled in one.

    Recorded only while the manager has event listeners (metrics, the monitor,
    ``add_listener``): otherwise always ``None``.
    """
    scheduled_at: float | None
    """When it was scheduled (``time.time()``), recorded while the manager has listeners."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The configured name, else the function's qualified name."""

    @property
    @abc.abstractmethod
    def done(self) -> bool:
        """Whether the task reached a final state."""

    @property
    @abc.abstractmethod
    def duration(self) -> float | None:
        """Seconds from the first attempt's start to the end, once it ended after starting."""

    @property
    @abc.abstractmethod
    def started_at(self) -> float | None:
        """When its first attempt began (``time.time()`` clock), else ``None``."""

    @property
    @abc.abstractmethod
    def waiting_for(self) -> WaitReason | None:
        """What the work waits for before its function runs, or ``None``.

        - ``"request"``: its request's moment (after-route work: the response to
          start; after-response work: the response to be sent);
        - ``"max_concurrency"``: a free slot under ``add_tasks(max_concurrency=...)``;
        - ``"event_loop"``: handed over, about to start;
        - ``"limiter"``: its ``limiter`` (the task is running: its attempt began);
        - ``"thread"``: a free worker thread, for ``def`` work (running too);
        - ``"retry"``: the delay before its next attempt;
        - ``"journal"``: durable work, its record's commit (the task is running: its
          attempt began, the function runs once the row is on disk).

        ``None`` while the function runs, and once the task finished.
        """

    @property
    @abc.abstractmethod
    def started(self) -> Event:
        """An event set when the first attempt begins (``await task.started.wait()``).

        The attempt may then still wait for its ``limiter``, a worker thread or,
        for durable work, its record's commit before the function itself is
        called. Work that ended without starting (cancelled or discarded) never
        sets it: wait on ``wait()`` for the end.
        """

    @abc.abstractmethod
    async def wait(self) -> None:
        """Wait until the task reached a final state (it does not raise the task's error)."""

    @abc.abstractmethod
    def cancel(self) -> bool:
        """Cancel the work; return ``False`` if it had already finished.

        Safe from any thread. Work that has not started is never started, and is
        released at once. Running async work is cancelled at its next await; a
        sync function already running in a thread cannot be interrupted, so it is
        abandoned and its result dropped.
        """

    @abc.abstractmethod
    async def __call__(self) -> R:
        """Run the function once more, now, in the caller's task, and return its result."""


TaskErrorHandler = Callable[[Task[Any], BaseException], "Awaitable[None] | None"]
"""Type of ``on_error`` handlers: ``(task, exc) -> None``, sync or async."""


class TaskOptions(TypedDict, total=False):
    """Keyword options accepted by ``task(...)``; see [`TaskConfig`][fastapi_tasks.TaskConfig]."""

    name: str | None
    shield: bool | None
    on_error: TaskErrorHandler | None
    timeout: float | None
    retries: int | None
    retry_delay: float | None
    retry_backoff: float | None
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None
    limiter: anyio.CapacityLimiter | None
    run_on_failure: bool | None
    durable: bool | None


class Work(Task[Any]):
    """A task as the runtime sees it: the handle users hold, with the state behind it.

    ``Task`` is what users see; the fields this class adds are the manager's, the
    runner's and the executor's, and only they touch them. Only the manager's
    ``settle()`` writes a final state; it drops what a finished handle must not
    keep (the scheduling context, the runner's objects) at that moment.
    """

    __slots__ = (
        "admitted",
        "args",
        "attempts",
        "blocked",
        "busy_thread",
        "cancel_target",
        "chain",
        "clock_ended",
        "clock_started",
        "config",
        "context",
        "done_event",
        "entry",
        "exception",
        "func",
        "handler_scope",
        "id",
        "is_async",
        "kwargs",
        "mode",
        "owner",
        "request",
        "result",
        "scheduled_at",
        "started_event",
        "state",
    )

    def __init__(
        self,
        owner: Owner,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        config: TaskConfig,
        mode: TaskMode,
        is_async: bool,
    ) -> None:
        self.owner = owner
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.config = config
        self.mode = mode
        self.is_async = is_async
        self.id = next(_ids)
        self.state = PENDING
        self.attempts = 0
        self.result = None
        self.exception = None
        # perf_counter() readings, for durations; 0.0 until the moment came.
        self.clock_started = 0.0
        self.clock_ended = 0.0
        # Until the work ends: the contextvars it runs with when it starts later than
        # it was scheduled, what cancels it in the runner, the runner's start-order
        # chain (trio), a running on_error handler's scope, the wait for a thread.
        self.context: contextvars.Context | None = None
        self.cancel_target: Cancellable | None = None
        self.chain: Any = None
        self.handler_scope: Cancellable | None = None
        self.busy_thread: Event | None = None
        self.admitted = False  # holds one of the max_concurrency slots
        self.started_event: Event | None = None
        self.done_event: Event | None = None
        # For lifecycle events and Task.waiting_for: the request that scheduled it and
        # when (recorded only while the manager has listeners), and what a started
        # attempt waits for ("limiter", "thread", "retry", "journal"), written on those
        # paths only.
        self.request: RequestInfo | None = None
        self.scheduled_at: float | None = None
        self.blocked: WaitReason | None = None
        # Durable work: the journal's record of it (its row, whether it was committed).
        self.entry: Any = None

    def __repr__(self) -> str:
        # Arguments stay out on purpose: they often carry personal data.
        return f"<Task {self.name!r} id={self.id} mode={self.mode} state={self.state.value}>"

    @property
    def name(self) -> str:
        return self.config.name or qualname(self.func)

    @property
    def done(self) -> bool:
        return self.state is not PENDING and self.state is not RUNNING

    @property
    def duration(self) -> float | None:
        if not self.clock_ended or not self.clock_started:
            return None
        return self.clock_ended - self.clock_started

    @property
    def started_at(self) -> float | None:
        started = self.clock_started
        if not started:
            return None
        return time.time() - (time.perf_counter() - started)

    @property
    def waiting_for(self) -> WaitReason | None:
        return self.owner.waiting_reason(self)

    @property
    def started(self) -> Event:
        event = self.started_event
        if event is None:
            event = self.started_event = self.owner.new_event()
            if self.attempts:
                event.set()
        return event

    async def wait(self) -> None:
        if self.done:
            return
        if self.done_event is None:
            self.done_event = self.owner.new_event()
        await self.done_event.wait()

    def cancel(self) -> bool:
        if self.done:
            return False
        self.owner.cancel(self)
        return True

    async def __call__(self) -> Any:
        return await self.owner.call_again(self)


def broker_label(broker: object) -> str:
    """How messages name a broker: its class, and its queue when it has one."""
    label = type(broker).__qualname__
    queue = getattr(broker, "queue_name", None)
    if isinstance(queue, str):
        label += f" (queue {queue!r})"
    return label


class Broker(Protocol):
    """What the core needs from a broker adapter (``fastapi_tasks.taskiq`` builds one).

    The core never imports a broker library: it hands ``BrokerWork`` to ``enqueue``
    and starts and stops the broker with the app's lifespan.
    """

    name: str
    """How messages name the broker (its class and where it connects)."""

    @property
    def is_worker(self) -> bool:
        """Whether the broker runs in a worker process: the app neither starts nor stops it."""
        ...

    def owns(self, func: object) -> bool: ...
    def job_name(self, func: Any) -> str: ...
    def job_id(self, job: Any) -> str | None: ...
    async def enqueue(self, work: BrokerWork) -> Any: ...
    async def startup(self) -> None: ...
    async def shutdown(self) -> None: ...


class BrokerWork(Work):
    """Work that hands a job to a broker at its moment instead of running here.

    Its attempt is the enqueue: retries, timeout, limiter and ``on_error`` apply to
    it, and its result is what the broker returns for the job (taskiq's task).
    """

    __slots__ = ("broker",)

    def __init__(
        self,
        owner: Owner,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        config: TaskConfig,
        mode: TaskMode,
        broker: Broker,
    ) -> None:
        super().__init__(owner, func, args, kwargs, config, mode, False)
        self.broker = broker

    @property
    def name(self) -> str:
        return self.config.name or self.broker.job_name(self.func)

    @property
    def job_id(self) -> str | None:
        """The broker's id of the job; only once it was enqueued."""
        return self.broker.job_id(self.result)

    def enqueue(self) -> Any:
        """The awaitable that sends the job (one attempt)."""
        return self.broker.enqueue(self)


class Revived(NamedTuple):
    """Unfinished durable work read back from the journal, ready to run again."""

    entry: Any
    """The journal's record of it."""
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    """``TaskConfig`` fields as it was scheduled (``retries`` already lowered by the
    attempts it used before)."""
    error: BaseException | None
    """Why it cannot run (its function no longer imports, its arguments no longer fit)."""


class LoopCalls(Protocol):
    """What the journal's thread needs from the runner: the way back to the loop."""

    def call_soon_threadsafe(self, func: Callable[..., object], *args: Any) -> None: ...
    def new_event(self) -> Event: ...


class Journal(Protocol):
    """What the core needs from a journal (``fastapi_tasks.journal`` builds one).

    The engine calls it at the points where a task's life changes, for durable
    work only (``work.entry is not None``): non-durable work never reaches it.
    """

    name: str
    """How messages name the journal (its file)."""

    def prepare(self, work: Work) -> None:
        """Make ``work`` durable (sets ``work.entry``), or raise ``TypeError`` saying why not."""
        ...

    def record(self, work: Work, held: bool) -> None:
        """Queue the work's row for the next grouped commit (on the loop).

        ``held``: a response waits for the commit (the work does not retry a failed one).
        """
        ...

    def may_retry(self, work: Work) -> bool:
        """Whether a failed attempt may be retried (not when a held record failed)."""
        ...

    def is_recorded(self, work: Work) -> bool:
        """Whether the row was committed."""
        ...

    async def wait_recorded(self, work: Work) -> None:
        """Wait for the row's commit (recording it again if the last try failed)."""
        ...

    def note_cancelled(self, work: Work) -> None:
        """``cancel()`` was called: the work is finished, not to run again."""
        ...

    def adopted(self, work: Work) -> None:
        """Work read back from the journal (``Revived``) runs in this process now."""
        ...

    def note_attempt(self, work: Work) -> None:
        """An attempt begins: counted, so a restart knows how many were used."""
        ...

    def finish(self, work: Work, shutting_down: bool) -> None:
        """The work ended: write its final state (work cancelled by shutdown stays unfinished)."""
        ...

    async def open(self, adopt: Callable[[list[Revived]], None]) -> None:
        """Open and check the file, claim unfinished work; ``adopt`` gets work to run."""
        ...

    def attach(self, loop: LoopCalls) -> None:
        """Start writing, reporting back to ``loop`` (the runner)."""
        ...

    def resume(self) -> None:
        """The app's startup is complete: hand the claimed work over."""
        ...

    async def close(self) -> None:
        """Write what is queued, give unfinished rows back, close the file."""
        ...
