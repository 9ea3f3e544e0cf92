"""The ``taskflow[-eager|-depends]`` apps: fastapi-taskflow, the nearest in-process peer.

Imported by :func:`benchmarks._apps.build_app` only in the environment that
``scripts/bench`` builds for fastapi-taskflow. That package is not installed where the
type checkers run, so it is imported by name and used through the protocols below: the
part of its API these apps call.

How its API maps onto ours. A process has one ``TaskManager()`` with its defaults (in
memory only: no ``snapshot_db`` or other backend, no loggers, no queues), as an
application has, started and stopped with the first app built through
``task_manager.init_app(app)`` (its documented lifecycle without the ``TaskAdmin``
routes). The no-op work is registered with ``@task_manager.task()`` (no retries).

``taskflow`` and ``taskflow-eager`` follow its quick start: ``task_manager.install(app)``
(what ``TaskAdmin(..., auto_install=True)`` does) makes FastAPI inject its
``ManagedBackgroundTasks`` wherever an endpoint asks for ``BackgroundTasks``. That patch
is process-wide, so the plain ``BackgroundTasks`` apps of a process that builds one of
these two are managed too: ``benchmarks.run`` measures only these there.
``add_task(work)`` appends a wrapper to the request's ``BackgroundTasks``: it runs after
the response, as ``tasks.after_response.schedule`` does. ``add_task(work, eager=True)``
starts it with ``asyncio.create_task`` at once, as ``tasks.schedule`` does.

``taskflow-depends`` gets the same object through ``Depends(task_manager.get_tasks)``,
its pattern without the patch. ``get_tasks`` is a ``def``, so FastAPI calls it in a
worker thread on every request.
"""

# No ``from __future__ import annotations``: an endpoint's annotation holds the manager,
# so FastAPI must receive it evaluated.

import importlib
import itertools
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Protocol, cast

from fastapi import BackgroundTasks, Depends, FastAPI

from ._apps import OK, Fire, Work, new_app, timed_fire

__all__ = ["INSTALLING", "build_taskflow_app", "build_taskflow_persisting_app"]

INSTALLING = ("taskflow", "taskflow-eager")
"""The variants that patch FastAPI process-wide through ``task_manager.install(app)``."""


class ManagedTasks(Protocol):
    """What the apps use of ``fastapi_taskflow.ManagedBackgroundTasks``.

    Its ``add_task`` returns the task's id; the plain ``BackgroundTasks.add_task``, None.
    """

    def add_task(
        self, func: Callable[..., Any], /, *args: Any, eager: bool | None = None, **kwargs: Any
    ) -> str | None: ...


class TaskManager(Protocol):
    """What the apps use of ``fastapi_taskflow.TaskManager``."""

    def task(self, *, persist: bool = False) -> Callable[[Callable[..., Any]], Any]: ...

    def get_tasks(self, background_tasks: BackgroundTasks) -> ManagedTasks: ...

    def init_app(self, app: FastAPI) -> None: ...

    def install(self, app: FastAPI) -> None: ...


class _Process:
    """This process's manager, and whether it patched FastAPI yet."""

    manager: TaskManager | None = None
    installed = False


def _manager(app: FastAPI, *, install: bool) -> TaskManager:
    manager = _Process.manager
    if manager is None:
        manager = _Process.manager = importlib.import_module("fastapi_taskflow").TaskManager()
        manager.init_app(app)
    if install and not _Process.installed:
        manager.install(app)
        _Process.installed = True
    return manager


def _taskflow_fire(mode: str, work: Work, count: int) -> Fire[ManagedTasks]:
    # Each call checks that it got a task id back: plain BackgroundTasks.add_task returns
    # None, so a patch that did not take effect cannot pass for a measurement.
    if mode in ("", "depends"):

        def fire(tasks: ManagedTasks) -> None:
            for _ in range(count):
                if tasks.add_task(work) is None:
                    raise RuntimeError("not a fastapi-taskflow ManagedBackgroundTasks")

    elif mode == "eager":

        def fire(tasks: ManagedTasks) -> None:
            for _ in range(count):
                if tasks.add_task(work, eager=True) is None:
                    raise RuntimeError("not a fastapi-taskflow ManagedBackgroundTasks")

    else:
        raise ValueError(f"unknown fastapi-taskflow mode {mode!r}")
    return fire


def build_taskflow_app(mode: str, work: Work, count: int, timed: bool) -> FastAPI:
    """The app of variant ``taskflow[-MODE]`` (see ``_apps.build_app``)."""
    app = new_app()
    manager = _manager(app, install=mode != "depends")
    fire = _taskflow_fire(mode, manager.task()(work), count)
    if timed:
        fire = timed_fire(fire)

    if mode == "depends":

        @app.get("/")
        async def taskflow_depends(
            tasks: Annotated[ManagedTasks, Depends(manager.get_tasks)],
        ) -> dict[str, bool]:
            fire(tasks)
            return OK

    else:

        @app.get("/")
        async def taskflow(background_tasks: BackgroundTasks) -> dict[str, bool]:
            fire(cast(ManagedTasks, background_tasks))
            return OK

    return app


def build_taskflow_persisting_app(
    eager: bool, work: Callable[[int], Coroutine[Any, Any, None]], count: int, snapshot: str | None
) -> FastAPI:
    """An app of the durable-work section: ``add_task(work, i)``, in memory or persisted.

    With ``snapshot``, the process's manager is ``TaskManager(snapshot_db=snapshot,
    requeue_pending=True)`` and ``work`` is registered with ``persist=True``: its SQLite
    persistence with everything it offers to get unfinished work back. What that
    persists, and when: completed tasks (one commit per task, right after it
    succeeded, from a thread pool; and a periodic flush), and unfinished ones only at
    a clean shutdown. Without it, the manager is in memory only. Either way FastAPI is
    patched by ``install(app)`` (its quick start): run one such app per process, with
    no other ``BackgroundTasks`` app measured beside it.
    """
    manager = _Process.manager
    if manager is None:
        module = importlib.import_module("fastapi_taskflow")
        if snapshot is None:
            manager = module.TaskManager()
        else:
            manager = module.TaskManager(snapshot_db=snapshot, requeue_pending=True)
        _Process.manager = manager
        app = new_app()
        manager.init_app(app)  # the first app's lifespan starts and stops it
    else:
        app = new_app()
    if not _Process.installed:
        manager.install(app)
        _Process.installed = True
    registered = manager.task(persist=snapshot is not None)(work)
    numbers = itertools.count()

    @app.get("/")
    async def taskflow(background_tasks: BackgroundTasks) -> dict[str, bool]:
        tasks = cast(ManagedTasks, background_tasks)
        for _ in range(count):
            if tasks.add_task(registered, next(numbers), eager=eager) is None:
                raise RuntimeError("not a fastapi-taskflow ManagedBackgroundTasks")
        return OK

    return app
