"""The app the reliability tests serve, built twice: on fastapi-tasks and on ``BackgroundTasks``.

``tasks_app`` and ``background_app`` have the same load endpoints, scheduling the same
functions: ``GET /load`` (``async def``) and ``GET /load-sync`` (``def``, so it schedules
from a worker thread) each schedule three pieces of work, one per mode on fastapi-tasks
(some sync, some with options), three ``add_task`` calls on ``BackgroundTasks``.
``GET /stats?join=SECONDS`` waits until the work is done, then reports what ran. Only
``tasks_app`` has the shutdown and fault endpoints.

Servers import it as ``tests.reliability.app:tasks_app``; environment variables set by
``servers.py`` configure it:

- ``RELIABILITY_SERVER=1``: log ``fastapi_tasks`` at INFO to stderr, as a deployment would.
- ``RELIABILITY_SHUTDOWN_TIMEOUT``: the manager's ``shutdown_timeout`` (default 0).
- ``RELIABILITY_EVENTS``: a file where ``GET /work`` tasks append one line per event
  (``S`` scheduled, ``B`` began, ``E`` ended, ``C`` cancelled), and the app's own
  lifespan appends the final stats once the manager has drained.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import import_module
from typing import Annotated, Any

import anyio
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

from fastapi_tasks import Task, TaskErrorHandler, TaskManager, Tasks, add_tasks, get_task_manager

from .harness import SIZES, percentile

SHUTDOWN_TIMEOUT = float(os.environ.get("RELIABILITY_SHUTDOWN_TIMEOUT", "0"))
BLOCK_SECONDS = 60.0
"""How long work that "blocks forever" blocks: longer than any test waits for it."""
FOREVER = 600.0
"""How long work that "never ends" sleeps: it is meant to be cancelled."""


# -- bookkeeping -------------------------------------------------------------------


class Ledger:
    """What one app's work did, counted by the work itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.scheduled = 0
        self.runs: Counter[str] = Counter()
        self.handled: Counter[str] = Counter()
        self.delays: list[float] = []
        self.settled = 0
        self._settled_event: anyio.Event | None = None

    def next_request(self, scheduling: int) -> int:
        with self._lock:
            number = self.requests
            self.requests += 1
            self.scheduled += scheduling
            return number

    def run(self, label: str) -> None:
        with self._lock:
            self.runs[label] += 1

    def handle(self, label: str) -> None:
        with self._lock:
            self.handled[label] += 1

    async def settle(self) -> None:
        """The last background function of a ``BackgroundTasks`` request: its work is done."""
        self.settled += 1
        if self._settled_event is not None and self.settled == self.requests:
            self._settled_event.set()

    async def wait_settled(self, seconds: float) -> None:
        with anyio.fail_after(seconds):
            while self.settled < self.requests:
                event = self._settled_event = anyio.Event()
                await event.wait()

    def report(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "scheduled": self.scheduled,
            "runs": dict(self.runs),
            "recorded": sum(self.runs.values()),
            "handled": dict(self.handled),
            "delay": {
                "count": len(self.delays),
                "p50": percentile(self.delays, 0.50),
                "p99": percentile(self.delays, 0.99),
                "max": max(self.delays, default=0.0),
            },
        }


def stats_of(manager: TaskManager) -> dict[str, int]:
    """The manager's counters, read by name (public ``TaskStats`` fields, SPEC section 7)."""
    stats = manager.stats
    names = ("scheduled", "pending", "running", "succeeded", "failed", "cancelled", "discarded")
    return {name: int(getattr(stats, name)) for name in names}


# -- load work ------------------------------------------------------------------------


async def first_work(ledger: Ledger, scheduled_at: float) -> None:
    ledger.delays.append(time.perf_counter() - scheduled_at)
    ledger.run("immediate")


async def async_work(ledger: Ledger, label: str, pause: float) -> None:
    if pause:
        await anyio.sleep(pause)
    ledger.run(label)


def sync_work(ledger: Ledger, label: str) -> None:
    ledger.run(label)


def pause_of(number: int) -> float:
    """A third of the work waits 2 ms; the rest returns at once."""
    return 0.002 if number % 3 == 0 else 0.0


# -- the fastapi-tasks app ------------------------------------------------------------

