"""The task handle users hold, and the record of the work behind it.

A ``Task`` is what ``schedule()`` returns: it reads, waits and cancels, nothing else.
Everything the runtime needs to know about the work lives in its ``Work`` record,
which the manager, the runner and the executor share. Only the manager's ``settle()``
writes a final state, and it drops what the record no longer needs (the scheduling
context, the runner's objects, the link back to the handle) at that moment, so a
finished handle keeps only what its user may read.
"""

from __future__ import annotations

import enum
import functools
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    import contextvars

    from ._config import TaskConfig
    from ._request import RequestInfo

__all__ = ["Event", "Owner", "Task", "TaskMode", "TaskState", "WaitReason", "Work"]

R = TypeVar("R")

TaskMode = Literal["immediate", "after_route", "after_response"]
"""When the work was scheduled to start."""

WaitReason = Literal["request", "max_concurrency", "event_loop", "limiter", "thread", "retry"]
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


class Work:
    """One piece of scheduled work as the runtime sees it (not part of the public API)."""

    __slots__ = (
        "admitted",
        "args",
        "attempts",
        "blocked",
        "busy_thread",
        "cancel_target",
        "chain",
        "config",
        "context",
        "done",
        "ended_at",
        "exception",
        "func",
        "handle",
        "handler_scope",
        "id",
        "is_async",
        "kwargs",
        "mode",
        "owner",
        "request",
        "result",
        "scheduled_at",
        "started",
        "started_at",
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
        self.mode: TaskMode = mode
        self.is_async = is_async
        self.id = next(_ids)
        self.state = PENDING
        self.attempts = 0
        self.result: Any = None
        self.exception: BaseException | None = None
        self.started_at = 0.0
        self.ended_at = 0.0
        # Until the work ends: the handle (events and on_error hand it out), the
        # contextvars it runs with when it starts later than it was scheduled, what
        # cancels it in the runner, and the runner's start-order chain (trio).
        self.handle: Task[Any] | None = None
        self.context: contextvars.Context | None = None
        self.cancel_target: Cancellable | None = None
        self.chain: Any = None
        self.handler_scope: Cancellable | None = None
        self.busy_thread: Event | None = None
        self.admitted = False  # holds one of the max_concurrency slots
        # For lifecycle events and Task.waiting_for: the request that scheduled it
        # (only recorded while the manager has listeners), and what a started attempt
        # waits for ("limiter", "thread", "retry"), written only on those slow paths.
        self.request: RequestInfo | None = None
        self.scheduled_at = 0.0  # time.time(), recorded while the manager has listeners
        self.blocked: WaitReason | None = None
        self.started: Event | None = None
        self.done: Event | None = None

    @property
    def name(self) -> str:
        return self.config.name or qualname(self.func)

    @property
    def finished(self) -> bool:
        return self.state is not PENDING and self.state is not RUNNING


class Task(Generic[R]):
    """Handle of one piece of background work, returned by ``schedule()``.

    Handles are made by ``schedule()``, never by hand. ``schedule()`` and
    ``cancel()`` may be called from any thread; the rest belongs on the event loop.
    """

    __slots__ = ("__weakref__", "_work")

    def __init__(self, work: Work) -> None:
        self._work = work
        work.handle = self

    def __repr__(self) -> str:
        # Arguments stay out on purpose: they often carry personal data.
        work = self._work
        return f"<Task {work.name!r} id={work.id} mode={work.mode} state={work.state.value}>"

    @property
    def func(self) -> Callable[..., Any]:
        """The function that was scheduled."""
        return self._work.func

    @property
    def args(self) -> tuple[Any, ...]:
        """Its positional arguments."""
        return self._work.args

    @property
    def kwargs(self) -> dict[str, Any]:
        """Its keyword arguments."""
        return self._work.kwargs

    @property
    def config(self) -> TaskConfig:
        """The merged options it runs with."""
        return self._work.config

    @property
    def id(self) -> int:
        """Unique within the process, increasing in scheduling order."""
        return self._work.id

    @property
    def mode(self) -> TaskMode:
        """``"immediate"``, ``"after_route"`` or ``"after_response"``."""
        return self._work.mode

    @property
    def name(self) -> str:
        """The configured name, else the function's qualified name."""
        return self._work.name

    @property
    def state(self) -> TaskState:
        """Where it is in its life cycle ([`TaskState`][fastapi_tasks.TaskState])."""
        return self._work.state

    @property
    def attempts(self) -> int:
        """How many attempts have started so far."""
        return self._work.attempts

    @property
    def request(self) -> RequestInfo | None:
        """The request that scheduled the work, if it was scheduled in one.

        Recorded only while the manager has event listeners (metrics, the monitor,
        ``add_listener``): otherwise always ``None``.
        """
        return self._work.request

    @property
    def scheduled_at(self) -> float | None:
        """When it was scheduled (``time.time()``), recorded while the manager has listeners."""
        return self._work.scheduled_at or None

    @property
    def started_at(self) -> float | None:
        """When its first attempt began (``time.time()`` clock), else ``None``."""
        started = self._work.started_at
        if not started:
            return None
        return time.time() - (time.perf_counter() - started)

    @property
    def waiting_for(self) -> WaitReason | None:
        """What the work waits for before its function runs, or ``None``.

        - ``"request"``: its request's moment (after-route work: the endpoint to
          return; after-response work: the response to be sent);
        - ``"max_concurrency"``: a free slot under ``add_tasks(max_concurrency=...)``;
        - ``"event_loop"``: handed over, about to start;
        - ``"limiter"``: its ``limiter`` (the task is running: its attempt began);
        - ``"thread"``: a free worker thread, for ``def`` work (running too);
        - ``"retry"``: the delay before its next attempt.

        ``None`` while the function runs, and once the task finished.
        """
        return self._work.owner.waiting_reason(self._work)

    @property
    def done(self) -> bool:
        """Whether the task reached a final state."""
        return self._work.finished

    @property
    def result(self) -> R | None:
        """The return value once the task succeeded, else ``None``."""
        return self._work.result  # type: ignore[no-any-return]

    @property
    def exception(self) -> BaseException | None:
        """The exception of the last attempt once the task failed, else ``None``."""
        return self._work.exception

    @property
    def duration(self) -> float | None:
        """Seconds from the first attempt's start to the end, once it ended after starting."""
        work = self._work
        if not work.ended_at or not work.started_at:
            return None
        return work.ended_at - work.started_at

    @property
    def started(self) -> Event:
        """An event set when the first attempt begins (``await task.started.wait()``).

        The attempt may then still wait for its ``limiter`` or a worker thread
        before the function itself is called. Work that ended without starting
        (cancelled or discarded) never sets it: wait on ``wait()`` for the end.
        """
        work = self._work
        event = work.started
        if event is None:
            event = work.started = work.owner.new_event()
            if work.attempts:
                event.set()
        return event

    async def wait(self) -> None:
        """Wait until the task reached a final state (it does not raise the task's error)."""
        work = self._work
        if work.finished:
            return
        if work.done is None:
            work.done = work.owner.new_event()
        await work.done.wait()

    def cancel(self) -> bool:
        """Cancel the work; return ``False`` if it had already finished.

        Safe from any thread. Work that has not started is never started, and is
        released at once. Running async work is cancelled at its next await; a
        sync function already running in a thread cannot be interrupted, so it is
        abandoned and its result dropped.
        """
        work = self._work
        if work.finished:
            return False
        work.owner.cancel(work)
        return True

    async def __call__(self) -> R:
        """Run the function once more, now, in the caller's task, and return its result."""
        return await self._work.owner.call_again(self._work)  # type: ignore[no-any-return]
