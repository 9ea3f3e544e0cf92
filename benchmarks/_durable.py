"""The apps of the durable-work section: the SQLite journal, and what it is compared with.

A variant is ``impl-mode[-synchronous]``; every endpoint schedules one no-op task per
request (``count`` in the batch scenario) and passes it a number, as durable work takes
arguments that are written to the journal:

=============================  ===========================================================
``arg-background``             FastAPI's ``BackgroundTasks``: ``add_task(noop, i)``
``arg-MODE``                   ``add_tasks(app)``, ``tasks.<MODE>.schedule(noop, i)``
``durable-MODE-SYNC``          ``add_tasks(app, journal=SQLiteJournal(path, synchronous=SYNC))``,
                               ``tasks.<MODE>.task(durable=True).schedule(noop, i)``
``tfmemory-eager|after``       fastapi-taskflow in memory: ``add_task(noop, i, eager=True)``
                               (at once) or ``add_task(noop, i)`` (after the response)
``tfsnapshot-eager|after``     the same with ``TaskManager(snapshot_db=path,
                               requeue_pending=True)``: its SQLite persistence
=============================  ===========================================================

MODE is ``immediate``, ``after_route`` or ``after_response``; SYNC is ``full`` or
``normal``. The journal's work is :func:`noop`, a module-level function, so the journal
can find it again by name. fastapi-taskflow is imported by name (its environment has no
``fastapi_tasks``, and ours has no fastapi-taskflow): see ``_taskflow``.

Apps with a file get a second route after the measured one, ``GET /_bench/sqlite``: the
statements run on SQLite connections of this process so far (see :func:`count_statements`),
which is how the section learns how many tasks each grouped commit carried without
touching the library.
"""

# No ``from __future__ import annotations``: the endpoints' ``Tasks`` is imported inside
# a function (the fastapi-taskflow environment has no fastapi_tasks), so FastAPI must
# receive their annotations evaluated.

import itertools
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from fastapi import BackgroundTasks, FastAPI

from ._apps import OK, finished, new_app

__all__ = ["SQLITE_STATS", "build_durable_app", "count_statements", "noop", "statements"]

SQLITE_STATS = "/_bench/sqlite"


async def noop(i: int) -> None:
    """The work: does nothing with its argument; counted by :data:`_apps.finished`."""
    finished.hit()


class _Statements:
    """Statements seen by the trace callbacks, by kind; callbacks run on any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = {"commits": 0, "inserts": 0, "writes": 0}

    def seen(self, sql: str) -> None:
        kind = sql.lstrip()[:6].upper()
        with self.lock:
            if kind == "COMMIT":
                self.counts["commits"] += 1
            elif kind in ("INSERT", "UPDATE", "DELETE"):
                self.counts["writes"] += 1
                if kind == "INSERT":
                    self.counts["inserts"] += 1


_statements = _Statements()


def statements() -> dict[str, int]:
    """Commits, inserted rows and written rows on this process's SQLite connections so far."""
    with _statements.lock:
        return dict(_statements.counts)


def count_statements() -> None:
    """Make every SQLite connection opened from now on report its statements.

    Both libraries open their connections with ``sqlite3.connect``; wrapping it sets a
    trace callback (public ``sqlite3`` API) on each one. It costs a Python call per
    statement (about a microsecond), paid by every variant that has a file.
    """
    connect: Callable[..., sqlite3.Connection] = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(_statements.seen)
        return conn

    sqlite3.connect = traced  # type: ignore[assignment]


def _add_stats_route(app: FastAPI) -> None:
    @app.get(SQLITE_STATS)
    async def sqlite_stats() -> dict[str, int]:
        return statements()


def _background_app() -> FastAPI:
    app = new_app()
    numbers = itertools.count()

    @app.get("/")
    async def background(background: BackgroundTasks) -> dict[str, bool]:
        background.add_task(noop, next(numbers))
        return OK

    return app


def _library_app(mode: str, count: int, journal: str | None, synchronous: str) -> FastAPI:
    # Imported here: the fastapi-taskflow environment has no fastapi_tasks.
    from fastapi_tasks import Tasks, add_tasks
    from fastapi_tasks.journal import SQLiteJournal

    app = new_app()
    if journal is None:
        add_tasks(app)
    else:
        add_tasks(
            app,
            journal=SQLiteJournal(
                journal, synchronous="normal" if synchronous == "normal" else "full"
            ),
        )
    durable = journal is not None
    numbers = itertools.count()

    if mode == "immediate":

        @app.get("/")
        async def immediate(tasks: Tasks) -> dict[str, bool]:
            scheduler = tasks.task(durable=True) if durable else tasks
            for _ in range(count):
                scheduler.schedule(noop, next(numbers))
            return OK

    elif mode in ("after_route", "after_response"):

        @app.get("/")
        async def later(tasks: Tasks) -> dict[str, bool]:
            moment = tasks.after_route if mode == "after_route" else tasks.after_response
            scheduler = moment.task(durable=True) if durable else moment
            for _ in range(count):
                scheduler.schedule(noop, next(numbers))
            return OK

    else:
        raise ValueError(f"unknown mode {mode!r}")
    if durable:
        _add_stats_route(app)
    return app


def build_durable_app(variant: str, *, count: int = 1, path: str | None = None) -> FastAPI:
    """Return a fresh app serving ``variant`` (see the module's docstring) at ``GET /``.

    ``path`` is the SQLite file of the variants that have one (``durable-*``,
    ``tfsnapshot-*``), and is required for them.
    """
    impl, _, rest = variant.partition("-")
    mode, _, synchronous = rest.partition("-")
    if impl in ("durable", "tfsnapshot") and path is None:
        raise ValueError(f"{variant} needs a file")
    if impl == "arg" and mode == "background":
        if count != 1:
            raise ValueError("the BackgroundTasks app schedules one task per request")
        return _background_app()
    if impl == "arg":
        return _library_app(mode, count, None, "")
    if impl == "durable":
        return _library_app(mode, count, path, synchronous)
    if impl in ("tfmemory", "tfsnapshot"):
        from ._taskflow import build_taskflow_persisting_app

        snapshot = path if impl == "tfsnapshot" else None
        app = build_taskflow_persisting_app(mode == "eager", noop, count, snapshot)
        if snapshot is not None:
            _add_stats_route(app)
        return app
    raise ValueError(f"unknown durable-section variant {variant!r}")
