"""Regressions of 0.2.0, part 3: the life of a task (threads, failures, options, join).

Each test is named after the bug it pins (``reviews/core-review-0.2.0.md``,
``reviews/reliability-trial-0.2.0.md``) and states the rule it checks, through
the public API only. Scenarios that need a fresh interpreter (asyncio's debug
mode, process exit) run ``tests/regression_probes.py`` in a subprocess.

The ``BaseException`` tests come last: on a library that lets a
``KeyboardInterrupt`` from a task reach the event loop, they stop the test
session itself.

No ``from __future__ import annotations`` here: endpoints are defined inside the
tests, and FastAPI resolves string annotations in module globals only.
"""

import builtins
import functools
import gc
import importlib
import logging
import math
import os
import re
import subprocess
import sys
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import anyio
import pytest
from fastapi import FastAPI

from fastapi_tasks import (
    FastAPITasksError,
    Task,
    TaskConfig,
    TaskManager,
    TaskOptions,
    TaskState,
    add_tasks,
)

from .conftest import serving
from .regression_probes import cancel_running_task_from_a_thread

pytestmark = pytest.mark.anyio

P = ParamSpec("P")
R = TypeVar("R")

WAIT = 5.0
"""Seconds any single wait may take before the test fails."""

ROOT = Path(__file__).resolve().parent.parent


