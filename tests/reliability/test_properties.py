"""Property tests: random programs of ``schedule()`` and ``cancel()`` calls, in process.

A program is a handful of concurrent requests to ``async def`` and ``def`` endpoints
(the latter schedule from a worker thread). Each request schedules work in the three
modes, sync and async, with random options (retries, shield, ``run_on_failure``, a
limiter) and random failures (the first attempts raise), cancels some of it, and ends
in a random way: returns, raises, raises ``HTTPException``, or its client goes away
before the last byte. The app may cap concurrency. Invariants (SPEC sections 2 and 7):

- exactly the work the rules say runs, runs, as many attempts as its failures and
  retries make, and every handle ends in the state the rules give it: cancelled,
  discarded (its request failed or its response was not completed, and it had no
  ``run_on_failure``), else succeeded or failed;
- within a request, async work starts in the order it was handed over: immediate work
  in scheduling order, then after-route, then after-response;
- ``join()`` returns and the lifespan shuts down, each within a bound;
- the counters add up at every step (a separate test).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import pytest
from fastapi import FastAPI, HTTPException
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastapi_tasks import Task, TaskManager, Tasks, TaskState, add_tasks

from .harness import SIZES
from .inprocess import BrokenPipe, lifespan, request

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

Mode = Literal["immediate", "after_route", "after_response"]
Fate = Literal["return", "raise", "http-error", "broken-send"]
MODES: tuple[Mode, ...] = ("immediate", "after_route", "after_response")
FATES: tuple[Fate, ...] = ("return", "raise", "http-error", "broken-send")
RANK = {mode: rank for rank, mode in enumerate(MODES)}
STATUS = {"return": 200, "raise": 500, "http-error": 409, "broken-send": 200}
WAIT = 30.0

TRIO_KEEPS_START_ORDER = True
"""docs/timing.md promises the start order on trio too: per request, the work of one
request forms a chain (requests never wait for each other)."""


@dataclass(frozen=True)
class Schedule:
    mode: Mode
    sync: bool
    fail_first: int
    """Attempts that raise before one succeeds."""
    retries: int
    shield: bool
    run_on_failure: bool
    limited: bool


@dataclass(frozen=True)
class Cancel:
    target: int
    """Which of the request's handles so far (modulo their number)."""


@dataclass(frozen=True)
class RequestProgram:
    sync_endpoint: bool
    ops: tuple[Schedule | Cancel, ...]
    fate: Fate


@dataclass(frozen=True)
class Program:
    max_concurrency: int | None
    requests: tuple[RequestProgram, ...]


schedules = st.builds(
    Schedule,
    mode=st.sampled_from(MODES),
    sync=st.booleans(),
    fail_first=st.integers(0, 2),
    retries=st.integers(0, 1),
    shield=st.booleans(),
    run_on_failure=st.booleans(),
    limited=st.booleans(),
)
cancels = st.builds(Cancel, st.integers(0, 7))


def programs(*, cancel_in_threads: bool) -> st.SearchStrategy[Program]:
    def request_program(sync_endpoint: bool) -> st.SearchStrategy[RequestProgram]:
        ops = st.one_of(schedules, cancels) if cancel_in_threads or not sync_endpoint else schedules
        return st.builds(
            RequestProgram,
            sync_endpoint=st.just(sync_endpoint),
            ops=st.lists(ops, max_size=8).map(tuple),
            fate=st.sampled_from(FATES),
        )

    return st.builds(
        Program,
        max_concurrency=st.none() | st.integers(1, 3),
        requests=st.lists(st.booleans().flatmap(request_program), min_size=1, max_size=5).map(
            tuple
        ),
    )


def add_up(manager: TaskManager) -> None:
    stats = manager.stats
    live = stats.pending + stats.running
    ended = stats.succeeded + stats.failed + stats.cancelled + stats.discarded
    assert stats.scheduled == live + ended, stats


