"""Regressions of 0.2.0, part 2: apps, lifespans, event loops and real servers.

Each test is named after the bug it pins (``reviews/core-review-0.2.0.md``,
``reviews/reliability-trial-0.2.0.md``) and states the rule it checks, through
the public API only. uvicorn runs on asyncio only; hypercorn runs here with its
trio worker, as in ``test_e2e.py``.

No ``from __future__ import annotations`` here: endpoints are defined inside the
tests, and FastAPI resolves string annotations in module globals only.
"""

import asyncio
import sys
import threading
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import httpx2
import pytest
import trio
from fastapi import APIRouter, FastAPI, Request

from fastapi_tasks import (
    FastAPITasksWrongLoopError,
    Task,
    TaskManager,
    Tasks,
    TaskState,
    add_tasks,
    get_task_manager,
)

from .conftest import LifespanDriver, serving
from .test_e2e import client_of, serve

pytestmark = pytest.mark.anyio

WAIT = 5.0
"""Seconds any single wait may take before the test fails."""


async def noop() -> None:
    pass


# -- R12 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_of", "survives_by"),
    [
        ("a router included after add_tasks", "shield"),
        ("a router included after add_tasks", "grace period"),
        ("the app's own lifespan", "shield"),
        ("the app's own lifespan", "grace period"),
    ],
)
async def test_r12_work_drains_before_routers_and_the_app_shut_down(
    resource_of: str, survives_by: str
) -> None:
    """Our drain runs before the shutdown code of the app and of every router.

    A resource opened at startup and closed at shutdown by an ``APIRouter(lifespan=...)``
    included after ``add_tasks(app)`` (the usual order), or by ``FastAPI(lifespan=...)``,
    is still open when work that was running as shutdown began finishes: shielded
    work (``shutdown_timeout=0``), or unshielded work that finishes within
    ``shutdown_timeout=5``.
    """
    pool = {"open": False}

    @asynccontextmanager
    async def open_pool(app: Any) -> AsyncGenerator[None, None]:
        pool["open"] = True
        yield
        pool["open"] = False  # no await first: closing happens the moment shutdown reaches it

    app = FastAPI(lifespan=open_pool) if resource_of == "the app's own lifespan" else FastAPI()
    manager = add_tasks(app, shutdown_timeout=5 if survives_by == "grace period" else 0)
    if resource_of == "a router included after add_tasks":
        app.include_router(APIRouter(lifespan=open_pool))

    driver = LifespanDriver(app, {})
    running = anyio.Event()
    pool_open_at_the_end: list[bool] = []
    handles: list[Task[None]] = []

    async def write_to_pool() -> None:
        running.set()
        await driver.shutdown_delivered.wait()
        # Whatever the shutdown does before waiting for us, it has done by now.
        await anyio.wait_all_tasks_blocked()
        pool_open_at_the_end.append(pool["open"])

    with anyio.fail_after(3 * WAIT):
        async with anyio.create_task_group() as group:
            group.start_soon(driver.run)
            assert await driver.started()
            assert pool["open"]
            handles.append(manager.task(shield=survives_by == "shield").schedule(write_to_pool))
            await running.wait()
            await driver.shut_down()
    driver.raise_for_failure()

    assert pool_open_at_the_end == [True]
    assert handles[0].state is TaskState.SUCCEEDED
    assert not pool["open"]  # and it was closed after all


# -- R2 -----------------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_r2_get_task_manager_finds_its_app_after_a_second_app_started() -> None:
    """``get_task_manager()`` with no argument works in any task or request of any app.

    Two apps with ``add_tasks`` are served by two real uvicorn servers on one event
    loop. A task of the first app, scheduled before the second app started, calls
    ``get_task_manager()`` after it started: it gets the first app's manager, and
    schedules with it. So does a request to the first app.
    """
    first, second = FastAPI(), FastAPI()
    first_manager = add_tasks(first)
    second_manager = add_tasks(second)
    gate = anyio.Event()
    found: list[TaskManager] = []
    follow_ups: list[Task[None]] = []
    handles: dict[str, Task[None]] = {}

    async def follow_up() -> None:
        await gate.wait()
        manager = get_task_manager()
        found.append(manager)
        follow_ups.append(manager.schedule(noop))
        await follow_ups[0].wait()

    @first.post("/orders")
    async def create_order(tasks: Tasks) -> None:
        handles["follow_up"] = tasks.schedule(follow_up)

    @first.get("/manager")
    async def which_manager() -> bool:
        return get_task_manager() is first_manager

    @second.get("/health")
    async def health() -> str:
        return "ok"

    async with serve("uvicorn", first) as first_server, client_of(first_server) as first_client:
        assert (await first_client.post("/orders")).status_code == 200
        async with (
            serve("uvicorn", second) as second_server,
            client_of(second_server) as second_client,
        ):
            # It answers: the second app's lifespan has started.
            assert (await second_client.get("/health")).status_code == 200
            assert second_manager.running
            gate.set()
            with anyio.fail_after(WAIT):
                await handles["follow_up"].wait()
            which = await first_client.get("/manager")

    assert handles["follow_up"].state is TaskState.SUCCEEDED, handles["follow_up"].exception
    assert len(found) == 1
    assert found[0] is first_manager
    assert follow_ups[0].state is TaskState.SUCCEEDED
    assert which.json() is True


