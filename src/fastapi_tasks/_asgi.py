"""The ASGI middleware that gives each request its scheduler and watches ``send``."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from ._dependency import SCOPE_KEY, RequestTasks
from ._manager import TaskManager, current_manager, running_managers

__all__ = ["TasksMiddleware"]


class TasksMiddleware:
    """Installed by ``add_tasks()``; one per app.

    A request that already carries a scheduler (an app mounted under another app
    that called ``add_tasks``) keeps it: mounted apps share the outer app's manager.
    """

    __slots__ = ("app", "manager")

    def __init__(self, app: ASGIApp, manager: TaskManager) -> None:
        self.app = app
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan" or SCOPE_KEY in scope:
            await self.app(scope, receive, send)
            return
        tasks = RequestTasks(self.manager, scope, send)
        scope[SCOPE_KEY] = tasks
        # get_task_manager() needs the context only when it cannot tell the apps apart.
        token = current_manager.set(self.manager) if len(running_managers) > 1 else None
        try:
            await self.app(scope, receive, tasks.send if kind == "http" else send)
        except WebSocketDisconnect:
            tasks.end(failed=False)  # the client left: the socket is closed, nothing failed
            raise
        except BaseException:
            tasks.end(failed=True)
            raise
        else:
            tasks.end(failed=False)
        finally:
            if token is not None:
                current_manager.reset(token)
            # The scope and the scheduler refer to each other; breaking the cycle lets
            # reference counting free both now instead of leaving them to the cyclic
            # garbage collector (which, run per request, costs more than all the rest).
            scope.pop(SCOPE_KEY, None)
