"""The app-level task manager: admission, limits, bookkeeping, join and shutdown."""

from __future__ import annotations

import contextvars
import dataclasses
import logging
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from threading import get_ident
from typing import Any, Literal, TypeVar, overload

import anyio
from typing_extensions import ParamSpec, Unpack

from ._call import check_call
from ._config import TaskConfig, TaskOptions, check_number
from ._runner import Runner, open_runner
from ._task import (
    CANCELLED,
    DISCARDED,
    SUCCEEDED,
    Event,
    Task,
    TaskMode,
    TaskState,
)
from ._threads import ThreadJob
from .errors import FastAPITasksClosedError, FastAPITasksError, FastAPITasksNotStartedError

__all__ = [
    "Scheduler",
    "TaskManager",
    "TaskStats",
    "current_manager",
    "find_current_manager",
    "running_managers",
]

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("fastapi_tasks")

current_manager: contextvars.ContextVar[TaskManager | None] = contextvars.ContextVar(
    "fastapi_tasks_manager", default=None
)
"""The manager of the app whose lifespan, request or task this code runs in.

Requests set it only while several managers run in the process (see
``running_managers``): with one, that one is the answer, and a request saves the
cost of setting a context variable.
"""

running_managers: list[TaskManager] = []
"""Managers between lifespan startup and the end of shutdown, oldest first."""


def find_current_manager() -> TaskManager | None:
    """The manager for code running now: from the context, else the only one running."""
    manager = current_manager.get()
    if manager is None and len(running_managers) == 1:
        manager = running_managers[0]
    return manager


_Phase = Literal["new", "running", "closing", "closed"]


def _check_type(name: str, value: object, kind: type) -> None:
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__}, got {value!r}")


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class TaskStats:
    """A snapshot of a manager's counters.

    Attributes:
        scheduled: Tasks handed to the manager since it was created.
        pending: Tasks that have not started: waiting for their request's moment,
            for a free slot (``max_concurrency``), or for the event loop.
        running: Live tasks whose first attempt has begun.
        succeeded: Tasks that returned.
        failed: Tasks whose last attempt raised.
        cancelled: Tasks cancelled by ``cancel()`` or at shutdown.
        discarded: After-route or after-response work that never started because
            its request failed or its response could not be completed.
        retries: Retries made, over all tasks.
    """

    scheduled: int
    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    discarded: int
    retries: int