# -- R5 -----------------------------------------------------------------------------


@pytest.mark.parametrize("mounted_app_called_add_tasks", [True, False])
async def test_r5_mounted_app_resolves_to_the_manager_serving_the_request(
    mounted_app_called_add_tasks: bool,
) -> None:
    """Inside an app mounted under an app with ``add_tasks``, the outer manager serves.

    ``get_task_manager(request.app)`` returns the outer app's manager, whether or
    not the mounted app called ``add_tasks`` itself, and scheduling with it works;
    ``Tasks`` in the mounted app schedules on the outer manager too.
    """
    outer = FastAPI()
    outer_manager = add_tasks(outer)
    inner = FastAPI()
    if mounted_app_called_add_tasks:
        add_tasks(inner)
    found: list[TaskManager] = []
    ran: list[str] = []

    async def record(what: str) -> None:
        ran.append(what)

    @inner.get("/orders")
    async def orders(request: Request, tasks: Tasks) -> None:
        manager = get_task_manager(request.app)
        found.append(manager)
        manager.schedule(record, "via get_task_manager(request.app)")
        tasks.schedule(record, "via Tasks")

    outer.mount("/inner", inner)
    async with serving(outer) as client:
        response = await client.get("/inner/orders")
        await outer_manager.join(WAIT)

    assert response.status_code == 200
    assert len(found) == 1
    assert found[0] is outer_manager
    assert sorted(ran) == ["via Tasks", "via get_task_manager(request.app)"]
    assert outer_manager.stats.succeeded == 2


# -- Two loops ----------------------------------------------------------------------


class LifespanInThread:
    """Runs an app's lifespan on an event loop of its own, in a thread of its own."""

    def __init__(self, app: FastAPI, backend: str) -> None:
        self.app = app
        self.backend = backend
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_repr = ""
        self.thread_id = 0
        self.errors: list[BaseException] = []
        self._started = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _hold_lifespan(self) -> None:
        if self.backend == "asyncio":
            self.loop = asyncio.get_running_loop()
            self.loop_repr = repr(self.loop)
        self.thread_id = threading.get_ident()
        async with serving(self.app):
            self._started.set()
            await anyio.to_thread.run_sync(self._stop.wait)

    def _run(self) -> None:
        try:
            anyio.run(self._hold_lifespan, backend=self.backend)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self._started.set()

    async def __aenter__(self) -> "LifespanInThread":
        self._thread.start()
        assert await anyio.to_thread.run_sync(self._started.wait, WAIT)
        assert not self.errors
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        await anyio.to_thread.run_sync(self._thread.join, WAIT)
        assert not self._thread.is_alive()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("call", ["manager.schedule()", "a request"])
