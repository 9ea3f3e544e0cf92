"""Faults that need no server, on asyncio and trio: bounds that must hold and log lines
that must stay readable."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from fastapi import FastAPI

from fastapi_tasks import Task, TaskConfig, Tasks, TaskState, add_tasks

from .inprocess import lifespan, request

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]


class BadRepr(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("repr() of this exception fails")

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


async def fail_with(exc: BaseException) -> None:
    raise exc


class Lines(logging.Handler):
    """Formats every record, as a deployment's handler would, and keeps what failed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []
        self.errors: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append((record.levelno, self.format(record)))
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.errors.append(record)


@pytest.fixture
def lines() -> Iterator[Lines]:
    """The library's log records, formatted as a deployment's handler would (pytest's own
    capture raises on a record it cannot format: that would fail the test too)."""
    logger = logging.getLogger("fastapi_tasks")
    handler = Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_retry_line_of_an_exception_whose_repr_raises(lines: Lines) -> None:
    app = FastAPI()
    manager = add_tasks(app)
    async with lifespan(app):
        task = manager.task(retries=1, retry_delay=0).schedule(fail_with, BadRepr())
        await manager.join(10)
    assert task.state is TaskState.FAILED
    assert isinstance(task.exception, BadRepr)
    assert lines.errors == []
    assert [level for level, _ in lines.lines].count(logging.WARNING) == 1  # the retry
    assert logging.ERROR in [level for level, _ in lines.lines]  # the final failure


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"retry_delay": math.inf}),
        pytest.param({"retry_backoff": math.inf}),
        {"retry_delay": math.nan},
        {"retry_backoff": math.nan},
    ],
    ids=["delay-inf", "backoff-inf", "delay-nan", "backoff-nan"],
)
def test_non_finite_retry_settings_are_refused(options: dict[str, Any]) -> None:
    """SPEC section 10: infinite or NaN retry settings raise when the config is built."""
    with pytest.raises(ValueError, match="retry_"):
        TaskConfig(retries=1, **options)


async def test_shielded_work_whose_error_handler_hangs_does_not_hold_shutdown() -> None:
    """SPEC section 6: shielding protects the work, not its ``on_error`` handler, which
    runs under the task's timeout and is cancelled after the grace period."""
    release = anyio.Event()
    handler_began = anyio.Event()
    ended = anyio.Event()
    failed: list[Task[None]] = []

    async def hang(task: Task[Any], exc: BaseException) -> None:
        handler_began.set()
        with anyio.move_on_after(60):  # released by the test once it has its answer
            await release.wait()

    app = FastAPI()
    manager = add_tasks(app)

    async def serve_app() -> None:
        async with lifespan(app):
            scheduler = manager.task(shield=True, timeout=0.2, on_error=hang)
            failed.append(scheduler.schedule(fail_with, ValueError("then the handler hangs")))
            with anyio.fail_after(10):
                await handler_began.wait()
        ended.set()

    in_time = False
    async with anyio.create_task_group() as group:
        group.start_soon(serve_app)
        with anyio.move_on_after(2):  # the task's timeout is 0.2 s
            await ended.wait()
        in_time = ended.is_set()
        release.set()
    assert in_time, "shutdown waited for the handler"
    assert failed[0].state is TaskState.FAILED


@pytest.mark.parametrize(
    "anyio_backend",
    [
        "asyncio",
        "trio",
    ],
)
async def test_running_work_cancelled_from_a_worker_thread(anyio_backend: str) -> None:
    """SPEC section 7: ``Task.cancel()`` may be called from any thread."""
    began = threading.Event()
    release = anyio.Event()
    handles: list[Task[None]] = []

    async def long_work() -> None:
        began.set()
        with anyio.move_on_after(60):  # cancelled, else released once the test failed
            await release.wait()

    app = FastAPI()
    manager = add_tasks(app)

    @app.get("/")
    def endpoint(tasks: Tasks) -> None:
        handle = tasks.schedule(long_work)
        handles.append(handle)
        assert began.wait(10)
        assert handle.cancel()

    async with lifespan(app) as state:
        try:
            assert await request(app, state, "/") == 200
            await manager.join(5)
        finally:
            release.set()
    assert handles[0].state is TaskState.CANCELLED
