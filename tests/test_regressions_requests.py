# pyright: reportPrivateUsage=false
"""Regressions of 0.2.0, part 1: how a request's outcome decides its deferred work.

Each test is named after the bug it pins (``reviews/core-review-0.2.0.md``,
``reviews/reliability-trial-0.2.0.md``) and states the rule it checks. They use
the public API only, except R17, which simulates a FastAPI without the function
exit stack by renaming the key the adapter module looks for.

No ``from __future__ import annotations`` here: endpoints and dependencies are
defined inside the tests, and FastAPI resolves string annotations in module
globals only.
"""

import gc
import random
import weakref
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Annotated

import anyio
import pytest
from fastapi import Depends, FastAPI, HTTPException
from starlette.types import Message

import fastapi_tasks._fastapi_compat
from fastapi_tasks import Task, Tasks, TaskState, add_tasks

from .conftest import Recorder, http_scope, receive_empty_body, serving

pytestmark = pytest.mark.anyio

WAIT = 5.0
"""Seconds any single wait may take before the test fails."""


class StatusRecorder:
    """A ``send`` for calling the app directly: notes the status it answered with."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.statuses.append(message["status"])


# -- R3 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("teardown", "status"),
    [("succeeds", 200), ("raises HTTPException(409)", 409), ("raises RuntimeError", 500)],
)
async def test_r3_function_scoped_dependency_teardown_decides_deferred_work(
    teardown: str, status: int, recorder: Recorder
) -> None:
    """A ``Depends(..., scope="function")`` teardown that raises fails the request.

    Its teardown runs after the endpoint returned and before the response: if it
    raises (409 from an ``HTTPException``, 500 from any other error), the request
    failed, so its after-route and after-response work is discarded (counted in
    ``stats.discarded``) and only ``run_on_failure=True`` work runs. If it
    succeeds, all of it runs.
    """
    app = FastAPI()
    manager = add_tasks(app)

    async def session() -> AsyncIterator[str]:
        yield "db"
        if teardown == "raises HTTPException(409)":
            raise HTTPException(409, "conflict on commit")
        if teardown == "raises RuntimeError":
            raise RuntimeError("commit failed")

    handles: dict[str, Task[None]] = {}

    @app.get("/orders")
    async def create(db: Annotated[str, Depends(session, scope="function")], tasks: Tasks) -> str:
        handles["after-route"] = tasks.after_route.schedule(recorder.record, "after-route")
        handles["after-response"] = tasks.after_response.schedule(recorder.record, "after-response")
        handles["after-route, run_on_failure"] = tasks.after_route.task(
            run_on_failure=True
        ).schedule(recorder.record, "after-route, run_on_failure")
        handles["after-response, run_on_failure"] = tasks.after_response.task(
            run_on_failure=True
        ).schedule(recorder.record, "after-response, run_on_failure")
        return "created"

    send = StatusRecorder()
    async with serving(app):
        if teardown == "raises RuntimeError":
            # ServerErrorMiddleware sends the 500, then re-raises to the server.
            with pytest.raises(RuntimeError, match="commit failed"):
                await app(http_scope("/orders"), receive_empty_body, send)
        else:
            await app(http_scope("/orders"), receive_empty_body, send)
        await manager.join(WAIT)

    assert send.statuses == [status]
    states = {name: task.state for name, task in handles.items()}
    if teardown == "succeeds":
        assert set(recorder.events) == set(handles)
        assert states == dict.fromkeys(handles, TaskState.SUCCEEDED)
        assert manager.stats.discarded == 0
    else:
        assert sorted(recorder.events) == [
            "after-response, run_on_failure",
            "after-route, run_on_failure",
        ]
        assert states == {
            "after-route": TaskState.DISCARDED,
            "after-response": TaskState.DISCARDED,
            "after-route, run_on_failure": TaskState.SUCCEEDED,
            "after-response, run_on_failure": TaskState.SUCCEEDED,
        }
        assert manager.stats.discarded == 2


# -- R17 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint_does", "status"),
    [("returns", 200), ("raises HTTPException(404)", 404), ("raises RuntimeError", 500)],
)
async def test_r17_without_fastapis_request_exit_stack_failures_still_discard(
    endpoint_does: str, status: int, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback for a FastAPI without ``scope["fastapi_inner_astack"]`` keeps the rules.

    Simulated by renaming the key the adapter looks for (as a FastAPI upgrade
    would): an endpoint that raises ``HTTPException(404)`` or ``RuntimeError``
    still has its after-route and after-response work discarded; a successful
    endpoint still has both run.
    """
    monkeypatch.setattr(
        fastapi_tasks._fastapi_compat, "REQUEST_STACK_KEY", "fastapi_tasks_test_missing_key"
    )
    app = FastAPI()
    manager = add_tasks(app)
    handles: list[Task[None]] = []

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        handles.append(tasks.after_route.schedule(recorder.record, "after-route"))
        handles.append(tasks.after_response.schedule(recorder.record, "after-response"))
        if endpoint_does == "raises HTTPException(404)":
            raise HTTPException(404, "no such order")
        if endpoint_does == "raises RuntimeError":
            raise RuntimeError("endpoint bug")
        return "ok"

    send = StatusRecorder()
    async with serving(app):
        if endpoint_does == "raises RuntimeError":
            with pytest.raises(RuntimeError, match="endpoint bug"):
                await app(http_scope(), receive_empty_body, send)
        else:
            await app(http_scope(), receive_empty_body, send)
        await manager.join(WAIT)

    assert send.statuses == [status]
    if endpoint_does == "returns":
        assert recorder.events == ["after-route", "after-response"]
        assert [task.state for task in handles] == [TaskState.SUCCEEDED] * 2
    else:
        assert recorder.events == []
        assert [task.state for task in handles] == [TaskState.DISCARDED] * 2
        assert manager.stats.discarded == 2