async def test_two_loops_a_call_from_another_running_loop_names_both(call: str) -> None:
    """A call from a running event loop other than the lifespan's raises; it never hangs.

    The lifespan runs on one asyncio loop in a thread; ``manager.schedule()`` or a
    request made on another running asyncio loop raises an error whose message
    names the loops.
    """
    app = FastAPI()
    manager = add_tasks(app)

    @app.get("/")
    async def endpoint(tasks: Tasks) -> None:
        tasks.schedule(noop)

    async def make_the_call() -> None:
        with anyio.fail_after(WAIT):
            if call == "manager.schedule()":
                manager.schedule(noop)
                return
            client = httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=app), base_url="http://test"
            )
            async with client:
                await client.get("/")

    this_loop_repr = repr(asyncio.get_running_loop())
    async with LifespanInThread(app, "asyncio") as lifespan:
        with pytest.raises(Exception, match="loop") as raised:
            await make_the_call()
    assert not lifespan.errors
    message = str(raised.value)
    assert lifespan.loop_repr in message or this_loop_repr in message, message


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_two_loops_scheduling_from_an_asyncio_loop_onto_a_trio_lifespan() -> None:
    """A call from a different running event loop is refused, naming both (SPEC 7).

    The lifespan runs on trio in a thread of its own; ``manager.schedule()`` called
    on an asyncio loop in another thread raises instead of handing work over; from
    a plain thread (no loop running there) the same call is allowed and the work
    runs on the lifespan's trio loop.
    """
    app = FastAPI()
    manager = add_tasks(app)
    ran_on: list[tuple[int, bool]] = []
    done = threading.Event()

    async def work() -> None:
        ran_on.append((threading.get_ident(), trio.lowlevel.current_root_task() is not None))
        done.set()

    async with LifespanInThread(app, "trio") as lifespan:
        with pytest.raises(FastAPITasksWrongLoopError, match=r"_UnixSelectorEventLoop.*trio"):
            manager.schedule(work)
        task = await anyio.to_thread.run_sync(manager.schedule, work)
        assert await anyio.to_thread.run_sync(done.wait, WAIT)
    assert not lifespan.errors
    assert ran_on == [(lifespan.thread_id, True)]
    assert task.state is TaskState.SUCCEEDED
    assert manager.stats.scheduled == 1  # the refused call created nothing


# -- L5 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "not_an_app", [object(), None, "not an app"], ids=["object()", "None", "a string"]
)
def test_l5_add_tasks_on_something_that_is_not_an_app(not_an_app: object) -> None:
    """``add_tasks()`` on something that is not a FastAPI or Starlette app is a ``TypeError``.

    Its message names what it expects.
    """
    with pytest.raises(TypeError, match=r"FastAPI|Starlette"):
        add_tasks(cast("Any", not_an_app))


# -- H1, on real servers -------------------------------------------------------------


def exit_the_interpreter() -> None:
    sys.exit(3)


async def interrupt() -> None:
    raise KeyboardInterrupt


FAILURES: dict[str, Callable[[Tasks], Task[None]]] = {
    "sync sys.exit(3)": lambda tasks: tasks.schedule(exit_the_interpreter),
    "async KeyboardInterrupt": lambda tasks: tasks.schedule(interrupt),
}


@pytest.mark.parametrize(
    ("server_kind", "anyio_backend"), [("uvicorn", "asyncio"), ("hypercorn-trio", "trio")]
)
@pytest.mark.parametrize("failure", list(FAILURES))
async def test_h1_server_survives_work_that_exits_or_interrupts(
    server_kind: str, failure: str
) -> None:
    """Work raising ``SystemExit`` or ``KeyboardInterrupt`` does not stop the server.

    After the task ran (``sys.exit(3)`` in a sync task, ``KeyboardInterrupt`` in an
    async one) and failed, the server still answers ``GET /health`` with 200, and
    shielded work started earlier still completes at shutdown.
    """
    app = FastAPI()
    add_tasks(app)
    handles: dict[str, Task[None]] = {}
    shielded_started = anyio.Event()
    sibling_ended = anyio.Event()
    ledger: list[str] = []

    async def sibling() -> None:
        try:
            await anyio.sleep_forever()  # cancelled when shutdown begins
        finally:
            sibling_ended.set()

    async def write_ledger() -> None:
        shielded_started.set()
        with anyio.fail_after(3 * WAIT):
            await sibling_ended.wait()
        ledger.append("written")

    @app.post("/imports")
    async def start_import(tasks: Tasks) -> None:
        handles["sibling"] = tasks.schedule(sibling)
        handles["ledger"] = tasks.task(shield=True).schedule(write_ledger)

    @app.post("/fail")
    async def fail(tasks: Tasks) -> None:
        handles["failing"] = FAILURES[failure](tasks)

    @app.get("/health")
    async def health() -> str:
        return "ok"

    async with serve(server_kind, app) as server:
        async with client_of(server) as client:
            assert (await client.post("/imports")).status_code == 200
            with anyio.fail_after(WAIT):
                await shielded_started.wait()
            assert (await client.post("/fail")).status_code == 200
            with anyio.fail_after(WAIT):
                await handles["failing"].wait()
            health_check = await client.get("/health")
        await server.shut_down()

    assert health_check.status_code == 200
    assert handles["failing"].state is TaskState.FAILED
    assert handles["ledger"].state is TaskState.SUCCEEDED
    assert ledger == ["written"]
