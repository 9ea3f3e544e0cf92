"""The task handle: one piece of scheduled work, its attempts, and how it ends."""

from __future__ import annotations

import contextvars
import enum
import functools
import inspect
import itertools
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Generic, Literal, Protocol, TypeVar

import anyio

from ._call import is_async_callable
from ._config import TaskConfig

__all__ = ["Task", "TaskMode", "TaskState"]

R = TypeVar("R")
logger = logging.getLogger("fastapi_tasks")

TaskMode = Literal["immediate", "after_route", "after_response"]
"""When the work was scheduled to start."""


class TaskState(str, enum.Enum):
    """Life cycle of a task. Every task ends in exactly one final state."""

    PENDING = "pending"
    """Accepted, not started yet."""
    RUNNING = "running"
    """The function is running (possibly between retries)."""
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
SUCCEEDED = TaskState.SUCCEEDED
FAILED = TaskState.FAILED
CANCELLED = TaskState.CANCELLED
DISCARDED = TaskState.DISCARDED


class Event(Protocol):
    def is_set(self) -> bool: ...
    def set(self) -> None: ...
    async def wait(self) -> Any: ...


class _Cancellable(Protocol):
    def cancel(self) -> Any: ...


class Host(Protocol):
    """What a task needs from the manager that runs it."""

    _cancelled_exc: type[BaseException]
    _tracer: Any

    def _new_event(self) -> Event: ...
    async def _run_in_thread(
        self,
        func: Callable[[], Any],
        owner: Task[Any],
        limiter: anyio.CapacityLimiter | None = None,
        time_limit: float | None = None,
    ) -> Any: ...
    async def _sleep(self, seconds: float) -> None: ...
    def _count_retry(self) -> None: ...
    def _finish(self, task: Task[Any], state: TaskState) -> None: ...


_ids = itertools.count(1)


def _qualname(func: object) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__qualname__", None) or type(func).__qualname__


