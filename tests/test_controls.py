"""SPEC section 3: timeout, retries with backoff, retry_on, limiter."""

from __future__ import annotations

import logging
import re
import threading
import time

import anyio
import pytest
from fastapi import FastAPI

from fastapi_tasks import Task, TaskConfig, TaskManager, TaskState, add_tasks

from .conftest import serving

pytestmark = pytest.mark.anyio


async def test_timeout_fails_the_attempt_with_timeout_error(
    app: FastAPI, manager: TaskManager
) -> None:
    failures: list[BaseException] = []

    async def on_error(task: Task[object], exc: BaseException) -> None:
        failures.append(exc)

    async with serving(app):
        task = manager.task(timeout=0.01, on_error=on_error).schedule(anyio.sleep_forever)
        await manager.join(5)
    assert task.state is TaskState.FAILED
    assert isinstance(task.exception, TimeoutError)
    assert len(failures) == 1


async def test_timeout_on_sync_work_reports_at_the_deadline(
    app: FastAPI, manager: TaskManager
) -> None:
    leave = threading.Event()

    def blocking() -> str:
        leave.wait(5)
        return "late result"

    async with serving(app):
        task = manager.task(timeout=0.01).schedule(blocking)
        await task.wait()
        assert task.state is TaskState.FAILED
        assert isinstance(task.exception, TimeoutError)
        leave.set()
    assert task.result is None  # the thread's late result is dropped


async def test_retries_then_success_and_warning_logs(
    app: FastAPI, manager: TaskManager, task_logs: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    async def flaky() -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "done"

    async with serving(app):
        task = manager.task(retries=3, retry_delay=0).schedule(flaky)
        await manager.join(5)
    assert task.state is TaskState.SUCCEEDED
    assert task.result == "done"
    assert task.attempts == 3
    assert manager.stats.retries == 2
    warnings = [r for r in task_logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].__dict__["task_attempt"] == 1


async def test_retries_exhausted_calls_on_error_once(app: FastAPI, manager: TaskManager) -> None:
    calls: list[int] = []

    def on_error(task: Task[object], exc: BaseException) -> None:
        calls.append(task.attempts)

    async def always() -> None:
        raise ConnectionError("down")

    async with serving(app):
        task = manager.task(retries=2, retry_delay=0, on_error=on_error).schedule(always)
        await manager.join(5)
    assert task.attempts == 3
    assert calls == [3]


async def test_exceptions_outside_retry_on_fail_at_once(app: FastAPI, manager: TaskManager) -> None:
    async def wrong() -> None:
        raise KeyError("not retryable")

    async with serving(app):
        retrying = manager.task(retries=5, retry_delay=0, retry_on=(ConnectionError,))
        task = retrying.schedule(wrong)
        await manager.join(5)
    assert task.attempts == 1
    assert task.state is TaskState.FAILED


async def test_backoff_grows_by_the_factor_with_jitter(
    app: FastAPI, manager: TaskManager, task_logs: pytest.LogCaptureFixture
) -> None:
    async def flaky() -> None:
        raise ConnectionError("down")

    async with serving(app):
        retried = manager.task(retries=3, retry_delay=0.01, retry_backoff=2.0).schedule(flaky)
        await manager.join(5)
    assert retried.state is TaskState.FAILED
    waits = [
        float(found.group(1))
        for record in task_logs.records
        if (found := re.search(r"retrying in ([0-9.]+)s", record.getMessage()))
    ]
    assert len(waits) == 3
    for wait, base in zip(waits, (0.01, 0.02, 0.04), strict=True):
        assert 0.8 * base <= wait <= 1.2 * base


def test_retry_waits_are_capped_and_never_overflow() -> None:
    config = TaskConfig(retries=5, retry_delay=1.0, retry_backoff=1e200)
    assert config.retry_backoff == 1e200  # finite: accepted, and capped when it grows
    with pytest.raises(ValueError, match="finite"):
        TaskConfig(retry_backoff=float("inf"))


async def test_limiter_caps_one_kind_of_work(app: FastAPI, manager: TaskManager) -> None:
    limiter = anyio.CapacityLimiter(1)
    gates = [anyio.Event(), anyio.Event()]
    entered: list[int] = []

    async def emails(n: int) -> None:
        entered.append(n)
        await gates[n].wait()

    async with serving(app):
        for n in range(2):
            manager.task(limiter=limiter).schedule(emails, n)
        await anyio.wait_all_tasks_blocked()
        assert entered == [0]
        gates[0].set()
        gates[1].set()
        await manager.join(5)
    assert entered == [0, 1]


class Overlap:
    """Counts how many calls of a sync function run at the same time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.calls = 0

    def slow(self) -> None:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)
        time.sleep(0.05)  # the body of work that is meant to time out
        with self.lock:
            self.now -= 1


async def test_timed_out_sync_attempts_never_overlap_their_retry(
    app: FastAPI, manager: TaskManager
) -> None:
    overlap = Overlap()
    async with serving(app):
        task = manager.task(timeout=0.01, retries=2, retry_delay=0).schedule(overlap.slow)
        await manager.join(5)
    assert task.state is TaskState.FAILED
    assert task.attempts == 3
    assert overlap.calls == 3
    assert overlap.peak == 1


async def test_a_sync_attempt_keeps_its_limiter_until_its_thread_returns(
    app: FastAPI, manager: TaskManager
) -> None:
    overlap = Overlap()
    limiter = anyio.CapacityLimiter(1)
    async with serving(app):
        for _ in range(3):
            manager.task(timeout=0.01, limiter=limiter).schedule(overlap.slow)
        await manager.join(5)
    assert overlap.calls == 3
    assert overlap.peak == 1
    assert manager.stats.failed == 3


async def test_waiting_for_a_thread_does_not_count_toward_the_timeout() -> None:
    app = FastAPI()
    manager = add_tasks(app, max_threads=1)
    overlap = Overlap()
    async with serving(app):
        first = manager.task(timeout=0.01).schedule(overlap.slow)
        second = manager.task(timeout=1).schedule(overlap.slow)
        await manager.join(5)
    assert first.state is TaskState.FAILED  # its thread kept running past the deadline...
    assert second.state is TaskState.SUCCEEDED  # ...and the second waited for it, untimed
    assert overlap.peak == 1


async def test_sync_work_still_queued_for_a_thread_never_runs_after_shutdown() -> None:
    app = FastAPI()
    manager = add_tasks(app, max_threads=1)
    entered = threading.Event()
    leave = threading.Event()
    ran: list[str] = []

    def blocking() -> None:
        entered.set()
        leave.wait(5)

    def queued() -> None:
        ran.append("queued")  # pragma: no cover - must never run

    async with serving(app):
        manager.schedule(blocking)
        await anyio.to_thread.run_sync(entered.wait, 5)
        waiting = manager.schedule(queued)
        await anyio.wait_all_tasks_blocked()
    leave.set()
    assert waiting.state is TaskState.CANCELLED
    assert ran == []