def run_probe(
    scenario: str, backend: str, *, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a scenario of ``tests/regression_probes.py`` in a fresh interpreter."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "tests.regression_probes", scenario, backend],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        pytest.fail(f"{scenario} on {backend} did not end within {timeout:g} s:\n{stderr[-2000:]}")


# -- R1 -----------------------------------------------------------------------------


async def test_r1_cancel_a_running_task_from_a_thread() -> None:
    """``Task.cancel()`` may be called from any thread, like ``schedule()``.

    A ``def`` endpoint (a worker thread) cancels a sleeping task that an earlier
    request scheduled: the task ends CANCELLED, ``await task.wait()`` and
    ``await manager.join()`` return, and the lifespan shuts down.
    """
    await cancel_running_task_from_a_thread()


async def test_r1_cancel_a_pending_task_from_a_thread() -> None:
    """A pending task cancelled from another thread never runs, and its waiters wake.

    ``max_concurrency=1`` and a blocker keep the task pending; a ``def`` endpoint
    cancels it. It ends CANCELLED without running, a coroutine waiting on
    ``task.wait()`` wakes, and the rest drains as usual.
    """
    app = FastAPI()
    manager = add_tasks(app, max_concurrency=1)
    release = anyio.Event()
    ran: list[str] = []
    handles: dict[str, Task[None]] = {}
    waiter_woke = anyio.Event()

    async def hold() -> None:
        await release.wait()

    async def queued() -> None:
        ran.append("queued work ran")

    async def wait_for_the_queued_task() -> None:
        await handles["queued"].wait()
        waiter_woke.set()

    @app.post("/cancel")
    def cancel_queued() -> bool:
        return handles["queued"].cancel()

    cancelled: list[object] = []

    with anyio.fail_after(3 * WAIT):  # the lifespan's shutdown included
        async with serving(app) as client:
            blocker = manager.schedule(hold)
            await blocker.started.wait()
            handles["queued"] = manager.schedule(queued)
            async with anyio.create_task_group() as group:
                group.start_soon(wait_for_the_queued_task)
                await anyio.wait_all_tasks_blocked()
                cancelled.append((await client.post("/cancel")).json())
                await waiter_woke.wait()
            release.set()
            await manager.join()

    assert cancelled == [True]
    assert handles["queued"].state is TaskState.CANCELLED
    assert ran == []
    assert blocker.state is TaskState.SUCCEEDED


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_r1_cancel_from_a_thread_under_asyncio_debug_mode(backend: str) -> None:
    """The same cross-thread cancel in a fresh process with ``PYTHONASYNCIODEBUG=1``.

    asyncio's debug mode flags calls made on a loop from a foreign thread; the
    scenario ends (exit code 0) and nothing is flagged.
    """
    completed = run_probe(
        "cancel-running-task-from-a-thread",
        backend,
        timeout=60,
        env={"PYTHONASYNCIODEBUG": "1"},
    )
    assert "Non-thread-safe operation" not in completed.stderr
    assert completed.returncode == 0, completed.stderr


# -- R16 ----------------------------------------------------------------------------


def sync_wrapper(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """A decorator whose wrapper is a plain ``def`` returning the coroutine (a logging one, say)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return func(*args, **kwargs)

    return wrapper


async def test_r16_timeout_covers_the_awaitable_a_sync_wrapper_returns() -> None:
    """``timeout`` applies to the whole work, including the awaitable a plain function returns.

    A ``functools.wraps`` sync decorator around an ``async def`` that would run for
    long: with ``timeout=0.05`` the task ends FAILED with a ``TimeoutError``.
    """
    app = FastAPI()
    manager = add_tasks(app)

    @sync_wrapper
    async def call_partner_api() -> str:
        await anyio.sleep_forever()  # meant to be timed out
        return "answer"  # pragma: no cover

    async with serving(app):
        task = manager.task(timeout=0.05).schedule(call_partner_api)
        with anyio.fail_after(WAIT):
            await task.wait()

    assert task.state is TaskState.FAILED
    assert isinstance(task.exception, TimeoutError)


async def test_r16_limiter_covers_the_awaitable_a_sync_wrapper_returns() -> None:
    """``limiter`` is held for the whole work, including the awaitable a plain function returns.

    Three sync-wrapped coroutines share ``CapacityLimiter(1)``: while one is inside
    its event-controlled section, the two others wait for the limiter; never are
    two inside at once.
    """
    app = FastAPI()
    manager = add_tasks(app)
    limiter = anyio.CapacityLimiter(1)
    inside = 0
    most_inside = 0
    entered = anyio.Event()
    release = anyio.Event()

    @sync_wrapper
    async def call_partner_api(number: int) -> int:
        nonlocal inside, most_inside
        inside += 1
        most_inside = max(most_inside, inside)
        entered.set()
        try:
            await release.wait()
        finally:
            inside -= 1
        return number

    async with serving(app):
        handles = [
            manager.task(limiter=limiter).schedule(call_partner_api, number) for number in range(3)
        ]
        with anyio.fail_after(WAIT):
            await entered.wait()
            # Until the two others either queue for the limiter or get in anyway.
            while inside < 2 and limiter.statistics().tasks_waiting < 2:
                await anyio.wait_all_tasks_blocked()
        waiting_while_one_was_inside = limiter.statistics().tasks_waiting
        release.set()
        await manager.join(WAIT)

    assert most_inside == 1
    assert waiting_while_one_was_inside == 2
    assert [task.result for task in handles] == [0, 1, 2]


async def test_r16_a_sync_on_error_handler_returning_a_coroutine_is_awaited() -> None:
    """A sync ``on_error`` handler that returns a coroutine has that coroutine awaited.

    The task counts as done only once it finished.
    """
    app = FastAPI()
    manager = add_tasks(app)
    handled: list[BaseException] = []
    error = ValueError("partner down")

    async def report(task: Task[Any], exc: BaseException) -> None:
        await anyio.lowlevel.checkpoint()
        handled.append(exc)

    def on_error(task: Task[Any], exc: BaseException) -> Awaitable[None]:
        return report(task, exc)

    async def fails() -> None:
        raise error

    async with serving(app):
        task = manager.task(on_error=on_error).schedule(fails)
        with anyio.fail_after(WAIT):
            await task.wait()
        handled_when_done = list(handled)

    assert task.state is TaskState.FAILED
    assert handled_when_done == [error]


async def test_r16_l1_a_sync_on_error_handlers_coroutine_runs_under_the_timeout() -> None:
    """The coroutine a sync ``on_error`` handler returns runs under the task's ``timeout``.

    It never finishes by itself; the task still ends FAILED with its own error.
    """
    app = FastAPI()
    manager = add_tasks(app)
    give_up = anyio.Event()

    async def report(task: Task[Any], exc: BaseException) -> None:
        await give_up.wait()  # never set while the checks pass: meant to be timed out

    def on_error(task: Task[Any], exc: BaseException) -> Awaitable[None]:
        return report(task, exc)

    async def fails() -> None:
        raise ValueError("partner down")

    async with serving(app):
        task = manager.task(timeout=0.1, on_error=on_error).schedule(fails)
        try:
            with anyio.fail_after(WAIT):
                await task.wait()
        finally:
            give_up.set()  # a handler that was not bounded must not hold the shutdown

    assert task.state is TaskState.FAILED
    assert isinstance(task.exception, ValueError)


# -- L1 -----------------------------------------------------------------------------


async def test_l1_on_error_of_shielded_work_runs_under_the_tasks_timeout() -> None:
    """Shielding protects the work, not its error handler: ``on_error`` runs under ``timeout``.

    A shielded task with ``timeout=0.1`` fails; its ``on_error`` never finishes by
    itself. The handler is cancelled at the timeout, the task ends FAILED, and
    shutdown completes.
    """
    app = FastAPI()
    manager = add_tasks(app)
    give_up = anyio.Event()
    handler_cancelled: list[bool] = []

    async def hang(task: Task[Any], exc: BaseException) -> None:
        try:
            await give_up.wait()  # never set while the checks pass: meant to be timed out
        except anyio.get_cancelled_exc_class():
            handler_cancelled.append(True)
            raise

    async def fails() -> None:
        raise ValueError("write failed")

    with anyio.fail_after(3 * WAIT):  # the lifespan's shutdown included
        async with serving(app):
            task = manager.task(shield=True, timeout=0.1, on_error=hang).schedule(fails)
            try:
                with anyio.fail_after(WAIT):
                    await task.wait()
            finally:
                give_up.set()  # a handler that was not bounded must not hold the shutdown

    assert task.state is TaskState.FAILED
    assert isinstance(task.exception, ValueError)
    assert handler_cancelled == [True]


async def test_l1_on_error_still_running_after_the_grace_period_is_cancelled() -> None:
    """At shutdown, an ``on_error`` handler still running after the grace period is cancelled.

    The work is shielded and has no timeout; its handler never finishes by itself.
    Shutdown (``shutdown_timeout=0.05``) cancels the handler and completes.
    """
    app = FastAPI()
    manager = add_tasks(app, shutdown_timeout=0.05)
    give_up = anyio.Event()
    handler_running = anyio.Event()
    lifespan_ended = anyio.Event()
    handler_cancelled: list[bool] = []
    handles: list[Task[None]] = []

    async def hang(task: Task[Any], exc: BaseException) -> None:
        handler_running.set()
        try:
            await give_up.wait()  # never set while the checks pass: meant to be cancelled
        except anyio.get_cancelled_exc_class():
            handler_cancelled.append(True)
            raise

    async def fails() -> None:
        raise ValueError("write failed")

    async def run_app() -> None:
        async with serving(app):
            handles.append(manager.task(shield=True, on_error=hang).schedule(fails))
            await handler_running.wait()
        lifespan_ended.set()

    async with anyio.create_task_group() as group:
        group.start_soon(run_app)
        try:
            with anyio.fail_after(WAIT):
                await lifespan_ended.wait()
        finally:
            give_up.set()  # a handler that was not cancelled must not hold the test forever

    assert handler_cancelled == [True]
    assert handles[0].done
    assert isinstance(handles[0].exception, ValueError)
    assert manager.tasks == []


# -- M2 -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_m2_an_abandoned_sync_thread_does_not_keep_the_process_alive(backend: str) -> None:
    """A sync function abandoned in its thread never keeps the process from exiting.

    In a fresh process, ``time.sleep(60)`` scheduled with ``timeout=0.2`` fails,
    the lifespan ends and ``main`` returns: the process exits with 0 within 20 s.
    """
    completed = run_probe("abandon-a-sync-thread", backend, timeout=20)
    assert completed.returncode == 0, completed.stderr


# -- M5 -----------------------------------------------------------------------------


class Payload:
    """An argument object the test can watch being freed."""


def schedule_payloads(manager: TaskManager, count: int) -> tuple[list[Task[None]], list[Any]]:
    async def work(payload: Payload) -> None:
        pass  # pragma: no cover - cancelled before it starts

    handles: list[Task[None]] = []
    refs: list[weakref.ref[Payload]] = []
    for _ in range(count):
        payload = Payload()
        refs.append(weakref.ref(payload))
        handles.append(manager.schedule(work, payload))
    return handles, refs


async def test_m5_work_cancelled_while_it_waits_for_a_slot_is_released_at_once() -> None:
    """Work cancelled while it waits for a ``max_concurrency`` slot is freed at once.

    A blocker holds the only slot; 1000 pending tasks are cancelled. Right after
    ``cancel()`` and ``gc.collect()``, with the blocker still running and the
    handles dropped, their argument objects are gone.
    """
    app = FastAPI()
    manager = add_tasks(app, max_concurrency=1)
    release = anyio.Event()

    async def hold() -> None:
        await release.wait()

    async with serving(app):
        blocker = manager.schedule(hold)
        with anyio.fail_after(WAIT):
            await blocker.started.wait()
        handles, refs = schedule_payloads(manager, 1000)
        cancelled = sum(handle.cancel() for handle in handles)
        handles.clear()
        gc.collect()
        alive = sum(ref() is not None for ref in refs)
        blocker_state = blocker.state
        release.set()
        await manager.join(WAIT)

    assert cancelled == 1000
    assert blocker_state is TaskState.RUNNING
    assert alive == 0
    assert manager.stats.cancelled == 1000


# -- L2 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"retry_delay": math.inf},
        {"retry_backoff": math.inf},
        {"retry_backoff": math.nan},
        {"timeout": math.nan},
    ],
    ids=["retry_delay=inf", "retry_backoff=inf", "retry_backoff=nan", "timeout=nan"],
)
def test_l2_non_finite_options_are_refused_when_the_config_is_built(
    options: TaskOptions,
) -> None:
    """Options must be finite: infinite or NaN retry settings and timeouts are a ``ValueError``."""
    with pytest.raises(ValueError, match=next(iter(options))):
        TaskConfig(**options)


class RetryWarnings(logging.Handler):
    """Notes the retry WARNING lines of ``fastapi_tasks``; an event per line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.logged: list[anyio.Event] = [anyio.Event() for _ in range(3)]

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING:
            self.messages.append(record.getMessage())
            if len(self.messages) <= len(self.logged):
                self.logged[len(self.messages) - 1].set()


@pytest.fixture
def retry_warnings() -> Iterator[RetryWarnings]:
    handler = RetryWarnings()
    logger = logging.getLogger("fastapi_tasks")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_l2_huge_backoff_is_accepted_and_its_waits_capped_at_an_hour(
    retry_warnings: RetryWarnings,
) -> None:
    """A backoff whose arithmetic overflows is accepted, its waits capped at 3600 s.

    ``TaskConfig(retry_backoff=1e200, retry_delay=1, retries=3)`` builds. A task
    that keeps failing with such a backoff announces a second wait of at most
    3600 s (read from its retry WARNING line, which names the wait in seconds).
    """
    config = TaskConfig(retry_backoff=1e200, retry_delay=1, retries=3)
    assert (config.retry_backoff, config.retry_delay, config.retries) == (1e200, 1, 3)
    app = FastAPI()
    manager = add_tasks(app)

    async def connect() -> None:
        raise ConnectionError("refused")

    async with serving(app):
        task = manager.task(retry_delay=0.01, retry_backoff=1e200, retries=3).schedule(connect)
        with anyio.fail_after(WAIT):
            await retry_warnings.logged[1].wait()
        task.cancel()

    second_wait = [
        float(seconds)
        for seconds in re.findall(r"(\d+(?:\.\d+)?(?:e\+?\d+)?) ?s\b", retry_warnings.messages[1])
    ]
    assert second_wait, retry_warnings.messages[1]
    assert max(second_wait) <= 3600, retry_warnings.messages[1]


@pytest.mark.parametrize("retries", [2, 3])
async def test_l2_overflowing_backoff_never_replaces_the_users_error(retries: int) -> None:
    """With ``retry_delay=0, retry_backoff=1e200``, the user's own error is the final one.

    The task fails with its ``ConnectionError`` after ``retries + 1`` attempts, never
    with an error of the library's backoff arithmetic.
    """
    app = FastAPI()
    manager = add_tasks(app)

    async def connect() -> None:
        raise ConnectionError("refused")

    async with serving(app):
        task = manager.task(retry_delay=0, retry_backoff=1e200, retries=retries).schedule(connect)
        with anyio.fail_after(WAIT):
            await task.wait()

    assert task.state is TaskState.FAILED
    assert isinstance(task.exception, ConnectionError)
    assert task.attempts == retries + 1


# -- L3 -----------------------------------------------------------------------------


def send_emails(count: int) -> Iterator[int]:
    yield from range(count)  # pragma: no cover - never runs


SCHEDULE_A_GENERATOR: dict[str, Callable[[TaskManager], object]] = {
    "generator function": lambda manager: manager.schedule(send_emails, 3),
    "partial of one": lambda manager: manager.schedule(functools.partial(send_emails, 3)),
}


@pytest.mark.parametrize("how", list(SCHEDULE_A_GENERATOR))
async def test_l3_a_sync_generator_function_is_refused_at_the_call(how: str) -> None:
    """A sync generator function as work is a ``TypeError`` at ``schedule()``: its body never runs.

    Likewise a ``functools.partial`` of one. Nothing is scheduled and the stats do
    not change.
    """
    app = FastAPI()
    manager = add_tasks(app)
    async with serving(app):
        before = manager.stats
        with pytest.raises(TypeError, match="generator"):
            SCHEDULE_A_GENERATOR[how](manager)
        after = manager.stats
        live = manager.tasks

    assert after == before
    assert live == []


# -- L4 -----------------------------------------------------------------------------


class Unprintable(Exception):
    """An exception whose ``repr()`` and ``str()`` raise."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")


async def test_l4_log_lines_survive_an_exception_that_cannot_be_printed(
    task_logs: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error whose ``repr()``/``str()`` raise still gets its retry and failure lines.

    With ``retries=1``, the WARNING retry line and the final ERROR line are
    formatted without a "--- Logging error ---", and the task ends FAILED with
    the user's exception.
    """
    app = FastAPI()
    manager = add_tasks(app)
    error = Unprintable()
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("fastapi_tasks")

    async def fails() -> None:
        raise error

    logger.addHandler(stream)
    try:
        async with serving(app):
            task = manager.task(retries=1, retry_delay=0).schedule(fails)
            with anyio.fail_after(WAIT):
                await task.wait()
    finally:
        logger.removeHandler(stream)

    assert "--- Logging error ---" not in capsys.readouterr().err
    assert task.state is TaskState.FAILED
    assert task.exception is error
    records = [
        r for r in task_logs.records if r.name == "fastapi_tasks" and r.levelno >= logging.WARNING
    ]
    assert [r.levelno for r in records] == [logging.WARNING, logging.ERROR]
    formatter = logging.Formatter()
    for record in records:
        assert record.getMessage()
        assert formatter.format(record)


# -- join from inside; join_blocking on the loop ------------------------------------


async def test_join_from_inside_one_of_the_managers_own_tasks_raises() -> None:
    """``await manager.join()`` inside one of the manager's own tasks raises at once.

    It would wait for itself. The error is a ``FastAPITasksError`` or a
    ``RuntimeError``; the task ends FAILED with it.
    """
    app = FastAPI()
    manager = add_tasks(app)

    async def joins_itself() -> None:
        await manager.join()

    async with serving(app):
        task = manager.schedule(joins_itself)
        with anyio.fail_after(WAIT):
            await task.wait()

    assert task.state is TaskState.FAILED
    assert isinstance(task.exception, (FastAPITasksError, RuntimeError))


async def test_join_blocking_from_inside_one_of_the_managers_sync_tasks_raises() -> None:
    """``manager.join_blocking()`` in one of its own sync tasks raises at once.

    The error is a ``FastAPITasksError`` or a ``RuntimeError``; the task ends FAILED
    with it. (The call is given a timeout only so a library that waits for itself
    leaves no thread behind for long.)
    """
    app = FastAPI()
    manager = add_tasks(app)

    def joins_itself() -> None:
        manager.join_blocking(3 * WAIT)

    async with serving(app):
        task = manager.schedule(joins_itself)
        with anyio.fail_after(WAIT):
            await task.wait()

    assert task.state is TaskState.FAILED
    assert isinstance(task.exception, (FastAPITasksError, RuntimeError))


async def test_join_blocking_on_the_event_loop_thread_always_raises() -> None:
    """``join_blocking()`` on the event loop's thread raises ``RuntimeError``, even with no work."""
    app = FastAPI()
    manager = add_tasks(app)
    async with serving(app):
        assert manager.tasks == []
        with pytest.raises(RuntimeError):
            manager.join_blocking()


# -- R8 / H1, in process (last: see the module docstring) ---------------------------


class Abort(BaseException):
    """A ``BaseException`` of the user's own (as pytest's ``Failed`` or gevent's ``Timeout``)."""


def base_exception_group() -> BaseException:
    group_type: Any = getattr(builtins, "BaseExceptionGroup", None)
    if group_type is None:  # Python 3.10: anyio's dependency backports it
        group_type = importlib.import_module("exceptiongroup").BaseExceptionGroup
    return cast("BaseException", group_type("x", [KeyboardInterrupt()]))


BASE_EXCEPTIONS: dict[str, Callable[[], BaseException]] = {
    "Abort(BaseException)": lambda: Abort("stop"),
    "SystemExit(3)": lambda: SystemExit(3),
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "BaseExceptionGroup": base_exception_group,
}

CASES = [
    *(("async def", name) for name in BASE_EXCEPTIONS),
    *(("def", name) for name in [*BASE_EXCEPTIONS, "sys.exit(3)"]),
]


@pytest.mark.parametrize(("kind", "raises"), CASES)
async def test_r8_h1_a_base_exception_from_work_is_a_failure(
    kind: str, raises: str, task_logs: pytest.LogCaptureFixture
) -> None:
    """Any ``BaseException`` from work that is not our cancellation is a failure, nothing more.

    From an ``async def`` or a ``def`` task: the task ends FAILED with that
    exception, one ERROR line is logged, ``on_error`` is called once,
    ``stats.failed`` counts it, a task running beside it succeeds, and the
    lifespan shuts down cleanly.
    """
    app = FastAPI()
    manager = add_tasks(app)
    raised: list[BaseException] = []
    handled: list[BaseException] = []
    may_finish = anyio.Event()

    def raise_it() -> None:
        if raises == "sys.exit(3)":
            try:
                sys.exit(3)
            except SystemExit as exc:
                raised.append(exc)
                raise
        raised.append(BASE_EXCEPTIONS[raises]())
        raise raised[0]

    async def async_work() -> None:
        await anyio.lowlevel.checkpoint()
        raise_it()

    def sync_work() -> None:
        raise_it()

    async def on_error(task: Task[Any], exc: BaseException) -> None:
        handled.append(exc)

    async def bystander_work() -> str:
        await may_finish.wait()
        return "unaffected"

    with anyio.fail_after(3 * WAIT):  # the lifespan's shutdown included
        async with serving(app):
            bystander = manager.schedule(bystander_work)
            failing = manager.task(on_error=on_error)
            if kind == "def":
                broken: Task[None] = failing.schedule(sync_work)
            else:
                broken = failing.schedule(async_work)
            await broken.wait()
            may_finish.set()
            await manager.join()

    assert broken.state is TaskState.FAILED
    assert broken.exception is raised[0]
    assert handled == raised
    errors = [
        r for r in task_logs.records if r.name == "fastapi_tasks" and r.levelno == logging.ERROR
    ]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[1] is raised[0]
    assert manager.stats.failed == 1
    assert bystander.state is TaskState.SUCCEEDED
    assert bystander.result == "unaffected"


async def test_r8_h1_an_on_error_handler_raising_keyboard_interrupt_is_only_logged(
    task_logs: pytest.LogCaptureFixture,
) -> None:
    """An ``on_error`` handler that raises ``KeyboardInterrupt`` changes nothing but a log line.

    The task ends FAILED with its own error, the interrupt is logged, a task
    running beside it succeeds, and the lifespan shuts down cleanly.
    """
    app = FastAPI()
    manager = add_tasks(app)
    interrupt = KeyboardInterrupt()
    may_finish = anyio.Event()

    async def on_error(task: Task[Any], exc: BaseException) -> None:
        raise interrupt

    async def fails() -> None:
        raise ValueError("write failed")

    async def bystander_work() -> str:
        await may_finish.wait()
        return "unaffected"

    with anyio.fail_after(3 * WAIT):  # the lifespan's shutdown included
        async with serving(app):
            bystander = manager.schedule(bystander_work)
            broken = manager.task(on_error=on_error).schedule(fails)
            await broken.wait()
            may_finish.set()
            await manager.join()

    assert broken.state is TaskState.FAILED
    assert isinstance(broken.exception, ValueError)
    logged = [r for r in task_logs.records if r.exc_info is not None and r.exc_info[1] is interrupt]
    assert len(logged) == 1
    assert manager.stats.failed == 1
    assert bystander.state is TaskState.SUCCEEDED