LEDGER = Ledger()
_events_fd = -1
_entered: anyio.Event | None = None
RELEASE = threading.Event()
"""Set by ``GET /fault/release``: lets work blocked in a thread return."""


def event(line: str) -> None:
    """Append one line to the events file (``O_APPEND``: whole lines, from any thread)."""
    if _events_fd >= 0:
        os.write(_events_fd, (line + "\n").encode())


@asynccontextmanager
async def tasks_lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
    global _entered
    _entered = anyio.Event()
    yield
    # The manager drained before the app's own shutdown code runs (SPEC section 7).
    event("STATS " + json.dumps(stats_of(get_task_manager(app))))


tasks_app = FastAPI(lifespan=tasks_lifespan)
manager = add_tasks(tasks_app, shutdown_timeout=SHUTDOWN_TIMEOUT)
limiter = anyio.CapacityLimiter(50)


def schedule_load(tasks: Tasks, number: int) -> None:
    tasks.schedule(first_work, LEDGER, time.perf_counter())
    if number % 4 == 0:
        tasks.after_route.schedule(sync_work, LEDGER, "after_route")
    else:
        tasks.after_route.schedule(async_work, LEDGER, "after_route", pause_of(number))
    batch = tasks.after_response
    if number % 5 == 0:
        options = batch.task(name="load-with-options", timeout=30, retries=1, limiter=limiter)
        options.schedule(async_work, LEDGER, "after_response", pause_of(number + 1))
    else:
        batch.schedule(async_work, LEDGER, "after_response", pause_of(number + 1))


@tasks_app.get("/load")
async def load(tasks: Tasks) -> dict[str, int]:
    number = LEDGER.next_request(3)
    schedule_load(tasks, number)
    return {"n": number}


@tasks_app.get("/load-sync")
def load_sync(tasks: Tasks) -> dict[str, int]:
    number = LEDGER.next_request(3)
    schedule_load(tasks, number)
    return {"n": number}


@tasks_app.get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}


@tasks_app.get("/stats")
async def stats(join: float = 0.0) -> dict[str, Any]:
    if join:
        await manager.join(join)
    return {"stats": stats_of(manager), **LEDGER.report()}


# -- shutdown under load: GET /work -----------------------------------------------------


async def timed_work(key: int, seconds: float) -> None:
    event(f"B {key}")
    try:
        await anyio.sleep(seconds)  # the work itself: cancelled at shutdown unless shielded
    except anyio.get_cancelled_exc_class():
        event(f"C {key}")
        raise
    event(f"E {key}")


@tasks_app.get("/work")
async def work(tasks: Tasks) -> dict[str, int]:
    number = LEDGER.next_request(3)
    for index, scheduler in enumerate((tasks, tasks.after_route, tasks.after_response)):
        key = 3 * number + index
        shielded = key % 4 == 0
        seconds = 0.1 + (key * 7 % 20) / 10  # 0.1 to 2.0 s: longer than the grace period
        event(f"S {key} {int(shielded)}")
        (scheduler.task(shield=True) if shielded else scheduler).schedule(timed_work, key, seconds)
    return {"n": number}


WORK_LONGEST = 2.0
"""The longest ``GET /work`` task, in seconds."""


# -- faults -------------------------------------------------------------------------------


class BadRepr(Exception):
    """An exception whose ``repr()`` and ``str()`` raise."""

    def __repr__(self) -> str:
        raise RuntimeError("repr() of this exception fails")

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


class CustomBase(BaseException):
    """A ``BaseException`` that is not an ``Exception``."""


async def fail_with(exc: BaseException) -> None:
    raise exc


def fail_with_sync(exc: BaseException) -> None:
    raise exc


def exit_sync() -> None:
    sys.exit(3)


async def stop_iteration() -> None:
    raise StopIteration  # a coroutine turns it into RuntimeError


def recurse(depth: int) -> int:
    return recurse(depth + 1) + 1


async def recursion() -> None:
    recurse(0)


async def succeed(label: str) -> None:
    LEDGER.run(label)


def succeed_sync(label: str) -> None:
    LEDGER.run(label)


async def handler_raises(task: Task[Any], exc: BaseException) -> None:
    LEDGER.handle("handler")
    raise ValueError("the on_error handler fails too")


