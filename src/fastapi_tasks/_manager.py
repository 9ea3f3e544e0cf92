"""The app's task manager: admission, limits, bookkeeping, join and shutdown.

``Engine`` holds the state and is its one writer; every change in a task's life goes
through one of its ``mark_*``/``settle`` methods, which keep the counters, write the
log lines and publish the lifecycle event. ``TaskManager`` is the public face users
get from ``add_tasks()``; ``Scheduler`` is the small value behind every
``schedule()``/``task()`` call: which engine, which moment, which options.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import heapq
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, overload

import anyio
from typing_extensions import ParamSpec, Unpack

from ._call import check_call, is_broker_job
from ._config import TaskConfig, check_int, check_number
from ._events import (
    EventKind,
    Listener,
    Listeners,
    current_work,
    log_discarded,
    log_enqueued,
    log_retry,
    log_succeeded,
    logger,
    thread_work,
)
from ._execute import execute
from ._request import current_request
from ._runner import Chain, Runner, open_runner
from ._task import (
    PENDING,
    RUNNING,
    Broker,
    BrokerWork,
    Event,
    Journal,
    Revived,
    Task,
    TaskMode,
    TaskOptions,
    TaskState,
    WaitReason,
    Work,
    broker_label,
)
from ._threads import ThreadJob, WorkerThreads
from .errors import (
    FastAPITasksBrokerError,
    FastAPITasksClosedError,
    FastAPITasksError,
    FastAPITasksJournalError,
    FastAPITasksNotStartedError,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = [
    "AppScope",
    "BrokerJob",
    "Deferrer",
    "Engine",
    "Scheduler",
    "Scope",
    "TaskManager",
    "TaskStats",
    "current_scope",
    "find_current_manager",
]

P = ParamSpec("P")
R = TypeVar("R")

SUCCEEDED = TaskState.SUCCEEDED
FAILED = TaskState.FAILED
CANCELLED = TaskState.CANCELLED
DISCARDED = TaskState.DISCARDED


class Scope(Protocol):
    """What code runs for: one of an app's requests, or the app's lifespan."""

    @property
    def manager(self) -> TaskManager: ...

    def hold(self, work: Work) -> bool:
        """Durable work scheduled now: whether a response not started yet waits for its record."""
        ...


class AppScope:
    """The lifespan's scope: startup code, and work scheduled outside requests."""

    __slots__ = ("manager",)

    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager

    def hold(self, work: Work) -> bool:
        """No response to hold back outside a request."""
        return False


current_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "fastapi_tasks_scope", default=None
)
"""The request (or else the app's lifespan) this code runs for; its ``manager`` is the app's."""

SHIELD_WARNING_INTERVAL = 5.0
"""Seconds between the WARNING lines naming shielded work that holds shutdown."""

_running: list[TaskManager] = []
"""Managers between lifespan startup and the end of shutdown, oldest first."""


def find_current_manager() -> TaskManager | None:
    """The manager for code running now: the task's, the request's, else the only one."""
    work = current_work()
    if work is not None:
        found: TaskManager = work.owner.manager
        return found
    scope = current_scope.get()
    if scope is not None:
        return scope.manager
    if len(_running) == 1:
        return _running[0]
    return None