# -- R4 -----------------------------------------------------------------------------


async def test_r4_cancelled_final_body_send_counts_as_not_delivered(
    recorder: Recorder,
) -> None:
    """A final ``http.response.body`` send that is cancelled did not deliver the response.

    The request is cancelled while its last body message is stuck in ``send``
    (a slow client, a timeout middleware, a server's graceful-shutdown timeout):
    its after-response work is discarded, and only ``run_on_failure=True`` work
    runs. After-route work was handed over before the response started and runs.
    """
    app = FastAPI()
    manager = add_tasks(app)
    handles: dict[str, Task[None]] = {}

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        handles["after-route"] = tasks.after_route.schedule(recorder.record, "after-route")
        handles["after-response"] = tasks.after_response.schedule(recorder.record, "after-response")
        handles["run_on_failure"] = tasks.after_response.task(run_on_failure=True).schedule(
            recorder.record, "after-response, run_on_failure"
        )
        return "ok"

    final_send_in_flight = anyio.Event()

    async def slow_client_send(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            final_send_in_flight.set()
            await anyio.sleep_forever()  # meant to be cancelled with the request

    async with serving(app):
        async with anyio.create_task_group() as group:
            group.start_soon(app, http_scope(), receive_empty_body, slow_client_send)
            with anyio.fail_after(WAIT):
                await final_send_in_flight.wait()
            group.cancel_scope.cancel()
        await manager.join(WAIT)

    assert "after-response" not in recorder.events
    assert sorted(recorder.events) == ["after-response, run_on_failure", "after-route"]
    assert handles["after-response"].state is TaskState.DISCARDED
    assert manager.stats.discarded == 1


# -- R15 ----------------------------------------------------------------------------


async def test_r15_stats_add_up_at_every_moment() -> None:
    """``scheduled == pending + running + succeeded + failed + cancelled + discarded``, always.

    ``scheduled`` counts every task a ``schedule()`` call created, deferred work
    from the moment it was scheduled. Checked after each step (work of a request
    that raised, deferred work cancelled before its moment, work cancelled while
    it waited for a ``max_concurrency`` slot, success, failure), from the test,
    from inside the endpoints and from inside the tasks.
    """
    app = FastAPI()
    manager = add_tasks(app, max_concurrency=1)
    broken: list[str] = []
    scheduled_in_endpoint: list[int] = []

    def check(where: str) -> None:
        stats = manager.stats
        accounted = (
            stats.pending
            + stats.running
            + stats.succeeded
            + stats.failed
            + stats.cancelled
            + stats.discarded
        )
        if stats.scheduled != accounted:
            broken.append(f"{where}: {stats}")

    async def record(what: str) -> None:
        check(f"inside task {what!r}")

    async def fail() -> None:
        check("inside a failing task")
        raise ValueError("task failed")

    holding = anyio.Event()
    release = anyio.Event()

    async def hold() -> None:
        check("inside the blocker")
        holding.set()
        await release.wait()

    @app.get("/fails")
    async def fails(tasks: Tasks) -> None:
        check("endpoint /fails began")
        tasks.after_route.schedule(record, "after-route of a failed request")
        check("after-route work scheduled")
        scheduled_in_endpoint.append(manager.stats.scheduled)
        tasks.after_response.schedule(record, "after-response of a failed request")
        check("after-response work scheduled")
        scheduled_in_endpoint.append(manager.stats.scheduled)
        raise HTTPException(418, "the request fails")

    @app.get("/cancels")
    async def cancels(tasks: Tasks) -> None:
        check("endpoint /cancels began")
        route = tasks.after_route.schedule(record, "cancelled after-route")
        check("after-route work scheduled")
        response = tasks.after_response.schedule(record, "cancelled after-response")
        check("after-response work scheduled")
        assert route.cancel()
        check("after-route work cancelled before its moment")
        assert response.cancel()
        check("after-response work cancelled before its moment")

    async with serving(app) as client:
        check("after startup")
        assert (await client.get("/fails")).status_code == 418
        check("after the failed request")
        await manager.join(WAIT)
        check("after joining the failed request")
        assert scheduled_in_endpoint == [1, 2]  # counted from the moment they were scheduled
        assert manager.stats.discarded == 2

        assert (await client.get("/cancels")).status_code == 200
        await manager.join(WAIT)
        check("after the request that cancelled its deferred work")
        assert manager.stats.scheduled == 4
        assert manager.stats.cancelled == 2

        blocker = manager.schedule(hold)
        with anyio.fail_after(WAIT):
            await holding.wait()
        check("while the blocker holds the only slot")
        queued = manager.schedule(record, "queued")
        check("with work waiting for a slot")
        assert queued.state is TaskState.PENDING
        assert queued.cancel()
        check("after cancelling work that waited for a slot")
        release.set()
        with anyio.fail_after(WAIT):
            await blocker.wait()
        check("after the blocker finished")

        manager.schedule(record, "succeeds")
        check("after scheduling work that succeeds")
        manager.schedule(fail)
        check("after scheduling work that fails")
        await manager.join(WAIT)
        check("at the end")
        final = manager.stats

    assert broken == []
    assert (
        final.scheduled,
        final.pending,
        final.running,
        final.succeeded,
        final.failed,
        final.cancelled,
        final.discarded,
    ) == (8, 0, 0, 2, 1, 3, 2)


# -- R7 -----------------------------------------------------------------------------


@pytest.mark.parametrize("cancel_when", ["right after scheduling", "after one checkpoint"])
async def test_r7_cancelling_some_work_keeps_the_start_order_of_the_rest(
    cancel_when: str,
) -> None:
    """Immediate work of one request starts in the order it was scheduled, cancellations or not.

    Each of 300 requests schedules 6 immediate tasks and cancels some of them
    before they start (at once, or after one checkpoint while the others wait
    for their turn); the rest must start in scheduling order, every time.
    """
    app = FastAPI()
    manager = add_tasks(app)
    starts: list[int] = []
    choose = random.Random(7)  # a fixed sequence of choices: the same trials every run

    async def note(index: int) -> None:
        starts.append(index)

    @app.get("/")
    async def endpoint(tasks: Tasks) -> None:
        handles = [tasks.schedule(note, index) for index in range(6)]
        if cancel_when == "after one checkpoint":
            await anyio.lowlevel.checkpoint()
        for index in choose.sample(range(6), choose.randint(1, 3)):
            if handles[index].state is TaskState.PENDING:
                handles[index].cancel()

    out_of_order: list[list[int]] = []
    async with serving(app) as client:
        for _ in range(300):
            starts.clear()
            assert (await client.get("/")).status_code == 200
            await manager.join(WAIT)
            if starts != sorted(starts):
                out_of_order.append(list(starts))

    assert out_of_order == []


# -- R18 ----------------------------------------------------------------------------


class Session:
    """Stands for a per-request object (a DB session, the user) kept in a context variable."""


current_session: ContextVar[Session | None] = ContextVar("current_session", default=None)


@pytest.mark.parametrize(
    "case",
    [
        "immediate",
        "after-route",
        "after-response",
        "failed",
        "cancelled while pending",
        "discarded",
    ],
)
async def test_r18_a_finished_handle_drops_the_request_context(case: str) -> None:
    """A handle kept after its work finished does not keep the request's context alive.

    The endpoint puts an object in a ``ContextVar`` and schedules work; the handle
    is kept after the request. Once the work ended (succeeded in each mode, failed,
    cancelled while it waited for a slot, or discarded with its failed request) and
    after ``gc.collect()``, the object is gone.
    """
    app = FastAPI()
    manager = add_tasks(app, max_concurrency=1)
    kept: list[Task[None]] = []
    refs: list[weakref.ref[Session]] = []
    saw_session: list[bool] = []
    release = anyio.Event()

    async def work() -> None:
        saw_session.append(current_session.get() is not None)

    async def failing() -> None:
        saw_session.append(current_session.get() is not None)
        raise ValueError("work failed")

    async def hold() -> None:
        await release.wait()

    @app.get("/")
    async def endpoint(tasks: Tasks) -> None:
        session = Session()
        refs.append(weakref.ref(session))
        token = current_session.set(session)
        del session
        try:
            if case == "after-route":
                kept.append(tasks.after_route.schedule(work))
            elif case in ("after-response", "discarded"):
                kept.append(tasks.after_response.schedule(work))
            elif case == "failed":
                kept.append(tasks.schedule(failing))
            else:  # immediate; "cancelled while pending" waits for the blocker's slot
                kept.append(tasks.schedule(work))
        finally:
            current_session.reset(token)
        if case == "discarded":
            raise HTTPException(409, "the request fails")

    async with serving(app) as client:
        if case == "cancelled while pending":
            blocker = manager.schedule(hold)
            with anyio.fail_after(WAIT):
                await blocker.started.wait()
        response = await client.get("/")
        if case == "cancelled while pending":
            assert kept[0].state is TaskState.PENDING
            assert kept[0].cancel()
        release.set()
        await manager.join(WAIT)
        gc.collect()
        alive_after_join = refs[0]() is not None

    expected = {
        "failed": TaskState.FAILED,
        "cancelled while pending": TaskState.CANCELLED,
        "discarded": TaskState.DISCARDED,
    }.get(case, TaskState.SUCCEEDED)
    assert response.status_code == (409 if case == "discarded" else 200)
    assert kept[0].state is expected
    assert saw_session == ([True] if expected in (TaskState.SUCCEEDED, TaskState.FAILED) else [])
    assert not alive_after_join
