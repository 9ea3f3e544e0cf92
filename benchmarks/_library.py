"""The ``library-MODE`` apps: ``fastapi_tasks`` as installed in the running environment.

Imported by :func:`benchmarks._apps.build_app` only when such an app is built: the
fastapi-taskflow environment does not have ``fastapi_tasks``.
"""

from __future__ import annotations

from fastapi import FastAPI

from fastapi_tasks import Tasks, add_tasks

from ._apps import OK, Fire, Work, new_app, noop_sync, timed_fire

__all__ = ["build_library_app"]


def _library_fire(mode: str, work: Work, count: int) -> Fire[Tasks]:
    if mode == "unused":

        def fire(tasks: Tasks) -> None:
            pass

    elif mode == "immediate":

        def fire(tasks: Tasks) -> None:
            for _ in range(count):
                tasks.schedule(work)

    elif mode == "after_route":

        def fire(tasks: Tasks) -> None:
            for _ in range(count):
                tasks.after_route.schedule(work)

    elif mode == "after_response":

        def fire(tasks: Tasks) -> None:
            for _ in range(count):
                tasks.after_response.schedule(work)

    elif mode == "all":

        def fire(tasks: Tasks) -> None:
            for _ in range(count):
                tasks.schedule(work)
                tasks.after_route.schedule(work)
                tasks.after_response.schedule(work)

    elif mode == "sync":

        def fire(tasks: Tasks) -> None:
            for _ in range(count):
                tasks.schedule(noop_sync)

    else:
        raise ValueError(f"unknown library mode {mode!r}")
    return fire


def build_library_app(
    mode: str, work: Work, count: int, timed: bool, journal: str | None = None
) -> FastAPI:
    """The app of variant ``library-MODE`` (see :func:`benchmarks._apps.build_app`).

    With ``journal``, the app has that journal file too (``journal-MODE``); its work
    is not durable.
    """
    app = new_app()
    if journal is None:
        add_tasks(app)
    else:
        add_tasks(app, journal=journal)
    if mode == "none":

        @app.get("/")
        async def library_none() -> dict[str, bool]:
            return OK

    else:
        fire_library = _library_fire(mode, work, count)
        if timed:
            fire_library = timed_fire(fire_library)

        @app.get("/")
        async def library(tasks: Tasks) -> dict[str, bool]:
            fire_library(tasks)
            return OK

    return app
