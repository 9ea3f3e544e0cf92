"""Exceptions raised by fastapi_tasks.

Every exception the library raises on purpose derives from one root, so a
single ``except FastAPITasksError`` catches them all::

    FastAPITasksError
    ├── FastAPITasksUninitializedAppError
    ├── FastAPITasksAlreadyInstalledError
    ├── FastAPITasksNotStartedError
    ├── FastAPITasksClosedError
    ├── FastAPITasksWrongLoopError
    ├── FastAPITasksBrokerError
    └── FastAPITasksJournalError

Wrong arguments to ``schedule()`` raise the built-in ``TypeError`` and invalid
option values the built-in ``ValueError``, as Python's own APIs do.
"""

from __future__ import annotations

__all__ = [
    "FastAPITasksAlreadyInstalledError",
    "FastAPITasksBrokerError",
    "FastAPITasksClosedError",
    "FastAPITasksError",
    "FastAPITasksJournalError",
    "FastAPITasksNotStartedError",
    "FastAPITasksUninitializedAppError",
    "FastAPITasksWrongLoopError",
]


class FastAPITasksError(Exception):
    """Root of every error raised by fastapi_tasks."""


class FastAPITasksUninitializedAppError(FastAPITasksError, RuntimeError):
    """``Tasks`` or the task manager was used on an app without ``add_tasks(app)``."""


class FastAPITasksAlreadyInstalledError(FastAPITasksError, RuntimeError):
    """``add_tasks()`` was called a second time on the same app."""


class FastAPITasksNotStartedError(FastAPITasksError, RuntimeError):
    """Work was scheduled before the app's lifespan started the task manager."""


class FastAPITasksClosedError(FastAPITasksError, RuntimeError):
    """Work was scheduled after the app's shutdown began."""


class FastAPITasksWrongLoopError(FastAPITasksError, RuntimeError):
    """A call came from an event loop other than the one that runs the app's lifespan.

    Work always runs on the lifespan's loop. A test setup that runs the lifespan on
    one loop and requests on another would otherwise wait forever.
    """


class FastAPITasksBrokerError(FastAPITasksError, RuntimeError):
    """A job for a broker cannot be handed to this app's broker.

    Raised by ``schedule()`` for a taskiq task when ``add_tasks()`` got no broker or
    a different one, and when an app whose broker is taskiq's starts on trio
    (taskiq runs on asyncio only).
    """


class FastAPITasksJournalError(FastAPITasksError, RuntimeError):
    """The journal of durable work cannot be used.

    Raised at startup when the journal file is corrupt, unreadable, locked past
    its timeout or written by a newer version (the app does not start, and the
    file is left as it is); by ``schedule()`` for durable work when ``add_tasks()``
    got no journal; and as the failure of durable work whose record could not be
    committed (disk full, file locked).
    """
