"""``add_tasks()`` and ``get_task_manager()``: wiring a manager into an app."""

from __future__ import annotations

import weakref
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp

from ._asgi import TasksMiddleware
from ._config import TaskConfig
from ._fastapi_compat import telemetry_config
from ._manager import TaskManager, current_manager
from ._otel import tracer_from_telemetry
from .errors import FastAPITasksAlreadyInstalledError, FastAPITasksUninitializedAppError

__all__ = ["add_tasks", "get_task_manager"]

_managers: weakref.WeakKeyDictionary[Starlette, TaskManager] = weakref.WeakKeyDictionary()


def add_tasks(
    app: Starlette,
    *,
    config: TaskConfig | None = None,
    max_concurrency: int | None = None,
    max_threads: int = 40,
    shutdown_timeout: float = 0.0,
    broker: Any | None = None,
) -> TaskManager:
    """Give ``app`` a task manager and return it.

    The manager starts with the app's lifespan, before the app's own startup
    code, and drains before the app's own shutdown code runs.

    Args:
        app: The FastAPI (or Starlette) application.
        config: App-wide default task options; ``task(...)`` overrides them.
        max_concurrency: Most work running at once across the app; the rest
            waits in FIFO order and is never dropped. ``None`` means no cap.
        max_threads: Worker threads for sync (``def``) work, separate from the
            pool Starlette uses for sync endpoints.
        shutdown_timeout: Seconds running work gets to finish at shutdown before
            unshielded work is cancelled.
        broker: Reserved for distributed mode (taskiq workers over Redis), which
            is not built yet: passing one raises ``NotImplementedError`` rather
            than silently running the work in process.

    Raises:
        FastAPITasksAlreadyInstalledError: ``add_tasks`` already ran on this app.
        RuntimeError: The app already started serving (its middleware stack is built).
        NotImplementedError: A ``broker`` was given.
    """
    if broker is not None:
        raise NotImplementedError(
            "distributed mode (add_tasks(app, broker=...)) is not available in this release; "
            "work runs in the web process"
        )
    if app in _managers:
        raise FastAPITasksAlreadyInstalledError("add_tasks() was already called on this app")
    if app.middleware_stack is not None:
        raise RuntimeError("add_tasks() must be called before the app starts serving")
    manager = TaskManager(
        config=config,
        max_concurrency=max_concurrency,
        max_threads=max_threads,
        shutdown_timeout=shutdown_timeout,
    )
    app_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncGenerator[Any, None]:
        tracer = tracer_from_telemetry(telemetry_config(app))
        async with manager.lifespan(tracer), app_lifespan(app) as state:
            # The app's own startup may have just set the global tracer provider.
            manager._tracer = tracer_from_telemetry(telemetry_config(app))
            try:
                yield state
            finally:
                # Drain our work while the app's resources (its DB pools...) still exist.
                await manager.aclose()

    app.router.lifespan_context = lifespan
    build_middleware_stack = app.build_middleware_stack

    def build_with_tasks() -> ASGIApp:
        # Outside every other layer, ServerErrorMiddleware included: the send hook
        # sees the bytes that really leave the app (a 500 too), whatever middleware
        # is added after add_tasks().
        return TasksMiddleware(build_middleware_stack(), manager)

    # Starlette builds the stack through this public method on first use; wrapping
    # it is the one way to sit outside ServerErrorMiddleware.
    setattr(app, "build_middleware_stack", build_with_tasks)  # noqa: B010
    _managers[app] = manager
    return manager


def get_task_manager(app: Starlette | None = None) -> TaskManager:
    """Return the task manager of ``app``, or of the app serving the current request or task.

    Args:
        app: The app whose manager to return. Without it, the manager of the app
            that serves the current request, task or lifespan is returned.

    Raises:
        FastAPITasksUninitializedAppError: ``app`` has no manager, or no app is
            in context and none was given.
    """
    if app is None:
        manager = current_manager.get()
        if manager is None:
            raise FastAPITasksUninitializedAppError(
                "no app with a task manager in this context: call get_task_manager(app), "
                "and make sure add_tasks(app) was called"
            )
        return manager
    manager = _managers.get(app)
    if manager is None:
        raise FastAPITasksUninitializedAppError(
            "this app has no task manager: call add_tasks(app) first"
        )
    return manager
