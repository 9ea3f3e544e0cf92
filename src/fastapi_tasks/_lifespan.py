"""``add_tasks()`` and ``get_task_manager()``: wiring a manager into an app."""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Any, cast

from starlette.applications import Starlette
from starlette.types import ASGIApp

from ._asgi import TasksMiddleware
from ._config import TaskConfig
from ._fastapi_compat import telemetry_config
from ._manager import Engine, TaskManager, find_current_manager
from ._metrics import MetricsSwitch
from ._otel import tracer_from_telemetry
from .errors import FastAPITasksAlreadyInstalledError, FastAPITasksUninitializedAppError

if TYPE_CHECKING:
    from .journal import SQLiteJournal

__all__ = ["add_tasks", "get_task_manager"]

_engines: weakref.WeakKeyDictionary[Starlette, Engine] = weakref.WeakKeyDictionary()


def add_tasks(
    app: Starlette,
    *,
    config: TaskConfig | None = None,
    max_concurrency: int | None = None,
    max_threads: int = 40,
    shutdown_timeout: float = 0.0,
    broker: Any | None = None,
    journal: str | os.PathLike[str] | SQLiteJournal | None = None,
) -> TaskManager:
    """Give ``app`` a task manager and return it.

    The manager starts with the app's lifespan, before the app's own startup
    code, and drains before the app's own shutdown code runs, and before the
    shutdown of every router included in it, whenever it was included.

    Args:
        app: The FastAPI (or Starlette) application.
        config: App-wide default task options; ``task(...)`` overrides them.
        max_concurrency: Most work running at once across the app; the rest
            waits in FIFO order and is never dropped. ``None`` means no cap.
        max_threads: Worker threads for sync (``def``) work, separate from the
            pool Starlette uses for sync endpoints.
        shutdown_timeout: Seconds running work gets to finish at shutdown before
            unshielded work is cancelled.
        broker: A taskiq ``AsyncBroker`` (first-class: ``taskiq_redis.RedisStreamBroker``).
            Functions decorated with its ``@broker.task`` are then enqueued for
            taskiq workers at their mode's moment instead of running here; plain
            functions still run in process. The app's lifespan starts the broker
            before the app's own startup and shuts it down after the drain. Needs
            the ``fastapi-tasks[taskiq]`` extra; see the distributed guide.
        journal: Where durable work (``task(durable=True)``) is recorded so it
            survives crashes and restarts: a file path (an SQLite file, created if
            missing) or a [`SQLiteJournal`][fastapi_tasks.journal.SQLiteJournal] with
            its options. The file is opened (and checked) when the app starts; see
            the durable work guide.

    Raises:
        TypeError: ``app`` is not a FastAPI or Starlette application.
        FastAPITasksAlreadyInstalledError: ``add_tasks`` already ran on this app.
        RuntimeError: The app already started serving (its middleware stack is built).
        TypeError: ``broker`` is not a taskiq ``AsyncBroker``, or ``journal`` is
            neither a path nor an ``SQLiteJournal``.
    """
    if not isinstance(cast("object", app), Starlette):  # untyped callers pass anything
        raise TypeError(
            f"add_tasks() needs a FastAPI or Starlette application, got {app!r} of type "
            f"{type(app).__qualname__}"
        )
    adapter = None
    if broker is not None:
        from .taskiq import adapt_broker  # imports taskiq: only for apps with a broker

        adapter = adapt_broker(broker)
    store = None
    if journal is not None:
        from .journal import SQLiteJournal  # sqlite3 and the codec: only for apps with one

        given = cast("object", journal)  # untyped callers pass anything
        if isinstance(given, (str, os.PathLike)):
            store = SQLiteJournal(cast("str | os.PathLike[str]", given))
        elif isinstance(given, SQLiteJournal):
            store = given
        else:
            raise TypeError(
                f"journal must be a file path or an SQLiteJournal, got {journal!r} of type "
                f"{type(journal).__qualname__}"
            )
    if app in _engines:
        raise FastAPITasksAlreadyInstalledError("add_tasks() was already called on this app")
    if app.middleware_stack is not None:
        raise RuntimeError("add_tasks() must be called before the app starts serving")
    engine = Engine(
        config=config,
        max_concurrency=max_concurrency,
        max_threads=max_threads,
        shutdown_timeout=shutdown_timeout,
        broker=adapter,
        journal=store,
    )
    build_middleware_stack = app.build_middleware_stack
    metrics = MetricsSwitch(engine.manager)

    def refresh_telemetry() -> None:
        telemetry = telemetry_config(app)
        engine.tracer = tracer_from_telemetry(telemetry)
        metrics.update(telemetry)

    def build_with_tasks() -> ASGIApp:
        # Outside every other layer, ServerErrorMiddleware included: the lifespan
        # reaches us first, and the send hook sees the bytes that really leave the
        # app (a 500 too), whatever middleware is added after add_tasks().
        return TasksMiddleware(build_middleware_stack(), engine, refresh_telemetry)

    # Starlette builds the stack through this public method on first use; wrapping
    # it is the one way to sit outside ServerErrorMiddleware.
    setattr(app, "build_middleware_stack", build_with_tasks)  # noqa: B010
    _engines[app] = engine
    return engine.manager


def get_task_manager(app: Starlette | None = None) -> TaskManager:
    """Return the task manager of ``app``, or of the app serving the current request or task.

    Args:
        app: The app whose manager to return. Inside a request of an app mounted
            under another one, ``get_task_manager(request.app)`` returns the
            manager that serves the request (the outer app's). Without ``app``,
            the manager of the app that serves the current request, task or
            lifespan is returned, however many apps run in the process.

    Raises:
        FastAPITasksUninitializedAppError: ``app`` has no manager, or no app is
            in context and none was given.
    """
    current = find_current_manager()
    if app is None:
        if current is None:
            raise FastAPITasksUninitializedAppError(
                "no app with a task manager in this context: call get_task_manager(app), "
                "and make sure add_tasks(app) was called"
            )
        return current
    engine = _engines.get(app)
    if engine is not None and engine.has_started:
        return engine.manager
    # A mounted app's own lifespan never runs: the manager serving it is the one
    # of the app it is mounted under, the one in this request's context.
    if current is not None:
        return current
    if engine is None:
        raise FastAPITasksUninitializedAppError(
            "this app has no task manager: call add_tasks(app) first"
        )
    return engine.manager
