"""The apps under test: one FastAPI app per variant, each with its measured route first.

A variant is ``impl`` or ``impl-mode``:

========================  ==================================================================
``bare``                  endpoint without dependencies or background work
``depends``               one trivial async dependency, no background work
``create_task``           that dependency, and ``loop.create_task(work())`` (the floor)
``start_soon``            a dependency handing out the lifespan's anyio task group, and
                          ``group.start_soon(work)``
``background[-all|-sync]``  FastAPI's ``BackgroundTasks``: one async task, three, or a ``def``
``monitor-immediate``     ``library-immediate`` with the monitor included (after the measured
                          route), so its state listens to every task
``library-MODE``          ``fastapi_tasks`` as installed in the running environment; MODE is
                          ``none`` (``add_tasks`` but no ``Tasks`` parameter), ``unused``
                          (``Tasks`` parameter, nothing scheduled), ``immediate``,
                          ``after_route``, ``after_response``, ``all`` (one of each) or
                          ``sync`` (one immediate ``def`` task); built by ``_library``
``taskflow[-eager|-depends]``  fastapi-taskflow (in its own environment): ``add_task(work)``,
                          ``add_task(work, eager=True)``, or ``add_task(work)`` on
                          ``Depends(task_manager.get_tasks)``; built by ``_taskflow``
``journal-MODE``          ``library-MODE`` on an app that has a journal too
                          (``add_tasks(app, journal=path)``): non-durable work beside it
``arg-*``, ``durable-*``, ``tfmemory-*``, ``tfsnapshot-*``  the durable-work section's apps
                          (one numbered task per request); built by ``_durable``
========================  ==================================================================

Every endpoint schedules its work ``count`` times through the same ``fire`` closure,
so all variants pay the same harness overhead. Finished work is counted by
:data:`finished`, which is how drivers wait until the work of a request ran, with no
help from the library under test (0.1.0 has no ``join()``).

This module imports neither library: each environment has only one of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio
import anyio.abc
from fastapi import BackgroundTasks, Depends, FastAPI, Request

__all__ = [
    "LIBRARY_MODES",
    "OK",
    "Fire",
    "Probe",
    "Work",
    "begun",
    "bind_loop",
    "build_app",
    "finished",
    "new_app",
    "noop_sync",
    "open_gate",
    "schedule_timings",
    "tasks_per_request",
    "timed_fire",
    "uses_file",
]

T = TypeVar("T")
Fire = Callable[[T], None]
Work = Callable[[], Coroutine[Any, Any, None]]

LIBRARY_MODES = ("none", "unused", "immediate", "after_route", "after_response", "all", "sync")
OK = {"ok": True}


class Probe:
    """Counts events and wakes one waiter once a target count is reached."""

    __slots__ = ("_target", "_waiter", "count")

    def __init__(self) -> None:
        self.count = 0
        self._target = 0
        self._waiter: asyncio.Future[None] | None = None

    def hit(self) -> None:
        self.count += 1
        waiter = self._waiter
        if waiter is not None and self.count >= self._target:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def reach(self, target: int) -> None:
        """Return once ``count >= target``."""
        if self.count >= target:
            return
        self._target = target
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        await waiter


finished = Probe()
"""Work that ran to its end."""
begun = Probe()
"""Blocked work that started and now waits for the gate."""
schedule_timings: list[float] = []
"""Seconds each timed endpoint spent in its scheduling loop."""

_loop: asyncio.AbstractEventLoop | None = None
_gate = asyncio.Event()


def bind_loop() -> None:
    """Remember the running loop, for ``def`` work that reports back from its thread."""
    global _loop
    _loop = asyncio.get_running_loop()


def open_gate() -> None:
    """Release all blocked work; blocked work scheduled later waits on a new gate."""
    global _gate
    _gate.set()
    _gate = asyncio.Event()


async def noop() -> None:
    finished.hit()


def noop_sync() -> None:
    assert _loop is not None
    _loop.call_soon_threadsafe(finished.hit)


async def blocked() -> None:
    begun.hit()
    await _gate.wait()
    finished.hit()


def tasks_per_request(variant: str, count: int = 1) -> int:
    """How many pieces of work one request of ``variant`` runs."""
    impl, _, mode = variant.partition("-")
    if impl in ("bare", "depends") or mode in ("none", "unused"):
        return 0
    return count * (3 if mode == "all" else 1)


def uses_file(variant: str) -> bool:
    """Whether ``variant``'s app keeps an SQLite file (``build_app`` needs its ``path``)."""
    return variant.startswith(("journal-", "durable-", "tfsnapshot-"))