def handler_raises_sync(task: Task[Any], exc: BaseException) -> None:
    LEDGER.handle("handler")
    raise ValueError("the sync on_error handler fails too")


def handler_raising(exc: BaseException) -> TaskErrorHandler:
    async def handler(task: Task[Any], error: BaseException) -> None:
        LEDGER.handle("handler")
        raise exc

    return handler


async def handler_hangs(task: Task[Any], exc: BaseException) -> None:
    LEDGER.handle("handler")
    await anyio.sleep(FOREVER)  # meant to be cut: by the task's timeout or at shutdown


async def cancel_self(holder: list[Task[None]]) -> None:
    holder[0].cancel()
    await anyio.sleep(FOREVER)  # the cancel lands here


async def join_self() -> None:
    await get_task_manager().join(timeout=0.5)


async def join_self_forever() -> None:
    await get_task_manager().join()


def join_blocking_self() -> None:
    get_task_manager().join_blocking(timeout=0.5)


async def fan_out(count: int) -> None:
    scheduler = get_task_manager()
    for _ in range(count):
        scheduler.schedule(succeed, "fan-out")
    LEDGER.run("fan-out")


def fan_out_sync(count: int) -> None:
    scheduler = get_task_manager()
    for _ in range(count):
        scheduler.schedule(succeed_sync, "fan-out")
    LEDGER.run("fan-out")


def block_in_thread() -> None:
    RELEASE.wait(BLOCK_SECONDS)


async def sleep_forever() -> None:
    await anyio.sleep(FOREVER)  # never ends by itself: cancelled at shutdown


@dataclass(frozen=True)
class Outcome:
    """Final states a fault leads to, and ``on_error`` calls."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    discarded: int = 0
    handled: int = 0


@dataclass(frozen=True)
class Fault:
    """One fault: the request that triggers it and what must follow."""

    path: str
    tasks: int
    """Tasks the request schedules; each must end in exactly one final state."""
    outcome: Outcome | None
    """The exact final states; ``None`` where the split depends on the server."""
    client: str = "get"
    """How the client behaves: ``get`` (a plain request), ``disconnect-request`` (resets
    the connection while the endpoint runs) or ``disconnect-stream`` (resets it after
    the first chunks of a streamed response)."""


def exception_group(message: str, errors: list[BaseException]) -> BaseException:
    """``BaseExceptionGroup(message, errors)``, an ``ExceptionGroup`` when every error is an
    ``Exception``: built in from Python 3.11, anyio's ``exceptiongroup`` dependency on 3.10."""
    module: Any = import_module("builtins" if sys.version_info >= (3, 11) else "exceptiongroup")
    group: BaseException = module.BaseExceptionGroup(message, errors)
    return group


def schedule_failing(tasks: Tasks, exc: BaseException, *, sync: bool = False) -> None:
    if sync:
        tasks.schedule(fail_with_sync, exc)
    else:
        tasks.schedule(fail_with, exc)


FAN_OUT = SIZES.fanout
FAN_OUT_SYNC = 2000