@dataclass
class Work:
    """One piece of scheduled work: what the program asked, what happened."""

    request: int
    index: int
    op: Schedule
    calls: int = 0
    handle: Task[Any] | None = None
    cancelled: bool = False
    maybe_cancelled: bool = False
    """Cancelled from a worker thread while the loop runs on: immediate work may have
    started, or even finished, before ``cancel()`` came."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt(self, started: list[Work]) -> None:
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            started.append(self)
        if self.calls <= self.op.fail_first:
            raise ValueError(f"attempt {self.calls} fails")

    def function(self, started: list[Work]) -> Callable[[], None] | Callable[[], Awaitable[None]]:
        if self.op.sync:

            def sync_work() -> None:
                self.attempt(started)

            return sync_work

        async def async_work() -> None:
            self.attempt(started)

        return async_work

    def expected(self, fate: Fate) -> TaskState:
        if self.cancelled:
            return TaskState.CANCELLED
        deferred = self.op.mode != "immediate"
        failed = fate in ("raise", "http-error") and deferred
        incomplete = fate == "broken-send" and self.op.mode == "after_response"
        if (failed or incomplete) and not self.op.run_on_failure:
            return TaskState.DISCARDED
        return TaskState.FAILED if self.op.fail_first > self.op.retries else TaskState.SUCCEEDED

    def expected_calls(self, fate: Fate) -> int:
        state = self.expected(fate)
        if state is TaskState.SUCCEEDED:
            return self.op.fail_first + 1
        if state is TaskState.FAILED:
            return self.op.retries + 1
        return 0


async def run_program(program: Program, backend: str, *, check_stats: bool) -> None:
    app = FastAPI()
    manager = add_tasks(app, max_concurrency=program.max_concurrency)
    works: dict[int, list[Work]] = {}
    started: list[Work] = []
    limiters: list[anyio.CapacityLimiter] = []

    def perform(tasks: Tasks, number: int, on_loop: bool) -> None:
        spec = program.requests[number]
        mine = works[number] = []
        for op in spec.ops:
            if isinstance(op, Schedule):
                work = Work(number, len(mine), op)
                scheduler = {
                    "immediate": tasks,
                    "after_route": tasks.after_route,
                    "after_response": tasks.after_response,
                }[op.mode]
                options: dict[str, Any] = {}
                if op.retries:
                    options.update(retries=op.retries, retry_delay=0)
                if op.shield:
                    options["shield"] = True
                if op.run_on_failure and op.mode != "immediate":
                    options["run_on_failure"] = True
                if op.limited:
                    options["limiter"] = limiters[0]
                if options:
                    work.handle = scheduler.task(**options).schedule(work.function(started))
                else:
                    work.handle = scheduler.schedule(work.function(started))
                mine.append(work)
            elif mine:
                target = mine[op.target % len(mine)]
                assert target.handle is not None
                target.handle.cancel()
                if on_loop or target.op.mode != "immediate":
                    target.cancelled = True
                else:
                    target.maybe_cancelled = True
            if check_stats and on_loop:
                add_up(manager)
        if spec.fate == "raise":
            raise RuntimeError("the endpoint fails")
        if spec.fate == "http-error":
            raise HTTPException(409, "conflict")

    @app.get("/async/{number}")
    async def async_endpoint(number: int, tasks: Tasks) -> None:
        perform(tasks, number, on_loop=True)

    @app.get("/sync/{number}")
    def sync_endpoint(number: int, tasks: Tasks) -> None:
        perform(tasks, number, on_loop=False)

    async def drive(state: dict[str, Any], number: int, spec: RequestProgram) -> None:
        path = f"/{'sync' if spec.sync_endpoint else 'async'}/{number}"
        status: int | None = None
        try:
            status = await request(app, state, path, break_at_end=spec.fate == "broken-send")
        except (RuntimeError, BrokenPipe):
            assert spec.fate in ("raise", "broken-send")
            status = STATUS[spec.fate]
        assert status == STATUS[spec.fate]
        if check_stats:
            add_up(manager)

    async with lifespan(app) as state:
        limiters.append(anyio.CapacityLimiter(2))
        async with anyio.create_task_group() as group:
            for number, spec in enumerate(program.requests):
                group.start_soon(drive, state, number, spec)
        with anyio.fail_after(WAIT):
            await manager.join()
        if check_stats:
            add_up(manager)
            assert manager.stats.pending == manager.stats.running == 0
    if check_stats:
        add_up(manager)

    for number, spec in enumerate(program.requests):
        for work in works[number]:
            assert work.handle is not None
            final = work.handle.state
            if work.maybe_cancelled and final is TaskState.CANCELLED:
                assert work.calls <= work.expected_calls(spec.fate), work
                continue
            assert final is work.expected(spec.fate), work
            assert work.calls == work.expected_calls(spec.fate), work
        if backend == "trio" and not TRIO_KEEPS_START_ORDER:
            continue
        ordered = [
            work
            for work in works[number]
            if not (work.op.sync or work.op.limited or work.maybe_cancelled)
            and work.expected_calls(spec.fate)
        ]
        ordered.sort(key=lambda work: (RANK[work.op.mode], work.index))
        seen = [work for work in started if work.request == number and work in ordered]
        assert [w.index for w in seen] == [w.index for w in ordered], "start order"


PROPERTY_SETTINGS = settings(
    max_examples=SIZES.property_examples,
    deadline=None,
    database=None,
    derandomize=SIZES.name == "short",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Work of every mode, deferred work included, in a request that fails.
DEFERRED = Program(
    None,
    (
        RequestProgram(
            False,
            tuple(Schedule(mode, False, 0, 0, False, False, False) for mode in MODES),
            "raise",
        ),
    ),
)


@PROPERTY_SETTINGS
@given(program=programs(cancel_in_threads=False))
@example(program=DEFERRED)
async def test_programs_run_by_the_rules(anyio_backend: str, program: Program) -> None:
    await run_program(program, anyio_backend, check_stats=False)


@PROPERTY_SETTINGS
@given(program=programs(cancel_in_threads=False))
@example(program=DEFERRED)
async def test_stats_add_up_at_every_step(anyio_backend: str, program: Program) -> None:
    await run_program(program, anyio_backend, check_stats=True)


# A def endpoint that schedules work and cancels some of it from its worker thread (work
# that already runs is cancelled from a thread in test_inprocess_faults.py).
CANCEL_IN_THREAD = Program(
    None,
    (
        RequestProgram(
            True,
            (Schedule("immediate", False, 0, 0, False, False, False), Cancel(0)),
            "return",
        ),
    ),
)


@PROPERTY_SETTINGS
@given(program=programs(cancel_in_threads=True))
@example(program=CANCEL_IN_THREAD)
async def test_programs_that_cancel_from_threads(anyio_backend: str, program: Program) -> None:
    await run_program(program, anyio_backend, check_stats=False)