class Task(Generic[R]):
    """Handle of one piece of background work, returned by ``schedule()``.

    Attributes:
        func: The function that was scheduled.
        args: Its positional arguments.
        kwargs: Its keyword arguments.
        config: The merged options it runs with.
        id: Unique within the process, increasing in scheduling order.
        mode: ``"immediate"``, ``"after_route"`` or ``"after_response"``.
        state: Where it is in its life cycle ([`TaskState`][fastapi_tasks.TaskState]).
        attempts: How many attempts have started so far.
    """

    __slots__ = (
        "_admitted",
        "_busy_thread",
        "_context",
        "_done",
        "_exception",
        "_handle",
        "_host",
        "_is_async",
        "_result",
        "_started",
        "_started_at",
        "args",
        "attempts",
        "config",
        "func",
        "id",
        "kwargs",
        "mode",
        "state",
    )

    def __init__(
        self,
        host: Host,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        config: TaskConfig,
        mode: TaskMode,
        is_async: bool,
        context: contextvars.Context | None,
    ) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.config = config
        self.mode: TaskMode = mode
        self.id = next(_ids)
        self.state = PENDING
        self.attempts = 0
        self._host = host
        self._is_async = is_async
        self._context = context
        self._handle: _Cancellable | None = None
        self._admitted = False
        self._busy_thread: Event | None = None
        self._result: Any = None
        self._exception: BaseException | None = None
        self._started: Event | None = None
        self._done: Event | None = None
        self._started_at = 0.0

    def __repr__(self) -> str:
        # Arguments stay out on purpose: they often carry personal data.
        return f"<Task {self.name!r} id={self.id} mode={self.mode} state={self.state.value}>"

    @property
    def name(self) -> str:
        """The configured name, else the function's qualified name."""
        return self.config.name or _qualname(self.func)

    @property
    def done(self) -> bool:
        """Whether the task reached a final state."""
        return self.state not in (PENDING, RUNNING)

    @property
    def started(self) -> Event:
        """An event set when the first attempt begins (``await task.started.wait()``).

        The attempt may then still wait for its ``limiter`` or a worker thread
        before the function itself is called.
        """
        event = self._started
        if event is None:
            event = self._started = self._host._new_event()
            if self.state is not PENDING and self.attempts:
                event.set()
        return event

    @property
    def result(self) -> R | None:
        """The return value once the task succeeded, else ``None``."""
        return self._result  # type: ignore[no-any-return]

    @property
    def exception(self) -> BaseException | None:
        """The exception of the last attempt once the task failed, else ``None``."""
        return self._exception

    async def wait(self) -> None:
        """Wait until the task reached a final state (it does not raise the task's error)."""
        if self.done:
            return
        if self._done is None:
            self._done = self._host._new_event()
        await self._done.wait()

    def cancel(self) -> bool:
        """Cancel the work; return ``False`` if it had already finished.

        Work that has not started is never started. Running async work is
        cancelled at its next await; a sync function already running in a thread
        cannot be interrupted, so it is abandoned and its result dropped.
        """
        if self.done:
            return False
        if self.state is PENDING:
            self._host._finish(self, CANCELLED)
        if self._handle is not None:
            self._handle.cancel()
        return True

    async def __call__(self) -> R:
        """Run the function once more, now, in the caller's task, and return its result."""
        return await self._call_once()  # type: ignore[no-any-return]

    async def _call_once(self) -> Any:
        if self._is_async:
            return await self.func(*self.args, **self.kwargs)
        return await self._call_sync(None, None)

    async def _call_sync(
        self, limiter: anyio.CapacityLimiter | None, time_limit: float | None
    ) -> Any:
        call = functools.partial(self.func, *self.args, **self.kwargs)
        result = await self._host._run_in_thread(call, self, limiter, time_limit)
        if inspect.isawaitable(result):
            # A plain function that returned an awaitable (e.g. a sync wrapper
            # around a coroutine function): finish the work on the event loop.
            return await result
        return result

    async def _attempt(self) -> Any:
        """One attempt with the options: limiter held, timeout counted, while it runs."""
        config = self.config
        if not self._is_async:
            # The thread keeps the limiter until it returns, even past a timeout.
            return await self._call_sync(config.limiter, config.timeout)
        if config.limiter is None:
            return await self._call_async_timed()
        async with config.limiter:
            return await self._call_async_timed()

    async def _call_async_timed(self) -> Any:
        if self.config.timeout is None:
            return await self.func(*self.args, **self.kwargs)
        with anyio.fail_after(self.config.timeout):
            return await self.func(*self.args, **self.kwargs)

    async def _call_with_policy(self) -> Any:
        config = self.config
        retries = config.retries or 0
        while True:
            try:
                return await self._attempt()
            except Exception as exc:
                if self.attempts > retries or (
                    config.retry_on is not None and not isinstance(exc, config.retry_on)
                ):
                    raise
                wait = self._retry_wait()
                self._host._count_retry()
                logger.warning(
                    "task %s (id %s) attempt %d failed with %r; retrying in %.3fs",
                    self.name,
                    self.id,
                    self.attempts,
                    exc,
                    wait,
                    extra=self._log_extra(),
                )
                await self._host._sleep(wait)
                busy = self._busy_thread
                if busy is not None:
                    # Never overlap the previous attempt: it still runs in its thread.
                    self._busy_thread = None
                    await busy.wait()
                self.attempts += 1

    def _retry_wait(self) -> float:
        """Seconds to wait before the next retry: delay x backoff^(n-1), with +/-20% jitter."""
        config = self.config
        base = (config.retry_delay or 0.0) * (config.retry_backoff or 1.0) ** (self.attempts - 1)
        return base * random.uniform(0.8, 1.2)

    async def _run(self) -> None:
        """Run the work to its final state; called once, by the runner."""
        if self.state is not PENDING:  # cancelled before it began
            return
        tracer = self._host._tracer
        if tracer is None:
            await self._run_to_the_end()
            return
        from ._otel import task_span

        with task_span(tracer, self):
            await self._run_to_the_end()

    async def _run_to_the_end(self) -> None:
        self.state = RUNNING
        self.attempts = 1
        self._started_at = time.perf_counter()
        if self._started is not None:
            self._started.set()
        state = CANCELLED
        try:
            if self.config._plain:
                self._result = await self._call_once()
            else:
                self._result = await self._call_with_policy()
            state = SUCCEEDED
        except Exception as exc:
            # The state stays RUNNING until on_error returned: until then the task
            # can still be cancelled (at shutdown too), and wait() keeps waiting.
            state = FAILED
            self._exception = exc
            await self._report_failure(exc)
        finally:
            self._host._finish(self, state)

    def _log_extra(self) -> dict[str, object]:
        return {
            "task_name": self.name,
            "task_id": self.id,
            "task_mode": self.mode,
            "task_attempt": self.attempts,
            "task_duration": time.perf_counter() - self._started_at if self._started_at else 0.0,
        }

    async def _report_failure(self, exc: Exception) -> None:
        logger.error(
            "task %s (id %s, %s) failed after %d attempt(s)",
            self.name,
            self.id,
            self.mode,
            self.attempts,
            exc_info=exc,
            extra=self._log_extra(),
        )
        handler = self.config.on_error
        if handler is None:
            return
        try:
            if is_async_callable(handler):
                await handler(self, exc)  # type: ignore[misc]
            else:
                outcome = await self._host._run_in_thread(
                    functools.partial(handler, self, exc), self
                )
                if inspect.isawaitable(outcome):
                    await outcome
        except Exception:
            logger.exception(
                "on_error handler of task %s (id %s) raised; the error is logged and ignored",
                self.name,
                self.id,
                extra=self._log_extra(),
            )