# name -> what the request schedules; the expected outcome is in FAULTS below.
TASK_FAULTS: dict[str, Callable[[Tasks], object]] = {
    "exception-each-mode": lambda tasks: (
        tasks.schedule(fail_with, ValueError("immediate")),
        tasks.after_route.schedule(fail_with, ValueError("after route")),
        tasks.after_response.schedule(fail_with, ValueError("after response")),
    ),
    "exception-sync": lambda tasks: schedule_failing(tasks, LookupError("sync"), sync=True),
    "exception-group": lambda tasks: schedule_failing(
        tasks, exception_group("two", [ValueError(1), KeyError(2)])
    ),
    "stop-iteration": lambda tasks: tasks.schedule(stop_iteration),
    "memory-error": lambda tasks: schedule_failing(tasks, MemoryError()),
    "recursion-error": lambda tasks: tasks.schedule(recursion),
    "bad-repr": lambda tasks: schedule_failing(tasks, BadRepr()),
    "bad-repr-sync": lambda tasks: schedule_failing(tasks, BadRepr(), sync=True),
    "handler-raises": lambda tasks: (
        tasks.task(on_error=handler_raises).schedule(fail_with, ValueError("a")),
        tasks.task(on_error=handler_raises_sync).schedule(fail_with, ValueError("b")),
    ),
    "self-cancel": lambda tasks: _self_cancel(tasks),
    "cancel-pending": lambda tasks: (
        tasks.after_response.schedule(succeed, "never").cancel(),
        tasks.after_route.schedule(succeed, "never").cancel(),
    ),
    "join-self": lambda tasks: tasks.schedule(join_self),
    "join-blocking-self": lambda tasks: tasks.schedule(join_blocking_self),
    "fan-out": lambda tasks: tasks.schedule(fan_out, FAN_OUT),
    "fan-out-sync": lambda tasks: tasks.schedule(fan_out_sync, FAN_OUT_SYNC),
    "thread-timeout": lambda tasks: tasks.task(timeout=0.3).schedule(block_in_thread),
    # Faults that stop a uvicorn or hypercorn-trio server on 0.2.0 (H1).
    "system-exit": lambda tasks: schedule_failing(tasks, SystemExit(3)),
    "keyboard-interrupt": lambda tasks: schedule_failing(tasks, KeyboardInterrupt()),
    "system-exit-sync": lambda tasks: tasks.schedule(exit_sync),
    "keyboard-interrupt-sync": lambda tasks: schedule_failing(
        tasks, KeyboardInterrupt(), sync=True
    ),
    "handler-keyboard-interrupt": lambda tasks: tasks.task(
        on_error=handler_raising(KeyboardInterrupt())
    ).schedule(fail_with, ValueError("c")),
    # BaseExceptions counted as cancelled on asyncio, fatal on trio, in 0.2.0 (M3).
    "generator-exit": lambda tasks: schedule_failing(tasks, GeneratorExit()),
    "custom-base-exception": lambda tasks: schedule_failing(tasks, CustomBase("custom")),
    "base-exception-group": lambda tasks: schedule_failing(
        tasks, exception_group("base", [KeyboardInterrupt()])
    ),
    "custom-base-exception-sync": lambda tasks: schedule_failing(
        tasks, CustomBase("custom"), sync=True
    ),
    "handler-custom-base-exception": lambda tasks: tasks.task(
        on_error=handler_raising(CustomBase("handler"))
    ).schedule(fail_with, ValueError("d")),
}


def _self_cancel(tasks: Tasks) -> None:
    holder: list[Task[None]] = []
    holder.append(tasks.schedule(cancel_self, holder))


@tasks_app.get("/fault/task/{name}")
async def task_fault(name: str, tasks: Tasks) -> dict[str, str]:
    TASK_FAULTS[name](tasks)
    return {"scheduled": name}


def schedule_five(tasks: Tasks) -> None:
    """Work of every mode, two of it with ``run_on_failure``: 3 run and 2 are discarded if
    the request fails."""
    tasks.schedule(succeed, "immediate")
    tasks.after_route.schedule(succeed, "after_route")
    tasks.after_response.schedule(succeed, "after_response")
    tasks.after_route.task(run_on_failure=True).schedule(succeed, "after_route")
    tasks.after_response.task(run_on_failure=True).schedule(succeed, "after_response")


@tasks_app.get("/fault/endpoint-raises")
async def endpoint_raises(tasks: Tasks) -> None:
    schedule_five(tasks)
    raise RuntimeError("the endpoint fails")


@tasks_app.get("/fault/endpoint-http-exception")
async def endpoint_http_exception(tasks: Tasks) -> None:
    schedule_five(tasks)
    raise HTTPException(404, "nothing here")


@tasks_app.get("/fault/endpoint-raises-sync")
def endpoint_raises_sync(tasks: Tasks) -> None:
    schedule_five(tasks)
    raise RuntimeError("the def endpoint fails")


def teardown_raises() -> Iterator[None]:
    yield
    raise RuntimeError("the dependency's teardown fails")


@tasks_app.get("/fault/teardown-raises")
async def function_teardown_raises(
    tasks: Tasks, _: Annotated[None, Depends(teardown_raises, scope="function")]
) -> dict[str, bool]:
    schedule_five(tasks)
    return {"ok": True}