class Scheduler:
    """Something with ``schedule()`` and ``task(**options)``."""

    __slots__ = ()

    def _accept(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
        config: TaskConfig | None,
    ) -> Task[Any]:
        raise NotImplementedError  # pragma: no cover

    def _default_config(self) -> TaskConfig:
        raise NotImplementedError  # pragma: no cover

    @overload
    def schedule(
        self, func: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Task[R]: ...
    @overload
    def schedule(self, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Task[R]: ...
    def schedule(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Task[Any]:
        """Schedule ``func(*args, **kwargs)`` and return its [`Task`][fastapi_tasks.Task] handle.

        Args:
            func: A coroutine function (runs on the event loop) or a plain function
                (runs in one of the manager's worker threads).
            *args: Positional arguments for ``func``.
            **kwargs: Keyword arguments for ``func``.

        Returns:
            The handle of the scheduled work.

        Raises:
            TypeError: ``func`` is not callable, is a coroutine object, or the
                arguments do not fit its signature. Nothing is scheduled.
            FastAPITasksNotStartedError: The app's lifespan has not started.
            FastAPITasksClosedError: The app's shutdown has begun.
        """
        # None stands for the scheduler's default options: resolving them here would
        # cost every call a method call.
        return self._accept(func, args, kwargs, check_call(func, args, kwargs), None)

    def task(self, **options: Unpack[TaskOptions]) -> ConfiguredScheduler:
        """Return a scheduler whose work runs with ``options`` merged over the defaults.

        Args:
            **options: Any field of [`TaskConfig`][fastapi_tasks.TaskConfig]; a field
                given as ``None`` switches an inherited value off.

        Returns:
            A scheduler with the same ``schedule()`` and ``task()``.

        Raises:
            ValueError: An option value is invalid.
        """
        return ConfiguredScheduler(self, self._default_config().merge(TaskConfig(**options)))


class ConfiguredScheduler(Scheduler):
    """A scheduler with options applied; returned by ``task(**options)``."""

    __slots__ = ("_config", "_target")

    def __init__(self, target: Scheduler, config: TaskConfig) -> None:
        self._target = target
        self._config = config

    @property
    def config(self) -> TaskConfig:
        """The merged options the scheduled work will run with."""
        return self._config

    def _default_config(self) -> TaskConfig:
        return self._config

    def _accept(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
        config: TaskConfig | None,
    ) -> Task[Any]:
        return self._target._accept(func, args, kwargs, is_async, config or self._config)


class TaskManager(Scheduler):
    """The app's task manager, returned by ``add_tasks()``.

    It runs every task of the app, schedules immediate work outside requests
    (on startup, in WebSocket loops, inside other tasks), and is what tests
    ``join()`` on. Find it with ``get_task_manager()``.
    """

    __slots__ = (
        "__weakref__",
        "_active",
        "_cancelled_exc",
        "_config",
        "_counts",
        "_deferred",
        "_idle",
        "_live",
        "_log_successes",
        "_loop_thread",
        "_max_concurrency",
        "_max_threads",
        "_phase",
        "_pool",
        "_retries",
        "_runner",
        "_scheduled",
        "_shield_warning_interval",
        "_shutdown_timeout",
        "_tracer",
        "_waiting",
    )

    def __init__(
        self,
        *,
        config: TaskConfig | None = None,
        max_concurrency: int | None = None,
        max_threads: int = 40,
        shutdown_timeout: float = 0.0,
    ) -> None:
        _check_type("config", config, TaskConfig)
        if max_concurrency is not None:
            _check_int("max_concurrency", max_concurrency)
        _check_int("max_threads", max_threads)
        check_number("shutdown_timeout", shutdown_timeout, minimum=0, strict=False)
        self._config = config or TaskConfig()
        self._max_concurrency = max_concurrency
        self._max_threads = max_threads
        self._shutdown_timeout = float(shutdown_timeout)
        self._runner: Runner | None = None
        self._loop_thread = 0
        self._phase: _Phase = "new"
        self._live: dict[Task[Any], None] = {}  # handed over: pending or running
        self._deferred: dict[Task[Any], None] = {}  # waiting for their request's moment
        self._waiting: deque[Task[Any]] = deque()
        self._active = 0
        self._scheduled = 0
        self._retries = 0
        self._counts: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        self._idle: Event | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._cancelled_exc: type[BaseException] = BaseException
        self._tracer: Any = None
        self._log_successes = False
        self._shield_warning_interval = 5.0

    def __repr__(self) -> str:
        return f"<TaskManager {self._phase} live={len(self._live)}>"

    # -- public -----------------------------------------------------------------

    @property
    def config(self) -> TaskConfig:
        """The app-wide default options (``add_tasks(config=...)``)."""
        return self._config

    @property
    def running(self) -> bool:
        """Whether the manager accepts work (between lifespan startup and shutdown)."""
        return self._phase == "running"

    @property
    def tasks(self) -> list[Task[Any]]:
        """The live tasks (pending or running), in the order they were handed over."""
        return list(self._live)

    @property
    def stats(self) -> TaskStats:
        """Counters by state, retries and discarded work."""
        running = sum(1 for task in list(self._live) if task.attempts)
        counts = self._counts
        return TaskStats(
            scheduled=self._scheduled,
            pending=len(self._live) - running + len(self._deferred),
            running=running,
            succeeded=counts[SUCCEEDED],
            failed=counts[TaskState.FAILED],
            cancelled=counts[CANCELLED],
            discarded=counts[DISCARDED],
            retries=self._retries,
        )

    async def join(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - SPEC API
        """Wait until no work is pending or running, error handlers included.

        Work scheduled while waiting is waited for too, and so is after-route and
        after-response work of requests still in flight.

        Args:
            timeout: Seconds to wait at most; ``None`` waits as long as it takes.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        with anyio.fail_after(timeout):
            await self._wait_idle(include_deferred=True)

    async def _wait_idle(self, include_deferred: bool) -> None:
        while self._live or (include_deferred and self._deferred):
            if self._idle is None:
                self._idle = self._new_event()
            await self._idle.wait()

    def join_blocking(self, timeout: float | None = None) -> None:
        """Blocking twin of [`join()`][fastapi_tasks.TaskManager.join] for sync code.

        For tests that use ``TestClient``: it must be called from another thread
        than the event loop's. Returns at once when the manager is not running.

        Args:
            timeout: Seconds to wait at most; ``None`` waits as long as it takes.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            RuntimeError: Called on the event loop's own thread, where it would
                block the loop it waits for.
        """
        runner = self._runner
        if runner is None or not (self._live or self._deferred):
            return
        if get_ident() == self._loop_thread:
            raise RuntimeError("join_blocking() would block the event loop; use 'await join()'")
        runner.run_blocking(lambda: self.join(timeout))

    # -- scheduling -------------------------------------------------------------

    def _default_config(self) -> TaskConfig:
        return self._config

    def _refusal(self) -> FastAPITasksError:
        if self._phase == "new":
            return FastAPITasksNotStartedError(
                "the task manager is not running: the app's lifespan has not started. "
                "Serve the app with an ASGI server, or use 'with TestClient(app):' in tests"
            )
        return FastAPITasksClosedError("cannot schedule work: the app is shutting down")

    def _new_task(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
        config: TaskConfig,
        mode: TaskMode,
    ) -> Task[Any]:
        """Create a pending task for later release; raises if the manager is not running.

        ``join()`` waits for it from now on, also while its moment has not come
        yet (a response still being sent).
        """
        if self._phase != "running":
            raise self._refusal()
        task: Task[Any] = Task(
            self, func, args, kwargs, config, mode, is_async, contextvars.copy_context()
        )
        self._deferred[task] = None
        return task

    def _accept(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
        config: TaskConfig | None,
    ) -> Task[Any]:
        runner = self._runner
        if runner is None or self._phase != "running":
            raise self._refusal()
        if config is None:
            config = self._config
        if get_ident() == self._loop_thread:
            task: Task[Any] = Task(self, func, args, kwargs, config, "immediate", is_async, None)
            self._admit(task)
        else:
            task = Task(
                self, func, args, kwargs, config, "immediate", is_async, contextvars.copy_context()
            )
            # Live from now on, so a join() racing with the hand-over still waits for it.
            self._live[task] = None
            runner.call_soon_threadsafe(self._release, task)
        return task

    def _release(self, task: Task[Any]) -> None:
        """Hand a task that was accepted earlier to the runner (event loop thread only)."""
        self._release_all((task,), False, "")

    def _release_threadsafe(self, task: Task[Any]) -> None:
        """``release()`` from any thread."""
        runner = self._runner
        if runner is not None and get_ident() != self._loop_thread:
            runner.call_soon_threadsafe(self._release, task)
        else:
            self._release(task)

    def _release_all(self, tasks: Iterable[Task[Any]], failed: bool, reason: str) -> None:
        """Release a batch; if ``failed`` only ``run_on_failure`` work runs, the rest is dropped."""
        running = self._phase == "running"
        for task in tasks:
            if task.state is not TaskState.PENDING:
                continue  # cancelled while it waited for its moment
            if failed and not task.config.run_on_failure:
                self._discard(task, reason)
            elif running:
                self._admit(task)
            else:
                self._discard(task, "the app was shutting down")

    def _admit(self, task: Task[Any]) -> None:
        if self._deferred:
            self._deferred.pop(task, None)
        self._live[task] = None
        self._scheduled += 1
        limit = self._max_concurrency
        if limit is None:  # no slots to count
            self._runner.start(task)  # type: ignore[union-attr]
            return
        if self._active >= limit:
            if task._context is None:
                # It starts later, from whichever task frees a slot: keep the
                # scheduler's contextvars (and tracing parent) with it.
                task._context = contextvars.copy_context()
            self._waiting.append(task)
            return
        self._start(task)

    def _start(self, task: Task[Any]) -> None:
        """Start a task that takes one of the ``max_concurrency`` slots."""
        task._admitted = True
        self._active += 1
        self._runner.start(task)  # type: ignore[union-attr]

    def _discard(self, task: Task[Any], reason: str) -> None:
        """End a task that never started (its request failed): counted and logged."""
        task.state = DISCARDED
        self._counts[DISCARDED] += 1
        self._forget(task)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "discarded task %s (id %s, %s): %s",
                task.name,
                task.id,
                task.mode,
                reason,
                extra=task._log_extra(),
            )

    def _forget(self, task: Task[Any]) -> None:
        self._live.pop(task, None)
        if self._deferred:
            self._deferred.pop(task, None)
        if task._done is not None:
            task._done.set()
        if not self._live and self._idle is not None:
            self._idle.set()
            self._idle = None

    # -- what tasks need from their host ---------------------------------------

    def _new_event(self) -> Event:
        if self._runner is None:
            return anyio.Event()
        return self._runner.new_event()

    async def _run_in_thread(
        self,
        func: Callable[[], Any],
        owner: Task[Any],
        limiter: anyio.CapacityLimiter | None = None,
        time_limit: float | None = None,
    ) -> Any:
        runner, pool = self._runner, self._pool
        if runner is None or pool is None:  # `await task()` on sync work after shutdown
            raise self._refusal()
        job = ThreadJob(runner, limiter)
        try:
            return await job.call(pool, func, time_limit)
        except BaseException:
            if job.abandoned:
                owner._busy_thread = job.finished
                logger.warning(
                    "sync task %s (id %s) is still running in its thread and was abandoned; "
                    "its thread stays busy until it returns, and its result will be dropped",
                    owner.name,
                    owner.id,
                    extra=owner._log_extra(),
                )
            raise

    async def _sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def _count_retry(self) -> None:
        self._retries += 1

    def _finish(self, task: Task[Any], state: TaskState) -> None:
        task.state = state
        self._counts[state] += 1
        self._forget(task)
        if task._admitted:
            self._active -= 1
            waiting = self._waiting
            while waiting and self._active < self._max_concurrency:  # type: ignore[operator]
                queued = waiting.popleft()
                if queued.state is TaskState.PENDING:
                    self._start(queued)
        if state is SUCCEEDED and self._log_successes:
            logger.debug("task %s (id %s) succeeded", task.name, task.id, extra=task._log_extra())

    # -- lifespan ---------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, tracer: Any = None) -> AsyncGenerator[None, None]:
        """Run the manager for the duration of the block (the app's lifespan).

        ``tracer``, an OpenTelemetry tracer, gives each task a span of its own.
        """
        if self._phase in ("running", "closing"):
            raise FastAPITasksError("this task manager is already running")
        async with open_runner() as runner:
            self._runner = runner
            self._loop_thread = runner.thread
            # Read once: a per-task isEnabledFor() call would cost every task.
            self._log_successes = logger.isEnabledFor(logging.DEBUG)
            self._cancelled_exc = runner.cancelled_exc
            self._tracer = tracer
            pool = self._pool = ThreadPoolExecutor(
                self._max_threads, thread_name_prefix="fastapi-tasks"
            )
            self._phase = "running"
            token = current_manager.set(self)
            running_managers.append(self)
            try:
                yield
            finally:
                current_manager.reset(token)
                try:
                    await self.aclose()
                finally:
                    # Queued calls are dropped; a thread still running is left to finish.
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = None
                    running_managers.remove(self)

    async def aclose(self) -> None:
        """Shut down: refuse new work, drain for ``shutdown_timeout``, cancel, wait for shielded."""
        if self._phase != "running":
            return
        self._phase = "closing"
        before = dict(self._counts)
        try:
            if self._live and self._shutdown_timeout > 0:
                with anyio.move_on_after(self._shutdown_timeout):
                    await self._wait_idle(include_deferred=False)
            for task in list(self._live):
                if not task.config.shielded:
                    task.cancel()
            while self._live:
                with anyio.move_on_after(self._shield_warning_interval):
                    await self._wait_idle(include_deferred=False)
                if self._live:
                    logger.warning(
                        "shutdown is waiting for %d task(s) that must finish first: %s",
                        len(self._live),
                        ", ".join(f"{task.name} (id {task.id})" for task in self._live),
                    )
        finally:
            self._phase = "closed"
            self._runner = None
            done = {state: self._counts[state] - before[state] for state in before}
            logger.info(
                "task manager stopped: %d completed, %d failed, %d cancelled, %d discarded "
                "during shutdown",
                done[SUCCEEDED],
                done[TaskState.FAILED],
                done[CANCELLED],
                done[DISCARDED],
            )