@dataclasses.dataclass(frozen=True)
class TaskStats:
    """A snapshot of a manager's counters.

    They add up at every moment: ``scheduled == pending + running + succeeded +
    failed + cancelled + discarded``.

    Attributes:
        scheduled: Tasks created by ``schedule()`` since the manager was created,
            after-route and after-response work included from the moment it was
            scheduled.
        pending: Tasks that have not started: waiting for their request's moment,
            for a free slot (``max_concurrency``), or for the event loop.
        running: Tasks whose first attempt has begun and that have not ended.
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


class Deferrer(Protocol):
    """Where after-route and after-response work waits for its moment (a request)."""

    def defer(self, work: Work) -> None: ...


class BrokerJob(Protocol[P]):
    """A task of a broker (taskiq's ``@broker.task``) as ``schedule()`` types it."""

    task_name: str

    def kicker(self) -> Any: ...
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any: ...


class Scheduler:
    """Schedules work for one moment with one set of options.

    ``tasks``, ``tasks.after_route``, ``tasks.after_response`` and the manager are
    schedulers; ``task(**options)`` returns a new one with the options merged in.
    """

    __slots__ = ("_config", "_engine", "_mode", "_target")

    def __init__(
        self, engine: Engine, mode: TaskMode, target: Any, config: TaskConfig | None
    ) -> None:
        self._engine = engine
        self._mode: TaskMode = mode
        self._target = target  # immediate: the start-order chain; later: the request
        self._config = config  # None: the manager's defaults, read at schedule time

    def __repr__(self) -> str:
        return f"<Scheduler {self._mode} {self.config!r}>"

    @property
    def config(self) -> TaskConfig:
        """The options the scheduled work will run with (before the function's own name)."""
        return self._config or self._engine.config

    @overload
    def schedule(self, func: BrokerJob[P], /, *args: P.args, **kwargs: P.kwargs) -> Task[Any]: ...
    @overload
    def schedule(
        self, func: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Task[R]: ...
    @overload
    def schedule(self, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Task[R]: ...
    def schedule(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Task[Any]:
        """Schedule ``func(*args, **kwargs)`` and return its [`Task`][fastapi_tasks.Task] handle.

        Safe to call from any thread (a ``def`` endpoint, a sync task): the work
        is always handed to the event loop that runs the app's lifespan.

        Args:
            func: A coroutine function (runs on the event loop), a plain function
                (runs in one of the manager's worker threads), or a task of the
                app's taskiq broker (``@broker.task``: enqueued for its workers at
                this moment; the handle's ``result`` is taskiq's ``AsyncTaskiqTask``).
            *args: Positional arguments for ``func``.
            **kwargs: Keyword arguments for ``func``.

        Returns:
            The handle of the scheduled work.

        Raises:
            TypeError: ``func`` is not callable, is a coroutine object or a
                generator function, or the arguments do not fit its signature.
                Nothing is scheduled.
            FastAPITasksNotStartedError: The app's lifespan has not started.
            FastAPITasksClosedError: The app's shutdown has begun.
            FastAPITasksWrongLoopError: Called from an event loop other than the
                one that runs the app's lifespan.
            FastAPITasksBrokerError: ``func`` is a taskiq task (``@broker.task``)
                and ``add_tasks()`` got no broker, or another broker than its own.
        """
        return self._engine.submit(
            func,
            args,
            kwargs,
            check_call(func, args, kwargs),
            self._config,
            self._mode,
            self._target,
        )

    def task(self, **options: Unpack[TaskOptions]) -> Scheduler:
        """Return a scheduler whose work runs with ``options`` merged over these defaults.

        Args:
            **options: Any field of [`TaskConfig`][fastapi_tasks.TaskConfig]; a field
                given as ``None`` switches an inherited value off.

        Returns:
            A scheduler with the same ``schedule()`` and ``task()``, for the same moment.

        Raises:
            ValueError: An option value is invalid.
        """
        merged = self.config.merge(TaskConfig(**options))
        return Scheduler(self._engine, self._mode, self._target, merged)


_NEW, _RUNNING, _CLOSING, _CLOSED = "new", "running", "closing", "closed"


class Engine:
    """The manager's state and its one writer (not part of the public API)."""

    def __init__(
        self,
        *,
        config: TaskConfig | None,
        max_concurrency: int | None,
        max_threads: int,
        shutdown_timeout: float,
        broker: Broker | None = None,
        journal: Journal | None = None,
    ) -> None:
        if config is not None and not isinstance(cast("object", config), TaskConfig):
            raise TypeError(f"config must be a TaskConfig, got {config!r}")
        if max_concurrency is not None:
            check_int("max_concurrency", max_concurrency, minimum=1)
        check_int("max_threads", max_threads, minimum=1)
        check_number("shutdown_timeout", shutdown_timeout, minimum=0, strict=False, finite=False)
        self.config = config or TaskConfig()
        self.max_concurrency = max_concurrency
        self.max_threads = max_threads
        self.shutdown_timeout = float(shutdown_timeout)
        self.phase = _NEW
        self.broker = broker
        self.broker_started = False
        self.journal = journal
        self.journal_open = False
        self.runner: Runner | None = None
        self.threads: WorkerThreads | None = None
        self.tracer: Tracer | None = None
        self.cancelled_exc: type[BaseException] = BaseException
        self.handlers_cancelled = False
        self.log_successes = False
        self.chain = Chain()  # start order of work scheduled outside requests (trio)
        self.listeners: Listeners | None = None  # only while there is a listener
        # Unfinished work is in exactly one of these at a time: waiting for its
        # request's moment; handed over to the runner (pending or running; those
        # waiting for a max_concurrency slot are also in `waiting`); scheduled by a
        # thread and not on the loop yet.
        self.deferred: dict[Work, None] = {}
        self.live: dict[Work, None] = {}
        self.waiting: OrderedDict[Work, None] = OrderedDict()
        self.in_transit: dict[Work, None] = {}
        self.active = 0
        self.idle: Event | None = None
        self.scheduled = 0
        self.started = 0
        self.ended_started = 0
        self.retries = 0
        # By final state; plain ints, not a dict: a str-Enum key hashes in Python.
        self.succeeded = self.failed = self.cancelled = self.discarded = 0
        self.manager = TaskManager(self)

    @property
    def has_started(self) -> bool:
        """Whether a lifespan ever started this manager."""
        return self.phase != _NEW

    # -- scheduling -------------------------------------------------------------

    def refusal(self, func: object = None) -> FastAPITasksError:
        if self.phase != _NEW and is_broker_job(func):
            # taskiq reconnects by itself after broker.shutdown(): refusing is ours to do.
            return FastAPITasksClosedError(
                f"cannot enqueue taskiq task {self.job_name(func)!r}: the app is shutting "
                f"down, and its broker {self.broker_name()} is stopping or stopped"
            )
        if self.phase == _NEW:
            return FastAPITasksNotStartedError(
                "the task manager is not running: it starts with the app's lifespan, which "
                "has not run. If the server runs with the lifespan off (uvicorn "
                "--lifespan off), turn it on; in tests, use 'with TestClient(app):' or "
                "fastapi_tasks.testing.run_lifespan(app)"
            )
        return FastAPITasksClosedError("cannot schedule work: the app is shutting down")

    def submit(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool | None,
        config: TaskConfig | None,
        mode: TaskMode,
        target: Any,
    ) -> Task[Any]:
        runner = self.runner
        if runner is None or self.phase != _RUNNING:
            raise self.refusal(func)
        config = config or self.config
        if is_async is None:  # a broker's task: a job to enqueue at its moment
            work: Work = self.broker_work(func, args, kwargs, config, mode)
        else:
            work = Work(self, func, args, kwargs, config, mode, is_async)
            if config.durable:
                self.make_durable(work)
        if runner.on_loop_thread():
            self.accept(work, target)
            return work
        work.context = contextvars.copy_context()
        # Unfinished from now on, so a join() racing with the hand-over waits for it.
        self.in_transit[work] = None
        try:
            runner.call_soon_threadsafe(self.arrive, work, target)
        except RuntimeError:  # pragma: no cover - the loop closed since the check above
            self.in_transit.pop(work, None)
            raise self.refusal() from None
        return work

    def broker_work(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        config: TaskConfig,
        mode: TaskMode,
    ) -> BrokerWork:
        broker = self.broker
        if broker is None:
            raise FastAPITasksBrokerError(
                f"cannot schedule taskiq task {self.job_name(func)!r}: it belongs to broker "
                f"{broker_label(func.broker)}, but add_tasks() got no broker, so nothing "
                "would enqueue it. Pass the broker: add_tasks(app, broker=broker)"
            )
        if not broker.owns(func):
            raise FastAPITasksBrokerError(
                f"cannot schedule taskiq task {self.job_name(func)!r}: it belongs to broker "
                f"{broker_label(func.broker)}, not to this app's broker {broker.name}. "
                "Decorate it with the app's broker (@broker.task)"
            )
        return BrokerWork(self, func, args, kwargs, config, mode, broker)

    def make_durable(self, work: Work) -> None:
        journal = self.journal
        if journal is None:
            raise FastAPITasksJournalError(
                f"cannot schedule {work.name} with durable=True: this app has no journal. "
                "Give it one: add_tasks(app, journal='tasks.db')"
            )
        journal.prepare(work)

    def job_name(self, func: Any) -> str:
        return str(getattr(func, "task_name", None) or func)

    def broker_name(self) -> str:
        return "(none)" if self.broker is None else self.broker.name

    def arrive(self, work: Work, target: Any) -> None:
        """Work a thread scheduled reaches the loop."""
        self.in_transit.pop(work, None)
        self.accept(work, target)

    def accept(self, work: Work, target: Any) -> None:
        self.scheduled += 1
        listeners = self.listeners
        if listeners is not None:
            # Recorded for listeners (Task.request, Task.scheduled_at): the request it
            # belongs to, from the scheduler's context (a thread's copy for work
            # scheduled from a thread), and when.
            context = work.context
            work.request = (
                current_request.get() if context is None else context.get(current_request)
            )
            work.scheduled_at = time.time()
            if listeners.scheduled:
                listeners.publish("scheduled", work, None, work.scheduled_at)
        if work.mode == "immediate":
            if work.entry is not None:
                self.record(work)
            if self.max_concurrency is None and self.phase == _RUNNING:
                self.live[work] = None  # the common case of hand_over(), inline
                self.runner.start(work, execute(work, self), target)  # type: ignore[union-attr]
            else:
                self.hand_over(work, target)
            return
        if work.context is None:
            work.context = contextvars.copy_context()
        self.deferred[work] = None
        deferrer: Deferrer = target
        deferrer.defer(work)

    def hand_over(self, work: Work, chain: Chain | None) -> None:
        """Give work whose moment has come to the runner, or queue it for a slot."""
        if work.state is not PENDING:  # cancelled while it waited for its moment
            return
        if self.phase != _RUNNING:
            if work.entry is not None and self.journal_open:
                # Its moment came during shutdown: recorded, it runs after the restart.
                self.journal.record(work, False)  # type: ignore[union-attr]
                self.settle(work, CANCELLED)
                return
            self.discard(work, "the app was shutting down")
            return
        if self.deferred:
            self.deferred.pop(work, None)
        if work.entry is not None and work.mode != "immediate":
            self.journal.record(work, False)  # type: ignore[union-attr]
        self.live[work] = None
        limit = self.max_concurrency
        if limit is None:  # no slots to count
            self.runner.start(work, execute(work, self), chain)  # type: ignore[union-attr]
            return
        if self.active >= limit:
            if work.context is None:
                # It starts later, from whichever task frees a slot: keep the
                # scheduler's contextvars (and tracing parent) with it.
                work.context = contextvars.copy_context()
            work.chain = chain
            self.waiting[work] = None
            return
        work.admitted = True
        self.active += 1
        self.runner.start(work, execute(work, self), chain)  # type: ignore[union-attr]

    def discard(self, work: Work, reason: str) -> None:
        """End work that never started because its request failed: counted and logged."""
        if work.state is PENDING:
            self.settle(work, DISCARDED, reason)

    def record(self, work: Work, held: bool | None = None) -> None:
        """Queue durable work's row; the response of its request may wait for it (``held``).

        Immediate work is held when a request's response has not started yet.
        """
        if held is None:
            context = work.context
            scope = current_scope.get() if context is None else context.get(current_scope)
            held = scope is not None and scope.hold(work)
        self.journal.record(work, held)  # type: ignore[union-attr]

    def cancel(self, work: Work) -> None:
        """``Task.cancel()``, from any thread."""
        if work.entry is not None:
            self.journal.note_cancelled(work)  # type: ignore[union-attr]
        runner = self.runner
        if runner is None or runner.on_loop_thread():
            self.cancel_now(work)
        else:
            runner.call_soon_threadsafe(self.cancel_now, work)

    def cancel_now(self, work: Work) -> None:
        if work.state is RUNNING:
            work.cancel_target.cancel()  # type: ignore[union-attr]
        elif work.state is PENDING:
            if work in self.in_transit:  # cancel it once it arrived
                self.runner.call_soon_threadsafe(self.cancel_now, work)  # type: ignore[union-attr]
                return
            target = work.cancel_target
            self.waiting.pop(work, None)
            self.settle(work, CANCELLED)
            if target is not None:  # handed to the runner, not started
                target.cancel()

    def waiting_reason(self, work: Work) -> WaitReason | None:
        """What unfinished work waits for, if anything (``Task.waiting_for``)."""
        if work.state is PENDING:
            if work in self.waiting:
                return "max_concurrency"
            if work in self.live:
                return "event_loop"
            return "request"
        if work.state is RUNNING:
            return work.blocked
        return None

    # -- what the executor needs ------------------------------------------------

    def span(self, task: Task[Any]) -> AbstractContextManager[None]:
        from ._otel import task_span

        return task_span(self.tracer, task)  # type: ignore[arg-type]

    def mark_started(self, work: Work) -> None:
        work.state = RUNNING
        work.attempts = 1
        work.clock_started = time.perf_counter()
        self.started += 1
        if work.started_event is not None:
            work.started_event.set()
        listeners = self.listeners
        if listeners is not None and listeners.started:
            listeners.publish("started", work)

    def mark_retrying(self, work: Work, exc: BaseException, wait: float) -> None:
        self.retries += 1
        log_retry(work, exc, wait)
        listeners = self.listeners
        if listeners is not None and listeners.retrying:
            listeners.publish("retrying", work, exc)

    def mark_enqueued(self, work: BrokerWork) -> None:
        if self.log_successes:
            log_enqueued(work)
        if self.listeners is not None:
            self.listeners.publish("enqueued", work)

    def settle(self, work: Work, state: TaskState, reason: str = "") -> None:
        """Write the final state: the one place a task ends."""
        work.state = state
        work.clock_ended = time.perf_counter()
        # What the finished handle must not keep alive: the scheduling context (a
        # request's whole state), the runner's objects, the wait for a thread.
        work.context = work.cancel_target = work.chain = work.busy_thread = None
        self.live.pop(work, None)
        if self.deferred:
            self.deferred.pop(work, None)
        if state is SUCCEEDED:
            self.succeeded += 1
        elif state is FAILED:
            self.failed += 1
        elif state is CANCELLED:
            self.cancelled += 1
        else:
            self.discarded += 1
        if work.attempts:
            self.ended_started += 1
        if work.admitted:
            work.admitted = False
            self.active -= 1
            self.start_waiting()
        if work.done_event is not None:
            work.done_event.set()
        if work.entry is not None and self.journal_open:
            self.journal.finish(work, self.phase != _RUNNING)  # type: ignore[union-attr]
        if state is SUCCEEDED:
            if self.log_successes:
                log_succeeded(work)
        elif state is DISCARDED and logger.isEnabledFor(logging.DEBUG):
            log_discarded(work, reason)
        listeners = self.listeners
        if listeners is not None and listeners.finished:
            listeners.publish("finished", work, work.exception)
        if self.idle is not None and not self.live:
            self.idle.set()
            self.idle = None

    def start_waiting(self) -> None:
        waiting = self.waiting
        limit: int = self.max_concurrency  # type: ignore[assignment]
        while waiting and self.active < limit:
            work, _ = waiting.popitem(last=False)
            chain, work.chain = work.chain, None
            work.admitted = True
            self.active += 1
            self.runner.start(work, execute(work, self), chain)  # type: ignore[union-attr]

    async def call_sync(
        self,
        work: Work,
        func: Callable[[], Any],
        limiter: anyio.CapacityLimiter | None,
        time_limit: float | None,
    ) -> Any:
        runner, threads = self.runner, self.threads
        if runner is None or threads is None:  # `await task()` on sync work after shutdown
            raise self.refusal()
        job = ThreadJob(runner, limiter, work)
        context = contextvars.copy_context()
        context.run(thread_work.set, work)  # current_task() in the thread
        try:
            return await job.call(threads, context, func, time_limit)
        except BaseException:
            if job.abandoned:
                work.busy_thread = job.finished
                what = "its on_error handler" if work.exception is not None else "sync work"
                logger.warning(
                    "task %s (id %s): %s is still running in its thread and was abandoned; "
                    "the thread stays busy until it returns, and its result is dropped",
                    work.name,
                    work.id,
                    what,
                )
            raise

    async def journal_attempt(self, work: Work) -> None:
        """An attempt of durable work begins: its row must be on disk first, then counted."""
        journal: Journal = self.journal  # type: ignore[assignment]
        if not journal.is_recorded(work):
            work.blocked = "journal"
            try:
                await journal.wait_recorded(work)
            finally:
                work.blocked = None
        journal.note_attempt(work)

    @property
    def journal_name(self) -> str:
        return "(none)" if self.journal is None else self.journal.name

    async def is_recorded(self, work: Work) -> bool:
        """Wait for durable work's commit; whether it landed."""
        try:
            await self.journal.wait_recorded(work)  # type: ignore[union-attr]
        except FastAPITasksJournalError:
            return False
        return True

    def retryable(self, work: Work) -> bool:
        """Whether a failed attempt of durable work may be retried.

        Not when its record failed while a response waited for it: that request
        was answered 503, and its client is the one to try again.
        """
        return self.journal.may_retry(work)  # type: ignore[union-attr]

    def adopt(self, revived: list[Revived]) -> None:
        """Unfinished durable work read back from the journal: run it (again) now."""
        journal: Journal = self.journal  # type: ignore[assignment]
        for item in revived:
            config = self.config.merge(TaskConfig(**item.options))
            error = item.error
            is_async = False
            if error is None:
                try:
                    is_async = bool(check_call(item.func, item.args, item.kwargs))
                except TypeError as exc:
                    error = exc
            work = Work(self, item.func, item.args, item.kwargs, config, "immediate", is_async)
            work.entry = item.entry
            journal.adopted(work)
            if error is None and self.phase == _RUNNING:
                self.accept(work, self.chain)
                continue
            self.scheduled += 1
            if error is None:  # shutdown began since the rows were read: they stay unfinished
                self.settle(work, CANCELLED)
                continue
            work.exception = error
            logger.error(
                "durable task %s from the journal %s cannot run again and stays there, failed: %s",
                work.name,
                journal.name,
                error,
            )
            self.settle(work, FAILED)

    async def call_again(self, work: Work) -> Any:
        if isinstance(work, BrokerWork):
            return await work.enqueue()  # "once more" for a job: enqueue it again
        if work.is_async:
            return await work.func(*work.args, **work.kwargs)
        call = functools.partial(work.func, *work.args, **work.kwargs)
        return await self.call_sync(work, call, None, None)

    def new_event(self) -> Event:
        runner = self.runner
        if runner is None:
            return anyio.Event()
        return runner.new_event()

    # -- join, stats ------------------------------------------------------------

    def refuse_own_task(self, what: str) -> None:
        work = current_work()
        if work is not None and work.owner is self:
            raise RuntimeError(
                f"{what} was called inside task {work.name} (id {work.id}) of the same "
                "manager: it would wait for itself. Join from outside the manager's tasks"
            )

    async def wait_idle(self, include_deferred: bool) -> None:
        while self.live or (include_deferred and (self.deferred or self.in_transit)):
            if self.idle is None:
                self.idle = self.new_event()
            await self.idle.wait()

    def stats(self) -> TaskStats:
        ended = self.succeeded + self.failed + self.cancelled + self.discarded
        return TaskStats(
            scheduled=self.scheduled,
            pending=self.scheduled - self.started - (ended - self.ended_started),
            running=self.started - self.ended_started,
            succeeded=self.succeeded,
            failed=self.failed,
            cancelled=self.cancelled,
            discarded=self.discarded,
            retries=self.retries,
        )

    # -- lifespan ---------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self) -> AsyncGenerator[None, None]:
        if self.phase in (_RUNNING, _CLOSING):
            raise FastAPITasksError("this task manager is already running")
        if self.broker is not None and not self.broker.is_worker:
            refuse_other_loops(self.broker)  # before the runner: trio would wrap the error
        if self.journal is not None:
            # Before the runner too: a damaged file's error reaches the server as it is.
            await self.journal.open(self.adopt)
            self.journal_open = True
        try:
            async with self.running():
                yield
        finally:
            # After the drain and the app's own shutdown: what ended is written, and
            # what did not is given back for the next process.
            if self.journal_open:
                self.journal_open = False
                await self.journal.close()  # type: ignore[union-attr]

    @asynccontextmanager
    async def running(self) -> AsyncGenerator[None, None]:
        async with open_runner() as runner:
            self.runner = runner
            self.cancelled_exc = runner.cancelled_exc
            # Read once: a per-task isEnabledFor() call would cost every task.
            self.log_successes = logger.isEnabledFor(logging.DEBUG)
            threads = self.threads = WorkerThreads(self.max_threads, "fastapi-tasks")
            self.handlers_cancelled = False
            self.phase = _RUNNING
            token = current_scope.set(AppScope(self.manager))
            _running.append(self.manager)
            try:
                if self.journal is not None:
                    self.journal.attach(runner)
                if self.broker is not None:
                    await self.start_broker(self.broker)
                yield
            finally:
                current_scope.reset(token)
                try:
                    await self.aclose()
                finally:
                    threads.close()
                    self.threads = None
                    _running.remove(self.manager)

    async def start_broker(self, broker: Broker) -> None:
        """Start the broker before the app's own startup: jobs sent earlier could be lost."""
        if broker.is_worker:
            return  # a worker process runs its broker itself
        await broker.startup()
        self.broker_started = True

    async def stop_broker(self, broker: Broker) -> None:
        """Stop the broker once nothing of ours is in flight; a failure is logged."""
        self.broker_started = False
        try:
            await broker.shutdown()
        except Exception as exc:
            logger.warning("the broker %s failed to shut down: %r", broker.name, exc, exc_info=exc)

    async def aclose(self) -> None:
        if self.phase != _RUNNING:
            return
        self.phase = _CLOSING
        before = self.stats()
        try:
            if self.live and self.shutdown_timeout > 0:
                with anyio.move_on_after(self.shutdown_timeout):
                    await self.wait_idle(include_deferred=False)
            self.handlers_cancelled = True
            for work in list(self.live):
                if not work.config.shielded:
                    self.cancel_now(work)
                elif work.handler_scope is not None:
                    work.handler_scope.cancel()
            while self.live:
                with anyio.move_on_after(SHIELD_WARNING_INTERVAL):
                    await self.wait_idle(include_deferred=False)
                if self.live:
                    logger.warning(
                        "shutdown is waiting for %d task(s) that must finish first: %s",
                        len(self.live),
                        ", ".join(f"{work.name} (id {work.id})" for work in list(self.live)),
                    )
        finally:
            self.phase = _CLOSED
            self.runner = None
            logger.info(
                "task manager stopped: %d completed, %d failed, %d cancelled, %d discarded "
                "during shutdown",
                self.succeeded - before.succeeded,
                self.failed - before.failed,
                self.cancelled - before.cancelled,
                self.discarded - before.discarded,
            )
            if self.broker_started:
                await self.stop_broker(self.broker)  # type: ignore[arg-type]

    def resume(self) -> None:
        """The app's startup completed: unfinished durable work from the journal runs now."""
        if self.journal_open:
            self.journal.resume()  # type: ignore[union-attr]


def refuse_other_loops(broker: Broker) -> None:
    """taskiq runs on asyncio only: say so at startup, not at the first enqueue."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise FastAPITasksBrokerError(
            f"this app's broker {broker.name} is taskiq's, and taskiq runs on asyncio "
            "only, but the app's lifespan runs on another event loop (trio). Serve the "
            "app on asyncio, or call add_tasks() without a broker"
        ) from None


def _by_id(work: Work) -> int:
    return work.id


class TaskManager(Scheduler):
    """The app's task manager, returned by ``add_tasks()``.

    It runs every task of the app, schedules immediate work outside requests
    (on startup, in WebSocket loops, inside other tasks), and is what tests
    ``join()`` on. Find it with ``get_task_manager()``; it is never built by hand.
    """

    __slots__ = ("__weakref__",)

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, "immediate", engine.chain, None)

    def __repr__(self) -> str:
        engine = self._engine
        return f"<TaskManager {engine.phase} live={len(engine.live)}>"

    @property
    def config(self) -> TaskConfig:
        """The app-wide default options (``add_tasks(config=...)``)."""
        return self._engine.config

    @property
    def journal(self) -> Any:
        """The app's journal of durable work (``add_tasks(journal=...)``), else ``None``.

        A [`SQLiteJournal`][fastapi_tasks.journal.SQLiteJournal]; its ``path`` is the file.
        """
        return self._engine.journal

    @property
    def running(self) -> bool:
        """Whether the manager accepts work (between lifespan startup and shutdown)."""
        return self._engine.phase == _RUNNING

    @property
    def tasks(self) -> list[Task[Any]]:
        """The live tasks (handed over, pending or running), in the order they were handed over."""
        return list(self._engine.live)

    def iter_unfinished(self) -> Iterator[Task[Any]]:
        """The tasks scheduled and not finished yet, oldest first, deferred work included.

        Unlike [`tasks`][fastapi_tasks.TaskManager.tasks] this includes after-route and
        after-response work still waiting for its request's moment, and it is lazy:
        take the first few without copying thousands. Iterate on the event loop's
        thread, without awaiting in between (the set changes as tasks end).
        """
        engine = self._engine
        return heapq.merge(engine.deferred, engine.live, key=_by_id)

    @property
    def stats(self) -> TaskStats:
        """Counters by state, retries and discarded work; they add up at every moment."""
        engine = self._engine
        runner = engine.runner
        if runner is not None and not runner.on_loop_thread():
            # Read on the loop, where the counters change, so the snapshot adds up.
            return runner.run_blocking(self._stats)
        return engine.stats()

    async def _stats(self) -> TaskStats:
        return self._engine.stats()

    def add_listener(self, listener: Listener, kinds: Iterable[EventKind] | None = None) -> None:
        """Call ``listener(event)`` with each [`TaskEvent`][fastapi_tasks.TaskEvent] from now on.

        Listeners run on the event loop's thread, in the order they were added,
        right where the change happens: keep them quick, and hand slow work to a
        task of their own. One that raises is logged once and stays registered.

        Args:
            listener: Called with each event.
            kinds: The kinds of event it wants (``{"finished"}``), else all. An
                event no listener wants is never built: a listener of finished
                work alone costs each task one event instead of three.

        Raises:
            TypeError: ``listener`` is not callable.
            ValueError: ``kinds`` names an unknown kind.
        """
        engine = self._engine
        listeners = engine.listeners or Listeners((), set())
        engine.listeners = listeners.with_listener(listener, kinds)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; ``ValueError`` if it was not added."""
        engine = self._engine
        listeners = engine.listeners or Listeners((), set())
        engine.listeners = listeners.without_listener(listener)

    async def join(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - SPEC API
        """Wait until no work is pending or running, error handlers included.

        Work scheduled while waiting is waited for too, and so is after-route and
        after-response work of requests still in flight.

        Args:
            timeout: Seconds to wait at most; ``None`` waits as long as it takes.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            RuntimeError: Called inside one of this manager's own tasks, which
                would wait for itself.
            FastAPITasksWrongLoopError: Called on an event loop other than the one
                that runs the app's lifespan.
        """
        engine = self._engine
        engine.refuse_own_task("join()")
        runner = engine.runner
        if runner is not None:
            runner.on_loop_thread()  # another event loop would wait here forever: refused
        with anyio.fail_after(timeout):
            await engine.wait_idle(include_deferred=True)

    def join_blocking(self, timeout: float | None = None) -> None:
        """Blocking twin of [`join()`][fastapi_tasks.TaskManager.join] for sync code.

        For tests that use ``TestClient``: it must be called from another thread
        than the event loop's. Returns at once when the manager is not running.

        Args:
            timeout: Seconds to wait at most; ``None`` waits as long as it takes.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            RuntimeError: Called on the event loop's own thread, where it would
                block the loop it waits for, or inside one of this manager's tasks.
        """
        engine = self._engine
        runner = engine.runner
        if runner is None:
            return
        if runner.on_loop_thread():
            raise RuntimeError("join_blocking() would block the event loop; use 'await join()'")
        engine.refuse_own_task("join_blocking()")
        if engine.live or engine.deferred or engine.in_transit:
            runner.run_blocking(functools.partial(self.join, timeout))

    @asynccontextmanager
    async def lifespan(self) -> AsyncGenerator[None, None]:
        """Run the manager for the duration of the block.

        The app's lifespan does this for you (``add_tasks()`` wires it in); use it
        directly only to run a manager without serving its app (a CLI, a script).
        Unfinished durable work from the app's journal runs again as the block
        begins (there is no app startup to wait for).
        """
        async with self._engine.lifespan():
            self._engine.resume()
            yield

    async def aclose(self) -> None:
        """Shut down: refuse new work, drain for ``shutdown_timeout``, cancel, wait for shielded."""
        await self._engine.aclose()