@tasks_app.get("/fault/teardown-raises-late")
async def request_teardown_raises(
    tasks: Tasks, _: Annotated[None, Depends(teardown_raises, scope="request")]
) -> dict[str, bool]:
    schedule_five(tasks)
    return {"ok": True}


@tasks_app.get("/fault/disconnect-request")
async def disconnect_request(tasks: Tasks, request: Request) -> dict[str, bool]:
    tasks.schedule(succeed, "immediate")
    tasks.after_route.schedule(succeed, "after_route")
    tasks.after_response.schedule(succeed, "after_response")
    assert _entered is not None
    _entered.set()
    with anyio.fail_after(30):
        while (await request.receive())["type"] != "http.disconnect":
            pass
    return {"ok": True}  # to a client that is gone


@tasks_app.get("/fault/entered")
async def entered() -> dict[str, bool]:
    """Answers once a ``/fault/disconnect-request`` endpoint has scheduled its work."""
    global _entered
    assert _entered is not None
    with anyio.fail_after(10):
        await _entered.wait()
    _entered = anyio.Event()
    return {"ok": True}


STREAM_CHUNK = b"x" * 1024


@tasks_app.get("/fault/disconnect-stream")
async def disconnect_stream(tasks: Tasks) -> StreamingResponse:
    tasks.schedule(succeed, "immediate")
    tasks.after_route.schedule(succeed, "after_route")
    tasks.after_response.schedule(succeed, "after_response")
    tasks.after_response.task(run_on_failure=True).schedule(succeed, "after_response")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield STREAM_CHUNK
        # The client resets the connection now; Starlette stops the stream when it hears.
        with anyio.fail_after(30):
            await anyio.Event().wait()
        yield STREAM_CHUNK  # pragma: no cover - never reached

    return StreamingResponse(chunks(), media_type="application/octet-stream")


@tasks_app.get("/fault/release")
async def release() -> dict[str, bool]:
    RELEASE.set()
    return {"ok": True}


_ENDPOINT_FAILURE = Outcome(succeeded=3, discarded=2)

FAULTS: dict[str, Fault] = {
    "exception-each-mode": Fault("/fault/task/exception-each-mode", 3, Outcome(failed=3)),
    "exception-sync": Fault("/fault/task/exception-sync", 1, Outcome(failed=1)),
    "exception-group": Fault("/fault/task/exception-group", 1, Outcome(failed=1)),
    "stop-iteration": Fault("/fault/task/stop-iteration", 1, Outcome(failed=1)),
    "memory-error": Fault("/fault/task/memory-error", 1, Outcome(failed=1)),
    "recursion-error": Fault("/fault/task/recursion-error", 1, Outcome(failed=1)),
    "bad-repr": Fault("/fault/task/bad-repr", 1, Outcome(failed=1)),
    "bad-repr-sync": Fault("/fault/task/bad-repr-sync", 1, Outcome(failed=1)),
    "handler-raises": Fault("/fault/task/handler-raises", 2, Outcome(failed=2, handled=2)),
    "self-cancel": Fault("/fault/task/self-cancel", 1, Outcome(cancelled=1)),
    "cancel-pending": Fault("/fault/task/cancel-pending", 2, Outcome(cancelled=2)),
    "join-self": Fault("/fault/task/join-self", 1, Outcome(failed=1)),
    "join-blocking-self": Fault("/fault/task/join-blocking-self", 1, Outcome(failed=1)),
    "fan-out": Fault("/fault/task/fan-out", FAN_OUT + 1, Outcome(succeeded=FAN_OUT + 1)),
    "fan-out-sync": Fault(
        "/fault/task/fan-out-sync", FAN_OUT_SYNC + 1, Outcome(succeeded=FAN_OUT_SYNC + 1)
    ),
    "thread-timeout": Fault("/fault/task/thread-timeout", 1, Outcome(failed=1)),
    "endpoint-raises": Fault("/fault/endpoint-raises", 5, _ENDPOINT_FAILURE),
    "endpoint-http-exception": Fault("/fault/endpoint-http-exception", 5, _ENDPOINT_FAILURE),
    "endpoint-raises-sync": Fault("/fault/endpoint-raises-sync", 5, _ENDPOINT_FAILURE),
    "teardown-raises": Fault("/fault/teardown-raises", 5, _ENDPOINT_FAILURE),
    # The request-scoped teardown runs after the response: whether the after-response
    # work was handed over by then depends on the server.
    "teardown-raises-late": Fault("/fault/teardown-raises-late", 5, None),
    # uvicorn drops a send to a client that is gone (ASGI spec 2.3): its after-response
    # work runs as if the response was delivered; another server may fail the send.
    "disconnect-request": Fault("/fault/disconnect-request", 3, None, "disconnect-request"),
    "disconnect-stream": Fault(
        "/fault/disconnect-stream", 4, Outcome(succeeded=3, discarded=1), "disconnect-stream"
    ),
}
"""Faults the server must survive, one request each, in the order the tests run them."""