def new_app(lifespan: Callable[[FastAPI], Any] | None = None) -> FastAPI:
    # No docs routes: they would sit ahead of the measured route.
    return FastAPI(openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)


def timed_fire(fire: Fire[T]) -> Fire[T]:
    """``fire``, recording the seconds each call takes in :data:`schedule_timings`."""

    def timed(target: T) -> None:
        start = time.perf_counter()
        fire(target)
        schedule_timings.append(time.perf_counter() - start)

    return timed


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


async def _task_group(request: Request) -> anyio.abc.TaskGroup:
    group: anyio.abc.TaskGroup = request.state.task_group
    return group


@asynccontextmanager
async def _group_lifespan(app: FastAPI) -> AsyncGenerator[dict[str, Any], None]:
    async with anyio.create_task_group() as group:
        yield {"task_group": group}
        group.cancel_scope.cancel()


Loop = Annotated[asyncio.AbstractEventLoop, Depends(_running_loop)]
Group = Annotated[anyio.abc.TaskGroup, Depends(_task_group)]


def _background_fire(mode: str, work: Work, count: int) -> Fire[BackgroundTasks]:
    if mode == "":

        def fire(background: BackgroundTasks) -> None:
            for _ in range(count):
                background.add_task(work)

    elif mode == "all":

        def fire(background: BackgroundTasks) -> None:
            for _ in range(count):
                background.add_task(work)
                background.add_task(work)
                background.add_task(work)

    elif mode == "sync":

        def fire(background: BackgroundTasks) -> None:
            for _ in range(count):
                background.add_task(noop_sync)

    else:
        raise ValueError(f"unknown BackgroundTasks mode {mode!r}")
    return fire


def build_app(
    variant: str,
    *,
    count: int = 1,
    work: str = "noop",
    timed: bool = False,
    path: str | None = None,
) -> FastAPI:
    """Return a fresh app serving ``variant`` at ``GET /``.

    ``count`` is how many times the endpoint schedules its work per request;
    ``work`` is ``noop`` (returns at once) or ``blocked`` (waits for
    :func:`open_gate`); ``timed`` records the scheduling loop in
    :data:`schedule_timings`; ``path`` is the SQLite file of the variants that
    have one (see :func:`uses_file`).
    """
    impl, _, mode = variant.partition("-")
    job: Work = blocked if work == "blocked" else noop

    if impl == "bare":
        app = new_app()

        @app.get("/")
        async def bare() -> dict[str, bool]:
            return OK

    elif impl == "depends":
        app = new_app()

        @app.get("/")
        async def depends(loop: Loop) -> dict[str, bool]:
            return OK

    elif impl == "create_task":
        app = new_app()

        def fire_create_task(loop: asyncio.AbstractEventLoop) -> None:
            for _ in range(count):
                loop.create_task(job())

        fire_loop = timed_fire(fire_create_task) if timed else fire_create_task

        @app.get("/")
        async def create_task(loop: Loop) -> dict[str, bool]:
            fire_loop(loop)
            return OK

    elif impl == "start_soon":
        app = new_app(_group_lifespan)

        def fire_start_soon(group: anyio.abc.TaskGroup) -> None:
            for _ in range(count):
                group.start_soon(job)

        fire_group = timed_fire(fire_start_soon) if timed else fire_start_soon

        @app.get("/")
        async def start_soon(group: Group) -> dict[str, bool]:
            fire_group(group)
            return OK

    elif impl == "background":
        app = new_app()
        fire_background = _background_fire(mode, job, count)
        if timed:
            fire_background = timed_fire(fire_background)

        @app.get("/")
        async def background(background: BackgroundTasks) -> dict[str, bool]:
            fire_background(background)
            return OK

    elif impl in ("library", "monitor"):
        # Imported here: the fastapi-taskflow environment has no fastapi_tasks.
        from ._library import build_library_app

        app = build_library_app(mode, job, count, timed)
        if impl == "monitor":
            # Imported here: the 0.1.0 environment has no monitor, and never builds this.
            from fastapi_tasks.monitor import monitor_router

            app.include_router(monitor_router(), prefix="/tasks")

    elif impl == "taskflow":
        from ._taskflow import build_taskflow_app

        app = build_taskflow_app(mode, job, count, timed)

    elif impl == "journal":
        from ._library import build_library_app

        if path is None:
            raise ValueError(f"{variant} needs a journal file")
        app = build_library_app(mode, job, count, timed, journal=path)

    elif impl in ("arg", "durable", "tfmemory", "tfsnapshot"):
        from ._durable import build_durable_app

        app = build_durable_app(variant, count=count, path=path)

    else:
        raise ValueError(f"unknown variant {variant!r}")
    return app