BASE_EXCEPTION_FAULTS: dict[str, dict[str, Fault]] = {
    "exit": {
        name: Fault(f"/fault/task/{name}", 1, Outcome(failed=1, handled=int("handler" in name)))
        for name in (
            "system-exit",
            "keyboard-interrupt",
            "system-exit-sync",
            "keyboard-interrupt-sync",
            "handler-keyboard-interrupt",
        )
    },
    "base": {
        name: Fault(f"/fault/task/{name}", 1, Outcome(failed=1, handled=int("handler" in name)))
        for name in (
            "generator-exit",
            "custom-base-exception",
            "base-exception-group",
            "custom-base-exception-sync",
            "handler-custom-base-exception",
        )
    },
}
"""``BaseException``s from work, grouped by the 0.2.0 bug they hit (H1 and M3)."""


# -- work that holds shutdown -------------------------------------------------------------


HANG_TASKS = 4
HANG_SHIELDED_SECONDS = 0.3


@tasks_app.get("/fault/hang")
async def hang(tasks: Tasks) -> dict[str, bool]:
    """Work that never ends by itself, and shielded work that does."""
    tasks.schedule(sleep_forever)
    tasks.task(on_error=handler_hangs).schedule(fail_with, ValueError("then hang"))
    tasks.schedule(join_self_forever)
    tasks.task(shield=True).schedule(timed_work, 0, HANG_SHIELDED_SECONDS)
    return {"ok": True}


@tasks_app.get("/fault/abandon-thread")
async def abandon_thread(tasks: Tasks) -> dict[str, bool]:
    """A sync task that blocks in its thread past its timeout, never released."""
    tasks.task(timeout=0.3).schedule(block_in_thread)
    return {"ok": True}


# -- the BackgroundTasks app ---------------------------------------------------------------

BACKGROUND_LEDGER = Ledger()
background_app = FastAPI()


def add_load(background: BackgroundTasks, number: int) -> None:
    ledger = BACKGROUND_LEDGER
    background.add_task(first_work, ledger, time.perf_counter())
    if number % 4 == 0:
        background.add_task(sync_work, ledger, "after_route")
    else:
        background.add_task(async_work, ledger, "after_route", pause_of(number))
    background.add_task(async_work, ledger, "after_response", pause_of(number + 1))
    background.add_task(ledger.settle)


@background_app.get("/load")
async def background_load(background: BackgroundTasks) -> dict[str, int]:
    number = BACKGROUND_LEDGER.next_request(3)
    add_load(background, number)
    return {"n": number}


@background_app.get("/load-sync")
def background_load_sync(background: BackgroundTasks) -> dict[str, int]:
    number = BACKGROUND_LEDGER.next_request(3)
    add_load(background, number)
    return {"n": number}


@background_app.get("/health")
async def background_health() -> dict[str, bool]:
    return {"ok": True}


@background_app.get("/stats")
async def background_stats(join: float = 0.0) -> dict[str, Any]:
    if join:
        await BACKGROUND_LEDGER.wait_settled(join)
    return {"stats": None, **BACKGROUND_LEDGER.report()}


# -- under a server -----------------------------------------------------------------------

if os.environ.get("RELIABILITY_SERVER") == "1":
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    _logger = logging.getLogger("fastapi_tasks")
    _logger.addHandler(_handler)
    _logger.setLevel(logging.INFO)
    if path := os.environ.get("RELIABILITY_EVENTS"):
        _events_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
